"""Vault (or OpenBao) JWT auth for runners: a mount per GitHub instance, a role per team.

This module owns the desired configuration as data (:func:`vault_config`); the hvac
dynamic provider that applies it to a live server is a later piece of work (issue 5), and
will consume exactly this data. The component publishes the configuration in its inputs
so the policy pack can hold every role's token TTL to at most an hour today.
"""

from __future__ import annotations

from typing import Any

import pulumi

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
    """The desired Vault JWT configuration of the platform."""

    mount_paths: dict[str, str]

    def __init__(
        self, name: str, spec: PlatformSpec, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        config = vault_config(spec)
        super().__init__(
            "runner-platform:vault:VaultAuth",
            name,
            {"address": spec.vault.address, **config},
            opts,
        )
        self.mount_paths = {i.name: mount_path(i.name) for i in spec.github_instances}
        self.register_outputs({"mount_paths": self.mount_paths, "roles": config["roles"]})
