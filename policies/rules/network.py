"""Network: Cilium encrypts with WireGuard; the EKS API is not open to the internet."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import as_list, dig

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
    # EKS defaults: a public endpoint, open to 0.0.0.0/0, when nothing says otherwise.
    open_to_all = cidrs is None or "0.0.0.0/0" in as_list(cidrs)
    if open_to_all and not args.get_config().get("allowPublicFromAnywhere", False):
        report(
            "the EKS API endpoint is public and open to 0.0.0.0/0; restrict "
            "publicAccessCidrs or set allowPublicFromAnywhere in the policy config",
            None,
        )


eks_endpoint_not_open = ResourceValidationPolicy(
    name="eks-endpoint-not-open",
    description="The EKS API endpoint is private, or public only to listed CIDRs.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_endpoint,
    config_schema=PolicyConfigSchema(
        properties={"allowPublicFromAnywhere": {"type": "boolean", "default": False}}
    ),
)
