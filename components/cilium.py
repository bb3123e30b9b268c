"""Cilium: WireGuard transparent encryption, Hubble, and the chosen EKS mode."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from controller.model import ClusterSettings

CILIUM_REPO = "https://helm.cilium.io"
HUBBLE_METRICS = ["dns", "drop", "tcp", "flow", "port-distribution", "icmp", "httpV2"]
# Cilium's Deployments run on the system nodes, never on a runner node: the untainted warm
# pool would take them, and each would hold a pod slot that kubelet.maxPods counts for
# runners (components/node_pools.py counts only DaemonSets there).
SYSTEM_NODES = {"runner-platform.io/system": "true"}


def helm_values(settings: ClusterSettings) -> dict[str, Any]:
    """Values per REFERENCE.md (Cilium): encryption and Hubble always, then the EKS mode.

    Only keys the chart defines, no nulls (tests/integration/test_helm_charts.py renders
    both modes with the real chart at ``cilium_version``; docs/helm.md)."""
    values: dict[str, Any] = {
        "encryption": {"enabled": True, "type": "wireguard"},
        "hubble": {
            "enabled": True,
            "relay": {"enabled": True, "nodeSelector": {**SYSTEM_NODES}},
            "ui": {"enabled": True, "nodeSelector": {**SYSTEM_NODES}},
            "metrics": {"enabled": HUBBLE_METRICS},
        },
        "operator": {"replicas": 2, "nodeSelector": {**SYSTEM_NODES}},
        "routingMode": "native",
    }
    if settings.cilium_mode == "chaining":
        values.update(
            cni={
                "chainingMode": "aws-cni",
                "exclusive": False,
                # WireGuard adds a header; chained pods must get the smaller route MTU.
                "enableRouteMTUForCNIChaining": True,
            },
            enableIPv4Masquerade=False,
            endpointRoutes={"enabled": True},
        )
    else:
        values.update(
            eni={"enabled": True},
            ipam={"mode": "eni"},
            # Pods take VPC addresses from the nodes' ENIs and leave the VPC through the
            # private subnets' NAT gateway, so nothing is masqueraded on the node: said
            # here rather than left to the chart's ENI default (also off). An interface
            # selector (egressMasqueradeInterfaces) would mean nothing with it off.
            enableIPv4Masquerade=False,
        )
    return values


class Cilium(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(
        self,
        name: str,
        settings: ClusterSettings,
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:cilium:Cilium", name, None, opts)
        self.release = k8s.helm.v3.Release(
            f"{name}-chart",
            name="cilium",
            chart="cilium",
            version=settings.cilium_version,
            namespace="kube-system",
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CILIUM_REPO),
            values=helm_values(settings),
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        self.register_outputs({"mode": settings.cilium_mode})
