"""``make plan``: what a stack would create, and the policy verdict, with no cloud access.

Runs the real program under Pulumi's mocks with the stack's config file, lists every
resource (type, name and the properties a reviewer looks at first) and runs the policy
pack over them, with the stack's policy config (``policies/config/<stack>.json``, the
file ``pulumi preview --policy-pack-config`` takes) when there is one. Exit 0: clean; 1: a
policy violation; 2: the stack config (or the policy config) is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pulumi

from localenv.pulumi_mocks import ROOT, Recorded, mock_config, run_program
from policies.evaluate import evaluate

_KEY_PROPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "eks:index:Cluster": (
        ("name",),
        ("version",),
        ("endpointPublicAccess",),
        ("publicAccessCidrs",),
        ("authenticationMode",),
    ),
    "aws:iam/role:Role": (("name",), ("maxSessionDuration",)),
    "kubernetes:helm.sh/v3:Release": (("chart",), ("version",)),
    "kubernetes:karpenter.sh/v1:NodePool": (("metadata", "name"), ("spec", "limits")),
    "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass": (
        ("metadata", "name"),
        ("spec", "kubelet", "maxPods"),
        ("spec", "instanceStorePolicy"),
    ),
    "kubernetes:apps/v1:Deployment": (("metadata", "name"), ("spec", "replicas")),
    "aws:elasticache/replicationGroup:ReplicationGroup": (
        ("transitEncryptionEnabled",),
        ("numCacheClusters",),
    ),
}


def _get(props: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = props
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def describe(resource: Recorded) -> str:
    paths = _KEY_PROPS.get(resource.type)
    if paths is None:
        paths = (
            (("metadata", "namespace"), ("metadata", "name"))
            if resource.type.startswith("kubernetes:")
            else ()
        )
    shown = [
        f"{'.'.join(p)}={_get(resource.inputs, p)!r}"
        for p in paths
        if _get(resource.inputs, p) is not None
    ]
    return f"  {resource.type:58} {resource.name:38} {' '.join(shown)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="dev", help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--config", type=Path, help="a stack config file to use instead")
    parser.add_argument(
        "--policy-config",
        type=Path,
        help="the policy pack's config (default: policies/config/<stack>.json, if present)",
    )
    args = parser.parse_args(argv)
    policy_file = args.policy_config or ROOT / "policies" / "config" / f"{args.stack}.json"
    try:
        policy_config = json.loads(policy_file.read_text()) if policy_file.exists() else {}
    except ValueError as error:
        print(f"plan: {policy_file} is not JSON: {error}", file=sys.stderr)
        return 2
    if not isinstance(policy_config, dict):
        print(
            f"plan: {policy_file} is not a JSON object (policy name → settings): "
            f"{type(policy_config).__name__}",
            file=sys.stderr,
        )
        return 2
    if args.policy_config and not policy_file.exists():
        print(f"plan: no policy config at {policy_file}", file=sys.stderr)
        return 2
    stack_file = args.config or ROOT / f"Pulumi.{args.stack}.yaml"
    if not stack_file.exists():
        print(f"plan: no stack config at {stack_file}", file=sys.stderr)
        return 2
    try:
        recording = run_program(mock_config(stack_file), stack=args.stack)
    except pulumi.RunError as error:
        print(f"plan: {error}", file=sys.stderr)
        return 2
    print(
        f"Stack '{args.stack}' ({stack_file.name}) would declare "
        f"{len(recording.resources)} resources:\n"
    )
    for resource in recording.resources:
        print(describe(resource))
    print("\nBy type:")
    for type_token, count in sorted(Counter(r.type for r in recording.resources).items()):
        print(f"  {count:4}  {type_token}")
    declared = [(r.type, r.name, r.inputs) for r in recording.resources]
    violations = evaluate(declared, policy_config)
    if policy_config:
        # What the stack's policy config relaxes is part of the verdict: print it.
        print(f"\nPolicy config {policy_file.name}:")
        for policy, settings in policy_config.items():
            print(f"  {policy}: {json.dumps(settings, sort_keys=True)}")
    print(f"\nPolicy pack 'runner-platform': {len(violations)} violation(s)")
    for violation in violations:
        print(
            f"  [{violation.policy}] {violation.resource_type} {violation.resource_name}: "
            f"{violation.message}"
        )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
