"""Who may assume what: role mapping, an IAM trust evaluator, and the access matrix.

moto's STS accepts any web identity token, so the platform checks its own trust
policies: :func:`trust_allows` evaluates a role's trust document for a token's claims
the way IAM does for ``sts:AssumeRoleWithWebIdentity`` — the Federated principal must be
the token issuer's provider, the action must match the statement's ``Action`` (globs,
caseless) or miss its ``NotAction``, every condition operator must hold (AND), within one
each key must hold (AND), and a key holds when any of its values matches (OR);
``StringLike`` globs ``*`` and ``?``; keys the token does not supply fail, except under a
negated operator (``StringNotEquals``, ``StringNotLike``), which holds when no value
matches — so a missing key passes it. Only ``aud`` and ``sub`` (and ``amr``) are
condition keys for an OIDC provider; other claims cannot be conditioned on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.model import PlatformSpec, Team

ACTION = "sts:AssumeRoleWithWebIdentity"


def team_for(spec: PlatformSpec, instance: str, repository: str) -> Team | None:
    """The one team a repository belongs to on an instance (the model forbids overlaps)."""
    for team in spec.teams:
        if team.instance == instance and team.claims_repository(repository):
            return team
    return None


def _glob(pattern: str, value: str) -> bool:
    # IAM's StringLike: * any run (including '/', ':'), ? one character, case-sensitive.
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _equals(pattern: str, value: str) -> bool:
    return pattern == value


_OPERATORS = {"StringEquals": _equals, "StringLike": _glob}
_NEGATED = {"StringNotEquals": _equals, "StringNotLike": _glob}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def trust_allows(
    document: dict[str, Any], claims: dict[str, Any], *, issuer: str, provider_arn: str
) -> bool:
    """Would IAM let a token with ``claims`` from ``issuer`` assume a role with this trust?"""
    key_prefix = issuer.removeprefix("https://")
    context = {
        f"{key_prefix}:{name}": claims[name] for name in ("aud", "sub", "amr") if name in claims
    }
    allowed = False
    for statement in _as_list(document.get("Statement", [])):
        principal = statement.get("Principal", {})
        federated = _as_list(principal.get("Federated", [])) if isinstance(principal, dict) else []
        if provider_arn not in federated or not _names_action(statement):
            continue
        if _conditions_hold(statement.get("Condition", {}), context):
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _names_action(statement: dict[str, Any]) -> bool:
    """IAM action names are caseless and ``Action`` takes globs (``sts:AssumeRoleWith*``);
    ``NotAction`` names every action it does not match."""
    if "NotAction" in statement:
        return not any(
            _glob(str(a).lower(), ACTION.lower()) for a in _as_list(statement["NotAction"])
        )
    return any(_glob(str(a).lower(), ACTION.lower()) for a in _as_list(statement.get("Action")))


def _conditions_hold(conditions: dict[str, dict[str, Any]], context: dict[str, Any]) -> bool:
    for operator, block in conditions.items():
        negated = operator in _NEGATED
        test = _NEGATED[operator] if negated else _OPERATORS.get(operator)
        if test is None:
            return False  # an operator this evaluator does not know: never assume it holds
        for key, patterns in block.items():
            values = [str(v) for v in _as_list(context.get(key, []))]
            matched = any(test(str(p), v) for p in _as_list(patterns) for v in values)
            if negated and matched:
                return False
            if not negated and (key not in context or not matched):
                return False
    return True


@dataclass(frozen=True)
class AccessRow:
    team: str
    instance: str
    repositories: tuple[str, ...]
    refs: str
    iam_role: str
    vault: str
    audience: str


def _refs(team: Team) -> str:
    if not team.refs and not team.environments:
        return "any branch, tag, environment or pull request"
    return ", ".join([*team.refs, *(f"environment {name}" for name in team.environments)])


def access_matrix(spec: PlatformSpec) -> list[AccessRow]:
    """What an auditor asks: which repositories and refs reach which roles."""
    rows = []
    for team in spec.teams:
        rows.append(
            AccessRow(
                team=team.name,
                instance=team.instance,
                repositories=team.repositories,
                refs=_refs(team),
                iam_role=team.role_name,
                vault=f"jwt-{team.instance}/role/{team.name}",
                audience=f"sts.amazonaws.com; Vault: {spec.vault.audience}",
            )
        )
    return rows


def render_matrix(rows: Iterable[AccessRow]) -> str:
    header = ("team", "instance", "repositories", "refs", "IAM role", "Vault login")
    lines = [list(header)]
    for row in rows:
        lines.append(
            [row.team, row.instance, ", ".join(row.repositories), row.refs, row.iam_role, row.vault]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
