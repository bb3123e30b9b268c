"""Exposure in what the program declares (issue 9, items 10-11): isolated pools' own node
role and security group, aws-node on IRSA, the system nodes' launch template, Redis open
to the controller's nodes only, and the default accounts of runner namespaces patched."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from localenv.pulumi_mocks import Recorded, RecordingMocks, mock_config, run_program
from tests.conftest import ROOT

DEV_CONFIG = mock_config(ROOT / "Pulumi.dev.yaml")
ROLE = "aws:iam/role:Role"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
CLUSTER_SG = "sg-0c1u5te7000000000"  # what the mocks answer for EKS's cluster security group


@pytest.fixture(scope="module")
def dev_run() -> RecordingMocks:
    return run_program(DEV_CONFIG)


def _node_classes(run: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in run.of_type(NODE_CLASS)}


def _attached(run: RecordingMocks, prefix: str) -> list[str]:
    return [r.inputs["policyArn"] for r in run.of_type(ATTACHMENT) if r.name.startswith(prefix)]


def test_an_isolated_pool_has_its_own_node_role_and_security_group(
    dev_run: RecordingMocks,
) -> None:
    classes = _node_classes(dev_run)
    isolated = classes["ml-isolated"]
    assert isolated["role"] == "KarpenterNodeRole-runners-dev.ml-isolated"
    assert isolated["securityGroupSelectorTerms"] == [{"id": "pools-ml-isolated-nodes-id"}]
    for shared in ("warm", "gpu", "highmem", "nvme"):
        assert classes[shared]["role"] == "KarpenterNodeRole-runners-dev"
        assert classes[shared]["securityGroupSelectorTerms"] == [
            {"tags": {"aws:eks:cluster-name": "runners-dev"}}
        ]
    role = dev_run.named(ROLE, "pools-ml-isolated-node").inputs
    assert role["tags"]["runner-platform.io/team"] == "ml"
    entry = dev_run.named("aws:eks/accessEntry:AccessEntry", "pools-ml-isolated-node").inputs
    assert entry["type"] == "EC2_LINUX"
    assert entry["principalArn"].endswith("/KarpenterNodeRole-runners-dev.ml-isolated")


def test_karpenter_may_pass_the_isolated_role(dev_run: RecordingMocks) -> None:
    policy = json.loads(
        dev_run.named("aws:iam/rolePolicy:RolePolicy", "karpenter-controller").inputs["policy"]
    )
    (pass_role,) = [s for s in policy["Statement"] if s["Action"] == "iam:PassRole"]
    arn = "arn:aws:iam::123456789012:role/KarpenterNodeRole-runners-dev.ml-isolated"
    assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in pass_role["Resource"])


def test_the_isolated_security_group_admits_only_its_pool_and_what_nodes_need(
    dev_run: RecordingMocks,
) -> None:
    rules = [r.inputs for r in dev_run.of_type(RULE) if r.name.startswith("pools-ml-isolated")]
    own = "pools-ml-isolated-nodes-id"
    into = [r for r in rules if r["securityGroupId"] == own]
    assert [r["sourceSecurityGroupId"] for r in into if r["protocol"] == "-1"] == [own]
    from_cluster = [r for r in into if r["sourceSecurityGroupId"] == CLUSTER_SG]
    assert {(r["protocol"], r["fromPort"]) for r in from_cluster} == {
        ("tcp", 10250),
        ("tcp", 4240),
        ("tcp", 4244),
        ("udp", 51871),
        ("icmp", -1),
    }
    back = [r for r in rules if r["securityGroupId"] == CLUSTER_SG]
    assert all(r["sourceSecurityGroupId"] == own and r["protocol"] != "-1" for r in back)
    assert ("tcp", 443) in {(r["protocol"], r["fromPort"]) for r in back}


def test_no_node_role_has_the_cni_policy_and_aws_node_uses_irsa(
    dev_run: RecordingMocks,
) -> None:
    for node_role in ("platform-system-node", "karpenter-node", "pools-ml-isolated-node"):
        attached = _attached(dev_run, node_role)
        assert attached and CNI_POLICY not in attached, node_role
    assert _attached(dev_run, "platform-vpc-cni") == [CNI_POLICY]
    trust = json.loads(dev_run.named(ROLE, "platform-vpc-cni").inputs["assumeRolePolicy"])
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    assert condition["oidc.eks.us-west-2.amazonaws.com/id/MOCK:sub"] == (
        "system:serviceaccount:kube-system:aws-node"
    )
    addon = dev_run.named("aws:eks/addon:Addon", "platform-vpc-cni").inputs
    assert addon["addonName"] == "vpc-cni"
    assert addon["serviceAccountRoleArn"] == "arn:aws:iam::123456789012:role/platform-vpc-cni"
    (cluster,) = dev_run.of_type("eks:index:Cluster")
    assert cluster.inputs["useDefaultVpcCni"] is True  # not pulumi-eks's own, node-role addon


def test_eni_mode_keeps_the_cni_rights_on_the_system_nodes_only() -> None:
    config = dict(DEV_CONFIG)
    cluster = json.loads(config["runner-platform:cluster"])
    cluster["cilium_mode"] = "eni"
    config["runner-platform:cluster"] = json.dumps(cluster)
    run = run_program(config)
    assert CNI_POLICY in _attached(run, "platform-system-node")
    assert CNI_POLICY not in _attached(run, "karpenter-node")
    assert not [r for r in run.of_type("aws:eks/addon:Addon") if r.name == "platform-vpc-cni"]


def test_system_nodes_launch_with_imdsv2_one_hop_and_their_own_group(
    dev_run: RecordingMocks,
) -> None:
    template: Recorded = dev_run.named("aws:ec2/launchTemplate:LaunchTemplate", "platform-system")
    options = template.inputs["metadataOptions"]
    assert options["httpTokens"] == "required"
    assert options["httpPutResponseHopLimit"] == 1
    assert template.inputs["vpcSecurityGroupIds"] == [CLUSTER_SG, "platform-system-nodes-id"]
    group = dev_run.named("aws:eks/nodeGroup:NodeGroup", "platform-system").inputs
    assert group["launchTemplate"]["id"] == "platform-system-id"


def test_redis_admits_only_the_system_nodes(dev_run: RecordingMocks) -> None:
    group = dev_run.named(SECURITY_GROUP, "controller-redis-sg").inputs
    (ingress,) = group["ingress"]
    assert ingress["securityGroups"] == ["platform-system-nodes-id"]
    assert "cidrBlocks" not in ingress


def test_runner_namespaces_default_accounts_are_patched_tokenless(
    dev_run: RecordingMocks,
) -> None:
    patches = dev_run.of_type("kubernetes:core/v1:ServiceAccountPatch")
    assert {p.inputs["metadata"]["namespace"] for p in patches} == {
        "runners-web",
        "runners-ml",
        "runners-infra",
    }
    assert all(p.inputs["automountServiceAccountToken"] is False for p in patches)
