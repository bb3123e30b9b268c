"""The controller image, built from the Dockerfile on Debian bases with no network, runs
the way the Deployment runs it.

Each of the Deployment's three containers (``components.controller_manifests.deployment``)
runs in podman with exactly its args, env, user, groups, capabilities, read-only root and
mounts (:func:`localenv.image.pod_run_args` refuses a field it cannot honour, so a
manifest that changes in a way the image cannot follow fails here). What the kubelet adds
is added: the ServiceAccount token mount and KUBERNETES_SERVICE_HOST/PORT. Host networking
moves the ports and binds loopback only; nothing else differs.

From outside: /healthz and /readyz answer (Redis with AUTH behind it), a signed webhook is
stored, the listener makes its consumer groups, the provisioner takes its Lease with the
ServiceAccount's own RBAC and exits 0 on SIGTERM; every process runs as 65532 on a
read-only root, and the image has no shell at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from components.controller_manifests import deployment
from localenv.image import (
    IMAGE,
    Container,
    build_image,
    image_config,
    pod_run_args,
    podman,
    podman_result,
    project_version,
)
from localenv.kube import ControlPlane
from localenv.process import free_port, wait_for
from localenv.services import Redis
from tests.integration.shipping_support import (
    ControllerWorld,
    answers,
    lease_holder,
    prepare_cluster,
    service_account_mount,
    spec_in,
)

NAMESPACE = "rp-image-test"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
UID = 65532


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    name = f"{IMAGE}:test"
    previous = _image_id(name)
    built = build_image(tag=name)
    # The image this one replaces goes (its layers are most of 400 MB); the build cache
    # of the dependency layer stays.
    if previous is not None and previous != _image_id(name):
        podman("rmi", previous, check=False)
    yield built


def _image_id(name: str) -> str | None:
    found = podman("images", "--quiet", "--no-trunc", name, check=False).strip()
    return found or None


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    server = Redis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(
    redis: Redis, kube_api: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> ControllerWorld:
    spec = spec_in(NAMESPACE)
    prepare_cluster(kube_api, spec)
    return ControllerWorld.create(spec, tmp_path_factory.mktemp("image-world"), redis)


def _status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def _root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError("no root mount")


def test_the_image_says_its_version_and_runs_as_65532(image: str) -> None:
    config = image_config(image)
    version = project_version()
    assert config["Config"]["Labels"]["org.opencontainers.image.version"] == version
    assert config["Config"]["User"] == f"{UID}:{UID}"
    # Exec form: nothing between the runtime and the controller, no shell.
    assert config["Config"]["Entrypoint"] == ["/venv/bin/runner-controller"]
    printed = podman(
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--read-only-tmpfs=false",
        image,
        "--version",
    )
    assert printed.strip() == f"runner-controller {version}"


def test_the_image_has_no_shell(image: str) -> None:
    for shell in ("/bin/sh", "/bin/bash", "/usr/bin/dash"):
        result = podman_result(
            "run", "--rm", "--network=none", f"--entrypoint={shell}", image, "-c", "true"
        )
        assert result.returncode == 127, (shell, result.stdout, result.stderr)  # not found


def test_the_build_context_holds_the_package_sources_only(image: str) -> None:
    """.dockerignore keeps tests, docs, benchmarks, workflows and caches out."""
    stage = build_image(tag=f"{IMAGE}:test-build-stage", target="build")
    try:
        listing = podman(
            "run",
            "--rm",
            "--network=none",
            "--entrypoint=/usr/bin/find",
            stage,
            "/src",
            "-maxdepth",
            "1",
        )
        caches = podman(
            "run",
            "--rm",
            "--network=none",
            "--entrypoint=/usr/bin/find",
            stage,
            "/src",
            "-name",
            "__pycache__",
        )
    finally:
        podman("rmi", stage, check=False)
    top = {Path(line).name for line in listing.split() if line != "/src"}
    assert top == {
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        # Written by the build itself: the dependency list, setuptools' in-tree output.
        "requirements.txt",
        "build",
        "runner_platform.egg-info",
        "controller",
        "components",
        "policies",
        "localenv",
    }
    assert caches.strip() == ""


def test_the_deployment_runs_from_the_image(
    image: str, world: ControllerWorld, kube_api: ControlPlane, tmp_path: Path
) -> None:
    spec = world.spec
    pod: dict[str, Any] = deployment(spec, "test")["spec"]["template"]["spec"]
    api = urlsplit(kube_api.server)
    port, metrics_port = free_port(), free_port()
    kubelet = {  # what the kubelet gives every container of a pod with a ServiceAccount
        "KUBERNETES_SERVICE_HOST": str(api.hostname),
        "KUBERNETES_SERVICE_PORT": str(api.port),
    }
    host_network = {
        "RUNNER_PLATFORM_HOST": "127.0.0.1",
        "RUNNER_PLATFORM_PORT": str(port),
        "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(metrics_port),
        "RUNNER_PLATFORM_GITHUB_API_URLS": world.github_urls(),
    }
    token_dir = service_account_mount(kube_api, spec, tmp_path / "serviceaccount")
    containers: dict[str, Container] = {}
    for spec_container in pod["containers"]:
        name = spec_container["name"]
        options, args = pod_run_args(
            pod,
            name,
            world.volume_sources(pod),
            env_overrides={**kubelet, **host_network},
        )
        options.append(f"--volume={token_dir}:{SERVICE_ACCOUNT_DIR}:ro")
        containers[name] = Container(
            f"rp-image-test-{name}-{free_port()}", image, options, args, tmp_path
        )
    assert {c.args[0] for c in containers.values()} == {"serve", "listen", "provision"}
    try:
        for container in containers.values():
            container.start()
        base = f"http://127.0.0.1:{port}"
        serve = containers["controller"]
        assert serve.process is not None
        serve.process.wait_until(lambda: answers(f"{base}/healthz") == 200, 90, "alive")
        serve.process.wait_until(lambda: answers(f"{base}/readyz") == 200, 60, "ready")
        assert f'version="{project_version()}"' in httpx.get(f"{base}/metrics").text
        assert world.deliver_job(base, job_id=777) == 202

        listener = containers["listener"]
        assert listener.process is not None
        listener.process.wait_until(
            lambda: all(world.listener_groups().values()), 60, "consumer groups made"
        )
        provisioner = containers["provisioner"]
        assert provisioner.process is not None
        provisioner.process.wait_until(
            lambda: bool(lease_holder(kube_api, spec.controller.namespace)), 90, "Lease held"
        )
        provisioner.process.wait_until(
            lambda: answers(f"http://127.0.0.1:{metrics_port}/metrics") == 200, 30, "metrics"
        )

        for container in containers.values():
            pid = container.pid()
            status = _status(pid)
            assert status["Uid"] == [str(UID)] * 4, container.name
            assert status["Gid"] == [str(UID)] * 4, container.name
            assert str(UID) in status["Groups"]  # fsGroup
            assert status["CapEff"] == ["0000000000000000"]  # capabilities: drop ALL
            assert status["NoNewPrivs"] == ["1"]
            assert "ro" in _root_mount_options(pid), container.name
            write = container.exec(
                "/venv/bin/python3",
                "-c",
                "import pathlib, sys\n"
                "pathlib.Path('/tmp/scratch').write_text('ok')\n"
                "try:\n"
                "    pathlib.Path('/venv/scratch').write_text('no')\n"
                "except OSError as error:\n"
                "    sys.exit(0 if error.errno == 30 else 2)\n"  # EROFS
                "sys.exit(1)\n",
            )
            assert write.returncode == 0, (container.name, write.stderr)
    finally:
        for container in containers.values():
            container.stop()
    # SIGTERM through podman, as the kubelet stops a pod: every container exits 0 at once
    # (as PID 1 a process without a SIGTERM handler would ignore it); the provisioner gives
    # its Lease up and leaves running jobs alone.
    for container in containers.values():
        process = container.process
        assert process is not None and process.popen is not None
        assert process.popen.returncode == 0, process.log_path.read_text()[-3000:]
    wait_for(
        lambda: lease_holder(kube_api, spec.controller.namespace) in (None, ""),
        30,
        "the Lease released",
    )
    # In-cluster, the kubernetes client hands the token over as "bearer <token>"; the API
    # server must accept the provisioner's very first request, not only after the token
    # file is read again a minute later.
    provisioner_log = containers["provisioner"].process.log_path  # type: ignore[union-attr]
    unauthorized = provisioner_log.read_text().count("401: ")
    assert unauthorized == 0, (
        f"{unauthorized} requests of the provisioner were refused with 401 before it "
        "read the ServiceAccount token file again: KubeConfig.load keeps the 'bearer ' "
        "prefix that load_incluster_config puts on the token"
    )
