"""Cluster, controller, Vault and observability settings."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from controller.model.base import MAX_VAULT_TTL_SECONDS, Cidr, DnsLabel, Frozen, HostName
from controller.model.images import Environment
from controller.model.trust import STS_AUDIENCE

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The shortest prefix a public endpoint may list, per IP version: a /8 is 16 million IPv4
# addresses (a whole carrier); no organisation's egress needs a wider IPv6 block than /32.
MIN_PUBLIC_PREFIX = {4: 8, 6: 32}
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def as_ipv4_equivalent(network: IpNetwork) -> IpNetwork:
    """An IPv4-mapped IPv6 block (``::ffff:0:0/96`` and inside) is the IPv4 block it maps."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def contains_all_ipv4_mapped(network: IpNetwork) -> bool:
    """Whether an IPv6 block wider than ``::ffff:0:0/96`` holds every IPv4-mapped address
    (``::/64``, ``::fffe:0:0/95``): it reaches all of IPv4 besides its own IPv6 range."""
    return (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen < _IPV4_MAPPED.prefixlen
        and network.supernet_of(_IPV4_MAPPED)
    )


def whole_space_covered(networks: Iterable[IpNetwork]) -> list[int]:
    """The IP versions (4, 6) whose every address some block of ``networks`` contains."""
    covered = []
    by_version: dict[int, list[IpNetwork]] = {4: [], 6: []}
    for network in networks:
        by_version[network.version].append(network)
    for version, blocks in by_version.items():
        collapsed = list(ipaddress.collapse_addresses(blocks))  # type: ignore[type-var]
        if len(collapsed) == 1 and collapsed[0].prefixlen == 0:
            covered.append(version)
    return covered


def open_cidr_problems(field: str, cidrs: Iterable[str]) -> list[str]:
    """Why a public endpoint's CIDR list opens the API too widely, one line per problem.

    Each block is parsed (IPv4 and IPv6; an IPv4-mapped IPv6 block counts as the IPv4
    block it maps, and an IPv6 block holding all of ``::ffff:0:0/96`` as all of IPv4) and
    refused when its prefix is shorter than :data:`MIN_PUBLIC_PREFIX`;
    the set is refused when the union of its blocks is a whole address space, however it
    is cut (``0.0.0.0/1`` + ``128.0.0.0/1``, four ``/2``, ``::/0``).
    """
    problems: list[str] = []
    networks: list[IpNetwork] = []
    for index, cidr in enumerate(cidrs):
        try:
            network = as_ipv4_equivalent(ipaddress.ip_network(cidr))
        except ValueError:
            problems.append(f"{field}[{index}]: '{cidr}' is not a CIDR block")
            continue
        networks.append(network)
        if contains_all_ipv4_mapped(network):
            problems.append(
                f"{field}[{index}]: '{cidr}' contains every IPv4-mapped address "
                f"({_IPV4_MAPPED}), so it covers every IPv4 address (as 0.0.0.0/0 does): "
                "that opens the API to the internet"
            )
        shortest = MIN_PUBLIC_PREFIX[network.version]
        if 0 < network.prefixlen < shortest:
            problems.append(
                f"{field}[{index}]: '{cidr}' is a /{network.prefixlen} "
                f"({network.num_addresses:,} addresses); a public endpoint takes IPv"
                f"{network.version} blocks of /{shortest} or narrower"
            )
    for version in whole_space_covered(networks):
        listed = [str(n) for n in networks if n.version == version]
        everything = "0.0.0.0/0" if version == 4 else "::/0"
        if everything in listed:
            problems.append(f"{field}: {everything} opens the API to the internet")
        else:
            problems.append(
                f"{field}: {listed} together cover every IPv{version} address "
                f"(as {everything} does): that opens the API to the internet"
            )
    return problems


