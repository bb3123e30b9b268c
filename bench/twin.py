"""``make bench-twin``: scenarios of the ``make local`` digital twin compared (issue 11).

* **Warm pool on vs off** (``twin-warm.json``, ``twin-warm.png``, and each run's own
  chart ``twin-warm-on.png``/``twin-warm-off.png``): the built-in scenario's morning ramp
  (web's jobs on the warm pool, ever closer together, and infra's deploys on it), run with
  the dev stack's warm placeholders and ``min_idle``, then with ``--no-warm`` (no
  placeholders, every ``min_idle`` 0): what warm start buys in queue time and pod start.
* **1,000 jobs over 60 s across three teams** (``twin-1000.json``, ``twin-1000.png``):
  web and infra on the warm pool, ml on its isolated pool; every job served (counted from
  the report), queue-time percentiles, the controller's own overhead (queued → pod
  created, the provisioner's ``runner_platform_pod_created_seconds`` histogram) and the
  node count against the bin-packing minimum (ceil of runners / ``max_runners_per_node``
  per pool). Should the twin not serve every job within the time allowed, the run is
  repeated once at the rate it did sustain, and the JSON says so (``scaled_down_because``).

Each scenario is one ``python -m localenv.local`` run (``localenv.local.main``, in this
process); the figures come from its report. The JSON files hold the command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.results_file import RESULTS  # noqa: E402
from controller.quantity import parse_quantity  # noqa: E402
from localenv import local, local_report, workload  # noqa: E402

WEB = ["self-hosted", "linux", "web"]
DEPLOY = ["self-hosted", "linux", "deploy"]
ML = ["self-hosted", "linux", "ml-isolated"]
SPAN = 60.0  # seconds of arrivals in the 1,000-job scenario
SHARES = {"web": 0.5, "ml": 0.3, "infra": 0.2}  # of the 1,000 jobs
JOB_SECONDS = 3  # each job's duration once a runner has it
BUDGET = 600.0  # seconds the 1,000-job replay may take past its last arrival, at most


def warm_document() -> dict[str, Any]:
    """The built-in scenario's morning ramp: web's storefront jobs on the warm pool (one
    every 8 s, then 4 s, then 2 s) and infra's deploys, which share that pool."""
    document = workload.default_document()
    jobs = [
        job
        for job in document["jobs"]
        if (job["repo"] == "acme-corp/storefront" and job["labels"] == WEB)
        or (job["labels"] == DEPLOY and job["requester"] == "sam")
    ]
    return {"members": document["members"], "jobs": jobs}


def burst_document(total: int) -> dict[str, Any]:
    """``total`` jobs evenly spread over 60 s: half web's, 30 % ml's, 20 % infra's."""
    counts = {team: int(total * share) for team, share in SHARES.items()}
    counts["web"] += total - sum(counts.values())
    entries = [
        ("web", "acme-corp/storefront", WEB, "alice"),
        ("ml", "research/models", ML, "rob"),
        ("infra", "platform/deploy", DEPLOY, "sam"),
    ]
    jobs = []
    for team, repo, labels, who in entries:
        n = counts[team]
        jobs.append(
            {
                "team": team,
                "repo": repo,
                "labels": labels,
                "requester": who,
                "at": 0,
                "duration": JOB_SECONDS,
                "count": n,
                "every": round(SPAN / n, 4),
            }
        )
    return {"members": {k: list(v) for k, v in workload.DEFAULT_MEMBERS.items()}, "jobs": jobs}


def run_local(
    name: str, document: dict[str, Any], extra: list[str]
) -> tuple[int, dict[str, Any], Path, list[str]]:
    """One ``python -m localenv.local`` run on ``document``; its report and chart."""
    folder = Path(tempfile.mkdtemp(prefix=f"twin-{name}-"))
    workload_file = folder / f"twin-{name}.yaml"
    workload_file.write_text(yaml.safe_dump(document, sort_keys=False))
    argv = ["--workload", str(workload_file), "--out", str(folder), *extra]
    print(f"\n== {name}: python -m localenv.local {' '.join(argv)}", file=sys.stderr, flush=True)
    code = local.main(argv)
    report_path = folder / "local-run.json"
    if not report_path.exists():
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"twin {name}: the local run ended {code} without a report")
    report = json.loads(report_path.read_text())
    return code, report, folder, argv


