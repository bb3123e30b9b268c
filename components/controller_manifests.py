"""Kubernetes manifests for the controller and the runner namespaces, as pure functions.

Least privilege throughout: the controller may touch pods and secrets only in the team
runner namespaces, leases and events only in its own, and may read nodes; runner pods
get no API token, and their egress excludes instance metadata, the VPC (where the
controller and Redis live) and the service network.
"""

from __future__ import annotations

import hashlib
from typing import Any

from components import container_manifests
from components.k8s_objects import Manifest
from controller.model import RUNNER_SERVICE_ACCOUNT, PlatformSpec, Team

CONTROLLER_NAME = "runner-controller"
# Shared with the provisioner, which names it in every runner pod. Read through the
# package: the layer contract lets components import controller.model, not its modules.
CONFIG_MAP = "runner-controller-config"
REDIS_SECRET = "runner-controller-redis"
CONFIG_DIR = "/etc/runner-platform"
SECRETS_DIR = "/var/run/secrets/runner-platform"
WEBHOOK_PORT = 8080
PROVISION_PORT = 9102  # the provisioner's /metrics
HASH_ANNOTATION = "runner-platform.io/config-hash"
METADATA_CIDRS = ("169.254.169.254/32", "169.254.170.23/32")  # IMDS, EKS Pod Identity
SELECTOR = {"app.kubernetes.io/name": CONTROLLER_NAME}


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **extra}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def namespaces(spec: PlatformSpec) -> list[Manifest]:
    controller_ns: Manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(
            spec.controller.namespace,
            labels={
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        ),
    }
    # Runner images run as their own non-root user but need a writable root filesystem:
    # "baseline" is the strictest profile stock runner images pass. Teams with a buildkit
    # or dind mode need more (container_manifests.pod_security_level); their namespaces
    # still warn and audit at "baseline", and the platform's admission policy applies.
    team_ns = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta(
                team.namespace,
                labels={
                    "pod-security.kubernetes.io/enforce": container_manifests.pod_security_level(
                        team
                    ),
                    "pod-security.kubernetes.io/warn": "baseline",
                    "pod-security.kubernetes.io/audit": "baseline",
                    "runner-platform.io/team": team.name,
                },
            ),
        }
        for team in spec.teams
    ]
    return [controller_ns, *team_ns]


def service_accounts(spec: PlatformSpec, controller_role_arn: Any) -> list[Manifest]:
    controller_sa: Manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(
            CONTROLLER_NAME,
            spec.controller.namespace,
            annotations={
                "eks.amazonaws.com/role-arn": controller_role_arn,
            },
        ),
    }
    runners = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(RUNNER_SERVICE_ACCOUNT, team.namespace),
            "automountServiceAccountToken": False,
        }
        for team in spec.teams
    ]
    return [controller_sa, *runners]


def _binding(kind: str, name: str, namespace: str | None, spec: PlatformSpec) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": _meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": CONTROLLER_NAME,
                "namespace": spec.controller.namespace,
            }
        ],
    }


def team_role(team: Team) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(CONTROLLER_NAME, team.namespace),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods"],
                # What controller/provision uses, nothing more: no update/patch of pods.
                "verbs": ["create", "delete", "get", "list", "watch"],
            },
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                # JIT Secrets are created with their owner reference, never fetched one by
                # one; the reaper lists them to find orphans (RBAC has no metadata-only
                # list: a list returns Secret data, which is why this is per namespace).
                "verbs": ["create", "delete", "list"],
            },
        ],
    }


def rbac(spec: PlatformSpec) -> list[Manifest]:
    ns = spec.controller.namespace
    objects: list[Manifest] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(CONTROLLER_NAME, ns),
            "rules": [
                {
                    # The provisioner's Lease (controller/provision/leader.py): read it,
                    # create it once, renew or take it over. Nothing else, nothing wider.
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                },
            ],
        },
        _binding("Role", CONTROLLER_NAME, ns, spec),
    ]
    for team in spec.teams:
        objects += [team_role(team), _binding("Role", CONTROLLER_NAME, team.namespace, spec)]
    return objects


def config_hash(spec_json: str, runtime_json: str) -> str:
    return hashlib.sha256(f"{spec_json}\n{runtime_json}".encode()).hexdigest()


def config_map(spec: PlatformSpec, spec_json: str, runtime_json: Any) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CONFIG_MAP, spec.controller.namespace),
        "data": {"spec.json": spec_json, "runtime.json": runtime_json},
    }


