"""Container modes: validated per team and pool, and what each one adds to a runner pod,
its job pods and its namespace (docs/containers.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import container_manifests as cm
from components import node_pools
from controller.model import PlatformSpec, RuntimeFacts, ScaleSet, SpecError, load_spec
from controller.provision import pod as rp

FACTS = RuntimeFacts(
    team_role_arns={
        t: f"arn:aws:iam::1:role/github-runner-{t}-role" for t in ("web", "ml", "infra")
    },
    vault_mounts={"cloud": "jwt-cloud", "ghes": "jwt-ghes"},
    redis_endpoint="redis",
)


def _scale_set(spec: PlatformSpec, name: str) -> ScaleSet:
    return next(s for s in spec.scale_sets() if s.name == name)


def _pod(spec: PlatformSpec, name: str, runner_id: int = 7) -> dict[str, Any]:
    return rp.runner_pod(spec, FACTS, _scale_set(spec, name), f"{name}-r1", runner_id)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- the model ---------------------------------------------------------------------------


def test_kubernetes_is_the_default_and_modes_are_set_per_pool(dev_spec: PlatformSpec) -> None:
    web, ml, infra = dev_spec.teams
    assert [web.mode_on(p) for p in web.pools] == ["kubernetes", "buildkit"]
    assert [ml.mode_on(p) for p in ml.pools] == ["dind", "kubernetes", "none"]
    assert infra.mode_on("warm") == "kubernetes"


@pytest.mark.parametrize(
    ("team", "update", "path"),
    [
        (0, {"container_modes": {"warm": "dind"}}, "teams[0].container_modes.warm"),
        (0, {"container_modes": {"nvme": "dind"}}, "teams[0].container_modes.nvme"),
        (1, {"container_modes": {"gpu": "dind"}}, "teams[1].container_modes.gpu"),
        (2, {"container_mode": "dind"}, "teams[2].container_mode"),
    ],
)
def test_dind_is_refused_on_any_pool_the_team_does_not_own_naming_the_value(
    dev_document: dict[str, Any], team: int, update: dict[str, Any], path: str
) -> None:
    dev_document["teams"][team].update(update)
    with pytest.raises(SpecError) as error:
        load_spec(dev_document)
    (problem,) = error.value.problems
    assert problem.startswith(f"{path}: 'dind' runs a privileged Docker daemon and is only for an")
    assert "other teams can land on" in problem


def test_dind_on_the_teams_own_isolated_pool_is_accepted(dev_document: dict[str, Any]) -> None:
    dev_document["teams"][1]["container_mode"] = "dind"
    dev_document["teams"][1]["container_modes"] = {"gpu": "kubernetes", "highmem": "buildkit"}
    spec = load_spec(dev_document)
    assert spec.teams[1].mode_on("ml-isolated") == "dind"


def test_modes_for_pools_the_team_does_not_use_and_unknown_modes_are_refused(
    dev_document: dict[str, Any],
) -> None:
    dev_document["teams"][0]["container_modes"] = {"gpu": "kubernetes"}
    dev_document["teams"][2]["pools"] = ["nope"]
    with pytest.raises(SpecError) as error:
        load_spec(dev_document)
    # Reported with the spec's other problems, each at its path.
    assert error.value.problems == [
        "teams[2].pools[0]: unknown pool 'nope'",
        "teams[0].container_modes.gpu: 'gpu' is not one of the team's pools",
    ]
    dev_document["teams"][0]["container_modes"] = {"warm": "docker"}
    with pytest.raises(SpecError) as error:
        load_spec(dev_document)
    assert error.value.problems[0].startswith("teams[0].container_modes.warm: Input should be")


def test_work_volume_class_follows_the_pool(dev_document: dict[str, Any]) -> None:
    dev_document["pools"][3]["work_volume"] = {"storage_class": "fast-ssd", "size": "200Gi"}
    spec = load_spec(dev_document)
    assert spec.pool("warm").work_storage_class == "runner-work-gp3"
    assert spec.pool("nvme").work_storage_class == "runner-work-nvme"  # the instance store
    assert spec.pool("highmem").work_storage_class == "fast-ssd"


# --- the runner pod per mode ------------------------------------------------------------


def test_only_dind_has_a_privileged_container_and_only_on_an_isolated_pool(
    dev_spec: PlatformSpec,
) -> None:
    for scale_set in dev_spec.scale_sets():
        pod = rp.runner_pod(dev_spec, FACTS, scale_set, "r", 1)
        privileged = [
            c["name"]
            for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
            if c.get("securityContext", {}).get("privileged")
        ]
        pool = dev_spec.pool(scale_set.pool)
        if scale_set.name == "ml-ml-isolated":
            assert privileged == ["dind"]
            assert pool.kind == "isolated" and pool.owner == "ml"
        else:
            assert privileged == [], scale_set.name


def test_kubernetes_mode_runs_the_hooks_with_a_work_volume_from_the_pool(
    dev_spec: PlatformSpec,
) -> None:
    pod = _pod(dev_spec, "web-warm")
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["runner-platform.io/container-mode"] == "kubernetes"
    assert spec["automountServiceAccountToken"] is True  # the hooks call the API
    (container,) = spec["containers"]
    env = _env(container)
    assert env["ACTIONS_RUNNER_CONTAINER_HOOKS"] == "/etc/runner-platform/hooks/index.js"
    assert env["RUNNER_PLATFORM_STOCK_HOOKS"] == "/home/runner/k8s/index.js"
    assert env["ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER"] == "true"
    assert env["ACTIONS_RUNNER_POD_NAME"] == "web-warm-r1"
    assert env["ACTIONS_RUNNER_CLAIM_NAME"] == "web-warm-r1-work"
    assert env["ACTIONS_RUNNER_KUBERNETES_NAMESPACE"] == "runners-web"
    assert env["ACTIONS_RUNNER_USE_KUBE_SCHEDULER"] == "true"
    assert (
        env["ACTIONS_RUNNER_CONTAINER_HOOK_TEMPLATE"] == "/etc/runner-platform/hooks/job-warm.json"
    )
    assert env["RUNNER_PLATFORM_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    work, hooks = spec["volumes"]
    assert work == {
        "name": "work",
        "ephemeral": {
            "volumeClaimTemplate": {
                "metadata": {"labels": rp.runner_labels(_scale_set(dev_spec, "web-warm"))},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "runner-work-gp3",
                    "resources": {"requests": {"storage": "50Gi"}},
                },
            }
        },
    }
    assert hooks == {"name": "hooks", "configMap": {"name": "runner-hooks", "defaultMode": 0o444}}
    assert {"name": "hooks", "mountPath": "/etc/runner-platform/hooks", "readOnly": True} in (
        container["volumeMounts"]
    )


def test_require_job_container_is_as_configured(dev_document: dict[str, Any]) -> None:
    dev_document["teams"][2]["require_job_container"] = False
    spec = load_spec(dev_document)
    env = _env(_pod(spec, "infra-warm")["spec"]["containers"][0])
    assert env["ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER"] == "false"


def test_nvme_pools_keep_work_volumes_on_their_instance_store(dev_spec: PlatformSpec) -> None:
    (work,) = [v for v in _pod(dev_spec, "web-nvme")["spec"]["volumes"] if v["name"] == "work"]
    claim = work["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "runner-work-nvme"
    (nvme,) = [
        c
        for c in cm.work_storage_classes(dev_spec)
        if c["metadata"]["name"] == claim["storageClassName"]
    ]
    assert nvme["provisioner"] == "openebs.io/local"
    assert "/mnt/k8s-disks/0/" in nvme["metadata"]["annotations"]["cas.openebs.io/config"]


def test_buildkit_mode_adds_a_rootless_unprivileged_buildkitd(dev_spec: PlatformSpec) -> None:
    spec = _pod(dev_spec, "web-nvme")["spec"]
    runner, buildkitd = spec["containers"]
    assert _env(runner)["BUILDKIT_HOST"] == "tcp://127.0.0.1:1234"
    assert buildkitd["image"] == "docker.io/moby/buildkit:v0.25.1-rootless"
    security = buildkitd["securityContext"]
    assert security["privileged"] is False
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert "capabilities" not in security  # nothing added
    assert security["seccompProfile"] == security["appArmorProfile"] == {"type": "Unconfined"}
    # Its state (the build cache) lives on the runner's work volume.
    assert "--root" in buildkitd["args"]
    assert (
        buildkitd["args"][buildkitd["args"].index("--root") + 1] == "/home/runner/_work/.buildkit"
    )
    assert buildkitd["volumeMounts"] == [{"name": "work", "mountPath": "/home/runner/_work"}]
    # Job pods find it at <pod>.runners (the headless Service the namespace has).
    assert (spec["hostname"], spec["subdomain"]) == ("web-nvme-r1", "runners")


def test_dind_mode_adds_a_privileged_docker_daemon_and_no_token(dev_spec: PlatformSpec) -> None:
    spec = _pod(dev_spec, "ml-ml-isolated")["spec"]
    assert spec["automountServiceAccountToken"] is False
    runner, dind = spec["containers"]
    assert _env(runner)["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert "ACTIONS_RUNNER_CONTAINER_HOOKS" not in _env(runner)
    assert dind["image"] == "docker.io/library/docker:28.5.1-dind"
    assert dind["securityContext"]["privileged"] is True
    assert dind["args"] == ["dockerd", "--host=unix:///var/run/docker.sock", "--group=1001"]
    mounts = {m["mountPath"] for m in dind["volumeMounts"]}
    assert mounts == {m["mountPath"] for m in runner["volumeMounts"] if m["name"] != "tool-cache"}
    assert [c["name"] for c in spec["initContainers"]] == ["copy-externals", "copy-tool-cache"]
    assert spec["volumes"][0] == {"name": "work", "emptyDir": {"sizeLimit": "50Gi"}}


def test_none_mode_is_a_plain_runner(dev_spec: PlatformSpec) -> None:
    pod = _pod(dev_spec, "ml-highmem")
    (container,) = pod["spec"]["containers"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not any(e["name"].startswith("ACTIONS_RUNNER_CONTAINER") for e in container["env"])
    assert pod["spec"]["volumes"] == [{"name": "work", "emptyDir": {"sizeLimit": "50Gi"}}]
    assert "affinity" not in pod["spec"]  # one pod per runner: maxPods alone caps the node


def test_tool_cache_is_a_private_copy_mounted_read_only(dev_spec: PlatformSpec) -> None:
    spec = _pod(dev_spec, "ml-ml-isolated")["spec"]
    copy = spec["initContainers"][-1]
    assert copy["image"] == "ghcr.io/acme/hostedtoolcache:2025.10"
    assert copy["command"] == ["cp", "-R", "/opt/hostedtoolcache/.", "/mnt/tool-cache/"]
    assert {"name": "tool-cache", "emptyDir": {"sizeLimit": "10Gi"}} in spec["volumes"]
    runner = spec["containers"][0]
    assert {"name": "tool-cache", "mountPath": "/opt/hostedtoolcache", "readOnly": True} in (
        runner["volumeMounts"]
    )
    assert _env(runner)["RUNNER_TOOL_CACHE"] == "/opt/hostedtoolcache"


def test_no_writable_volume_is_shared_beyond_one_runner(dev_spec: PlatformSpec) -> None:
    """Every volume is the pod's own (emptyDir, its own ephemeral claim) or read-only."""
    for scale_set in dev_spec.scale_sets():
        for volume in rp.runner_pod(dev_spec, FACTS, scale_set, "r", 1)["spec"]["volumes"]:
            kinds = set(volume) - {"name"}
            assert kinds <= {"emptyDir", "ephemeral", "configMap"}, (scale_set.name, volume)
            if "configMap" in kinds:
                assert volume["configMap"]["defaultMode"] == 0o444


