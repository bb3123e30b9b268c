"""The runner pod contract between the Pod Provisioner and the runner stand-in.

A runner pod carries the label ``app.kubernetes.io/name=github-runner``, the label
``runner-platform.io/instance`` (the GitHub instance's name in the spec) and the
annotation ``runner-platform.io/runner-id``; its container ``runner`` takes env
``ACTIONS_RUNNER_INPUT_JITCONFIG`` from a ``secretKeyRef`` whose Secret (in the pod's
namespace) holds the ``encoded_jit_config`` that ``generate-jitconfig`` returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localenv.kube import FINISH_ANNOTATION

RUNNER_SELECTOR = "app.kubernetes.io/name=github-runner"
INSTANCE_LABEL = "runner-platform.io/instance"
RUNNER_ID_ANNOTATION = "runner-platform.io/runner-id"
RUNNER_CONTAINER = "runner"
JIT_ENV = "ACTIONS_RUNNER_INPUT_JITCONFIG"

RunnerKey = tuple[str, int]  # (GitHub instance name, runner id)


@dataclass
class RunnerPod:
    """What the stand-in needs of one runner pod, read from its manifest."""

    namespace: str
    name: str
    uid: str
    instance: str | None
    runner_id: int | None
    secret: tuple[str, str] | None  # (Secret name, key) of the JIT config
    running: bool
    finished: bool
    started: bool = False  # its runner was brought online (or the stand-in gave up)
    finishing: bool = False  # the finish annotation is being (or was) written

    @property
    def key(self) -> RunnerKey | None:
        if self.instance is None or self.runner_id is None:
            return None
        return (self.instance, self.runner_id)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> RunnerPod:
        """From the pod as the API server sends it (JSON, not the client's model)."""
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        annotations = meta.get("annotations") or {}
        runner_id = annotations.get(RUNNER_ID_ANNOTATION, "")
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            instance=(meta.get("labels") or {}).get(INSTANCE_LABEL),
            runner_id=int(runner_id) if runner_id.isdigit() else None,
            secret=jit_secret_ref(spec),
            running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
            finished=FINISH_ANNOTATION in annotations
            or status.get("phase") in ("Succeeded", "Failed"),
        )


def jit_secret_ref(spec: dict[str, Any]) -> tuple[str, str] | None:
    """The (Secret, key) the runner container's JIT config env comes from, if any."""
    for container in spec.get("containers") or []:
        if container.get("name") != RUNNER_CONTAINER:
            continue
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if env.get("name") == JIT_ENV and ref.get("name") and ref.get("key"):
                return (str(ref["name"]), str(ref["key"]))
    return None


def exit_code(conclusion: str | None) -> int:
    """The runner container's exit code for its job's conclusion."""
    return 0 if conclusion == "success" else 1
