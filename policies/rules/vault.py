"""Vault: tokens issued to runners live at most one hour."""

from __future__ import annotations

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