def test_hook_pools_cap_runners_by_slot_as_maxpods_no_longer_can(dev_spec: PlatformSpec) -> None:
    pool = dev_spec.pool("warm")
    slots = set()
    for runner_id in range(100, 100 + 2 * pool.max_runners_per_node):
        pod = _pod(dev_spec, "web-warm", runner_id)
        term = pod["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ][0]
        labels = pod["metadata"]["labels"]
        assert term["labelSelector"]["matchLabels"].items() <= labels.items()
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["namespaceSelector"] == {}  # every team's runners on the pool
        slots.add(labels["runner-platform.io/slot"])
    # Consecutive runner ids use every slot: at most max_runners_per_node runners per node.
    assert slots == {str(i) for i in range(pool.max_runners_per_node)}
    assert node_pools.max_pods(dev_spec, pool) == pool.max_runners_per_node * 3 + len(
        node_pools.daemonset_pods(dev_spec, pool)
    )


def test_gpus_go_to_the_job_pod_in_the_hook_modes(dev_spec: PlatformSpec) -> None:
    runner = _pod(dev_spec, "ml-gpu")["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in runner["resources"]["requests"]
    template = cm.job_pod_template(dev_spec.teams[1], dev_spec.pool("gpu"))
    job = template["spec"]["containers"][0]["resources"]
    assert job["requests"]["nvidia.com/gpu"] == job["limits"]["nvidia.com/gpu"] == "1"


# --- job pods, namespace objects -------------------------------------------------------


def test_job_pods_share_their_runners_pool_tolerations_and_security(dev_spec: PlatformSpec) -> None:
    for scale_set in dev_spec.scale_sets():
        team = next(t for t in dev_spec.teams if t.name == scale_set.team)
        if team.mode_on(scale_set.pool) not in ("kubernetes", "buildkit"):
            continue
        pod = rp.runner_pod(dev_spec, FACTS, scale_set, "r", 1)["spec"]
        template = cm.job_pod_template(team, dev_spec.pool(scale_set.pool))
        spec = template["spec"]
        assert spec["nodeSelector"] == pod["nodeSelector"]
        assert spec["tolerations"] == pod["tolerations"]
        assert spec["securityContext"] == pod["securityContext"]
        assert spec["priorityClassName"] == pod["priorityClassName"]
        assert spec["automountServiceAccountToken"] is False
        assert "affinity" not in spec  # the hooks' own affinity keeps it on the runner's node
        job = spec["containers"][0]
        assert job["name"] == "$job"
        assert job["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        }
        labels = template["metadata"]["labels"]
        assert labels["runner-platform.io/team"] == scale_set.team
        assert labels["runner-platform.io/pool"] == scale_set.pool
        # Never counted as a runner by the provisioner's selector.
        assert labels["app.kubernetes.io/name"] == "github-job"


def test_the_hooks_config_map_has_the_template_every_runner_names(dev_spec: PlatformSpec) -> None:
    for team in dev_spec.teams:
        if not cm.uses_hooks(dev_spec, team):
            continue
        config_map = cm.hooks_config_map(dev_spec, team)
        assert config_map["metadata"]["namespace"] == team.namespace
        assert config_map["data"]["index.js"] == cm.HOOKS_ENTRY_POINT.read_text()
        for scale_set in dev_spec.scale_sets():
            if scale_set.team != team.name or team.mode_on(scale_set.pool) == "none":
                continue
            if team.mode_on(scale_set.pool) == "dind":
                continue
            env = _env(_pod(dev_spec, scale_set.name)["spec"]["containers"][0])
            key = env["ACTIONS_RUNNER_CONTAINER_HOOK_TEMPLATE"].rsplit("/", 1)[1]
            template = json.loads(config_map["data"][key])
            assert template["spec"]["nodeSelector"] == {"pool": scale_set.pool}


def test_buildkit_job_pods_find_their_runners_buildkitd(dev_spec: PlatformSpec) -> None:
    job = cm.job_pod_template(dev_spec.teams[0], dev_spec.pool("nvme"))["spec"]["containers"][0]
    assert job["env"] == [
        {
            "name": "RUNNER_PLATFORM_RUNNER_POD",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['runner-pod']"}},
        },
        {"name": "BUILDKIT_HOST", "value": "tcp://$(RUNNER_PLATFORM_RUNNER_POD).runners:1234"},
    ]
    service, ingress, egress = cm.buildkit_objects(dev_spec.teams[0])
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == "runners"
    assert ingress["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "github-job"}}}
    ]
    assert egress["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "github-job"}
    }


def test_runner_role_is_exactly_what_the_hooks_check_in_their_own_namespace(
    dev_spec: PlatformSpec,
) -> None:
    role = cm.runner_role(dev_spec.teams[0])
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "runners-web"
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # runner-container-hooks v0.7.0 requiredPermissions, plus patch on pods (owner refs).
    hooks = (
        {("", "pods", v) for v in ("get", "list", "create", "delete")}
        | {("", "pods/exec", v) for v in ("get", "create")}
        | {("", "pods/log", v) for v in ("get", "list", "watch")}
        | {("batch", "jobs", v) for v in ("get", "list", "create", "delete")}
        | {("", "secrets", v) for v in ("create", "delete", "get", "list")}
    )
    assert granted == hooks | {("", "pods", "patch")}
    binding = cm.runner_role_binding(dev_spec.teams[0])
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "runner", "namespace": "runners-web"}
    ]


def test_every_team_namespace_gets_a_quota_that_counts_job_pods(dev_spec: PlatformSpec) -> None:
    web, _, infra = dev_spec.teams
    hard = cm.resource_quota(dev_spec, infra)["spec"]["hard"]
    # 20 runners x (runner 2 cpu + job 2 cpu + two services at 250m).
    assert hard["pods"] == "60"
    assert hard["requests.cpu"] == "90000m"
    # 20 x (4Gi + 4Gi + 2 x 256Mi) of memory, 20 x 50Gi work volumes.
    assert hard["requests.memory"] == f"{20 * (4096 + 4096 + 512)}Mi"
    assert hard["requests.storage"] == f"{20 * 50 * 1024}Mi"
    assert hard["persistentvolumeclaims"] == "20"
    plain = load_spec(
        {
            **json.loads(dev_spec.model_dump_json()),
            "teams": [
                {**json.loads(t.model_dump_json()), "container_mode": "none", "container_modes": {}}
                for t in dev_spec.teams
            ],
        }
    )
    only_runners = cm.resource_quota(plain, plain.teams[2])["spec"]["hard"]
    assert only_runners["pods"] == "20" and "persistentvolumeclaims" not in only_runners
    assert cm.limit_range(web)["spec"]["limits"][0]["defaultRequest"] == cm.SERVICE_REQUESTS


def test_namespaces_relax_pod_security_only_for_buildkit_and_dind(dev_spec: PlatformSpec) -> None:
    web, ml, infra = dev_spec.teams
    assert cm.pod_security_level(infra) == "baseline"
    assert cm.pod_security_level(web) == "privileged"  # rootless buildkitd: unconfined
    assert cm.pod_security_level(ml) == "privileged"  # dind
    from components import controller_manifests

    labels = {
        n["metadata"]["name"]: n["metadata"]["labels"]
        for n in controller_manifests.namespaces(dev_spec)
    }
    assert labels["runners-infra"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["runners-web"]["pod-security.kubernetes.io/warn"] == "baseline"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("path", "/opt/../home/runner", "is not a plain absolute path"),
        ("path", "/home/runner", "would cover /home/runner"),
        ("path", "/home/runner/_work/tools", "would cover /home/runner"),
        ("path", "/opt//tools", "is not a plain absolute path"),
        ("size", "1k", "is not between 1Gi and 64Ti"),
        ("size", "99999999Ti", "is not between 1Gi and 64Ti"),
        ("size", "50Gi\n", "is not a Kubernetes quantity"),
    ],
)
def test_a_tool_cache_that_would_hide_the_runner_or_fill_the_node_is_refused(
    dev_document: dict[str, Any], field: str, value: str, message: str
) -> None:
    index = next(i for i, p in enumerate(dev_document["pools"]) if "tool_cache" in p)
    dev_document["pools"][index]["tool_cache"][field] = value
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert any(
        line.startswith(f"pools[{index}].tool_cache.{field}") and message in line
        for line in caught.value.problems
    ), caught.value.problems


