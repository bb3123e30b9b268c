"""Faults between the provisioner and the real servers: the Kubernetes API answering
429/500/503 (``localenv.fault_proxy`` in front of the real API server) and GitHub
answering 5xx or its secondary rate limit (the emulator's). The real serve/listen/provision
processes ride them out: each queued job gets exactly one runner, nothing is created twice,
nothing is left for the reaper, and the provisioner's metrics show what was injected.

Jobs go to web's nvme pool (no min_idle there, 8 runners a node), so runner pods,
JIT Secrets and registrations of ``web-nvme`` are exactly the jobs' runners.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

from localenv.fault_proxy import FaultProxy
from localenv.github import GitHubEmulator
from localenv.kube import ControlPlane
from localenv.process import free_port
from tests.integration.platform_support import Metrics, Platform, job_status, module_platform

NVME = ["self-hosted", "nvme"]
SCALE_SET = "web-nvme"
NAMESPACE = "runners-web"
POD_CREATES = rf"^/api/v1/namespaces/{NAMESPACE}/pods$"
SECRET_CREATES = rf"^/api/v1/namespaces/{NAMESPACE}/secrets$"
WATCH = rf"^/api/v1/namespaces/{NAMESPACE}/pods\?.*watch=1"
RELIST = rf"^/api/v1/namespaces/{NAMESPACE}/pods\?(?!.*watch=)"


@pytest.fixture(scope="module")
def proxy(kube_nodes: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_plane(kube_nodes).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest, proxy: FaultProxy) -> Iterator[Platform]:
    # Only the provisioner talks to Kubernetes: through the proxy, as the controller.
    for platform in module_platform(
        request,
        "faults",
        proxy=proxy,
        extra_env={
            "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(free_port()),
            "RUNNER_PLATFORM_REAP_INTERVAL": "4",  # a lost JIT reply's registration: reaped
        },
    ):
        platform.wait_live("web-warm", 2)  # web's min_idle runners
        yield platform


@pytest.fixture(autouse=True)
def no_faults_left(
    proxy: FaultProxy, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> Iterator[None]:
    yield
    proxy.clear()
    for emulator in (github_cloud, github_ghes):
        emulator.clear_faults()
        emulator.enable_rate_limits(None, None)


# -- helpers --


def _grew(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    """How much the samples of ``name`` with these labels (others any) grew."""

    def total(metrics: Metrics) -> float:
        return sum(
            value
            for (sample, pairs), value in metrics.items()
            if sample == name and labels.items() <= dict(pairs).items()
        )

    return total(after) - total(before)


def _reaped(before: Metrics, after: Metrics) -> dict[tuple[tuple[str, str], ...], float]:
    """What the reaper (or a clean-up other than a job's success) removed meanwhile."""
    name = "runner_platform_reaped_total"
    keys = {labels for sample, labels in after if sample == name}
    grown = {labels: after[name, labels] - before.get((name, labels), 0.0) for labels in keys}
    return {labels: value for labels, value in grown.items() if value}


def _queue(platform: Platform, count: int) -> list[int]:
    return [platform.queue("web", NVME, "acme-corp/storefront") for _ in range(count)]


def _registrations(platform: Platform) -> list[str]:
    return sorted(
        r.name for r in platform.runners("cloud", "acme-corp") if r.name.startswith("web-nvme-")
    )


def _secrets(platform: Platform) -> list[str]:
    return sorted(
        s.metadata.name
        for s in platform.secrets(NAMESPACE)
        if s.metadata.name.startswith("web-nvme-")
    )


def _started(platform: Platform, jobs: list[int]) -> bool:
    return all(job_status(platform, "cloud", job) == "in_progress" for job in jobs)


def _state(platform: Platform, jobs: list[int]) -> dict[str, Any]:
    world = platform.emulators["cloud"].world
    runners = [world.jobs[job].runner for job in jobs]
    return {
        "job runners": sorted(r.name if r else "-" for r in runners),
        "pods": sorted(p.metadata.name for p in platform.pods(SCALE_SET)),
        "secrets": _secrets(platform),
        "registrations": _registrations(platform),
    }


def _one_runner_each(platform: Platform, jobs: list[int]) -> bool:
    """Every job on its own runner, and exactly those runners' pods, Secrets and
    registrations exist: no duplicate, no orphan."""
    state = _state(platform, jobs)
    names = state["job runners"]
    return (
        "-" not in names
        and len(set(names)) == len(jobs)
        and all(state[kind] == names for kind in ("pods", "secrets", "registrations"))
    )


def _settle(platform: Platform, jobs: list[int]) -> None:
    platform.wait(lambda: _started(platform, jobs), 60, "every job on a runner")
    platform.wait(
        lambda: _one_runner_each(platform, jobs), 30, "one pod, Secret, registration each"
    )
    platform.settle(SCALE_SET)  # more passes: nothing else is created
    assert _one_runner_each(platform, jobs), _state(platform, jobs)


def _finish(platform: Platform, jobs: list[int]) -> None:
    world = platform.emulators["cloud"].world
    for job in jobs:
        if world.jobs[job].status != "completed":
            world.complete_job(job, "success")
    platform.emulators["cloud"].flush()
    platform.wait(
        lambda: (
            not platform.pods(SCALE_SET) and not _secrets(platform) and not _registrations(platform)
        ),
        60,
        "the runners cleaned up",
    )


class _Peak:
    """The most live runner pods of the scale set at any moment while open."""

    def __init__(self, platform: Platform) -> None:
        self.platform, self.most = platform, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(self.platform.live_pods(SCALE_SET)))
            time.sleep(0.2)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _deletes(emulator: GitHubEmulator) -> int:
    runner = re.compile(r"/orgs/acme-corp/actions/runners/\d+$")
    return sum(
        1 for method, path in list(emulator.requests) if method == "DELETE" and runner.search(path)
    )


