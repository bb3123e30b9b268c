"""Network: Cilium encrypts with WireGuard; the EKS API is not open to the internet; the
webhook Ingress serves TLS and is the controller's only way in; Redis is encrypted in
transit; runner egress excepts link-local, the VPC and the service network.

The endpoint's CIDRs are parsed, not compared as text: a block wider than the configured
prefix, or a set whose blocks together cover an address space (``0.0.0.0/1`` +
``128.0.0.0/1``, four ``/2``, ``::/0``), opens the API as ``0.0.0.0/0`` would.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules.common import as_list, dig, runner_namespaces

RELEASE = "kubernetes:helm.sh/v3:Release"
EKS_COMPONENT = "eks:index:Cluster"
EKS_CLUSTER = "aws:eks/cluster:Cluster"


def _validate_cilium(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != RELEASE or args.props.get("chart") != "cilium":
        return
    encryption = dig(args.props, "values", "encryption")
    if not isinstance(encryption, dict) or encryption.get("enabled") is not True:
        report("Cilium release does not enable transparent encryption", None)
    elif encryption.get("type") != "wireguard":
        report(
            f"Cilium encryption type is {encryption.get('type')!r}; the platform uses 'wireguard'",
            None,
        )


cilium_encryption = ResourceValidationPolicy(
    name="cilium-wireguard-encryption",
    description="The Cilium release enables WireGuard transparent encryption.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_cilium,
)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_EVERYTHING = {4: "0.0.0.0/0", 6: "::/0"}
_RESTRICT = "restrict publicAccessCidrs or set allowPublicFromAnywhere in the policy config"


def _as_ipv4_equivalent(network: Network) -> Network:
    """An IPv4-mapped IPv6 block is the IPv4 block it maps; an IPv6 block holding all of
    them (``::/64``, ``::fffe:0:0/95``; ``::/0`` stays all of IPv6) is all of IPv4."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and 0 < network.prefixlen < _IPV4_MAPPED.prefixlen
        and network.supernet_of(_IPV4_MAPPED)
    ):
        return ipaddress.IPv4Network("0.0.0.0/0")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def covered_versions(networks: Iterable[Network]) -> list[int]:
    """The IP versions whose whole address space the blocks cover together."""
    covered = []
    for version in (4, 6):
        blocks = [n for n in networks if n.version == version]
        collapsed = list(ipaddress.collapse_addresses(blocks))  # type: ignore[type-var]
        if len(collapsed) == 1 and collapsed[0].prefixlen == 0:
            covered.append(version)
    return covered


