"""Vault (or OpenBao) JWT auth for runners: a mount per GitHub instance, a role per team.

This module owns the desired configuration as data (:func:`vault_config`); the component
applies it with the hvac dynamic provider (components/vault_provider.py), one resource per
mount, role and policy, and publishes it in its own inputs too so the policy pack sees it.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.vault_provider import VaultObject
from controller.model import PlatformSpec, Team


def mount_path(instance_name: str) -> str:
    return f"jwt-{instance_name}"


def team_policy_name(team: Team) -> str:
    return f"runner-{team.name}"


def team_policy_hcl(team: Team) -> str:
    """Read the team's own KV secrets and database credentials; nothing else."""
    return (
        f'path "secret/data/runners/{team.name}/*" {{\n  capabilities = ["read"]\n}}\n'
        f'path "secret/metadata/runners/{team.name}/*" {{\n  capabilities = ["list"]\n}}\n'
        f'path "database/creds/runner-{team.name}" {{\n  capabilities = ["read"]\n}}\n'
    )


def vault_config(spec: PlatformSpec) -> dict[str, Any]:
    """Mounts, roles and policies, keyed the way Vault's API names them."""
    vault = spec.vault
    return {
        "mounts": [
            {
                "path": mount_path(instance.name),
                "oidcDiscoveryUrl": instance.oidc_issuer,
                "boundIssuer": instance.oidc_issuer,
            }
            for instance in spec.github_instances
        ],
        "roles": [
            {
                "mount": mount_path(team.instance),
                "name": team.name,
                "roleType": "jwt",
                "userClaim": vault.user_claim,
                # Vault >= 1.16.3 refuses tokens with an `aud` when none is bound.
                "boundAudiences": [vault.audience],
                "boundClaimsType": "glob",
                "boundClaims": {"repository": list(team.repositories)},
                "tokenPolicies": [team_policy_name(team), *team.vault_policies],
                "tokenTtl": vault.token_ttl_seconds,
                "tokenMaxTtl": vault.token_max_ttl_seconds,
            }
            for team in spec.teams
        ],
        "policies": [
            {"name": team_policy_name(team), "policy": team_policy_hcl(team)} for team in spec.teams
        ],
    }


class VaultAuth(pulumi.ComponentResource):
    """The platform's Vault JWT configuration, applied by the hvac dynamic provider."""

    mount_paths: dict[str, str]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        token: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        config = vault_config(spec)
        super().__init__(
            "runner-platform:vault:VaultAuth", name, {"address": spec.vault.address, **config}, opts
        )
        connection = {"address": spec.vault.address, "token": token}
        mounts = {
            mount["path"]: VaultObject(
                f"{name}-{mount['path']}",
                {**connection, "kind": "jwt-mount", **mount},
                pulumi.ResourceOptions(parent=self),
            )
            for mount in config["mounts"]
        }
        policies = {
            policy["name"]: VaultObject(
                f"{name}-policy-{policy['name']}",
                {**connection, "kind": "policy", **policy},
                pulumi.ResourceOptions(parent=self),
            )
            for policy in config["policies"]
        }
        for role in config["roles"]:
            needs = [
                mounts[role["mount"]],
                *(policies[p] for p in role["tokenPolicies"] if p in policies),
            ]
            VaultObject(
                f"{name}-role-{role['name']}",
                {**connection, "kind": "jwt-role", **role},
                pulumi.ResourceOptions(parent=self, depends_on=needs),
            )
        self.mount_paths = {i.name: mount_path(i.name) for i in spec.github_instances}
        self.register_outputs({"mount_paths": self.mount_paths})
