"""The runner pod and its JIT config Secret, as plain Kubernetes JSON.

Pure functions: the provisioner calls them and sends the result; tests pin every field
and dry-run the objects against a real API server. Every value comes from the validated
spec, the runtime facts or the provisioner's own name and runner id: nothing a workflow
controls (labels, job or branch names) reaches a pod, so a hostile ``runs-on`` cannot pick
a node, a ServiceAccount or another team's credentials.

Scheduling mirrors the node pools (``components/node_pools.py``): the ``pool`` label
selects the pool's nodes and the pod tolerates exactly that pool's taints, so a runner
lands on its own pool and nowhere else.
"""

from __future__ import annotations

from typing import Any

from controller.model import (
    BUILDKIT_PORT,
    CONTAINER_MODE_LABEL,
    HOOK_MODES,
    HOOKS_CONFIG_MAP,
    HOOKS_DIR,
    HOOKS_ENTRY_KEY,
    POOL_LABEL,
    RUNNER_SUBDOMAIN,
    STOCK_HOOKS,
    PlatformSpec,
    Pool,
    RuntimeFacts,
    ScaleSet,
    Team,
    ToolCache,
    job_template_key,
)
from controller.model.base import RUNNER_PRIORITY_CLASS, RUNNER_SERVICE_ACCOUNT

RUNNER_APP = "github-runner"
MANAGED_BY = "runner-platform"
LABEL_APP = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TEAM = "runner-platform.io/team"
LABEL_POOL = "runner-platform.io/pool"
LABEL_SCALE_SET = "runner-platform.io/scale-set"
LABEL_INSTANCE = "runner-platform.io/instance"
RUNNER_ID_ANNOTATION = "runner-platform.io/runner-id"
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"
JIT_SECRET_KEY = "jitconfig"
JIT_ENV = "ACTIONS_RUNNER_INPUT_JITCONFIG"
RUNNER_CONTAINER = "runner"
RUNNER_COMMAND = ["/home/runner/run.sh"]
WORK_DIR = "/home/runner/_work"
WORK_VOLUME = "work"
HOOKS_VOLUME = "hooks"
TOOL_CACHE_VOLUME = "tool-cache"
POD_UID_ENV = "RUNNER_PLATFORM_POD_UID"
SLOT_LABEL = "runner-platform.io/slot"
HOSTNAME_LABEL = "kubernetes.io/hostname"
READ_ONLY_MODE = 0o444
BUILDKIT_CONTAINER = "buildkitd"
BUILDKIT_UID = 1000  # the moby/buildkit rootless image's user
DIND_CONTAINER = "dind"
DIND_SOCKET_VOLUME = "dind-sock"
DIND_SOCKET_DIR = "/var/run"
DIND_EXTERNALS = "dind-externals"
EXTERNALS_DIR = "/home/runner/externals"
DOCKER_HOST = "unix:///var/run/docker.sock"
GPU_RESOURCE = "nvidia.com/gpu"
# The actions-runner image's `runner` user and group.
RUNNER_UID = 1001
# A runner waits for GitHub to hand it a job (queue wait, or idle as one of the team's
# min_idle runners) before the job's own timeout starts; the deadline allows for that.
IDLE_ALLOWANCE_SECONDS = 14 * 60
# On deletion the runner gets SIGTERM and reports the job as cancelled to GitHub; it needs
# seconds for that, not the job's length.
TERMINATION_GRACE_SECONDS = 60
# Together the two fit the 15 minutes the node pools add to the longest job for a node's
# termination grace: Karpenter deletes a do-not-disrupt pod only that grace minus the
# pod's own before it forces a draining node off, so a drain never cuts a pod short of its
# deadline (tests/unit/test_runner_pod.py checks it per scale set).


class RunnerPodError(ValueError):
    """The spec, the facts and the scale set do not describe a runner this platform runs."""


def selector(scale_set: ScaleSet | None = None) -> str:
    """Label selector of runner pods: all of them, or one scale set's.

    A scale set is selected by team and pool, not by its name alone: ``a-b`` on pool ``c``
    and ``a`` on pool ``b-c`` are both named ``a-b-c``.
    """
    labels = (
        runner_labels(scale_set)
        if scale_set is not None
        else {LABEL_APP: RUNNER_APP, LABEL_MANAGED_BY: MANAGED_BY}
    )
    return ",".join(f"{key}={value}" for key, value in labels.items())