def test_the_quota_rounds_up_so_the_last_runner_fits() -> None:
    from decimal import Decimal

    from controller.quantity import format_memory, parse_quantity

    needed = parse_quantity("3G") * 7  # not a whole number of Mi
    assert parse_quantity(format_memory(needed, round_up=True)) >= needed
    assert parse_quantity(format_memory(needed)) < needed
    assert format_memory(Decimal(2**20), round_up=True) == "1Mi"


def test_the_admission_policy_sees_ephemeral_containers(dev_spec: PlatformSpec) -> None:
    """kubectl debug adds containers to a running pod through pods/ephemeralcontainers:
    the policy checks them as it checks the pod's own (the API server runs it in
    tests/integration/test_container_modes_api.py)."""
    policy = cm.admission_policy(dev_spec)[0]["spec"]
    assert policy["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]},
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["pods/ephemeralcontainers"],
        },
    ]
    containers = next(v for v in policy["variables"] if v["name"] == "containers")
    assert "object.spec.ephemeralContainers" in containers["expression"]
    # The pod being debugged is scheduled: only a new pod may not name its node.
    node_name = next(v for v in policy["validations"] if "nodeName" in v["expression"])
    assert node_name["expression"].startswith("request.operation != 'CREATE' || ")


def test_the_admission_policy_holds_pod_security_baseline_lines(dev_spec: PlatformSpec) -> None:
    """runners-web and runners-ml run at Pod Security "privileged" (buildkit, dind): the
    policy keeps baseline's procMount, sysctl and SELinux lines there."""
    expressions = [v["expression"] for v in cm.admission_policy(dev_spec)[0]["spec"]["validations"]]
    assert any("c.securityContext.procMount == 'Default'" in e for e in expressions)
    sysctls = next(e for e in expressions if "sysctls" in e)
    assert json.dumps(list(cm.BASELINE_SYSCTLS)) in sysctls
    assert "kernel.core_pattern" not in sysctls
    selinux = next(e for e in expressions if "seLinuxOptions" in e)
    assert "object.spec.securityContext.seLinuxOptions.type in" in selinux
    assert "c.securityContext.seLinuxOptions.type in" in selinux
    assert "spc_t" not in selinux
    # The sidecars the modes add stay inside those lines.
    for name in ("web-nvme", "ml-ml-isolated"):
        pod = _pod(dev_spec, name)
        for container in [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])]:
            context = container.get("securityContext", {})
            assert "procMount" not in context and "seLinuxOptions" not in context
        assert "sysctls" not in pod["spec"].get("securityContext", {})
