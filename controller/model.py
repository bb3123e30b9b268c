"""The platform's one schema: GitHub instances, pools, teams and cluster settings.

The controller owns this module (it runs in the cluster and never imports Pulumi); the
Pulumi program imports it to validate stack config once, at the edge. Every model is
frozen and forbids unknown keys, so a typo in stack config is an error, not a silent
default. Cross-field rules live in :class:`PlatformSpec` and report the exact path of
the offending value (``teams[2].pools[0]: unknown pool 'gpu'``).

Values known only after deployment (role ARNs, the Redis endpoint) are not part of the
spec: they travel in :class:`RuntimeFacts`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from controller.quantity import parse_duration, parse_quantity

GITHUB_CLOUD_HOST = "github.com"
GITHUB_CLOUD_API = "https://api.github.com"
GITHUB_CLOUD_ISSUER = "https://token.actions.githubusercontent.com"
MAX_RUNNERS_PER_NODE = 10
MAX_SESSION_SECONDS = 3600
MAX_VAULT_TTL_SECONDS = 3600

# Scheduling conventions shared by the node pools (components) and the runner pods
# (the controller's provisioner): both halves must agree on them, so they live here.
POOL_LABEL = "pool"
POOL_TAINT_KEY = "runner-platform.io/pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
CILIUM_STARTUP_TAINT = "node.cilium.io/agent-not-ready"


# --- scalar checks -------------------------------------------------------------------


def _dns_label(value: str, max_length: int = 40) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > max_length:
        raise ValueError(
            f"'{value}' is not a DNS-1123 label: use lowercase letters, digits and '-', "
            f"start and end with a letter or digit, at most {max_length} characters"
        )
    return value


def _github_login(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", value):
        raise ValueError(f"'{value}' is not a GitHub organisation login")
    return value


def _team_slug(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,99}", value):
        raise ValueError(f"'{value}' is not a GitHub team slug (lowercase, digits, '-', '_', '.')")
    return value


def _runner_label(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise ValueError(f"'{value}' is not a valid runner label")
    return value


def _hostname(value: str) -> str:
    label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if not re.fullmatch(rf"{label}(\.{label})+", value):
        raise ValueError(f"'{value}' is not a host name (no scheme, no path: 'ghe.example.com')")
    return value


def _quantity(value: str) -> str:
    parse_quantity(value)
    return value


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a CIDR block ('10.0.0.0/16')") from None
    return value


def _policy_arn(value: str) -> str:
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+", value):
        raise ValueError(f"'{value}' is not an IAM policy ARN")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
GitHubLogin = Annotated[str, AfterValidator(_github_login)]
TeamSlug = Annotated[str, AfterValidator(_team_slug)]
RunnerLabel = Annotated[str, AfterValidator(_runner_label)]
HostName = Annotated[str, AfterValidator(_hostname)]
Quantity = Annotated[str, AfterValidator(_quantity)]
Duration = Annotated[str, AfterValidator(_duration)]
Cidr = Annotated[str, AfterValidator(_cidr)]
PolicyArn = Annotated[str, AfterValidator(_policy_arn)]


class Frozen(BaseModel):
    """Base for every spec value: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# --- GitHub --------------------------------------------------------------------------


def _refuse_inline_secret(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "must reference a Kubernetes Secret as {name, key}; the spec never holds a secret"
        )
    return value


class SecretRef(Frozen):
    """A key of a Kubernetes Secret in the controller's namespace."""

    name: DnsLabel
    """Name of the Kubernetes Secret in the controller namespace."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")
    """Key inside that Secret."""


InlineSafeSecretRef = Annotated[SecretRef, BeforeValidator(_refuse_inline_secret)]


class GitHubApp(Frozen):
    """A GitHub App the controller authenticates as; several may share one instance's load."""

    app_id: int = Field(ge=1)
    """The GitHub App's numeric id."""
    installations: dict[GitHubLogin, int] = Field(min_length=1)
    """Installation id of the App in each org (org login to id)."""
    private_key: InlineSafeSecretRef
    """Secret holding the App's private key (PEM)."""


