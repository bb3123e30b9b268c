"""Run the pack's resource policies over declared resources, outside the Pulumi engine.

Pulumi's own guidance for testing packs: build ``ResourceValidationArgs`` by hand and call
``validate`` with a collecting ``report_violation``. ``make plan`` and the program tests
use this over everything the program declared under mocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules import ALL_POLICIES


@dataclass(frozen=True)
class Violation:
    policy: str
    resource_type: str
    resource_name: str
    message: str


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=None,
    )


def _urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:plan::runner-platform::{resource_type}::{name}"


def validation_args(
    resource_type: str,
    name: str,
    props: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> ResourceValidationArgs:
    urn = _urn(resource_type, name)
    return ResourceValidationArgs(resource_type, props, urn, name, _options(), None, config)


def check_stack(
    policy: StackValidationPolicy,
    resources: Iterable[tuple[str, str, Mapping[str, Any]]],
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Messages a stack ``policy`` reports over ``(type, name, props)`` triples."""
    messages: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        messages.append(message)

    declared = [
        PolicyResource(kind, props, _urn(kind, name), name, _options(), None, None, [], {})
        for kind, name, props in resources
    ]
    policy.validate(StackValidationArgs(declared, config), report)
    return messages


def check(
    policy: ResourceValidationPolicy,
    resource_type: str,
    name: str,
    props: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Messages ``policy`` reports for one resource (empty when it complies)."""
    messages: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        messages.append(message)

    policy.validate(validation_args(resource_type, name, props, config), report)
    return messages


def evaluate(
    resources: Iterable[tuple[str, str, Mapping[str, Any]]],
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Violation]:
    """Every violation of every pack policy over ``(type, name, props)`` triples."""
    config = config or {}
    resources = list(resources)
    violations = []
    for policy in ALL_POLICIES:
        if isinstance(policy, StackValidationPolicy):
            for message in check_stack(policy, resources, config.get(policy.name)):
                violations.append(Violation(policy.name, "stack", "*", message))
    for resource_type, name, props in resources:
        for policy in ALL_POLICIES:
            if not isinstance(policy, ResourceValidationPolicy):
                continue
            for message in check(policy, resource_type, name, props, config.get(policy.name)):
                violations.append(Violation(policy.name, resource_type, name, message))
    return violations
