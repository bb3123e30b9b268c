"""The Webhook Router over a real socket, storing into a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import AUDIT_STREAM
from controller.errors import SignatureError
from controller.ingest import signatures
from controller.ingest.app import WebhookApp
from controller.streams import decode_entry, queue_key
from localenv.asgi_server import ThreadedServer
from localenv.services import Redis
from tests.integration.router_support import SECRETS, dev_spec, encode, job_payload, signed


@pytest.fixture
def store(redis_server: Redis) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def router(redis_server: Redis) -> Iterator[ThreadedServer]:
    app = WebhookApp(dev_spec(), SECRETS, aioredis.Redis.from_url(redis_server.url))
    server = ThreadedServer(app).start()
    yield server
    server.stop()


@pytest.fixture
def http(router: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=10) as client:
        yield client


def post(
    http: httpx.Client, body: bytes, headers: dict[str, str], instance: str = "cloud"
) -> httpx.Response:
    return http.post(f"/webhooks/github/{instance}", content=body, headers=headers)


def last_audit(store: redis_sync.Redis) -> dict[str, Any]:
    entries = store.xrevrange(AUDIT_STREAM, count=1)
    assert entries, "nothing was audited"
    return dict(json.loads(entries[0][1][b"r"]))


# -- signatures --


def test_github_test_vector() -> None:
    secret, body = b"It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signatures.sign(secret, body) == expected
    signatures.verify(secret, body, expected)
    with pytest.raises(SignatureError):
        signatures.verify(secret, body + b" ", expected)


@pytest.mark.parametrize(
    ("case", "headers_for"),
    [
        ("wrong secret", lambda b: signed(b, secret=b"not-the-secret")),
        (
            "missing header",
            lambda b: {k: v for k, v in signed(b).items() if k != "X-Hub-Signature-256"},
        ),
        ("other instance's secret", lambda b: signed(b, secret=SECRETS["ghes"])),
        (
            "sha1 only",
            lambda b: {
                **{k: v for k, v in signed(b).items() if k != "X-Hub-Signature-256"},
                "X-Hub-Signature": "sha1=" + "0" * 40,
            },
        ),
        ("not sha256", lambda b: {**signed(b), "X-Hub-Signature-256": "md5=abc"}),
    ],
)
def test_bad_signatures_are_refused_and_audited(
    http: httpx.Client, store: redis_sync.Redis, case: str, headers_for: Any
) -> None:
    body = encode(job_payload())
    response = post(http, body, headers_for(body))
    assert response.status_code == 401, case
    assert store.xlen(queue_key("web-warm")) == 0
    record = last_audit(store)
    assert record["decision"] == "error" and record["instance"] == "cloud"


def test_ghes_delivery_needs_its_enterprise_host(http: httpx.Client) -> None:
    body = encode(job_payload(repo="research/models", labels=["self-hosted", "gpu"]))
    good = post(http, body, signed(body, "ghes"), "ghes")
    assert good.status_code == 202 and good.json()["scale_set"] == "ml-gpu"
    wrong = signed(body, "ghes", extra={"X-GitHub-Enterprise-Host": "evil.example.com"})
    assert post(http, body, wrong, "ghes").status_code == 401
    missing = {k: v for k, v in signed(body, "ghes").items() if k != "X-GitHub-Enterprise-Host"}
    assert post(http, body, missing, "ghes").status_code == 401
    # A GHES delivery signed with the cloud secret on the cloud endpoint is still refused.
    assert (
        post(http, body, signed(body, "ghes", secret=SECRETS["cloud"]), "cloud").status_code == 401
    )


# -- replies --


def test_ping_other_events_and_unused_actions(http: httpx.Client, store: redis_sync.Redis) -> None:
    ping = encode({"zen": "hi", "hook_id": 1})
    assert post(http, ping, signed(ping, event="ping")).status_code == 200
    push = encode({"ref": "refs/heads/main"})
    response = post(http, push, signed(push, event="push"))
    assert (response.status_code, response.json()["status"]) == (202, "ignored")
    waiting = encode(job_payload(action="waiting"))
    assert post(http, waiting, signed(waiting)).json()["status"] == "ignored"
    assert last_audit(store)["reason"] == "action waiting"
    future = encode({"action": "requeued", "workflow_job": {"id": "new shape"}})
    assert post(http, future, signed(future)).json()["status"] == "ignored"
    assert store.xlen(queue_key("web-warm")) == 0


def test_queued_job_is_stored_before_the_202(http: httpx.Client, store: redis_sync.Redis) -> None:
    body = encode(job_payload(job_id=77, sender="Alice"))
    response = post(http, body, signed(body, delivery="d-77"))
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "scale_set": "web-warm"}
    ((_, fields),) = store.xrange(queue_key("web-warm"))
    job = decode_entry(fields)
    assert (job["job_id"], job["sender"], job["delivery"]) == ("77", "Alice", "d-77")
    record = last_audit(store)
    assert (record["decision"], record["scale_set"], record["requester"]) == (
        "accepted",
        "web-warm",
        "Alice",
    )


@pytest.mark.parametrize(
    ("labels", "repo", "expected"),
    [
        (["self-hosted", "linux"], "acme-corp/storefront", "web-warm"),  # team's first pool
        (["self-hosted", "NVMe"], "acme-corp/web-shop", "web-nvme"),  # case-insensitive
        (["self-hosted", "linux", "x64", "web", "warm"], "acme-corp/web-x", "web-warm"),
        (["self-hosted", "gpu"], "acme-corp/storefront", None),  # not one of web's pools
        (["ubuntu-latest"], "acme-corp/storefront", None),  # a GitHub-hosted job
        (["self-hosted"], "acme-corp/payments", None),  # repository of no team
    ],
)
def test_routing(
    http: httpx.Client, store: redis_sync.Redis, labels: list[str], repo: str, expected: str | None
) -> None:
    body = encode(job_payload(labels=labels, repo=repo))
    response = post(http, body, signed(body))
    assert response.status_code == 202
    if expected is None:
        assert response.json()["status"] == "unroutable"
        assert last_audit(store)["decision"] == "unroutable"
    else:
        assert response.json()["scale_set"] == expected


def test_runner_group_must_be_the_teams(http: httpx.Client) -> None:
    other = encode(job_payload(action="in_progress", group="someone-else"))
    assert post(http, other, signed(other)).json()["status"] == "unroutable"
    own = encode(job_payload(action="in_progress", group="web"))
    assert post(http, own, signed(own)).json()["status"] == "queued"


def test_a_thousand_copies_of_one_delivery_queue_one_entry(
    http: httpx.Client, store: redis_sync.Redis
) -> None:
    body = encode(job_payload(job_id=5))
    headers = signed(body, delivery="same-delivery")
    statuses = {post(http, body, headers).json()["status"] for _ in range(1000)}
    assert statuses == {"queued", "duplicate"}
    assert store.xlen(queue_key("web-warm")) == 1


def test_same_job_action_under_new_delivery_ids_is_one_effect(
    http: httpx.Client, store: redis_sync.Redis
) -> None:
    body = encode(job_payload(job_id=6))
    first = post(http, body, signed(body)).json()["status"]
    second = post(http, body, signed(body)).json()["status"]
    assert (first, second) == ("queued", "duplicate")
    done = encode(job_payload(job_id=6, action="completed"))
    assert post(http, done, signed(done)).json()["status"] == "queued"
    assert store.xlen(queue_key("web-warm")) == 2


BAD_INPUTS = [
    (
        "truncated JSON",
        b'{"action": "queued", "workflow_job": {"id": 1',
        {},
        400,
        "body is not valid JSON",
    ),
    ("not an object", b"[1, 2, 3]", {}, 400, "body is not a JSON object"),
    (
        "no action",
        encode({k: v for k, v in job_payload().items() if k != "action"}),
        {},
        400,
        "action: missing",
    ),
    (
        "missing job",
        encode({"action": "queued", "sender": {"login": "a"}}),
        {},
        400,
        "workflow_job: missing",
    ),
    (
        "id is a string",
        encode({**job_payload(), "workflow_job": {**job_payload()["workflow_job"], "id": "seven"}}),
        {},
        400,
        "workflow_job.id",
    ),
    (
        "labels not a list",
        encode(
            {
                **job_payload(),
                "workflow_job": {**job_payload()["workflow_job"], "labels": "self-hosted"},
            }
        ),
        {},
        400,
        "workflow_job.labels",
    ),
    (
        "101 labels",
        encode(job_payload(labels=[f"l{i}" for i in range(101)])),
        {},
        400,
        "workflow_job.labels",
    ),
    (
        "wrong content type",
        encode(job_payload()),
        {"Content-Type": "application/x-www-form-urlencoded"},
        400,
        "content type must be application/json",
    ),
    (
        "no delivery id",
        encode(job_payload()),
        {"X-GitHub-Delivery": ""},
        400,
        "missing X-GitHub-Delivery",
    ),
    ("oversize body", b"{" + b" " * (1 << 20) + b"}", {}, 413, "body over 1048576 bytes"),
]


@pytest.mark.parametrize(
    ("body", "extra", "status", "reason"),
    [case[1:] for case in BAD_INPUTS],
    ids=[c[0] for c in BAD_INPUTS],
)
def test_bad_inputs_get_their_status_and_are_audited(
    http: httpx.Client,
    store: redis_sync.Redis,
    body: bytes,
    extra: dict[str, str],
    status: int,
    reason: str,
) -> None:
    response = post(http, body, signed(body, extra=extra))
    assert response.status_code == status
    assert reason in response.json()["error"]
    record = last_audit(store)
    assert record["decision"] == "error" and reason in record["reason"]


def test_unicode_is_kept(http: httpx.Client, store: redis_sync.Redis) -> None:
    body = json.dumps(
        job_payload(sender="zoë-開発", labels=["self-hosted", "linux"]), ensure_ascii=False
    ).encode()
    assert post(http, body, signed(body)).status_code == 202
    assert decode_entry(store.xrange(queue_key("web-warm"))[0][1])["sender"] == "zoë-開発"


def test_an_oversize_body_is_refused_while_streaming(router: ThreadedServer) -> None:
    """No Content-Length (chunked): the limit still stops the read."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    with httpx.Client(base_url=router.url, timeout=10) as client:
        response = client.post("/webhooks/github/cloud", content=chunks(), headers=signed(b"x"))
    assert response.status_code == 413


