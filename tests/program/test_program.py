"""The whole program under Pulumi's mocks with Pulumi.dev.yaml as its config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.controller_manifests import HASH_ANNOTATION, config_hash
from controller.model import PlatformSpec, RuntimeFacts, load_spec_json
from localenv import plan
from localenv.pulumi_mocks import RecordingMocks, mock_config, run_program
from policies.evaluate import evaluate
from tests.conftest import ROOT

DEV_CONFIG = mock_config(ROOT / "Pulumi.dev.yaml")


@pytest.fixture(scope="module")
def dev_run() -> RecordingMocks:
    return run_program(DEV_CONFIG)


def _by_metadata_name(run: RecordingMocks, type_token: str) -> dict[str, dict[str, Any]]:
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.of_type(type_token)}


def test_one_scoped_role_per_team(dev_run: RecordingMocks, dev_spec: PlatformSpec) -> None:
    roles = {
        r.inputs["name"]: r.inputs
        for r in dev_run.of_type("aws:iam/role:Role")
        if r.inputs.get("name", "").startswith("github-runner-")
    }
    assert set(roles) == {
        "github-runner-web-role",
        "github-runner-ml-role",
        "github-runner-infra-role",
    }
    infra = json.loads(roles["github-runner-infra-role"]["assumeRolePolicy"])
    condition = infra["Statement"][0]["Condition"]
    # infra deploys: main and the production environment only, each '*' kept in its slot.
    assert condition["StringLike"] == {
        "github.acme.internal/_services/token:sub": [
            "repo:platform/*:ref:refs/heads/main",
            "repo:platform/*:environment:production",
        ]
    }
    assert condition["StringNotLike"] == {
        "github.acme.internal/_services/token:sub": [
            "repo:platform/*:*:ref:refs/heads/main",
            "repo:platform/*:*:environment:production",
        ]
    }
    assert roles["github-runner-ml-role"]["maxSessionDuration"] == 1800
    providers = [
        r.inputs["url"]
        for r in dev_run.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    ]
    # Registration is asynchronous: compare without order.
    assert sorted(providers) == [
        "https://github.acme.internal/_services/token",
        "https://token.actions.githubusercontent.com",
    ]


def test_one_node_pool_and_node_class_per_pool(dev_run: RecordingMocks) -> None:
    pools = _by_metadata_name(dev_run, "kubernetes:karpenter.sh/v1:NodePool")
    classes = _by_metadata_name(dev_run, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
    assert set(pools) == set(classes) == {"warm", "ml-isolated", "gpu", "highmem", "nvme"}
    # 4 runners, each with room for a job and a step pod (container hooks), + 6 DaemonSets.
    assert classes["gpu"]["spec"]["kubelet"]["maxPods"] == 18
    assert classes["warm"]["spec"]["role"] == "KarpenterNodeRole-runners-dev"


def test_warm_pool_has_placeholders_and_prepull(dev_run: RecordingMocks) -> None:
    deployments = _by_metadata_name(dev_run, "kubernetes:apps/v1:Deployment")
    daemonsets = _by_metadata_name(dev_run, "kubernetes:apps/v1:DaemonSet")
    assert deployments["placeholder-warm"]["spec"]["replicas"] == 2
    # ml's isolated pool pulls its dind and tool-cache images onto each new node.
    assert set(daemonsets) == {"prepull-warm", "prepull-ml-isolated"}
    assert set(_by_metadata_name(dev_run, "kubernetes:scheduling.k8s.io/v1:PriorityClass")) == {
        "runner-platform-placeholder",
        "runner-platform-runner",
    }


def test_a_stack_without_warm_pools_still_declares_the_runner_priority_class() -> None:
    config = dict(DEV_CONFIG)
    pools = json.loads(config["runner-platform:pools"])
    pools[0].update(kind="custom", warm_nodes=0)
    config["runner-platform:pools"] = json.dumps(pools)
    run = run_program(config)
    assert set(_by_metadata_name(run, "kubernetes:scheduling.k8s.io/v1:PriorityClass")) == {
        "runner-platform-runner"
    }


def test_cilium_release_encrypts_with_wireguard(dev_run: RecordingMocks) -> None:
    releases = {
        r.inputs["chart"]: r.inputs for r in dev_run.of_type("kubernetes:helm.sh/v3:Release")
    }
    assert set(releases) == {
        "cilium",
        "oci://public.ecr.aws/karpenter/karpenter",
        "nvidia-device-plugin",
        # web's buildkit runners keep their work volumes on the NVMe pool's instance store.
        "localpv-provisioner",
    }
    assert releases["cilium"]["values"]["encryption"] == {"enabled": True, "type": "wireguard"}
    karpenter = releases["oci://public.ecr.aws/karpenter/karpenter"]["values"]["settings"]
    assert karpenter == {"clusterName": "runners-dev", "interruptionQueue": "runners-dev"}


def test_eks_cluster_uses_api_auth_and_oidc(dev_run: RecordingMocks) -> None:
    (cluster,) = dev_run.of_type("eks:index:Cluster")
    assert cluster.inputs["authenticationMode"] == "API"
    assert cluster.inputs["createOidcProvider"] is True
    assert cluster.inputs["publicAccessCidrs"] == ["203.0.113.0/24"]
    assert len(dev_run.of_type("aws:cloudwatch/eventRule:EventRule")) == 4
    queue = dev_run.of_type("aws:sqs/queue:Queue")[0].inputs
    assert queue["messageRetentionSeconds"] == 300


def test_controller_config_map_parses_back_into_the_spec(
    dev_run: RecordingMocks, dev_spec: PlatformSpec
) -> None:
    config_map = _by_metadata_name(dev_run, "kubernetes:core/v1:ConfigMap")[
        "runner-controller-config"
    ]
    assert load_spec_json(config_map["data"]["spec.json"]) == dev_spec
    runtime = RuntimeFacts.model_validate_json(config_map["data"]["runtime.json"])
    assert set(runtime.team_role_arns) == {"web", "ml", "infra"}
    assert runtime.vault_mounts == {"cloud": "jwt-cloud", "ghes": "jwt-ghes"}
    deployment = _by_metadata_name(dev_run, "kubernetes:apps/v1:Deployment")["runner-controller"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[HASH_ANNOTATION] == config_hash(
        config_map["data"]["spec.json"], config_map["data"]["runtime.json"]
    )


def test_redis_is_encrypted_and_authenticated(dev_run: RecordingMocks) -> None:
    (group,) = dev_run.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    assert group.inputs["transitEncryptionEnabled"] is True
    assert group.inputs["atRestEncryptionEnabled"] is True
    assert group.inputs["numCacheClusters"] == 2
    assert "authToken" in group.inputs


def test_no_static_credentials_and_no_policy_violations(dev_run: RecordingMocks) -> None:
    assert not [r for r in dev_run.resources if r.type.startswith("aws:iam/user")]
    assert not [r for r in dev_run.resources if r.type == "aws:iam/accessKey:AccessKey"]
    assert evaluate((r.type, r.name, r.inputs) for r in dev_run.resources) == []


def test_invalid_stack_config_stops_before_any_resource() -> None:
    config = dict(DEV_CONFIG)
    teams = json.loads(config["runner-platform:teams"])
    teams[2]["pools"] = ["gpuu"]
    config["runner-platform:teams"] = json.dumps(teams)
    with pytest.raises(pulumi.RunError, match=r"teams\[2\]\.pools\[0\]: unknown pool 'gpuu'"):
        run_program(config)


def test_region_mismatch_is_refused() -> None:
    config = {**DEV_CONFIG, "aws:region": "eu-west-1"}
    with pytest.raises(pulumi.RunError, match=r"cluster\.region is 'us-west-2' but aws:region"):
        run_program(config)


def test_pulumi_yaml_declares_every_config_key() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "runner-platform"
    assert project["runtime"]["name"] == "python"
    declared = project["config"]
    for key in PlatformSpec.model_fields:
        assert key in declared, key
        assert declared[key]["description"].strip()


def test_plan_prints_resources_and_a_clean_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan.main(["--stack", "dev"]) == 0
    out = capsys.readouterr().out
    assert "kubernetes:karpenter.sh/v1:NodePool" in out
    assert "Policy pack 'runner-platform': 0 violation(s)" in out


def test_plan_exits_2_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    document["config"]["runner-platform:pools"][0]["max_runners_per_node"] = 40
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert plan.main(["--stack", "bad", "--config", str(bad)]) == 2
    assert "pools[0].max_runners_per_node" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("KarpenterController-runners-dev", "system:serviceaccount:kube-system:karpenter"),
        (
            "runner-controller-runners-dev",
            "system:serviceaccount:runner-platform:runner-controller",
        ),
    ],
)
def test_irsa_roles_trust_exactly_one_service_account(
    dev_run: RecordingMocks, role: str, subject: str
) -> None:
    inputs = next(
        r.inputs for r in dev_run.of_type("aws:iam/role:Role") if r.inputs.get("name") == role
    )
    (statement,) = json.loads(inputs["assumeRolePolicy"])["Statement"]
    issuer = "oidc.eks.us-west-2.amazonaws.com/id/MOCK"
    assert statement["Condition"]["StringEquals"] == {
        f"{issuer}:aud": "sts.amazonaws.com",
        f"{issuer}:sub": subject,
    }


def test_vault_objects_are_declared_with_the_secret_token(dev_run: RecordingMocks) -> None:
    objects = [r.inputs for r in dev_run.of_type("pulumi-python:dynamic:Resource")]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["jwt-mount"] * 2 + ["jwt-role"] * 3 + ["policy"] * 3
    ml = next(o for o in objects if o["kind"] == "jwt-role" and o["name"] == "ml")
    assert (ml["mount"], ml["tokenTtl"], ml["boundClaims"]) == (
        "jwt-ghes",
        900,
        {
            "repository": ["research/models", "research/training-*"],
            "repository_owner_id": ["5039426"],
            "runner_environment": ["self-hosted"],
        },
    )
    assert all(o["address"] == "https://vault.acme.internal:8200" for o in objects)


def test_a_missing_vault_token_stops_the_program() -> None:
    config = {k: v for k, v in DEV_CONFIG.items() if k != "runner-platform:vault_token"}
    with pytest.raises(Exception, match="vault_token"):
        run_program(config)
