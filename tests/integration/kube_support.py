"""Shared by the KWOK tests: a small platform spec, runner pods as the Pod Provisioner
makes them, and waits on the scheduler's verdict."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import requests

from controller.model import POOL_LABEL, PlatformSpec, Pool, ScaleSet, Team, load_spec
from localenv.github import GitHubEmulator
from localenv.runner_pod import INSTANCE_LABEL, JIT_ENV, RUNNER_ID_ANNOTATION


def small_spec(suffix: str) -> PlatformSpec:
    """One instance ``cloud``, one team ``web-<suffix>`` on a general (warm), a GPU and an
    NVMe pool; names carry ``suffix`` so tests sharing one cluster never meet."""
    general, gpu, nvme = f"general-{suffix}", f"gpu-{suffix}", f"nvme-{suffix}"
    return load_spec(
        {
            "cluster": {"name": "kwok", "region": "us-west-2"},
            "github_instances": [
                {
                    "name": "cloud",
                    "kind": "cloud",
                    "orgs": [f"acme-{suffix}"],
                    "org_ids": {f"acme-{suffix}": 1},
                    "apps": [
                        {
                            "app_id": 1,
                            "installations": {f"acme-{suffix}": 2},
                            "private_key": {"name": "app", "key": "pem"},
                        }
                    ],
                    "webhook_secret": {"name": "hook", "key": "secret"},
                }
            ],
            "pools": [
                {
                    "name": general,
                    "kind": "warm",
                    "warm_nodes": 1,
                    "instance_types": ["m7i.4xlarge"],
                    "capacity_types": ["on-demand"],
                    "limits": {"cpu": 64, "memory": "256Gi"},
                },
                {
                    "name": gpu,
                    "kind": "custom",
                    "profile": "gpu",
                    "gpus_per_runner": 1,
                    "max_runners_per_node": 1,
                    "limits": {"cpu": 16, "memory": "64Gi", "gpu": 4},
                },
                {
                    "name": nvme,
                    "kind": "custom",
                    "profile": "nvme",
                    "limits": {"cpu": 32, "memory": "256Gi"},
                },
            ],
            "teams": [
                {
                    "name": f"web-{suffix}",
                    "instance": "cloud",
                    "org": f"acme-{suffix}",
                    "github_teams": ["web"],
                    "repositories": [f"acme-{suffix}/site"],
                    "repository_ids": {f"acme-{suffix}/site": 2},
                    "pools": [general, gpu, nvme],
                    "max_runners": 10,
                    # Plain runners: these tests place runner pods alone (no work volume to
                    # provision, one pod per runner). Container modes have their own tests.
                    "container_mode": "none",
                }
            ],
            "controller": {
                "image": "ghcr.io/acme/controller:0.1.0",
                "webhook_host": "runners.example.com",
            },
            "vault": {"address": "https://vault.example:8200"},
        }
    )


def pod(
    name: str,
    namespace: str,
    requests_: dict[str, str],
    *,
    pool: Pool | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod for ``pool`` (its node selector and tolerations), or for any node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {"app": "kwok-pools"},
            "annotations": annotations or {},
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {POOL_LABEL: pool.name} if pool else {},
            "tolerations": pool.tolerations() if pool else [],
            "containers": [
                {
                    "name": "runner",
                    "image": "ghcr.io/actions/actions-runner:2.329.0",
                    "env": env or [],
                    "resources": {"requests": requests_, "limits": requests_},
                }
            ],
        },
    }


def team_requests(team: Team) -> dict[str, str]:
    return {
        "cpu": team.resources.cpu,
        "memory": team.resources.memory,
        "ephemeral-storage": team.resources.ephemeral_storage,
    }


def runner_pod(
    name: str, scale_set: ScaleSet, spec: PlatformSpec, *, instance: str, runner_id: int | None
) -> dict[str, Any]:
    """A runner pod as the Pod Provisioner creates it (docs/localenv.md, runner stand-in)."""
    team = next(t for t in spec.teams if t.name == scale_set.team)
    return pod(
        name,
        f"runners-{team.name}",
        team_requests(team),
        pool=spec.pool(scale_set.pool),
        labels={
            "app.kubernetes.io/name": "github-runner",
            "runner-platform.io/team": team.name,
            "runner-platform.io/pool": scale_set.pool,
            "runner-platform.io/scale-set": scale_set.name,
            INSTANCE_LABEL: instance,
        },
        annotations={} if runner_id is None else {RUNNER_ID_ANNOTATION: str(runner_id)},
        env=[
            {
                "name": JIT_ENV,
                "valueFrom": {"secretKeyRef": {"name": name, "key": "jitconfig"}},
            }
        ],
    )


def jit_secret(name: str, namespace: str, encoded_jit_config: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"jitconfig": base64.b64encode(encoded_jit_config.encode()).decode()},
    }


def installation_token(gh: GitHubEmulator, app_id: int, org: str) -> str:
    """An installation token for ``org``, minted through the App JWT like the controller."""
    key = gh.add_app(app_id)
    installation = gh.add_installation(app_id, org)
    now = int(gh.now())
    app_jwt = jwt.encode(
        {"iss": str(app_id), "iat": now - 30, "exp": now + 540}, key, algorithm="RS256"
    )
    response = requests.post(
        f"{gh.api_url}/app/installations/{installation}/access_tokens",
        headers={"Authorization": f"Bearer {app_jwt}"},
        timeout=5,
    )
    response.raise_for_status()
    return str(response.json()["token"])


def generate_jit(
    gh: GitHubEmulator, token: str, org: str, name: str, group_id: int, labels: list[str]
) -> dict[str, Any]:
    response = requests.post(
        f"{gh.api_url}/orgs/{org}/actions/runners/generate-jitconfig",
        json={"name": name, "runner_group_id": group_id, "labels": labels},
        headers={"Authorization": f"token {token}"},
        timeout=5,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def unschedulable_message(core: Any, name: str, namespace: str = "default") -> str | None:
    """The scheduler's reason once it gave up on the pod for now, else None."""
    status = core.read_namespaced_pod(name, namespace).status
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
            return str(condition.message)
    return None