class GitHubInstance(Frozen):
    """GitHub.com (``cloud``) or a GitHub Enterprise Server (``ghes``) the platform serves."""

    name: DnsLabel
    """Short name; used in webhook paths (/webhooks/github/<name>) and Vault mounts."""
    kind: Literal["cloud", "ghes"]
    """'cloud' for github.com, 'ghes' for GitHub Enterprise Server."""
    host: HostName | None = None
    """GHES host name (no scheme); leave out for cloud."""
    enterprise_slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    """github.com enterprise with a customised OIDC issuer (…/<slug>)."""
    orgs: tuple[GitHubLogin, ...] = Field(min_length=1)
    """Organisations served on this instance."""
    apps: tuple[GitHubApp, ...] = Field(min_length=1)
    """GitHub Apps the controller authenticates as; several share the API budget."""
    webhook_secret: InlineSafeSecretRef
    """Secret holding the webhook HMAC secret."""

    @model_validator(mode="after")
    def _host_matches_kind(self) -> GitHubInstance:
        if self.kind == "ghes" and self.host is None:
            raise ValueError("a 'ghes' instance needs 'host' (the server's host name)")
        if self.kind == "cloud" and self.host not in (None, GITHUB_CLOUD_HOST):
            raise ValueError("a 'cloud' instance is github.com; leave 'host' out")
        if self.kind == "ghes" and self.enterprise_slug is not None:
            raise ValueError("'enterprise_slug' customises the github.com issuer; not for 'ghes'")
        for index, app in enumerate(self.apps):
            for org in app.installations:
                if org not in self.orgs:
                    raise ValueError(f"apps[{index}].installations: '{org}' is not in 'orgs'")
        for org in self.orgs:
            if not any(org in app.installations for app in self.apps):
                raise ValueError(f"orgs: '{org}' has no App installation in 'apps'")
        return self

    @property
    def api_url(self) -> str:
        return GITHUB_CLOUD_API if self.kind == "cloud" else f"https://{self.host}/api/v3"

    @property
    def oidc_issuer(self) -> str:
        """The ``iss`` of this instance's Actions OIDC tokens (see REFERENCE.md)."""
        if self.kind == "ghes":
            return f"https://{self.host}/_services/token"
        if self.enterprise_slug:
            return f"{GITHUB_CLOUD_ISSUER}/{self.enterprise_slug}"
        return GITHUB_CLOUD_ISSUER


# --- pools ---------------------------------------------------------------------------


class Taint(Frozen):
    key: str = Field(pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]+$")
    """Taint key."""
    value: str = ""
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    """NoSchedule, PreferNoSchedule or NoExecute."""


class PoolLimits(Frozen):
    """The most a pool may grow to; Karpenter stops launching nodes beyond it."""

    cpu: int = Field(ge=1, description="Total vCPUs across the pool's nodes.")
    memory: Quantity = Field(description="Total memory across the pool's nodes ('4000Gi').")
    gpu: int | None = Field(default=None, ge=1, description="Total nvidia.com/gpu (GPU pools).")


class Consolidation(Frozen):
    policy: Literal["WhenEmpty", "WhenEmptyOrUnderutilized"] = "WhenEmptyOrUnderutilized"
    """When Karpenter may remove or replace nodes."""
    consolidate_after: Duration = "5m"
    """How long a node must be consolidatable first."""
    budget_nodes: str = Field(default="10%", pattern=r"^(\d+|\d+%)$")
    """Most nodes disrupted at once (count or percent)."""
    expire_after: Duration = "720h"
    """Maximum node lifetime before replacement."""