def test_health_ready_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "alive"}
    assert http.get("/readyz").status_code == 200
    metrics = http.get("/metrics").text
    assert "runner_platform_webhook_deliveries_total" in metrics
    assert 'runner_platform_queue_depth{scale_set="web-warm"}' in metrics
    assert http.get("/nowhere").status_code == 404
    assert http.get("/webhooks/github/cloud").status_code == 405
    assert http.post("/webhooks/github/gitlab", content=b"{}").status_code == 404


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    event=st.sampled_from(["workflow_job", "ping", "push", "", "membership", "Workflow_Job"]),
    sign_it=st.booleans(),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
def test_fuzzed_deliveries_never_get_a_500(
    http: httpx.Client, body: bytes, event: str, sign_it: bool, content_type: str
) -> None:
    headers = signed(body, event=event, extra={"Content-Type": content_type})
    if not sign_it:
        headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    response = post(http, body, headers)
    assert response.status_code in (200, 202, 400, 401, 413), response.text
    assert "Traceback" not in response.text


def test_redis_down_is_a_503_then_recovery() -> None:
    own = Redis().start()
    app = WebhookApp(
        dev_spec(),
        SECRETS,
        aioredis.Redis.from_url(own.url, socket_timeout=1, socket_connect_timeout=1),
    )
    server = ThreadedServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            body = encode(job_payload(job_id=900))
            assert post(http, body, signed(body)).status_code == 202
            own.stop()
            down = encode(job_payload(job_id=901))
            response = post(http, body=down, headers=signed(down))
            assert response.status_code == 503
            assert "storage unavailable" in response.json()["error"]
            assert http.get("/readyz").status_code == 503
            own = Redis(port=own.port).start()
            assert post(http, down, signed(down)).status_code == 202
            assert http.get("/readyz").status_code == 200
    finally:
        server.stop()
        own.stop()


def test_event_names_from_senders_never_become_new_metric_series(http: httpx.Client) -> None:
    for index in range(200):  # unsigned, each with a new event name: all refused
        response = http.post(
            "/webhooks/github/cloud",
            content=b"{}",
            headers={"X-GitHub-Event": f"made-up-{index}", "X-GitHub-Delivery": f"d-{index}"},
        )
        assert response.status_code == 401
    metrics = http.get("/metrics").text
    assert "made-up-" not in metrics
    series = [
        line
        for line in metrics.splitlines()
        if line.startswith("runner_platform_webhook_deliveries_total{")
    ]
    assert any('event="other"' in line for line in series)
    assert len(series) < 20


def test_a_full_queue_is_refused_with_503_and_nothing_queued_is_dropped(
    redis_server: Redis, store: redis_sync.Redis
) -> None:
    # A bound of 3 waiting jobs per scale set: the 4th is refused, the first 3 stay.
    app = WebhookApp(dev_spec(), SECRETS, aioredis.Redis.from_url(redis_server.url), queue_bound=3)
    server = ThreadedServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            statuses = []
            for job_id in range(900, 905):
                body = encode(job_payload(job_id=job_id))
                statuses.append(post(client, body, signed(body)).status_code)
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    assert statuses == [202, 202, 202, 503, 503]
    waiting = [decode_entry(f)["job_id"] for _, f in store.xrange(queue_key("web-warm"))]
    assert waiting == ["900", "901", "902"]  # the oldest are never trimmed away
    assert last_audit(store)["decision"] == "queue-full"
    assert "web-warm's queue is full" in last_audit(store)["reason"]
    assert 'decision="queue-full"' in metrics
