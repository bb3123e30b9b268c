"""Kubernetes objects for tests and the twin: fake KWOK nodes."""

from __future__ import annotations

from typing import Any

from localenv.kube import KWOK_NODE_ANNOTATION


def kwok_node(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    cpu: str = "32",
    memory: str = "128Gi",
    pods: int = 110,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node that KWOK manages: it becomes Ready and runs whatever is bound to it."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
