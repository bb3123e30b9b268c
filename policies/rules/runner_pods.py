"""Runner pods: no host access, and privilege only on a pool isolated for the runner's team.

Runner and job pods are created at run time (by the controller and the container hooks),
so the pack judges what the stack declares about them: any pod spec of a team (a Pod, a
workload's or a PodTemplate's template, the job pod templates in the hooks ConfigMaps,
each labelled ``runner-platform.io/team`` or in a runner namespace, ``runners-*``) and
the controller's spec, which says which container mode each team runs on each pool. A
pod's team is its namespace's (the team label of a Namespace the stack declares), never a
label the workload gives itself; a pool is isolated only if its NodePool says so. A
hand-edited program or stack that slips a privileged container or a dind mode onto a
shared pool is refused here even if it got past the model. No ServiceAccount of a runner
namespace mounts an API token by default, the ``default`` one included: a runner pod that
needs the API (the container-hook modes) asks for the token itself.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules.common import as_list, dig, named_labels, runner_namespaces

TEAM_LABEL = "runner-platform.io/team"
RUNNER_NAMESPACE_PREFIX = "runners-"
SERVICE_ACCOUNT_TYPES = {
    "kubernetes:core/v1:ServiceAccount",
    "kubernetes:core/v1:ServiceAccountPatch",
}
POD_TEMPLATES_LABEL = "runner-platform.io/pod-templates"
POOL_LABEL = "pool"
POOL_TAINT_KEY = "runner-platform.io/pool"
POOL_OWNER_LABEL = "runner-platform.io/owner"
POOL_KIND_LABEL = "runner-platform.io/pool-kind"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SPEC_KEY = "spec.json"
# Where each kind keeps its pod template (metadata + spec), from the resource's props.
_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": (),
    "kubernetes:core/v1:PodTemplate": ("template",),
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template"),
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def runner_pod_templates(
    resource_type: str, props: Mapping[str, Any], team_namespaces: Collection[str] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, template)`` for each pod template of a team the resource declares: one
    labelled with a team, or in a runner namespace (by its prefix, or one of
    ``team_namespaces``, the namespaces the stack labels with a team)."""
    if resource_type == CONFIG_MAP:
        labels = dig(props, "metadata", "labels") or {}
        if labels.get(POD_TEMPLATES_LABEL) != "true":
            return
        for key, text in (props.get("data") or {}).items():
            if not str(key).endswith(".json") or not isinstance(text, str):
                continue
            try:
                template = json.loads(text)
            except ValueError:
                continue
            if isinstance(template, dict):
                yield f"data[{key}]", template
        return
    path = _TEMPLATE_PATHS.get(resource_type)
    if path is None:
        return
    template = dig(props, *path) if path else props
    if not isinstance(template, dict):
        return
    labels = {
        **(dig(props, "metadata", "labels") or {}),
        **(dig(template, "metadata", "labels") or {}),
    }
    namespace = dig(props, "metadata", "namespace")
    in_runner_namespace = isinstance(namespace, str) and (
        namespace.startswith(RUNNER_NAMESPACE_PREFIX) or namespace in team_namespaces
    )
    if TEAM_LABEL in labels or in_runner_namespace:
        yield ".".join(path) or "spec", {**template, "metadata": {"labels": labels}}


def _containers(pod_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in as_list(pod_spec.get(key))
        if isinstance(c, Mapping)
    ]


def privileged(container: Mapping[str, Any]) -> bool:
    """A privileged container, or one that adds any capability (SYS_ADMIN, NET_ADMIN,
    SYS_PTRACE, BPF, ... in any spelling), as the platform's admission policy judges it."""
    context = container.get("securityContext")
    if not isinstance(context, Mapping):
        return False
    if context.get("privileged") is True:
        return True
    return bool(as_list(dig(context, "capabilities", "add")))


def _validate_host_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for where, template in runner_pod_templates(args.resource_type, args.props):
        pod_spec = template.get("spec") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod_spec.get(field) is True:
                report(f"{where}: a runner pod may not set {field} (the node's own)", None)
        for volume in as_list(pod_spec.get("volumes")):
            if isinstance(volume, Mapping) and "hostPath" in volume:
                report(
                    f"{where}: runner pod volume '{volume.get('name')}' is a hostPath: runner "
                    "pods never mount the node's filesystem",
                    None,
                )
        for container in _containers(pod_spec):
            ports = [
                p.get("hostPort")
                for p in as_list(container.get("ports"))
                if isinstance(p, Mapping) and p.get("hostPort")
            ]
            if ports:
                report(
                    f"{where}: runner pod container '{container.get('name')}' sets hostPort "
                    f"{ports}: runner pods never listen on the node's own addresses",
                    None,
                )


runner_pod_host_access = ResourceValidationPolicy(
    name="runner-pods-no-host-access",
    description="Runner and job pods use no hostPath volume, no host port and no host network, "
    "PID or IPC namespace.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_host_access,
)


def _isolated_owners(args: StackValidationArgs) -> dict[str, str]:
    """Pool name → owning team, for the NodePools the stack declares as isolated."""
    return {
        name: str(labels[POOL_OWNER_LABEL])
        for name, labels in named_labels(args, NODE_POOL)
        if labels.get(POOL_KIND_LABEL) == "isolated" and labels.get(POOL_OWNER_LABEL)
    }


