"""The controller's settings: the one place that reads the environment.

Every setting has a default and a one-line description. The platform spec and the
runtime facts are files (the ConfigMap mounted by the deployment); secrets are files
under ``secrets_dir/<secret name>/<key>``, never environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _from_env(cls: type[T], names: dict[str, str], env: dict[str, str] | None) -> T:
    """Build a settings dataclass from the variables in ``names``, typed like its defaults."""
    source = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        raw = source.get(names[field.name])
        if raw is None or (raw == "" and field.type not in ("Path | None",)):
            continue
        default = getattr(cls, field.name)
        try:
            if isinstance(default, bool):
                values[field.name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[field.name] = int(raw)
            elif field.name.endswith(("_path", "_dir")):
                values[field.name] = Path(raw) if raw else None
            else:
                values[field.name] = raw
        except ValueError:
            raise ValueError(f"{names[field.name]}={raw!r} is not a valid value") from None
    return cls(**values)


@dataclass(frozen=True)
class Settings:
    spec_path: Path = Path("/etc/runner-platform/spec.json")
    """Validated PlatformSpec JSON (RUNNER_PLATFORM_SPEC)."""
    runtime_path: Path | None = Path("/etc/runner-platform/runtime.json")
    """RuntimeFacts JSON: role ARNs, Redis endpoint (RUNNER_PLATFORM_RUNTIME)."""
    secrets_dir: Path = Path("/var/run/secrets/runner-platform")
    """Mounted Secrets, one folder per Secret (RUNNER_PLATFORM_SECRETS_DIR)."""
    redis_url: str | None = None
    """Overrides the Redis endpoint of the runtime facts (RUNNER_PLATFORM_REDIS_URL)."""
    host: str = "0.0.0.0"
    """Address the webhook server listens on (RUNNER_PLATFORM_HOST)."""
    port: int = 8080
    """Port of webhooks, health and metrics (RUNNER_PLATFORM_PORT)."""
    member_ttl_seconds: int = 300
    """How long a positive team-membership answer is cached (RUNNER_PLATFORM_MEMBER_TTL)."""
    negative_ttl_seconds: int = 60
    """How long a negative answer is cached (RUNNER_PLATFORM_NEGATIVE_TTL)."""
    dedupe_ttl_seconds: int = 8 * 24 * 3600
    """How long delivery ids are remembered; GHES redelivers 7 days back (…_DEDUPE_TTL)."""
    queue_bound: int = 100_000
    """Jobs waiting per scale set before webhooks are answered 503 (…_QUEUE_BOUND)."""
    audit_max_records: int = 1_000_000
    """Approximate bound on the audit stream (RUNNER_PLATFORM_AUDIT_MAX)."""
    cancel_denied_runs: bool = True
    """Cancel the workflow run of a denied job through the API (…_CANCEL_DENIED). On by
    default: a denied job left queued on GitHub is handed to the next idle runner of the
    team's group whose labels match, i.e. one started for a member's job."""
    log_level: str = "INFO"
    """Python log level (RUNNER_PLATFORM_LOG_LEVEL)."""
    github_api_urls: str = ""
    """Per-instance GitHub API URL overrides, ``name=url,…``: a GHES behind a proxy or on
    another port, or the local emulator (RUNNER_PLATFORM_GITHUB_API_URLS)."""
    github_points_per_minute: int = 900
    """Secondary-limit points each App may spend a minute; 0 when the instance has no
    rate limits (GHES default) (RUNNER_PLATFORM_GITHUB_POINTS)."""
    kubeconfig_path: Path | None = None
    """Kubeconfig of the cluster; unset: the pod's service account (…_KUBECONFIG)."""
    kube_qps: int = 300
    """Kubernetes requests per second, sustained (RUNNER_PLATFORM_KUBE_QPS). Each runner
    is two writes (Pod, Secret) and only the Lease holder writes; 429s are retried."""
    kube_burst: int = 600
    """Kubernetes requests allowed at once above the QPS (RUNNER_PLATFORM_KUBE_BURST)."""
    write_concurrency: int = 16
    """Runners being created at once: JIT call, pod, Secret (RUNNER_PLATFORM_WRITES)."""
    resync_seconds: int = 5
    """Every scale set is reconciled at least this often (RUNNER_PLATFORM_RESYNC)."""
    idle_grace_seconds: int = 60
    """A surplus idle runner is retired only after this long (RUNNER_PLATFORM_IDLE_GRACE)."""
    pending_timeout_seconds: int = 900
    """A runner pod Pending this long is reaped: its node never came (…_PENDING_TIMEOUT)."""
    startup_grace_seconds: int = 300
    """A running pod whose runner is not online after this is reaped (…_STARTUP_GRACE)."""
    reap_seconds: int = 60
    """How often the reaper looks for orphans (RUNNER_PLATFORM_REAP_INTERVAL)."""
    provision_metrics_port: int = 9102
    """Port of the provisioner's /metrics (RUNNER_PLATFORM_PROVISION_METRICS_PORT)."""
    reconcile_seconds: int = 60
    """How often the lost-webhook reconciler of each GitHub instance runs a pass, in
    ``serve``; 0 turns it off (RUNNER_PLATFORM_RECONCILE_SECONDS)."""
    reconcile_max_calls: int = 200
    """GitHub calls that count against the rate limit one pass may make; a 304 is free
    (RUNNER_PLATFORM_RECONCILE_MAX_CALLS)."""
    reconcile_budget_percent: int = 10
    """Share of the instance's Apps' hourly primary limit the reconciler may spend in an
    hour (RUNNER_PLATFORM_RECONCILE_BUDGET_PERCENT)."""
    reconcile_grace_seconds: int = 30
    """A queued job younger than this is left to its webhook (…_RECONCILE_GRACE)."""
    reconcile_lookback_seconds: int = 6 * 3600
    """How far back the first pass reads hook deliveries; later passes read from the
    previous one on. GitHub keeps them 3 days, GHES 7 (…_RECONCILE_LOOKBACK)."""
    reconcile_lock_seconds: int = 30
    """Lifetime of the Redis lock that lets one replica's reconciler act per instance;
    renewed every third of it (RUNNER_PLATFORM_RECONCILE_LOCK)."""
    public_url: str = ""
    """``scheme://host[:port]`` where GitHub reaches the router, when not the Ingress's
    ``https://<webhook_host>``: the reconciler redelivers only hooks that point exactly
    there (RUNNER_PLATFORM_PUBLIC_URL)."""
    lease_seconds: int = 15
    """Duration of the per-scale-set and member Leases: a dead replica's scale sets move
    after this (RUNNER_PLATFORM_LEASE_SECONDS)."""
    lease_renew_seconds: int = 3
    """How often a replica renews its Leases and looks at its peers' (…_LEASE_RENEW)."""
    cloudwatch_namespace: str = ""
    """Publish per-team runner counts, runner minutes and completed jobs to this CloudWatch
    namespace from ``provision`` (controller/cloudwatch.py); empty: off. Credentials from
    boto3's default chain (IRSA), the region from AWS_REGION
    (RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE)."""
    cloudwatch_seconds: int = 60
    """How often those figures are published (RUNNER_PLATFORM_CLOUDWATCH_INTERVAL)."""
    cloudwatch_endpoint: str = ""
    """Another CloudWatch endpoint: a VPC endpoint, or moto locally (…_CLOUDWATCH_ENDPOINT)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        names = {
            "spec_path": "RUNNER_PLATFORM_SPEC",
            "runtime_path": "RUNNER_PLATFORM_RUNTIME",
            "secrets_dir": "RUNNER_PLATFORM_SECRETS_DIR",
            "redis_url": "RUNNER_PLATFORM_REDIS_URL",
            "host": "RUNNER_PLATFORM_HOST",
            "port": "RUNNER_PLATFORM_PORT",
            "member_ttl_seconds": "RUNNER_PLATFORM_MEMBER_TTL",
            "negative_ttl_seconds": "RUNNER_PLATFORM_NEGATIVE_TTL",
            "dedupe_ttl_seconds": "RUNNER_PLATFORM_DEDUPE_TTL",
            "queue_bound": "RUNNER_PLATFORM_QUEUE_BOUND",
            "audit_max_records": "RUNNER_PLATFORM_AUDIT_MAX",
            "cancel_denied_runs": "RUNNER_PLATFORM_CANCEL_DENIED",
            "log_level": "RUNNER_PLATFORM_LOG_LEVEL",
            "github_api_urls": "RUNNER_PLATFORM_GITHUB_API_URLS",
            "github_points_per_minute": "RUNNER_PLATFORM_GITHUB_POINTS",
            "kubeconfig_path": "RUNNER_PLATFORM_KUBECONFIG",
            "kube_qps": "RUNNER_PLATFORM_KUBE_QPS",
            "kube_burst": "RUNNER_PLATFORM_KUBE_BURST",
            "write_concurrency": "RUNNER_PLATFORM_WRITES",
            "resync_seconds": "RUNNER_PLATFORM_RESYNC",
            "idle_grace_seconds": "RUNNER_PLATFORM_IDLE_GRACE",
            "pending_timeout_seconds": "RUNNER_PLATFORM_PENDING_TIMEOUT",
            "startup_grace_seconds": "RUNNER_PLATFORM_STARTUP_GRACE",
            "reap_seconds": "RUNNER_PLATFORM_REAP_INTERVAL",
            "provision_metrics_port": "RUNNER_PLATFORM_PROVISION_METRICS_PORT",
            "reconcile_seconds": "RUNNER_PLATFORM_RECONCILE_SECONDS",
            "reconcile_max_calls": "RUNNER_PLATFORM_RECONCILE_MAX_CALLS",
            "reconcile_budget_percent": "RUNNER_PLATFORM_RECONCILE_BUDGET_PERCENT",
            "reconcile_grace_seconds": "RUNNER_PLATFORM_RECONCILE_GRACE",
            "reconcile_lookback_seconds": "RUNNER_PLATFORM_RECONCILE_LOOKBACK",
            "reconcile_lock_seconds": "RUNNER_PLATFORM_RECONCILE_LOCK",
            "public_url": "RUNNER_PLATFORM_PUBLIC_URL",
            "lease_seconds": "RUNNER_PLATFORM_LEASE_SECONDS",
            "lease_renew_seconds": "RUNNER_PLATFORM_LEASE_RENEW",
            "cloudwatch_namespace": "RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE",
            "cloudwatch_seconds": "RUNNER_PLATFORM_CLOUDWATCH_INTERVAL",
            "cloudwatch_endpoint": "RUNNER_PLATFORM_CLOUDWATCH_ENDPOINT",
        }
        return _from_env(cls, names, env)

    def api_urls(self) -> dict[str, str]:
        """``github_api_urls`` as a map; a malformed entry is an error that names it."""
        urls: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.github_api_urls.split(","))):
            name, _, url = item.partition("=")
            if not name or not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"RUNNER_PLATFORM_GITHUB_API_URLS: '{item}' is not 'instance=http(s)://…'"
                )
            urls[name.strip()] = url.strip().rstrip("/")
        return urls

    def secret(self, name: str, key: str) -> bytes:
        """A mounted Secret's value; a missing one is an error that names its path."""
        path = self.secrets_dir / name / key
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            raise MissingSecret(f"secret {name}/{key} is not mounted at {path}") from None


