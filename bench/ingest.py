"""``make bench-ingest``: durable webhook deliveries per second on one core, and latency.

One ``python -m controller serve`` process pinned to CPU 0 stores into a real Redis; a
load generator in its own process (CPU 1, beside Redis) sends signed ``workflow_job``
deliveries over loopback keep-alive connections. Two phases:

1. closed loop, many connections: accepted deliveries per second, p50/p99 latency;
2. open loop at a fixed 2,000/s: p50/p99 measured from each request's scheduled time,
   so a stall is charged to every request it delays (no coordinated omission).

Every accepted delivery must be in a stream afterwards (checked). Figures are printed and
saved to bench/results/ingest.json; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import save  # noqa: E402
from controller.ingest import signatures  # noqa: E402
from controller.model import load_spec  # noqa: E402
from localenv.process import free_port  # noqa: E402
from localenv.services import Redis  # noqa: E402

SECRET = b"bench-secret"


def _spec_document() -> dict[str, Any]:
    import yaml

    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("runner-platform:")}


def _requests(count: int, port: int, first_id: int = 1) -> list[bytes]:
    """Pre-signed HTTP/1.1 requests, each a distinct job (so each is really stored)."""
    out = []
    for job_id in range(first_id, first_id + count):
        body = json.dumps(
            {
                "action": "queued",
                "workflow_job": {
                    "id": job_id,
                    "run_id": job_id,
                    "labels": ["self-hosted", "linux"],
                    "status": "queued",
                    "runner_group_name": None,
                },
                "repository": {"full_name": "acme-corp/storefront"},
                "organization": {"login": "acme-corp"},
                "sender": {"login": "alice"},
            }
        ).encode()
        head = (
            f"POST /webhooks/github/cloud HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
            f"X-Hub-Signature-256: {signatures.sign(SECRET, body)}\r\n"
            "User-Agent: GitHub-Hookshot/bench\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _closed_loop(port: int, requests: list[bytes], connections: int) -> dict[str, Any]:
    queue = iter(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in queue:
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return _summary(latencies, statuses, elapsed)


async def _open_loop(
    port: int, requests: list[bytes], rate: int, connections: int
) -> dict[str, Any]:
    interval = 1.0 / rate
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + 0.2
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one(index: int, request: bytes) -> None:
        scheduled = start + index * interval
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        reader, writer = await pool.get()
        status = await _exchange(reader, writer, request)
        pool.put_nowait((reader, writer))
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    elapsed = time.perf_counter() - began
    while not pool.empty():
        pool.get_nowait()[1].close()
    return _summary(latencies, statuses, elapsed)


def _summary(latencies: list[float], statuses: dict[int, int], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    accepted = statuses.get(202, 0)
    return {
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": round(elapsed, 3),
        "accepted_per_second": round(accepted / elapsed, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _generator(
    port: int, phase: str, count: int, rate: int, connections: int, first_id: int, out: Any
) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    requests = _requests(count, port, first_id)
    if phase == "throughput":
        result = asyncio.run(_closed_loop(port, requests, connections))
    else:
        result = asyncio.run(_open_loop(port, requests, rate, connections))
    out.put(result)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_phase(
    port: int, phase: str, count: int, rate: int, connections: int, first_id: int
) -> dict[str, Any]:
    out: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=_generator, args=(port, phase, count, rate, connections, first_id, out)
    )
    process.start()
    result = out.get(timeout=600)
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60_000, help="deliveries, throughput phase")
    parser.add_argument("--rate", type=int, default=2000, help="deliveries/s, latency phase")
    parser.add_argument("--seconds", type=int, default=10, help="length of the latency phase")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    document = _spec_document()
    load_spec(document)
    (work / "spec.json").write_text(json.dumps(document))
    for instance in document["github_instances"]:
        refs = [instance["webhook_secret"], *(app["private_key"] for app in instance["apps"])]
        for ref in refs:  # App keys are read at start, not used by ingest
            (work / "secrets" / ref["name"]).mkdir(parents=True, exist_ok=True)
            (work / "secrets" / ref["name"] / ref["key"]).write_bytes(SECRET)
    redis = Redis().start()
    port = free_port()
    env = {
        **os.environ,
        "RUNNER_PLATFORM_SPEC": str(work / "spec.json"),
        "RUNNER_PLATFORM_SECRETS_DIR": str(work / "secrets"),
        "RUNNER_PLATFORM_RUNTIME": "",
        "RUNNER_PLATFORM_REDIS_URL": redis.url,
        "RUNNER_PLATFORM_HOST": "127.0.0.1",
        "RUNNER_PLATFORM_PORT": str(port),
        "RUNNER_PLATFORM_LOG_LEVEL": "WARNING",
        # No listener takes jobs here: the backlog bound would turn stores into 503s.
        "RUNNER_PLATFORM_QUEUE_BOUND": str(10 * (args.count + args.rate * args.seconds)),
    }
    cpu0 = ["taskset", "-c", "0"] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]
    subprocess.run(
        ["taskset", "-cp", "1", str(redis.process.popen.pid)],  # type: ignore[union-attr]
        capture_output=True,
        check=False,
    )
    server = subprocess.Popen(
        [*cpu0, sys.executable, "-m", "controller", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("bench: the controller did not become ready")
            time.sleep(0.2)
        cpu_before = _cpu_seconds(server.pid)
        throughput = _run_phase(port, "throughput", args.count, 0, args.connections, 1)
        server_cpu = _cpu_seconds(server.pid) - cpu_before
        # Includes the phase's set-up (signing requests) time in the denominator: a floor.
        throughput["server_cpu_busy_fraction"] = round(server_cpu / throughput["seconds"], 3)
        throughput["server_cpu_us_per_delivery"] = round(server_cpu / args.count * 1e6, 1)
        # Fresh job ids: a repeated (job, action) would be a duplicate, not a stored entry.
        latency = _run_phase(
            port, "latency", args.rate * args.seconds, args.rate, 32, args.count + 1
        )
        import redis as redis_sync

        stored = redis_sync.Redis.from_url(redis.url).xlen("rp:queue:web-warm")
    finally:
        server.terminate()
        server.wait(timeout=10)
        redis.stop()
    accepted = throughput["statuses"].get("202", 0) + latency["statuses"].get("202", 0)
    result = {
        "benchmark": "ingest",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "server_cpu": 0 if cpu0 else None},
        "throughput": throughput,
        "latency_at_fixed_rate": {"rate_per_second": args.rate, **latency},
        "durability_check": {
            "accepted": accepted,
            "in_stream": stored,
            "all_stored": accepted <= stored,
        },
        "targets": {
            "accepted_per_second": ">= 5000 on one core",
            "p99_ms_at_2000_per_second": "<= 20",
        },
    }
    save("ingest", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
