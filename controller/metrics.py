"""Prometheus metrics of the controller. Names are a contract with the alerts and the
dashboard (components/observability.py, docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (tests build many apps, each with its own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "runner_platform_webhook_deliveries_total",
            "Webhook deliveries by instance, event and decision.",
            ["instance", "event", "decision"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "runner_platform_webhook_seconds",
            "Time to answer a webhook delivery.",
            ["instance"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
        )
        self.queue_depth = Gauge(
            "runner_platform_queue_depth",
            "Jobs waiting in each scale set's stream.",
            ["scale_set"],
            registry=r,
        )
        self.decisions = Counter(
            "runner_platform_decisions_total",
            "Team verifier decisions.",
            ["decision", "scale_set"],
            registry=r,
        )
        self.cache = Counter(
            "runner_platform_membership_cache_total",
            "Membership lookups by outcome: hit, miss, revalidated (304).",
            ["result"],
            registry=r,
        )
        self.github_calls = Counter(
            "runner_platform_github_api_calls_total",
            "GitHub API calls by endpoint and status.",
            ["instance", "endpoint", "status"],
            registry=r,
        )
        self.github_budget = Gauge(
            "runner_platform_github_rate_limit_remaining",
            "Primary rate-limit budget left, per instance and App.",
            ["instance", "app"],
            registry=r,
        )
        self.pod_start = Histogram(
            "runner_platform_pod_start_seconds",
            "From job queued to runner pod running.",
            ["team", "pool"],
            registry=r,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
        )
        self.jobs_completed = Counter(
            "runner_platform_jobs_completed_total",
            "Completed jobs by conclusion.",
            ["team", "pool", "conclusion"],
            registry=r,
        )
        self.runners = Gauge(
            "runner_platform_runners",
            "Runners per team, pool and state.",
            ["team", "pool", "state"],
            registry=r,
        )