def runner_labels(scale_set: ScaleSet) -> dict[str, str]:
    return {
        LABEL_APP: RUNNER_APP,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TEAM: scale_set.team,
        LABEL_POOL: scale_set.pool,
        LABEL_SCALE_SET: scale_set.name,
        LABEL_INSTANCE: scale_set.instance,
    }


def _team_and_pool(spec: PlatformSpec, scale_set: ScaleSet) -> tuple[Team, Pool]:
    team = next((t for t in spec.teams if t.name == scale_set.team), None)
    if team is None:
        raise RunnerPodError(f"scale set '{scale_set.name}': no team '{scale_set.team}'")
    pool = next((p for p in spec.pools if p.name == scale_set.pool), None)
    # The spec only lets a team use its own pools (an isolated pool has one owner); a
    # scale set that disagrees with it must not become a pod on someone else's nodes.
    if pool is None or pool.name not in team.pools:
        raise RunnerPodError(
            f"scale set '{scale_set.name}': pool '{scale_set.pool}' is not a pool of "
            f"team '{team.name}'"
        )
    if scale_set.instance != team.instance:
        raise RunnerPodError(
            f"scale set '{scale_set.name}': instance '{scale_set.instance}' is not team "
            f"'{team.name}''s instance '{team.instance}'"
        )
    return team, pool


def _resources(team: Team, pool: Pool) -> dict[str, dict[str, str]]:
    wanted = team.resources
    requests = {
        "cpu": wanted.cpu,
        "memory": wanted.memory,
        "ephemeral-storage": wanted.ephemeral_storage,
    }
    # Memory and disk are not compressible: past the request the kubelet would have to
    # evict a neighbour's job, so each runner is held to what it asked for. CPU is
    # compressible: without a limit a runner may use idle cores instead of being
    # throttled by CFS quota, and the request still guarantees each runner its share.
    limits = {"memory": wanted.memory, "ephemeral-storage": wanted.ephemeral_storage}
    if pool.gpus_per_runner and team.mode_on(pool.name) not in HOOK_MODES:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        # With container hooks the job pod asks for the GPUs: the job runs there.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(pool.gpus_per_runner)
    return {"requests": requests, "limits": limits}


