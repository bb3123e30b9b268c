"""What the shipped controller needs around it, as the Deployment gives it: the ConfigMap
and the Secrets as files, a Redis that wants its AUTH token, and a real API server with
the controller's namespace, ServiceAccount and RBAC (``components.controller_manifests``).

Shared by the wheel test (a fresh virtualenv) and the image test (podman), so that both run
the entry points against the same world: the dev stack's spec in its own controller
namespace, GitHub API calls sent to a closed loopback port (nothing leaves the machine).
"""

from __future__ import annotations

import copy
import functools
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from components.controller_manifests import (
    CONFIG_MAP,
    CONTROLLER_NAME,
    REDIS_SECRET,
    config_map,
    namespaces,
    rbac,
    referenced_secrets,
    service_accounts,
)
from controller.model import PlatformSpec, RuntimeFacts, load_spec
from controller.streams import queue_key
from localenv.dry_run import Rejected, submit
from localenv.image import wheelhouse
from localenv.kube import ControlPlane
from localenv.process import free_port
from localenv.services import Redis
from tests.conftest import DEV_DOCUMENT, ROOT
from tests.integration.router_support import SECRETS, encode, job_payload, signed

LEASE = "runner-platform.io/lease"  # the label on the provisioner's Leases


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    wheelhouse: Path


@functools.cache
def build_dist(out: Path) -> Dist:
    """``python -m build`` (sdist, then the wheel from the sdist), once per session. Its
    isolated build environment takes setuptools from the wheelhouse: no index."""
    wheels = wheelhouse()
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        env=offline_pip_env(wheels),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("runner_platform-*.tar.gz")
    (wheel,) = out.glob("runner_platform-*.whl")
    return Dist(sdist, wheel, wheels)


def offline_pip_env(wheels: Path) -> dict[str, str]:
    """pip with no index, only ``wheels`` (and none of this machine's PIP_ settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}


def spec_in(namespace: str) -> PlatformSpec:
    """The dev stack's spec with the controller in ``namespace`` (its own Lease)."""
    document: dict[str, Any] = copy.deepcopy(DEV_DOCUMENT)
    document["controller"]["namespace"] = namespace
    return load_spec(document)


def _private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class ControllerWorld:
    """Files, Redis and API server objects one controller deployment runs against."""

    spec: PlatformSpec
    workdir: Path
    redis: Redis
    redis_token: str

    @classmethod
    def create(cls, spec: PlatformSpec, workdir: Path, redis: Redis) -> ControllerWorld:
        token = secrets.token_urlsafe(24)
        # The ElastiCache of a real stack wants AUTH: so does this one.
        redis_sync.Redis.from_url(redis.url).config_set("requirepass", token)
        world = cls(spec, workdir, redis, token)
        world._write_files()
        return world

    @property
    def config_dir(self) -> Path:
        return self.workdir / "config"

    @property
    def secrets_dir(self) -> Path:
        return self.workdir / "secrets"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_token}@127.0.0.1:{self.redis.port}/0"

    def _write_files(self) -> None:
        """The ConfigMap's data (built by the manifests' own builder) and each Secret the
        Deployment mounts, one folder per Secret, one file per key."""
        facts = RuntimeFacts(
            team_role_arns={
                t.name: f"arn:aws:iam::123456789012:role/r-{t.name}" for t in self.spec.teams
            },
            vault_mounts={i.name: f"jwt-{i.name}" for i in self.spec.github_instances},
            redis_endpoint="127.0.0.1",
            redis_port=self.redis.port,
            redis_tls=False,
        )
        data = config_map(self.spec, self.spec.model_dump_json(), facts.model_dump_json())["data"]
        self.config_dir.mkdir(parents=True)
        for key, value in data.items():
            (self.config_dir / key).write_text(value)
        files: dict[tuple[str, str], bytes] = {(REDIS_SECRET, "token"): self.redis_token.encode()}
        for instance in self.spec.github_instances:
            hook = instance.webhook_secret
            files[(hook.name, hook.key)] = SECRETS[instance.name]
            for app in instance.apps:
                files[(app.private_key.name, app.private_key.key)] = _private_key()
        assert {name for name, _ in files} == set(referenced_secrets(self.spec))
        for (name, key), value in files.items():
            (self.secrets_dir / name).mkdir(parents=True, exist_ok=True)
            (self.secrets_dir / name / key).write_bytes(value)
        # Readable by the controller's uid (65532) in a container, as the kubelet mounts them.
        for path in [self.workdir, *self.workdir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

    def volume_sources(self, pod: dict[str, Any]) -> dict[str, Path]:
        """Host folder of each ConfigMap and Secret volume of a pod template's spec."""
        sources: dict[str, Path] = {}
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] == CONFIG_MAP
                sources[volume["name"]] = self.config_dir
            elif "secret" in volume:
                sources[volume["name"]] = self.secrets_dir / volume["secret"]["secretName"]
        return sources

    def github_urls(self) -> str:
        """Every instance's API at a closed loopback port: no call leaves the machine."""
        closed = f"http://127.0.0.1:{free_port()}"
        return ",".join(f"{i.name}={closed}" for i in self.spec.github_instances)

    # -- checks from outside --

    def deliver_job(self, base_url: str, job_id: int) -> int:
        body = encode(job_payload(job_id=job_id))
        response = httpx.post(
            f"{base_url}/webhooks/github/cloud", content=body, headers=signed(body)
        )
        return response.status_code

    def listener_groups(self) -> dict[str, int]:
        """Consumer groups on each scale set's queue stream (the listener makes them)."""
        redis = redis_sync.Redis.from_url(self.redis_url)
        groups = {}
        for scale_set in self.spec.scale_sets():
            key = queue_key(scale_set.name)
            groups[scale_set.name] = len(redis.xinfo_groups(key)) if redis.exists(key) else 0
        return groups


def prepare_cluster(plane: ControlPlane, spec: PlatformSpec) -> None:
    """The controller's namespaces, ServiceAccount and RBAC, from the manifests."""
    api = plane.api_client()
    for manifest in [*namespaces(spec), *service_accounts(spec, "arn:unused"), *rbac(spec)]:
        try:
            submit(api, manifest, dry_run=False)
        except Rejected as error:
            if error.status != 409:  # the team namespaces are shared with other tests
                raise


def service_account_mount(plane: ControlPlane, spec: PlatformSpec, directory: Path) -> Path:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: a token of
    the controller's ServiceAccount, the cluster CA and the namespace."""
    token = plane.service_account_token(spec.controller.namespace, CONTROLLER_NAME)
    directory.mkdir(parents=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(Path(plane.certs.ca_cert).read_bytes())
    (directory / "namespace").write_text(spec.controller.namespace)
    for path in [directory, *directory.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def lease_holder(plane: ControlPlane, namespace: str) -> str | None:
    """Who holds the scale sets' Leases: None when none is held, else the holders'
    identities joined by commas (one replica: its identity)."""
    coordination = client.CoordinationV1Api(plane.api_client())
    leases = coordination.list_namespaced_lease(namespace, label_selector=f"{LEASE}=scale-set")
    holders = sorted({str(item.spec.holder_identity) for item in leases.items} - {"", "None"})
    return ",".join(holders) or None


def answers(url: str) -> int | None:
    """The status a GET of ``url`` gets, or None while nothing listens."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None
