"""Kubernetes objects that let runners serve container jobs and image builds, safely.

Per team namespace: the runner ServiceAccount's Role (exactly what the kubernetes-mode
container hooks need, in that namespace only), the hooks ConfigMap (the platform's hook
entry point and one job pod template per pool), a ResourceQuota and LimitRange that job
pods count against, and the network rules job pods and buildkitd need. Cluster-wide: the
work volume StorageClasses and a ValidatingAdmissionPolicy that holds every pod in a
runner namespace (runner, job or hand-made) to its team's pools, with no host
namespaces, no hostPath and privilege only on the team's own isolated dind pools.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from components.k8s_objects import Manifest
from controller.model import (
    BUILDKIT_PORT,
    CILIUM_STARTUP_TAINT,
    CONTAINER_MODE_LABEL,
    HOOK_MODES,
    HOOK_PODS_PER_RUNNER,
    HOOKS_CONFIG_MAP,
    HOOKS_ENTRY_KEY,
    JOB_CONTAINER_TEMPLATE,
    JOB_POD_APP,
    POOL_LABEL,
    POOL_TAINT_KEY,
    RUNNER_PRIORITY_CLASS,
    RUNNER_SERVICE_ACCOUNT,
    RUNNER_SUBDOMAIN,
    PlatformSpec,
    Pool,
    Team,
    job_template_key,
)
from controller.quantity import format_cpu, format_memory, parse_quantity

HOOKS_ENTRY_POINT = Path(__file__).resolve().parent / "hooks" / "index.js"
RUNNER_APP = "github-runner"  # controller/provision/pod.py labels runner pods so
TEAM_LABEL = "runner-platform.io/team"
POD_TEMPLATES_LABEL = "runner-platform.io/pod-templates"
RUNNER_UID = 1001
EBS_PROVISIONER = "ebs.csi.aws.com"
LOCAL_PROVISIONER = "openebs.io/local"
# Where the EKS AMI's setup-local-disks mounts the RAID0 array of instance-store disks
# (Karpenter's instanceStorePolicy: RAID0); the kubelet and containerd live there too.
NVME_BASE_PATH = "/mnt/k8s-disks/0/runner-work"
ADMISSION_POLICY = "runner-platform-team-pods"
# Each job pod may run service containers the template cannot name (the hooks name them
# after their images); the LimitRange gives them requests and the quota allows for two.
SERVICES_PER_JOB = 2
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_REQUESTS = {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "1Gi"}

# What the kubernetes-mode hooks check with SelfSubjectAccessReviews before a job and
# then use (actions/runner-container-hooks packages/k8s/src/k8s/index.ts,
# requiredPermissions, v0.7.0: the version the actions-runner image ships), plus
# "patch" on pods for the platform's entry point, which sets each job pod's owner.
HOOK_RULES: list[dict[str, list[str]]] = [
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "create", "delete", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "delete"]},
]


def hook_pools(spec: PlatformSpec, team: Team) -> list[Pool]:
    """The team's pools whose runners start job pods through the container hooks."""
    return [spec.pool(name) for name in team.pools if team.mode_on(name) in HOOK_MODES]


def uses_hooks(spec: PlatformSpec, team: Team) -> bool:
    return bool(hook_pools(spec, team))


def modes_of(team: Team) -> set[str]:
    return {team.mode_on(name) for name in team.pools}


def pod_security_level(team: Team) -> str:
    """Pod Security admission level of the team's namespace.

    "baseline" unless the team runs a rootless buildkitd (seccomp and AppArmor
    unconfined, which baseline refuses) or a dind daemon (privileged); then
    "privileged", and the admission policy below holds the line instead.
    """
    return "privileged" if modes_of(team) & {"buildkit", "dind"} else "baseline"


# --- the runner ServiceAccount's rights --------------------------------------------------


def runner_role(team: Team) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": RUNNER_SERVICE_ACCOUNT, "namespace": team.namespace},
        "rules": HOOK_RULES,
    }