def cidr_list_problems(field: str, cidrs: Iterable[str]) -> list[str]:
    """Why a VPC's block list would not say what runner egress excludes: a block listed
    twice, or an IPv4-mapped IPv6 block (VPCs have none; egress rules would drop it)."""
    problems: list[str] = []
    seen: dict[IpNetwork, int] = {}
    for index, cidr in enumerate(cidrs):
        network = ipaddress.ip_network(cidr)
        if isinstance(network, ipaddress.IPv6Network) and network.overlaps(_IPV4_MAPPED):
            problems.append(
                f"{field}[{index}]: '{cidr}' is an IPv4-mapped IPv6 block; list the IPv4 block "
                f"'{as_ipv4_equivalent(network)}' itself (a VPC has no IPv4-mapped blocks)"
                if network.subnet_of(_IPV4_MAPPED)
                else f"{field}[{index}]: '{cidr}' holds the IPv4-mapped range {_IPV4_MAPPED}; "
                "a VPC has no IPv4-mapped blocks"
            )
        if network in seen:
            problems.append(
                f"{field}[{index}]: '{cidr}' is listed twice (first at index {seen[network]})"
            )
        seen.setdefault(network, index)
    return problems


class VpcSettings(Frozen):
    cidr: Cidr = "10.0.0.0/16"
    """CIDR of the VPC the platform creates (excluded from runner egress)."""
    cidrs: tuple[Cidr, ...] = ()
    """Every block of an existing VPC, primary and secondary (with vpc_id; runners reach none)."""
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
        if self.vpc_id is None and self.cidrs:
            raise ValueError(
                "cidrs: lists an existing VPC's blocks and needs 'vpc_id'; a VPC the platform "
                "creates has the one 'cidr'"
            )
        if self.vpc_id is not None:
            if len(self.private_subnet_ids) < 2:
                raise ValueError("an existing VPC needs at least two 'private_subnet_ids'")
            if "cidr" in self.model_fields_set:
                raise ValueError(
                    "cidr: is for a VPC the platform creates; an existing VPC lists every block "
                    "in 'cidrs'"
                )
            if not self.cidrs:
                raise ValueError(
                    "an existing VPC needs 'cidrs': every CIDR block of the VPC (primary and "
                    "secondary), so runner egress excludes all of it"
                )
            problems = cidr_list_problems("cidrs", self.cidrs)
            if problems:
                raise ValueError("\n".join(problems))
            if not any(ipaddress.ip_network(c).version == 4 for c in self.cidrs):
                raise ValueError(
                    "cidrs: lists no IPv4 block, yet every VPC has one (its primary block): "
                    "list every block of the VPC"
                )
        return self

    @property
    def all_cidrs(self) -> tuple[str, ...]:
        """Every block of the VPC: the listed ones of an existing VPC, else the created one."""
        return self.cidrs if self.vpc_id is not None else (self.cidr,)


