"""Every Kubernetes object the infrastructure builders produce is accepted by a real API
server carrying the real CRDs, with strict field validation (server-side dry run)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components import container_manifests, controller_manifests, node_pools, observability
from controller.model import PlatformSpec, RuntimeFacts
from controller.provision import pod as runner_pod
from localenv.dry_run import Rejected, submit
from localenv.kube import ControlPlane


def _objects(spec: PlatformSpec) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        node_pools.warm_namespace(),
        node_pools.placeholder_priority_class(),
        node_pools.runner_priority_class(),
    ]
    for pool in spec.pools:
        objects += node_pools.pool_objects(spec, pool, "KarpenterNodeRole-runners-dev")
    spec_json = spec.model_dump_json()
    objects += controller_manifests.controller_objects(
        spec,
        controller_role_arn="arn:aws:iam::123456789012:role/runner-controller",
        spec_json=spec_json,
        runtime_json="{}",
        hash_value=controller_manifests.config_hash(spec_json, "{}"),
    )
    objects += [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": spec.observability.namespace},
        },
        observability.dashboard_config_map(spec),
    ]
    return objects


@pytest.fixture(scope="module")
def accepted(kube_api: ControlPlane, dev_spec_module: PlatformSpec) -> dict[str, dict[str, Any]]:
    """Namespaces are created for real (objects in them need them); the rest is dry run."""
    api = kube_api.api_client()
    results: dict[str, dict[str, Any]] = {}
    for manifest in _objects(dev_spec_module):
        if manifest["apiVersion"].startswith("cilium.io/"):
            # Cilium's operator registers its CRDs in a real cluster; the local API server
            # has none (tests/unit/test_container_modes.py pins these objects instead).
            continue
        key = (
            f"{manifest['kind']}/{manifest['metadata'].get('namespace', '')}/"
            f"{manifest['metadata']['name']}"
        )
        if manifest["kind"] == "Namespace":
            try:
                submit(api, manifest, dry_run=False)
            except Rejected as error:
                if error.status != 409:
                    raise
            results[key] = manifest
        else:
            try:
                results[key] = submit(api, manifest, dry_run=True)
            except Rejected as error:
                if error.status != 409:
                    raise
                # Created for real by another module on this shared API server (the runner
                # PriorityClass, say): strict-validate the same object under another name.
                renamed = copy.deepcopy(manifest)
                renamed["metadata"]["name"] = f"{manifest['metadata']['name']}-dry"[:63]
                results[key] = submit(api, renamed, dry_run=True)
    return results


@pytest.fixture(scope="module")
def dev_spec_module() -> PlatformSpec:
    from controller.model import load_spec
    from tests.conftest import DEV_DOCUMENT

    return load_spec(copy.deepcopy(DEV_DOCUMENT))


def test_every_builder_object_is_accepted(accepted: dict[str, dict[str, Any]]) -> None:
    kinds = {key.split("/")[0] for key in accepted}
    assert {
        "NodePool",
        "EC2NodeClass",
        "PriorityClass",
        "Deployment",
        "DaemonSet",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "StorageClass",
        "ResourceQuota",
        "LimitRange",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    } <= kinds


def test_server_keeps_the_runner_cap_and_imds_settings(
    accepted: dict[str, dict[str, Any]],
) -> None:
    node_class = accepted["EC2NodeClass//gpu"]
    assert node_class["spec"]["kubelet"]["maxPods"] == 4 * 3 + 6  # room for job pods
    assert node_class["spec"]["metadataOptions"]["httpPutResponseHopLimit"] == 1
    node_pool = accepted["NodePool//gpu"]
    assert node_pool["spec"]["limits"]["nvidia.com/gpu"] == "16"
    assert (
        node_pool["spec"]["template"]["spec"]["startupTaints"][0]["key"]
        == "node.cilium.io/agent-not-ready"
    )


def test_a_misspelt_field_is_rejected(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    """The check above can fail: strict validation refuses what the CRD does not know."""
    manifest = node_pools.ec2_node_class(dev_spec_module, dev_spec_module.pool("warm"), "role")
    manifest["spec"]["metadataOptions"]["httpPutResponseHopLimt"] = 1
    with pytest.raises(
        Rejected, match=r'unknown field "spec.metadataOptions.httpPutResponseHopLimt"'
    ):
        submit(kube_api.api_client(), manifest)


def test_kubelet_typos_pass_the_api_server_so_the_policy_pack_guards_max_pods(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    """EC2NodeClass v1.15 keeps spec.kubelet free-form (Karpenter validates it later, into a
    status condition), so a misspelt maxPods would silently drop the per-node cap. The
    policy pack is the guard that catches it before anything reaches the cluster."""
    from policies.evaluate import check
    from policies.rules import nodeclass_runner_cap

    manifest = node_pools.ec2_node_class(dev_spec_module, dev_spec_module.pool("warm"), "role")
    manifest["spec"]["kubelet"] = {"maxPod": 15}
    submit(kube_api.api_client(), manifest)  # accepted by the server
    assert check(
        nodeclass_runner_cap, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "warm", manifest
    ) == ["EC2NodeClass has no spec.kubelet.maxPods: the per-node runner cap is unset"]


def test_a_wrong_enum_value_is_rejected(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    manifest = node_pools.node_pool(dev_spec_module, dev_spec_module.pool("warm"))
    manifest["spec"]["disruption"]["consolidationPolicy"] = "Sometimes"
    with pytest.raises(Rejected, match="consolidationPolicy"):
        submit(kube_api.api_client(), manifest)


# --- runner pods: what the provisioner creates, against the objects the stack declares --

FACTS = RuntimeFacts(
    team_role_arns={
        team: f"arn:aws:iam::123456789012:role/github-runner-{team}-role"
        for team in ("web", "ml", "infra")
    },
    vault_mounts={"cloud": "jwt-cloud", "ghes": "jwt-ghes"},
    redis_endpoint="redis.runners-dev.internal",
)


def _create(api: Any, manifest: dict[str, Any]) -> None:
    """Create for real (strictly validated too); an object already there is fine."""
    try:
        submit(api, manifest, dry_run=False)
    except Rejected as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="module")
def runner_objects(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec, accepted: dict[str, dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each scale set's pod and Secret as the server would store them (dry run).

    A pod's priority class must exist for admission to resolve it, so it and the runner
    ServiceAccounts are created for real, after ``accepted`` dry-ran them (the team
    namespaces already exist).
    """
    api = kube_api.api_client()
    _create(api, node_pools.runner_priority_class())
    for account in controller_manifests.service_accounts(dev_spec_module, "arn"):
        if account["metadata"]["name"] == controller_manifests.RUNNER_SERVICE_ACCOUNT:
            _create(api, account)
    results = {}
    for scale_set in dev_spec_module.scale_sets():
        name = f"{scale_set.name}-runner-1"
        pod = submit(api, runner_pod.runner_pod(dev_spec_module, FACTS, scale_set, name, 7))
        secret = runner_pod.jit_secret(scale_set, name, "eyJqaXQiOiAiY29uZmlnIn0=")
        secret["metadata"]["ownerReferences"] = [runner_pod.secret_owner_reference(pod)]
        results[scale_set.name] = (pod, submit(api, secret))
    return results


