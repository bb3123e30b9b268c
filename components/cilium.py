"""Cilium: WireGuard transparent encryption, Hubble, and the chosen EKS mode."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from controller.model import ClusterSettings

CILIUM_REPO = "https://helm.cilium.io"
HUBBLE_METRICS = ["dns", "drop", "tcp", "flow", "port-distribution", "icmp", "httpV2"]


def helm_values(settings: ClusterSettings) -> dict[str, Any]:
    """Values per REFERENCE.md (Cilium): encryption and Hubble always, then the EKS mode."""
    values: dict[str, Any] = {
        "encryption": {"enabled": True, "type": "wireguard"},
        "hubble": {
            "enabled": True,
            "relay": {"enabled": True},
            "ui": {"enabled": True},
            "metrics": {"enabled": HUBBLE_METRICS},
        },
        "operator": {"replicas": 2, "nodeSelector": {"runner-platform.io/system": "true"}},
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
            egressMasqueradeInterfaces="ens+",  # AL2023 interface names
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