class MissingSecret(RuntimeError):
    pass


@dataclass(frozen=True)
class JobSettings:
    """What the credential helper reads in a runner pod. The Actions runtime sets the first
    two for a job with ``permissions: id-token: write``; the platform sets the rest."""

    token_request_url: str = ""
    """ACTIONS_ID_TOKEN_REQUEST_URL: where the job asks for its OIDC token."""
    token_request_token: str = ""
    """ACTIONS_ID_TOKEN_REQUEST_TOKEN: the bearer for that request."""
    aws_role_arn: str = ""
    """RUNNER_PLATFORM_AWS_ROLE_ARN: the team's github-runner-<team>-role."""
    aws_region: str = "us-east-1"
    """AWS_REGION: the STS region."""
    sts_endpoint: str | None = None
    """RUNNER_PLATFORM_STS_ENDPOINT: another STS endpoint (a VPC endpoint, or tests)."""
    vault_addr: str = ""
    """VAULT_ADDR: the Vault or OpenBao address."""
    vault_mount: str = ""
    """RUNNER_PLATFORM_VAULT_MOUNT: the instance's JWT mount (jwt-<instance>)."""
    vault_role: str = ""
    """RUNNER_PLATFORM_VAULT_ROLE: the team's Vault role."""
    vault_audience: str = "runner-platform-vault"
    """RUNNER_PLATFORM_VAULT_AUDIENCE: the audience Vault's role binds."""
    runner_temp_dir: Path | None = None
    """RUNNER_TEMP: the runner's per-job temporary folder, emptied before and after each job
    (never the workspace, whose files a job may upload, cache or commit)."""
    github_actions: bool = False
    """GITHUB_ACTIONS: "true" in an Actions job, where ``::add-mask::`` hides a value."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> JobSettings:
        names = {
            "token_request_url": "ACTIONS_ID_TOKEN_REQUEST_URL",
            "token_request_token": "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "aws_role_arn": "RUNNER_PLATFORM_AWS_ROLE_ARN",
            "aws_region": "AWS_REGION",
            "sts_endpoint": "RUNNER_PLATFORM_STS_ENDPOINT",
            "vault_addr": "VAULT_ADDR",
            "vault_mount": "RUNNER_PLATFORM_VAULT_MOUNT",
            "vault_role": "RUNNER_PLATFORM_VAULT_ROLE",
            "vault_audience": "RUNNER_PLATFORM_VAULT_AUDIENCE",
            "runner_temp_dir": "RUNNER_TEMP",
            "github_actions": "GITHUB_ACTIONS",
        }
        return _from_env(cls, names, env)
