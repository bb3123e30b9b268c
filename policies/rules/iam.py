"""IAM: GitHub OIDC trust is always scoped, no IAM users or keys, sessions at most 1 h."""

from __future__ import annotations

import re
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import as_document, as_list

ROLE = "aws:iam/role:Role"
MAX_SESSION_SECONDS = 3600
_GITHUB_PROVIDER = re.compile(
    r":oidc-provider/(token\.actions\.githubusercontent\.com(/[^/]+)?|[^/]+/_services/token)$"
)
_USER_TYPES = {
    "aws:iam/user:User",
    "aws:iam/accessKey:AccessKey",
    "aws:iam/userLoginProfile:UserLoginProfile",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/serviceSpecificCredential:ServiceSpecificCredential",
}


def _github_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for statement in as_list(document.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal") or {}
        federated = as_list(principal.get("Federated")) if isinstance(principal, dict) else []
        actions = as_list(statement.get("Action"))
        if any(_GITHUB_PROVIDER.search(str(f)) for f in federated) and (
            "sts:AssumeRoleWithWebIdentity" in actions or "sts:*" in actions or "*" in actions
        ):
            found.append(statement)
    return found


def too_broad(subject: str) -> bool:
    """A bare wildcard, or any pattern whose owner part is a wildcard, trusts strangers."""
    if subject.strip("*") == "":
        return True
    if not subject.startswith("repo:"):
        return False
    owner = re.split(r"[/@:]", subject[len("repo:") :], maxsplit=1)[0]
    return owner == "" or any(ch in owner for ch in "*?")


def _condition_values(statement: dict[str, Any], suffix: str) -> list[str] | None:
    values: list[str] = []
    found = False
    for operator, block in (statement.get("Condition") or {}).items():
        if not isinstance(block, dict) or "StringNotLike" in operator:
            continue
        for key, value in block.items():
            if key.endswith(suffix):
                found = True
                values.extend(str(v) for v in as_list(value))
    return values if found else None


def _validate_trust(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ROLE:
        return
    document = as_document(args.props.get("assumeRolePolicy"))
    if document is None:
        return  # not known during this preview; checked again at update
    for statement in _github_statements(document):
        subjects = _condition_values(statement, ":sub")
        if not subjects:
            report(
                "trusts the GitHub OIDC provider without a 'sub' condition: any "
                "repository on GitHub could assume it",
                None,
            )
        elif broad := [s for s in subjects if too_broad(s)]:
            report(f"trusts GitHub OIDC subjects that match any owner: {broad}", None)
        audiences = _condition_values(statement, ":aud")
        if not audiences:
            report("trusts the GitHub OIDC provider without an 'aud' condition", None)


github_oidc_trust = ResourceValidationPolicy(
    name="github-oidc-trust-scoped",
    description="Roles trusted by a GitHub OIDC provider must pin 'aud' and a non-wildcard "
    "'sub' (repository) condition.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_trust,
)


def _validate_no_users(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type in _USER_TYPES:
        report(
            f"{args.resource_type} creates a long-lived credential; runners and the "
            "controller use OIDC and IRSA roles only",
            None,
        )


no_iam_users = ResourceValidationPolicy(
    name="no-iam-users-or-access-keys",
    description="No IAM users, access keys or other static credentials.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_no_users,
)


def _validate_session(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ROLE:
        return
    duration = args.props.get("maxSessionDuration")
    if duration is None:
        return  # AWS default is 3600 s
    if not isinstance(duration, int | float):
        return
    if duration > MAX_SESSION_SECONDS:
        report(f"maxSessionDuration is {int(duration)} s; at most {MAX_SESSION_SECONDS} s", None)


role_session_limit = ResourceValidationPolicy(
    name="role-session-at-most-1h",
    description="IAM role sessions last at most one hour.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_session,
)
