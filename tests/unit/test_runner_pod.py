"""The runner pod and its JIT Secret: placement on its own pool, resources, the team's
identity and nothing else, a deadline, no API token, and the Secret dies with the pod."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import controller_manifests, node_pools
from controller.model import PlatformSpec, RuntimeFacts, ScaleSet, load_spec
from controller.provision import pod as rp
from controller.quantity import parse_duration

ARNS = {
    "web": "arn:aws:iam::111111111111:role/github-runner-web-role",
    "ml": "arn:aws:iam::111111111111:role/github-runner-ml-role",
    "infra": "arn:aws:iam::111111111111:role/github-runner-infra-role",
}


@pytest.fixture
def facts() -> RuntimeFacts:
    return RuntimeFacts(
        team_role_arns=ARNS,
        vault_mounts={"cloud": "jwt-cloud", "ghes": "jwt-ghes"},
        redis_endpoint="redis.example.internal",
    )


def _scale_set(spec: PlatformSpec, name: str) -> ScaleSet:
    return next(s for s in spec.scale_sets() if s.name == name)


def _pod(spec: PlatformSpec, facts: RuntimeFacts, scale_set: str) -> dict[str, Any]:
    return rp.runner_pod(spec, facts, _scale_set(spec, scale_set), f"{scale_set}-r1", 42)


def test_pod_is_labelled_for_its_team_pool_and_instance(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    pod = _pod(dev_spec, facts, "web-warm")
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["metadata"] == {
        "name": "web-warm-r1",
        "namespace": "runners-web",
        "labels": {
            "app.kubernetes.io/name": "github-runner",
            "app.kubernetes.io/managed-by": "runner-platform",
            "runner-platform.io/team": "web",
            "runner-platform.io/pool": "warm",
            "runner-platform.io/scale-set": "web-warm",
            "runner-platform.io/instance": "cloud",
            "runner-platform.io/container-mode": "kubernetes",
            # 42 % 10: one runner per slot per node (tests/unit/test_container_modes.py)
            "runner-platform.io/slot": "2",
        },
        "annotations": {
            "karpenter.sh/do-not-disrupt": "true",
            "runner-platform.io/runner-id": "42",
        },
    }


def test_pod_is_single_use_tokenless_and_bounded_in_time(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    # ml runs plain runners ("none") on highmem: no container hooks, so no API token.
    spec = _pod(dev_spec, facts, "ml-highmem")["spec"]
    assert spec["restartPolicy"] == "Never"
    # ml keeps the default 360-minute job timeout, plus the idle allowance.
    assert spec["activeDeadlineSeconds"] == 360 * 60 + rp.IDLE_ALLOWANCE_SECONDS
    assert 0 < spec["terminationGracePeriodSeconds"] <= 120
    assert spec["serviceAccountName"] == "runner"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["priorityClassName"] == "runner-platform-runner"
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1001,
        "runAsGroup": 1001,
        "fsGroup": 1001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec


def test_runner_container_runs_the_team_image_with_its_jit_config_and_job_settings(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    (container,) = _pod(dev_spec, facts, "infra-warm")["spec"]["containers"]
    assert container["name"] == "runner"
    assert container["image"] == "ghcr.io/actions/actions-runner:2.329.0"
    assert container["command"] == ["/home/runner/run.sh"]
    # The job settings first; the container hooks' settings follow (test_container_modes).
    assert container["env"][:9] == [
        {
            "name": "ACTIONS_RUNNER_INPUT_JITCONFIG",
            "valueFrom": {"secretKeyRef": {"name": "infra-warm-r1", "key": "jitconfig"}},
        },
        {"name": "RUNNER_PLATFORM_AWS_ROLE_ARN", "value": ARNS["infra"]},
        {"name": "AWS_REGION", "value": "us-west-2"},
        {"name": "VAULT_ADDR", "value": "https://vault.acme.internal:8200"},
        {"name": "RUNNER_PLATFORM_VAULT_MOUNT", "value": "jwt-ghes"},
        {"name": "RUNNER_PLATFORM_VAULT_ROLE", "value": "infra"},
        {"name": "RUNNER_PLATFORM_VAULT_AUDIENCE", "value": "runner-platform-vault"},
        {"name": "RUNNER_PLATFORM_TEAM", "value": "infra"},
        {"name": "RUNNER_PLATFORM_POOL", "value": "warm"},
    ]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
    }


def test_env_names_are_the_ones_the_credential_helper_reads(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    from controller.settings import JobSettings

    (container,) = _pod(dev_spec, facts, "ml-gpu")["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    job = JobSettings.from_env(env)
    assert job.aws_role_arn == ARNS["ml"]
    assert job.aws_region == "us-west-2"
    assert job.vault_addr == "https://vault.acme.internal:8200"
    assert (job.vault_mount, job.vault_role) == ("jwt-ghes", "ml")
    assert job.vault_audience == dev_spec.vault.audience


def test_resources_follow_the_team_without_a_cpu_limit(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    pod = _pod(dev_spec, facts, "ml-highmem")["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "50Gi"},
        "limits": {"memory": "16Gi", "ephemeral-storage": "50Gi"},
    }
    assert container["volumeMounts"] == [{"name": "work", "mountPath": "/home/runner/_work"}]
    assert pod["volumes"] == [{"name": "work", "emptyDir": {"sizeLimit": "50Gi"}}]


def test_gpu_pod_requests_its_gpus_and_tolerates_the_gpu_taints(
    dev_document: dict[str, Any], facts: RuntimeFacts
) -> None:
    # A plain runner runs its job itself and asks for the GPUs; in the hook modes its job
    # pod does (tests/unit/test_container_modes.py).
    dev_document["teams"][1]["container_modes"]["gpu"] = "none"
    dev_spec = load_spec(dev_document)
    pod = _pod(dev_spec, facts, "ml-gpu")["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [
        {
            "key": "runner-platform.io/pool",
            "operator": "Equal",
            "value": "gpu",
            "effect": "NoSchedule",
        },
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    ]
    cpu_only = _pod(dev_spec, facts, "ml-highmem")["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu_only["requests"] | cpu_only["limits"]


def test_isolated_pool_pod_tolerates_only_its_pool(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    pod = _pod(dev_spec, facts, "ml-ml-isolated")["spec"]
    assert pod["nodeSelector"] == {"pool": "ml-isolated"}
    assert pod["tolerations"] == [
        {
            "key": "runner-platform.io/pool",
            "operator": "Equal",
            "value": "ml-isolated",
            "effect": "NoSchedule",
        }
    ]


def test_warm_pool_pod_needs_no_toleration(dev_spec: PlatformSpec, facts: RuntimeFacts) -> None:
    pod = _pod(dev_spec, facts, "infra-warm")["spec"]
    assert pod["nodeSelector"] == {"pool": "warm"}
    assert pod["tolerations"] == []


def test_every_pod_lands_only_on_the_nodes_of_its_own_pool(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    """What the pod selects and tolerates is exactly what its NodePool labels and taints."""
    for scale_set in dev_spec.scale_sets():
        pod = rp.runner_pod(dev_spec, facts, scale_set, "r", 1)["spec"]
        pool = dev_spec.pool(scale_set.pool)
        template = node_pools.node_pool(dev_spec, pool)["spec"]["template"]
        assert pod["nodeSelector"].items() <= template["metadata"]["labels"].items()
        own = template["spec"].get("taints") or []
        assert pod["tolerations"] == [  # exactly the NodePool's taints, tolerated
            {"key": t["key"], "operator": "Equal", "value": t["value"], "effect": t["effect"]}
            for t in own
        ], scale_set.name
        tolerated = {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]}
        for other in dev_spec.pools:
            taints = node_pools.node_pool(dev_spec, other)["spec"]["template"]["spec"]["taints"]
            if other.name != pool.name and taints:
                assert not all((t["key"], t["value"], t["effect"]) in tolerated for t in taints)


def test_deadline_fits_the_node_termination_grace(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    """Karpenter forces a draining node off after its terminationGracePeriod, deleting
    do-not-disrupt pods that long minus their own grace before: the deadline must fit."""
    for scale_set in dev_spec.scale_sets():
        pod = rp.runner_pod(dev_spec, facts, scale_set, "r", 1)["spec"]
        node_pool = node_pools.node_pool(dev_spec, dev_spec.pool(scale_set.pool))
        grace = parse_duration(node_pool["spec"]["template"]["spec"]["terminationGracePeriod"])
        assert pod["activeDeadlineSeconds"] + pod["terminationGracePeriodSeconds"] <= grace, (
            scale_set.name
        )


def test_service_account_and_priority_class_are_the_ones_the_stack_declares(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"])
        for a in controller_manifests.service_accounts(dev_spec, "arn")
    }
    for scale_set in dev_spec.scale_sets():
        pod = rp.runner_pod(dev_spec, facts, scale_set, "r", 1)
        assert (pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]) in accounts
        assert (
            pod["spec"]["priorityClassName"]
            == node_pools.runner_priority_class()["metadata"]["name"]
        )
    assert node_pools.runner_priority_class()["value"] > node_pools.PLACEHOLDER_PRIORITY


def test_a_pod_carries_no_other_teams_identity(dev_spec: PlatformSpec, facts: RuntimeFacts) -> None:
    for scale_set in dev_spec.scale_sets():
        pod = rp.runner_pod(dev_spec, facts, scale_set, "r", 1)
        text = json.dumps(pod)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["RUNNER_PLATFORM_AWS_ROLE_ARN"] == ARNS[scale_set.team]
        assert env["RUNNER_PLATFORM_VAULT_ROLE"] == scale_set.team
        assert pod["metadata"]["namespace"] == f"runners-{scale_set.team}"
        for other in dev_spec.teams:
            if other.name == scale_set.team:
                continue
            assert other.namespace not in text, (scale_set.name, other.name)
            assert ARNS[other.name] not in text, (scale_set.name, other.name)
            assert f'"value": "{other.name}"' not in text, (scale_set.name, other.name)


def test_runs_on_labels_and_other_github_strings_never_reach_the_pod(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    scale_set = _scale_set(dev_spec, "infra-warm")
    hostile = scale_set.model_copy(
        update={
            "labels": ("self-hosted", "gpu", "ml-isolated", "$(curl evil)"),
            "runner_group": "ml",
            "org": "research",
        }
    )
    assert rp.runner_pod(dev_spec, facts, hostile, "r", 7) == rp.runner_pod(
        dev_spec, facts, scale_set, "r", 7
    )


def test_missing_role_arn_is_an_error_naming_the_team(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    without_ml = facts.model_copy(
        update={"team_role_arns": {k: v for k, v in ARNS.items() if k != "ml"}}
    )
    with pytest.raises(rp.RunnerPodError, match="no IAM role ARN for team 'ml'"):
        _pod(dev_spec, without_ml, "ml-gpu")
    _pod(dev_spec, without_ml, "web-warm")  # other teams are unaffected


def test_missing_vault_mount_is_an_error_naming_the_instance(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    cloud_only = facts.model_copy(update={"vault_mounts": {"cloud": "jwt-cloud"}})
    with pytest.raises(rp.RunnerPodError, match="no Vault mount for GitHub instance 'ghes'"):
        _pod(dev_spec, cloud_only, "infra-warm")


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"pool": "ml-isolated"}, "pool 'ml-isolated' is not a pool of team 'web'"),
        ({"pool": "nowhere"}, "pool 'nowhere' is not a pool of team 'web'"),
        ({"team": "nobody"}, "no team 'nobody'"),
        ({"instance": "ghes"}, "instance 'ghes' is not team 'web''s instance 'cloud'"),
    ],
)
def test_a_scale_set_the_spec_does_not_allow_builds_no_pod(
    dev_spec: PlatformSpec, facts: RuntimeFacts, update: dict[str, str], message: str
) -> None:
    forged = _scale_set(dev_spec, "web-warm").model_copy(update=update)
    with pytest.raises(rp.RunnerPodError, match=message):
        rp.runner_pod(dev_spec, facts, forged, "r", 1)


def test_jit_secret_lives_beside_the_pod_and_is_read_by_it(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    for scale_set in dev_spec.scale_sets():
        secret = rp.jit_secret(scale_set, "r-1", "ZW5jb2RlZA==")
        pod = rp.runner_pod(dev_spec, facts, scale_set, "r-1", 1)
        ref = pod["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
        assert secret["metadata"]["namespace"] == pod["metadata"]["namespace"]
        assert (secret["metadata"]["name"], rp.JIT_SECRET_KEY) == (ref["name"], ref["key"])
    secret = rp.jit_secret(_scale_set(dev_spec, "ml-gpu"), "r-1", "ZW5jb2RlZA==")
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "r-1",
            "namespace": "runners-ml",
            "labels": rp.runner_labels(_scale_set(dev_spec, "ml-gpu")),
        },
        "immutable": True,
        "stringData": {"jitconfig": "ZW5jb2RlZA=="},
    }


def test_secret_owner_reference_points_at_the_created_pod(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    pod = _pod(dev_spec, facts, "web-nvme")
    with pytest.raises(rp.RunnerPodError, match="has no uid"):
        rp.secret_owner_reference(pod)
    pod["metadata"]["uid"] = "0f6e3c1a-0000-4000-8000-000000000001"
    assert rp.secret_owner_reference(pod) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-nvme-r1",
        "uid": "0f6e3c1a-0000-4000-8000-000000000001",
        "controller": False,
        "blockOwnerDeletion": False,
    }


def _matches(selector: str, labels: dict[str, str]) -> bool:
    terms = dict(term.split("=", 1) for term in selector.split(","))
    return terms.items() <= labels.items()


def test_selectors_pick_runner_pods_and_one_scale_set_among_them(
    dev_spec: PlatformSpec, facts: RuntimeFacts
) -> None:
    pods = {
        s.name: rp.runner_pod(dev_spec, facts, s, "r", 1)["metadata"]["labels"]
        for s in dev_spec.scale_sets()
    }
    assert all(_matches(rp.selector(), labels) for labels in pods.values())
    assert not _matches(rp.selector(), {"app.kubernetes.io/name": "warm-placeholder"})
    web_warm = rp.selector(_scale_set(dev_spec, "web-warm"))
    assert [name for name, labels in pods.items() if _matches(web_warm, labels)] == ["web-warm"]


def test_scale_sets_with_the_same_name_are_told_apart(dev_spec: PlatformSpec) -> None:
    """Team 'a-b' on pool 'c' and team 'a' on pool 'b-c' share the name 'a-b-c'."""
    one = ScaleSet(
        name="a-b-c", team="a-b", pool="c", instance="cloud", org="o", runner_group="g", labels=()
    )
    two = one.model_copy(update={"team": "a", "pool": "b-c"})
    assert not _matches(rp.selector(one), rp.runner_labels(two))
