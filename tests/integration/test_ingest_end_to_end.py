"""End to end: the emulator sends real signed deliveries to the running router; the
listener verifies them against the emulator; ``python -m controller`` starts and reads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import redis as redis_sync
import redis.asyncio as aioredis

from controller.audit import AuditLog
from controller.github_client import AppCredentials, GitHubClient
from controller.ingest.app import WebhookApp
from controller.streams import decode_entry, queue_key, ready_key
from controller.teams.listener import Listener
from controller.teams.verifier import TeamVerifier
from localenv.asgi_server import ThreadedServer
from localenv.github import GitHubEmulator
from localenv.process import free_port, wait_for
from localenv.services import Redis
from tests.conftest import ROOT
from tests.integration.router_support import SECRETS, dev_spec


def test_emulator_deliveries_flow_to_verified_jobs(redis_server: Redis) -> None:
    sync = redis_sync.Redis.from_url(redis_server.url)
    sync.flushdb()
    spec = dev_spec()
    cloud = GitHubEmulator(kind="cloud").start()
    ghes = GitHubEmulator(kind="ghes", host="github.acme.internal").start()
    app = WebhookApp(spec, SECRETS, aioredis.Redis.from_url(redis_server.url))
    router = ThreadedServer(app).start()
    try:
        cloud.world.add_org("acme-corp")
        ghes.world.add_org("research")
        cloud.world.add_hook(
            f"{router.url}/webhooks/github/cloud", SECRETS["cloud"].decode(), org="acme-corp"
        )
        ghes.world.add_hook(
            f"{router.url}/webhooks/github/ghes", SECRETS["ghes"].decode(), org="research"
        )
        cloud.world.queue_job(
            "acme-corp", "acme-corp/storefront", ["self-hosted", "linux"], "alice"
        )
        ghes.world.queue_job("research", "research/models", ["self-hosted", "gpu"], "rob")
        ghes.world.queue_job("research", "research/models", ["self-hosted", "gpu"], "eve")
        cloud.flush()
        ghes.flush()
        assert [d.status_code for d in cloud.world.deliveries] == [200, 202]  # ping, queued
        assert all(d.status_code in (200, 202) for d in ghes.world.deliveries)
        assert sync.xlen(queue_key("web-warm")) == 1
        assert sync.xlen(queue_key("ml-gpu")) == 2

        key = ghes.add_app(12)
        ghes.add_installation(12, "research", installation_id=4)
        ghes.world.add_team("research", "ml-research")
        ghes.world.set_membership("research", "ml-research", "rob")

        async def listen() -> None:
            redis = aioredis.Redis.from_url(redis_server.url)
            client = GitHubClient(
                spec.instance("ghes"),
                [AppCredentials(12, key.encode(), {"research": 4})],
                api_url=ghes.api_url,
            )
            verifier = TeamVerifier(spec, redis, {"ghes": client})
            scale_set = next(s for s in spec.scale_sets() if s.name == "ml-gpu")
            listener = Listener(scale_set, redis, verifier, AuditLog(redis), consumer="e2e")
            await listener.ensure_group()
            await listener.process_once()
            await client.aclose()
            await redis.aclose()

        asyncio.run(listen())
        ready = [decode_entry(f)["sender"] for _, f in sync.xrange(ready_key("ml-gpu"))]
        assert ready == ["rob"]  # eve is no member of ml-platform or ml-research
    finally:
        router.stop()
        cloud.stop()
        ghes.stop()


def _write_secrets(directory: Path) -> None:
    for name, key, value in [
        ("github-cloud-webhook", "secret", "cloud-secret"),
        ("github-ghes-webhook", "secret", "ghes-secret"),
        ("github-cloud-app", "private-key.pem", "unused"),
        ("github-ghes-app", "private-key.pem", "unused"),
    ]:
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / key).write_text(value)


def test_serve_starts_from_the_spec_and_refuses_a_bad_one(
    redis_server: Redis, tmp_path: Path
) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(dev_spec().model_dump_json())
    _write_secrets(tmp_path / "secrets")
    port = free_port()
    env = {
        **os.environ,
        "RUNNER_PLATFORM_SPEC": str(spec_path),
        "RUNNER_PLATFORM_SECRETS_DIR": str(tmp_path / "secrets"),
        "RUNNER_PLATFORM_REDIS_URL": redis_server.url,
        "RUNNER_PLATFORM_HOST": "127.0.0.1",
        "RUNNER_PLATFORM_PORT": str(port),
        "RUNNER_PLATFORM_RUNTIME": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "controller", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: _ready(port), 30, "controller /readyz")
    finally:
        server.terminate()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()

    document = json.loads(spec_path.read_text())
    document["teams"][2]["pools"] = ["gpuu"]
    spec_path.write_text(json.dumps(document))
    refused = subprocess.run(
        [sys.executable, "-m", "controller", "serve"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "teams[2].pools[0]: unknown pool 'gpuu'" in refused.stderr


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_audit_cli_filters_by_team_user_repo_and_time(redis_server: Redis) -> None:
    sync = redis_sync.Redis.from_url(redis_server.url)
    sync.flushdb()

    async def write() -> None:
        from controller.audit import AuditRecord

        redis = aioredis.Redis.from_url(redis_server.url)
        log = AuditLog(redis)
        await log.record(
            AuditRecord(
                "allowed",
                repo="research/models",
                requester="rob",
                scale_set="ml-gpu",
                team="ml",
                job_id=1,
                time=1000.0,
            )
        )
        await log.record(
            AuditRecord(
                "denied",
                repo="research/models",
                requester="eve",
                scale_set="ml-gpu",
                team="ml",
                job_id=2,
            )
        )
        await log.record(
            AuditRecord(
                "accepted",
                repo="acme-corp/storefront",
                requester="alice",
                scale_set="web-warm",
                team="web",
                job_id=3,
            )
        )
        await redis.aclose()

    asyncio.run(write())

    def audit(*args: str) -> list[dict[str, object]]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "controller",
                "audit",
                "--json",
                "--redis-url",
                redis_server.url,
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=True,
        )
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert [r["job_id"] for r in audit("--team", "ml")] == [2, 1]
    assert [r["job_id"] for r in audit("--user", "ALICE")] == [3]
    assert [r["job_id"] for r in audit("--repo", "research/models", "--decision", "denied")] == [2]
    assert len(audit("--since", "2000-01-01T00:00")) == 3
    assert audit("--until", "2000-01-01T00:00") == []
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "audit",
            "--redis-url",
            redis_server.url,
            "--limit",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    ).stdout
    assert "accepted" in text and "web-warm" in text
