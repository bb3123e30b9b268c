"""Run the Pulumi program under Pulumi's official mocks and record what it declares.

No CLI, no plugins, no cloud: ``set_mocks`` replaces the engine, and :class:`RecordingMocks`
answers each resource with plausible outputs (an ARN for a role, a kubeconfig for the
EKS component) while keeping its inputs. Tests assert on the recording; ``make plan``
prints it and runs the policy pack over it.
"""

from __future__ import annotations

import asyncio
import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
PROJECT = "runner-platform"

_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "mock", "cluster": {"server": "https://mock.eks.local"}}],
    "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "mock"}}],
    "current-context": "mock",
    "users": [{"name": "mock", "user": {"token": "mock"}}],
}


_ZONES = ["us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"]
_INVOKES: dict[str, dict[str, Any]] = {
    "aws:index/getCallerIdentity:getCallerIdentity": {
        "accountId": ACCOUNT_ID,
        "arn": f"arn:aws:iam::{ACCOUNT_ID}:root",
        "userId": "mock",
        "id": ACCOUNT_ID,
    },
    "aws:index/getPartition:getPartition": {
        "partition": "aws",
        "dnsSuffix": "amazonaws.com",
        "id": "aws",
    },
    "aws:index/getAvailabilityZones:getAvailabilityZones": {
        "names": _ZONES,
        "zoneIds": _ZONES,
        "id": "us-west-2",
    },
}


@dataclass(frozen=True)
class Recorded:
    """One resource as the program declared it: type token, name and wire-form inputs."""

    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(Recorded(args.typ, args.name, dict(args.inputs), bool(args.custom)))
        outputs = dict(args.inputs)
        physical = outputs.get("name") or args.name
        if args.typ == "eks:index:Cluster":
            outputs.update(
                kubeconfig=_KUBECONFIG,
                kubeconfigJson=json.dumps(_KUBECONFIG),
                oidcProviderArn=f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/"
                "oidc.eks.us-west-2.amazonaws.com/id/MOCK",
                oidcProviderUrl="https://oidc.eks.us-west-2.amazonaws.com/id/MOCK",
                oidcIssuer="oidc.eks.us-west-2.amazonaws.com/id/MOCK",
                clusterSecurityGroupId="sg-0c1u5te7000000000",
            )
        elif args.typ.startswith("aws:iam/"):
            kind = args.typ.rsplit(":", 1)[-1].lower()
            outputs.setdefault("arn", f"arn:aws:iam::{ACCOUNT_ID}:{kind}/{physical}")
            outputs.setdefault("name", physical)
        elif args.typ == "aws:sqs/queue:Queue":
            outputs.update(
                arn=f"arn:aws:sqs:us-west-2:{ACCOUNT_ID}:{physical}",
                url=f"https://sqs.us-west-2.amazonaws.com/{ACCOUNT_ID}/{physical}",
                name=physical,
            )
        elif args.typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            outputs["primaryEndpointAddress"] = f"master.{args.name}.cache.amazonaws.com"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = "mock-password-not-a-secret"
        elif args.typ.startswith("aws:"):
            outputs.setdefault("arn", f"arn:aws:mock:us-west-2:{ACCOUNT_ID}:{args.name}")
            outputs.setdefault("name", physical)
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Answer the few invokes the program makes; no failures."""
        return _INVOKES.get(args.token, {}), []

    def of_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, type_token: str, name: str) -> Recorded:
        matches = [r for r in self.of_type(type_token) if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources of type {type_token} named {name}")
        return matches[0]


def stack_config(stack_file: Path) -> dict[str, str]:
    """A stack file's config as the engine hands it to a program: JSON for objects."""
    document = yaml.safe_load(stack_file.read_text()) or {}
    flat: dict[str, str] = {}
    for key, value in (document.get("config") or {}).items():
        flat[key] = value if isinstance(value, str) else json.dumps(value)
    return flat


# Secrets a stack sets with `pulumi config set --secret`; the committed stack files cannot
# hold them unencrypted, so runs under mocks (tests, `make plan`) stand in a placeholder.
PLACEHOLDER_SECRETS = {"runner-platform:vault_token": "placeholder-not-a-token"}


def mock_config(stack_file: Path) -> dict[str, str]:
    """A stack's config plus placeholders for the secrets it cannot commit."""
    return {**PLACEHOLDER_SECRETS, **stack_config(stack_file)}


def _ensure_event_loop() -> None:
    """The SDK runs on the thread's current event loop; an asyncio.run() elsewhere in the
    same process leaves none behind. Reuse a usable loop, else install one."""
    try:
        usable = not asyncio.get_event_loop_policy().get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    config: dict[str, str], stack: str = "dev", program: Path = ROOT / "__main__.py"
) -> RecordingMocks:
    """Run the program under mocks with ``config`` and return everything it declared.

    Raises whatever the program raises (a ``pulumi.RunError`` for a bad stack config).
    """
    _ensure_event_loop()
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_all_config(config)
    settings = pulumi.runtime.settings.SETTINGS
    settings.rpc_manager.clear()
    settings.outputs.clear()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    async def main() -> None:
        runpy.run_path(str(program), run_name="__main__")

    _sync_await(pulumi.runtime.stack.run_pulumi_func(lambda: _sync_await(main())))
    return mocks