def _env(
    spec: PlatformSpec, facts: RuntimeFacts, scale_set: ScaleSet, team: Team, name: str
) -> list[dict[str, Any]]:
    """The JIT config from the Secret, and the OIDC Manager's settings as plain values
    (what ``controller.settings.JobSettings.from_env`` reads in the job)."""
    role_arn = facts.team_role_arns.get(team.name)
    if not role_arn:
        raise RunnerPodError(
            f"no IAM role ARN for team '{team.name}' in the runtime facts: "
            "was the stack deployed with this team?"
        )
    mount = facts.vault_mounts.get(team.instance)
    if not mount:
        raise RunnerPodError(
            f"no Vault mount for GitHub instance '{team.instance}' (team '{team.name}') "
            "in the runtime facts"
        )
    plain = {
        "RUNNER_PLATFORM_AWS_ROLE_ARN": role_arn,
        "AWS_REGION": spec.cluster.region,
        "VAULT_ADDR": spec.vault.address,
        "RUNNER_PLATFORM_VAULT_MOUNT": mount,
        # components/vault.py names each team's JWT role after the team.
        "RUNNER_PLATFORM_VAULT_ROLE": team.name,
        "RUNNER_PLATFORM_VAULT_AUDIENCE": spec.vault.audience,
        "RUNNER_PLATFORM_TEAM": team.name,
        "RUNNER_PLATFORM_POOL": scale_set.pool,
    }
    return [
        {"name": JIT_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": JIT_SECRET_KEY}}},
        *({"name": key, "value": value} for key, value in plain.items()),
    ]


def runner_pod(
    spec: PlatformSpec, facts: RuntimeFacts, scale_set: ScaleSet, name: str, runner_id: int
) -> dict[str, Any]:
    """One single-use runner: its JIT config comes from the Secret named ``name``.

    The team's container mode on the pool adds to it (docs/containers.md): ``kubernetes``
    the container hooks, an API token for them and a work volume its job pods share;
    ``buildkit`` also a rootless buildkitd; ``dind`` a privileged Docker daemon (isolated
    pools only: the model refuses it elsewhere); ``none`` nothing.
    """
    team, pool = _team_and_pool(spec, scale_set)
    mode = team.mode_on(pool.name)
    hooks = mode in HOOK_MODES
    labels = {**runner_labels(scale_set), CONTAINER_MODE_LABEL: mode}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": team.job_timeout_minutes * 60 + IDLE_ALLOWANCE_SECONDS,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "serviceAccountName": RUNNER_SERVICE_ACCOUNT,
        # Job code is untrusted: it gets no Kubernetes API token. The container hooks
        # need one to start job pods; then job code runs in those pods (which get none),
        # not beside the runner, unless the team turned require_job_container off.
        "automountServiceAccountToken": hooks,
        # Service links would put every Service of the namespace into the job's env.
        "enableServiceLinks": False,
        "priorityClassName": RUNNER_PRIORITY_CLASS,
        "nodeSelector": {POOL_LABEL: pool.name},
        "tolerations": pool.tolerations(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_runner_container(spec, facts, scale_set, team, pool, name)],
        "volumes": [_work_volume(team, pool, labels=runner_labels(scale_set))],
    }
    if spec.pods_per_runner(pool.name) > 1:
        # kubelet maxPods leaves room for each runner's job and step pods; the runner cap
        # itself is then one runner per slot per node (docs/adr/0006-container-modes.md).
        slot = str(runner_id % pool.max_runners_per_node)
        labels[SLOT_LABEL] = slot
        pod_spec["affinity"] = _one_runner_per_slot(pool, slot)
    if mode == "buildkit":
        # Job pods reach the runner's buildkitd at <pod>.runners:1234 (a headless Service).
        pod_spec["hostname"] = name
        pod_spec["subdomain"] = RUNNER_SUBDOMAIN
        pod_spec["containers"].append(_buildkit_container(team))
    if hooks:
        pod_spec["volumes"].append(
            {
                "name": HOOKS_VOLUME,
                "configMap": {"name": HOOKS_CONFIG_MAP, "defaultMode": READ_ONLY_MODE},
            }
        )
    if mode == "dind":
        pod_spec["initContainers"] = [_copy_externals(team)]
        pod_spec["containers"].append(_dind_container(team))
        pod_spec["volumes"] += [
            {"name": name_, "emptyDir": {}} for name_ in (DIND_SOCKET_VOLUME, DIND_EXTERNALS)
        ]
    if pool.tool_cache is not None:
        pod_spec.setdefault("initContainers", []).append(_copy_tool_cache(pool.tool_cache))
        pod_spec["volumes"].append(
            {"name": TOOL_CACHE_VOLUME, "emptyDir": {"sizeLimit": pool.tool_cache.size}}
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": team.namespace,
            "labels": labels,
            "annotations": {
                # A busy runner's node must not be consolidated away under its job
                # (expiry and spot interruption still apply).
                DO_NOT_DISRUPT_ANNOTATION: "true",
                RUNNER_ID_ANNOTATION: str(runner_id),
            },
        },
        "spec": pod_spec,
    }


