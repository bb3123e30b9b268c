"""make local's report: each check is decided by the problems found for it, never by the
words of another check's message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from controller.model import PlatformSpec
from localenv import local_report


def _job(job_id: int, requester: str, member: bool, runner: str | None) -> dict[str, Any]:
    return {
        "id": job_id,
        "instance": "cloud",
        "team": "web",
        "pool": "warm",
        "scale_set": "web-warm",
        "repo": "acme-corp/storefront",
        "requester": requester,
        "member": member,
        "runner": runner,
        "status": "completed",
        "conclusion": "success" if member else "cancelled",
        "rerun_of": None,
        "queued_at": 0.0,
        "started_at": 1.0 if member else None,
        "pod_running_at": 1.0 if member else None,
    }


def _report(dev_spec: PlatformSpec, peak_on_one_node: int) -> dict[str, Any]:
    node = {
        "pool": "warm",
        "peak_runners": peak_on_one_node,
        "instance_type": "m7i.4xlarge",
        "node_hours": 0.1,
        "cost": 0.1,
        "team_hours": {"web": 0.1},
        "team_cost": {"web": 0.1},
    }
    run = SimpleNamespace(
        nodes={"warm-1": node},
        samples=[],
        fault_log={"name": "kill-controller", "at_s": 1.0, "waiting_before": [["cloud", 1]]},
        start=0.0,
        load=SimpleNamespace(name="w.yaml", jobs=[1, 2]),
    )
    results = {
        # A member's job served once, and a non-member whose login holds "ended".
        "jobs": [_job(1, "alice", True, "web-warm-aaaaa"), _job(2, "friended", False, None)],
        "audit": [
            {"decision": "denied", "instance": "cloud", "job_id": 2, "reason": "not a member"}
        ],
        "cloudwatch": {},
        "inventory": {},
    }
    return local_report.build(dev_spec, SimpleNamespace(currency="USD"), run, results)


def test_a_node_over_its_cap_fails_the_cap_check_alone(dev_spec: PlatformSpec) -> None:
    report = _report(dev_spec, peak_on_one_node=11)
    checks = report["checks"]
    assert checks["runners_per_node_within_cap"] is False
    assert checks["every_member_job_served_once"] is True
    assert checks["non_members_denied"] is True
    assert report["fault"]["served_exactly_once"] is True  # its message names "runners"
    assert checks["ok"] is False


def test_a_clean_run_passes_every_check(dev_spec: PlatformSpec) -> None:
    checks = _report(dev_spec, peak_on_one_node=5)["checks"]
    assert checks["ok"] is True
    assert checks["problems"] == []