def _pool_of(pod_spec: Mapping[str, Any]) -> str | None:
    selected = (pod_spec.get("nodeSelector") or {}).get(POOL_LABEL)
    tolerated = {
        t.get("value")
        for t in as_list(pod_spec.get("tolerations"))
        if isinstance(t, Mapping) and t.get("key") == POOL_TAINT_KEY
    }
    # An isolated pool's nodes are tainted: a pod is there only if it selects and
    # tolerates that pool (and tolerates no other).
    return selected if selected is not None and tolerated == {selected} else None


def _privileged_pods(args: StackValidationArgs, report: ReportViolation) -> None:
    owners = _isolated_owners(args)
    teams = runner_namespaces(args)
    for resource in args.resources:
        # The team is the namespace's (the admission policy reads the same label), never a
        # label the workload gives itself.
        team = teams.get(str(dig(resource.props, "metadata", "namespace")))
        found = runner_pod_templates(resource.resource_type, resource.props, teams)
        for where, template in found:
            pod_spec = template.get("spec") or {}
            names = [str(c.get("name")) for c in _containers(pod_spec) if privileged(c)]
            if not names:
                continue
            pool = _pool_of(pod_spec)
            if team is None or pool is None or owners.get(pool) != team:
                selected = (pod_spec.get("nodeSelector") or {}).get(POOL_LABEL, "any")
                whose = (
                    f"team '{team}'"
                    if team is not None
                    else "a team (its namespace is not one the stack declares for a team)"
                )
                report(
                    f"{resource.resource_type} {resource.name} {where}: privileged container(s) "
                    f"{names} on pool '{selected}', which is not isolated for {whose}: "
                    "privileged runners only run on an isolated pool of their team",
                    resource.urn,
                )


def _dind_modes(args: StackValidationArgs, report: ReportViolation) -> None:
    """The controller's spec: no team runs 'dind' on a pool that is not isolated for it."""
    for resource in args.resources:
        if resource.resource_type != CONFIG_MAP:
            continue
        text = (resource.props.get("data") or {}).get(SPEC_KEY)
        if not isinstance(text, str):
            continue  # not the controller's config, or not known in this preview
        try:
            spec = json.loads(text)
        except ValueError:
            continue
        pools = {p.get("name"): p for p in as_list(spec.get("pools")) if isinstance(p, Mapping)}
        for index, team in enumerate(as_list(spec.get("teams"))):
            if not isinstance(team, Mapping):
                continue
            modes = team.get("container_modes") or {}
            for pool_name in as_list(team.get("pools")):
                mode = modes.get(pool_name, team.get("container_mode", "kubernetes"))
                pool = pools.get(pool_name) or {}
                if mode == "dind" and not (
                    pool.get("kind") == "isolated" and pool.get("owner") == team.get("name")
                ):
                    report(
                        f"ConfigMap {resource.name} {SPEC_KEY} teams[{index}] "
                        f"('{team.get('name')}'): container mode 'dind' (a privileged "
                        f"container) on pool '{pool_name}', which is "
                        f"{pool.get('kind', 'unknown')} and not isolated for the team",
                        resource.urn,
                    )


def _validate_privileged(args: StackValidationArgs, report: ReportViolation) -> None:
    _privileged_pods(args, report)
    _dind_modes(args, report)


privileged_runner_on_shared_pool = StackValidationPolicy(
    name="no-privileged-runner-on-shared-pool",
    description="A privileged runner container (the dind mode) runs only on an isolated pool "
    "owned by the runner's team, never on a pool other teams share.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_privileged,
)


def _validate_service_accounts(args: StackValidationArgs, report: ReportViolation) -> None:
    declared = set(runner_namespaces(args))
    tokenless_defaults: set[str] = set()
    for resource in args.resources:
        if resource.resource_type not in SERVICE_ACCOUNT_TYPES:
            continue
        namespace = dig(resource.props, "metadata", "namespace")
        name = dig(resource.props, "metadata", "name")
        if not isinstance(namespace, str) or not (
            namespace in declared or namespace.startswith(RUNNER_NAMESPACE_PREFIX)
        ):
            continue
        automount = resource.props.get("automountServiceAccountToken")
        if automount is False:
            if name == "default":
                tokenless_defaults.add(namespace)
            continue
        report(
            f"ServiceAccount {namespace}/{name} does not set automountServiceAccountToken: "
            "false: every pod of the runner namespace that runs as it gets an API token",
            resource.urn,
        )
    for namespace in sorted(declared - tokenless_defaults):
        report(
            f"Namespace {namespace}: its 'default' ServiceAccount is not declared with "
            "automountServiceAccountToken: false, so any pod there that names no account "
            "gets an API token",
            None,
        )


runner_service_accounts_no_token = StackValidationPolicy(
    name="runner-service-accounts-mount-no-token",
    description="Every ServiceAccount of a runner namespace, the 'default' one included, "
    "sets automountServiceAccountToken: false.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_service_accounts,
)
