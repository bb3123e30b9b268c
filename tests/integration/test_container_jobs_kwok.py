"""Job pods with the real scheduler, KWOK nodes and the controller-manager: a kubernetes-mode
runner's job pod lands beside it on its pool, counts against the team's quota, and goes
with its runner (the hook entry point made it a dependent; the garbage collector acts)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from components import container_manifests as cm
from components import controller_manifests, node_pools
from controller.model import PlatformSpec, RuntimeFacts, load_spec
from controller.provision import pod as rp
from localenv.dry_run import Rejected, submit
from localenv.kube import ControlPlane, K8sBins
from localenv.kube_objects import pool_node
from localenv.process import wait_for
from tests.integration.kube_support import small_spec


@pytest.fixture(scope="module")
def plane(bins: K8sBins) -> Iterator[ControlPlane]:
    """Its own cluster: the garbage collector and the quota controller are part of what is
    tested, and they run in the controller-manager."""
    control = ControlPlane(bins).start(scheduler=True, kwok=True, controller_manager=True)
    yield control
    control.stop()


def _spec(suffix: str) -> PlatformSpec:
    document = json.loads(small_spec(suffix).model_dump_json())
    team = document["teams"][0]
    team.update(container_mode="kubernetes", max_runners=1)
    team["resources"] = {"cpu": "2", "memory": "4Gi", "ephemeral_storage": "20Gi"}
    team["job_resources"] = {"cpu": "2", "memory": "4Gi", "ephemeral_storage": "20Gi"}
    return load_spec(document)


def _create(api: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        return submit(api, manifest, dry_run=False)
    except Rejected as error:
        if error.status != 409:
            raise
        return manifest


def _local_volume(name: str, node: str, storage_class: str) -> dict[str, Any]:
    """What the EBS CSI driver would provision: a volume only ``node`` can mount."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "100Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "local": {"path": "/mnt/work"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def _adopt(plane: ControlPlane, tmp_path: Path, token: str, env: dict[str, str]) -> None:
    """Run the platform's hook entry point for prepare_job, the image's hooks stood in for
    by a script that has already created the job pod."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes(plane.certs.ca_cert.read_bytes())
    stock = tmp_path / "stock.js"
    stock.write_text("require('fs').readFileSync(0); process.exit(0);\n")
    host, port = plane.server.removeprefix("https://").rsplit(":", 1)
    result = subprocess.run(
        ["node", str(cm.HOOKS_ENTRY_POINT)],
        input=json.dumps({"command": "prepare_job"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "RUNNER_PLATFORM_SA_DIR": str(account),
            "RUNNER_PLATFORM_STOCK_HOOKS": str(stock),
            **env,
        },
    )
    assert result.returncode == 0, result.stderr


def _running_on(core: client.CoreV1Api, name: str, namespace: str) -> str | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod.spec.node_name if pod.status.phase == "Running" else None


def _gone(core: client.CoreV1Api, name: str, namespace: str, kind: str = "pod") -> bool:
    try:
        if kind == "pod":
            core.read_namespaced_pod(name, namespace)
        else:
            core.read_namespaced_persistent_volume_claim(name, namespace)
    except client.ApiException as error:
        return error.status == 404
    return False


def test_job_pods_land_beside_their_runner_count_in_quota_and_go_with_it(
    plane: ControlPlane, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    spec = _spec(suffix)
    team = spec.teams[0]
    general, gpu, _ = spec.pools
    ns = team.namespace
    api = plane.api_client()
    core = client.CoreV1Api(api)
    for manifest in [
        *(n for n in controller_manifests.namespaces(spec) if n["metadata"]["name"] == ns),
        *(
            a
            for a in controller_manifests.service_accounts(spec, "arn")
            if a["metadata"]["namespace"] == ns
        ),
        node_pools.runner_priority_class(),
        *cm.work_storage_classes(spec),
        *cm.team_objects(spec, team),
    ]:
        if not manifest["apiVersion"].startswith("cilium.io/"):
            _create(api, manifest)
    # A node of the runner's pool and one of another pool, with a volume for the former.
    node = f"{general.name}-node"
    for pool, name in ((general, node), (gpu, f"{gpu.name}-node")):
        core.create_node(pool_node(spec, pool, name))
    _create(api, _local_volume(f"work-{suffix}", node, general.work_storage_class))
    quota = cm.resource_quota(spec, team)["spec"]["hard"]
    assert quota["pods"] == "3"  # one runner, its job pod, one step pod
    # The quota controller has to have counted the namespace before admission lets pods in.
    wait_for(
        lambda: core.read_namespaced_resource_quota("runners", ns).status.used,
        60,
        "the quota's first count",
    )

    facts = RuntimeFacts(
        team_role_arns={team.name: "arn:aws:iam::1:role/r"},
        vault_mounts={"cloud": "jwt-cloud"},
        redis_endpoint="redis",
    )
    scale_set = next(s for s in spec.scale_sets() if s.pool == general.name)
    runner_name = f"runner-{suffix}"
    runner = _create(api, rp.runner_pod(spec, facts, scale_set, runner_name, 1))
    assert wait_for(lambda: _running_on(core, runner_name, ns), 90, "runner Running") == node
    claim = core.read_namespaced_persistent_volume_claim(f"{runner_name}-work", ns)
    assert claim.metadata.owner_references[0].uid == runner["metadata"]["uid"]

    # The job pod, created with the runner's token as the hooks create it, then adopted.
    token = plane.service_account_token(ns, "runner", audiences=["https://kubernetes.default.svc"])
    config = client.Configuration(host=plane.server, api_key={"authorization": f"Bearer {token}"})
    config.ssl_ca_cert = str(plane.certs.ca_cert)
    job = cm.job_pod(team, general, runner_name, node, "node:20-bookworm")
    submit(client.ApiClient(config), job, dry_run=False)
    _adopt(
        plane,
        tmp_path,
        token,
        {
            "ACTIONS_RUNNER_POD_NAME": runner_name,
            "RUNNER_PLATFORM_POD_UID": runner["metadata"]["uid"],
            "ACTIONS_RUNNER_KUBERNETES_NAMESPACE": ns,
        },
    )
    job_name = job["metadata"]["name"]
    # The scheduler put it on the runner's node, in the runner's pool.
    assert wait_for(lambda: _running_on(core, job_name, ns), 90, "job pod Running") == node
    assert core.read_node(node).metadata.labels["pool"] == general.name

    # Counted in the team's quota: runner and job pod, their requests, the work claim.
    def used() -> dict[str, str] | None:
        status = core.read_namespaced_resource_quota("runners", ns).status.used or {}
        return status if status.get("pods") == "2" else None

    counted = wait_for(used, 60, "the quota to count the job pod")
    assert counted["requests.cpu"] == "4"
    assert counted["requests.memory"] == "8Gi"
    assert counted["persistentvolumeclaims"] == "1"
    # A second runner would go past the team's share (4.5 cpu for one runner's footprint).
    second = rp.runner_pod(spec, facts, scale_set, f"second-{suffix}", 2)
    with pytest.raises(Rejected, match="exceeded quota"):
        submit(api, second, dry_run=False)

    # Gone with the runner: the garbage collector follows the owner references.
    core.delete_namespaced_pod(runner_name, ns, grace_period_seconds=0)
    wait_for(lambda: _gone(core, job_name, ns), 90, "the job pod to go with its runner")
    wait_for(lambda: _gone(core, f"{runner_name}-work", ns, "claim"), 90, "the work claim to go")