def runner_role_binding(team: Team) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": RUNNER_SERVICE_ACCOUNT, "namespace": team.namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": RUNNER_SERVICE_ACCOUNT,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": RUNNER_SERVICE_ACCOUNT, "namespace": team.namespace}
        ],
    }


# --- job pods ----------------------------------------------------------------------------


def job_labels(team: Team, pool: Pool) -> dict[str, str]:
    """Labels of a job pod; the hooks add runner-pod=<runner pod> and the platform's entry
    point makes the runner pod its owner. Not github-runner: job pods are not runners."""
    return {
        "app.kubernetes.io/name": JOB_POD_APP,
        "app.kubernetes.io/managed-by": "runner-platform",
        TEAM_LABEL: team.name,
        "runner-platform.io/pool": pool.name,
        "runner-platform.io/scale-set": f"{team.name}-{pool.name}",
    }


def job_pod_template(team: Team, pool: Pool) -> dict[str, Any]:
    """The pod template the hooks merge into every job pod of ``team`` on ``pool``.

    The hooks copy its labels and annotations, merge the ``$job`` container into the job
    container and set every other ``spec`` key as given (so it sets no ``affinity``: the
    hooks' own affinity keeps the job pod on its runner's node, where their shared work
    volume is).
    """
    wanted = team.job_resources
    job_env: list[dict[str, Any]] = []
    if team.mode_on(pool.name) == "buildkit":
        # The hooks label the job pod with its runner's name; the runner's buildkitd
        # answers at <runner>.runners (the pod's hostname under the headless Service).
        job_env = [
            {
                "name": "RUNNER_PLATFORM_RUNNER_POD",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['runner-pod']"}},
            },
            {
                "name": "BUILDKIT_HOST",
                "value": f"tcp://$(RUNNER_PLATFORM_RUNNER_POD).{RUNNER_SUBDOMAIN}:{BUILDKIT_PORT}",
            },
        ]
    requests = {
        "cpu": wanted.cpu,
        "memory": wanted.memory,
        "ephemeral-storage": wanted.ephemeral_storage,
    }
    limits = {"memory": wanted.memory, "ephemeral-storage": wanted.ephemeral_storage}
    if pool.gpus_per_runner:
        # The job, not its runner, gets the pool's GPUs (request equals limit).
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(pool.gpus_per_runner)
    return {
        "metadata": {"labels": job_labels(team, pool), "annotations": {}},
        "spec": {
            # No API token and no Service env: the job runs workflow code.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "priorityClassName": RUNNER_PRIORITY_CLASS,
            "activeDeadlineSeconds": team.job_timeout_minutes * 60,
            "nodeSelector": {POOL_LABEL: pool.name},
            "tolerations": pool.tolerations(),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "fsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": JOB_CONTAINER_TEMPLATE,
                    "env": job_env,
                    "resources": {"requests": requests, "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def job_pod(team: Team, pool: Pool, runner_pod: str, node: str, image: str) -> Manifest:
    """A job pod as the kubernetes-mode hooks (v0.7.0) create it from the template: what
    tests submit to a real API server and scheduler to prove the template works."""
    template = job_pod_template(team, pool)
    extension = template["spec"]["containers"][0]
    job_container = {
        "name": "job",
        "image": image,
        "command": ["tail"],
        "args": ["-f", "/dev/null"],
        "env": [{"name": "GITHUB_ACTIONS", "value": "true"}, *extension["env"]],
        "resources": extension["resources"],
        "securityContext": extension["securityContext"],
        "volumeMounts": [{"name": "work", "mountPath": "/__w"}],
    }
    spec = {key: value for key, value in template["spec"].items() if key != "containers"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{runner_pod}-workflow",
            "namespace": team.namespace,
            "labels": {"runner-pod": runner_pod, **template["metadata"]["labels"]},
            "annotations": {},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [job_container],
            # ACTIONS_RUNNER_USE_KUBE_SCHEDULER: the runner's node, by affinity.
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "volumes": [
                {"name": "work", "persistentVolumeClaim": {"claimName": f"{runner_pod}-work"}}
            ],
            **spec,
        },
    }


def hooks_config_map(spec: PlatformSpec, team: Team) -> Manifest:
    data = {HOOKS_ENTRY_KEY: HOOKS_ENTRY_POINT.read_text()}
    for pool in hook_pools(spec, team):
        # JSON is YAML: the hooks read the template with js-yaml.
        data[job_template_key(pool.name)] = json.dumps(
            job_pod_template(team, pool), indent=2, sort_keys=True
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": HOOKS_CONFIG_MAP,
            "namespace": team.namespace,
            # The policy pack reads the job pod templates of ConfigMaps so labelled.
            "labels": {POD_TEMPLATES_LABEL: "true", TEAM_LABEL: team.name},
        },
        "data": data,
    }


# --- quota ---------------------------------------------------------------------------


def _add(total: dict[str, Decimal], requests: dict[str, str], times: int = 1) -> None:
    for key, value in requests.items():
        total[key] = total.get(key, Decimal(0)) + parse_quantity(value) * times


def runner_footprint(spec: PlatformSpec, team: Team, pool: Pool) -> dict[str, Decimal]:
    """Requests one runner of ``team`` on ``pool`` may hold at once, with its sidecar,
    its job pod and that pod's service containers."""
    mode = team.mode_on(pool.name)
    total: dict[str, Decimal] = {}
    runner = team.resources
    _add(
        total,
        {
            "cpu": runner.cpu,
            "memory": runner.memory,
            "ephemeral-storage": runner.ephemeral_storage,
        },
    )
    job = team.job_resources
    if mode in ("buildkit", "dind"):
        _add(total, {"cpu": job.cpu, "memory": job.memory})
    if mode == "dind":
        _add(total, {"ephemeral-storage": job.ephemeral_storage})
    if mode in HOOK_MODES:
        _add(
            total,
            {"cpu": job.cpu, "memory": job.memory, "ephemeral-storage": job.ephemeral_storage},
        )
        _add(total, SERVICE_REQUESTS, SERVICES_PER_JOB)
        _add(total, {"storage": pool.work_volume.size})
    return total


def resource_quota(spec: PlatformSpec, team: Team) -> Manifest:
    """The team's ceiling: max_runners runners at their largest footprint. Job pods count
    against it like runners, so a workflow cannot start pods beyond the team's share."""
    footprint: dict[str, Decimal] = {}
    for pool_name in team.pools:
        for key, value in runner_footprint(spec, team, spec.pool(pool_name)).items():
            footprint[key] = max(footprint.get(key, Decimal(0)), value)
    runners = team.max_runners
    pods_each = HOOK_PODS_PER_RUNNER if uses_hooks(spec, team) else 1
    hard = {
        "pods": str(runners * pods_each),
        "requests.cpu": format_cpu(footprint["cpu"] * runners),
        "requests.memory": format_memory(footprint["memory"] * runners, round_up=True),
        "requests.ephemeral-storage": format_memory(
            footprint["ephemeral-storage"] * runners, round_up=True
        ),
    }
    if "storage" in footprint:
        hard["persistentvolumeclaims"] = str(runners)
        # Rounded up: a quota a whole Mi short refuses the team's last runner.
        hard["requests.storage"] = format_memory(footprint["storage"] * runners, round_up=True)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "runners", "namespace": team.namespace},
        "spec": {"hard": hard},
    }