_NO_PRIVILEGE = {
    # The image gives `runner` passwordless sudo; no_new_privs makes it inert.
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def _runner_container(
    spec: PlatformSpec, facts: RuntimeFacts, scale_set: ScaleSet, team: Team, pool: Pool, name: str
) -> dict[str, Any]:
    mode = team.mode_on(pool.name)
    env = _env(spec, facts, scale_set, team, name)
    mounts: list[dict[str, Any]] = [{"name": WORK_VOLUME, "mountPath": WORK_DIR}]
    if mode in HOOK_MODES:
        env += _hook_env(team, pool, name)
        mounts.append({"name": HOOKS_VOLUME, "mountPath": HOOKS_DIR, "readOnly": True})
    if mode == "buildkit":
        env.append({"name": "BUILDKIT_HOST", "value": f"tcp://127.0.0.1:{BUILDKIT_PORT}"})
    if mode == "dind":
        env.append({"name": "DOCKER_HOST", "value": DOCKER_HOST})
        mounts += [
            {"name": DIND_SOCKET_VOLUME, "mountPath": DIND_SOCKET_DIR},
            {"name": DIND_EXTERNALS, "mountPath": EXTERNALS_DIR},
        ]
    if pool.tool_cache is not None:
        env.append({"name": "RUNNER_TOOL_CACHE", "value": pool.tool_cache.path})
        mounts.append(
            {"name": TOOL_CACHE_VOLUME, "mountPath": pool.tool_cache.path, "readOnly": True}
        )
    return {
        "name": RUNNER_CONTAINER,
        "image": team.runner_image,
        # The pre-pull DaemonSet puts the image on warm nodes; use it even
        # for a moving tag rather than pulling again at every runner.
        "imagePullPolicy": "IfNotPresent",
        "command": RUNNER_COMMAND,
        "env": env,
        "resources": _resources(team, pool),
        "securityContext": {
            **_NO_PRIVILEGE,
            # The runner writes its JIT-decoded config (.runner, .credentials)
            # and _diag beside its binaries in /home/runner, and job steps
            # write to $HOME and /tmp; an emptyDir over /home/runner would hide
            # the runner itself. The pod is single-use and deleted after its
            # job, and every write counts against its ephemeral-storage limit.
            "readOnlyRootFilesystem": False,
        },
        "volumeMounts": mounts,
    }


def _hook_env(team: Team, pool: Pool, name: str) -> list[dict[str, Any]]:
    """What the kubernetes-mode container hooks read (runner-container-hooks 0.7, the
    version the actions-runner image ships), plus the runner pod's uid for the platform's
    entry point, which makes each job pod a dependent of this pod."""
    plain = {
        "ACTIONS_RUNNER_CONTAINER_HOOKS": f"{HOOKS_DIR}/{HOOKS_ENTRY_KEY}",
        "RUNNER_PLATFORM_STOCK_HOOKS": STOCK_HOOKS,
        "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER": "true" if team.require_job_container else "false",
        "ACTIONS_RUNNER_POD_NAME": name,
        # A generic ephemeral volume's claim is named <pod>-<volume>.
        "ACTIONS_RUNNER_CLAIM_NAME": f"{name}-{WORK_VOLUME}",
        "ACTIONS_RUNNER_KUBERNETES_NAMESPACE": team.namespace,
        # The scheduler places job pods (node affinity to this pod's node) instead of the
        # hooks binding them to the node directly: quota, taints and the template's pool
        # selector then apply to them as to any pod.
        "ACTIONS_RUNNER_USE_KUBE_SCHEDULER": "true",
        "ACTIONS_RUNNER_CONTAINER_HOOK_TEMPLATE": f"{HOOKS_DIR}/{job_template_key(pool.name)}",
    }
    return [
        *({"name": key, "value": value} for key, value in plain.items()),
        {"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]


def _work_volume(team: Team, pool: Pool, *, labels: dict[str, str]) -> dict[str, Any]:
    if team.mode_on(pool.name) not in HOOK_MODES:
        # On NVMe pools Karpenter stripes the instance store (RAID0) and the kubelet's
        # ephemeral storage lives on it, so this lands on NVMe.
        return {"name": WORK_VOLUME, "emptyDir": {"sizeLimit": team.resources.ephemeral_storage}}
    # Job pods mount the same claim (the hooks name it <pod>-work), so they run on this
    # pod's node; the claim is owned by the pod and goes with it.
    return {
        "name": WORK_VOLUME,
        "ephemeral": {
            "volumeClaimTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": pool.work_storage_class,
                    "resources": {"requests": {"storage": pool.work_volume.size}},
                },
            }
        },
    }


def _one_runner_per_slot(pool: Pool, slot: str) -> dict[str, Any]:
    return {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchLabels": {
                            LABEL_APP: RUNNER_APP,
                            LABEL_POOL: pool.name,
                            SLOT_LABEL: slot,
                        }
                    },
                    # Runners of every team on the pool share its nodes.
                    "namespaceSelector": {},
                    "topologyKey": HOSTNAME_LABEL,
                }
            ]
        }
    }


def _sidecar_resources(team: Team) -> dict[str, dict[str, str]]:
    wanted = team.job_resources
    return {
        "requests": {"cpu": wanted.cpu, "memory": wanted.memory},
        "limits": {"memory": wanted.memory},
    }


