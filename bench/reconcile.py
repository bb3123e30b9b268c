"""The lost-webhook reconciler: how long a job whose ``queued`` webhook was lost waits for
its runner (part of ``make bench-faults``).

Real ``python -m controller serve``, ``listen`` and ``provision`` processes against
etcd + kube-apiserver, a real Redis and the GitHub emulators (bench/provision_env.py).
The emulator records every ``queued`` delivery as failed (503) instead of sending it;
each sample queues one job at a random moment of the reconciler's cycle and times it
from ``queue_job`` to its runner's JIT registration in the emulator (the provisioner
creates the pod right after). Two ways back, each measured:

- ``redelivery``: the reconciler lists the hook's failed deliveries and redelivers them;
- ``comparison``: redelivery refused (GitHub keeps failed deliveries 3 days), so only the
  comparison of GitHub's queued jobs with Redis finds the job, once it is older than the
  grace period.

``measure()`` returns the figures; ``python -m bench.reconcile`` prints them as JSON and
keeps them in bench/results/reconcile.json.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.provision_env import Env, spec_document  # noqa: E402
from bench.results_file import save  # noqa: E402
from localenv.process import ManagedProcess, free_port, wait_for  # noqa: E402

INTERVAL = 5  # RUNNER_PLATFORM_RECONCILE_SECONDS the bench runs with
GRACE = 5  # RUNNER_PLATFORM_RECONCILE_GRACE
SAMPLES = 8  # jobs per way back
ORG, REPO, LABELS, SENDER = "acme-corp", "acme-corp/storefront", ["self-hosted", "nvme"], "alice"
HOOK_SECRET = "x"  # what provision_env writes as every instance's webhook secret


def _controller(env: Env, command: str, port: int) -> ManagedProcess:
    settings = {
        "RUNNER_PLATFORM_SPEC": str(env.workdir / "spec.json"),
        "RUNNER_PLATFORM_RUNTIME": str(env.workdir / "runtime.json"),
        "RUNNER_PLATFORM_SECRETS_DIR": str(env.workdir / "secrets"),
        "RUNNER_PLATFORM_REDIS_URL": env.redis.url,
        "RUNNER_PLATFORM_HOST": "127.0.0.1",
        "RUNNER_PLATFORM_PORT": str(port),
        # The hooks registered below point here: the reconciler redelivers only those.
        "RUNNER_PLATFORM_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RUNNER_PLATFORM_GITHUB_API_URLS": ",".join(
            f"{name}={emulator.api_url}" for name, emulator in env.emulators.items()
        ),
        "RUNNER_PLATFORM_RECONCILE_SECONDS": str(INTERVAL),
        "RUNNER_PLATFORM_RECONCILE_GRACE": str(GRACE),
        "RUNNER_PLATFORM_LOG_LEVEL": "INFO",
    }
    return ManagedProcess(
        command,
        [sys.executable, "-m", "controller", command],
        env.workdir / "logs",
        env=settings,
        cwd=ROOT,
    ).start()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _registrations(env: Env) -> int:
    return sum(
        1 for r in env.emulators["cloud"].world.org_runners(ORG) if r.name.startswith("web-")
    )


def _sample(env: Env, rng: random.Random) -> float:
    """One dropped job: queued → its runner registered."""
    time.sleep(rng.uniform(0, INTERVAL))  # a random moment of the reconciler's cycle
    before = _registrations(env)
    queued = time.monotonic()
    env.emulators["cloud"].world.queue_job(ORG, REPO, LABELS, SENDER)
    wait_for(lambda: _registrations(env) > before, 120, "the dropped job's runner", interval=0.02)
    return time.monotonic() - queued


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


def measure() -> dict[str, float]:
    """Seconds from a dropped job's queuing to its runner, by the reconciler's two ways."""
    env = Env.start(spec_document())
    processes: list[ManagedProcess] = []
    try:
        port = free_port()
        env.start_provisioner(RUNNER_PLATFORM_RESYNC="1")
        env.wait_provisioner_synced()
        processes = [_controller(env, "serve", port), _controller(env, "listen", port)]
        wait_for(lambda: _ready(port), 30, "serve's /readyz")
        cloud = env.emulators["cloud"]
        world = cloud.world
        team = next(t for t in env.spec.teams if t.name == "web")
        world.add_team(ORG, team.github_teams[0])
        world.set_membership(ORG, team.github_teams[0], SENDER)
        world.add_hook(f"http://127.0.0.1:{port}/webhooks/github/cloud", HOOK_SECRET, org=ORG)
        cloud.flush()
        rng = random.Random(7)
        cloud.drop_webhooks(1.0, actions=("queued",))
        redelivery = [_sample(env, rng) for _ in range(SAMPLES)]
        cloud.fail("org_redeliver|app_redeliver", 422)
        comparison = [_sample(env, rng) for _ in range(SAMPLES)]
        by_redelivery, by_comparison = _summary(redelivery), _summary(comparison)
        return {
            "reconciler_serve_dropped_job_s": by_redelivery["p50"],
            "reconciler_serve_dropped_job_max_s": by_redelivery["max"],
            "reconciler_serve_dropped_job_by_comparison_s": by_comparison["p50"],
            "reconciler_serve_dropped_job_by_comparison_max_s": by_comparison["max"],
            "reconcile_interval_s": float(INTERVAL),
            "reconcile_grace_s": float(GRACE),
            "samples_each": float(SAMPLES),
        }
    finally:
        for process in processes:
            process.stop()
        env.stop()


def main() -> int:
    started = time.monotonic()
    figures: dict[str, Any] = dict(measure())
    figures["command"] = "python -m bench.reconcile"
    figures["total_seconds"] = round(time.monotonic() - started)
    save("reconcile", figures)  # printed, and kept in bench/results/reconcile.json
    return 0


if __name__ == "__main__":
    sys.exit(main())
