"""Container modes against a real API server: what the runner ServiceAccount may do
(SubjectAccessReview), what the admission policy refuses in runner namespaces, and the
hook entry point making job pods dependents of their runner pod with the runner's token."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from components import container_manifests as cm
from components import controller_manifests, node_pools
from controller.model import PlatformSpec, RuntimeFacts, load_spec
from controller.provision import pod as rp
from localenv.dry_run import Rejected, submit
from localenv.kube import ControlPlane
from localenv.process import wait_for
from tests.conftest import DEV_DOCUMENT

FACTS = RuntimeFacts(
    team_role_arns={
        t: f"arn:aws:iam::1:role/github-runner-{t}-role" for t in ("web", "ml", "infra")
    },
    vault_mounts={"cloud": "jwt-cloud", "ghes": "jwt-ghes"},
    redis_endpoint="redis",
)


def _create(api: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return submit(api, manifest, dry_run=False)
    except Rejected as error:
        if error.status != 409:
            raise
        return None


@pytest.fixture(scope="module")
def spec() -> PlatformSpec:
    return load_spec(copy.deepcopy(DEV_DOCUMENT))


@pytest.fixture(scope="module")
def cluster(kube_api: ControlPlane, spec: PlatformSpec) -> Iterator[Any]:
    """The dev stack's namespaces, runner ServiceAccounts and Roles, quotas and admission
    policy, created for real; the policy is removed afterwards."""
    api = kube_api.api_client()
    for manifest in controller_manifests.namespaces(spec):
        _create(api, manifest)
    _create(api, node_pools.runner_priority_class())
    for account in controller_manifests.service_accounts(spec, "arn"):
        _create(api, account)
    policy = cm.admission_policy(spec)
    for manifest in [*policy, *(o for t in spec.teams for o in cm.team_objects(spec, t))]:
        if not manifest["apiVersion"].startswith("cilium.io/"):
            _create(api, manifest)
    yield api
    admission = client.AdmissionregistrationV1Api(api)
    admission.delete_validating_admission_policy_binding(cm.ADMISSION_POLICY)
    admission.delete_validating_admission_policy(cm.ADMISSION_POLICY)


# --- RBAC ------------------------------------------------------------------------------


def _allowed(api: Any, namespace: str | None, verb: str, resource: str, **extra: str) -> bool:
    attributes = {"verb": verb, "resource": resource, **extra}
    if namespace is not None:
        attributes["namespace"] = namespace
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "system:serviceaccount:runners-web:runner",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:runners-web",
                    "system:authenticated",
                ],
                "resourceAttributes": attributes,
            },
        }
    )
    return bool(review.status.allowed)


@pytest.mark.parametrize(
    ("verb", "resource", "extra"),
    [
        ("create", "pods", {}),
        ("delete", "pods", {}),
        ("patch", "pods", {}),
        ("create", "pods", {"subresource": "exec"}),
        ("get", "pods", {"subresource": "log"}),
        ("create", "secrets", {}),
        ("get", "secrets", {}),
        ("create", "jobs", {"group": "batch"}),
    ],
)
def test_the_runner_may_run_job_pods_in_its_own_namespace(
    cluster: Any, verb: str, resource: str, extra: dict[str, str]
) -> None:
    assert _allowed(cluster, "runners-web", verb, resource, **extra)


@pytest.mark.parametrize(
    ("namespace", "verb", "resource", "extra"),
    [
        # Another team's namespace.
        ("runners-infra", "create", "pods", {}),
        ("runners-infra", "create", "pods", {"subresource": "exec"}),
        ("runners-infra", "list", "secrets", {}),
        # Secrets outside its namespace: the controller's (GitHub App keys), anyone's.
        ("runner-platform", "get", "secrets", {}),
        (None, "list", "secrets", {}),
        # Nodes and anything cluster-wide.
        (None, "list", "nodes", {}),
        (None, "get", "nodes", {"subresource": "proxy"}),
        (None, "create", "namespaces", {}),
        (None, "list", "pods", {}),
        (None, "create", "clusterrolebindings", {"group": "rbac.authorization.k8s.io"}),
        # Nothing in its own namespace beyond what the hooks use.
        ("runners-web", "update", "pods", {}),
        ("runners-web", "update", "pods", {"subresource": "ephemeralcontainers"}),
        ("runners-web", "create", "rolebindings", {"group": "rbac.authorization.k8s.io"}),
        ("runners-web", "update", "resourcequotas", {}),
        ("runners-web", "create", "serviceaccounts", {"subresource": "token"}),
        ("runners-web", "patch", "configmaps", {}),
        ("runners-web", "delete", "networkpolicies", {"group": "networking.k8s.io"}),
    ],
)
def test_the_runner_reaches_nothing_else(
    cluster: Any, namespace: str | None, verb: str, resource: str, extra: dict[str, str]
) -> None:
    assert not _allowed(cluster, namespace, verb, resource, **extra)


# --- the admission policy --------------------------------------------------------------


def _pod(name: str, namespace: str, pool: str | None, **spec: Any) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        **spec,
    }
    if pool is not None:
        pod_spec.setdefault("nodeSelector", {"pool": pool})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": pod_spec,
    }


def _refusal(api: Any, manifest: dict[str, Any]) -> str | None:
    try:
        submit(api, manifest)
    except Rejected as error:
        return error.reason
    return None


@pytest.fixture(scope="module")
def enforcing(cluster: Any) -> Any:
    """The API server compiles a new policy in the background: wait until it refuses."""
    wait_for(
        lambda: _refusal(cluster, _pod("probe", "runners-web", "warm", hostNetwork=True)),
        30,
        "the admission policy to take effect",
    )
    return cluster


PRIVILEGED = {"securityContext": {"privileged": True}}


@pytest.mark.parametrize(
    ("namespace", "pod", "reason"),
    [
        ("runners-web", {"hostNetwork": True}, "may not use the node's network, PID or IPC"),
        ("runners-web", {"hostPID": True}, "may not use the node's network, PID or IPC"),
        (
            "runners-web",
            {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
            "may not mount hostPath volumes",
        ),
        ("runners-web", {"nodeName": "some-node"}, "placed by the scheduler"),
        (
            "runners-web",
            {"nodeSelector": {"pool": "ml-isolated"}},
            "pods of team web must select one of its pools nvme, warm",
        ),
        ("runners-web", {"nodeSelector": {}}, "must select one of its pools"),
        (
            "runners-web",
            {"tolerations": [{"operator": "Exists"}]},
            "tolerate only their own team's pool taints",
        ),
        (
            "runners-web",
            {
                "tolerations": [
                    {"key": "runner-platform.io/pool", "operator": "Equal", "value": "ml-isolated"}
                ]
            },
            "tolerate only their own team's pool taints",
        ),
        (
            "runners-web",
            {
                "tolerations": [
                    {
                        "key": "node.cilium.io/agent-not-ready",
                        "operator": "Exists",
                        "effect": "NoExecute",
                    }
                ]
            },
            "not Cilium's startup taint node.cilium.io/agent-not-ready",
        ),
        (
            "runners-web",
            {
                "hostUsers": False,
                "containers": [
                    {
                        "name": "x",
                        "image": "busybox",
                        "securityContext": {"procMount": "Unmasked"},
                    }
                ],
            },
            "keep the default /proc mask (procMount Default)",
        ),
        (
            "runners-web",
            {"securityContext": {"sysctls": [{"name": "kernel.core_pattern", "value": "|/tmp/x"}]}},
            "set only the sysctls Pod Security baseline allows",
        ),
        (
            "runners-web",
            {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
            "use only the SELinux types Pod Security baseline allows",
        ),
        (
            "runners-web",
            {
                "containers": [
                    {
                        "name": "x",
                        "image": "busybox",
                        "securityContext": {"seLinuxOptions": {"type": "spc_t"}},
                    }
                ]
            },
            "use only the SELinux types Pod Security baseline allows",
        ),
        (
            "runners-web",
            {"ephemeralContainers": [{"name": "debug", "image": "busybox", **PRIVILEGED}]},
            "privileged containers and added capabilities are only for dind",
        ),
        (
            "runners-web",
            {
                "ephemeralContainers": [
                    {
                        "name": "debug",
                        "image": "busybox",
                        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                    }
                ]
            },
            "seccomp and AppArmor stay confined",
        ),
        (
            "runners-web",
            {"containers": [{"name": "dind", "image": "docker", **PRIVILEGED}]},
            "privileged containers and added capabilities are only for dind on an isolated pool "
            "of team web, not on pool 'warm'",
        ),
        (
            "runners-web",
            {
                "containers": [
                    {
                        "name": "x",
                        "image": "busybox",
                        "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                    }
                ]
            },
            "privileged containers and added capabilities",
        ),
        (
            "runners-web",
            {
                "containers": [
                    {
                        "name": "buildkitd",
                        "image": "buildkit",
                        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                    }
                ]
            },
            "seccomp and AppArmor stay confined",
        ),
        (
            "runners-ml",
            {
                "nodeSelector": {"pool": "gpu"},
                "containers": [{"name": "d", "image": "d", **PRIVILEGED}],
            },
            "not on pool 'gpu'",
        ),
    ],
)
def test_the_admission_policy_refuses_in_runner_namespaces(
    enforcing: Any, namespace: str, pod: dict[str, Any], reason: str
) -> None:
    """Whoever creates the pod: the runner's token can create pods in its namespace, and the
    web and ml namespaces admit privileged pods at the Pod Security level (buildkit, dind).
    Ephemeral containers are added to a pod that exists already (as kubectl debug does)."""
    pod = dict(pod)
    ephemeral = pod.pop("ephemeralContainers", None)
    if ephemeral is None:
        assert reason in (_refusal(enforcing, _pod("bad", namespace, "warm", **pod)) or "admitted")
        return
    core = client.CoreV1Api(enforcing)
    name = f"debugged-{next(iter(ephemeral[0]['securityContext'])).lower()}"
    existing = _create(enforcing, _pod(name, namespace, "warm", **pod))
    assert existing is not None or core.read_namespaced_pod(name, namespace)
    try:
        core.patch_namespaced_pod_ephemeralcontainers(
            name,
            namespace,
            {"spec": {"ephemeralContainers": ephemeral}},
            dry_run="All",
        )
    except client.ApiException as error:
        refusal = str(json.loads(error.body or "{}").get("message", error.body))
    else:
        refusal = "admitted"
    assert reason in refusal


def test_the_platform_s_own_pods_are_admitted(enforcing: Any, spec: PlatformSpec) -> None:
    for scale_set in spec.scale_sets():
        runner = rp.runner_pod(spec, FACTS, scale_set, f"{scale_set.name}-adm", 3)
        assert _refusal(enforcing, runner) is None, scale_set.name
        team = next(t for t in spec.teams if t.name == scale_set.team)
        if team.mode_on(scale_set.pool) in ("kubernetes", "buildkit"):
            job = cm.job_pod(team, spec.pool(scale_set.pool), runner["metadata"]["name"], "n", "x")
            assert _refusal(enforcing, job) is None, scale_set.name
    # buildkitd unconfined on web's buildkit pool, dind privileged on ml's own pool: yes;
    # the same buildkitd on web's warm pool (kubernetes mode): no.
    web_nvme = next(s for s in spec.scale_sets() if s.name == "web-nvme")
    moved = rp.runner_pod(spec, FACTS, web_nvme, "moved", 3)
    moved["spec"]["nodeSelector"] = {"pool": "warm"}
    moved["spec"]["tolerations"] = []
    assert "seccomp and AppArmor stay confined" in (_refusal(enforcing, moved) or "admitted")


# --- the hook entry point --------------------------------------------------------------

ENTRY_POINT = cm.HOOKS_ENTRY_POINT


def _token(api: Any, namespace: str) -> str:
    request = client.CoreV1Api(api).create_namespaced_service_account_token(
        "runner", namespace, {"spec": {"audiences": ["https://kubernetes.default.svc"]}}
    )
    return str(request.status.token)


def _run_entry_point(
    kube_api: ControlPlane,
    tmp_path: Path,
    token: str,
    env: dict[str, str],
    command: str,
    stock_exit: int = 0,
) -> subprocess.CompletedProcess[str]:
    account = tmp_path / "serviceaccount"
    account.mkdir(exist_ok=True)
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes(kube_api.certs.ca_cert.read_bytes())
    stock = tmp_path / "stock.js"
    # Stands in for the image's hooks: reads its input like them, exits as told.
    stock.write_text(
        "const input = require('fs').readFileSync(0, 'utf8');\n"
        "JSON.parse(input);\n"
        f"process.exit({stock_exit});\n"
    )
    host, port = kube_api.server.removeprefix("https://").rsplit(":", 1)
    return subprocess.run(
        ["node", str(ENTRY_POINT)],
        input=json.dumps({"command": command, "responseFile": str(tmp_path / "r.json")}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "RUNNER_PLATFORM_SA_DIR": str(account),
            "RUNNER_PLATFORM_STOCK_HOOKS": str(stock),
            **env,
        },
    )


def test_the_entry_point_makes_job_pods_dependents_of_their_runner(
    kube_api: ControlPlane, enforcing: Any, spec: PlatformSpec, tmp_path: Path
) -> None:
    core = client.CoreV1Api(enforcing)
    scale_set = next(s for s in spec.scale_sets() if s.name == "web-warm")
    runner = submit(
        enforcing, rp.runner_pod(spec, FACTS, scale_set, "web-warm-hooks", 5), dry_run=False
    )
    token = _token(enforcing, "runners-web")
    # The job pod, created as the hooks create it: with the runner's own token.
    config = client.Configuration(
        host=kube_api.server, api_key={"authorization": f"Bearer {token}"}
    )
    config.ssl_ca_cert = str(kube_api.certs.ca_cert)
    as_runner = client.ApiClient(config)
    job = cm.job_pod(spec.teams[0], spec.pool("warm"), "web-warm-hooks", "n", "node:20")
    submit(as_runner, job, dry_run=False)
    env = {
        "ACTIONS_RUNNER_POD_NAME": "web-warm-hooks",
        "RUNNER_PLATFORM_POD_UID": runner["metadata"]["uid"],
        "ACTIONS_RUNNER_KUBERNETES_NAMESPACE": "runners-web",
    }

    # A failing hook fails the step, and nothing is adopted; other commands adopt nothing.
    failed = _run_entry_point(kube_api, tmp_path, token, env, "prepare_job", stock_exit=3)
    assert failed.returncode == 3
    step = _run_entry_point(kube_api, tmp_path, token, env, "run_script_step")
    assert step.returncode == 0, step.stderr
    name = job["metadata"]["name"]
    assert not core.read_namespaced_pod(name, "runners-web").metadata.owner_references

    done = _run_entry_point(kube_api, tmp_path, token, env, "prepare_job")
    assert done.returncode == 0, done.stderr
    (owner,) = core.read_namespaced_pod(name, "runners-web").metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        "Pod",
        "web-warm-hooks",
        runner["metadata"]["uid"],
    )
    assert owner.block_owner_deletion is False
    # Running it again changes nothing.
    again = _run_entry_point(kube_api, tmp_path, token, env, "prepare_job")
    assert again.returncode == 0
    assert len(core.read_namespaced_pod(name, "runners-web").metadata.owner_references) == 1


def test_the_entry_point_fails_the_job_when_it_cannot_adopt(
    kube_api: ControlPlane, enforcing: Any, tmp_path: Path
) -> None:
    """Another team's runner token cannot touch web's pods: the job fails, loudly."""
    token = _token(enforcing, "runners-infra")
    env = {
        "ACTIONS_RUNNER_POD_NAME": "web-warm-hooks",
        "RUNNER_PLATFORM_POD_UID": "0f6e3c1a-0000-4000-8000-000000000001",
        "ACTIONS_RUNNER_KUBERNETES_NAMESPACE": "runners-web",
    }
    result = _run_entry_point(kube_api, tmp_path, token, env, "prepare_job")
    assert result.returncode == 1
    assert "cannot make job pods dependents of the runner" in result.stderr
    assert "403" in result.stderr
