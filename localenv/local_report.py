"""What a platform owner asks after a local run, per team and pool: a terminal table, a
JSON file and a PNG chart (queue depth, runners and nodes per pool over time).

Figures:

- **queue time**: job queued → a runner took it (the emulator's own clock);
- **pod start**: job queued → its runner's pod Ready (the pod's condition; whole seconds);
- **peak runners per node**: the most live runner pods seen on one node, against the
  pool's ``max_runners_per_node`` (the ``maxPods`` cap);
- **node-hours and cost per team**: each node's life, sampled every second, split among
  the teams by the share of it their runners requested (the larger of CPU and GPUs:
  a GPU runner holds its GPU whatever CPU it asks); the price is the
  node's instance type and capacity type in the price table (localenv/prices.yaml). What
  no runner used (idle nodes, warm placeholders, DaemonSets) is ``unallocated``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from controller.model import PlatformSpec


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank P50/P95/P99 (None without values)."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        if not ordered:
            out[name] = None
            continue
        rank = max(1, math.ceil(q * len(ordered)))
        out[name] = round(ordered[rank - 1], 2)
    return out


def build(spec: PlatformSpec, prices: Any, run: Any, results: dict[str, Any]) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = results["jobs"]
    audit: list[dict[str, Any]] = results["audit"]
    denied_records = {
        (r.get("instance"), r.get("job_id")): r for r in audit if r.get("decision") == "denied"
    }
    # Each problem under the check it fails (never found again by searching its words).
    found: dict[str, list[str]] = {"served": [], "denied": [], "cap": []}
    problems: list[str] = []

    def flag(check: str, message: str) -> None:
        found[check].append(message)
        problems.append(message)

    rerun_of = {(j["instance"], j["rerun_of"]): j for j in jobs if j["rerun_of"]}
    runners_seen: dict[str, int] = {}
    per_scale_set: dict[str, dict[str, Any]] = {}
    denied: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    for job in jobs:
        key = job["scale_set"]
        entry = per_scale_set.setdefault(
            key,
            {
                "team": job["team"],
                "pool": job["pool"],
                "jobs": 0,
                "served": 0,
                "denied": 0,
                "lost": 0,
                "queue": [],
                "start": [],
            },
        )
        entry["jobs"] += 1
        record = denied_records.get((job["instance"], job["id"]))
        if not job["member"]:
            if record is None:
                flag("denied", f"job {job['id']} of non-member {job['requester']}: no denial")
            if job["runner"] is not None:
                flag("denied", f"job {job['id']} of non-member {job['requester']} got a runner")
            entry["denied"] += 1
            denied.append(
                {
                    "job_id": job["id"],
                    "team": job["team"],
                    "pool": job["pool"],
                    "repo": job["repo"],
                    "requester": job["requester"],
                    "reason": record.get("reason", "") if record else "(no audit record)",
                    "github": job["conclusion"],
                }
            )
            continue
        if record is not None:
            flag("denied", f"job {job['id']} of member {job['requester']} was denied")
        if job["runner"] is not None:
            if job["runner"] in runners_seen:
                flag(
                    "served",
                    f"runner {job['runner']} served jobs {runners_seen[job['runner']]} "
                    f"and {job['id']}",
                )
            runners_seen[job["runner"]] = job["id"]
        if job["status"] == "completed" and job["conclusion"] == "failure":
            again = rerun_of.get((job["instance"], job["id"]))
            entry["lost"] += 1
            lost.append(
                {"job_id": job["id"], "runner": job["runner"], "rerun": again and again["id"]}
            )
            if again is None:
                flag("served", f"job {job['id']} failed and was not re-run")
            continue
        if job["status"] != "completed" or job["conclusion"] != "success" or not job["runner"]:
            flag(
                "served",
                f"job {job['id']} ({job['scale_set']}) ended {job['status']}/"
                f"{job['conclusion']} with runner {job['runner']}",
            )
            continue
        entry["served"] += 1
        if job["started_at"] is not None:
            entry["queue"].append(job["started_at"] - job["queued_at"])
        if job["pod_running_at"] is not None:
            entry["start"].append(max(job["pod_running_at"] - job["queued_at"], 0.0))
    scale_sets = []
    for name, entry in sorted(per_scale_set.items()):
        scale_sets.append(
            {
                "scale_set": name,
                "team": entry["team"],
                "pool": entry["pool"],
                "jobs": entry["jobs"],
                "served": entry["served"],
                "denied": entry["denied"],
                "lost_and_rerun": entry["lost"],
                "queue_time_s": percentiles(entry["queue"]),
                "pod_start_s": percentiles(entry["start"]),
            }
        )
    pools: dict[str, dict[str, Any]] = {}
    for pool in spec.pools:
        nodes = [n for n in run.nodes.values() if n["pool"] == pool.name]
        series = run.samples
        peak_per_node = max((n["peak_runners"] for n in nodes), default=0)
        if peak_per_node > pool.max_runners_per_node:
            flag(
                "cap",
                f"pool {pool.name}: {peak_per_node} runners on one node, cap "
                f"{pool.max_runners_per_node}",
            )
        pools[pool.name] = {
            "cap_runners_per_node": pool.max_runners_per_node,
            "peak_runners_per_node": peak_per_node,
            "peak_runners": max((s["runners"].get(pool.name, 0) for s in series), default=0),
            "peak_nodes": max((s["nodes"].get(pool.name, 0) for s in series), default=0),
            "nodes_seen": len(nodes),
            "instance_types": sorted({n["instance_type"] for n in nodes}),
            "node_hours": round(sum(n["node_hours"] for n in nodes), 4),
            "cost": round(sum(n["cost"] for n in nodes), 4),
        }
    teams: dict[str, dict[str, Any]] = {}
    for team in spec.teams:
        mine = [s for s in per_scale_set.values() if s["team"] == team.name]
        teams[team.name] = {
            "jobs": sum(s["jobs"] for s in mine),
            "served": sum(s["served"] for s in mine),
            "denied": sum(s["denied"] for s in mine),
            "queue_time_s": percentiles([q for s in mine for q in s["queue"]]),
            "node_hours": round(
                sum(n["team_hours"].get(team.name, 0.0) for n in run.nodes.values()), 4
            ),
            "cost": round(sum(n["team_cost"].get(team.name, 0.0) for n in run.nodes.values()), 4),
        }
    total_hours = sum(n["node_hours"] for n in run.nodes.values())
    total_cost = sum(n["cost"] for n in run.nodes.values())
    unallocated = {
        "node_hours": round(total_hours - sum(t["node_hours"] for t in teams.values()), 4),
        "cost": round(total_cost - sum(t["cost"] for t in teams.values()), 4),
    }
    reaped: dict[str, int] = defaultdict(int)
    reaped_records = []
    for record in audit:
        if record.get("decision") in ("reaped", "runner-lost"):
            reason = str(record.get("reason", "")).split(":", 1)[0]
            key = "lost" if record["decision"] == "runner-lost" else reason
            reaped[key] += 1
            reaped_records.append(
                {k: record.get(k) for k in ("decision", "reason", "scale_set", "time")}
            )
    fault = dict(run.fault_log)
    if fault:
        waiting = {(instance, job_id) for instance, job_id in fault.pop("waiting_before", [])}
        end = fault.pop("end", None)
        affected = [
            j
            for j in jobs
            if j["member"]
            and (
                (j["instance"], j["id"]) in waiting
                or (end is not None and j["queued_at"] <= end and (j["started_at"] or 0) > end)
            )
        ]
        last = max([j["started_at"] or 0 for j in affected] + [0])
        fault["jobs_waiting_or_queued_during"] = len(affected)
        fault["recovered_after_s"] = (
            round(max(last - (run.start + fault["at_s"]), 0.0), 1) if affected else 0.0
        )
        fault["served_exactly_once"] = not found["served"]
    created = sum(1 for r in audit if r.get("decision") == "runner-created")
    served = sum(s["served"] for s in per_scale_set.values())
    checks = {
        "every_member_job_served_once": not found["served"],
        "non_members_denied": not found["denied"],
        "runners_per_node_within_cap": not found["cap"],
        "problems": problems,
    }
    checks["ok"] = not problems
    return {
        "run": {
            "stack": spec.cluster.name,
            "workload": run.load.name,
            "jobs": len(run.load.jobs),
            "started": run.start,
            "replay_seconds": run.samples[-1]["t"] if run.samples else 0,
            "currency": prices.currency,
        },
        "scale_sets": scale_sets,
        "pools": pools,
        "teams": teams,
        "unallocated": unallocated,
        "denied": denied,
        "lost": lost,
        "runners_created": created,
        "jobs_served": served,
        "reaped": dict(reaped),
        "reaped_records": reaped_records,
        "fault": fault or None,
        "cloudwatch": results["cloudwatch"],
        "checks": checks,
        "inventory": results["inventory"],
        "jobs_detail": jobs,
        "nodes": {
            name: {k: (dict(v) if isinstance(v, defaultdict) else v) for k, v in info.items()}
            for name, info in run.nodes.items()
        },
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _triple(values: dict[str, float | None]) -> str:
    return "/".join(_fmt(values[k]) for k in ("p50", "p95", "p99"))


def table(report: dict[str, Any]) -> str:
    currency = report["run"]["currency"]
    lines = [
        f"local run of {report['run']['jobs']} jobs ({report['run']['workload']}), "
        f"{report['run']['replay_seconds']:.0f}s",
        "",
        f"{'team':<6} {'pool':<12} {'jobs':>4} {'served':>6} {'denied':>6} {'lost':>4} "
        f"{'queue P50/P95/P99 s':>21} {'pod start P50/P95/P99 s':>25}",
    ]
    for row in report["scale_sets"]:
        queue, start = _triple(row["queue_time_s"]), _triple(row["pod_start_s"])
        lines.append(
            f"{row['team']:<6} {row['pool']:<12} {row['jobs']:>4} {row['served']:>6} "
            f"{row['denied']:>6} {row['lost_and_rerun']:>4} {queue:>21} {start:>25}"
        )
    lines += [
        "",
        f"{'pool':<12} {'peak runners':>12} {'peak nodes':>10} {'runners/node (cap)':>19} "
        f"{'node-h':>7} {'cost ' + currency:>9}  instance types",
    ]
    for name, pool in report["pools"].items():
        per_node = f"{pool['peak_runners_per_node']} ({pool['cap_runners_per_node']})"
        lines.append(
            f"{name:<12} {pool['peak_runners']:>12} {pool['peak_nodes']:>10} {per_node:>19} "
            f"{pool['node_hours']:>7.3f} {pool['cost']:>9.3f}  {', '.join(pool['instance_types'])}"
        )
    lines += ["", f"{'team':<12} {'node-h':>8} {'cost ' + currency:>10}"]
    for name, team in report["teams"].items():
        lines.append(f"{name:<12} {team['node_hours']:>8.3f} {team['cost']:>10.3f}")
    un = report["unallocated"]
    lines.append(f"{'unallocated':<12} {un['node_hours']:>8.3f} {un['cost']:>10.3f}")
    lines += ["", f"denied jobs: {len(report['denied'])}"]
    for row in report["denied"]:
        lines.append(
            f"  job {row['job_id']} {row['requester']} on {row['team']}/{row['pool']} "
            f"({row['repo']}): {row['reason']}"
        )
    reaped = ", ".join(f"{k} {v}" for k, v in sorted(report["reaped"].items())) or "none"
    lines.append(f"reaped objects: {reaped}")
    lines.append(
        f"runner pods created: {report['runners_created']} for {report['jobs_served']} jobs served"
    )
    if report["fault"]:
        fault = report["fault"]
        lines.append(
            f"fault {fault['name']} at {fault['at_s']:.0f}s: {fault.get('detail', '')}; "
            f"recovered after {fault['recovered_after_s']:.1f}s "
            f"({fault['jobs_waiting_or_queued_during']} jobs waiting), served exactly once: "
            f"{'yes' if fault['served_exactly_once'] else 'NO'}"
        )
        if "leases_taken_after_s" in fault:
            lines.append(
                f"  the restarted provisioner held every scale set's Lease after "
                f"{fault['leases_taken_after_s']:.1f}s"
            )
        if "dropped_deliveries" in fault:
            lines.append(
                f"  {fault['dropped_deliveries']} deliveries dropped "
                f"({fault['dropped_queued_jobs']} of them queued jobs), "
                f"{fault['redelivered_by_reconciler_so_far']} redelivered by the reconciler"
            )
    cloudwatch = report["cloudwatch"]
    per_team = ", ".join(
        f"{team} {v.get('RunnerMinutes', 0):.1f} runner-min/{v.get('JobsCompleted', 0):.0f} jobs"
        for team, v in cloudwatch["per_team"].items()
    )
    lines.append(f"CloudWatch ({cloudwatch['namespace']}, moto): {per_team}")
    checks = report["checks"]
    lines.append(
        "checks: " + ("all passed" if checks["ok"] else "FAILED: " + "; ".join(checks["problems"]))
    )
    return "\n".join(lines)


def chart(samples: list[dict[str, Any]], path: Path, fault: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = sorted({p for s in samples for key in ("queued", "runners", "nodes") for p in s[key]})
    times = [s["t"] for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for axis, key, title in zip(
        axes,
        ("queued", "runners", "nodes"),
        ("queued jobs", "runner pods", "nodes"),
        strict=True,
    ):
        for pool in pools:
            axis.step(times, [s[key].get(pool, 0) for s in samples], where="post", label=pool)
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
        if fault:
            axis.axvline(fault["at_s"], color="red", linestyle="--", linewidth=1)
    axes[0].legend(loc="upper right", ncol=len(pools) or 1, fontsize="small")
    axes[-1].set_xlabel("seconds since the replay started")
    title = "make local: queue depth, runners and nodes per pool"
    if fault:
        title += f" (fault {fault['name']} at {fault['at_s']:.0f}s)"
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(report: dict[str, Any], samples: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "local-run.json", out / "local-run.png"
    json_path.write_text(json.dumps({**report, "series": samples}, indent=1, default=str))
    chart(samples, png_path, report["fault"])
    return json_path, png_path
