"""Controller objects: least privilege, isolation of runner pods, a hash that rolls pods."""

from __future__ import annotations

import json
from typing import Any

from components import controller_manifests as cm
from controller.model import PlatformSpec, load_spec, load_spec_json


def _objects(spec: PlatformSpec, runtime: str = "{}") -> list[dict[str, Any]]:
    return cm.controller_objects(
        spec,
        controller_role_arn="arn:aws:iam::1:role/c",
        spec_json=spec.model_dump_json(),
        runtime_json=runtime,
        hash_value=cm.config_hash(spec.model_dump_json(), runtime),
    )


def _find(objects: list[dict[str, Any]], kind: str, name: str, ns: str | None = None) -> Any:
    return next(
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace") == ns
    )


def test_rbac_grants_no_wildcards_and_secrets_only_in_runner_namespaces(
    dev_spec: PlatformSpec,
) -> None:
    objects = _objects(dev_spec)
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]
    # Nothing cluster-wide: every grant is a Role in one namespace.
    assert [r for r in roles if r["kind"] == "ClusterRole"] == []
    lease_role = _find(objects, "Role", "runner-controller", "runner-platform")
    assert lease_role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "create", "update", "delete"],
        }
    ]
    team_role = _find(objects, "Role", "runner-controller", "runners-web")
    assert {rule["resources"][0]: rule["verbs"] for rule in team_role["rules"]} == {
        "pods": ["create", "delete", "get", "list", "watch"],
        "secrets": ["create", "delete", "list"],
    }
    secret_namespaces = {
        r["metadata"]["namespace"]
        for r in roles
        if any("secrets" in rule["resources"] for rule in r["rules"])
    }
    assert secret_namespaces == {"runners-web", "runners-ml", "runners-infra"}


def test_runner_service_accounts_carry_no_token(dev_spec: PlatformSpec) -> None:
    accounts = [o for o in _objects(dev_spec) if o["kind"] == "ServiceAccount"]
    runners = [a for a in accounts if a["metadata"]["name"] == "runner"]
    assert len(runners) == 3
    # The provisioner names the same account in its pods (controller.model.base).
    assert cm.RUNNER_SERVICE_ACCOUNT == "runner"
    assert all(a["automountServiceAccountToken"] is False for a in runners)
    # Nor does any other pod of a runner namespace: its default account mounts no token.
    defaults = {
        a["metadata"]["namespace"]: a["automountServiceAccountToken"]
        for a in accounts
        if a["metadata"]["name"] == "default"
    }
    assert defaults == {"runners-web": False, "runners-ml": False, "runners-infra": False}


def test_runner_egress_excludes_metadata_vpc_and_services(dev_spec: PlatformSpec) -> None:
    policy = _find(_objects(dev_spec), "NetworkPolicy", "runner-egress", "runners-ml")
    world = policy["spec"]["egress"][1]["to"][0]["ipBlock"]
    assert world["cidr"] == "0.0.0.0/0"
    # All of link-local (IMDS, Pod Identity, Amazon DNS and time), the VPC, the services.
    assert world["except"] == ["169.254.0.0/16", "10.40.0.0/16", "172.20.0.0/16"]
    deny = _find(_objects(dev_spec), "NetworkPolicy", "default-deny", "runners-ml")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_deployment_is_replicated_non_root_and_read_only(dev_spec: PlatformSpec) -> None:
    deployment = _find(_objects(dev_spec), "Deployment", "runner-controller", "runner-platform")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert mounted == {
        "github-cloud-webhook",
        "github-cloud-app",
        "github-ghes-webhook",
        "github-ghes-app",
        "runner-controller-redis",
    }


def test_config_map_parses_back_into_the_spec(dev_spec: PlatformSpec) -> None:
    config_map = _find(
        _objects(dev_spec), "ConfigMap", "runner-controller-config", "runner-platform"
    )
    assert load_spec_json(config_map["data"]["spec.json"]) == dev_spec


def test_any_config_change_changes_the_pod_template_hash(
    dev_spec: PlatformSpec, dev_document: dict[str, Any]
) -> None:
    def hash_of(spec: PlatformSpec, runtime: str = "{}") -> str:
        deployment = _find(
            _objects(spec, runtime), "Deployment", "runner-controller", "runner-platform"
        )
        return str(deployment["spec"]["template"]["metadata"]["annotations"][cm.HASH_ANNOTATION])

    dev_document["teams"][0]["max_runners"] = 61
    assert hash_of(dev_spec) != hash_of(load_spec(dev_document))
    assert hash_of(dev_spec) != hash_of(dev_spec, json.dumps({"redis_endpoint": "x"}))
    assert hash_of(dev_spec) == hash_of(load_spec_json(dev_spec.model_dump_json()))


def test_ingress_exposes_only_each_instances_webhook_path(dev_spec: PlatformSpec) -> None:
    ingress = _find(_objects(dev_spec), "Ingress", "runner-controller", "runner-platform")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "runners-dev.acme.example"
    assert [p["path"] for p in rule["http"]["paths"]] == [
        "/webhooks/github/cloud",
        "/webhooks/github/ghes",
    ]
    assert dev_spec.webhook_url("ghes") == "https://runners-dev.acme.example/webhooks/github/ghes"


def test_namespaces_come_before_what_lives_in_them(dev_spec: PlatformSpec) -> None:
    seen: set[str] = set()
    for obj in _objects(dev_spec):
        namespace = obj["metadata"].get("namespace")
        assert namespace is None or namespace in seen, obj["metadata"]
        if obj["kind"] == "Namespace":
            seen.add(obj["metadata"]["name"])


def test_the_pod_runs_the_router_the_listeners_and_the_provisioner(dev_spec: PlatformSpec) -> None:
    deployment = _find(_objects(dev_spec), "Deployment", "runner-controller", "runner-platform")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["args"]) for c in containers] == [
        ("controller", ["serve"]),
        ("listener", ["listen"]),
        ("provisioner", ["provision"]),
    ]
    for container in containers:
        names = {e["name"] for e in container["env"]}
        assert {
            "RUNNER_PLATFORM_SPEC",
            "RUNNER_PLATFORM_RUNTIME",
            "RUNNER_PLATFORM_SECRETS_DIR",
        } <= names
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_controller_accepts_only_its_webhook_port_from_the_load_balancer(
    dev_spec: PlatformSpec,
) -> None:
    policy = _find(_objects(dev_spec), "NetworkPolicy", "runner-controller", "runner-platform")
    # The ALB's addresses (target-type ip) are VPC addresses; a CIDR rule admits no pod.
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "10.40.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