class Pool(Frozen):
    """A Karpenter node pool runner pods land on."""

    name: DnsLabel
    """Pool name; nodes carry the label pool=<name>."""
    kind: Literal["warm", "isolated", "custom"]
    """'warm' (shared warm-start), 'isolated' (one team), 'custom' (GPU, high-memory, NVMe)."""
    owner: DnsLabel | None = Field(
        default=None, description="The one team an 'isolated' pool belongs to."
    )
    profile: Literal["general", "gpu", "high-memory", "nvme"] = "general"
    """Hardware profile: general, gpu, high-memory or nvme."""
    instance_families: tuple[str, ...] = ()
    """EC2 instance families (m7i, g6, …); empty: chosen by profile."""
    instance_types: tuple[str, ...] = ()
    """Exact EC2 instance types, if families are too broad."""
    capacity_types: tuple[Literal["spot", "on-demand", "reserved"], ...] = ("spot", "on-demand")
    """spot, on-demand and/or reserved."""
    arch: Literal["amd64", "arm64"] = "amd64"
    """CPU architecture of the nodes."""
    max_runners_per_node: int = Field(default=MAX_RUNNERS_PER_NODE, ge=1, le=MAX_RUNNERS_PER_NODE)
    """Runner pods per node, at most 10 (kubelet maxPods adds the DaemonSets)."""
    warm_nodes: int = Field(default=0, ge=0, le=100)
    """Nodes kept warm by placeholder pods (at least 1 for 'warm' pools)."""
    gpus_per_runner: int = Field(default=0, ge=0, le=8)
    """nvidia.com/gpu each runner requests ('gpu' pools)."""
    limits: PoolLimits
    """The most the pool may grow to (cpu, memory, gpu); required."""
    disk_gib: int = Field(default=100, ge=20, le=16384)
    """Root volume size (gp3, encrypted)."""
    instance_store_raid0: bool | None = None
    """Stripe instance-store NVMe disks (default: on for 'nvme' pools)."""
    taints: tuple[Taint, ...] = ()
    """Extra node taints, beyond the pool and GPU taints the platform sets."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra node labels."""
    consolidation: Consolidation = Consolidation()
    """Karpenter disruption settings."""
    weight: int | None = Field(default=None, ge=1, le=100)
    """NodePool weight when several pools fit a pod."""

    @model_validator(mode="after")
    def _kind_rules(self) -> Pool:
        if self.kind == "isolated" and self.owner is None:
            raise ValueError("an 'isolated' pool needs 'owner' (the team it belongs to)")
        if self.kind != "isolated" and self.owner is not None:
            raise ValueError("only an 'isolated' pool has an 'owner'")
        if self.kind == "warm" and self.warm_nodes < 1:
            raise ValueError("a 'warm' pool needs 'warm_nodes' >= 1")
        if self.profile == "gpu":
            if self.gpus_per_runner < 1:
                raise ValueError("a 'gpu' pool needs 'gpus_per_runner' >= 1")
            if self.limits.gpu is None:
                raise ValueError("a 'gpu' pool needs 'limits.gpu'")
        elif self.gpus_per_runner:
            raise ValueError("'gpus_per_runner' is only for 'gpu' pools")
        reserved = {"pool", "runner-platform.io/pool"}
        if reserved & set(self.labels):
            raise ValueError(f"labels: {sorted(reserved)} are set by the platform")
        return self

    @property
    def raid0(self) -> bool:
        """Whether instance-store NVMe disks are striped (the default for 'nvme' pools)."""
        if self.instance_store_raid0 is None:
            return self.profile == "nvme"
        return self.instance_store_raid0

    @property
    def dedicated(self) -> bool:
        """Isolated and custom pools are tainted so only their runners land there."""
        return self.kind != "warm"

    def node_taints(self) -> tuple[Taint, ...]:
        """Taints on this pool's nodes; runner pods for the pool tolerate exactly these."""
        taints: list[Taint] = []
        if self.dedicated:
            taints.append(Taint(key=POOL_TAINT_KEY, value=self.name, effect="NoSchedule"))
        if self.profile == "gpu":
            taints.append(Taint(key=GPU_TAINT_KEY, value="true", effect="NoSchedule"))
        return (*taints, *self.taints)


# --- teams ---------------------------------------------------------------------------


class RunnerResources(Frozen):
    cpu: Quantity = "2"
    """CPU request per runner pod."""
    memory: Quantity = "4Gi"
    """Memory request (and limit) per runner pod."""
    ephemeral_storage: Quantity = "20Gi"
    """Ephemeral storage request per runner pod."""


_REPO = re.compile(r"^(?P<org>[A-Za-z0-9][A-Za-z0-9-]*)/(?P<repo>[A-Za-z0-9._*?\[\]-]+)$")


def _repository(value: str) -> str:
    if value == "*" or _REPO.match(value) is None:
        raise ValueError(
            f"'{value}' is not 'org/repo' (globs are allowed in the repository part only)"
        )
    return value


Repository = Annotated[str, AfterValidator(_repository)]


def repo_org(repository: str) -> str:
    return repository.split("/", 1)[0]


