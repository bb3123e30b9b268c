"""``make local`` (python -m localenv.local) for real: a tiny workload of two teams with a
non-member, one fault, and the JSON report it writes — every job served once or denied
with its reason, no node above its runner cap, the CloudWatch figures read back from
moto, and nothing of the run alive afterwards. Plus the pieces it is made of: the
workload file's validation, the EC2NodeClass → KWOKNodeClass mapping and the instance
types it gives Karpenter, and the CloudWatch publisher against moto."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from components.node_pools import max_pods, node_pool
from controller.cloudwatch import CloudWatchPublisher
from controller.metrics import Metrics
from localenv import stack_objects, workload
from localenv.local import stack_spec
from localenv.process import running
from localenv.services import Moto
from tests.conftest import ROOT

TINY = """
members:
  web: [alice]
  ml: [rob]
jobs:
  - {team: web, repo: acme-corp/storefront, labels: [self-hosted, linux, web],
     requester: alice, at: 0, duration: 6, count: 5, every: 1}
  - {team: ml, repo: research/models, labels: [self-hosted, linux, ml-isolated],
     requester: rob, at: 1, duration: 6, count: 3, every: 2}
  - {team: ml, repo: research/models, labels: [self-hosted, linux, gpu],
     requester: rob, at: 2, duration: 8}
  - {team: ml, repo: research/models, labels: [self-hosted, linux, gpu],
     requester: alice, at: 3, duration: 5}
  - {team: web, repo: acme-corp/storefront, labels: [self-hosted, linux, web],
     requester: alice, at: 12, duration: 5, count: 3, every: 1}
