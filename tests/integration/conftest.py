"""Real servers for integration tests, session-scoped, each started only if a test asks.

Fixtures: ``kube_api`` (etcd + kube-apiserver), ``kube_nodes`` (+ scheduler, KWOK),
``kube_karpenter`` (+ Karpenter's KWOK provider), ``redis_server``, ``openbao``, ``postgres``,
``moto_server``, ``github_cloud``, ``github_ghes``, ``runner_standin`` (plays the runner in
``kube_nodes``' runner pods against both emulators). Each stops at the end of the session,
and ``localenv.process`` stops anything left at interpreter exit.

A server's work folder goes with its stop. When a test failed while it ran, its logs are
first copied to ``${RUNNER_PLATFORM_CACHE:-~/.cache/runner-platform}/logs/`` and the
summary at the end of the run says where (docs/localenv.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from localenv.github import GitHubEmulator
from localenv.kube import ControlPlane, K8sBins, k8s_bins
from localenv.runner_standin import RunnerStandIn
from localenv.services import Moto, OpenBao, Postgres, Redis

_SURVIVORS: list[tuple[str, Path]] = []  # (server, where its logs or folder remain)


class _Stoppable(Protocol):
    def stop(self, *, failed: bool = False) -> Path | None: ...


def _served(request: pytest.FixtureRequest, name: str, server: Any) -> Iterator[Any]:
    """Yield a started server, then stop it, saving its logs if a test failed meanwhile."""
    failures_before = request.session.testsfailed
    yield server
    stoppable: _Stoppable = server
    kept = stoppable.stop(failed=request.session.testsfailed > failures_before)
    if kept is not None:
        _SURVIVORS.append((name, kept))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SURVIVORS:
        terminalreporter.section("localenv logs")
        for name, path in _SURVIVORS:
            terminalreporter.write_line(f"{name}: {path}")


@pytest.fixture(scope="session")
def bins() -> K8sBins:
    return k8s_bins()


@pytest.fixture(scope="session")
def kube_api(request: pytest.FixtureRequest, bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start()
    plane.apply_crds()
    yield from _served(request, "kube_api", plane)


@pytest.fixture(scope="session")
def kube_nodes(request: pytest.FixtureRequest, bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start(scheduler=True, kwok=True)
    yield from _served(request, "kube_nodes", plane)


@pytest.fixture(scope="session")
def kube_karpenter(request: pytest.FixtureRequest, bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start(scheduler=True, kwok=True, karpenter=True)
    yield from _served(request, "kube_karpenter", plane)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[Redis]:
    yield from _served(request, "redis_server", Redis().start())


@pytest.fixture(scope="session")
def openbao(request: pytest.FixtureRequest) -> Iterator[OpenBao]:
    yield from _served(request, "openbao", OpenBao().start())


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[Postgres]:
    yield from _served(request, "postgres", Postgres().start())


@pytest.fixture(scope="session")
def moto_server(request: pytest.FixtureRequest) -> Iterator[Moto]:
    yield from _served(request, "moto_server", Moto().start())


@pytest.fixture(scope="session")
def github_cloud() -> Iterator[GitHubEmulator]:
    emulator = GitHubEmulator(kind="cloud").start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def github_ghes() -> Iterator[GitHubEmulator]:
    emulator = GitHubEmulator(kind="ghes", host="github.acme.internal").start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def runner_standin(
    kube_nodes: ControlPlane, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> Iterator[RunnerStandIn]:
    """Runner pods in ``kube_nodes`` labelled ``runner-platform.io/instance`` ``cloud`` or
    ``ghes`` (the dev stack's instance names) run against those two emulators."""
    standin = RunnerStandIn(
        kube_nodes.kubeconfig, {"cloud": github_cloud.url, "ghes": github_ghes.url}
    ).start()
    yield standin
    standin.stop()