def is_org_wide(repository: str) -> bool:
    """``org/*`` (or a pattern that matches every name) grants the whole organisation."""
    name = repository.split("/", 1)[1]
    return name.strip("*") == ""


class Team(Frozen):
    """A product team: who may run jobs, from which repositories, on which pools."""

    name: DnsLabel
    """Team name; the IAM role is github-runner-<name>-role, the namespace runners-<name>."""
    instance: DnsLabel
    """The GitHub instance the team's repositories live on."""
    org: GitHubLogin
    """The organisation of its repositories and runner group."""
    github_teams: tuple[TeamSlug, ...] = Field(min_length=1)
    """GitHub team slugs whose active members may run jobs."""
    repositories: tuple[Repository, ...] = Field(min_length=1)
    """org/repo names (globs in the repo part) whose jobs the team runs."""
    allow_org_wide: bool = Field(
        default=False, description="Permit 'org/*': every repository of the organisation."
    )
    pools: tuple[DnsLabel, ...] = Field(min_length=1)
    """Pools the team's runners may use (its isolated pools included)."""
    runner_group: str = Field(default="", max_length=100)
    """GitHub runner group of the team's runners (default: the team name)."""
    labels: tuple[RunnerLabel, ...] = ()
    """Extra runs-on labels of the team's runners."""
    min_idle: int = Field(default=0, ge=0, le=1000)
    """Idle runners kept ready."""
    max_runners: int = Field(default=20, ge=1, le=5000)
    """Most runners at once."""
    runner_image: str = Field(default="ghcr.io/actions/actions-runner:2.329.0", min_length=3)
    """Runner container image."""
    resources: RunnerResources = RunnerResources()
    """Runner pod resources."""
    job_timeout_minutes: int = Field(default=360, ge=5, le=7200)
    """Pod deadline; also sizes node termination grace."""
    vault_policies: tuple[str, ...] = ()
    """Extra Vault policies for the team's role."""
    aws_managed_policy_arns: tuple[PolicyArn, ...] = ()
    """IAM policies attached to github-runner-<team>-role."""
    session_duration_seconds: int = Field(default=MAX_SESSION_SECONDS, ge=900, le=3600)
    """Maximum AWS session, 900 to 3600 seconds."""

    @model_validator(mode="before")
    @classmethod
    def _default_runner_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("runner_group") and "name" in data:
            return {**data, "runner_group": data["name"]}
        return data

    @model_validator(mode="after")
    def _team_rules(self) -> Team:
        if self.min_idle > self.max_runners:
            raise ValueError(
                f"min_idle ({self.min_idle}) is greater than max_runners ({self.max_runners})"
            )
        for index, repo in enumerate(self.repositories):
            if repo_org(repo).lower() != self.org.lower():
                raise ValueError(f"repositories[{index}]: '{repo}' is not in org '{self.org}'")
            if is_org_wide(repo) and not self.allow_org_wide:
                raise ValueError(
                    f"repositories[{index}]: '{repo}' grants every repository of the org; "
                    "set allow_org_wide: true if that is meant"
                )
        if len(set(self.pools)) != len(self.pools):
            raise ValueError("pools: a pool is listed twice")
        return self

    @property
    def role_name(self) -> str:
        return f"github-runner-{self.name}-role"

    @property
    def namespace(self) -> str:
        return f"runners-{self.name}"

    def claims_repository(self, repository: str) -> bool:
        """Whether ``org/repo`` is one of this team's (globs match; GitHub names are caseless)."""
        return any(
            fnmatch.fnmatchcase(repository.lower(), pattern.lower())
            for pattern in self.repositories
        )


# --- cluster, controller, vault, observability --------------------------------------


class VpcSettings(Frozen):
    cidr: Cidr = "10.0.0.0/16"
    """VPC CIDR (also excluded from runner egress)."""
    vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]+$")
    """An existing VPC; leave out to create one."""
    private_subnet_ids: tuple[str, ...] = ()
    """Private subnets of an existing VPC (nodes and pods)."""
    public_subnet_ids: tuple[str, ...] = ()
    """Public subnets of an existing VPC (load balancers)."""
    availability_zones: int = Field(default=3, ge=2, le=6)
    """Zones to spread a created VPC over."""

    @model_validator(mode="after")
    def _create_or_existing(self) -> VpcSettings:
        if self.vpc_id is None and (self.private_subnet_ids or self.public_subnet_ids):
            raise ValueError("subnet ids need 'vpc_id' (leave all out to create a VPC)")
        if self.vpc_id is not None and len(self.private_subnet_ids) < 2:
            raise ValueError("an existing VPC needs at least two 'private_subnet_ids'")
        return self