def open_endpoint_problems(cidrs: list[Any], shortest: Mapping[int, int]) -> list[str]:
    """Why a public endpoint's CIDRs open it too widely (values not known yet are skipped)."""
    problems: list[str] = []
    networks: list[Network] = []
    for cidr in cidrs:
        if not isinstance(cidr, str):
            continue  # not known in this preview
        try:
            network = _as_ipv4_equivalent(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            problems.append(f"publicAccessCidrs '{cidr}' is not a CIDR block")
            continue
        networks.append(network)
        limit = shortest[network.version]
        if 0 < network.prefixlen < limit:
            problems.append(
                f"publicAccessCidrs '{cidr}' is a /{network.prefixlen} "
                f"({network.num_addresses:,} addresses); the EKS API endpoint takes IPv"
                f"{network.version} blocks of /{limit} or narrower"
            )
    for version in covered_versions(networks):
        listed = [str(n) for n in networks if n.version == version]
        if _EVERYTHING[version] in listed:
            problems.append(
                f"the EKS API endpoint is public and open to {_EVERYTHING[version]}; {_RESTRICT}"
            )
        else:
            problems.append(
                f"the EKS API endpoint is public and publicAccessCidrs {listed} together cover "
                f"every IPv{version} address (as {_EVERYTHING[version]} does); {_RESTRICT}"
            )
    return problems


def _validate_endpoint(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == EKS_COMPONENT:
        public = args.props.get("endpointPublicAccess")
        cidrs = args.props.get("publicAccessCidrs")
    elif args.resource_type == EKS_CLUSTER:
        public = dig(args.props, "vpcConfig", "endpointPublicAccess")
        cidrs = dig(args.props, "vpcConfig", "publicAccessCidrs")
    else:
        return
    if public is False:
        return
    config = args.get_config()
    if config.get("allowPublicFromAnywhere", False):
        return
    # EKS defaults: a public endpoint, open to 0.0.0.0/0, when nothing says otherwise.
    if cidrs is None or as_list(cidrs) == []:
        report(f"the EKS API endpoint is public and open to 0.0.0.0/0; {_RESTRICT}", None)
        return
    shortest = {
        4: int(config.get("minPrefixLengthIPv4", 8)),
        6: int(config.get("minPrefixLengthIPv6", 32)),
    }
    for problem in open_endpoint_problems(as_list(cidrs), shortest):
        report(problem, None)


eks_endpoint_not_open = ResourceValidationPolicy(
    name="eks-endpoint-not-open",
    description="The EKS API endpoint is private, or public only to listed CIDRs, each no "
    "wider than the configured prefix and never covering an address space together.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_endpoint,
    config_schema=PolicyConfigSchema(
        properties={
            "allowPublicFromAnywhere": {"type": "boolean", "default": False},
            "minPrefixLengthIPv4": {"type": "integer", "default": 8, "minimum": 0, "maximum": 32},
            "minPrefixLengthIPv6": {
                "type": "integer",
                "default": 32,
                "minimum": 0,
                "maximum": 128,
            },
        }
    ),
)


INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
ALB_CERTIFICATE = "alb.ingress.kubernetes.io/certificate-arn"
ALB_LISTEN_PORTS = "alb.ingress.kubernetes.io/listen-ports"
ALB_SSL_REDIRECT = "alb.ingress.kubernetes.io/ssl-redirect"


def _host_covered(host: str, tls_hosts: set[str]) -> bool:
    if host in tls_hosts:
        return True
    _, dot, parent = host.partition(".")
    return bool(dot) and f"*.{parent}" in tls_hosts


def _validate_ingress_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != INGRESS:
        return
    annotations = dig(args.props, "metadata", "annotations") or {}
    if not isinstance(annotations, Mapping):
        return
    tls = [t for t in as_list(dig(args.props, "spec", "tls")) if isinstance(t, Mapping)]
    tls_hosts = {str(h) for t in tls for h in as_list(t.get("hosts"))}
    hosts = [
        str(rule["host"])
        for rule in as_list(dig(args.props, "spec", "rules"))
        if isinstance(rule, Mapping) and isinstance(rule.get("host"), str)
    ]
    certificate = annotations.get(ALB_CERTIFICATE)
    if not tls and not certificate:
        report(
            "Ingress has no TLS (no spec.tls and no "
            f"'{ALB_CERTIFICATE}'): webhooks and their signatures would cross the internet "
            "in clear text",
            None,
        )
    elif not certificate and (bare := [h for h in hosts if not _host_covered(h, tls_hosts)]):
        report(f"Ingress host(s) {bare} have no spec.tls entry: they are served without TLS", None)
    ports = annotations.get(ALB_LISTEN_PORTS)
    if isinstance(ports, str) and ALB_SSL_REDIRECT not in annotations:
        try:
            listeners = json.loads(ports)
            plain = any(
                str(key).upper() == "HTTP"
                for item in as_list(listeners)
                if isinstance(item, Mapping)
                for key in item
            )
        except ValueError:
            plain = False
        if plain:
            report(
                f"Ingress '{ALB_LISTEN_PORTS}' opens a plain HTTP listener without "
                f"'{ALB_SSL_REDIRECT}'",
                None,
            )


ingress_tls = ResourceValidationPolicy(
    name="ingress-serves-tls",
    description="Every Ingress serves its hosts over TLS, with no plain HTTP listener that "
    "does not redirect.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_ingress_tls,
)


REDIS_TYPES = {
    "aws:elasticache/replicationGroup:ReplicationGroup": "ReplicationGroup",
    "aws:elasticache/cluster:Cluster": "Cluster",
}


def _validate_redis_transit(args: ResourceValidationArgs, report: ReportViolation) -> None:
    kind = REDIS_TYPES.get(args.resource_type)
    if kind is None:
        return
    if kind == "Cluster" and (
        args.props.get("engine") == "memcached" or args.props.get("replicationGroupId")
    ):
        return  # a member of a replication group follows the group's settings
    enabled = args.props.get("transitEncryptionEnabled")
    if enabled is not True:
        report(
            f"ElastiCache {kind} does not enable transitEncryptionEnabled: job demand, runner "
            "state and the AUTH token would cross the VPC in clear text",
            None,
        )
    elif args.props.get("transitEncryptionMode") == "preferred":
        report(
            f"ElastiCache {kind} transitEncryptionMode is 'preferred': it still accepts "
            "clear-text connections; use 'required'",
            None,
        )


redis_transit_encryption = ResourceValidationPolicy(
    name="redis-encrypted-in-transit",
    description="ElastiCache Redis requires TLS in transit.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_redis_transit,
)


NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
RUNNER_NAMESPACE_PREFIX = "runners-"
SPEC_KEY = "spec.json"
# All of IPv4 link-local: instance metadata, EKS Pod Identity, Amazon DNS and time.
LINK_LOCAL = "169.254.0.0/16"


def _network(text: Any) -> Network | None:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _internal_blocks(args: StackValidationArgs) -> dict[str, str]:
    """Block → what it is: link-local, and the VPC and service blocks the controller's
    spec (its ConfigMap) names."""
    blocks = {LINK_LOCAL: "link-local (instance metadata, EKS Pod Identity)"}
    for resource in args.resources:
        if resource.resource_type != CONFIG_MAP:
            continue
        text = (resource.props.get("data") or {}).get(SPEC_KEY)
        if not isinstance(text, str):
            continue
        try:
            spec = json.loads(text)
        except ValueError:
            continue
        vpc = dig(spec, "cluster", "vpc") or {}
        listed = as_list(vpc.get("cidrs")) if vpc.get("vpc_id") else [vpc.get("cidr")]
        for cidr in listed:
            if isinstance(cidr, str):
                blocks[cidr] = "the VPC"
        service = dig(spec, "cluster", "service_cidr")
        if isinstance(service, str):
            blocks[service] = "the service network"
    return blocks


def _uncovered(block: Network, excepts: list[Network]) -> bool:
    """Whether some address of ``block`` is not in any of ``excepts``."""
    remaining = [block]
    for hole in excepts:
        if hole.version != block.version:
            continue
        next_remaining: list[Network] = []
        for part in remaining:
            if part.subnet_of(hole):  # type: ignore[arg-type]
                continue
            if hole.subnet_of(part):  # type: ignore[arg-type]
                next_remaining.extend(part.address_exclude(hole))  # type: ignore[arg-type]
            else:
                next_remaining.append(part)
        remaining = next_remaining
    return bool(remaining)


def _validate_runner_egress(args: StackValidationArgs, report: ReportViolation) -> None:
    declared = runner_namespaces(args)
    internal = {
        net: what for text, what in _internal_blocks(args).items() if (net := _network(text))
    }
    for resource in args.resources:
        if resource.resource_type != NETWORK_POLICY:
            continue
        namespace = dig(resource.props, "metadata", "namespace")
        if not isinstance(namespace, str) or not (
            namespace in declared or namespace.startswith(RUNNER_NAMESPACE_PREFIX)
        ):
            continue
        for rule in as_list(dig(resource.props, "spec", "egress")):
            if not isinstance(rule, Mapping):
                continue
            # A rule with no 'to' reaches every destination: 0.0.0.0/0 and ::/0, no exception.
            # A namespace or pod selector peer reaches pods of the cluster, not an address.
            peers = as_list(rule.get("to")) or [
                {"ipBlock": {"cidr": cidr}} for cidr in _EVERYTHING.values()
            ]
            for peer in peers:
                block = dig(peer, "ipBlock")
                allowed = _network(dig(block, "cidr"))
                if allowed is None:
                    continue
                excepts = [n for t in as_list(dig(block, "except")) if (n := _network(t))]
                for protected, what in internal.items():
                    if protected.version == allowed.version and protected.overlaps(allowed):
                        if _uncovered(protected, excepts):
                            name = dig(resource.props, "metadata", "name")
                            report(
                                f"NetworkPolicy {namespace}/{name}: egress to {allowed} does not "
                                f"except all of {protected} ({what}): runner pods could reach it",
                                resource.urn,
                            )


runner_egress_excludes_internal = StackValidationPolicy(
    name="runner-egress-excludes-internal",
    description="Runner namespaces' egress excepts all of link-local and every VPC and "
    "service block the controller's spec names.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_runner_egress,
)


CONTROLLER_LABEL = ("app.kubernetes.io/name", "runner-controller")
ALB_TARGET_TYPE = "alb.ingress.kubernetes.io/target-type"


def _empty_selector(selector: Any) -> bool:
    return (
        isinstance(selector, Mapping)
        and not selector.get("matchLabels")
        and not selector.get("matchExpressions")
    )


# The labels the controller's pods carry: its Deployment's selector, and the hash the
# Deployment controller adds (its value unknown here: any value may match).
_CONTROLLER_POD_LABELS: dict[str, str | None] = {
    CONTROLLER_LABEL[0]: CONTROLLER_LABEL[1],
    "pod-template-hash": None,
}


def _may_hold(key: Any, values: list[Any]) -> bool:
    """Whether the controller's pods may carry ``key`` with one of ``values``."""
    if key not in _CONTROLLER_POD_LABELS:
        return False
    value = _CONTROLLER_POD_LABELS[key]
    return value is None or value in values


def _selects_controller(selector: Any) -> bool:
    """Whether a pod selector can select the controller's pods: every requirement it makes
    can hold of their labels (a label they do not carry satisfies only NotIn and
    DoesNotExist)."""
    if not isinstance(selector, Mapping):
        return False
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        _may_hold(key, [value]) for key, value in labels.items()
    ):
        return False
    for expression in as_list(selector.get("matchExpressions")):
        if not isinstance(expression, Mapping):
            continue
        key, operator = expression.get("key"), expression.get("operator")
        values = as_list(expression.get("values"))
        carried = key in _CONTROLLER_POD_LABELS
        fixed = _CONTROLLER_POD_LABELS.get(str(key))
        holds = {
            "In": _may_hold(key, values),
            "NotIn": not carried or fixed is None or fixed not in values,
            "Exists": carried,
            "DoesNotExist": not carried,
        }.get(str(operator), True)  # an operator the API server refuses: assume it may
        if not holds:
            return False
    return True


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _source_problems(peer: Any, vpc: list[Network], teams: Collection[str]) -> list[str]:
    """Why one 'from' peer admits more than the load balancer."""
    if not isinstance(peer, Mapping):
        return []
    namespaces = peer.get("namespaceSelector")
    if _empty_selector(namespaces):
        return [
            "from every namespace (an empty namespaceSelector): any pod, runner pods "
            "included, could reach it"
        ]
    if "namespaceSelector" in peer:
        # Only the pods of one namespace named outright (the ingress controller's), and
        # never a team's: any other selector may take in runner namespaces.
        named = dig(namespaces, "matchLabels", NAMESPACE_NAME_LABEL)
        exact = (
            isinstance(namespaces, Mapping)
            and set(namespaces) == {"matchLabels"}
            and set(namespaces["matchLabels"]) == {NAMESPACE_NAME_LABEL}
            and isinstance(named, str)
        )
        if not exact:
            return [
                f"from the namespaces {json.dumps(namespaces, sort_keys=True)} selects: only "
                f"one namespace named by '{NAMESPACE_NAME_LABEL}' may reach it (another "
                "selector may take in runner namespaces)"
            ]
        if named in teams or str(named).startswith(RUNNER_NAMESPACE_PREFIX):
            return [f"from runner namespace '{named}': its runner pods could reach it"]
    if "namespaceSelector" not in peer and _empty_selector(peer.get("podSelector")):
        return [
            "from every pod of its namespace (an empty podSelector): any pod there could reach it"
        ]
    cidr = dig(peer, "ipBlock", "cidr")
    allowed = _network(cidr)
    if isinstance(cidr, str) and not (
        allowed is not None
        and any(v.version == allowed.version and allowed.subnet_of(v) for v in vpc)  # type: ignore[arg-type]
    ):
        inside = sorted(str(v) for v in vpc)
        return [
            f"from {cidr}, which is not inside the VPC {inside}: only the load balancer's "
            "addresses in the VPC may reach it"
        ]
    return []


def _validate_controller_policy(
    resource: PolicyResource, vpc: list[Network], teams: Collection[str], report: ReportViolation
) -> None:
    selector = dig(resource.props, "spec", "podSelector")
    if _empty_selector(selector):
        selected = "every pod of its namespace (the controller's too, if it is there)"
    elif _selects_controller(selector):
        selected = "the controller's port"
    else:
        return
    namespace = dig(resource.props, "metadata", "namespace")
    name = dig(resource.props, "metadata", "name")
    for index, rule in enumerate(as_list(dig(resource.props, "spec", "ingress"))):
        if not isinstance(rule, Mapping):
            continue
        peers = as_list(rule.get("from"))
        if not peers:
            report(
                f"NetworkPolicy {namespace}/{name} ingress[{index}] admits {selected} from "
                "anywhere (no 'from'): any pod, runner pods included, could reach it",
                resource.urn,
            )
        for source, peer in enumerate(peers):
            for problem in _source_problems(peer, vpc, teams):
                report(
                    f"NetworkPolicy {namespace}/{name} ingress[{index}].from[{source}] admits "
                    f"{selected} {problem}",
                    resource.urn,
                )


def _validate_controller_path(args: StackValidationArgs, report: ReportViolation) -> None:
    vpc = [
        net
        for text, what in _internal_blocks(args).items()
        if what == "the VPC" and (net := _network(text))
    ]
    teams = runner_namespaces(args)
    for resource in args.resources:
        if resource.resource_type == NETWORK_POLICY:
            _validate_controller_policy(resource, vpc, teams, report)
        if resource.resource_type != INGRESS:
            continue
        annotations = dig(resource.props, "metadata", "annotations") or {}
        target = annotations.get(ALB_TARGET_TYPE) if isinstance(annotations, Mapping) else None
        if isinstance(target, str) and target != "ip":
            report(
                f"Ingress {resource.name}: '{ALB_TARGET_TYPE}' is '{target}': the load balancer "
                "would reach the pods through a port every node opens, not at their own addresses",
                resource.urn,
            )


controller_only_behind_ingress = StackValidationPolicy(
    name="controller-only-behind-its-ingress",
    description="The controller admits traffic only from its load balancer (addresses in the "
    "VPC, or the pods of a named namespace), and an ALB sends to the pods' own addresses.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_controller_path,
)