def test_every_scale_set_pod_and_secret_is_accepted(
    runner_objects: dict[str, tuple[dict[str, Any], dict[str, Any]]],
    dev_spec_module: PlatformSpec,
) -> None:
    assert set(runner_objects) == {s.name for s in dev_spec_module.scale_sets()}
    for name, (pod, secret) in runner_objects.items():
        # The server resolved the runner PriorityClass: runners outrank placeholders.
        assert pod["spec"]["priority"] == node_pools.RUNNER_PRIORITY, name
        assert pod["spec"]["preemptionPolicy"] == "PreemptLowerPriority", name
        assert pod["spec"]["serviceAccountName"] == "runner"
        assert secret["metadata"]["namespace"] == pod["metadata"]["namespace"]
        assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        assert secret["data"] == {"jitconfig": "ZXlKcWFYUWlPaUFpWTI5dVptbG5JbjA9"}
        assert secret["immutable"] is True


def test_the_server_keeps_gpu_resources_and_pool_tolerations(
    kube_api: ControlPlane,
    dev_spec_module: PlatformSpec,
    runner_objects: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    pod, _ = runner_objects["ml-gpu"]
    # ml runs container hooks on the GPU pool: its job pod, where the job runs, holds the GPU.
    job = submit(
        kube_api.api_client(),
        container_manifests.job_pod(
            dev_spec_module.teams[1], dev_spec_module.pool("gpu"), "gpu-runner", "n", "cuda"
        ),
    )
    resources = job["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["tolerations"][:2] == pod["spec"]["tolerations"][:2]
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert {t["key"] for t in pod["spec"]["tolerations"]} >= {
        "runner-platform.io/pool",
        "nvidia.com/gpu",
    }


def test_runner_pods_meet_the_restricted_pod_security_standard(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec, runner_objects: Any
) -> None:
    """Team namespaces enforce "baseline"; the pod meets "restricted" as well, which the
    API server's PodSecurity admission checks here (and refuses a weakened pod).
    ``runner_objects`` created the priority class the pod names."""
    api = kube_api.api_client()
    namespace = "runner-pod-restricted"
    _create(
        api,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        },
    )
    scale_set = dev_spec_module.scale_sets()[0]
    manifest = runner_pod.runner_pod(dev_spec_module, FACTS, scale_set, "restricted-1", 1)
    manifest["metadata"]["namespace"] = namespace
    submit(api, manifest)
    manifest["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(Rejected, match="violates PodSecurity"):
        submit(api, manifest)


def test_a_misspelt_pod_field_is_rejected(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec, runner_objects: Any
) -> None:
    scale_set = dev_spec_module.scale_sets()[0]
    manifest = runner_pod.runner_pod(dev_spec_module, FACTS, scale_set, "typo-1", 1)
    manifest["spec"]["activeDeadlineSecond"] = 60
    with pytest.raises(Rejected, match=r'unknown field "spec.activeDeadlineSecond"'):
        submit(kube_api.api_client(), manifest)


def test_each_container_mode_s_runner_pod_and_job_pod_is_accepted(
    kube_api: ControlPlane,
    dev_spec_module: PlatformSpec,
    runner_objects: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """The dev stack has every mode: its runner pods (above) and, for the hook modes, a job
    pod as the container hooks create it from the team's template, strictly validated.
    Only dind has a privileged container, and only on the isolated pool its team owns."""
    modes = {
        pod["metadata"]["labels"]["runner-platform.io/container-mode"]
        for pod, _ in runner_objects.values()
    }
    assert modes == {"kubernetes", "buildkit", "dind", "none"}
    api = kube_api.api_client()
    for name, (pod, _) in runner_objects.items():
        spec = pod["spec"]
        privileged = [
            c["name"]
            for c in spec["containers"] + spec.get("initContainers", [])
            if (c.get("securityContext") or {}).get("privileged")
        ]
        pool = dev_spec_module.pool(spec["nodeSelector"]["pool"])
        if pod["metadata"]["labels"]["runner-platform.io/container-mode"] == "dind":
            assert privileged == ["dind"], name
            assert (
                pool.kind == "isolated" and f"runners-{pool.owner}" == pod["metadata"]["namespace"]
            )
        else:
            assert privileged == [], name
        if "ephemeral" in str(spec["volumes"]):
            team = next(
                t for t in dev_spec_module.teams if t.namespace == pod["metadata"]["namespace"]
            )
            job = container_manifests.job_pod(
                team, pool, pod["metadata"]["name"], "node-1", "node:20-bookworm"
            )
            stored = submit(api, job)
            assert stored["spec"]["nodeSelector"] == spec["nodeSelector"], name
            assert stored["spec"]["priority"] == node_pools.RUNNER_PRIORITY
            assert stored["spec"]["automountServiceAccountToken"] is False