class EndpointSettings(Frozen):
    private_access: bool = True
    """Reach the API from inside the VPC."""
    public_access: bool = False
    """Reach the API from the internet (needs public_access_cidrs)."""
    public_access_cidrs: tuple[Cidr, ...] = ()
    """CIDRs allowed to the public endpoint."""
    allow_public_from_anywhere: bool = False
    """Allow 0.0.0.0/0 in public_access_cidrs."""

    @model_validator(mode="after")
    def _not_open(self) -> EndpointSettings:
        if not (self.private_access or self.public_access):
            raise ValueError("the API endpoint needs private_access or public_access")
        if self.public_access and not self.public_access_cidrs:
            raise ValueError("public_access needs public_access_cidrs (EKS would open it to all)")
        if "0.0.0.0/0" in self.public_access_cidrs and not self.allow_public_from_anywhere:
            raise ValueError(
                "public_access_cidrs: 0.0.0.0/0 opens the API to the internet; "
                "set allow_public_from_anywhere: true if that is meant"
            )
        return self


class SystemNodes(Frozen):
    """The small managed node group that runs Karpenter and the controller."""

    instance_types: tuple[str, ...] = ("m7i.large",)
    """Instance types of the system node group."""
    min_size: int = Field(default=2, ge=1)
    """Fewest system nodes."""
    desired_size: int = Field(default=2, ge=1)
    """System nodes at creation."""
    max_size: int = Field(default=4, ge=1)
    """Most system nodes."""

    @model_validator(mode="after")
    def _sizes(self) -> SystemNodes:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError("need min_size <= desired_size <= max_size")
        return self


