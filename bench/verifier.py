"""``make bench-verifier``: Team Verifier cache-hit latency and GitHub API cost.

Against the GitHub emulator (GHES, rate limits on) and a real Redis: 1,000 jobs from 50
users in 5 GitHub teams (each user active in one team; the scale set allows all five,
checked in order). Reports API calls per 1,000 jobs cold, then after the TTLs passed (a
304 to a conditional request costs no primary budget), and the latency of a cached
verdict. Printed and saved to bench/results/verifier.json; nothing asserts a speed.
"""

from __future__ import annotations

import asyncio
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
import yaml  # noqa: E402

from bench.results_file import save  # noqa: E402
from controller.github_client import AppCredentials, GitHubClient  # noqa: E402
from controller.model import load_spec  # noqa: E402
from controller.teams.verifier import TeamVerifier  # noqa: E402
from localenv.github import GitHubEmulator  # noqa: E402
from localenv.services import Redis  # noqa: E402

TEAMS = [f"team-{i}" for i in range(5)]
USERS = [f"user-{i}" for i in range(50)]
ORG = "research"


def _spec() -> Any:
    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    document = {
        k.split(":", 1)[1]: copy.deepcopy(v)
        for k, v in config.items()
        if k.startswith("runner-platform:")
    }
    ml = next(t for t in document["teams"] if t["name"] == "ml")
    ml["github_teams"] = TEAMS
    return load_spec(document)


def _calls(emulator: GitHubEmulator) -> int:
    return sum(1 for _, path in emulator.requests if "/memberships/" in path)


async def _budget_used(client: GitHubClient) -> int:
    reply = await client.request("GET", "/rate_limit", org=ORG, endpoint="rate_limit")
    return int(reply.body["rate"]["used"])


async def run() -> dict[str, Any]:
    spec = _spec()
    scale_set = next(s for s in spec.scale_sets() if s.name == "ml-gpu")
    redis_server = Redis().start()
    emulator = GitHubEmulator(kind="ghes", host="github.acme.internal").start()
    try:
        key = emulator.add_app(12)
        emulator.add_installation(12, ORG, installation_id=4)
        for team in TEAMS:
            emulator.world.add_team(ORG, team)
        for index, user in enumerate(USERS):
            emulator.world.set_membership(ORG, TEAMS[index % len(TEAMS)], user)
        emulator.enable_rate_limits(primary=100_000, secondary_points=None)
        redis = aioredis.Redis.from_url(redis_server.url)
        client = GitHubClient(
            spec.instance("ghes"),
            [AppCredentials(12, key.encode(), {ORG: 4})],
            api_url=emulator.api_url,
            clock=emulator.now,
        )
        verifier = TeamVerifier(spec, redis, {"ghes": client}, clock=emulator.now)
        rng = random.Random(7)
        jobs = [rng.choice(USERS) for _ in range(1000)]

        async def phase() -> dict[str, Any]:
            calls, used = _calls(emulator), await _budget_used(client)
            started = time.perf_counter()
            verdicts = [await verifier.verify(scale_set, user) for user in jobs]
            return {
                "seconds": round(time.perf_counter() - started, 3),
                "allowed": sum(v.decision == "allowed" for v in verdicts),
                "api_calls": _calls(emulator) - calls,
                "primary_budget_used": await _budget_used(client) - used,
            }

        pairs = {
            (user, TEAMS[i])
            for user in set(jobs)
            for i in range(USERS.index(user) % len(TEAMS) + 1)
        }
        cold = await phase()
        warm = await phase()
        emulator.advance(301)  # every answer (positive 300 s, negative 60 s) has expired
        expired = await phase()

        samples = []
        for user in jobs * 5:
            started = time.perf_counter()
            await verifier.verify(scale_set, user)
            samples.append(time.perf_counter() - started)
        samples.sort()
        await client.aclose()
        await redis.aclose()
    finally:
        emulator.stop()
        redis_server.stop()
    return {
        "benchmark": "verifier",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jobs": len(jobs),
        "users": len(USERS),
        "github_teams": len(TEAMS),
        "distinct_user_team_pairs_checked": len(pairs),
        "cold": cold,
        "all_cached": warm,
        "after_ttl_expiry": {
            **expired,
            "note": "active answers revalidate with ETags (304, "
            "no budget); 404 answers carry no ETag and are asked again",
        },
        "cache_hit_latency_us": {
            "p50": round(samples[len(samples) // 2] * 1e6, 1),
            "p99": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        },
        "targets": {"api_calls": "one per (user, team) per TTL", "304_cost": "zero primary budget"},
    }


def main() -> int:
    save("verifier", asyncio.run(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
