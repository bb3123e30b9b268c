"""Declare a Kubernetes object from a manifest dict built by a pure builder.

Builders return plain manifests (what ``kubectl apply`` would take) so the same dicts
are unit-tested, dry-run against a real API server and declared here. Known kinds map
to pulumi-kubernetes' typed classes; anything else (Karpenter, Prometheus Operator) is
a CustomResource.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

Manifest = dict[str, Any]
# The label of the system node group's nodes: Karpenter, Cilium's operator and the
# controller run there, never on runner nodes (the model reserves the whole
# runner-platform.io/ label domain, so no pool can carry it).
SYSTEM_NODE_LABEL = "runner-platform.io/system"
# Karpenter labels every node it launches with its NodePool; system nodes never have it.
KARPENTER_NODEPOOL_LABEL = "karpenter.sh/nodepool"
# Objects the cluster makes by itself in every namespace: the program patches their fields
# instead of creating them (a create would find them there already).
_CLUSTER_MADE: set[tuple[str, str, str]] = {("v1", "ServiceAccount", "default")}

_TYPED: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "Service"): k8s.core.v1.Service,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("apps/v1", "DaemonSet"): k8s.apps.v1.DaemonSet,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "Ingress"): k8s.networking.v1.Ingress,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
    ("scheduling.k8s.io/v1", "PriorityClass"): k8s.scheduling.v1.PriorityClass,
    ("v1", "ResourceQuota"): k8s.core.v1.ResourceQuota,
    ("v1", "LimitRange"): k8s.core.v1.LimitRange,
    ("storage.k8s.io/v1", "StorageClass"): k8s.storage.v1.StorageClass,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        k8s.admissionregistration.v1.ValidatingAdmissionPolicy
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding
    ),
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def resource_name(manifest: Manifest) -> str:
    """A stable Pulumi name: kind, namespace and name, as unique as the object itself."""
    meta = manifest["metadata"]
    parts = [manifest["kind"].lower(), meta.get("namespace", ""), meta["name"]]
    return "-".join(part for part in parts if part)


def cluster_made(manifest: Manifest) -> bool:
    """Whether the cluster creates this object itself (a namespace's ``default``
    ServiceAccount): the program declares it as a server-side-apply patch."""
    key = (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])
    return key in _CLUSTER_MADE


def declare(manifest: Manifest, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    typed = _TYPED.get((api_version, kind))
    name = resource_name(manifest)
    if cluster_made(manifest):
        return k8s.core.v1.ServiceAccountPatch(
            name, opts=opts, **{_snake(key): value for key, value in body.items()}
        )
    if typed is None:
        return k8s.apiextensions.CustomResource(
            name, api_version=api_version, kind=kind, opts=opts, **body
        )
    return typed(name, opts=opts, **{_snake(key): value for key, value in body.items()})