# -- Kubernetes API faults --


def test_kube_429_and_5xx_on_every_other_create_lose_nothing_and_double_nothing(
    platform: Platform, proxy: FaultProxy
) -> None:
    before = platform.provision_metrics()
    codes = [(r, c) for r in ("pods", "secrets") for c in (429, 500, 503)]
    earlier = {(r, c): proxy.faults.count("POST", rf"/{r}$", c) for r, c in codes}
    # Every other pod create is answered 429, 500 or 503 in turn (Retry-After 1), and
    # every third Secret create 500 or 503 (a runner pod waits for its Secret; the
    # stand-in, unlike a kubelet, only for a few seconds).
    pods = proxy.fail((429, 500, 503), method="POST", path=POD_CREATES, share=0.5, retry_after=1)
    secrets = proxy.fail((500, 503), method="POST", path=SECRET_CREATES, share=1 / 3)
    jobs = _queue(platform, 6)
    with _Peak(platform) as peak:
        _settle(platform, jobs)
    assert peak.most == len(jobs)  # never a second runner for the same demand
    assert pods.injected >= 3 and secrets.injected >= 2  # of at least 6 creates each
    after = platform.provision_metrics()
    errors = "runner_platform_kube_api_errors_total"
    for resource, code in codes:
        injected = proxy.faults.count("POST", rf"/{resource}$", code) - earlier[resource, code]
        seen = _grew(before, after, errors, verb="post", resource=resource, code=str(code))
        assert seen == injected, (resource, code, seen, injected)
        assert injected > 0 or (resource, code) == ("secrets", 429)
    jit = "runner_platform_jit_configs_total"
    created = _grew(before, after, jit, instance="cloud", result="created")
    undone = _grew(before, after, jit, instance="cloud", result="error")  # past 6 attempts
    assert created - undone == len(jobs)
    assert _reaped(before, after) == {}  # nothing left over
    _finish(platform, jobs)


def test_creates_failing_past_their_retries_are_undone_whole_and_lost_replies_taken(
    platform: Platform, proxy: FaultProxy
) -> None:
    cloud = platform.emulators["cloud"]
    before, deletes = platform.provision_metrics(), _deletes(cloud)
    pod_deletes = rf"^/api/v1/namespaces/{NAMESPACE}/pods/web-nvme-"
    deleted = proxy.count("DELETE", pod_deletes, 200)
    # 1st runner: its pod is created but the reply lost, then five more attempts fail:
    #   the provisioner deletes that pod and the registration.
    # 2nd runner: the pod's reply is lost, the retry finds it (409); its Secret fails six
    #   times: pod and registration deleted.
    # 3rd runner: the Secret's reply is lost, the retry finds it (409): done.
    proxy.fail(503, method="POST", path=POD_CREATES, times=1, retry_after=1, after=True)
    proxy.fail(503, method="POST", path=POD_CREATES, times=5, retry_after=1)
    proxy.fail(500, method="POST", path=POD_CREATES, times=1, after=True)
    proxy.fail(500, method="POST", path=SECRET_CREATES, times=6)
    proxy.fail(500, method="POST", path=SECRET_CREATES, times=1, after=True)
    jobs = _queue(platform, 1)
    with _Peak(platform) as peak:
        _settle(platform, jobs)
    assert peak.most == 1
    assert all(rule.spent for rule in proxy.faults.rules)
    assert proxy.count("DELETE", pod_deletes, 200) - deleted == 2  # by the provisioner
    assert _deletes(cloud) - deletes == 2  # both undone registrations, by the provisioner
    after = platform.provision_metrics()
    jit = "runner_platform_jit_configs_total"
    assert _grew(before, after, jit, instance="cloud", result="created") == 3
    assert _grew(before, after, jit, instance="cloud", result="error") == 2
    errors = "runner_platform_kube_api_errors_total"
    assert _grew(before, after, errors, verb="post", resource="pods", code="503") == 6
    assert _grew(before, after, errors, verb="post", resource="pods", code="500") == 1
    assert _grew(before, after, errors, verb="post", resource="pods", code="409") == 1
    assert _grew(before, after, errors, verb="post", resource="secrets", code="500") == 7
    assert _grew(before, after, errors, verb="post", resource="secrets", code="409") == 1
    assert _reaped(before, after) == {}
    _finish(platform, jobs)