class ClusterSettings(Frozen):
    name: DnsLabel
    """EKS cluster name (also the Karpenter discovery tag)."""
    kubernetes_version: str = Field(default="1.34", pattern=r"^1\.(3[0-9])$")
    """Kubernetes minor version (1.30 to 1.39)."""
    region: str = Field(pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
    """AWS region; must equal aws:region."""
    vpc: VpcSettings = VpcSettings()
    """Network settings."""
    service_cidr: Cidr = "172.20.0.0/16"
    """Kubernetes service CIDR (excluded from runner egress)."""
    endpoint: EndpointSettings = EndpointSettings()
    """API endpoint access."""
    cilium_mode: Literal["chaining", "eni"] = "chaining"
    """'chaining' with the VPC CNI, or 'eni'."""
    cilium_version: str = Field(default="1.20.2", pattern=r"^\d+\.\d+\.\d+$")
    """Cilium Helm chart version."""
    karpenter_version: str = Field(default="1.15.2", pattern=r"^\d+\.\d+\.\d+$")
    """Karpenter Helm chart version."""
    system_nodes: SystemNodes = SystemNodes()
    """The managed node group for Karpenter and the controller."""
    log_types: tuple[
        Literal["api", "audit", "authenticator", "controllerManager", "scheduler"], ...
    ] = ("api", "audit", "authenticator", "controllerManager", "scheduler")
    """Control-plane log types sent to CloudWatch."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Tags on every AWS resource."""


class RedisSettings(Frozen):
    node_type: str = "cache.t4g.small"
    """ElastiCache node type."""
    engine_version: str = "7.1"
    """Redis engine version."""
    replicas: int = Field(default=1, ge=0, le=5, description="Read replicas beside the primary.")
    """Read replicas beside the primary."""


class ControllerSettings(Frozen):
    image: str = "ghcr.io/runner-platform/controller:0.1.0"
    """Controller container image."""
    replicas: int = Field(default=2, ge=2, le=20)
    """Controller pods (at least 2)."""
    namespace: DnsLabel = "runner-platform"
    """Namespace of the controller."""
    webhook_host: HostName
    """Host name GitHub sends webhooks to."""
    ingress_class: str = "alb"
    """Ingress class of the webhook Ingress."""
    ingress_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations of the webhook Ingress (TLS, scheme, …)."""
    webhook_body_limit_bytes: int = Field(default=1 << 20, ge=1024, le=25 << 20)
    """Largest webhook body accepted."""
    cloudwatch_namespace: str = "RunnerPlatform"
    """CloudWatch namespace the controller publishes to."""
    redis: RedisSettings = RedisSettings()
    """ElastiCache Redis settings."""


class VaultSettings(Frozen):
    address: str = Field(pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    """Vault or OpenBao address."""
    audience: str = "runner-platform-vault"
    """Audience runners request for Vault tokens (bound_audiences)."""
    token_ttl_seconds: int = Field(default=900, ge=60, le=MAX_VAULT_TTL_SECONDS)
    """Vault token TTL (at most 3600)."""
    token_max_ttl_seconds: int = Field(
        default=MAX_VAULT_TTL_SECONDS, ge=60, le=MAX_VAULT_TTL_SECONDS
    )
    """Vault token max TTL (at most 3600)."""

    @model_validator(mode="after")
    def _ttl_order(self) -> VaultSettings:
        if self.token_ttl_seconds > self.token_max_ttl_seconds:
            raise ValueError("token_ttl_seconds is greater than token_max_ttl_seconds")
        return self


class ObservabilitySettings(Frozen):
    namespace: DnsLabel = "monitoring"
    """Namespace of the PrometheusRule and dashboard."""
    prometheus_rules: bool = True
    """Create the PrometheusRule (needs the Prometheus Operator CRDs)."""
    grafana_dashboard: bool = True
    """Create the dashboard ConfigMap for the Grafana sidecar."""
    pending_pod_minutes: int = Field(default=5, ge=1)
    """Alert when a runner pod is Pending longer than this."""
    spot_interruption_rate: float = Field(default=0.10, gt=0, le=1)
    """Alert above this hourly share of spot nodes interrupted."""
    job_failure_rate: float = Field(default=0.05, gt=0, le=1)
    """Alert above this share of failed jobs."""


# --- the whole spec ------------------------------------------------------------------


class ScaleSet(Frozen):
    """One team on one pool: the unit the router queues for and listeners scale."""

    name: str
    team: str
    pool: str
    instance: str
    org: str
    runner_group: str
    labels: tuple[str, ...]


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for name in names:
        if name in seen and name not in dups:
            dups.append(name)
        seen.add(name)
    return dups


class PlatformSpec(Frozen):
    """Everything a stack declares; the controller reads the same JSON at start."""

    cluster: ClusterSettings
    """EKS cluster settings."""
    github_instances: tuple[GitHubInstance, ...] = Field(min_length=1)
    """GitHub instances served."""
    pools: tuple[Pool, ...] = Field(min_length=1)
    """Node pools."""
    teams: tuple[Team, ...] = Field(min_length=1)
    """Teams and what they may use."""
    controller: ControllerSettings
    """The controller deployment."""
    vault: VaultSettings
    """Vault JWT auth settings."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Alerts and dashboards."""

    @model_validator(mode="after")
    def _cross_references(self) -> PlatformSpec:
        problems: list[str] = []
        for field, items in (
            ("github_instances", self.github_instances),
            ("pools", self.pools),
            ("teams", self.teams),
        ):
            names = [item.name for item in items]
            for dup in _duplicates(names):
                problems.append(
                    f"{field}[{names.index(dup, names.index(dup) + 1)}].name: '{dup}' is used twice"
                )
        instances = {i.name: i for i in self.github_instances}
        pools = {p.name: p for p in self.pools}
        teams = {t.name: t for t in self.teams}
        for t_index, team in enumerate(self.teams):
            where = f"teams[{t_index}]"
            instance = instances.get(team.instance)
            if instance is None:
                problems.append(f"{where}.instance: unknown GitHub instance '{team.instance}'")
            elif team.org not in instance.orgs:
                problems.append(f"{where}.org: '{team.org}' is not an org of '{instance.name}'")
            for p_index, pool_name in enumerate(team.pools):
                pool = pools.get(pool_name)
                if pool is None:
                    problems.append(f"{where}.pools[{p_index}]: unknown pool '{pool_name}'")
                elif pool.kind == "isolated" and pool.owner != team.name:
                    problems.append(
                        f"{where}.pools[{p_index}]: pool '{pool_name}' is isolated for team "
                        f"'{pool.owner}'"
                    )
                elif len(f"{team.name}-{pool_name}") > 63:
                    problems.append(f"{where}.pools[{p_index}]: scale set name is too long")
        for p_index, pool in enumerate(self.pools):
            if pool.owner is not None and pool.owner not in teams:
                problems.append(f"pools[{p_index}].owner: unknown team '{pool.owner}'")
            elif not any(pool.name in team.pools for team in self.teams):
                problems.append(f"pools[{p_index}]: pool '{pool.name}' is used by no team")
        problems.extend(self._repository_overlaps())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _repository_overlaps(self) -> list[str]:
        """A repository belongs to one team: OIDC maps a token's repository to one role.

        Exact duplicates and a literal name matched by another team's glob are refused;
        two globs that merely could overlap are not decidable here and are allowed.
        """
        problems: list[str] = []
        for t_index, team in enumerate(self.teams):
            for r_index, repo in enumerate(team.repositories):
                literal = not any(ch in repo for ch in "*?[")
                for o_index, other in enumerate(self.teams):
                    if o_index == t_index or other.instance != team.instance:
                        continue
                    duplicate = repo.lower() in (r.lower() for r in other.repositories)
                    if (duplicate and o_index < t_index) or (
                        not duplicate and literal and other.claims_repository(repo)
                    ):
                        problems.append(
                            f"teams[{t_index}].repositories[{r_index}]: '{repo}' is also "
                            f"claimed by team '{other.name}'"
                        )
        return problems

    # -- lookups used by both halves --

    def instance(self, name: str) -> GitHubInstance:
        return next(i for i in self.github_instances if i.name == name)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def teams_on_pool(self, pool_name: str) -> tuple[Team, ...]:
        return tuple(t for t in self.teams if pool_name in t.pools)

    def scale_sets(self) -> tuple[ScaleSet, ...]:
        arch_label = {"amd64": "X64", "arm64": "ARM64"}
        sets = []
        for team in self.teams:
            for pool_name in team.pools:
                pool = self.pool(pool_name)
                sets.append(
                    ScaleSet(
                        name=f"{team.name}-{pool.name}",
                        team=team.name,
                        pool=pool.name,
                        instance=team.instance,
                        org=team.org,
                        runner_group=team.runner_group,
                        labels=(
                            "self-hosted",
                            "linux",
                            arch_label[pool.arch],
                            team.name,
                            pool.name,
                            *team.labels,
                        ),
                    )
                )
        return tuple(sets)

    def content_hash(self) -> str:
        """Hash of the canonical JSON; a change rolls the controller pods."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class RuntimeFacts(Frozen):
    """Values known only after deployment, written beside the spec in the ConfigMap."""

    team_role_arns: dict[str, str]
    vault_mounts: dict[str, str]
    redis_endpoint: str
    redis_port: int = 6379
    redis_tls: bool = True


# --- errors with paths ---------------------------------------------------------------


_RELATIVE_PATH = re.compile(r"^[a-z_]+(\[\d+\]|\.[a-z_]+)*: ")


def _render_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("function-"):  # pydantic's validator frames, not data
            path += f".{part}" if path else part
    return path


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem, each starting with the path of the bad value."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        path = _render_loc(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the configuration reference)"
        elif item["type"] == "missing":
            message = "required"
        for line in message.splitlines():
            if not path:
                lines.append(line)  # cross-field problems carry their path from the root
            elif _RELATIVE_PATH.match(line):
                lines.append(f"{path}.{line}")
            else:
                lines.append(f"{path}: {line}")
    return lines


class SpecError(ValueError):
    """A spec that failed validation; ``problems`` has one path-prefixed line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid platform spec:\n  " + "\n  ".join(problems))
        self.problems = problems


def load_spec(data: object) -> PlatformSpec:
    """Validate a parsed document into a spec, or raise SpecError naming each bad path."""
    try:
        return PlatformSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe_errors(error)) from None


def load_spec_json(text: str | bytes) -> PlatformSpec:
    try:
        return PlatformSpec.model_validate_json(text)
    except ValidationError as error:
        raise SpecError(describe_errors(error)) from None
