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

from controller.model import POOL_LABEL, PlatformSpec, Pool, RuntimeFacts, ScaleSet, Team
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


def _tolerations(pool: Pool) -> list[dict[str, str]]:
    return [
        {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}
        for t in pool.node_taints()
    ]


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
    if pool.gpus_per_runner:
        # Extended resources cannot be overcommitted: request and limit must be equal.
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
    """One single-use runner: its JIT config comes from the Secret named ``name``."""
    team, pool = _team_and_pool(spec, scale_set)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": team.namespace,
            "labels": runner_labels(scale_set),
            "annotations": {
                # A busy runner's node must not be consolidated away under its job
                # (expiry and spot interruption still apply).
                DO_NOT_DISRUPT_ANNOTATION: "true",
                RUNNER_ID_ANNOTATION: str(runner_id),
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": team.job_timeout_minutes * 60 + IDLE_ALLOWANCE_SECONDS,
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "serviceAccountName": RUNNER_SERVICE_ACCOUNT,
            # Job code is untrusted: it gets no Kubernetes API token.
            "automountServiceAccountToken": False,
            # Service links would put every Service of the namespace into the job's env.
            "enableServiceLinks": False,
            "priorityClassName": RUNNER_PRIORITY_CLASS,
            "nodeSelector": {POOL_LABEL: pool.name},
            "tolerations": _tolerations(pool),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "fsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": RUNNER_CONTAINER,
                    "image": team.runner_image,
                    # The pre-pull DaemonSet puts the image on warm nodes; use it even
                    # for a moving tag rather than pulling again at every runner.
                    "imagePullPolicy": "IfNotPresent",
                    "command": RUNNER_COMMAND,
                    "env": _env(spec, facts, scale_set, team, name),
                    "resources": _resources(team, pool),
                    "securityContext": {
                        # The image gives `runner` passwordless sudo; no_new_privs makes
                        # it inert.
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                        # The runner writes its JIT-decoded config (.runner, .credentials)
                        # and _diag beside its binaries in /home/runner, and job steps
                        # write to $HOME and /tmp; an emptyDir over /home/runner would hide
                        # the runner itself. The pod is single-use and deleted after its
                        # job, and every write counts against its ephemeral-storage limit.
                        "readOnlyRootFilesystem": False,
                    },
                    "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
                }
            ],
            "volumes": [
                {
                    "name": "work",
                    # On NVMe pools Karpenter stripes the instance store (RAID0) and the
                    # kubelet's ephemeral storage lives on it, so this lands on NVMe.
                    "emptyDir": {"sizeLimit": team.resources.ephemeral_storage},
                }
            ],
        },
    }


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
