"""The pack's runner pod rules: no host access, privilege only on the team's isolated pool,
no dind mode on a shared pool, and the per-node cap with room for job pods."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components import container_manifests, controller_manifests, node_pools
from controller.model import PlatformSpec
from policies.evaluate import check, check_stack, evaluate
from policies.rules import (
    nodeclass_runner_cap,
    privileged_runner_on_shared_pool,
    runner_pod_host_access,
)

POD = "kubernetes:core/v1:Pod"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NAMESPACE = "kubernetes:core/v1:Namespace"


def runner_pod(
    team: str = "web",
    pool: str = "warm",
    *,
    privileged: bool = False,
    tolerate: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    tolerations = (
        [{"key": "runner-platform.io/pool", "operator": "Equal", "value": tolerate}]
        if tolerate
        else []
    )
    return {
        "metadata": {
            "name": "r",
            "namespace": f"runners-{team}",
            "labels": {"runner-platform.io/team": team},
        },
        "spec": {
            "nodeSelector": {"pool": pool},
            "tolerations": tolerations,
            "containers": [
                {"name": "runner", "image": "runner"},
                {"name": "dind", "image": "docker", "securityContext": {"privileged": privileged}},
            ],
            **spec,
        },
    }


def node_pools_of(spec: PlatformSpec) -> list[tuple[str, str, dict[str, Any]]]:
    return [(NODE_POOL, p.name, node_pools.node_pool(spec, p)) for p in spec.pools]


def pools_and_namespaces(spec: PlatformSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """The NodePools and the teams' Namespaces (a runner's team is its namespace's)."""
    return [
        *node_pools_of(spec),
        *(
            (NAMESPACE, m["metadata"]["name"], m)
            for m in controller_manifests.namespaces(spec)
            if "runner-platform.io/team" in m["metadata"].get("labels", {})
        ),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"hostNetwork": True}, "spec: a runner pod may not set hostNetwork (the node's own)"),
        ({"hostPID": True}, "spec: a runner pod may not set hostPID (the node's own)"),
        ({"hostIPC": True}, "spec: a runner pod may not set hostIPC (the node's own)"),
        (
            {"volumes": [{"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}}]},
            "spec: runner pod volume 'docker' is a hostPath: runner pods never mount the node's "
            "filesystem",
        ),
    ],
)
def test_host_access_in_a_runner_pod_is_refused(spec: dict[str, Any], message: str) -> None:
    assert check(runner_pod_host_access, POD, "r", runner_pod(**spec)) == [message]


def test_host_access_is_found_in_workload_templates_and_job_pod_templates() -> None:
    deployment = {
        "metadata": {"labels": {"runner-platform.io/team": "web"}},
        "spec": {"template": runner_pod(hostPID=True)},
    }
    assert check(runner_pod_host_access, DEPLOYMENT, "d", deployment) == [
        "spec.template: a runner pod may not set hostPID (the node's own)"
    ]
    template = runner_pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    config_map = {
        "metadata": {
            "labels": {"runner-platform.io/pod-templates": "true", "runner-platform.io/team": "web"}
        },
        "data": {"job-warm.json": json.dumps(template), "index.js": "// not a template"},
    }
    assert check(runner_pod_host_access, CONFIG_MAP, "c", config_map) == [
        "data[job-warm.json]: runner pod volume 'root' is a hostPath: runner pods never mount "
        "the node's filesystem"
    ]


def test_pods_that_are_not_a_teams_are_not_judged_as_runner_pods() -> None:
    daemon = runner_pod(hostNetwork=True)
    del daemon["metadata"]["labels"]
    daemon["metadata"]["namespace"] = "kube-system"
    assert check(runner_pod_host_access, POD, "cilium", daemon) == []


def test_a_privileged_runner_container_on_a_shared_pool_is_refused(dev_spec: PlatformSpec) -> None:
    stack = [*pools_and_namespaces(dev_spec), (POD, "r", runner_pod(privileged=True))]
    assert check_stack(privileged_runner_on_shared_pool, stack) == [
        "kubernetes:core/v1:Pod r spec: privileged container(s) ['dind'] on pool 'warm', which "
        "is not isolated for team 'web': privileged runners only run on an isolated pool of "
        "their team"
    ]
    # The custom GPU pool is tainted but shared: still refused.
    gpu = runner_pod("ml", "gpu", privileged=True, tolerate="gpu")
    assert len(check_stack(privileged_runner_on_shared_pool, [*stack[:-1], (POD, "r", gpu)])) == 1


def test_a_privileged_runner_is_allowed_only_on_its_own_teams_isolated_pool(
    dev_spec: PlatformSpec,
) -> None:
    own = runner_pod("ml", "ml-isolated", privileged=True, tolerate="ml-isolated")
    assert (
        check_stack(
            privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", own)]
        )
        == []
    )
    # The same pod for another team, or without the pool's toleration, is refused.
    other = runner_pod("web", "ml-isolated", privileged=True, tolerate="ml-isolated")
    assert check_stack(
        privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", other)]
    )
    untolerated = runner_pod("ml", "ml-isolated", privileged=True)
    assert check_stack(
        privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", untolerated)]
    )
    # Without the stack's NodePools nothing proves the pool isolated.
    assert check_stack(privileged_runner_on_shared_pool, [(POD, "r", own)])


def _spec_config_map(spec: PlatformSpec, document: dict[str, Any] | None = None) -> dict[str, Any]:
    spec_json = json.dumps(document) if document is not None else spec.model_dump_json()
    return controller_manifests.config_map(spec, spec_json, "{}")


def test_the_dev_stack_runs_dind_only_on_ml_s_own_pool(dev_spec: PlatformSpec) -> None:
    stack = [(CONFIG_MAP, "config", _spec_config_map(dev_spec))]
    assert check_stack(privileged_runner_on_shared_pool, stack) == []


def test_a_hand_edited_spec_with_dind_on_a_shared_pool_is_refused(dev_spec: PlatformSpec) -> None:
    """What the controller would run, even if the model's check were bypassed."""
    document = json.loads(dev_spec.model_dump_json())
    document["teams"][0]["container_modes"] = {"warm": "dind"}
    document["teams"][2]["container_mode"] = "dind"
    stack = [(CONFIG_MAP, "config", _spec_config_map(dev_spec, document))]
    assert check_stack(privileged_runner_on_shared_pool, stack) == [
        "ConfigMap config spec.json teams[0] ('web'): container mode 'dind' (a privileged "
        "container) on pool 'warm', which is warm and not isolated for the team",
        "ConfigMap config spec.json teams[2] ('infra'): container mode 'dind' (a privileged "
        "container) on pool 'warm', which is warm and not isolated for the team",
    ]


def test_the_programs_own_objects_pass_every_rule(dev_spec: PlatformSpec) -> None:
    objects = [
        *node_pools_of(dev_spec),
        *(
            (f"kubernetes:core/v1:{m['kind']}", m["metadata"]["name"], m)
            for m in container_manifests.container_objects(dev_spec)
            if m["kind"] == "ConfigMap"
        ),
        (CONFIG_MAP, "config", _spec_config_map(dev_spec)),
    ]
    assert evaluate(objects) == []


def test_a_privileged_job_pod_template_is_refused(dev_spec: PlatformSpec) -> None:
    hooks = container_manifests.hooks_config_map(dev_spec, dev_spec.teams[0])
    bad = copy.deepcopy(hooks)
    template = json.loads(bad["data"]["job-warm.json"])
    template["spec"]["containers"][0]["securityContext"]["privileged"] = True
    bad["data"]["job-warm.json"] = json.dumps(template)
    messages = check_stack(
        privileged_runner_on_shared_pool,
        [*pools_and_namespaces(dev_spec), (CONFIG_MAP, "hooks", bad)],
    )
    assert messages == [
        "kubernetes:core/v1:ConfigMap hooks data[job-warm.json]: privileged container(s) "
        "['$job'] on pool 'warm', which is not isolated for team 'web': privileged runners "
        "only run on an isolated pool of their team"
    ]


NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"


def _node_class(max_pods: int, per_runner: str | None) -> dict[str, Any]:
    annotations = {"runner-platform.io/max-runners": "10", "runner-platform.io/daemonset-pods": "6"}
    if per_runner is not None:
        annotations["runner-platform.io/pods-per-runner"] = per_runner
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "kubelet": {"maxPods": max_pods},
            "metadataOptions": {"httpPutResponseHopLimit": 1, "httpTokens": "required"},
        },
    }


