"""Vault (or OpenBao) JWT auth for runners: a mount per GitHub instance, a role per team.

This module owns the desired configuration as data (:func:`vault_config`); the component
applies it with the hvac dynamic provider (components/vault_provider.py), one resource per
mount, role and policy, and publishes it in its own inputs too so the policy pack sees it.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.oidc_subjects import team_subjects
from components.vault_provider import VaultObject
from controller.model import PlatformSpec, Team


def mount_path(instance_name: str) -> str:
    return f"jwt-{instance_name}"


# The Vault entity of a job is its repository (``user_claim``), so the entity alias never
# changes between logins and a policy template over its metadata scopes secrets per
# repository. (With ``actor``, one person's concurrent jobs in two repositories would share
# an alias whose metadata follows whichever logged in last.) The template uses the
# repository *id*: Vault refuses "/" in a substitution, and ids survive renames.
USER_CLAIM = "repository"
CLAIM_MAPPINGS = {
    "repository_id": "repository_id",
    "actor": "actor",
    "run_id": "run_id",
    "ref": "ref",
    "job_workflow_ref": "job_workflow_ref",
}


def accessor_placeholder(mount: str) -> str:
    """Replaced by the mount's accessor when the provider applies the policy."""
    return f"@@accessor:{mount}@@"


def team_policy_hcl(team: Team) -> str:
    """The team's shared secrets (``runners/<team>/shared/``), the job's own repository's
    (``runners/<team>/repos/<repository id>/``) and the team's database role."""
    accessor = accessor_placeholder(mount_path(team.instance))
    repository = f"{{{{identity.entity.aliases.{accessor}.metadata.repository_id}}}}"
    base = f"secret/%s/runners/{team.name}"
    rules = [
        (base % "data" + "/shared/*", "read"),
        (base % "metadata" + "/shared/*", "list"),
        (base % "data" + f"/repos/{repository}/*", "read"),
        (base % "metadata" + f"/repos/{repository}/*", "list"),
        (f"database/creds/runner-{team.name}", "read"),
    ]
    return "".join(f'path "{path}" {{\n  capabilities = ["{cap}"]\n}}\n' for path, cap in rules)


def bound_claims(spec: PlatformSpec, team: Team) -> dict[str, list[str]]:
    """The claims a team's Vault role binds (globs; AND across claims, OR within one).

    The repository (the model keeps teams' patterns apart) and the org's id, so an org
    re-created under the same name logs in nowhere; with ``self_hosted_only``, the runner
    kind. With a context allowlist, ``sub`` as the IAM trust allows it — Vault has no
    StringNotLike, so where one kind of context is listed its own claim (``ref`` or
    ``environment``, which no template can dress up) is bound as well.
    """
    instance = spec.instance(team.instance)
    claims = {
        "repository": list(team.repositories),
        "repository_owner_id": [str(instance.org_ids[team.org])],
    }
    if spec.vault.self_hosted_only:
        claims["runner_environment"] = ["self-hosted"]
    if team.refs or team.environments:
        claims["sub"] = team_subjects(instance, team).allow
        # Both kinds listed: both claims bound (AND). A workflow named like a ref context
        # in a custom ``sub`` template could match an either-or ``sub`` glob, and Vault has
        # no StringNotLike to guard it; so Vault asks for an allowed ref *and* an allowed
        # environment where IAM (whose guards hold the ``sub``) takes either.
        if team.refs:
            claims["ref"] = list(team.refs)
        if team.environments:
            claims["environment"] = list(team.environments)
    return claims


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
                "userClaim": USER_CLAIM,
                "claimMappings": CLAIM_MAPPINGS,
                # Vault >= 1.16.3 refuses tokens with an `aud` when none is bound.
                "boundAudiences": [vault.audience],
                "boundClaimsType": "glob",
                "boundClaims": bound_claims(spec, team),
                "tokenPolicies": [team.vault_policy, *team.vault_policies],
                "tokenTtl": vault.token_ttl_seconds,
                "tokenMaxTtl": vault.token_max_ttl_seconds,
            }
            for team in spec.teams
        ],
        "policies": [
            {"name": team.vault_policy, "policy": team_policy_hcl(team)} for team in spec.teams
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