def limit_range(team: Team) -> Manifest:
    """Requests for containers that state none (a job's service containers): the quota
    refuses a pod without them. No default CPU limit, as for runners."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "container-defaults", "namespace": team.namespace},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": dict(SERVICE_REQUESTS),
                    "default": {
                        "memory": team.job_resources.memory,
                        "ephemeral-storage": team.job_resources.ephemeral_storage,
                    },
                }
            ]
        },
    }


# --- network ---------------------------------------------------------------------------


def _runner_modes_selector(modes: list[str]) -> dict[str, Any]:
    return {
        "matchLabels": {"app.kubernetes.io/name": RUNNER_APP},
        "matchExpressions": [{"key": CONTAINER_MODE_LABEL, "operator": "In", "values": modes}],
    }


def kube_api_egress(team: Team) -> Manifest:
    """Runner pods of the hook modes reach the Kubernetes API (the hooks run in them);
    job pods do not. Cilium identifies the API server as an entity, which a plain
    NetworkPolicy cannot: its addresses are EKS-managed interfaces inside the VPC."""
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "runner-kube-api", "namespace": team.namespace},
        "spec": {
            "endpointSelector": _runner_modes_selector(sorted(HOOK_MODES)),
            "egress": [
                {
                    "toEntities": ["kube-apiserver"],
                    "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
                }
            ],
        },
    }


def buildkit_objects(team: Team) -> list[Manifest]:
    """The headless Service that names each buildkit runner pod, and the two rules that
    let the team's job pods (and nothing else) reach its buildkitd."""
    runners = _runner_modes_selector(["buildkit"])
    port = [{"protocol": "TCP", "port": BUILDKIT_PORT}]
    jobs = {"matchLabels": {"app.kubernetes.io/name": JOB_POD_APP}}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": RUNNER_SUBDOMAIN, "namespace": team.namespace},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {
                    "app.kubernetes.io/name": RUNNER_APP,
                    CONTAINER_MODE_LABEL: "buildkit",
                },
                "ports": [{"name": "buildkit", "port": BUILDKIT_PORT}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "buildkit-from-jobs", "namespace": team.namespace},
            "spec": {
                "podSelector": runners,
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": jobs}], "ports": port}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "jobs-to-buildkit", "namespace": team.namespace},
            "spec": {
                "podSelector": jobs,
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": runners}], "ports": port}],
            },
        },
    ]


