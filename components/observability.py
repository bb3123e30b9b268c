"""Alerts, the Grafana dashboard and the controller's CloudWatch permission.

Metric names here are a contract with the controller (see docs/metrics.md): the
controller exports ``runner_platform_*``; Karpenter and kube-state-metrics export the rest.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import iam_documents
from components.k8s_objects import Manifest, declare
from controller.model import PlatformSpec

POD_START = "runner_platform_pod_start_seconds"
QUEUE_DEPTH = "runner_platform_queue_depth"
RUNNERS = "runner_platform_runners"
JOBS_COMPLETED = "runner_platform_jobs_completed_total"
DECISIONS = "runner_platform_decisions_total"
GITHUB_BUDGET = "runner_platform_github_rate_limit_remaining"


def alert_rules(spec: PlatformSpec) -> list[dict[str, Any]]:
    """The four alerts of DESIGN.md §3, thresholds from the spec, and the router's
    refusal of a full queue."""
    obs = spec.observability
    return [
        {
            # Per pod, from kube-state-metrics: "for" then means this one pod stayed
            # Pending. The controller's runners{state="pending"} gauge counts per scale
            # set, so it stays above zero under a steady stream of pods that are each
            # Pending for seconds, and cannot tell that from one stuck pod.
            "alert": "RunnerPodPendingTooLong",
            "expr": 'max by (namespace, pod) (kube_pod_status_phase{phase="Pending", '
            'namespace=~"runners-.*"}) > 0',
            "for": f"{obs.pending_pod_minutes}m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Runner pod {{ $labels.namespace }}/{{ $labels.pod }} has been "
                f"Pending for more than {obs.pending_pod_minutes} minutes",
            },
        },
        {
            "alert": "NodeProvisioningFailing",
            "expr": "sum by (error) (increase(karpenter_cloudprovider_errors_total"
            '{method="Create"}[10m])) > 0',
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "Karpenter cannot launch nodes: {{ $labels.error }}"},
        },
        {
            "alert": "SpotInterruptionRateHigh",
            "expr": "sum(increase(karpenter_interruption_received_messages_total"
            '{message_type="spot_interrupted"}[1h])) / clamp_min(max_over_time('
            'count(karpenter_nodes_allocatable{resource_type="cpu", '
            'capacity_type="spot"})[1h:5m]), 1) > '
            f"{obs.spot_interruption_rate}",
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "More than "
                f"{obs.spot_interruption_rate:.0%} of spot nodes interrupted in an hour"
            },
        },
        {
            # The router refuses rather than drop queued jobs (controller/ingest/store.py):
            # a refusal means a scale set's backlog is at its bound and jobs wait on
            # GitHub's redelivery.
            "alert": "RunnerQueueFull",
            "expr": "sum by (instance) (increase(runner_platform_webhook_deliveries_total"
            '{decision="queue-full"}[5m])) > 0',
            "for": "1m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Webhooks refused on {{ $labels.instance }}: a scale set's queue "
                "is full (nothing is dropped; redeliver once it drains)"
            },
        },
        {
            "alert": "JobFailureRateHigh",
            "expr": f'sum by (team) (rate({JOBS_COMPLETED}{{conclusion="failure"}}[30m])) / '
            f"clamp_min(sum by (team) (rate({JOBS_COMPLETED}[30m])), 1e-9) > "
            f"{obs.job_failure_rate}",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Team {{ $labels.team }}: more than "
                f"{obs.job_failure_rate:.0%} of jobs fail"
            },
        },
    ]


def prometheus_rule(spec: PlatformSpec) -> Manifest:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "runner-platform", "namespace": spec.observability.namespace},
        "spec": {"groups": [{"name": "runner-platform", "rules": alert_rules(spec)}]},
    }


def _panel(index: int, title: str, exprs: dict[str, str], unit: str) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
            for n, (legend, expr) in enumerate(exprs.items())
        ],
    }


def dashboard() -> dict[str, Any]:
    """Pod start P50/P95/P99, queue depth, runners per team, job outcomes, API budget."""
    quantile = "histogram_quantile({q}, sum by (le) (rate({m}_bucket[5m])))"
    panels = [
        (
            "Runner pod start latency",
            {f"P{int(q * 100)}": quantile.format(q=q, m=POD_START) for q in (0.5, 0.95, 0.99)},
            "s",
        ),
        (
            "Queue depth per scale set",
            {"{{scale_set}}": f"sum by (scale_set) ({QUEUE_DEPTH})"},
            "short",
        ),
        (
            "Runners per team and state",
            {"{{team}} {{state}}": f"sum by (team, state) ({RUNNERS})"},
            "short",
        ),
        (
            "Job outcomes per team",
            {"{{team}} {{conclusion}}": f"sum by (team, conclusion) (rate({JOBS_COMPLETED}[5m]))"},
            "ops",
        ),
        (
            "Verifier decisions",
            {"{{decision}}": f"sum by (decision) (rate({DECISIONS}[5m]))"},
            "ops",
        ),
        (
            "GitHub API budget remaining",
            {"{{instance}}": f"min by (instance) ({GITHUB_BUDGET})"},
            "short",
        ),
        (
            "Nodes per pool",
            {
                "{{nodepool}}": "count by (nodepool) (karpenter_nodes_allocatable"
                '{resource_type="cpu"})'
            },
            "short",
        ),
    ]
    return {
        "title": "runner-platform",
        "uid": "runner-platform",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(i, title, exprs, unit) for i, (title, exprs, unit) in enumerate(panels)],
    }


def dashboard_config_map(spec: PlatformSpec) -> Manifest:
    """Picked up by the Grafana sidecar, which loads ConfigMaps labelled grafana_dashboard."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "runner-platform-dashboard",
            "namespace": spec.observability.namespace,
            "labels": {"grafana_dashboard": "1"},
        },
        "data": {"runner-platform.json": json.dumps(dashboard(), indent=2, sort_keys=True)},
    }


class Observability(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        controller_role_name: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:observability:Observability", name, None, opts)
        aws.iam.RolePolicy(
            f"{name}-cloudwatch",
            role=controller_role_name,
            policy=json.dumps(
                iam_documents.cloudwatch_metrics_policy(spec.controller.cloudwatch_namespace)
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        if spec.observability.prometheus_rules:
            declare(prometheus_rule(spec), k8s_opts)
        if spec.observability.grafana_dashboard:
            declare(dashboard_config_map(spec), k8s_opts)
        self.register_outputs({})
