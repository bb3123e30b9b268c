"""Hostile stacks, exposure (issue 9, items 7-11): one-change variants of Pulumi.dev.yaml
that would open the platform, each refused by ``make plan`` (exit 1 or 2) with a message
that names the problem.

The model refuses all of these first (exit 2). The pack's own rules for the same problems
are proven without the model in tests/policies/test_security_exposure_rules.py, on resource
inputs: the endpoint CIDRs, the runner-platform.io labels on a NodePool, the controller's
affinity and its NetworkPolicy, an ALB through node ports, a plain HTTP listener, the
runner egress exceptions of an existing VPC, and what no stack config can produce (Redis
without TLS, host access in runner pods, token-mounting accounts, the system nodes' IMDS).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hostile_support import plan_variant, pool

Mutation = Callable[[dict[str, Any]], None]


def _endpoint(*cidrs: str) -> Mutation:
    def mutate(documents: dict[str, Any]) -> None:
        documents["cluster"]["endpoint"]["public_access_cidrs"] = list(cidrs)

    return mutate


def _existing_vpc_without_cidrs(documents: dict[str, Any]) -> None:
    documents["cluster"]["vpc"] = {
        "vpc_id": "vpc-0abc1234",
        "private_subnet_ids": ["subnet-0a", "subnet-0b"],
        "public_subnet_ids": ["subnet-1a", "subnet-1b"],
    }


def _system_label_on_a_pool(documents: dict[str, Any]) -> None:
    pool(documents, "warm")["labels"] = {"runner-platform.io/system": "true"}


def _platform_taint_on_a_pool(documents: dict[str, Any]) -> None:
    pool(documents, "gpu")["taints"] = [
        {"key": "runner-platform.io/pool", "value": "ml-isolated", "effect": "NoSchedule"}
    ]


def _annotation(key: str, value: str) -> Mutation:
    def mutate(documents: dict[str, Any]) -> None:
        documents["controller"]["ingress_annotations"][key] = value

    return mutate


def _in_cluster_ingress_without_its_namespace(documents: dict[str, Any]) -> None:
    documents["controller"]["ingress_class"] = "nginx"


HOSTILE: list[tuple[str, Mutation, str]] = [
    (
        "endpoint split in two halves",
        _endpoint("0.0.0.0/1", "128.0.0.0/1"),
        "cluster.endpoint.public_access_cidrs: ['0.0.0.0/1', '128.0.0.0/1'] together cover "
        "every IPv4 address",
    ),
    (
        "endpoint open to all of IPv6",
        _endpoint("203.0.113.0/24", "::/0"),
        "cluster.endpoint.public_access_cidrs: ::/0 opens the API to the internet",
    ),
    (
        "endpoint in four quarters",
        _endpoint("0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"),
        "cluster.endpoint.public_access_cidrs: ['0.0.0.0/2', '64.0.0.0/2', '128.0.0.0/2', "
        "'192.0.0.0/2'] together cover every IPv4 address",
    ),
    (
        "endpoint through IPv4-mapped IPv6",
        _endpoint("::ffff:0.0.0.0/97", "::ffff:128.0.0.0/97"),
        "cluster.endpoint.public_access_cidrs: ['0.0.0.0/1', '128.0.0.0/1'] together cover "
        "every IPv4 address",
    ),
    (
        "endpoint block too wide",
        _endpoint("203.0.113.0/24", "64.0.0.0/3"),
        "cluster.endpoint.public_access_cidrs[1]: '64.0.0.0/3' is a /3 (536,870,912 addresses); "
        "a public endpoint takes IPv4 blocks of /8 or narrower",
    ),
    (
        "existing VPC without its blocks",
        _existing_vpc_without_cidrs,
        "cluster.vpc: an existing VPC needs 'cidrs': every CIDR block of the VPC",
    ),
    (
        "pool labelled as system nodes",
        _system_label_on_a_pool,
        "pools[0].labels: 'runner-platform.io/system' is in the 'runner-platform.io/' domain the "
        "platform reserves",
    ),
    (
        "pool with the platform's taint",
        _platform_taint_on_a_pool,
        "pools[2].taints[0].key: 'runner-platform.io/pool' is in the 'runner-platform.io/' "
        "domain the platform reserves",
    ),
    (
        "ALB through node ports",
        _annotation("alb.ingress.kubernetes.io/target-type", "instance"),
        "controller.ingress_annotations: 'alb.ingress.kubernetes.io/target-type' is 'instance'",
    ),
    (
        "webhooks over plain HTTP",
        _annotation("alb.ingress.kubernetes.io/listen-ports", '[{"HTTP": 80}]'),
        "controller.ingress_annotations: 'alb.ingress.kubernetes.io/listen-ports' opens a plain "
        "HTTP listener",
    ),
    (
        "in-cluster ingress admitted from anywhere",
        _in_cluster_ingress_without_its_namespace,
        "controller.ingress_controller_namespace: required with ingress class 'nginx'",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_make_plan_refuses_a_hostile_stack(tmp_path: Path, mutate: Mutation, message: str) -> None:
    result = plan_variant(mutate, tmp_path)
    assert result.returncode in (1, 2), result.output
    assert message in result.output, result.output


def test_the_dev_stack_itself_plans_clean(tmp_path: Path) -> None:
    """The variants differ from a stack make plan accepts in exactly their one change."""
    result = plan_variant(lambda documents: None, tmp_path)
    assert result.returncode == 0, result.output
    assert "Policy pack 'runner-platform': 0 violation(s)" in result.output


def test_the_same_stack_with_its_blocks_listed_plans_clean(tmp_path: Path) -> None:
    def existing_vpc(documents: dict[str, Any]) -> None:
        _existing_vpc_without_cidrs(documents)
        documents["cluster"]["vpc"]["cidrs"] = ["10.40.0.0/16", "100.64.0.0/16"]

    result = plan_variant(existing_vpc, tmp_path)
    assert result.returncode == 0, result.output