# --- storage ---------------------------------------------------------------------------


def work_storage_classes(spec: PlatformSpec) -> list[Manifest]:
    """The platform's work volume classes that some hook-mode pool uses."""
    used = {
        spec.pool(name).work_storage_class
        for team in spec.teams
        for name in team.pools
        if team.mode_on(name) in HOOK_MODES
    }
    classes: list[Manifest] = []
    if "runner-work-gp3" in used:
        classes.append(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "runner-work-gp3"},
                "provisioner": EBS_PROVISIONER,
                "parameters": {"type": "gp3", "encrypted": "true"},
                "reclaimPolicy": "Delete",
                # Created in the zone of the node the runner was scheduled to.
                "volumeBindingMode": "WaitForFirstConsumer",
                "allowVolumeExpansion": False,
            }
        )
    if "runner-work-nvme" in used:
        classes.append(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": "runner-work-nvme",
                    "annotations": {
                        "openebs.io/cas-type": "local",
                        "cas.openebs.io/config": (
                            "- name: StorageType\n  value: hostpath\n"
                            f"- name: BasePath\n  value: {NVME_BASE_PATH}\n"
                        ),
                    },
                },
                "provisioner": LOCAL_PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer",
            }
        )
    return classes


def ebs_pools(spec: PlatformSpec) -> bool:
    return any(c["provisioner"] == EBS_PROVISIONER for c in work_storage_classes(spec))


def nvme_pools(spec: PlatformSpec) -> bool:
    return any(c["provisioner"] == LOCAL_PROVISIONER for c in work_storage_classes(spec))


# --- admission ---------------------------------------------------------------------------


def _cel_map(values: dict[str, list[str]]) -> str:
    return json.dumps({key: sorted(value) for key, value in sorted(values.items())})


# What Pod Security "baseline" allows (runners-web and runners-ml run at "privileged" for
# buildkit and dind, so the admission policy holds these lines there).
BASELINE_SYSCTLS = (
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
)
BASELINE_SELINUX_TYPES = (
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
)


