"""Every metric an alert or a dashboard panel queries exists: either the controller
exposes it (controller.metrics) or a component the platform relies on exports it.

A renamed or misspelt metric makes an alert silently never fire and a panel silently
empty; Prometheus does not complain about a query for a series that does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from components import observability
from controller.metrics import Metrics
from controller.model import PlatformSpec

# Metrics the alerts and the dashboard take from elsewhere, each by exact name. A name
# here must be queried somewhere (see the test below), so the list cannot go stale.
EXTERNAL_METRICS = {
    # kube-state-metrics (shipped with kube-prometheus-stack, whose Prometheus Operator
    # CRDs the PrometheusRule needs): one series per pod and phase.
    "kube_pod_status_phase",
    # Karpenter's controller (/metrics on its Helm release): CloudProvider call errors,
    # labelled by method (Create is a node launch) and error.
    "karpenter_cloudprovider_errors_total",
    # Karpenter: SQS interruption messages by message_type (spot_interrupted, ...).
    "karpenter_interruption_received_messages_total",
    # Karpenter: allocatable resources per node, labelled by nodepool and capacity_type.
    "karpenter_nodes_allocatable",
}

# PromQL's functions and aggregation operators (Prometheus 3): an identifier followed by
# "(" must be one of these.
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
    changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week
    day_of_year days_in_month deg delta deriv double_exponential_smoothing exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
    histogram_stdvar histogram_sum holt_winters hour idelta increase info irate
    label_join label_replace last_over_time ln log10 log2 mad_over_time max_over_time
    min_over_time minute month pi predict_linear present_over_time quantile_over_time
    rad rate resets round scalar sgn sin sinh sort sort_by_label sort_by_label_desc
    sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time
    timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    limitk limit_ratio
    """.split()
)
# Keywords that are not metric names wherever they stand.
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right bool and or unless atan2 offset".split()
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?[0-9smhdwy]+", re.IGNORECASE)
_TOKENS = re.compile(
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label names, strings, durations, functions
    and keywords removed)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    for token in _TOKENS.finditer(text):
        name = token.group("name")
        if name is None:
            continue
        if token.group("call"):
            if name.lower() not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {name!r} in {expr!r}")
            continue
        if name.lower() in KEYWORDS or name.lower() in ("inf", "nan"):
            continue
        names.add(name)
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry's metrics are scraped as, children or not yet.

    A labelled metric has no samples until a child exists, so names come from each
    family's type, the way the Prometheus text format spells them.
    """
    return {
        family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]
    }


def _expressions(spec: PlatformSpec) -> dict[str, str]:
    """Every PromQL expression the observability component ships, keyed by where."""
    rule = observability.prometheus_rule(spec)
    exprs = {
        f"alert {r['alert']}": r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]
    }
    panels: Iterable[dict[str, Any]] = observability.dashboard()["panels"]
    for panel in panels:
        for target in panel["targets"]:
            exprs[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return exprs


def unknown_metrics(exprs: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    found = {where: metric_names(expr) - known for where, expr in exprs.items()}
    return {where: names for where, names in found.items() if names}


def test_exposed_names_match_what_the_client_really_serves() -> None:
    """The type-to-suffix table above agrees with prometheus_client's own exposition."""
    registry = CollectorRegistry()
    Counter("c_total", "c", registry=registry).inc()
    Gauge("g", "g", registry=registry).set(1)
    Histogram("h_seconds", "h", registry=registry, buckets=(1,)).observe(1)
    served = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    assert exposed_names(registry) == served


def test_every_queried_metric_exists(dev_spec: PlatformSpec) -> None:
    known = exposed_names(Metrics().registry) | EXTERNAL_METRICS
    exprs = _expressions(dev_spec)
    assert len(exprs) >= 4 + 7  # the four alerts and at least one query per panel
    assert unknown_metrics(exprs, known) == {}


def test_every_external_metric_is_still_queried(dev_spec: PlatformSpec) -> None:
    used = set().union(*(metric_names(e) for e in _expressions(dev_spec).values()))
    assert EXTERNAL_METRICS - used == set()


def test_the_provisioner_contract_is_exposed() -> None:
    exposed = exposed_names(Metrics().registry)
    assert {
        "runner_platform_pod_created_seconds_bucket",
        "runner_platform_pod_start_seconds_bucket",
        "runner_platform_queue_time_seconds_bucket",
        "runner_platform_runners",
        "runner_platform_desired_runners",
        "runner_platform_actual_runners",
        "runner_platform_jit_configs_total",
        "runner_platform_reaped_total",
        "runner_platform_kube_api_seconds_bucket",
        "runner_platform_kube_api_errors_total",
        "runner_platform_jobs_completed_total",
        "runner_platform_provision_passes_total",
    } <= exposed


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "histogram_quantile(0.99, sum by (le) (rate(runner_platform_pod_start_seconds_bucket"
            "[5m])))",
            {"runner_platform_pod_start_seconds_bucket"},
        ),
        (
            'sum(increase(karpenter_interruption_received_messages_total{message_type="spot"}'
            '[1h])) / clamp_min(max_over_time(count(karpenter_nodes_allocatable{resource_type="cpu"'
            ', capacity_type="spot"})[1h:5m]), 1) > 0.1',
            {"karpenter_interruption_received_messages_total", "karpenter_nodes_allocatable"},
        ),
        (
            "a_total / on (team) group_left (pool) b offset 5m > bool 1e-9",
            {"a_total", "b"},
        ),
        ('{__name__="by_name", job="x"}', {"by_name"}),
        ("rate(x_total[$__rate_interval])", {"x_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_an_unknown_metric_is_reported(dev_spec: PlatformSpec) -> None:
    known = exposed_names(Metrics().registry) | EXTERNAL_METRICS
    exprs = {
        **_expressions(dev_spec),
        "bogus": 'sum by (team) (rate(runner_platform_jobs_failed_total{team="web"}[5m]))',
        "bare histogram": "runner_platform_pod_start_seconds > 60",
    }
    assert unknown_metrics(exprs, known) == {
        "bogus": {"runner_platform_jobs_failed_total"},
        "bare histogram": {"runner_platform_pod_start_seconds"},
    }


def test_an_unknown_function_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown PromQL function 'rates'"):
        metric_names("rates(x_total[5m])")
