"""Nodes: every NodePool is bounded; runner nodes cap pods and block pod IMDS access, and
so do the system node group's (its launch template: IMDSv2, hop limit 1)."""

from __future__ import annotations

from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import as_int, as_list, dig

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
MAX_RUNNERS = 10
ANNOTATION_MAX_RUNNERS = "runner-platform.io/max-runners"
ANNOTATION_DAEMONSET_PODS = "runner-platform.io/daemonset-pods"
ANNOTATION_PODS_PER_RUNNER = "runner-platform.io/pods-per-runner"
# A runner of the container-hook modes shares its node with its job pod and one
# container-step pod (docs/adr/0006-container-modes.md).
MAX_PODS_PER_RUNNER = 3


def _validate_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != NODE_POOL:
        return
    limits = dig(args.props, "spec", "limits")
    if not isinstance(limits, dict) or not limits:
        report("NodePool has no spec.limits: it could grow without bound", None)
        return
    missing = [key for key in ("cpu", "memory") if key not in limits]
    if missing:
        report(f"NodePool spec.limits lacks {missing}", None)


nodepool_limits = ResourceValidationPolicy(
    name="nodepool-has-limits",
    description="Every Karpenter NodePool sets cpu and memory limits.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_limits,
)


def _validate_node_class(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != NODE_CLASS:
        return
    allowance = int(args.get_config().get("maxDaemonSetPods", 8))
    spec = args.props.get("spec") if isinstance(args.props.get("spec"), dict) else {}
    max_pods = as_int(dig(spec, "kubelet", "maxPods"))
    annotations = dig(args.props, "metadata", "annotations") or {}
    if max_pods is None:
        report("EC2NodeClass has no spec.kubelet.maxPods: the per-node runner cap is unset", None)
    else:
        try:
            daemonsets = int(annotations.get(ANNOTATION_DAEMONSET_PODS, allowance))
            runners = annotations.get(ANNOTATION_MAX_RUNNERS)
            runners = None if runners is None else int(runners)
            per_runner = int(annotations.get(ANNOTATION_PODS_PER_RUNNER, 1))
        except (TypeError, ValueError):
            report("EC2NodeClass runner-platform.io annotations are not integers", None)
            return
        if daemonsets > allowance:
            report(f"{daemonsets} DaemonSet pods declared; the allowance is {allowance}", None)
        if runners is not None and runners > MAX_RUNNERS:
            report(f"{runners} runners per node; at most {MAX_RUNNERS}", None)
        if not 1 <= per_runner <= MAX_PODS_PER_RUNNER:
            report(f"{per_runner} pods per runner; 1 to {MAX_PODS_PER_RUNNER}", None)
            per_runner = 1
        cap = MAX_RUNNERS * per_runner + min(daemonsets, allowance)
        if max_pods > cap:
            runner_pods = (
                f"{MAX_RUNNERS} runners"
                if per_runner == 1
                else f"{MAX_RUNNERS} runners x {per_runner} pods"
            )
            report(
                f"kubelet.maxPods is {max_pods}; at most {runner_pods} + "
                f"{min(daemonsets, allowance)} DaemonSet pods",
                None,
            )
    hops = as_int(dig(spec, "metadataOptions", "httpPutResponseHopLimit"))
    if hops != 1:
        report(
            f"metadataOptions.httpPutResponseHopLimit is {hops}; must be 1 so pods "
            "cannot reach the node's instance metadata",
            None,
        )
    if dig(spec, "metadataOptions", "httpTokens") != "required":
        report("metadataOptions.httpTokens must be 'required' (IMDSv2 only)", None)


nodeclass_runner_cap = ResourceValidationPolicy(
    name="nodeclass-runner-cap-and-imds",
    description="Runner EC2NodeClasses cap pods at 10 runners plus DaemonSets and keep "
    "instance metadata out of pods' reach (IMDSv2, hop limit 1).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_node_class,
    config_schema=PolicyConfigSchema(
        properties={"maxDaemonSetPods": {"type": "integer", "default": 8, "minimum": 0}}
    ),
)


NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def _validate_node_group_imds(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == NODE_GROUP:
        if args.props.get("launchTemplate") is None:
            report(
                "EKS NodeGroup has no launch template: EKS's default allows IMDSv1 with a hop "
                "limit of 2, so every pod on the node reaches its role's credentials",
                None,
            )
        return
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    options = args.props.get("metadataOptions")
    if not isinstance(options, dict):
        options = {}
    if options.get("httpEndpoint") == "disabled":
        return  # no instance metadata at all
    if options.get("httpTokens") != "required":
        report(
            f"LaunchTemplate metadataOptions.httpTokens is {options.get('httpTokens')!r}; "
            "must be 'required' (IMDSv2 only)",
            None,
        )
    hops = as_int(options.get("httpPutResponseHopLimit"))
    if hops != 1:
        report(
            f"LaunchTemplate metadataOptions.httpPutResponseHopLimit is {hops}; must be 1 so "
            "pods cannot reach the node's instance metadata",
            None,
        )


node_group_imds = ResourceValidationPolicy(
    name="node-group-imds-v2-hop-1",
    description="Managed node groups (the system nodes) launch from a template that requires "
    "IMDSv2 with a hop limit of 1.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_node_group_imds,
)


DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PLATFORM_DOMAIN = "runner-platform.io"
KARPENTER_NODEPOOL_LABEL = "karpenter.sh/nodepool"
CONTROLLER_LABEL = ("app.kubernetes.io/name", "runner-controller")


def _in_platform_domain(key: str) -> bool:
    prefix, slash, _ = key.partition("/")
    prefix = prefix.lower()
    return bool(slash) and (prefix == PLATFORM_DOMAIN or prefix.endswith(f".{PLATFORM_DOMAIN}"))


def _keeps_off_karpenter(term: Any) -> bool:
    expressions = term.get("matchExpressions") if isinstance(term, dict) else None
    return any(
        isinstance(e, dict)
        and e.get("key") == KARPENTER_NODEPOOL_LABEL
        and e.get("operator") == "DoesNotExist"
        for e in (expressions if isinstance(expressions, list) else [])
    )


def _validate_controller_placement(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == NODE_POOL:
        labels = dig(args.props, "spec", "template", "metadata", "labels") or {}
        reserved = {k for k in labels if isinstance(k, str) and _in_platform_domain(k)}
        # Karpenter labels its nodes from requirements too: with a value from In, and with
        # one it picks (or a pending pod's, intersected) for Exists, NotIn, Gt and Lt.
        # Only DoesNotExist keeps the label off.
        for requirement in as_list(dig(args.props, "spec", "template", "spec", "requirements")):
            key = requirement.get("key") if isinstance(requirement, dict) else None
            if (
                isinstance(key, str)
                and _in_platform_domain(key)
                and requirement.get("operator") != "DoesNotExist"
            ):
                reserved.add(key)
        if reserved:
            report(
                f"NodePool gives its nodes {sorted(reserved)}: the {PLATFORM_DOMAIN}/ labels are "
                "the platform's (system nodes run the controller)",
                None,
            )
        return
    if args.resource_type != DEPLOYMENT:
        return
    key, value = CONTROLLER_LABEL
    if (dig(args.props, "metadata", "labels") or {}).get(key) != value:
        return
    terms = dig(
        args.props,
        "spec",
        "template",
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
    )
    if not isinstance(terms, list) or not terms or not all(map(_keeps_off_karpenter, terms)):
        report(
            "the controller's pods may land on a node Karpenter launched: every required "
            f"node affinity term needs '{KARPENTER_NODEPOOL_LABEL}' DoesNotExist (the pods hold "
            "every team's App keys and webhook secrets)",
            None,
        )


controller_off_runner_nodes = ResourceValidationPolicy(
    name="controller-off-runner-nodes",
    description="The controller requires a node Karpenter did not launch, and no NodePool "
    "gives its nodes the platform's runner-platform.io/ labels.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_controller_placement,
)