def referenced_secrets(spec: PlatformSpec) -> list[str]:
    """Kubernetes Secrets the controller reads: webhook secrets, App keys, Redis auth."""
    names = {i.webhook_secret.name for i in spec.github_instances}
    names |= {app.private_key.name for i in spec.github_instances for app in i.apps}
    return sorted(names | {REDIS_SECRET})


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def deployment(spec: PlatformSpec, hash_value: Any) -> Manifest:
    settings = spec.controller
    secrets = referenced_secrets(spec)
    volumes = [
        {"name": "config", "configMap": {"name": CONFIG_MAP}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        *({"name": f"secret-{name}", "secret": {"secretName": name}} for name in secrets),
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *(
            {"name": f"secret-{name}", "mountPath": f"{SECRETS_DIR}/{name}", "readOnly": True}
            for name in secrets
        ),
    ]
    probe = {"httpGet": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}
    env = [
        {"name": "RUNNER_PLATFORM_SPEC", "value": f"{CONFIG_DIR}/spec.json"},
        {"name": "RUNNER_PLATFORM_RUNTIME", "value": f"{CONFIG_DIR}/runtime.json"},
        {"name": "RUNNER_PLATFORM_SECRETS_DIR", "value": SECRETS_DIR},
        {"name": "RUNNER_PLATFORM_PORT", "value": str(WEBHOOK_PORT)},
        {"name": "AWS_REGION", "value": spec.cluster.region},
    ]
    resources = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(CONTROLLER_NAME, settings.namespace, labels=SELECTOR),
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": SELECTOR},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": SELECTOR, "annotations": {HASH_ANNOTATION: hash_value}},
                "spec": {
                    "serviceAccountName": CONTROLLER_NAME,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": {"runner-platform.io/system": "true"},
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": key,
                            "whenUnsatisfiable": when,
                            "labelSelector": {"matchLabels": SELECTOR},
                        }
                        for key, when in (
                            ("kubernetes.io/hostname", "DoNotSchedule"),
                            ("topology.kubernetes.io/zone", "ScheduleAnyway"),
                        )
                    ],
                    "containers": [
                        {
                            "name": "controller",
                            "image": settings.image,
                            "args": ["serve"],
                            "ports": [
                                {"name": "http", "containerPort": WEBHOOK_PORT},
                            ],
                            "env": env,
                            "livenessProbe": {
                                **probe,
                                "httpGet": {"path": "/healthz", "port": "http"},
                            },
                            "readinessProbe": {
                                **probe,
                                "httpGet": {"path": "/readyz", "port": "http"},
                            },
                            "resources": resources,
                            "securityContext": _CONTAINER_SECURITY,
                            "volumeMounts": mounts,
                        },
                        {
                            # Verifies queued jobs of every scale set (consumer groups
                            # share the work between replicas).
                            "name": "listener",
                            "image": settings.image,
                            "args": ["listen"],
                            "env": env,
                            "resources": resources,
                            "securityContext": _CONTAINER_SECURITY,
                            "volumeMounts": mounts,
                        },
                        {
                            # The Pod Provisioner: every replica runs it, the holder of the
                            # runner-provisioner Lease acts (controller/provision/leader.py).
                            "name": "provisioner",
                            "image": settings.image,
                            "args": ["provision"],
                            "ports": [{"name": "metrics", "containerPort": PROVISION_PORT}],
                            "env": [
                                *env,
                                {
                                    "name": "RUNNER_PLATFORM_PROVISION_METRICS_PORT",
                                    "value": str(PROVISION_PORT),
                                },
                            ],
                            "resources": resources,
                            "securityContext": _CONTAINER_SECURITY,
                            "volumeMounts": mounts,
                        },
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def pdb(spec: PlatformSpec) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(CONTROLLER_NAME, spec.controller.namespace),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": SELECTOR}},
    }


def service(spec: PlatformSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(CONTROLLER_NAME, spec.controller.namespace, labels=SELECTOR),
        "spec": {
            "selector": SELECTOR,
            # Webhooks, health and /metrics share one port; the Ingress exposes only
            # the webhook paths, so metrics stay inside the cluster.
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def ingress(spec: PlatformSpec) -> Manifest:
    """Only ``/webhooks/github/{instance}`` is exposed; health and metrics stay inside."""
    settings = spec.controller
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(
            CONTROLLER_NAME, settings.namespace, annotations=dict(settings.ingress_annotations)
        ),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "rules": [
                {
                    "host": settings.webhook_host,
                    "http": {
                        "paths": [
                            {
                                "path": f"/webhooks/github/{instance.name}",
                                "pathType": "Exact",
                                "backend": {
                                    "service": {"name": CONTROLLER_NAME, "port": {"name": "http"}}
                                },
                            }
                            for instance in spec.github_instances
                        ]
                    },
                }
            ],
        },
    }


def webhook_url(spec: PlatformSpec, instance_name: str) -> str:
    return f"https://{spec.controller.webhook_host}/webhooks/github/{instance_name}"


def _policy(name: str, namespace: str, body: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace),
        "spec": body,
    }


def network_policies(spec: PlatformSpec) -> list[Manifest]:
    blocked = [*METADATA_CIDRS, spec.cluster.vpc.cidr, spec.cluster.service_cidr]
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    objects: list[Manifest] = []
    for team in spec.teams:
        objects.append(
            _policy(
                "default-deny",
                team.namespace,
                {
                    "podSelector": {},
                    "policyTypes": ["Ingress", "Egress"],
                },
            )
        )
        objects.append(
            _policy(
                "runner-egress",
                team.namespace,
                {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        dns,
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": blocked}}]},
                    ],
                },
            )
        )
    ns = spec.controller.namespace
    objects.append(
        _policy(
            "default-deny-ingress",
            ns,
            {
                "podSelector": {},
                "policyTypes": ["Ingress"],
            },
        )
    )
    objects.append(
        _policy(
            CONTROLLER_NAME,
            ns,
            {
                "podSelector": {"matchLabels": SELECTOR},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": WEBHOOK_PORT}]}],
            },
        )
    )
    return objects


def controller_objects(
    spec: PlatformSpec,
    *,
    controller_role_arn: Any,
    spec_json: str,
    runtime_json: Any,
    hash_value: Any,
) -> list[Manifest]:
    """Every object of the controller, in an order the API server accepts them."""
    return [
        *namespaces(spec),
        *service_accounts(spec, controller_role_arn),
        *rbac(spec),
        *container_manifests.container_objects(spec),
        config_map(spec, spec_json, runtime_json),
        deployment(spec, hash_value),
        pdb(spec),
        service(spec),
        ingress(spec),
        *network_policies(spec),
    ]