"""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_local_run_with_a_killed_controller_serves_every_job_once(tmp_path: Path) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(TINY)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "localenv.local",
            "--workload",
            str(spec_file),
            "--fault",
            "kill-controller",
            "--fault-at",
            "4",
            "--out",
            str(out),
            "--timeout",
            "240",
            "--drain",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    report = json.loads((out / "local-run.json").read_text())
    assert (out / "local-run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "checks: all passed" in result.stdout

    # Every member's job got exactly one runner and succeeded; the runners are distinct.
    jobs = report["jobs_detail"]
    members = [j for j in jobs if j["member"]]
    assert len(members) == 12
    assert all(j["status"] == "completed" and j["conclusion"] == "success" for j in members)
    assert len({j["runner"] for j in members}) == 12 and None not in {j["runner"] for j in members}
    # The non-member on ml's GPU pool was denied, with the verifier's reason, no runner.
    assert [(d["requester"], d["pool"]) for d in report["denied"]] == [("alice", "gpu")]
    assert "not an active member" in report["denied"][0]["reason"]
    outsider = next(j for j in jobs if not j["member"])
    assert outsider["runner"] is None and outsider["conclusion"] == "cancelled"
    # No node ever held more runners than its pool's cap (maxPods).
    for name, pool in report["pools"].items():
        assert pool["peak_runners_per_node"] <= pool["cap_runners_per_node"], name
    assert report["pools"]["gpu"]["nodes_seen"] >= 1  # Karpenter launched a GPU node
    gpu_nodes = [n for n in report["nodes"].values() if n["pool"] == "gpu"]
    assert all(n["instance_type"].startswith(("g5.", "g6.")) for n in gpu_nodes)
    # The fault happened and the platform recovered from it.
    assert report["fault"]["name"] == "kill-controller"
    assert report["fault"]["served_exactly_once"] is True
    assert report["fault"]["leases_taken_after_s"] >= 0  # the new process took them all
    assert report["checks"]["ok"] is True, report["checks"]["problems"]
    # Queue-time percentiles per team and pool exist for what was served.
    web = next(s for s in report["scale_sets"] if s["scale_set"] == "web-warm")
    assert web["served"] == 8 and web["queue_time_s"]["p50"] is not None
    # CloudWatch (moto) got the per-team figures: completed jobs add up per team.
    per_team = report["cloudwatch"]["per_team"]
    assert per_team["web"]["JobsCompleted"] == 8
    assert per_team["ml"]["JobsCompleted"] >= 4  # 4 served (+ the cancelled one, if seen)
    assert per_team["web"]["RunnerMinutes"] > 0
    # Nothing of the run is left: no process alive, no port answering, no work folder.
    inventory = report["inventory"]
    assert inventory["pids"], "the run recorded what it started"
    alive = [name for pid, name in inventory["pids"].items() if running(int(pid))]
    assert alive == []
    assert [name for name, port in inventory["ports"].items() if _port_open(port)] == []
    assert not Path(inventory["workdir"]).exists()


def test_a_bad_workload_file_is_refused_naming_file_entry_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "jobs:\n"
        "  - {team: web, repo: acme-corp/storefront, labels: [self-hosted, linux],"
        " requester: alice, at: 0, duration: 5}\n"
        "  - {team: web, repo: acme-corp/storefront, labels: [self-hosted, linux],"
        " requester: alice, at: 0, duration: -3}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "localenv.local", "--workload", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}: jobs[1].duration: must be > 0, not -3" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda j: j.update(team="qa"), "jobs[0].team: 'qa' is not a team of the stack"),
        (lambda j: j.pop("labels"), "jobs[0].labels: missing"),
        (lambda j: j.update(repo="research/models"), "not in team web's organisation"),
        (
            lambda j: j.update(labels=["self-hosted", "gpu"]),
            "jobs[0].labels: ['self-hosted', 'gpu'] match no pool of team web",
        ),
        (lambda j: j.update(at="soon"), "jobs[0].at: a number of seconds, not 'soon'"),
        (lambda j: j.update(count=0), "jobs[0].count: a whole number from 1 to 10000"),
        (lambda j: j.update(colour="red"), "jobs[0].colour: unknown field"),
        (lambda j: j.update(repo="acme-corp/infra-secrets"), "not one of team web's repositories"),
        # Not a number of seconds at all: the replay would never reach it, nor time out.
        (lambda j: j.update(at=float("nan")), "jobs[0].at: must be ≥ 0, not nan"),
        (lambda j: j.update(duration=float("inf")), "jobs[0].duration: must be > 0, not inf"),
        (lambda j: j.update(every=float("nan")), "jobs[0].every: must be ≥ 0, not nan"),
        (lambda j: j.update(at=10**400), "jobs[0].at: must be ≥ 0, not inf"),  # past any float
    ],
)
def test_workload_validation(change: Any, message: str) -> None:
    spec = stack_spec("dev", None)
    entry: dict[str, Any] = {
        "team": "web",
        "repo": "acme-corp/storefront",
        "labels": ["self-hosted", "linux"],
        "requester": "alice",
        "at": 0,
        "duration": 5,
    }
    change(entry)
    with pytest.raises(workload.WorkloadError) as error:
        workload.parse({"jobs": [entry]}, spec, "w.yaml")
    assert str(error.value).startswith("w.yaml: ")
    assert message in str(error.value)


def test_the_built_in_scenario_routes_every_job_and_has_denials_and_gpus() -> None:
    spec = stack_spec("dev", None)
    load = workload.default(spec)
    pools = {job.pool for job in load.jobs}
    assert {"warm", "gpu", "ml-isolated", "nvme", "highmem"} <= pools
    assert {job.team for job in load.jobs} == {"web", "ml", "infra"}
    outsiders = [job for job in load.jobs if not load.allowed(job)]
    assert {(j.requester, j.team) for j in outsiders} == {("alice", "infra"), ("mallory", "ml")}
    assert sum(1 for job in load.jobs if job.at == 100) >= 20  # the burst


def test_kwok_node_pools_change_nothing_but_the_node_class() -> None:
    spec = stack_spec("dev", None)
    mapped = stack_objects.kwok_node_pools(spec)
    classes = [m for m in mapped if m["kind"] == "KWOKNodeClass"]
    pools = [m for m in mapped if m["kind"] == "NodePool"]
    assert [c["metadata"]["name"] for c in classes] == [p.name for p in spec.pools]
    for pool, manifest in zip(spec.pools, pools, strict=True):
        real = node_pool(spec, pool)
        assert manifest["spec"]["template"]["spec"]["nodeClassRef"] == {
            "group": "karpenter.kwok.sh",
            "kind": "KWOKNodeClass",
            "name": pool.name,
        }
        expected = copy.deepcopy(real)
        expected["spec"]["template"]["spec"]["nodeClassRef"] = manifest["spec"]["template"]["spec"][
            "nodeClassRef"
        ]
        assert manifest == expected  # requirements, limits, labels, taints, disruption


def test_instance_types_carry_each_pools_max_pods_capacity_and_prices() -> None:
    spec = stack_spec("dev", None)
    prices = stack_objects.load_prices()
    types = {t["name"]: t for t in stack_objects.kwok_instance_types(spec, prices)}
    for pool in spec.pools:
        mine = stack_objects.pool_instance_types(spec, pool, prices)
        assert mine, pool.name
        for instance in mine:
            entry = types[instance.name]
            assert entry["resources"]["pods"] == str(max_pods(spec, pool))
            assert entry["resources"]["cpu"] == str(instance.vcpu)
            families = pool.instance_families
            assert not families or instance.family in families
    gpu = types["g6.xlarge"]
    assert gpu["resources"]["nvidia.com/gpu"] == "1"
    spot = [o for o in gpu["offerings"] if o["Requirements"][0]["values"] == ["spot"]]
    assert spot[0]["Price"] == pytest.approx(0.8048 * 0.35, rel=1e-3)
    # The NodePool's AWS requirements are met by the offerings' labels, unchanged.
    keys = {r["key"] for r in gpu["offerings"][0]["Requirements"]}
    assert "karpenter.k8s.aws/instance-family" in keys
    # The NVMe pool stripes its instance store: the node's disk is the NVMe, not gp3.
    assert types["i4i.4xlarge"]["resources"]["ephemeral-storage"] == "3750Gi"
    # No entry of the table for a pool's families: refused before anything starts.
    thin = stack_objects.PriceTable(
        "USD", "us-west-2", {"m7i.4xlarge": prices.types["m7i.4xlarge"]}
    )
    with pytest.raises(stack_objects.StackObjectError, match=r"pools\[ml-isolated\]"):
        stack_objects.kwok_instance_types(spec, thin)


def test_a_bad_price_table_names_its_entry(tmp_path: Path) -> None:
    table = tmp_path / "prices.yaml"
    table.write_text(
        "instance_types:\n  m7i.4xlarge: {vcpu: 16, memory_gib: 64, on_demand: free}\n"
    )
    with pytest.raises(stack_objects.StackObjectError) as error:
        stack_objects.load_prices(table)
    assert f"{table}: instance_types.m7i.4xlarge.on_demand: 'free' is not a float" in str(
        error.value
    )
    # NaN would reach Karpenter's instance types file as a price, and every cost after it.
    table.write_text(
        "instance_types:\n  m7i.4xlarge: {vcpu: 16, memory_gib: 64, on_demand: .nan}\n"
    )
    with pytest.raises(stack_objects.StackObjectError, match="on_demand: nan is not a float"):
        stack_objects.load_prices(table)
    # Nor a number past any float (YAML reads it as an int: math.isfinite would overflow).
    table.write_text(
        f"instance_types:\n  m7i.4xlarge: {{vcpu: 1{'0' * 400}, memory_gib: 64, on_demand: 1}}\n"
    )
    with pytest.raises(
        stack_objects.StackObjectError, match="vcpu: over 1e9, past any instance's figures"
    ):
        stack_objects.load_prices(table)


def test_the_publisher_sends_per_team_figures_that_moto_gives_back(moto_server: Moto) -> None:
    metrics = Metrics()
    metrics.runners.labels("web", "warm", "busy").set(3)
    metrics.runners.labels("web", "warm", "idle").set(1)
    metrics.runners.labels("ml", "gpu", "busy").set(2)  # not held here: another replica's
    metrics.jobs_completed.labels("web", "warm", "success").inc(5)
    metrics.jobs_completed.labels("web", "warm", "failure").inc(1)
    namespace = f"RunnerPlatform/Test{time.time_ns()}"
    publisher = CloudWatchPublisher(
        namespace,
        metrics,
        {"web-warm": ("web", "warm"), "ml-gpu": ("ml", "gpu")},
        lambda scale_set: scale_set == "web-warm",
        client=moto_server.client("cloudwatch"),
    )
    publisher._last -= 120  # two minutes since the previous publish
    assert publisher.publish_once() > 0
    metrics.jobs_completed.labels("web", "warm", "success").inc(2)
    publisher._last -= 60
    publisher.publish_once()
    client: Any = moto_server.client("cloudwatch")
    names = {m["MetricName"] for m in client.list_metrics(Namespace=namespace)["Metrics"]}
    assert names == {"Runners", "BusyRunners", "RunnerMinutes", "JobsCompleted"}
    teams = {
        d["Value"]
        for m in client.list_metrics(Namespace=namespace)["Metrics"]
        for d in m["Dimensions"]
        if d["Name"] == "Team"
    }
    assert teams == {"web"}  # ml's scale set is held by another replica: not published here

    def total(metric: str, **dimensions: str) -> float:
        answer = client.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "q",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": namespace,
                            "MetricName": metric,
                            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                }
            ],
            StartTime=datetime.fromtimestamp(time.time() - 600, UTC),
            EndTime=datetime.fromtimestamp(time.time() + 600, UTC),
        )
        return float(sum(answer["MetricDataResults"][0]["Values"]))

    assert total("JobsCompleted", Team="web") == 8  # deltas: 6, then 2
    assert total("JobsCompleted", Team="web", Conclusion="failure") == 1
    assert total("RunnerMinutes", Team="web") == pytest.approx(4 * 2 + 4 * 1, rel=0.01)


def test_the_publisher_refuses_an_aws_namespace() -> None:
    with pytest.raises(ValueError, match="AWS/"):
        CloudWatchPublisher("AWS/EC2", Metrics(), {}, lambda _: True)


def test_a_jobs_pool_is_its_scale_sets_even_when_the_team_name_has_a_hyphen() -> None:
    from controller.model import load_spec
    from tests.conftest import DEV_DOCUMENT

    document = copy.deepcopy(DEV_DOCUMENT)
    for team in document["teams"]:
        if team["name"] == "web":
            team["name"] = "web-ui"  # scale set 'web-ui-warm': splitting it says 'ui-warm'
    for pool in document["pools"]:
        if "web" in pool.get("shares", {}):
            pool["shares"]["web-ui"] = pool["shares"].pop("web")
    spec = load_spec(document)
    entry = {
        "team": "web-ui",
        "repo": "acme-corp/storefront",
        "labels": ["self-hosted", "linux"],
        "requester": "alice",
        "at": 0,
        "duration": 5,
    }
    (job,) = workload.parse({"jobs": [entry]}, spec, "w.yaml").jobs
    assert (job.scale_set, job.pool) == ("web-ui-warm", "warm")
