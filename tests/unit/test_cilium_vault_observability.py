"""Cilium values, the Vault configuration and the alerting rules."""

from __future__ import annotations

from typing import Any

import pytest

from components import cilium, observability, vault
from controller.model import PlatformSpec, load_spec


def test_cilium_chaining_mode_encrypts_and_observes(dev_spec: PlatformSpec) -> None:
    values = cilium.helm_values(dev_spec.cluster)
    assert values["encryption"] == {"enabled": True, "type": "wireguard"}
    system = {"runner-platform.io/system": "true"}
    # Every Cilium Deployment stays off runner nodes (docs/helm.md).
    assert values["hubble"]["relay"] == {"enabled": True, "nodeSelector": system}
    assert values["hubble"]["ui"] == {"enabled": True, "nodeSelector": system}
    assert values["operator"]["nodeSelector"] == system
    assert values["hubble"]["metrics"]["enabled"] == [
        "dns",
        "drop",
        "tcp",
        "flow",
        "port-distribution",
        "icmp",
        "httpV2",
    ]
    assert values["cni"] == {
        "chainingMode": "aws-cni",
        "exclusive": False,
        "enableRouteMTUForCNIChaining": True,
    }
    assert values["enableIPv4Masquerade"] is False
    assert values["routingMode"] == "native"
    assert "eni" not in values


def test_cilium_eni_mode(dev_document: dict[str, Any]) -> None:
    dev_document["cluster"]["cilium_mode"] = "eni"
    values = cilium.helm_values(load_spec(dev_document).cluster)
    assert values["eni"] == {"enabled": True}
    assert values["ipam"] == {"mode": "eni"}
    # Pods keep their VPC addresses; the NAT gateway takes them out (docs/helm.md). No
    # interface selector: it would mean nothing with masquerading off.
    assert values["enableIPv4Masquerade"] is False
    assert "egressMasqueradeInterfaces" not in values
    assert "cni" not in values
    assert values["encryption"]["type"] == "wireguard"


def test_vault_has_a_mount_per_instance_and_a_bound_role_per_team(
    dev_spec: PlatformSpec,
) -> None:
    config = vault.vault_config(dev_spec)
    assert config["mounts"] == [
        {
            "path": "jwt-cloud",
            "oidcDiscoveryUrl": "https://token.actions.githubusercontent.com",
            "boundIssuer": "https://token.actions.githubusercontent.com",
        },
        {
            "path": "jwt-ghes",
            "oidcDiscoveryUrl": "https://github.acme.internal/_services/token",
            "boundIssuer": "https://github.acme.internal/_services/token",
        },
    ]
    ml = next(r for r in config["roles"] if r["name"] == "ml")
    assert ml["mount"] == "jwt-ghes"
    assert ml["boundAudiences"] == ["runner-platform-vault"]
    assert ml["boundClaims"] == {
        "repository": ["research/models", "research/training-*"],
        "repository_owner_id": ["5039426"],  # the org's id: a re-created org is a stranger
        "runner_environment": ["self-hosted"],
    }
    assert ml["boundClaimsType"] == "glob"
    assert ml["tokenPolicies"] == ["runner-ml", "ml-datasets-read"]
    assert ml["tokenTtl"] == 900
    assert all(r["tokenMaxTtl"] <= 3600 for r in config["roles"])


def test_team_vault_policy_reaches_only_its_own_paths(dev_spec: PlatformSpec) -> None:
    hcl = vault.team_policy_hcl(dev_spec.teams[0])
    paths = [line.split('"')[1] for line in hcl.splitlines() if line.startswith("path ")]
    assert paths == [
        "secret/data/runners/web/shared/*",
        "secret/metadata/runners/web/shared/*",
        "secret/data/runners/web/repos/{{identity.entity.aliases.@@accessor:jwt-cloud@@"
        ".metadata.repository_id}}/*",
        "secret/metadata/runners/web/repos/{{identity.entity.aliases.@@accessor:jwt-cloud@@"
        ".metadata.repository_id}}/*",
        "database/creds/runner-web",
    ]


def test_vault_roles_key_entities_by_repository(dev_spec: PlatformSpec) -> None:
    role = vault.vault_config(dev_spec)["roles"][0]
    assert role["userClaim"] == "repository"
    assert role["claimMappings"]["repository_id"] == "repository_id"


def test_the_alerts_with_the_spec_thresholds(dev_document: dict[str, Any]) -> None:
    dev_document["observability"] = {"pending_pod_minutes": 7, "job_failure_rate": 0.2}
    rules = {r["alert"]: r for r in observability.alert_rules(load_spec(dev_document))}
    assert set(rules) == {
        "RunnerPodPendingTooLong",
        "NodeProvisioningFailing",
        "SpotInterruptionRateHigh",
        "JobFailureRateHigh",
        "RunnerQueueFull",
    }
    assert 'decision="queue-full"' in rules["RunnerQueueFull"]["expr"]
    assert rules["RunnerPodPendingTooLong"]["for"] == "7m"
    assert rules["JobFailureRateHigh"]["expr"].endswith("> 0.2")
    assert rules["SpotInterruptionRateHigh"]["expr"].endswith("> 0.1")


@pytest.mark.parametrize("legend", ["P50", "P95", "P99"])
def test_dashboard_shows_pod_start_percentiles(legend: str) -> None:
    panel = observability.dashboard()["panels"][0]
    target = next(t for t in panel["targets"] if t["legendFormat"] == legend)
    quantile = {"P50": "0.5", "P95": "0.95", "P99": "0.99"}[legend]
    assert target["expr"].startswith(f"histogram_quantile({quantile},")
    assert observability.POD_START in target["expr"]
