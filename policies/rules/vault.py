"""Vault: tokens issued to runners live at most one hour, and a team's role is scoped.

A role (``name`` = the team) binds a literal, non-STS audience, the team's repositories
under a literal owner, and the owner's numeric id (``repository_owner_id``), and its
tokens carry no policy of another team (``runner-<team>`` names are the platform's, one per
team) and never ``root``.
"""

from __future__ import annotations

import re
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import as_list

VAULT_AUTH = "runner-platform:vault:VaultAuth"
MAX_TTL_SECONDS = 3600


def _roles(args: ResourceValidationArgs) -> list[Any]:
    if args.resource_type == VAULT_AUTH:
        return as_list(args.props.get("roles"))
    # Vault JWT role resources (the hvac dynamic provider) carry the same fields.
    if "tokenTtl" in args.props and args.props.get("roleType") == "jwt":
        return [args.props]
    return []


def _validate_ttl(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for role in _roles(args):
        if not isinstance(role, dict):
            continue
        name = role.get("name", "?")
        for key in ("tokenTtl", "tokenMaxTtl"):
            value = role.get(key)
            if value is None:
                report(
                    f"Vault role '{name}' has no {key}: Vault would apply its system "
                    "default (32 days)",
                    None,
                )
            elif isinstance(value, int | float) and value > MAX_TTL_SECONDS:
                report(
                    f"Vault role '{name}' {key} is {int(value)} s; at most {MAX_TTL_SECONDS} s",
                    None,
                )


vault_token_ttl = ResourceValidationPolicy(
    name="vault-token-ttl-at-most-1h",
    description="Vault roles for runners issue tokens that live at most one hour.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_ttl,
)


STS_AUDIENCE = "sts.amazonaws.com"
POLICY_PREFIX = "runner-"
_OWNED_REPOSITORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*/.")


def _claim_values(claims: Any, key: str) -> list[str]:
    value = claims.get(key) if isinstance(claims, dict) else None
    return [str(v) for v in as_list(value)]


def _comma_list(value: Any) -> list[str]:
    """A Vault comma-string-slice field as Vault stores it: a string is split on ',' and
    each part trimmed (``"a, b"`` is two items), a list is taken item by item."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in as_list(value)]


def _scope_problems(role: dict[str, Any]) -> list[str]:
    name = role.get("name", "?")
    problems: list[str] = []
    audiences = _comma_list(role.get("boundAudiences"))
    if not audiences:
        problems.append(f"Vault role '{name}' binds no audience: a token for any service logs in")
    if wild := [a for a in audiences if "*" in a or "?" in a]:
        problems.append(f"Vault role '{name}' binds audiences with a wildcard: {wild}")
    if STS_AUDIENCE in (a.strip().strip("/").lower() for a in audiences):
        problems.append(
            f"Vault role '{name}' binds the AWS STS audience '{STS_AUDIENCE}': a token a job "
            "asks for AWS would log in to Vault too"
        )
    claims = role.get("boundClaims")
    repositories = _claim_values(claims, "repository")
    if not repositories:
        problems.append(
            f"Vault role '{name}' binds no 'repository' claim: any repository of the issuer "
            "could log in"
        )
    elif broad := [r for r in repositories if not _OWNED_REPOSITORY.match(r)]:
        problems.append(f"Vault role '{name}' binds repositories of any owner: {broad}")
    owner_ids = _claim_values(claims, "repository_owner_id")
    if not owner_ids or not all(v.isdigit() for v in owner_ids):
        problems.append(
            f"Vault role '{name}' does not pin 'repository_owner_id' to the org's id "
            f"({owner_ids or 'unbound'}): an org re-created under the same name would log in"
        )
    own = f"{POLICY_PREFIX}{name}"
    # Vault splits a string on ',', trims and lower-cases policy names: ' Runner-Web' is
    # runner-web there, and 'runner-ml, root' is two policies.
    for policy in (p.strip().lower() for p in _comma_list(role.get("tokenPolicies"))):
        if policy == "root":
            problems.append(f"Vault role '{name}' gives its tokens the 'root' policy")
        elif policy.startswith(POLICY_PREFIX) and policy != own:
            problems.append(
                f"Vault role '{name}' gives its tokens '{policy}', a platform policy that is "
                f"not its own ('{own}'): another team's secrets"
            )
    return problems


VAULT_KINDS = {"jwt-mount", "jwt-role", "policy"}


def _validate_scope(args: ResourceValidationArgs, report: ReportViolation) -> None:
    address = args.props.get("address")
    vault = args.resource_type == VAULT_AUTH or args.props.get("kind") in VAULT_KINDS
    if vault and isinstance(address, str) and not address.startswith("https://"):
        report(
            f"Vault address '{address}' is not https: jobs' GitHub tokens and their Vault "
            "tokens would cross the network in clear",
            None,
        )
    if vault and isinstance(address, str) and "@" in address:
        report(
            f"Vault address '{address}' carries user information: its host is what follows "
            "the '@', where jobs would send their GitHub tokens",
            None,
        )
    for role in _roles(args):
        if isinstance(role, dict):
            for problem in _scope_problems(role):
                report(problem, None)


vault_role_scoped = ResourceValidationPolicy(
    name="vault-role-scoped-to-its-team",
    description="Vault is reached over https, and JWT roles bind a literal non-STS audience, "
    "repositories of a literal owner and the owner's id, and give their tokens no other "
    "team's policy and no root.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_scope,
)