class EndpointSettings(Frozen):
    private_access: bool = True
    """Reach the API from inside the VPC."""
    public_access: bool = False
    """Reach the API from the internet (needs public_access_cidrs)."""
    public_access_cidrs: tuple[Cidr, ...] = ()
    """CIDRs allowed to the public endpoint (each IPv4 /8, IPv6 /32 or narrower; never all)."""
    allow_public_from_anywhere: bool = False
    """Allow public_access_cidrs that open the API to the internet (0.0.0.0/0 and the like)."""

    @model_validator(mode="after")
    def _not_open(self) -> EndpointSettings:
        if not (self.private_access or self.public_access):
            raise ValueError("the API endpoint needs private_access or public_access")
        if self.public_access and not self.public_access_cidrs:
            raise ValueError("public_access needs public_access_cidrs (EKS would open it to all)")
        if not self.allow_public_from_anywhere:
            problems = open_cidr_problems("public_access_cidrs", self.public_access_cidrs)
            if problems:
                raise ValueError(
                    "\n".join(
                        f"{line}; set allow_public_from_anywhere: true if that is meant"
                        for line in problems
                    )
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
    ingress_controller_namespace: DnsLabel | None = None
    """An in-cluster ingress controller's namespace (class not 'alb'): the only source admitted."""
    ingress_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations of the webhook Ingress (scheme, certificate, …); it always serves TLS."""
    webhook_body_limit_bytes: int = Field(default=1 << 20, ge=1024, le=25 << 20)
    """Largest webhook body accepted."""
    cloudwatch_namespace: str = "RunnerPlatform"
    """CloudWatch namespace the controller publishes to."""
    redis: RedisSettings = RedisSettings()
    """ElastiCache Redis settings."""

    @model_validator(mode="after")
    def _ingress_path(self) -> ControllerSettings:
        problems = ingress_annotation_problems(self.ingress_annotations)
        if self.ingress_class != "alb" and self.ingress_controller_namespace is None:
            problems.append(
                f"ingress_controller_namespace: required with ingress class "
                f"'{self.ingress_class}': the controller admits webhooks only from the pods of "
                "that namespace (an ALB reaches the pods from the VPC instead)"
            )
        if self.ingress_class == "alb" and self.ingress_controller_namespace is not None:
            problems.append(
                "ingress_controller_namespace: is for an in-cluster ingress controller; an "
                "ALB reaches the pods from the VPC"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


ALB_TARGET_TYPE = "alb.ingress.kubernetes.io/target-type"
ALB_LISTEN_PORTS = "alb.ingress.kubernetes.io/listen-ports"
ALB_SSL_REDIRECT = "alb.ingress.kubernetes.io/ssl-redirect"


def ingress_annotation_problems(annotations: dict[str, str]) -> list[str]:
    """Annotations that would open another path to the controller or drop TLS."""
    problems: list[str] = []
    target = annotations.get(ALB_TARGET_TYPE)
    if target is not None and target != "ip":
        problems.append(
            f"ingress_annotations: '{ALB_TARGET_TYPE}' is '{target}'; the ALB must send to "
            "the pods' own addresses ('ip'): the controller admits webhooks only from the "
            "load balancer, never through a node port every node opens"
        )
    ports = annotations.get(ALB_LISTEN_PORTS)
    if ports is not None:
        try:
            listeners = json.loads(ports)
            protocols = {str(k).upper() for item in listeners for k in dict(item)}
        except (ValueError, TypeError):
            problems.append(
                f"ingress_annotations: '{ALB_LISTEN_PORTS}' is not a JSON list of "
                "listeners ('[{\"HTTPS\": 443}]')"
            )
        else:
            if "HTTP" in protocols and ALB_SSL_REDIRECT not in annotations:
                problems.append(
                    f"ingress_annotations: '{ALB_LISTEN_PORTS}' opens a plain HTTP listener "
                    f"without '{ALB_SSL_REDIRECT}': webhooks and their signatures would cross "
                    "the internet unencrypted"
                )
    return problems


def _https_address(value: str) -> str:
    if not value.startswith("https://"):
        raise ValueError(
            f"'{value}' is not https: a job sends its GitHub token to Vault and gets a Vault "
            "token back, and both would cross the network in clear"
        )
    if "@" in value:
        raise ValueError(
            f"'{value}' carries user information ('…@host'): the host is what follows the "
            "'@', not what the address seems to name; give the Vault host alone"
        )
    return value


def _vault_audience(value: str) -> str:
    if value.strip().strip("/").lower() == STS_AUDIENCE:
        raise ValueError(
            f"'{value}' is the AWS STS audience: a token a job asks for AWS would log in to "
            "Vault too (and a Vault token would assume the team's AWS role); use another, "
            "such as 'runner-platform-vault'"
        )
    return value


class VaultSettings(Frozen):
    address: Annotated[str, AfterValidator(_https_address)] = Field(
        pattern=r"^https?://[^\s/]+(:\d+)?/?$"
    )
    """Vault or OpenBao address (https only)."""
    audience: Annotated[str, AfterValidator(_vault_audience)] = Field(
        default="runner-platform-vault", pattern=r"^[^\s*?]+$"
    )
    """Audience runners request for Vault tokens (bound_audiences); never the STS one."""
    self_hosted_only: bool = False
    """Vault roles also bind ``runner_environment: self-hosted``: a job of the team's
    repositories on a GitHub-hosted runner cannot log in (the instance must issue the
    claim)."""
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
