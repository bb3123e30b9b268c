"""IAM: GitHub OIDC trust is always scoped, no IAM users or keys, sessions at most 1 h, no
escalation policy on a team's role.

A trust statement is GitHub's when its Federated principal is a GitHub issuer and its
``Action`` (globs, caseless) or ``NotAction`` covers ``sts:AssumeRoleWithWebIdentity``.
Only ``StringEquals`` and ``StringLike`` scope it: a negated operator (``StringNot…``)
narrows what the others allow and never scopes alone, and ``…IfExists`` / set operators
pass when the key is missing. Every scoping ``sub`` must start ``repo:<owner>/`` or, in
the id form, ``repo:<owner>@<owner id>/`` with the id written out: IAM's ``*`` runs across
``/``, ``@`` and ``:``, so a wildcard before the first ``/`` reaches other owners' (or other
repositories') subjects. ``aud`` is pinned without wildcards.
"""

from __future__ import annotations

import re
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import as_document, as_list, names_action

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


WEB_IDENTITY = "sts:AssumeRoleWithWebIdentity"
# The operators that scope a key: every value of the request must match one listed.
_SCOPING = ("StringEquals", "StringLike")
# repo:<owner>/ (plain) or repo:<owner>@ (id form); an owner login has no wildcard.
_ANCHORED_SUBJECT = re.compile(r"^repo:[A-Za-z0-9][A-Za-z0-9-]*(?P<form>[/@])")
_PINNED_OWNER_ID = re.compile(r"^repo:[A-Za-z0-9][A-Za-z0-9-]*@[0-9]+/")


