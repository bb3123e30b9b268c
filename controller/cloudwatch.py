"""Per-team runner counts, runner minutes and completed jobs, published to CloudWatch.

Run by ``python -m controller provision`` when ``RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE`` is
set. The figures come from the provisioner's own Prometheus metrics (nothing is counted
twice): every replica publishes only the scale sets whose Leases it holds (the runner
gauges of the others are stale on it), and the completed-job counters as deltas of what
its own demand consumer saw (each stream entry is consumed by one replica), so the
``Sum`` over replicas is the platform's figure.

Metrics (namespace from the setting, dimension ``Team``; ``Runners`` also per ``Pool``):

- ``Runners`` (Count): live runner pods (pending, idle, busy) at publish time;
- ``BusyRunners`` (Count): runners running a job;
- ``RunnerMinutes`` (None): live runners x minutes since the previous publish, the
  figure a chargeback multiplies by a node price;
- ``JobsCompleted`` (Count, also per ``Conclusion``): jobs finished since the previous
  publish.

Credentials come from boto3's default chain (the pod's IRSA web identity in EKS, the
environment elsewhere): never from configuration. ``RUNNER_PLATFORM_CLOUDWATCH_ENDPOINT``
points the client at another endpoint (a VPC endpoint, or moto in the local run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from controller.metrics import Metrics

log = logging.getLogger(__name__)
LIVE_STATES = ("pending", "idle", "busy")
BATCH = 500  # PutMetricData takes at most 1,000 values per call


class CloudWatchPublisher:
    def __init__(
        self,
        namespace: str,
        metrics: Metrics,
        scale_sets: dict[str, tuple[str, str]],
        held: Callable[[str], bool],
        *,
        interval: float = 60.0,
        client: Any = None,
        endpoint_url: str | None = None,
    ) -> None:
        """``scale_sets``: scale set name → (team, pool); ``held``: whether this replica
        holds a scale set's Lease now."""
        if not namespace or namespace.startswith("AWS/"):
            raise ValueError(
                f"RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE={namespace!r}: a namespace of your own "
                "(not empty, not AWS/…)"
            )
        if interval <= 0:
            raise ValueError("RUNNER_PLATFORM_CLOUDWATCH_INTERVAL must be positive")
        self.namespace = namespace
        self.metrics = metrics
        self.pools = {(team, pool): name for name, (team, pool) in scale_sets.items()}
        self.held = held
        self.interval = interval
        self.endpoint_url = endpoint_url or None
        self._client = client
        self._last = time.monotonic()
        self._completed: dict[tuple[str, str, str], float] = {}
        self.published = 0  # PutMetricData calls that succeeded

    def client(self) -> Any:
        if self._client is None:
            import boto3  # only a process that publishes pays for it

            # EKS's pod identity webhook sets both; botocore itself reads only the second.
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._client = boto3.client(
                "cloudwatch", endpoint_url=self.endpoint_url, region_name=region
            )
        return self._client

    def collect(self, now: float | None = None) -> list[dict[str, Any]]:
        """The metric data since the previous call (which it marks as published)."""
        now = time.monotonic() if now is None else now
        minutes = max(now - self._last, 0.0) / 60.0
        self._last = now
        live: dict[tuple[str, str], float] = defaultdict(float)
        busy: dict[str, float] = defaultdict(float)
        for family in self.metrics.runners.collect():
            for sample in family.samples:
                team, pool, state = (sample.labels[k] for k in ("team", "pool", "state"))
                scale_set = self.pools.get((team, pool))
                if scale_set is None or not self.held(scale_set) or state not in LIVE_STATES:
                    continue
                live[(team, pool)] += sample.value
                if state == "busy":
                    busy[team] += sample.value
        teams = sorted({team for team, _ in self.pools})
        held_teams = {team for (team, pool), name in self.pools.items() if self.held(name)}
        data: list[dict[str, Any]] = []
        for team in teams:
            if team not in held_teams:
                continue
            total = sum(v for (t, _), v in live.items() if t == team)
            data += [
                _datum("Runners", total, "Count", Team=team),
                _datum("BusyRunners", busy[team], "Count", Team=team),
                _datum("RunnerMinutes", total * minutes, "None", Team=team),
            ]
        for (team, pool), value in sorted(live.items()):
            data.append(_datum("Runners", value, "Count", Team=team, Pool=pool))
        finished: dict[tuple[str, str], float] = defaultdict(float)
        for family in self.metrics.jobs_completed.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = (sample.labels["team"], sample.labels["pool"], sample.labels["conclusion"])
                delta = sample.value - self._completed.get(key, 0.0)
                self._completed[key] = sample.value
                if delta > 0:
                    finished[(key[0], key[2])] += delta
        per_team: dict[str, float] = defaultdict(float)
        for (team, conclusion), value in sorted(finished.items()):
            per_team[team] += value
            data.append(_datum("JobsCompleted", value, "Count", Team=team, Conclusion=conclusion))
        for team, value in sorted(per_team.items()):
            data.append(_datum("JobsCompleted", value, "Count", Team=team))
        return data

    def publish_once(self) -> int:
        """Collect and send; returns the values sent. A failure is logged and the values
        are lost (the next period carries its own), never raised into the provisioner."""
        data = self.collect()
        try:
            for start in range(0, len(data), BATCH):
                self.client().put_metric_data(
                    Namespace=self.namespace, MetricData=data[start : start + BATCH]
                )
                self.published += 1
        except Exception as error:  # botocore's errors, a missing region or credentials
            log.warning("publishing to CloudWatch failed: %s", error)
            return 0
        return len(data)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.publish_once)

    async def flush(self) -> None:
        """One last publish (on SIGTERM), so the minutes since the last period count."""
        await asyncio.to_thread(self.publish_once)


def _datum(name: str, value: float, unit: str, **dimensions: str) -> dict[str, Any]:
    return {
        "MetricName": name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
        "Value": float(value),
        "Unit": unit,
    }