def _selinux_baseline(options: str) -> str:
    """CEL: SELinux options at ``options`` (a securityContext's seLinuxOptions) as baseline
    allows them: a type from its list or none, and no custom user or role."""
    types = json.dumps(["", *BASELINE_SELINUX_TYPES])
    return (
        f"!has({options}) || ((!has({options}.type) || {options}.type in {types}) && "
        f"(!has({options}.user) || {options}.user == '') && "
        f"(!has({options}.role) || {options}.role == ''))"
    )


def admission_policy(spec: PlatformSpec) -> list[Manifest]:
    """Every pod created in a runner namespace, whoever creates it (the provisioner, the
    hooks with the runner's token, a workflow that found that token), and every ephemeral
    container added to one, stays on its team's pools, tolerates neither another pool's
    taint nor Cilium's startup taint, uses no host namespace, port or path, keeps Pod
    Security baseline's procMount, sysctl and SELinux lines, and is privileged (or
    unconfined) only where the team's mode needs it: dind on the team's own isolated pool,
    buildkitd on a buildkit pool."""
    pools = {team.name: list(team.pools) for team in spec.teams}
    privileged = {
        team.name: [name for name in team.pools if team.mode_on(name) == "dind"]
        for team in spec.teams
    }
    buildkit = {
        team.name: [name for name in team.pools if team.mode_on(name) == "buildkit"]
        for team in spec.teams
    }
    sc = "c.securityContext"
    unprivileged = (
        f"!has({sc}) || ((!has({sc}.privileged) || !{sc}.privileged) && "
        f"(!has({sc}.capabilities) || !has({sc}.capabilities.add) || "
        f"size({sc}.capabilities.add) == 0))"
    )
    confined = (
        f"!has({sc}) || ((!has({sc}.seccompProfile) || {sc}.seccompProfile.type != 'Unconfined')"
        f" && (!has({sc}.appArmorProfile) || {sc}.appArmorProfile.type != 'Unconfined'))"
    )
    pod_sc = "object.spec.securityContext"
    pod_confined = (
        f"!has({pod_sc}) || ((!has({pod_sc}.seccompProfile) || "
        f"{pod_sc}.seccompProfile.type != 'Unconfined') && (!has({pod_sc}.appArmorProfile) || "
        f"{pod_sc}.appArmorProfile.type != 'Unconfined'))"
    )
    validations = [
        {
            "expression": "!(has(object.spec.hostNetwork) && object.spec.hostNetwork) && "
            "!(has(object.spec.hostPID) && object.spec.hostPID) && "
            "!(has(object.spec.hostIPC) && object.spec.hostIPC)",
            "message": "pods in runner namespaces may not use the node's network, PID or IPC "
            "namespace",
        },
        {
            "expression": "!has(object.spec.volumes) || "
            "object.spec.volumes.all(v, !has(v.hostPath))",
            "message": "pods in runner namespaces may not mount hostPath volumes",
        },
        {
            "expression": "variables.containers.all(c, !has(c.ports) || "
            "c.ports.all(p, !has(p.hostPort) || p.hostPort == 0))",
            "message": "pods in runner namespaces may not use host ports",
        },
        {
            # A scheduled pod has its nodeName; only a new pod may not name one.
            "expression": "request.operation != 'CREATE' || !has(object.spec.nodeName)",
            "message": "pods in runner namespaces are placed by the scheduler (no nodeName)",
        },
        {
            "expression": "variables.pool in variables.pools",
            "messageExpression": "'pods of team ' + variables.team + ' must select one of its "
            "pools ' + variables.pools.join(', ') + ' with nodeSelector pool'",
        },
        {
            "expression": "!has(object.spec.tolerations) || object.spec.tolerations.all(t, "
            f"has(t.key) && t.key != '' && t.key != '{CILIUM_STARTUP_TAINT}' && "
            f"(t.key != '{POOL_TAINT_KEY}' || "
            "(has(t.value) && t.value in variables.pools && "
            "(!has(t.operator) || t.operator == 'Equal'))))",
            "message": "pods in runner namespaces tolerate only their own team's pool taints "
            f"(no wildcard tolerations, not Cilium's startup taint {CILIUM_STARTUP_TAINT})",
        },
        {
            "expression": f"variables.privileged || variables.containers.all(c, {unprivileged})",
            "messageExpression": "'privileged containers and added capabilities are only for "
            "dind on an isolated pool of team ' + variables.team + ', not on pool \\'' + "
            "variables.pool + '\\''",
        },
        {
            "expression": f"variables.privileged || (({pod_confined}) && "
            "variables.containers.all(c, (c.name == 'buildkitd' && "
            f"variables.pool in variables.buildkitPools) || ({confined})))",
            "message": "seccomp and AppArmor stay confined, except for buildkitd on a buildkit "
            "pool and dind on an isolated dind pool",
        },
        {
            "expression": f"variables.containers.all(c, !has({sc}) || "
            f"!has({sc}.procMount) || {sc}.procMount == 'Default')",
            "message": "pods in runner namespaces keep the default /proc mask (procMount "
            "Default), as Pod Security baseline requires",
        },
        {
            "expression": f"!has({pod_sc}) || !has({pod_sc}.sysctls) || "
            f"{pod_sc}.sysctls.all(s, s.name in {json.dumps(list(BASELINE_SYSCTLS))})",
            "message": "pods in runner namespaces set only the sysctls Pod Security baseline "
            "allows: " + ", ".join(BASELINE_SYSCTLS),
        },
        {
            "expression": f"(!has({pod_sc}) || {_selinux_baseline(f'{pod_sc}.seLinuxOptions')})"
            f" && variables.containers.all(c, !has({sc}) || "
            f"{_selinux_baseline(f'{sc}.seLinuxOptions')})",
            "message": "pods in runner namespaces use only the SELinux types Pod Security "
            "baseline allows (" + ", ".join(BASELINE_SELINUX_TYPES) + ") and no custom "
            "SELinux user or role",
        },
    ]
    policy: Manifest = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": ADMISSION_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    },
                    # kubectl debug and the like add containers to a running pod.
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["pods/ephemeralcontainers"],
                    },
                ]
            },
            "variables": [
                {"name": "team", "expression": f"namespaceObject.metadata.labels['{TEAM_LABEL}']"},
                {
                    "name": "pool",
                    "expression": "has(object.spec.nodeSelector) && "
                    f"'{POOL_LABEL}' in object.spec.nodeSelector ? "
                    f"object.spec.nodeSelector['{POOL_LABEL}'] : ''",
                },
                {"name": "pools", "expression": f"{_cel_map(pools)}[variables.team]"},
                {
                    "name": "privileged",
                    "expression": f"variables.pool in {_cel_map(privileged)}[variables.team]",
                },
                {
                    "name": "buildkitPools",
                    "expression": f"{_cel_map(buildkit)}[variables.team]",
                },
                {
                    "name": "containers",
                    "expression": "object.spec.containers + (has(object.spec.initContainers) ? "
                    "object.spec.initContainers : []) + (has(object.spec.ephemeralContainers) ? "
                    "object.spec.ephemeralContainers : [])",
                },
            ],
            "validations": validations,
        },
    }
    binding: Manifest = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": ADMISSION_POLICY},
        "spec": {
            "policyName": ADMISSION_POLICY,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchExpressions": [{"key": TEAM_LABEL, "operator": "Exists"}]
                }
            },
        },
    }
    return [policy, binding]


# --- everything ------------------------------------------------------------------------


def team_objects(spec: PlatformSpec, team: Team) -> list[Manifest]:
    objects = [resource_quota(spec, team), limit_range(team)]
    if uses_hooks(spec, team):
        objects += [
            runner_role(team),
            runner_role_binding(team),
            hooks_config_map(spec, team),
            kube_api_egress(team),
        ]
    if "buildkit" in modes_of(team):
        objects += buildkit_objects(team)
    return objects


def container_objects(spec: PlatformSpec) -> list[Manifest]:
    """Cluster-wide objects first, then each team's (its namespace must exist already)."""
    objects = [*work_storage_classes(spec), *admission_policy(spec)]
    for team in spec.teams:
        objects += team_objects(spec, team)
    return objects
