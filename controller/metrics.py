"""Prometheus metrics of the controller. Names are a contract with the alerts and the
dashboard (components/observability.py, docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.version import PYTHON_VERSION, VERSION

# Job latencies from queued to created, running and busy: from a warm idle runner (under
# a second) to a cold GPU node (minutes). histogram_quantile interpolates linearly inside
# a bucket, so P50, P95 and P99 are only as good as the bucket around them: steps of at
# most 1.7x from 2 s to 10 min (where pod starts fall), 2-2.5x below. 22 buckets per
# (team, pool) keep the series count modest.
JOB_LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300,
    420, 600,
)  # fmt: skip
# One Kubernetes API request: milliseconds when healthy, seconds when throttled.
KUBE_API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One registry per process (tests build many apps, each with its own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Always 1; the labels say what runs (the Prometheus convention for build info).
        self.build_info = Gauge(
            "runner_platform_build_info",
            "The controller's version and Python version.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(VERSION, PYTHON_VERSION).set(1)
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
        self.pod_created = Histogram(
            "runner_platform_pod_created_seconds",
            "From job queued to runner pod created.",
            ["team", "pool"],
            registry=r,
            buckets=JOB_LATENCY_BUCKETS,
        )
        self.pod_start = Histogram(
            "runner_platform_pod_start_seconds",
            "From job queued to runner pod running.",
            ["team", "pool"],
            registry=r,
            buckets=JOB_LATENCY_BUCKETS,
        )
        self.queue_time = Histogram(
            "runner_platform_queue_time_seconds",
            "From job queued to a runner running it (in_progress).",
            ["team", "pool"],
            registry=r,
            buckets=JOB_LATENCY_BUCKETS,
        )
        self.jobs_completed = Counter(
            "runner_platform_jobs_completed_total",
            "Completed jobs by conclusion.",
            ["team", "pool", "conclusion"],
            registry=r,
        )
        self.runners = Gauge(
            "runner_platform_runners",
            "Runners per team, pool and state (pending, idle, busy, finishing).",
            ["team", "pool", "state"],
            registry=r,
        )
        self.desired_runners = Gauge(
            "runner_platform_desired_runners",
            "Runners each scale set should have: queued jobs plus min idle, clamped.",
            ["scale_set"],
            registry=r,
        )
        self.actual_runners = Gauge(
            "runner_platform_actual_runners",
            "Live runner pods of each scale set.",
            ["scale_set"],
            registry=r,
        )
        self.fair_share = Gauge(
            "runner_platform_fair_share_entitlement",
            "Runners each team is entitled to on a pool at its limits (pools[].shares).",
            ["pool", "team"],
            registry=r,
        )
        self.jit_configs = Counter(
            "runner_platform_jit_configs_total",
            "JIT runner configs requested from GitHub, by instance and result.",
            ["instance", "result"],
            registry=r,
        )
        self.reaped = Counter(
            "runner_platform_reaped_total",
            "Orphans removed by the reaper, by reason and kind (pod, secret, runner).",
            ["reason", "kind"],
            registry=r,
        )
        self.kube_api_seconds = Histogram(
            "runner_platform_kube_api_seconds",
            "Kubernetes API requests by verb and resource.",
            ["verb", "resource"],
            registry=r,
            buckets=KUBE_API_BUCKETS,
        )
        self.reconciler_recovered = Counter(
            "runner_platform_reconciler_recovered_total",
            "Work the lost-webhook reconciler recovered, by instance and kind: delivery "
            "(a failed delivery redelivered), job (a queued job GitHub has and the "
            "platform had not, fed in as its webhook would be) or event (a start or end "
            "of a job the platform had, fed in likewise).",
            ["instance", "kind"],
            registry=r,
        )
        self.reconciler_passes = Counter(
            "runner_platform_reconciler_passes_total",
            "Reconciler passes by instance and result: ok, partial (repositories skipped), "
            "budget (stopped at its share of the API budget), lock-lost, rate-limited, "
            "unavailable, error.",
            ["instance", "result"],
            registry=r,
        )
        self.provision_passes = Counter(
            "runner_platform_provision_passes_total",
            "Provisioner passes over a scale set this replica holds, by result: ok, error. "
            "One that stops growing while the replica holds the scale set is a stalled one.",
            ["scale_set", "result"],
            registry=r,
        )
        self.kube_api_errors = Counter(
            "runner_platform_kube_api_errors_total",
            "Failed Kubernetes API requests by verb, resource and status code.",
            ["verb", "resource", "code"],
            registry=r,
        )
