"""Small helpers shared by the rules: JSON documents and nested lookups."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import StackValidationArgs

NAMESPACE = "kubernetes:core/v1:Namespace"
TEAM_LABEL = "runner-platform.io/team"


def as_document(value: Any) -> dict[str, Any] | None:
    """An IAM document given as JSON text or a mapping; None when it is not known yet."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def dig(value: Any, *path: str) -> Any:
    """``value[path[0]][path[1]]...`` or None where any step is missing."""
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def as_int(value: Any) -> int | None:
    """Numbers cross the engine's wire as doubles (protobuf Struct): 14.0 means 14."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else None


def iam_glob(pattern: str, value: str, *, caseless: bool = False) -> bool:
    """IAM's ``StringLike``: ``*`` any run (``/`` and ``:`` too), ``?`` one character."""
    if caseless:
        pattern, value = pattern.lower(), value.lower()
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def names_action(statement: Mapping[str, Any], action: str) -> bool:
    """Whether an IAM statement covers ``action``: its ``Action`` globs match it (action
    names are caseless: ``sts:AssumeRoleWith*``), or its ``NotAction`` globs miss it."""
    if "NotAction" in statement:
        return not any(
            iam_glob(str(a), action, caseless=True) for a in as_list(statement["NotAction"])
        )
    return any(iam_glob(str(a), action, caseless=True) for a in as_list(statement.get("Action")))


def named_labels(
    args: StackValidationArgs, resource_type: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, labels) of every resource of ``resource_type`` with a name and labels."""
    for resource in args.resources:
        if resource.resource_type != resource_type:
            continue
        labels = dig(resource.props, "metadata", "labels") or {}
        name = dig(resource.props, "metadata", "name")
        if isinstance(name, str) and isinstance(labels, Mapping):
            yield name, labels


def runner_namespaces(args: StackValidationArgs) -> dict[str, str]:
    """Namespace → team, for the Namespaces the stack declares for a team (labelled with it)."""
    return {
        name: str(labels[TEAM_LABEL])
        for name, labels in named_labels(args, NAMESPACE)
        if TEAM_LABEL in labels
    }