def _github_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for statement in as_list(document.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal") or {}
        federated = as_list(principal.get("Federated")) if isinstance(principal, dict) else []
        if any(_GITHUB_PROVIDER.search(str(f)) for f in federated) and names_action(
            statement, WEB_IDENTITY
        ):
            found.append(statement)
    return found


def too_broad(subject: str) -> bool:
    """A subject pattern that does not start with a literal owner trusts strangers:
    ``*``, ``*:*``, ``*/*:ref:…``, ``repo:*/web:*``, ``repo:acme*/…``."""
    return _ANCHORED_SUBJECT.match(subject) is None


def unpinned_owner_id(subject: str) -> bool:
    """An id-form subject (``repo:OWNER@ID/…``) whose owner id is not written out."""
    anchored = _ANCHORED_SUBJECT.match(subject)
    return (
        anchored is not None and anchored["form"] == "@" and _PINNED_OWNER_ID.match(subject) is None
    )


def _condition_values(statement: dict[str, Any], suffix: str) -> list[str] | None:
    """The values the scoping operators give keys ending in ``suffix`` (None: no such key)."""
    values: list[str] = []
    found = False
    for operator, block in (statement.get("Condition") or {}).items():
        if operator not in _SCOPING or not isinstance(block, dict):
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
    for statement in as_list(document.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal")
        federated = as_list(principal.get("Federated")) if isinstance(principal, dict) else []
        aws = as_list(principal.get("AWS")) if isinstance(principal, dict) else []
        # '*' and {"AWS": "*"} let every AWS account (and anyone) assume it, by any action.
        anyone = principal == "*" or any(str(a).strip() == "*" for a in aws)
        any_provider = any("*" in str(f) for f in federated)
        if anyone or (any_provider and names_action(statement, WEB_IDENTITY)):
            report(
                f"trusts any principal or identity provider ({principal!r}) to assume it: "
                "a token from any issuer would do",
                None,
            )
    for statement in _github_statements(document):
        subjects = _condition_values(statement, ":sub")
        if not subjects:
            report(
                "trusts the GitHub OIDC provider without a 'sub' condition: any "
                "repository on GitHub could assume it",
                None,
            )
        else:
            if broad := [s for s in subjects if too_broad(s)]:
                report(f"trusts GitHub OIDC subjects that match any owner: {broad}", None)
            if unpinned := [s for s in subjects if unpinned_owner_id(s)]:
                report(
                    f"trusts id-form GitHub OIDC subjects without the owner's id: {unpinned}; "
                    "IAM's '*' there runs across '/' and ':' into other repositories' and "
                    "re-created orgs' subjects (write repo:OWNER@<id>/…)",
                    None,
                )
        audiences = _condition_values(statement, ":aud")
        if not audiences:
            report("trusts the GitHub OIDC provider without an 'aud' condition", None)
        elif wild := [a for a in audiences if "*" in a or "?" in a]:
            report(
                f"trusts GitHub OIDC tokens of any audience: {wild}; a token minted for "
                "another service (Vault) would assume the role",
                None,
            )
        elif other := [a for a in audiences if a != "sts.amazonaws.com"]:
            report(
                f"trusts GitHub OIDC tokens minted for {other}, not 'sts.amazonaws.com': a "
                "token a job asked for another service (Vault) would assume the role",
                None,
            )


github_oidc_trust = ResourceValidationPolicy(
    name="github-oidc-trust-scoped",
    description="Roles trusted by a GitHub OIDC provider must pin 'aud' (no wildcard) and "
    "a 'sub' that starts with a literal owner (and, in the id form, the owner's id).",
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


# --- escalation policies on team roles ---------------------------------------------------

ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
ROLE_POLICY_ATTACHMENTS_EXCLUSIVE = (
    "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive"
)
POLICY_ATTACHMENT = "aws:iam/policyAttachment:PolicyAttachment"
TEAM_ROLE_PREFIX = "github-runner-"
# Managed policies that reach past one team in a shared account: IAM itself (a team could
# make itself any role), the organisation and SSO, or every instance, function, secret and
# key of the account (the platform's own included). Matched by name, AWS's or a copy's.
ESCALATION_POLICIES = frozenset(
    {
        "AdministratorAccess",
        "AdministratorAccess-Amplify",
        "AdministratorAccess-AWSElasticBeanstalk",
        "PowerUserAccess",
        "IAMFullAccess",
        "AWSOrganizationsFullAccess",
        "AWSSSOMasterAccountAdministrator",
        "AWSSSOMemberAccountAdministrator",
        "AWSSSODirectoryAdministrator",
        "AmazonEC2FullAccess",
        "AmazonSSMFullAccess",
        "AWSLambda_FullAccess",
        "AWSCloudFormationFullAccess",
        "SecretsManagerReadWrite",
        "AWSKeyManagementServicePowerUser",
        "SystemAdministrator",
        "NetworkAdministrator",
    }
)


_ESCALATION_NAMES = frozenset(name.lower() for name in ESCALATION_POLICIES)


# Beyond the list, any name of these shapes: full or administrative access to a service
# reaches every team's resources of it in a shared account (AmazonS3FullAccess: every
# bucket; AWSCodeBuildAdminAccess: every project and its role).
_ESCALATION_SHAPE = re.compile(r"(FullAccess|AdminAccess|Administrator|PowerUser)", re.IGNORECASE)


def escalation_policy(arn: Any) -> str | None:
    """The deny-listed name of a managed policy ARN, or None. IAM names are caseless: a
    customer copy named ``secretsmanagerreadwrite`` counts too."""
    if not isinstance(arn, str) or ":policy/" not in arn:
        return None
    name = arn.strip().rsplit("/", 1)[-1]
    if name.lower() in _ESCALATION_NAMES or _ESCALATION_SHAPE.search(name):
        return name
    return None


def _role_name(value: Any) -> str | None:
    """A role given by name or ARN (``arn:aws:iam::1:role/path/name``); None if unknown."""
    if not isinstance(value, str):
        return None
    return value.rsplit("/", 1)[-1] if ":role/" in value else value


def _attachments(args: ResourceValidationArgs) -> list[tuple[str | None, Any]]:
    props = args.props
    if args.resource_type == ROLE_POLICY_ATTACHMENT:
        return [(_role_name(props.get("role")), props.get("policyArn"))]
    if args.resource_type == ROLE_POLICY_ATTACHMENTS_EXCLUSIVE:
        name = _role_name(props.get("roleName"))
        return [(name, arn) for arn in as_list(props.get("policyArns"))]
    if args.resource_type == POLICY_ATTACHMENT:
        return [(_role_name(r), props.get("policyArn")) for r in as_list(props.get("roles"))]
    if args.resource_type == ROLE:
        name = _role_name(props.get("name"))
        return [(name, arn) for arn in as_list(props.get("managedPolicyArns"))]
    return []


def _allowed(config: Any) -> dict[tuple[str, str], str]:
    """(role, policy ARN) → reason, for the stack's allowances that give a reason."""
    allowed: dict[tuple[str, str], str] = {}
    for entry in as_list(config.get("allow") if hasattr(config, "get") else None):
        if not isinstance(entry, dict):
            continue
        role, arn, reason = entry.get("role"), entry.get("policyArn"), entry.get("reason")
        if isinstance(role, str) and isinstance(arn, str) and str(reason or "").strip():
            allowed[(role, arn)] = str(reason)
    return allowed


def _validate_escalation(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = _allowed(args.get_config())
    for role, arn in _attachments(args):
        name = escalation_policy(arn)
        # IAM role names are caseless: GitHub-Runner-web-role is a team role too.
        if role is None or not role.lower().startswith(TEAM_ROLE_PREFIX) or name is None:
            continue
        if (role, str(arn)) in allowed:
            continue
        report(
            f"attaches {arn} to team role '{role}': {name} reaches past the team in a shared "
            "account (IAM, or every instance, secret or key of it); a stack that must allows "
            f"it in its policy config ('allow': role, policyArn and a reason)",
            None,
        )


team_role_no_escalation = ResourceValidationPolicy(
    name="team-role-no-escalation-policy",
    description="No escalation managed policy (AdministratorAccess, IAMFullAccess, "
    "PowerUserAccess, …) on a github-runner-* role, unless the stack's policy config allows "
    "that one, with a reason.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_escalation,
    config_schema=PolicyConfigSchema(
        properties={
            "allow": {
                "type": "array",
                "default": [],
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string"},
                        "policyArn": {"type": "string"},
                        "reason": {"type": "string", "minLength": 1},
                    },
                    "required": ["role", "policyArn", "reason"],
                },
            }
        }
    ),
)
