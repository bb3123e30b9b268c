"""The wheel that ``python -m build`` makes runs on its own: installed into a fresh
virtualenv with its runtime dependencies only (pinned by constraints.txt, no dev extra, no
Pulumi), from the wheelhouse with no index, every entry point runs for real from outside
the repository. A dev-only import, a missing data file or a missing dependency fails here.

``serve`` answers /readyz against a Redis that wants AUTH and takes a signed webhook;
``listen`` makes its consumer groups; ``provision`` takes its Lease on a real API server
and leaves on SIGTERM with 0; ``audit`` reads the router's record back; ``access-matrix``
reads a stack file; ``runner-credentials --help`` answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localenv.image import project_version
from localenv.kube import ControlPlane
from localenv.process import ManagedProcess, free_port, wait_for
from localenv.services import Redis
from tests.conftest import ROOT
from tests.integration.shipping_support import (
    ControllerWorld,
    Dist,
    answers,
    build_dist,
    lease_holder,
    offline_pip_env,
    prepare_cluster,
    spec_in,
)

NAMESPACE = "rp-wheel-test"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return build_dist(tmp_path_factory.getbasetemp() / "dist")


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and what it requires, nothing else."""
    path = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    result = subprocess.run(
        [
            str(path / "bin" / "pip"),
            "install",
            "--quiet",
            "--constraint",
            str(ROOT / "constraints.txt"),
            str(dist.wheel),
        ],
        capture_output=True,
        text=True,
        env=offline_pip_env(dist.wheelhouse),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    server = Redis().start()  # its own: it gets a password
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(
    redis: Redis, kube_api: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> ControllerWorld:
    spec = spec_in(NAMESPACE)
    prepare_cluster(kube_api, spec)
    return ControllerWorld.create(spec, tmp_path_factory.mktemp("wheel-world"), redis)


def _env(world: ControllerWorld, **extra: str) -> dict[str, str]:
    """Only the settings the controller reads; no PYTHONPATH, no user site, no cwd import."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {
        **keep,
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
        "RUNNER_PLATFORM_SPEC": str(world.config_dir / "spec.json"),
        "RUNNER_PLATFORM_RUNTIME": str(world.config_dir / "runtime.json"),
        "RUNNER_PLATFORM_SECRETS_DIR": str(world.secrets_dir),
        "RUNNER_PLATFORM_HOST": "127.0.0.1",
        "RUNNER_PLATFORM_GITHUB_API_URLS": world.github_urls(),
        "AWS_REGION": world.spec.cluster.region,
        **extra,
    }


def _run(
    venv: Path, *argv: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_the_sdist_and_the_wheel_hold_the_package_and_nothing_of_the_tests(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    assert "runner-controller = controller.__main__:main" in scripts
    assert "runner-credentials = controller.identity.credentials:main" in scripts
    assert "controller/__main__.py" in names and "controller/model/spec.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]
    with tarfile.open(dist.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "controller/__main__.py"} <= members


def test_only_runtime_dependencies_are_installed(venv: Path) -> None:
    """Not a dev tool, not the Pulumi SDK: the controller needs neither."""
    probe = (
        "import importlib.util as u, sys; "
        "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is not None))"
    )
    absent = ["pytest", "hypothesis", "moto", "mypy", "ruff", "pulumi", "pulumi_aws", "pg8000"]
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe, *absent], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_every_controller_module_imports_from_the_installed_wheel(
    venv: Path, tmp_path: Path
) -> None:
    code = (
        "import importlib, pkgutil, controller, sys\n"
        "assert controller.__file__.startswith(sys.prefix), controller.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(controller.__path__, 'controller.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) > 30


def test_version_comes_from_pyproject(venv: Path, tmp_path: Path) -> None:
    result = _run(venv, "runner-controller", "--version", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"runner-controller {project_version()}"


def test_serve_listen_provision_audit_run_from_the_wheel(
    venv: Path, world: ControllerWorld, kube_api: ControlPlane, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    env = _env(
        world,
        RUNNER_PLATFORM_PORT=str(port),
        RUNNER_PLATFORM_PROVISION_METRICS_PORT=str(metrics_port),
        RUNNER_PLATFORM_KUBECONFIG=str(kube_api.kubeconfig),
    )
    processes = {
        name: ManagedProcess(
            name, [str(venv / "bin" / "runner-controller"), name], tmp_path, env=env, cwd=tmp_path
        )
        for name in ("serve", "listen", "provision")
    }
    try:
        for process in processes.values():
            process.start()
        base = f"http://127.0.0.1:{port}"
        processes["serve"].wait_until(lambda: answers(f"{base}/readyz") == 200, 60, "ready")
        metrics = httpx.get(f"{base}/metrics").text
        assert f'version="{project_version()}"' in metrics
        assert "runner_platform_build_info{" in metrics
        assert world.deliver_job(base, job_id=4242) == 202

        processes["listen"].wait_until(
            lambda: all(world.listener_groups().values()), 60, "consumer groups made"
        )
        processes["provision"].wait_until(
            lambda: lease_holder(kube_api, world.spec.controller.namespace) is not None,
            60,
            "holding the provisioner Lease",
        )
        processes["provision"].wait_until(
            lambda: answers(f"http://127.0.0.1:{metrics_port}/metrics") == 200, 30, "metrics"
        )
        holder = lease_holder(kube_api, world.spec.controller.namespace)
        assert holder is not None and holder.endswith(f"-{processes['provision'].popen.pid}")  # type: ignore[union-attr]

        audit = _run(venv, "runner-controller", "audit", "--json", env=env, cwd=tmp_path)
        assert audit.returncode == 0, audit.stderr
        assert '"job_id": 4242' in audit.stdout
    finally:
        for process in processes.values():
            process.stop(grace=15.0)
    # SIGTERM: each exits at once, 0; the provisioner stops creating and releases its
    # Lease first. uvicorn re-raises the signal after its graceful shutdown, so serve dies
    # of it (as PID 1 of a container, where the signal has no default action, it exits 0).
    for name, process in processes.items():
        assert process.popen is not None
        expected = (0, -signal.SIGTERM) if name == "serve" else (0,)
        assert process.popen.returncode in expected, (name, process.log_path.read_text()[-3000:])
    assert "Finished server process" in processes["serve"].log_path.read_text()
    wait_for(
        lambda: lease_holder(kube_api, world.spec.controller.namespace) in (None, ""),
        30,
        "the Lease released",
    )


def test_access_matrix_and_the_credential_helper_run(venv: Path, tmp_path: Path) -> None:
    matrix = _run(
        venv,
        "runner-controller",
        "access-matrix",
        "--config",
        str(ROOT / "Pulumi.dev.yaml"),
        env={},
        cwd=tmp_path,
    )
    assert matrix.returncode == 0, matrix.stderr
    assert "github-runner-web-role" in matrix.stdout
    helper = _run(venv, "runner-credentials", "--help", env={}, cwd=tmp_path)
    assert helper.returncode == 0, helper.stderr
    assert "aws" in helper.stdout and "vault" in helper.stdout