def _member_jobs(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [j for j in report["jobs_detail"] if j["member"]]


def _latencies(report: dict[str, Any]) -> dict[str, Any]:
    jobs = _member_jobs(report)
    queue = [j["started_at"] - j["queued_at"] for j in jobs if j["started_at"] is not None]
    start = [
        max(j["pod_running_at"] - j["queued_at"], 0.0)
        for j in jobs
        if j["pod_running_at"] is not None
    ]
    # The Ready condition has whole seconds: a pod Ready a full second before the job was
    # queued was certainly waiting for it (a warm runner).
    pre_started = sum(
        1
        for j in jobs
        if j["pod_running_at"] is not None and j["pod_running_at"] + 1 <= j["queued_at"]
    )
    return {
        "queue_time_s": local_report.percentiles(queue),
        "pod_start_s": local_report.percentiles(start),
        "queue_time_mean_s": round(sum(queue) / len(queue), 2) if queue else None,
        "jobs_taken_by_a_runner_ready_before_they_were_queued": pre_started,
        "_queue": queue,
        "_start": start,
    }


def histogram_summary(latency: dict[str, Any], metric: str) -> dict[str, Any]:
    """Count, mean and bucket-interpolated P50/P95/P99 of one provisioner histogram,
    summed over its team/pool series (Prometheus' ``histogram_quantile``)."""
    series = latency.get(metric, {})
    count = sum(entry["count"] for entry in series.values())
    total = sum(entry["sum"] for entry in series.values())
    cumulative: dict[float, float] = {}
    for entry in series.values():
        for le, value in entry["buckets"].items():
            bound = math.inf if le == "+Inf" else float(le)
            cumulative[bound] = cumulative.get(bound, 0.0) + value
    bounds = sorted(cumulative)
    out: dict[str, Any] = {
        "count": int(count),
        "mean_s": round(total / count, 3) if count else None,
        "fraction_within_s": {
            le: round(cumulative[float(le)] / count, 3)
            for le in ("0.5", "1", "2", "5", "10")
            if count and float(le) in cumulative
        },
        "per_team_pool": {
            key: {
                "count": int(entry["count"]),
                "mean_s": round(entry["sum"] / entry["count"], 3) if entry["count"] else None,
            }
            for key, entry in sorted(series.items())
        },
    }
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        if not count:
            out[f"{name}_s"] = None
            continue
        rank, lower, below = q * count, 0.0, 0.0
        value = None
        for bound in bounds:
            if cumulative[bound] >= rank:
                if math.isinf(bound):
                    value = lower  # beyond the last finite bucket: its bound
                else:
                    inside = cumulative[bound] - below
                    value = lower + (bound - lower) * ((rank - below) / inside if inside else 1)
                break
            lower, below = bound, cumulative[bound]
        out[f"{name}_s"] = None if value is None else round(value, 2)
    return out


def bin_packing(report: dict[str, Any]) -> dict[str, Any]:
    """Per pool: the peak node count against the bin-packing minimum of the peak,
    ceil(peak runners / max_runners_per_node), and node-seconds against the minimum's
    while the pool had runners (so the drain's emptied nodes do not count). Also the
    minimum by CPU: the peak runners' CPU requests over the largest node the pool had
    (allocatable CPU; the DaemonSets' requests left out, so a lower bound)."""
    series = report["series"]
    spec = local.stack_spec("dev", None)
    out: dict[str, Any] = {}
    for pool, figures in report["pools"].items():
        cap = figures["cap_runners_per_node"]
        if not figures["peak_runners"]:
            continue
        cpu = max(
            parse_quantity(t.resources.cpu) for t in spec.teams if pool in t.pools
        )  # per runner
        largest = max(n["cpu"] for n in report["nodes"].values() if n["pool"] == pool)
        node_seconds = min_seconds = 0.0
        for before, after in itertools.pairwise(series):
            runners = before["runners"].get(pool, 0)
            if runners:
                dt = after["t"] - before["t"]
                node_seconds += dt * before["nodes"].get(pool, 0)
                min_seconds += dt * math.ceil(runners / cap)
        out[pool] = {
            "max_runners_per_node": cap,
            "peak_runners": figures["peak_runners"],
            "bin_packing_minimum": math.ceil(figures["peak_runners"] / cap),
            "runner_cpu": float(cpu),
            "largest_node_cpu": largest,
            "cpu_minimum": math.ceil(figures["peak_runners"] * float(cpu) / largest),
            "peak_nodes": figures["peak_nodes"],
            "peak_runners_seen_on_one_node": figures["peak_runners_per_node"],
            "instance_types": figures["instance_types"],
            "node_seconds_while_busy": round(node_seconds),
            "bin_packing_minimum_node_seconds": round(min_seconds),
        }
    return out


def summary(
    name: str, code: int, report: dict[str, Any], argv: list[str], document: dict[str, Any]
) -> dict[str, Any]:
    latency = _latencies(report)
    members = _member_jobs(report)
    started = [j["started_at"] for j in members if j["started_at"] is not None]
    first = min((j["queued_at"] for j in members), default=0.0)
    # When the jobs were actually queued: the replay loop queues what is due between two
    # of its passes, so on a loaded machine arrivals come in batches.
    arrivals = sorted(j["queued_at"] for j in report["jobs_detail"])
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {
        "scenario": name,
        "local_command": "python -m localenv.local " + " ".join(argv),
        "exit_code": code,
        "warm": report["run"].get("warm", True),
        "workload": document,
        "jobs": len(report["jobs_detail"]),
        "member_jobs": len(members),
        "jobs_served": report["jobs_served"],
        "runners_created": report["runners_created"],
        # Runners created with no job waiting for them (min_idle, or ahead of demand).
        "runners_created_without_a_waiting_job": report["runners_created"]
        - int(
            histogram_summary(
                report.get("provisioner_latency", {}), "runner_platform_pod_created_seconds"
            )["count"]
        ),
        "every_job_served": report["jobs_served"] == len(members) and report["checks"]["ok"],
        "replay_seconds": report["run"]["replay_seconds"],
        "arrivals": {
            "span_s": round(arrivals[-1] - arrivals[0], 1) if arrivals else None,
            "largest_gap_s": round(max(gaps), 1) if gaps else None,
            "distinct_seconds_with_arrivals": len({int(t - arrivals[0]) for t in arrivals}),
        },
        "seconds_to_the_last_job_started": round(max(started) - first, 1) if started else None,
        "jobs_started_per_second": (
            round(len(started) / max(max(started) - first, 1.0), 2) if started else None
        ),
        "wall_seconds": report["run"].get("wall_seconds"),
        **{k: v for k, v in latency.items() if not k.startswith("_")},
        "controller_pod_created_s": histogram_summary(
            report.get("provisioner_latency", {}), "runner_platform_pod_created_seconds"
        ),
        "controller_pod_start_s": histogram_summary(
            report.get("provisioner_latency", {}), "runner_platform_pod_start_seconds"
        ),
        "scale_sets": report["scale_sets"],
        "teams": report["teams"],
        "pools": {k: v for k, v in report["pools"].items() if v["nodes_seen"]},
        "limits": _limits(),
        "bin_packing": bin_packing(report),
        "checks": report["checks"],
    }


def _limits() -> dict[str, Any]:
    """What bounds the runners: each team's max_runners and requests, each pool's limits."""
    spec = local.stack_spec("dev", None)
    return {
        "team_max_runners": {t.name: t.max_runners for t in spec.teams},
        "pool_limits": {
            p.name: {"cpu": p.limits.cpu, "memory": p.limits.memory} for p in spec.pools
        },
        "runner_requests": {
            t.name: {"cpu": t.resources.cpu, "memory": t.resources.memory} for t in spec.teams
        },
    }


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}


