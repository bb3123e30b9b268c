"""The provisioner's Kubernetes client at the transport seam: retries, pacing, watches.

(The same client runs against the real API server in the integration tests; here the
transport answers what a real server answers only under load or failure.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from controller.metrics import Metrics
from controller.provision.kube import Conflict, KubeApi, KubeConfig, KubeError, RateLimiter

CONFIG = KubeConfig(server="http://kube.test", verify=False, token="t0ken")


def _api(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> KubeApi:
    return KubeApi(CONFIG, transport=httpx.MockTransport(handler), backoff_base=0.001, **kwargs)


def _status(code: int, message: str = "x", **headers: str) -> httpx.Response:
    return httpx.Response(code, json={"kind": "Status", "message": message}, headers=headers)


def test_429_and_500_are_retried_until_the_server_answers() -> None:
    answers = [_status(429, "slow down", **{"retry-after": "0"}), _status(500), _status(503)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(201, json={"metadata": {"uid": "1"}})

    metrics = Metrics()
    api = _api(handler, metrics=metrics)
    created = asyncio.run(api.create("runners-web", "pods", {"kind": "Pod"}))
    assert created == {"metadata": {"uid": "1"}}
    assert len(seen) == 4
    assert seen[0].headers["authorization"] == "Bearer t0ken"
    errors = {
        s.labels["code"]: s.value
        for s in metrics.registry.collect()
        for s in s.samples
        if s.name == "runner_platform_kube_api_errors_total"
    }
    assert errors == {"429": 1.0, "500": 1.0, "503": 1.0}


def test_retries_end_with_an_error_that_names_the_request() -> None:
    api = _api(lambda request: _status(500, "etcd is sad"), max_attempts=3)
    with pytest.raises(KubeError) as caught:
        asyncio.run(api.create("runners-web", "pods", {"kind": "Pod"}))
    assert caught.value.status == 500
    assert "POST /api/v1/namespaces/runners-web/pods: etcd is sad" in str(caught.value)


def test_a_create_conflict_is_not_retried_and_a_client_error_is_not_either() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return _status(409, "already exists")

    with pytest.raises(Conflict):
        asyncio.run(_api(handler).create("ns", "secrets", {}))
    assert calls == 1
    with pytest.raises(KubeError) as caught:
        asyncio.run(_api(lambda request: _status(422, "invalid")).create("ns", "pods", {}))
    assert caught.value.status == 422


def test_delete_of_a_missing_object_or_another_uid_reports_false() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return _status(404) if request.url.path.endswith("/gone") else _status(409)

    api = _api(handler)
    assert asyncio.run(api.delete("ns", "pods", "gone")) is False
    assert asyncio.run(api.delete("ns", "pods", "renamed", uid="u-1")) is False
    assert bodies[1]["preconditions"] == {"uid": "u-1"}


def test_list_follows_continue_tokens_and_returns_the_resource_version() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("continue") == "page2":
            return httpx.Response(
                200, json={"items": [{"n": 2}], "metadata": {"resourceVersion": "42"}}
            )
        assert request.url.params["labelSelector"] == "app=x"
        return httpx.Response(200, json={"items": [{"n": 1}], "metadata": {"continue": "page2"}})

    items, version = asyncio.run(_api(handler).list("ns", "pods", "app=x"))
    assert items == [{"n": 1}, {"n": 2}]
    assert version == "42"


def test_a_watch_resumes_from_the_last_version_and_relists_after_410() -> None:
    lists = 0
    watches: list[str] = []

    def pod(name: str, version: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "resourceVersion": version}}

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal lists
        if request.url.params.get("watch") != "1":
            lists += 1
            return httpx.Response(
                200, json={"items": [pod("a", "1")], "metadata": {"resourceVersion": "10"}}
            )
        watches.append(request.url.params["resourceVersion"])
        if len(watches) == 1:  # one event, then the server closes the stream
            lines = [{"type": "ADDED", "object": pod("b", "11")}]
        elif len(watches) == 2:  # a bookmark moves the version, then 410 Gone
            lines = [
                {"type": "BOOKMARK", "object": pod("", "12")},
                {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "old"}},
            ]
        else:
            lines = [{"type": "DELETED", "object": pod("a", "20")}]
        body = "\n".join(json.dumps(line) for line in lines) + "\n"
        return httpx.Response(200, content=body.encode())

    async def collect() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        async for kind, obj in _api(handler).watch("ns", "pods", "app=x"):
            name = (
                obj["items"][0]["metadata"]["name"] if kind == "SYNC" else obj["metadata"]["name"]
            )
            seen.append((kind, name))
            if kind == "DELETED":
                return seen
        return seen

    assert asyncio.run(collect()) == [
        ("SYNC", "a"),
        ("ADDED", "b"),
        ("SYNC", "a"),
        ("DELETED", "a"),
    ]
    assert watches == ["10", "11", "10"]  # resumed from the event, relisted after 410
    assert lists == 2


def test_the_rate_limiter_allows_a_burst_then_paces_to_qps() -> None:
    now = [0.0]
    slept: list[float] = []
    limiter = RateLimiter(qps=10, burst=3, clock=lambda: now[0])

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def take(n: int) -> None:
        for _ in range(n):
            await limiter.take()

    original = asyncio.sleep
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        asyncio.run(take(5))
    finally:
        asyncio.sleep = original
    assert slept == pytest.approx([0.1, 0.1])  # 3 at once, then one per 1/qps


def test_the_in_cluster_token_is_read_whatever_the_scheme_case(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes' in-cluster loader stores "bearer <token>" in lower case.
    from kubernetes.config import incluster_config

    token = tmp_path / "token"
    token.write_text("in-cluster-token\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    config = KubeConfig.load(None)
    assert config.token == "in-cluster-token"
    assert config.server == "https://10.96.0.1:443"


def test_a_guarded_write_is_not_retried_once_the_guard_turns_false() -> None:
    # A create for a scale set whose Lease lapsed while it backed off from a 429 is never
    # sent late: the retry checks the guard before it goes out.
    sent: list[httpx.Request] = []
    held = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        held[0] = False  # the Lease lapses while this attempt is answered
        return _status(429, "slow down", **{"retry-after": "0"})

    api = _api(handler)
    with pytest.raises(KubeError, match="not sent, the Lease is gone"):
        asyncio.run(api.create("runners-web", "pods", {"kind": "Pod"}, guard=lambda: held[0]))
    assert len(sent) == 1
    # Without a guard the same answers are retried (the guard is what stopped it).
    sent.clear()
    with pytest.raises(KubeError):
        asyncio.run(_api(handler, max_attempts=3).create("runners-web", "pods", {"kind": "Pod"}))
    assert len(sent) == 3