def test_the_node_cap_leaves_room_for_job_pods_and_no_more() -> None:
    assert check(nodeclass_runner_cap, NODE_CLASS, "warm", _node_class(36, "3")) == []
    assert check(nodeclass_runner_cap, NODE_CLASS, "warm", _node_class(37, "3")) == [
        "kubelet.maxPods is 37; at most 10 runners x 3 pods + 6 DaemonSet pods"
    ]
    # Without the annotation a runner is one pod, as before container modes.
    assert check(nodeclass_runner_cap, NODE_CLASS, "warm", _node_class(36, None)) == [
        "kubelet.maxPods is 36; at most 10 runners + 6 DaemonSet pods"
    ]
    assert check(nodeclass_runner_cap, NODE_CLASS, "warm", _node_class(16, "9")) == [
        "9 pods per runner; 1 to 3"
    ]


# --- review findings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "capability", ["SYS_MODULE", "SYS_PTRACE", "cap_net_admin", "BPF", "CAP_DAC_READ_SEARCH"]
)
def test_any_added_capability_is_privilege(dev_spec: PlatformSpec, capability: str) -> None:
    """As the admission policy judges it: a non-empty capabilities.add, in any spelling."""
    pod = runner_pod()
    pod["spec"]["containers"][1]["securityContext"] = {"capabilities": {"add": [capability]}}
    assert check_stack(
        privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", pod)]
    ) == [
        "kubernetes:core/v1:Pod r spec: privileged container(s) ['dind'] on pool 'warm', which "
        "is not isolated for team 'web': privileged runners only run on an isolated pool of "
        "their team"
    ]


