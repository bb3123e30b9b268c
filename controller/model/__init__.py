"""The platform's one schema, split by concern: GitHub instances, pools, teams, cluster
settings, and the whole spec.

The controller owns this package (it runs in the cluster and never imports Pulumi); the
Pulumi program imports it to validate stack config once, at the edge. Every model is
frozen and forbids unknown keys, so a typo in stack config is an error, not a silent
default. Cross-field rules live in :class:`PlatformSpec` and report the exact path of
the offending value (``teams[2].pools[0]: unknown pool 'gpu'``).

Values known only after deployment (role ARNs, the Redis endpoint) are not part of the
spec: they travel in :class:`RuntimeFacts`.
"""

from __future__ import annotations

from controller.model.base import (
    CILIUM_STARTUP_TAINT,
    GITHUB_CLOUD_API,
    GITHUB_CLOUD_HOST,
    GITHUB_CLOUD_ISSUER,
    GPU_TAINT_KEY,
    MAX_RUNNERS_PER_NODE,
    MAX_SESSION_SECONDS,
    MAX_VAULT_TTL_SECONDS,
    POOL_LABEL,
    POOL_TAINT_KEY,
    RUNNER_PRIORITY_CLASS,
    RUNNER_SERVICE_ACCOUNT,
    Cidr,
    DnsLabel,
    Duration,
    Frozen,
    GitHubLogin,
    HostName,
    PolicyArn,
    Quantity,
    RunnerLabel,
    TeamSlug,
)
from controller.model.cluster import (
    ClusterSettings,
    ControllerSettings,
    EndpointSettings,
    ObservabilitySettings,
    RedisSettings,
    SystemNodes,
    VaultSettings,
    VpcSettings,
)
from controller.model.containers import (
    BUILDKIT_PORT,
    CONTAINER_MODE_LABEL,
    HOOK_MODES,
    HOOK_PODS_PER_RUNNER,
    HOOKS_CONFIG_MAP,
    HOOKS_DIR,
    HOOKS_ENTRY_KEY,
    HOOKS_RUNNER_LABEL,
    JOB_CONTAINER_TEMPLATE,
    JOB_POD_APP,
    RUNNER_SUBDOMAIN,
    STOCK_HOOKS,
    ContainerMode,
    ToolCache,
    WorkVolume,
    job_template_key,
)
from controller.model.instances import GitHubApp, GitHubInstance, InlineSafeSecretRef, SecretRef
from controller.model.pools import Consolidation, Pool, PoolLimits, Taint
from controller.model.spec import (
    PlatformSpec,
    RuntimeFacts,
    ScaleSet,
    SpecError,
    describe_errors,
    load_spec,
    load_spec_json,
)
from controller.model.teams import Repository, RunnerResources, Team, is_org_wide, repo_org

__all__ = [
    "BUILDKIT_PORT",
    "CILIUM_STARTUP_TAINT",
    "CONTAINER_MODE_LABEL",
    "GITHUB_CLOUD_API",
    "GITHUB_CLOUD_HOST",
    "GITHUB_CLOUD_ISSUER",
    "GPU_TAINT_KEY",
    "HOOKS_CONFIG_MAP",
    "HOOKS_DIR",
    "HOOKS_ENTRY_KEY",
    "HOOKS_RUNNER_LABEL",
    "HOOK_MODES",
    "HOOK_PODS_PER_RUNNER",
    "JOB_CONTAINER_TEMPLATE",
    "JOB_POD_APP",
    "MAX_RUNNERS_PER_NODE",
    "MAX_SESSION_SECONDS",
    "MAX_VAULT_TTL_SECONDS",
    "POOL_LABEL",
    "POOL_TAINT_KEY",
    "RUNNER_PRIORITY_CLASS",
    "RUNNER_SERVICE_ACCOUNT",
    "RUNNER_SUBDOMAIN",
    "STOCK_HOOKS",
    "Cidr",
    "ClusterSettings",
    "Consolidation",
    "ContainerMode",
    "ControllerSettings",
    "DnsLabel",
    "Duration",
    "EndpointSettings",
    "Frozen",
    "GitHubApp",
    "GitHubInstance",
    "GitHubLogin",
    "HostName",
    "InlineSafeSecretRef",
    "ObservabilitySettings",
    "PlatformSpec",
    "PolicyArn",
    "Pool",
    "PoolLimits",
    "Quantity",
    "RedisSettings",
    "Repository",
    "RunnerLabel",
    "RunnerResources",
    "RuntimeFacts",
    "ScaleSet",
    "SecretRef",
    "SpecError",
    "SystemNodes",
    "Taint",
    "Team",
    "TeamSlug",
    "ToolCache",
    "VaultSettings",
    "VpcSettings",
    "WorkVolume",
    "describe_errors",
    "is_org_wide",
    "job_template_key",
    "load_spec",
    "load_spec_json",
    "repo_org",
]
