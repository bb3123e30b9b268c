"""Cluster, controller, Vault and observability settings."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from controller.model.base import MAX_VAULT_TTL_SECONDS, Cidr, DnsLabel, Frozen, HostName
from controller.model.images import Environment


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
    environment: Environment = "dev"
    """'dev', 'staging' or 'production'. Beyond dev the controller image is taken by
    digest; production takes every runner image by digest too."""
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
