"""``make bench-faults``: how fast the platform recovers, measured on real processes.

* **Lease failover**: two ``provision`` replicas share the scale sets; the one holding
  web's is SIGKILLed; seconds until the other holds them, and until a job queued for web
  right after the kill has its runner pod.
* **Redis restart**: Redis (AOF, as the fault tests run it) is stopped and started
  again under a running provisioner; seconds from Redis answering again to a pod for a
  job queued then.
* **Reconciler** (``bench/reconcile.py``): seconds from a job whose webhook was dropped
  to its runner.
* **Fair share** (``bench/fair_share.py``): seconds until two teams bursting into one
  full pool hold runners in the ratio of their weights.

Figures go to bench/results/faults.json, with the command that produced them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.provision_env import Env, ready_entry, spec_document  # noqa: E402
from bench.results_file import RESULTS, save  # noqa: E402
from controller.provision.leader import KIND_LABEL, SCALE_SET_ANNOTATION  # noqa: E402
from controller.streams import ready_key  # noqa: E402

WEB = ("acme-corp", "acme-corp/storefront", "alice", ["self-hosted", "linux"])
SETTINGS = {"RUNNER_PLATFORM_IDLE_GRACE": "3600", "RUNNER_PLATFORM_RESYNC": "5"}


async def _holders(env: Env) -> dict[str, str]:
    kube = env.kube()
    try:
        reply = await kube.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/{env.spec.controller.namespace}/leases",
            params={"labelSelector": f"{KIND_LABEL}=scale-set"},
            resource="leases",
        )
    finally:
        await kube.aclose()
    return {
        item["metadata"].get("annotations", {}).get(SCALE_SET_ANNOTATION, ""): str(
            item["spec"].get("holderIdentity") or ""
        )
        for item in reply.get("items", [])
    }


async def _web_pods(env: Env) -> int:
    kube = env.kube()
    try:
        pods, _ = await kube.list("runners-web", "pods", "runner-platform.io/scale-set")
    finally:
        await kube.aclose()
    return len(pods)


def _until(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        time.sleep(0.1)
    return time.monotonic() - started


async def _queue(env: Env, job_id: int) -> None:
    redis = aioredis.Redis.from_url(env.redis.url)
    org, repo, sender, labels = WEB
    await redis.xadd(ready_key("web-warm"), {"j": ready_entry(job_id, org, repo, sender, labels)})
    await redis.aclose()


def failover(runs: int, lease_seconds: int, renew_seconds: int) -> dict[str, Any]:
    env = Env.start(spec_document())
    lease = {
        "RUNNER_PLATFORM_LEASE_SECONDS": str(lease_seconds),
        "RUNNER_PLATFORM_LEASE_RENEW": str(renew_seconds),
    }
    takeovers: list[float] = []
    served: list[float] = []
    try:
        first = env.start_provisioner(**SETTINGS, **lease)
        env.wait_provisioner_synced()
        job = 1
        for _ in range(runs):
            second = env.start_provisioner_replica(**SETTINGS, **lease)
            pids = {str(first.popen.pid), str(second.popen.pid)}  # type: ignore[union-attr]

            def split(want: set[str] = pids) -> bool:
                holders = asyncio.run(_holders(env))
                return {h.rsplit("-", 1)[-1] for h in holders.values()} == want

            _until(split, 120, "the scale sets spread over two replicas")
            holders = asyncio.run(_holders(env))
            victim, survivor = (
                (first, second)
                if holders["web-warm"].endswith(f"-{first.popen.pid}")  # type: ignore[union-attr]
                else (second, first)
            )
            before = asyncio.run(_web_pods(env))
            os.killpg(victim.popen.pid, signal.SIGKILL)  # type: ignore[union-attr]
            killed = time.monotonic()
            asyncio.run(_queue(env, job))
            job += 1
            survivor_pid = str(survivor.popen.pid)  # type: ignore[union-attr]
            _until(
                lambda p=survivor_pid: (
                    asyncio.run(_holders(env)).get("web-warm", "").endswith(f"-{p}")
                ),
                120,
                "web's Lease taken over",
            )
            takeovers.append(time.monotonic() - killed)
            _until(lambda b=before: asyncio.run(_web_pods(env)) > b, 120, "the job served")
            served.append(time.monotonic() - killed)
            first = survivor
    finally:
        env.stop()
    return {
        "runs": runs,
        "lease_seconds": lease_seconds,
        "renew_seconds": renew_seconds,
        "takeover_seconds": _spread(takeovers),
        "job_served_after_kill_seconds": _spread(served),
    }


def redis_restart(runs: int) -> dict[str, Any]:
    env = Env.start(spec_document())
    recoveries: list[float] = []
    try:
        # As the fault tests and a replicated ElastiCache: the data survives the restart
        # (AOF, appendfsync everysec, a clean stop writes it out).
        env.redis.stop_process()
        env.redis.appendonly = True
        env.redis.start()
        env.start_provisioner(**SETTINGS)
        env.wait_provisioner_synced()
        for job in range(1, runs + 1):
            before = asyncio.run(_web_pods(env))
            env.redis.stop_process()
            time.sleep(3)
            env.redis.start()
            back = time.monotonic()
            asyncio.run(_queue(env, 1000 + job))
            try:
                _until(lambda b=before: asyncio.run(_web_pods(env)) > b, 120, "served after Redis")
            except TimeoutError:
                log = env.provisioner_log()
                raise TimeoutError(f"no pod after Redis came back:\n{log}") from None
            recoveries.append(time.monotonic() - back)
    finally:
        env.stop()
    return {
        "runs": runs,
        "redis": "AOF (appendfsync everysec), stopped with SIGTERM, started 3 s later",
        "seconds_from_redis_back_to_pod": _spread(recoveries),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only", choices=["failover", "redis", "reconcile", "fair-share"], action="append"
    )
    args = parser.parse_args(argv)
    wanted = args.only or ["failover", "redis", "reconcile", "fair-share"]
    result: dict[str, Any] = {"command": "make bench-faults", "runs": args.runs}
    began = time.monotonic()
    if "failover" in wanted:
        result["lease_failover"] = failover(args.runs, 15, 3)
    if "redis" in wanted:
        result["redis_restart"] = redis_restart(args.runs)
    if "reconcile" in wanted:
        from bench import reconcile

        result["reconciler"] = reconcile.measure()
    if "fair-share" in wanted:
        from bench import fair_share

        result["fair_share"] = fair_share.measure()
    result["total_seconds"] = round(time.monotonic() - began)
    earlier = RESULTS / "faults.json"
    if args.only and earlier.exists():  # a partial run keeps the other figures
        result = {**json.loads(earlier.read_text()), **result, "partial_run": wanted}
    save("faults", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