def _save(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def _cdf_chart(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, key, title in zip(
        axes,
        ("_queue", "_start"),
        ("queue time (queued → a runner took the job)", "pod start (queued → runner pod Ready)"),
        strict=True,
    ):
        for label, latency in runs.items():
            values = sorted(latency[key])
            if values:
                axis.step(
                    values,
                    [(i + 1) / len(values) for i in range(len(values))],
                    where="post",
                    label=label,
                )
        axis.set_title(title, fontsize="medium")
        axis.set_xlabel("seconds")
        axis.set_ylabel("fraction of jobs")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.suptitle("make bench-twin: the morning ramp with the warm pool on and off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _row(label: str, s: dict[str, Any]) -> str:
    def triple(p: dict[str, Any]) -> str:
        return "/".join("-" if p[k] is None else f"{p[k]:.1f}" for k in ("p50", "p95", "p99"))

    created = s["controller_pod_created_s"]
    overhead = "-" if created["p50_s"] is None else f"{created['p50_s']:.1f}/{created['p95_s']:.1f}"
    return (
        f"{label:<20} {s['member_jobs']:>5} {s['jobs_served']:>6} "
        f"{triple(s['queue_time_s']):>17} {triple(s['pod_start_s']):>17} {overhead:>13}"
    )


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        f"{'scenario':<20} {'jobs':>5} {'served':>6} {'queue P50/95/99 s':>17} "
        f"{'start P50/95/99 s':>17} {'created P50/95':>13}"
    ]
    lines += [_row(label, s) for label, s in rows]
    return "\n".join(lines)


def warm_scenario(command: str, drain: float) -> dict[str, Any]:
    document = warm_document()
    runs: dict[str, dict[str, Any]] = {}
    latencies: dict[str, dict[str, Any]] = {}
    for label, extra in (("on", []), ("off", ["--no-warm"])):
        code, report, folder, argv = run_local(
            f"warm-{label}", document, [*extra, "--drain", str(drain)]
        )
        runs[label] = summary(f"warm-{label}", code, report, argv, document)
        latencies[f"warm pool {label}"] = _latencies(report)
        shutil.copy(folder / "local-run.png", RESULTS / f"twin-warm-{label}.png")
        shutil.rmtree(folder, ignore_errors=True)
    _cdf_chart(latencies, RESULTS / "twin-warm.png")
    on, off = runs["on"], runs["off"]

    def gain(key: str, p: str) -> float | None:
        a, b = off[key][p], on[key][p]
        return None if a is None or b is None else round(a - b, 2)

    return {
        "benchmark": "twin-warm",
        "command": command,
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "what": "the built-in scenario's morning ramp (web on the warm pool, infra's deploys) "
        "with the dev stack's warm placeholders and min_idle, then with --no-warm",
        "warm_start_buys_s": {
            "queue_time_p50": gain("queue_time_s", "p50"),
            "queue_time_p95": gain("queue_time_s", "p95"),
            "pod_start_p50": gain("pod_start_s", "p50"),
            "pod_start_p95": gain("pod_start_s", "p95"),
        },
        "charts": ["twin-warm.png", "twin-warm-on.png", "twin-warm-off.png"],
        "on": on,
        "off": off,
    }


def burst_scenario(command: str, total: int, budget: float, drain: float) -> dict[str, Any]:
    timeout = max(budget - SPAN, 60.0)
    document = burst_document(total)
    code, report, folder, argv = run_local(
        "1000", document, ["--timeout", str(timeout), "--drain", str(drain)]
    )
    result = summary("1000", code, report, argv, document)
    scaled: dict[str, Any] | None = None
    if not result["every_job_served"]:
        jobs = [j for j in _member_jobs(report) if j["started_at"] is not None]
        first = min(j["queued_at"] for j in report["jobs_detail"])
        last = max((j["started_at"] for j in jobs), default=first)
        rate = len(jobs) / max(last - first, 1.0)
        smaller = max(30, int(rate * SPAN * 0.8))
        scaled = {
            "attempted_jobs": total,
            "served_in_time": result["jobs_served"],
            "sustained_jobs_per_second": round(rate, 2),
            "attempt": {k: v for k, v in result.items() if k != "workload"},
        }
        shutil.rmtree(folder, ignore_errors=True)
        document = burst_document(smaller)
        code, report, folder, argv = run_local(
            "1000-scaled", document, ["--timeout", str(timeout), "--drain", str(drain)]
        )
        result = summary(f"{smaller} jobs", code, report, argv, document)
        scaled["reason"] = (
            f"{total} jobs over {SPAN:.0f} s: {scaled['served_in_time']} served within "
            f"{timeout:.0f} s past the last arrival on this machine "
            f"({_machine()['cpus']} loaded cores, the whole twin in one place); rerun with "
            f"{smaller} jobs, 80 % of the {rate:.1f} jobs/s it sustained"
        )
    shutil.copy(folder / "local-run.png", RESULTS / "twin-1000.png")
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "benchmark": "twin-1000",
        "command": command,
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "what": f"{result['member_jobs']} jobs of {JOB_SECONDS} s over {SPAN:.0f} s: "
        "web 50 % and infra 20 % on the warm pool, ml 30 % on ml-isolated; dev stack as is",
        "scaled_down_because": scaled["reason"] if scaled else None,
        "note": "controller_pod_created_s is queued → pod created as the provisioner measures "
        "it: with more jobs than the teams' max_runners and the pools' limits allow at once, "
        "it is mostly the wait for room; fraction_within_s shows the jobs that found room. "
        "The controller's overhead without that wait: twin-warm.json, off.controller_pod_created_s",
        "first_attempt": scaled,
        "charts": ["twin-1000.png"],
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/twin.py", description=__doc__)
    parser.add_argument("--only", choices=("warm", "1000"), help="run one scenario")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the burst scenario")
    parser.add_argument(
        "--budget", type=float, default=BUDGET, help="seconds the burst replay may take"
    )
    parser.add_argument("--drain", type=float, default=15, help="each run's --drain")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "make bench-twin" if not given else "python bench/twin.py " + " ".join(given)
    rows: list[tuple[str, dict[str, Any]]] = []
    started = time.time()
    failed = False
    if args.only in (None, "1000"):
        burst = burst_scenario(command, args.jobs, args.budget, args.drain)
        _save("twin-1000", burst)
        rows.append((f"{burst['member_jobs']} jobs/60 s", burst))
        failed |= not burst["every_job_served"]
    if args.only in (None, "warm"):
        warm = warm_scenario(command, args.drain)
        _save("twin-warm", warm)
        rows += [("warm pool on", warm["on"]), ("warm pool off", warm["off"])]
        failed |= not (warm["on"]["every_job_served"] and warm["off"]["every_job_served"])
        print(f"\nwarm start buys (s): {json.dumps(warm['warm_start_buys_s'])}")
    print()
    print(table(rows))
    for label, s in rows:
        for pool, packing in s["bin_packing"].items():
            print(
                f"  {label}: {pool} peak {packing['peak_runners']} runners, peak "
                f"{packing['peak_nodes']} nodes (bin-packing minimum "
                f"{packing['bin_packing_minimum']}, by CPU {packing['cpu_minimum']}); "
                "node-s while busy "
                f"{packing['node_seconds_while_busy']} vs "
                f"{packing['bin_packing_minimum_node_seconds']} minimum"
            )
    print(f"\n{time.time() - started:.0f} s; figures in {RESULTS}/twin-*.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
