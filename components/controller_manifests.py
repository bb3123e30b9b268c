"""Kubernetes manifests for the controller and the runner namespaces, as pure functions.

Least privilege throughout: the controller may touch pods and secrets only in the team
runner namespaces, leases and events only in its own, and may read nodes; runner pods
get no API token (nor does anything else in their namespaces: the ``default``
ServiceAccount mounts none), and their egress excludes all of link-local (instance
metadata, EKS Pod Identity, the DNS and time services), every block of the VPC (where the
controller and Redis live) and the service network. The controller runs only on system
nodes, never on one Karpenter launched, and admits webhooks only from the load balancer.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from components import container_manifests
from components.k8s_objects import KARPENTER_NODEPOOL_LABEL, SYSTEM_NODE_LABEL, Manifest
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
# All of IPv4 link-local: IMDS (169.254.169.254), EKS Pod Identity (169.254.170.23), the
# Amazon DNS and time servers (169.254.169.253, 169.254.169.123) and whatever comes next.
METADATA_CIDRS = ("169.254.0.0/16",)
ALB_TARGET_TYPE = "alb.ingress.kubernetes.io/target-type"
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
    # Every pod of a runner namespace that names no account runs as ``default``: it gets
    # no token either (the program patches the account the cluster makes).
    runners = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(name, team.namespace),
            "automountServiceAccountToken": False,
        }
        for team in spec.teams
        for name in (RUNNER_SERVICE_ACCOUNT, "default")
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
                    # The provisioner's Leases (controller/provision/leader.py): one per
                    # scale set and one per replica; list them to see the peers, create,
                    # renew, take over or release them, delete a dead replica's member
                    # Lease (and its own on a clean stop). Nothing else, nothing wider.
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "create", "update", "delete"],
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
                    "nodeSelector": {SYSTEM_NODE_LABEL: "true"},
                    # Never on a node Karpenter launched, whatever labels it carries: the
                    # pod holds the App keys and webhook secrets of every team.
                    "affinity": system_node_affinity(),
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
                            # The Pod Provisioner: every replica runs it, each acts on the
                            # scale sets whose Leases it holds (controller/provision/leader.py).
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
                                {
                                    # Per-team counts and runner minutes (controller/
                                    # cloudwatch.py), in the namespace the IRSA policy
                                    # allows (iam_documents.cloudwatch_metrics_policy).
                                    "name": "RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE",
                                    "value": spec.controller.cloudwatch_namespace,
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


def system_node_affinity() -> dict[str, Any]:
    """Required node affinity: a system node, and not one of Karpenter's."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": SYSTEM_NODE_LABEL, "operator": "In", "values": ["true"]},
                            {"key": KARPENTER_NODEPOOL_LABEL, "operator": "DoesNotExist"},
                        ]
                    }
                ]
            }
        }
    }


NODE_LABEL_GUARD = "runner-platform-node-labels"
# The labels that decide whether the controller may run on a node.
GUARDED_NODE_LABELS = (SYSTEM_NODE_LABEL, KARPENTER_NODEPOOL_LABEL)


def _label_of(obj: str, key: str) -> str:
    return (
        f"(has({obj}.metadata.labels) && '{key}' in {obj}.metadata.labels ? "
        f"{obj}.metadata.labels['{key}'] : '<absent>')"
    )


def node_label_guard() -> list[Manifest]:
    """A kubelet may change its own Node's labels; one on a runner node that was broken
    into could remove ``karpenter.sh/nodepool`` and add ``runner-platform.io/system`` to
    draw the controller (and every team's secrets) onto it. No node may change either."""
    unchanged = " && ".join(
        f"{_label_of('object', key)} == {_label_of('oldObject', key)}"
        for key in GUARDED_NODE_LABELS
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(NODE_LABEL_GUARD),
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["nodes"],
                        }
                    ]
                },
                "matchConditions": [
                    {
                        "name": "a-kubelet",
                        "expression": "request.userInfo.username.startsWith('system:node:')",
                    }
                ],
                "validations": [
                    {
                        "expression": unchanged,
                        "reason": "Forbidden",
                        "message": (
                            "a node may not change its "
                            + " or ".join(GUARDED_NODE_LABELS)
                            + " label: they decide where the controller runs"
                        ),
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(NODE_LABEL_GUARD),
            "spec": {"policyName": NODE_LABEL_GUARD, "validationActions": ["Deny"]},
        },
    ]


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
    """Only ``/webhooks/github/{instance}`` is exposed, over TLS; health and metrics stay
    inside. An ALB finds its ACM certificate by the TLS host (so it listens on HTTPS only)
    and sends to the pods' addresses, the path the controller's NetworkPolicy admits."""
    settings = spec.controller
    annotations = dict(settings.ingress_annotations)
    if settings.ingress_class == "alb":
        annotations.setdefault(ALB_TARGET_TYPE, "ip")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(CONTROLLER_NAME, settings.namespace, annotations=annotations),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "tls": [{"hosts": [settings.webhook_host]}],
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


def _policy(name: str, namespace: str, body: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace),
        "spec": body,
    }


def _ipv4(cidrs: list[str]) -> list[str]:
    """The IPv4 blocks (a runner's ipBlock is 0.0.0.0/0: no IPv6 is reachable at all)."""
    return [cidr for cidr in cidrs if ipaddress.ip_network(cidr).version == 4]


def runner_egress_exceptions(spec: PlatformSpec) -> list[str]:
    """What runner pods never reach: link-local, every VPC block, the service network."""
    vpc = list(spec.cluster.vpc.all_cidrs)
    return _ipv4([*METADATA_CIDRS, *vpc, spec.cluster.service_cidr])


def ingress_sources(spec: PlatformSpec) -> list[dict[str, Any]]:
    """Where webhooks reach the controller from: the ingress path and nothing else.

    An ALB (target-type ip) sends from its addresses in the VPC. Pods and nodes are in the
    VPC too, but a CIDR rule never matches Cilium's own endpoints or nodes: runner pods,
    other pods and node ports are not admitted. An in-cluster ingress controller sends
    from its pods, in the namespace the stack names.
    """
    namespace = spec.controller.ingress_controller_namespace
    if namespace is not None:
        return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]
    return [{"ipBlock": {"cidr": cidr}} for cidr in spec.cluster.vpc.all_cidrs]


def network_policies(spec: PlatformSpec) -> list[Manifest]:
    blocked = runner_egress_exceptions(spec)
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
                "ingress": [
                    {
                        "from": ingress_sources(spec),
                        "ports": [{"protocol": "TCP", "port": WEBHOOK_PORT}],
                    }
                ],
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
        *node_label_guard(),
        pdb(spec),
        service(spec),
        ingress(spec),
        *network_policies(spec),
    ]
