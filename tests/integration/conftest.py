"""Real servers for integration tests, session-scoped, each started only if a test asks.

Fixtures: ``kube_api`` (etcd + kube-apiserver), ``kube_nodes`` (+ scheduler, KWOK),
``kube_karpenter`` (+ Karpenter's KWOK provider), ``redis_server``, ``openbao``, ``postgres``,
``moto_server``, ``github_cloud``, ``github_ghes``. Each stops at the end of the session,
and ``localenv.process`` stops anything left at interpreter exit.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localenv.github import GitHubEmulator
from localenv.kube import ControlPlane, K8sBins, k8s_bins
from localenv.services import Moto, OpenBao, Postgres, Redis


@pytest.fixture(scope="session")
def bins() -> K8sBins:
    return k8s_bins()


@pytest.fixture(scope="session")
def kube_api(bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start()
    plane.apply_crds()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kube_nodes(bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start(scheduler=True, kwok=True)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kube_karpenter(bins: K8sBins) -> Iterator[ControlPlane]:
    plane = ControlPlane(bins).start(scheduler=True, kwok=True, karpenter=True)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = Redis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    server = OpenBao().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    server = Moto().start()
    yield server
    server.stop()


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