def test_a_relist_failing_past_its_retries_does_not_end_the_watch(
    platform: Platform, proxy: FaultProxy
) -> None:
    # The watch breaks, its resumption is told 410 Gone, and the relist gets 503 past a
    # request's six attempts: the watch must back off and list again, not end.
    expired = proxy.fail(410, method="GET", path=WATCH, times=1)
    relist = proxy.fail(503, method="GET", path=RELIST, times=7)
    platform.wait(lambda: proxy.cut(WATCH) > 0, 10, "the pod watch of runners-web open")
    platform.wait(lambda: relist.injected == 7, 30, "the relist tried again after its retries")
    assert expired.injected == 1
    platform.wait(lambda: proxy.count("GET", RELIST, 200) > 0, 10, "a relist that succeeded")
    # Only a live watch sees the runner's pod finish, so only then is it cleaned up.
    jobs = _queue(platform, 1)
    _settle(platform, jobs)
    _finish(platform, jobs)


# -- GitHub faults --


def test_jitconfig_5xx_is_retried_and_a_lost_reply_leaves_nothing_behind(
    platform: Platform,
) -> None:
    cloud = platform.emulators["cloud"]
    before = platform.provision_metrics()
    # The first JIT request is served and its reply lost (502): a registration nobody
    # has a config for. The next three are answered 502 before anything is done.
    lost = cloud.fail("jitconfig", 502, times=1, after=True)
    down = cloud.fail("jitconfig", 502, times=3)
    jobs = _queue(platform, 3)
    with _Peak(platform) as peak:
        _settle(platform, jobs)  # registrations == pods: the lost one was reaped
    assert peak.most == len(jobs)
    assert (lost.injected, down.injected) == (1, 3)
    after = platform.provision_metrics()
    jit = "runner_platform_jit_configs_total"
    assert _grew(before, after, jit, instance="cloud", result="unavailable") == 4
    assert _grew(before, after, jit, instance="cloud", result="created") == 3
    calls = "runner_platform_github_api_calls_total"
    assert _grew(before, after, calls, endpoint="generate_jitconfig", status="502") == 4
    assert _grew(before, after, calls, endpoint="generate_jitconfig", status="201") == 3
    # The registration whose reply was lost, and nothing else.
    assert _reaped(before, after) == {(("kind", "registration"), ("reason", "no-pod")): 1}
    _finish(platform, jobs)


def test_the_secondary_rate_limit_is_waited_out_not_hammered(platform: Platform) -> None:
    cloud = platform.emulators["cloud"]
    before = platform.provision_metrics()
    # 10 points a minute per token and endpoint: two JIT configs (5 points each). The
    # first two are charged 45 s in the past, so that minute ends about 15 s from now.
    cloud.enable_rate_limits(primary=None, secondary_points=10)
    shifted = 0.0
    try:
        cloud.advance(-45)
        shifted = -45
        first = _queue(platform, 2)
        platform.wait(lambda: len(_registrations(platform)) == 2, 30, "two JIT registrations")
        cloud.advance(45)
        shifted = 0
        later = _queue(platform, 2)  # answered 403 + retry-after until that minute ends
        jobs = first + later
        with _Peak(platform) as peak:
            _settle(platform, jobs)
        assert peak.most == len(jobs)
        after = platform.provision_metrics()
        calls = "runner_platform_github_api_calls_total"
        refused = _grew(before, after, calls, endpoint="generate_jitconfig", status="403")
        # Each refusal's retry-after was waited out: a refusal or two per runner being
        # created, not one per pass (every 2 s) until the minute ended.
        assert 1 <= refused <= 4, refused
        assert _grew(before, after, calls, endpoint="generate_jitconfig", status="201") == 4
        jit = "runner_platform_jit_configs_total"
        assert _grew(before, after, jit, instance="cloud", result="created") == 4
        assert _reaped(before, after) == {}
    finally:
        cloud.advance(-shifted)
        cloud.enable_rate_limits(None, None)
    _finish(platform, jobs)