def _buildkit_container(team: Team) -> dict[str, Any]:
    """Rootless buildkitd as BuildKit documents it for Kubernetes: its own non-root user,
    no privilege; its state (the build cache) on the runner's work volume."""
    return {
        "name": BUILDKIT_CONTAINER,
        "image": team.buildkit_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "--addr",
            f"tcp://0.0.0.0:{BUILDKIT_PORT}",
            "--root",
            f"{WORK_DIR}/.buildkit",
            # Without it rootless buildkitd needs its own PID namespace per build, which
            # an unprivileged container cannot create (BuildKit docs/rootless.md).
            "--oci-worker-no-process-sandbox",
        ],
        "ports": [{"name": "buildkit", "containerPort": BUILDKIT_PORT}],
        "resources": _sidecar_resources(team),
        "securityContext": {
            "runAsNonRoot": True,
            # The rootless image's user; it maps its own user namespace (rootlesskit),
            # which needs seccomp and AppArmor to allow unshare and mount.
            "runAsUser": BUILDKIT_UID,
            "runAsGroup": BUILDKIT_UID,
            "privileged": False,
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        "volumeMounts": [{"name": WORK_VOLUME, "mountPath": WORK_DIR}],
    }


def _dind_container(team: Team) -> dict[str, Any]:
    """A privileged Docker daemon, as actions-runner-controller's dind mode runs it."""
    return {
        "name": DIND_CONTAINER,
        "image": team.dind_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["dockerd", f"--host={DOCKER_HOST}", f"--group={RUNNER_UID}"],
        # No TLS: the socket is only on a volume shared with the runner container.
        "env": [{"name": "DOCKER_TLS_CERTDIR", "value": ""}],
        "resources": {
            **_sidecar_resources(team),
            "requests": {
                **_sidecar_resources(team)["requests"],
                "ephemeral-storage": team.job_resources.ephemeral_storage,
            },
        },
        "securityContext": {
            "privileged": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": {"type": "Unconfined"},
        },
        "volumeMounts": [
            {"name": WORK_VOLUME, "mountPath": WORK_DIR},
            {"name": DIND_SOCKET_VOLUME, "mountPath": DIND_SOCKET_DIR},
            {"name": DIND_EXTERNALS, "mountPath": EXTERNALS_DIR},
        ],
    }


def _copy_into(name: str, image: str, source: str, volume: str) -> dict[str, Any]:
    """An init container that copies ``source`` of ``image`` into ``volume`` (unprivileged,
    read-only root): the runner's own copy, never a volume shared with another pod."""
    target = f"/mnt/{name.removeprefix('copy-')}"
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp", "-R", f"{source}/.", f"{target}/"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": {**_NO_PRIVILEGE, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": volume, "mountPath": target}],
    }


def _copy_externals(team: Team) -> dict[str, Any]:
    """Job containers started by the Docker daemon mount the runner's externals (node for
    JavaScript actions) by path, so the daemon must see them at the same path."""
    return _copy_into("copy-externals", team.runner_image, EXTERNALS_DIR, DIND_EXTERNALS)


def _copy_tool_cache(cache: ToolCache) -> dict[str, Any]:
    """Fill this runner's own copy of the pool's tool cache (the image is pre-pulled on
    warm and isolated nodes); the runner mounts the copy read-only."""
    return _copy_into("copy-tool-cache", cache.image, cache.path, TOOL_CACHE_VOLUME)


def jit_secret(scale_set: ScaleSet, name: str, encoded_jit_config: str) -> dict[str, Any]:
    """The Secret the pod named ``name`` reads its JIT config from, in the team namespace.

    The team role lets the controller create and delete Secrets but not patch them, so
    the provisioner creates this after the pod, with :func:`secret_owner_reference`.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            # Team.namespace's rule; a scale set carries only the team's name.
            "namespace": f"runners-{scale_set.team}",
            "labels": runner_labels(scale_set),
        },
        # A JIT config is single use: nothing should ever rewrite it.
        "immutable": True,
        "stringData": {JIT_SECRET_KEY: encoded_jit_config},
    }


def secret_owner_reference(pod: dict[str, Any]) -> dict[str, Any]:
    """Owner reference that has the garbage collector delete the Secret with its pod.

    ``blockOwnerDeletion`` stays false: setting it needs update rights on the pod's
    finalizers, which the controller does not have and the Secret does not need.
    """
    meta = pod["metadata"]
    uid = meta.get("uid")
    if not uid:
        raise RunnerPodError(
            f"pod '{meta.get('name')}' has no uid: use the object the API server returned"
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": meta["name"],
        "uid": uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }
