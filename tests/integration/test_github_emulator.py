"""The GitHub emulator behaves like GitHub where the platform depends on it."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from localenv.github import GitHubEmulator


class Receiver:
    """A webhook endpoint on loopback that records exactly what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str | None]]:
        return [(h["X-GitHub-Event"], json.loads(b).get("action")) for h, b in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def gh() -> Iterator[GitHubEmulator]:
    emulator = GitHubEmulator(kind="ghes", host="ghe.example.com").start()
    yield emulator
    emulator.stop()


def _token(gh: GitHubEmulator, org: str = "acme") -> str:
    key = gh.add_app(5)
    installation = gh.add_installation(5, org)
    now = int(gh.now())
    app_jwt = jwt.encode({"iss": "5", "iat": now - 30, "exp": now + 540}, key, algorithm="RS256")
    response = requests.post(
        f"{gh.api_url}/app/installations/{installation}/access_tokens",
        headers={"Authorization": f"Bearer {app_jwt}"},
        timeout=5,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def _get(gh: GitHubEmulator, path: str, token: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{gh.api_url}{path}", headers={"Authorization": f"token {token}", **headers}, timeout=5
    )


def _post(gh: GitHubEmulator, path: str, token: str, body: Any = None) -> requests.Response:
    return requests.post(
        f"{gh.api_url}{path}", json=body, headers={"Authorization": f"token {token}"}, timeout=5
    )


def test_installation_tokens_expire_after_an_hour(gh: GitHubEmulator) -> None:
    token = _token(gh)
    assert _get(gh, "/orgs/acme", token).status_code == 200
    gh.advance(3601)
    response = _get(gh, "/orgs/acme", token)
    assert response.status_code == 401
    assert response.json()["message"] == "Bad credentials"


def test_app_jwt_must_be_short_lived_and_signed_by_the_app(gh: GitHubEmulator) -> None:
    key = gh.add_app(9)
    installation = gh.add_installation(9, "acme")
    now = int(gh.now())
    too_long = jwt.encode({"iss": "9", "iat": now, "exp": now + 3600}, key, algorithm="RS256")
    url = f"{gh.api_url}/app/installations/{installation}/access_tokens"
    assert (
        requests.post(url, headers={"Authorization": f"Bearer {too_long}"}, timeout=5).status_code
        == 401
    )
    forged = jwt.encode(
        {"iss": "9", "iat": now, "exp": now + 60}, gh.add_app(10), algorithm="RS256"
    )
    assert (
        requests.post(url, headers={"Authorization": f"Bearer {forged}"}, timeout=5).status_code
        == 401
    )


def test_tokens_see_only_their_own_org(gh: GitHubEmulator) -> None:
    token = _token(gh, "acme")
    gh.world.add_org("other")
    assert _get(gh, "/orgs/other/actions/runners", token).status_code == 404


def test_membership_etag_gives_a_free_304(gh: GitHubEmulator) -> None:
    token = _token(gh)
    gh.world.add_team("acme", "sre")
    gh.world.set_membership("acme", "sre", "alice")
    gh.enable_rate_limits(primary=100, secondary_points=None)
    first = _get(gh, "/orgs/acme/teams/sre/memberships/alice", token)
    assert first.status_code == 200 and first.json()["state"] == "active"
    remaining = int(first.headers["x-ratelimit-remaining"])
    again = _get(
        gh,
        "/orgs/acme/teams/sre/memberships/alice",
        token,
        **{"If-None-Match": first.headers["ETag"]},
    )
    assert again.status_code == 304
    assert int(again.headers["x-ratelimit-remaining"]) == remaining
    gh.world.set_membership("acme", "sre", "alice", state="pending")
    changed = _get(
        gh,
        "/orgs/acme/teams/sre/memberships/alice",
        token,
        **{"If-None-Match": first.headers["ETag"]},
    )
    assert changed.status_code == 200 and changed.json()["state"] == "pending"
    assert _get(gh, "/orgs/acme/teams/sre/memberships/zed", token).status_code == 404


def test_primary_limit_exhaustion_is_a_403_with_reset(gh: GitHubEmulator) -> None:
    token = _token(gh)
    gh.enable_rate_limits(primary=3, secondary_points=None)
    codes = [_get(gh, "/orgs/acme", token).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 403]
    last = _get(gh, "/orgs/acme", token)
    assert last.headers["x-ratelimit-remaining"] == "0"
    assert int(last.headers["x-ratelimit-reset"]) > time.time()


def test_secondary_limit_on_mutations_returns_retry_after(gh: GitHubEmulator) -> None:
    token = _token(gh)
    gh.enable_rate_limits(primary=None, secondary_points=10)  # two POSTs of 5 points
    codes = [
        _post(gh, "/orgs/acme/actions/runners/registration-token", token).status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 403]
    refused = _post(gh, "/orgs/acme/actions/runners/registration-token", token)
    assert int(refused.headers["retry-after"]) >= 1
    assert "secondary rate limit" in refused.json()["message"]


def test_jit_config_is_single_use_and_bound_to_group_and_labels(gh: GitHubEmulator) -> None:
    token = _token(gh)
    group = gh.world.add_runner_group(
        "acme", "web", visibility="selected", repositories=("acme/site",)
    )
    response = _post(
        gh,
        "/orgs/acme/actions/runners/generate-jitconfig",
        token,
        {"name": "web-1", "runner_group_id": group.id, "labels": ["self-hosted", "linux", "web"]},
    )
    assert response.status_code == 201
    runner = response.json()["runner"]
    assert runner["runner_group_id"] == group.id and runner["status"] == "offline"
    config = response.json()["encoded_jit_config"]
    gh.world.start_runner(config)
    with pytest.raises(ValueError, match="single use"):
        gh.world.start_runner(config)
    bad = _post(
        gh,
        "/orgs/acme/actions/runners/generate-jitconfig",
        token,
        {"name": "web-2", "runner_group_id": 999999, "labels": ["x"]},
    )
    assert bad.status_code == 422
    assert (
        _post(
            gh,
            "/orgs/acme/actions/runners/generate-jitconfig",
            token,
            {"name": "web-3", "runner_group_id": group.id, "labels": []},
        ).status_code
        == 422
    )


def test_jobs_go_only_to_matching_runners_in_visible_groups(
    gh: GitHubEmulator, receiver: Receiver
) -> None:
    token = _token(gh)
    gh.world.add_hook(receiver.url, "s3cret", org="acme")
    private = gh.world.add_runner_group(
        "acme", "ml", visibility="selected", repositories=("acme/models",)
    )
    jit = _post(
        gh,
        "/orgs/acme/actions/runners/generate-jitconfig",
        token,
        {"name": "ml-1", "runner_group_id": private.id, "labels": ["self-hosted", "Linux", "gpu"]},
    ).json()
    gh.world.start_runner(jit["encoded_jit_config"])
    elsewhere = gh.world.queue_job("acme", "acme/site", ["self-hosted", "gpu"], "alice")
    wrong_label = gh.world.queue_job("acme", "acme/models", ["self-hosted", "arm64"], "alice")
    match = gh.world.queue_job("acme", "acme/models", ["self-hosted", "linux", "GPU"], "bob")
    assert (elsewhere.status, wrong_label.status, match.status) == (
        "queued",
        "queued",
        "in_progress",
    )
    assert match.runner is not None and match.runner.name == "ml-1"
    gh.world.complete_job(match.id, "failure")
    gh.flush()
    assert receiver.events() == [
        ("ping", None),
        ("workflow_job", "queued"),
        ("workflow_job", "queued"),
        ("workflow_job", "queued"),
        ("workflow_job", "in_progress"),
        ("workflow_job", "completed"),
    ]
    completed = json.loads(receiver.received[-1][1])
    assert completed["workflow_job"]["conclusion"] == "failure"
    assert completed["workflow_job"]["runner_group_name"] == "ml"
    assert completed["sender"]["login"] == "bob"
    # Ephemeral: the runner is gone after its one job.
    assert _get(gh, "/orgs/acme/actions/runners", token).json()["total_count"] == 0


def test_deliveries_are_signed_with_github_headers(gh: GitHubEmulator, receiver: Receiver) -> None:
    gh.world.add_org("acme")
    gh.world.add_hook(receiver.url, "It's a Secret to Everybody", org="acme")
    gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.flush()
    headers, body = receiver.received[-1]
    expected = hmac.new(b"It's a Secret to Everybody", body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert headers["X-GitHub-Event"] == "workflow_job"
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["X-GitHub-Enterprise-Host"] == "ghe.example.com"
    assert headers["X-GitHub-Hook-Installation-Target-Type"] == "organization"
    assert len(headers["X-GitHub-Delivery"]) == 36


def test_redelivery_keeps_the_guid_and_is_listed(gh: GitHubEmulator, receiver: Receiver) -> None:
    token = _token(gh)
    hook = gh.world.add_hook(receiver.url, "s", org="acme")
    gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.flush()
    listed = _get(gh, f"/orgs/acme/hooks/{hook.id}/deliveries", token).json()
    queued = next(d for d in listed if d["action"] == "queued")
    assert queued["status_code"] == 202 and queued["redelivery"] is False
    again = _post(gh, f"/orgs/acme/hooks/{hook.id}/deliveries/{queued['id']}/attempts", token)
    assert again.status_code == 202
    gh.flush()
    first_guid = receiver.received[1][0]["X-GitHub-Delivery"]
    assert receiver.received[-1][0]["X-GitHub-Delivery"] == first_guid == queued["guid"]
    relisted = _get(gh, f"/orgs/acme/hooks/{hook.id}/deliveries", token).json()
    assert relisted[0]["redelivery"] is True
    gh.world.add_org("other")
    foreign = gh.world.add_hook(receiver.url, "s", org="other")
    assert (
        _post(
            gh, f"/orgs/acme/hooks/{foreign.id}/deliveries/{queued['id']}/attempts", token
        ).status_code
        == 404
    )


def test_a_failed_delivery_is_recorded_as_failed(gh: GitHubEmulator) -> None:
    gh.world.add_org("acme")
    gh.world.add_hook("http://127.0.0.1:9/nothing-listens", "s", org="acme")
    gh.flush()
    assert gh.world.deliveries[-1].status == "failed"


def test_oidc_tokens_verify_against_the_published_jwks(gh: GitHubEmulator) -> None:
    discovery = requests.get(f"{gh.oidc.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == f"{gh.url}/_services/token"
    keys = requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    token = requests.post(
        f"{gh.url}/_emulator/oidc/token",
        timeout=5,
        json={"repository": "acme/site", "audience": "sts.amazonaws.com", "environment": "prod"},
    ).json()["value"]
    key = jwt.PyJWK(keys[0]).key
    claims = jwt.decode(
        token, key, algorithms=["RS256"], audience="sts.amazonaws.com", issuer=discovery["issuer"]
    )
    assert claims["sub"] == "repo:acme/site:environment:prod"
    assert claims["repository_owner"] == "acme"
    assert claims["runner_environment"] == "self-hosted"


def test_cloud_owner_id_subjects(github_cloud: GitHubEmulator) -> None:
    from localenv.github.oidc import OidcIssuer

    issuer = OidcIssuer(github_cloud.oidc.issuer, owner_ids=True)
    claims = issuer.claims("acme/site", audience="x", repository_id=55, owner_id=7)
    assert claims["sub"] == "repo:acme@7/site@55:ref:refs/heads/main"


def test_cancelling_a_run_completes_its_jobs_as_cancelled(gh: GitHubEmulator) -> None:
    token = _token(gh)
    job = gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice", run_id=777)
    assert _post(gh, "/repos/acme/site/actions/runs/777/cancel", token).status_code == 202
    fetched = _get(gh, f"/repos/acme/site/actions/jobs/{job.id}", token).json()
    assert (fetched["status"], fetched["conclusion"]) == ("completed", "cancelled")


def _app_jwt(gh: GitHubEmulator, app_id: int = 5) -> str:
    key = gh.add_app(app_id)
    now = int(gh.now())
    return jwt.encode({"iss": str(app_id), "iat": now - 30, "exp": now + 540}, key, "RS256")


def test_dropped_deliveries_are_recorded_failed_not_sent(
    gh: GitHubEmulator, receiver: Receiver
) -> None:
    gh.world.add_org("acme")
    gh.world.add_hook(receiver.url, "s", org="acme")
    gh.flush()
    rule = gh.drop_webhooks(0.5, seed=4)
    for _ in range(20):
        gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.flush()
    dropped = gh.dropped_deliveries()
    assert rule.dropped == len(dropped) and 0 < len(dropped) < 20
    assert {(d.status_code, d.status) for d in dropped} == {(503, "Service Unavailable")}
    sent = {h["X-GitHub-Delivery"] for h, _ in receiver.received}
    assert not sent & {d.guid for d in dropped}  # none reached the receiver
    assert len(sent) == 21 - len(dropped)  # the ping, and every job not dropped
    # The same seed drops the same deliveries; a redelivery goes through by default.
    again = GitHubEmulator(kind="cloud").start()
    try:
        again.world.add_org("acme")
        again.drop_webhooks(0.5, seed=4)
        again.world.add_hook(receiver.url, "s", org="acme")
        for _ in range(20):
            again.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
        again.flush()
        assert len(again.dropped_deliveries()) == len(dropped)
    finally:
        again.stop()
    gh.world.redeliver(dropped[0].id, dropped[0].hook_id)
    gh.flush()
    assert receiver.received[-1][0]["X-GitHub-Delivery"] == dropped[0].guid
    gh.clear_faults()  # stops dropping too
    assert gh.drop_rule is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        gh.drop_webhooks(1.5)


def test_dropping_is_driven_over_http_by_action(gh: GitHubEmulator, receiver: Receiver) -> None:
    gh.world.add_org("acme")
    gh.world.add_hook(receiver.url, "s", org="acme")
    created = requests.post(
        f"{gh.url}/_emulator/webhooks/drop",
        json={"fraction": 1.0, "actions": ["queued"]},
        timeout=5,
    )
    assert created.status_code == 201
    job = gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.world.complete_job(job.id, "cancelled")
    gh.flush()
    listed = requests.get(f"{gh.url}/_emulator/webhooks/dropped", timeout=5).json()
    assert [(d["action"], d["status_code"]) for d in listed] == [("queued", 503)]
    assert receiver.events()[-1] == ("workflow_job", "completed")
    assert requests.delete(f"{gh.url}/_emulator/webhooks/drop", timeout=5).status_code == 204
    assert gh.drop_rule is None


def test_delivery_lists_page_by_cursor_and_answer_304_when_unchanged(
    gh: GitHubEmulator, receiver: Receiver
) -> None:
    token = _token(gh)
    hook = gh.world.add_hook(receiver.url, "s", org="acme")
    for _ in range(4):
        gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.flush()
    path = f"/orgs/acme/hooks/{hook.id}/deliveries?per_page=2"
    first = _get(gh, path, token)
    ids = [d["id"] for d in first.json()]
    assert len(ids) == 2 and ids == sorted(ids, reverse=True)  # newest first
    seen = list(ids)
    link, remaining = first.headers["Link"], 0
    while link:
        url = link.split(";")[0].strip("<>")
        assert "cursor=" in url
        page = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=5)
        seen += [d["id"] for d in page.json()]
        link, remaining = page.headers.get("Link", ""), int(page.headers["x-ratelimit-remaining"])
    assert len(seen) == 5 and len(set(seen)) == 5  # the ping and four queued, once each
    unchanged = _get(gh, path, token, **{"If-None-Match": first.headers["ETag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert int(unchanged.headers["x-ratelimit-remaining"]) == remaining  # free
    gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice")
    gh.flush()
    changed = _get(gh, path, token, **{"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.json()[0]["action"] == "queued"


def test_org_hooks_are_listed_and_app_redelivery_is_the_app_hooks_only(
    gh: GitHubEmulator, receiver: Receiver
) -> None:
    token = _token(gh)
    org_hook = gh.world.add_hook(receiver.url, "s", org="acme")
    gh.flush()
    hooks = _get(gh, "/orgs/acme/hooks", token).json()
    assert [(h["id"], h["config"]["url"], h["active"]) for h in hooks] == [
        (org_hook.id, receiver.url, True)
    ]
    app_jwt = _app_jwt(gh, 6)
    headers = {"Authorization": f"Bearer {app_jwt}"}
    assert (
        requests.get(f"{gh.api_url}/app/hook/deliveries", headers=headers, timeout=5).json() == []
    )
    ping = gh.world.deliveries[-1]  # the org hook's: not the App's to redeliver
    url = f"{gh.api_url}/app/hook/deliveries/{ping.id}/attempts"
    assert requests.post(url, headers=headers, timeout=5).status_code == 404
    app_hook = gh.world.add_hook(receiver.url, "s")
    gh.flush()
    listed = requests.get(f"{gh.api_url}/app/hook/deliveries", headers=headers, timeout=5).json()
    assert [d["event"] for d in listed] == ["ping"] and app_hook.id not in gh.world.hook_orgs
    url = f"{gh.api_url}/app/hook/deliveries/{listed[0]['id']}/attempts"
    assert requests.post(url, headers=headers, timeout=5).status_code == 202
    # An installation token is not the App: the App endpoints refuse it.
    refused = _get(gh, "/app/hook/deliveries", token)
    assert refused.status_code == 403


def test_queued_runs_and_their_jobs_are_listed(gh: GitHubEmulator) -> None:
    token = _token(gh)
    gh.world.add_repository("acme/empty")
    one = gh.world.queue_job("acme", "acme/site", ["self-hosted"], "alice", run_id=77)
    two = gh.world.queue_job("acme", "acme/site", ["self-hosted", "gpu"], "alice", run_id=77)
    gh.world.queue_job("acme", "acme/docs", ["self-hosted"], "bob", run_id=78)
    runs = _get(gh, "/repos/acme/site/actions/runs?status=queued", token).json()
    assert [
        (r["id"], r["status"], r["triggering_actor"]["login"]) for r in runs["workflow_runs"]
    ] == [(77, "queued", "alice")]
    jobs = _get(gh, "/repos/acme/site/actions/runs/77/jobs?filter=latest", token).json()["jobs"]
    assert [(j["id"], j["status"], j["labels"]) for j in jobs] == [
        (one.id, "queued", ["self-hosted"]),
        (two.id, "queued", ["self-hosted", "gpu"]),
    ]
    gh.world.complete_job(one.id, "success")  # one job ended, one still queued
    assert _get(gh, "/repos/acme/site/actions/runs?status=queued", token).json()["total_count"] == 0
    running = _get(gh, "/repos/acme/site/actions/runs?status=in_progress", token).json()
    assert [r["id"] for r in running["workflow_runs"]] == [77]
    assert _get(gh, "/repos/acme/site/actions/runs/78/jobs", token).status_code == 404
    assert _get(gh, "/repos/acme/site/actions/runs?status=waiting", token).status_code == 422
    repos = _get(gh, "/installation/repositories?per_page=2", token)
    assert [r["full_name"] for r in repos.json()["repositories"]] == ["acme/docs", "acme/empty"]
    assert repos.json()["total_count"] == 3 and 'rel="next"' in repos.headers["Link"]