@pytest.mark.parametrize("key", ["containers", "initContainers", "ephemeralContainers"])
def test_a_host_port_in_a_runner_pod_is_refused(key: str) -> None:
    pod = runner_pod()
    pod["spec"][key] = [
        {"name": "web", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}]}
    ]
    assert check(runner_pod_host_access, POD, "r", pod) == [
        "spec: runner pod container 'web' sets hostPort [8080]: runner pods never listen on "
        "the node's own addresses"
    ]


def test_a_workload_in_a_team_namespace_of_any_name_is_a_runner_pod(
    dev_spec: PlatformSpec,
) -> None:
    """A namespace the stack labels with a team is a runner namespace whatever its name: an
    unlabelled privileged workload there is judged like one in runners-web."""
    namespace = {"metadata": {"name": "ci-web", "labels": {"runner-platform.io/team": "web"}}}
    deployment = {
        "metadata": {"name": "sneaky", "namespace": "ci-web"},
        "spec": {
            "template": {
                "metadata": {},
                "spec": {
                    "nodeSelector": {"pool": "warm"},
                    "containers": [
                        {
                            "name": "c",
                            "image": "docker:dind",
                            "securityContext": {"privileged": True},
                        }
                    ],
                },
            }
        },
    }
    stack = [*pools_and_namespaces(dev_spec), (NAMESPACE, "ci-web", namespace)]
    assert check_stack(
        privileged_runner_on_shared_pool,
        [*stack, ("kubernetes:apps/v1:Deployment", "d", deployment)],
    ) == [
        "kubernetes:apps/v1:Deployment d spec.template: privileged container(s) ['c'] on pool "
        "'warm', which is not isolated for team 'web': privileged runners only run on an "
        "isolated pool of their team"
    ]


def test_the_team_is_the_namespaces_not_the_workloads_own_label(dev_spec: PlatformSpec) -> None:
    """A pod of runners-web that labels itself team 'ml' does not get ml's isolated pool."""
    pod = runner_pod("web", "ml-isolated", privileged=True, tolerate="ml-isolated")
    pod["metadata"]["labels"]["runner-platform.io/team"] = "ml"
    assert check_stack(
        privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", pod)]
    ) == [
        "kubernetes:core/v1:Pod r spec: privileged container(s) ['dind'] on pool "
        "'ml-isolated', which is not isolated for team 'web': privileged runners only run on "
        "an isolated pool of their team"
    ]
    # Nor does a job pod template in a ConfigMap of runners-web that names team 'ml'.
    hooks = copy.deepcopy(container_manifests.hooks_config_map(dev_spec, dev_spec.teams[0]))
    hooks["metadata"]["labels"]["runner-platform.io/team"] = "ml"
    template = json.loads(hooks["data"]["job-warm.json"])
    template["metadata"]["labels"]["runner-platform.io/team"] = "ml"
    template["spec"] = pod["spec"]
    hooks["data"]["job-warm.json"] = json.dumps(template)
    assert check_stack(
        privileged_runner_on_shared_pool,
        [*pools_and_namespaces(dev_spec), (CONFIG_MAP, "hooks", hooks)],
    ) == [
        "kubernetes:core/v1:ConfigMap hooks data[job-warm.json]: privileged container(s) "
        "['dind'] on pool 'ml-isolated', which is not isolated for team 'web': privileged "
        "runners only run on an isolated pool of their team"
    ]
    # A pod in a namespace the stack declares for no team has no team at all.
    stray = runner_pod("ml", "ml-isolated", privileged=True, tolerate="ml-isolated")
    stray["metadata"]["namespace"] = "runners-nobody"
    assert check_stack(
        privileged_runner_on_shared_pool, [*pools_and_namespaces(dev_spec), (POD, "r", stray)]
    ) == [
        "kubernetes:core/v1:Pod r spec: privileged container(s) ['dind'] on pool "
        "'ml-isolated', which is not isolated for a team (its namespace is not one the stack "
        "declares for a team): privileged runners only run on an isolated pool of their team"
    ]


def test_an_owner_label_on_a_shared_pool_does_not_isolate_it(dev_spec: PlatformSpec) -> None:
    stack = pools_and_namespaces(dev_spec)
    for kind, name, props in stack:
        if kind == NODE_POOL and name == "warm":
            props["metadata"]["labels"]["runner-platform.io/owner"] = "web"
    pod = runner_pod("web", "warm", privileged=True, tolerate="warm")
    assert check_stack(privileged_runner_on_shared_pool, [*stack, (POD, "r", pod)]) == [
        "kubernetes:core/v1:Pod r spec: privileged container(s) ['dind'] on pool 'warm', which "
        "is not isolated for team 'web': privileged runners only run on an isolated pool of "
        "their team"
    ]
