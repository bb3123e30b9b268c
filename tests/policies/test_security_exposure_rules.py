"""The pack's exposure rules on their own (issue 9, items 7-12), on hand-built resource
inputs: what the model refuses first is refused here too, and what no stack config can
produce (a Redis without TLS, a runner pod on the host, a token-mounting account) as well.
The builders' own objects pass every rule.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pulumi_policy import ResourceValidationPolicy

from components import container_manifests, controller_manifests, node_pools
from controller.model import PlatformSpec, load_spec
from policies.evaluate import check, check_stack
from policies.rules import (
    controller_off_runner_nodes,
    controller_only_behind_ingress,
    eks_endpoint_not_open,
    ingress_tls,
    node_group_imds,
    privileged_runner_on_shared_pool,
    redis_transit_encryption,
    runner_egress_excludes_internal,
    runner_pod_host_access,
    runner_service_accounts_no_token,
)

EKS = "eks:index:Cluster"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
CACHE_CLUSTER = "aws:elasticache/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
POD = "kubernetes:core/v1:Pod"
RESTRICT = "restrict publicAccessCidrs or set allowPublicFromAnywhere in the policy config"

_TYPES = {
    ("v1", "Namespace"): "kubernetes:core/v1:Namespace",
    ("v1", "ServiceAccount"): "kubernetes:core/v1:ServiceAccount",
    ("v1", "ConfigMap"): "kubernetes:core/v1:ConfigMap",
    ("networking.k8s.io/v1", "NetworkPolicy"): NETWORK_POLICY,
    ("networking.k8s.io/v1", "Ingress"): INGRESS,
    ("apps/v1", "Deployment"): DEPLOYMENT,
}


def stack_of(spec: PlatformSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """The controller's objects as the engine sees them (the default accounts as patches)."""
    spec_json = spec.model_dump_json()
    objects = controller_manifests.controller_objects(
        spec,
        controller_role_arn="arn:aws:iam::1:role/c",
        spec_json=spec_json,
        runtime_json="{}",
        hash_value="h",
    )
    stack = []
    for manifest in objects:
        kind = _TYPES.get((manifest["apiVersion"], manifest["kind"]))
        if kind is None:
            continue
        if manifest["metadata"]["name"] == "default" and manifest["kind"] == "ServiceAccount":
            kind = "kubernetes:core/v1:ServiceAccountPatch"
        props = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
        stack.append((kind, manifest["metadata"]["name"], props))
    return stack


# --- the EKS endpoint (the model refuses these first) ------------------------------------

ENDPOINT_CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    (
        "two halves",
        EKS,
        {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/1", "128.0.0.0/1"]},
        [
            "publicAccessCidrs '0.0.0.0/1' is a /1 (2,147,483,648 addresses); the EKS API "
            "endpoint takes IPv4 blocks of /8 or narrower",
            "publicAccessCidrs '128.0.0.0/1' is a /1 (2,147,483,648 addresses); the EKS API "
            "endpoint takes IPv4 blocks of /8 or narrower",
            "the EKS API endpoint is public and publicAccessCidrs ['0.0.0.0/1', '128.0.0.0/1'] "
            f"together cover every IPv4 address (as 0.0.0.0/0 does); {RESTRICT}",
        ],
    ),
    (
        "all of IPv6",
        EKS_CLUSTER,
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["::/0"]}},
        [f"the EKS API endpoint is public and open to ::/0; {RESTRICT}"],
    ),
    (
        "IPv4-mapped all",
        EKS,
        {"endpointPublicAccess": True, "publicAccessCidrs": ["::ffff:0.0.0.0/96"]},
        [f"the EKS API endpoint is public and open to 0.0.0.0/0; {RESTRICT}"],
    ),
    (
        "too short",
        EKS,
        {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24", "10.0.0.0/6"]},
        [
            "publicAccessCidrs '10.0.0.0/6' is a /6 (67,108,864 addresses); the EKS API "
            "endpoint takes IPv4 blocks of /8 or narrower"
        ],
    ),
    (
        "not a cidr",
        EKS,
        {"endpointPublicAccess": True, "publicAccessCidrs": ["office"]},
        ["publicAccessCidrs 'office' is not a CIDR block"],
    ),
    (
        "empty list is EKS's default",
        EKS,
        {"endpointPublicAccess": True, "publicAccessCidrs": []},
        [f"the EKS API endpoint is public and open to 0.0.0.0/0; {RESTRICT}"],
    ),
    (
        "narrow",
        EKS,
        {
            "endpointPublicAccess": True,
            "publicAccessCidrs": ["203.0.113.0/24", "2001:db8::/48", "10.0.0.0/8"],
        },
        [],
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "props", "expected"),
    [c[1:] for c in ENDPOINT_CASES],
    ids=[c[0] for c in ENDPOINT_CASES],
)
def test_endpoint_cidrs_are_parsed(
    resource_type: str, props: dict[str, Any], expected: list[str]
) -> None:
    assert check(eks_endpoint_not_open, resource_type, "r", props) == expected


def test_four_quarters_cover_ipv4() -> None:
    quarters = ["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"]
    messages = check(
        eks_endpoint_not_open,
        EKS,
        "r",
        {"endpointPublicAccess": True, "publicAccessCidrs": quarters},
        {"minPrefixLengthIPv4": 0},
    )
    assert messages == [
        f"the EKS API endpoint is public and publicAccessCidrs {quarters} together cover every "
        f"IPv4 address (as 0.0.0.0/0 does); {RESTRICT}"
    ]


def test_the_prefix_limit_is_policy_config() -> None:
    props = {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}
    assert check(eks_endpoint_not_open, EKS, "r", props, {"minPrefixLengthIPv4": 25}) == [
        "publicAccessCidrs '203.0.113.0/24' is a /24 (256 addresses); the EKS API endpoint "
        "takes IPv4 blocks of /25 or narrower"
    ]
    wide = {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}
    assert check(eks_endpoint_not_open, EKS, "r", wide, {"allowPublicFromAnywhere": True}) == []


# --- the webhook Ingress -----------------------------------------------------------------


def test_the_builders_ingress_serves_tls(dev_spec: PlatformSpec) -> None:
    ingress = controller_manifests.ingress(dev_spec)
    props = {k: v for k, v in ingress.items() if k not in ("apiVersion", "kind")}
    assert check(ingress_tls, INGRESS, "i", props) == []
    assert check_stack(controller_only_behind_ingress, [(INGRESS, "i", props)]) == []


def _ingress(annotations: dict[str, str], tls: list[Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": [{"host": "hooks.example.com"}]}
    if tls is not None:
        spec["tls"] = tls
    return {"metadata": {"annotations": annotations}, "spec": spec}


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (
            _ingress({}, None),
            [
                "Ingress has no TLS (no spec.tls and no 'alb.ingress.kubernetes.io/certificate-"
                "arn'): webhooks and their signatures would cross the internet in clear text"
            ],
        ),
        (
            _ingress({}, [{"hosts": ["other.example.com"]}]),
            [
                "Ingress host(s) ['hooks.example.com'] have no spec.tls entry: they are served "
                "without TLS"
            ],
        ),
        (_ingress({}, [{"hosts": ["*.example.com"], "secretName": "tls"}]), []),
        (_ingress({"alb.ingress.kubernetes.io/certificate-arn": "arn:aws:acm:x"}, None), []),
        (
            _ingress(
                {"alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}]'},
                [{"hosts": ["hooks.example.com"]}],
            ),
            [
                "Ingress 'alb.ingress.kubernetes.io/listen-ports' opens a plain HTTP listener "
                "without 'alb.ingress.kubernetes.io/ssl-redirect'"
            ],
        ),
    ],
    ids=["no tls", "host not covered", "wildcard", "certificate arn", "plain listener"],
)
def test_an_ingress_without_tls_is_refused(props: dict[str, Any], expected: list[str]) -> None:
    assert check(ingress_tls, INGRESS, "i", props) == expected


# --- Redis -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "props", "expected"),
    [
        (REDIS, {"transitEncryptionEnabled": True, "atRestEncryptionEnabled": True}, []),
        (
            REDIS,
            {"transitEncryptionEnabled": False},
            [
                "ElastiCache ReplicationGroup does not enable transitEncryptionEnabled: job "
                "demand, runner state and the AUTH token would cross the VPC in clear text"
            ],
        ),
        (
            REDIS,
            {},
            [
                "ElastiCache ReplicationGroup does not enable transitEncryptionEnabled: job "
                "demand, runner state and the AUTH token would cross the VPC in clear text"
            ],
        ),
        (
            REDIS,
            {"transitEncryptionEnabled": True, "transitEncryptionMode": "preferred"},
            [
                "ElastiCache ReplicationGroup transitEncryptionMode is 'preferred': it still "
                "accepts clear-text connections; use 'required'"
            ],
        ),
        (
            CACHE_CLUSTER,
            {"engine": "redis"},
            [
                "ElastiCache Cluster does not enable transitEncryptionEnabled: job demand, "
                "runner state and the AUTH token would cross the VPC in clear text"
            ],
        ),
        (CACHE_CLUSTER, {"replicationGroupId": "rg"}, []),
    ],
    ids=["tls", "off", "unset", "preferred", "lone cluster", "group member"],
)
def test_redis_without_transit_encryption_is_refused(
    resource_type: str, props: dict[str, Any], expected: list[str]
) -> None:
    assert check(redis_transit_encryption, resource_type, "r", props) == expected


# --- the system node group's instance metadata -------------------------------------------


@pytest.mark.parametrize(
    ("policy", "resource_type", "props", "expected"),
    [
        (node_group_imds, NODE_GROUP, {"launchTemplate": {"id": "lt-1", "version": "1"}}, []),
        (
            node_group_imds,
            NODE_GROUP,
            {"clusterName": "c"},
            [
                "EKS NodeGroup has no launch template: EKS's default allows IMDSv1 with a hop "
                "limit of 2, so every pod on the node reaches its role's credentials"
            ],
        ),
        (
            node_group_imds,
            LAUNCH_TEMPLATE,
            {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1.0}},
            [],
        ),
        (
            node_group_imds,
            LAUNCH_TEMPLATE,
            {"metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 2}},
            [
                "LaunchTemplate metadataOptions.httpTokens is 'optional'; must be 'required' "
                "(IMDSv2 only)",
                "LaunchTemplate metadataOptions.httpPutResponseHopLimit is 2; must be 1 so pods "
                "cannot reach the node's instance metadata",
            ],
        ),
        (
            node_group_imds,
            LAUNCH_TEMPLATE,
            {},
            [
                "LaunchTemplate metadataOptions.httpTokens is None; must be 'required' (IMDSv2 "
                "only)",
                "LaunchTemplate metadataOptions.httpPutResponseHopLimit is None; must be 1 so "
                "pods cannot reach the node's instance metadata",
            ],
        ),
        (node_group_imds, LAUNCH_TEMPLATE, {"metadataOptions": {"httpEndpoint": "disabled"}}, []),
    ],
    ids=["template", "no template", "v2 one hop", "v1 two hops", "nothing said", "no imds"],
)
def test_system_node_imds(
    policy: ResourceValidationPolicy, resource_type: str, props: dict[str, Any], expected: list[str]
) -> None:
    assert check(policy, resource_type, "r", props) == expected


# --- runner namespaces' accounts ---------------------------------------------------------


def test_the_builders_runner_accounts_mount_no_token(dev_spec: PlatformSpec) -> None:
    assert check_stack(runner_service_accounts_no_token, stack_of(dev_spec)) == []


def test_a_runner_namespace_whose_default_account_mounts_a_token_is_refused(
    dev_spec: PlatformSpec,
) -> None:
    stack = [
        r
        for r in stack_of(dev_spec)
        if not (r[1] == "default" and r[2]["metadata"]["namespace"] == "runners-ml")
    ]
    assert check_stack(runner_service_accounts_no_token, stack) == [
        "Namespace runners-ml: its 'default' ServiceAccount is not declared with "
        "automountServiceAccountToken: false, so any pod there that names no account gets an "
        "API token"
    ]


def test_a_runner_account_that_mounts_a_token_is_refused(dev_spec: PlatformSpec) -> None:
    stack = copy.deepcopy(stack_of(dev_spec))
    for kind, _name, props in stack:
        if kind.endswith("ServiceAccount") and props["metadata"]["namespace"] == "runners-web":
            del props["automountServiceAccountToken"]
    extra = (
        "kubernetes:core/v1:ServiceAccount",
        "ci",
        {
            "metadata": {"name": "ci", "namespace": "runners-ml"},
            "automountServiceAccountToken": True,
        },
    )
    assert check_stack(runner_service_accounts_no_token, [*stack, extra]) == [
        "ServiceAccount runners-web/runner does not set automountServiceAccountToken: false: "
        "every pod of the runner namespace that runs as it gets an API token",
        "ServiceAccount runners-ml/ci does not set automountServiceAccountToken: false: every "
        "pod of the runner namespace that runs as it gets an API token",
    ]


# --- runner egress -----------------------------------------------------------------------


def test_the_builders_runner_egress_excepts_everything_internal(dev_spec: PlatformSpec) -> None:
    assert check_stack(runner_egress_excludes_internal, stack_of(dev_spec)) == []


def _with_egress_except(
    stack: list[tuple[str, str, dict[str, Any]]], namespace: str, excepts: list[str]
) -> list[tuple[str, str, dict[str, Any]]]:
    stack = copy.deepcopy(stack)
    for kind, name, props in stack:
        if kind == NETWORK_POLICY and name == "runner-egress":
            if props["metadata"]["namespace"] == namespace:
                props["spec"]["egress"][1]["to"][0]["ipBlock"]["except"] = excepts
    return stack


def test_egress_that_leaves_part_of_link_local_open_is_refused(dev_spec: PlatformSpec) -> None:
    # What the platform excepted before: IMDS and Pod Identity, not the rest of link-local.
    stack = _with_egress_except(
        stack_of(dev_spec),
        "runners-web",
        ["169.254.169.254/32", "169.254.170.23/32", "10.40.0.0/16", "172.20.0.0/16"],
    )
    assert check_stack(runner_egress_excludes_internal, stack) == [
        "NetworkPolicy runners-web/runner-egress: egress to 0.0.0.0/0 does not except all of "
        "169.254.0.0/16 (link-local (instance metadata, EKS Pod Identity)): runner pods could "
        "reach it"
    ]


def test_egress_that_misses_a_block_of_an_existing_vpc_is_refused(
    dev_document: dict[str, Any],
) -> None:
    dev_document["cluster"]["vpc"] = {
        "vpc_id": "vpc-0abc1234",
        "private_subnet_ids": ["subnet-a", "subnet-b"],
        "cidrs": ["10.40.0.0/16", "100.64.0.0/16"],
    }
    spec = load_spec(dev_document)
    assert check_stack(runner_egress_excludes_internal, stack_of(spec)) == []
    # What the platform did before: the default 10.0.0.0/16 for a VPC it did not create.
    stack = _with_egress_except(
        stack_of(spec), "runners-ml", ["169.254.0.0/16", "10.0.0.0/16", "172.20.0.0/16"]
    )
    assert check_stack(runner_egress_excludes_internal, stack) == [
        "NetworkPolicy runners-ml/runner-egress: egress to 0.0.0.0/0 does not except all of "
        "10.40.0.0/16 (the VPC): runner pods could reach it",
        "NetworkPolicy runners-ml/runner-egress: egress to 0.0.0.0/0 does not except all of "
        "100.64.0.0/16 (the VPC): runner pods could reach it",
    ]


def test_a_block_split_across_exceptions_counts_as_excepted(dev_spec: PlatformSpec) -> None:
    stack = _with_egress_except(
        stack_of(dev_spec),
        "runners-web",
        ["169.254.0.0/17", "169.254.128.0/17", "10.40.0.0/17", "10.40.128.0/17", "172.20.0.0/16"],
    )
    assert check_stack(runner_egress_excludes_internal, stack) == []


# --- the controller's way in and its nodes -----------------------------------------------


def test_the_builders_controller_objects_pass(dev_spec: PlatformSpec) -> None:
    assert check_stack(controller_only_behind_ingress, stack_of(dev_spec)) == []
    for kind, name, props in stack_of(dev_spec):
        assert check(controller_off_runner_nodes, kind, name, props) == []
    for pool in dev_spec.pools:
        props = {k: v for k, v in node_pools.node_pool(dev_spec, pool).items() if k != "kind"}
        assert check(controller_off_runner_nodes, NODE_POOL, pool.name, props) == []


def test_a_controller_port_open_to_any_pod_is_refused(dev_spec: PlatformSpec) -> None:
    stack = copy.deepcopy(stack_of(dev_spec))
    policy = next(
        props
        for kind, name, props in stack
        if kind == NETWORK_POLICY and name == "runner-controller"
    )
    del policy["spec"]["ingress"][0]["from"]
    assert check_stack(controller_only_behind_ingress, stack) == [
        "NetworkPolicy runner-platform/runner-controller ingress[0] admits the controller's port "
        "from anywhere (no 'from'): any pod, runner pods included, could reach it"
    ]


def test_an_allow_all_policy_beside_the_controller_is_refused() -> None:
    props = {
        "metadata": {"name": "allow-all", "namespace": "runner-platform"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
    }
    assert check_stack(controller_only_behind_ingress, [(NETWORK_POLICY, "p", props)]) == [
        "NetworkPolicy runner-platform/allow-all ingress[0] admits every pod of its namespace "
        "(the controller's too, if it is there) from anywhere (no 'from'): any pod, runner pods "
        "included, could reach it"
    ]
    # A default deny (no ingress rule at all) selects every pod and admits nothing.
    del props["spec"]["ingress"]
    assert check_stack(controller_only_behind_ingress, [(NETWORK_POLICY, "p", props)]) == []


@pytest.mark.parametrize(
    ("selector", "selects"),
    [
        # Every Deployment pod carries pod-template-hash: the controller's too.
        ({"matchExpressions": [{"key": "pod-template-hash", "operator": "Exists"}]}, True),
        ({"matchLabels": {"pod-template-hash": "5d9f"}}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, True),
        ({"matchLabels": {"app": "redis"}}, False),  # a label the controller does not carry
        (
            {
                "matchExpressions": [
                    {
                        "key": "app.kubernetes.io/name",
                        "operator": "NotIn",
                        "values": ["runner-controller"],
                    }
                ]
            },
            False,
        ),
    ],
)
def test_a_policy_that_selects_the_controller_by_another_label_is_checked(
    selector: dict[str, Any], selects: bool
) -> None:
    props = {
        "metadata": {"name": "sneaky", "namespace": "runner-platform"},
        "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": [{}]},
    }
    found = check_stack(controller_only_behind_ingress, [(NETWORK_POLICY, "p", props)])
    assert found == (
        [
            "NetworkPolicy runner-platform/sneaky ingress[0] admits the controller's port from "
            "anywhere (no 'from'): any pod, runner pods included, could reach it"
        ]
        if selects
        else []
    )


def test_an_alb_through_node_ports_is_refused() -> None:
    props = _ingress({"alb.ingress.kubernetes.io/target-type": "instance"}, [{"hosts": ["h"]}])
    assert check_stack(controller_only_behind_ingress, [(INGRESS, "i", props)]) == [
        "Ingress i: 'alb.ingress.kubernetes.io/target-type' is 'instance': the load balancer "
        "would reach the pods through a port every node opens, not at their own addresses"
    ]


def test_a_controller_that_may_land_on_karpenter_nodes_is_refused(
    dev_spec: PlatformSpec,
) -> None:
    deployment = copy.deepcopy(controller_manifests.deployment(dev_spec, "h"))
    del deployment["spec"]["template"]["spec"]["affinity"]
    props = {k: v for k, v in deployment.items() if k not in ("apiVersion", "kind")}
    assert check(controller_off_runner_nodes, DEPLOYMENT, "d", props) == [
        "the controller's pods may land on a node Karpenter launched: every required node "
        "affinity term needs 'karpenter.sh/nodepool' DoesNotExist (the pods hold every team's "
        "App keys and webhook secrets)"
    ]


def test_a_node_pool_that_labels_its_nodes_as_system_nodes_is_refused(
    dev_spec: PlatformSpec,
) -> None:
    pool = node_pools.node_pool(dev_spec, dev_spec.pool("warm"))
    pool["spec"]["template"]["metadata"]["labels"]["runner-platform.io/system"] = "true"
    assert check(controller_off_runner_nodes, NODE_POOL, "warm", pool) == [
        "NodePool gives its nodes ['runner-platform.io/system']: the runner-platform.io/ labels "
        "are the platform's (system nodes run the controller)"
    ]


@pytest.mark.parametrize("operator", ["In", "Exists", "NotIn", "Gt"])
def test_a_node_pool_requirement_on_the_system_label_is_refused(
    dev_spec: PlatformSpec, operator: str
) -> None:
    """Karpenter labels nodes from NotIn and Gt too: NotIn [false] meets a pod's In [true]."""
    pool = node_pools.node_pool(dev_spec, dev_spec.pool("warm"))
    values = {"In": ["true"], "NotIn": ["false"], "Gt": ["0"]}.get(operator)
    requirement = {"key": "runner-platform.io/system", "operator": operator}
    pool["spec"]["template"]["spec"]["requirements"].append(
        {**requirement, **({"values": values} if values else {})}
    )
    assert check(controller_off_runner_nodes, NODE_POOL, "warm", pool) == [
        "NodePool gives its nodes ['runner-platform.io/system']: the runner-platform.io/ labels "
        "are the platform's (system nodes run the controller)"
    ]
    requirement["operator"] = "DoesNotExist"  # keeps the label off: fine
    pool["spec"]["template"]["spec"]["requirements"][-1] = requirement
    assert check(controller_off_runner_nodes, NODE_POOL, "warm", pool) == []


# --- runner pod templates ----------------------------------------------------------------


def _unlabelled_runner_deployment(**pod: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sneaky", "namespace": "runners-web"},
        "spec": {
            "template": {
                "metadata": {},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}], **pod},
            }
        },
    }


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ({"hostNetwork": True}, "spec.template: a runner pod may not set hostNetwork"),
        ({"hostPID": True}, "spec.template: a runner pod may not set hostPID"),
        (
            {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
            "spec.template: runner pod volume 'root' is a hostPath",
        ),
    ],
)
def test_a_workload_in_a_runner_namespace_is_a_runner_pod_without_the_label(
    pod: dict[str, Any], message: str
) -> None:
    (found,) = check(runner_pod_host_access, DEPLOYMENT, "d", _unlabelled_runner_deployment(**pod))
    assert found.startswith(message)


def test_privilege_by_capability_or_ephemeral_container_is_privilege(
    dev_spec: PlatformSpec,
) -> None:
    pools = [(NODE_POOL, p.name, node_pools.node_pool(dev_spec, p)) for p in dev_spec.pools]
    sys_admin = _unlabelled_runner_deployment(nodeSelector={"pool": "warm"})
    sys_admin["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["SYS_ADMIN"]}
    }
    debug = _unlabelled_runner_deployment(
        ephemeralContainers=[{"name": "debug", "securityContext": {"privileged": True}}]
    )
    messages = check_stack(
        privileged_runner_on_shared_pool,
        [*pools, (DEPLOYMENT, "a", sys_admin), (DEPLOYMENT, "b", debug)],
    )
    assert len(messages) == 2
    assert "privileged container(s) ['c'] on pool 'warm'" in messages[0]
    assert "privileged container(s) ['debug'] on pool 'any'" in messages[1]


def test_the_builders_job_pod_templates_pass(dev_spec: PlatformSpec) -> None:
    for team in dev_spec.teams:
        for manifest in container_manifests.team_objects(dev_spec, team):
            if manifest["kind"] != "ConfigMap":
                continue
            props = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
            assert check(runner_pod_host_access, "kubernetes:core/v1:ConfigMap", "c", props) == []


# --- review findings ---------------------------------------------------------------------


def _extra_policy(namespace: str, name: str, spec: dict[str, Any]) -> tuple[str, str, Any]:
    return (
        NETWORK_POLICY,
        name,
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec},
    )


@pytest.mark.parametrize(
    "rule", [{}, {"ports": [{"protocol": "TCP", "port": 443}]}, {"to": []}], ids=str
)
def test_an_egress_rule_without_peers_reaches_everything_internal(
    dev_spec: PlatformSpec, rule: dict[str, Any]
) -> None:
    """A rule with no 'to' allows every destination, undoing the platform's exceptions."""
    extra = _extra_policy("runners-web", "open", {"podSelector": {}, "egress": [rule]})
    assert check_stack(runner_egress_excludes_internal, [*stack_of(dev_spec), extra]) == [
        f"NetworkPolicy runners-web/open: egress to 0.0.0.0/0 does not except all of {block} "
        f"({what}): runner pods could reach it"
        for block, what in [
            ("169.254.0.0/16", "link-local (instance metadata, EKS Pod Identity)"),
            ("10.40.0.0/16", "the VPC"),
            ("172.20.0.0/16", "the service network"),
        ]
    ]


def test_egress_to_selected_pods_is_not_egress_to_addresses(dev_spec: PlatformSpec) -> None:
    selectors = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "cache"}}}
    extra = _extra_policy(
        "runners-web", "to-pods", {"podSelector": {}, "egress": [{"to": [selectors]}]}
    )
    assert check_stack(runner_egress_excludes_internal, [*stack_of(dev_spec), extra]) == []


CONTROLLER_SELECTOR = {
    "matchExpressions": [
        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["runner-controller"]}
    ]
}


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            {"namespaceSelector": {}},
            "from every namespace (an empty namespaceSelector): any pod, runner pods included, "
            "could reach it",
        ),
        (
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "x"}}},
            "from every namespace (an empty namespaceSelector): any pod, runner pods included, "
            "could reach it",
        ),
        (
            {"podSelector": {}},
            "from every pod of its namespace (an empty podSelector): any pod there could reach it",
        ),
        (
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "runners-web"}}},
            "from runner namespace 'runners-web': its runner pods could reach it",
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}},
            'from the namespaces {"matchExpressions": [{"key": "x", "operator": '
            '"DoesNotExist"}]} selects: only one namespace named by '
            "'kubernetes.io/metadata.name' may reach it (another selector may take in runner "
            "namespaces)",
        ),
        (
            {"namespaceSelector": {"matchLabels": {"runner-platform.io/team": "web"}}},
            'from the namespaces {"matchLabels": {"runner-platform.io/team": "web"}} selects: '
            "only one namespace named by 'kubernetes.io/metadata.name' may reach it (another "
            "selector may take in runner namespaces)",
        ),
        (
            {"ipBlock": {"cidr": "0.0.0.0/0"}},
            "from 0.0.0.0/0, which is not inside the VPC ['10.40.0.0/16']: only the load "
            "balancer's addresses in the VPC may reach it",
        ),
    ],
)
def test_a_controller_source_wider_than_the_load_balancer_is_refused(
    dev_spec: PlatformSpec, source: dict[str, Any], problem: str
) -> None:
    """Beside the builder's policy, one that selects the controller by an expression and
    names a source that admits every pod or any address."""
    extra = _extra_policy(
        "runner-platform",
        "extra",
        {"podSelector": CONTROLLER_SELECTOR, "ingress": [{"from": [source]}]},
    )
    assert check_stack(controller_only_behind_ingress, [*stack_of(dev_spec), extra]) == [
        f"NetworkPolicy runner-platform/extra ingress[0].from[0] admits the controller's port "
        f"{problem}"
    ]
    # An expression that excludes the controller selects other pods only.
    other = copy.deepcopy(extra)
    other[2]["spec"]["podSelector"]["matchExpressions"][0]["operator"] = "NotIn"
    assert check_stack(controller_only_behind_ingress, [*stack_of(dev_spec), other]) == []


def test_a_team_namespace_of_any_name_may_not_reach_the_controller(dev_spec: PlatformSpec) -> None:
    namespace = {"metadata": {"name": "ci-web", "labels": {"runner-platform.io/team": "web"}}}
    source = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci-web"}}}
    extra = _extra_policy(
        "runner-platform",
        "extra",
        {"podSelector": CONTROLLER_SELECTOR, "ingress": [{"from": [source]}]},
    )
    stack = [*stack_of(dev_spec), extra]
    assert check_stack(controller_only_behind_ingress, stack) == []  # not declared a team's
    assert check_stack(
        controller_only_behind_ingress, [*stack, ("kubernetes:core/v1:Namespace", "ci", namespace)]
    ) == [
        "NetworkPolicy runner-platform/extra ingress[0].from[0] admits the controller's port "
        "from runner namespace 'ci-web': its runner pods could reach it"
    ]


def test_a_controller_reached_from_anywhere_by_expression_is_refused(
    dev_spec: PlatformSpec,
) -> None:
    extra = _extra_policy(
        "runner-platform", "extra", {"podSelector": CONTROLLER_SELECTOR, "ingress": [{}]}
    )
    assert check_stack(controller_only_behind_ingress, [*stack_of(dev_spec), extra]) == [
        "NetworkPolicy runner-platform/extra ingress[0] admits the controller's port from "
        "anywhere (no 'from'): any pod, runner pods included, could reach it"
    ]


@pytest.mark.parametrize(
    ("requirement", "label"),
    [
        (
            {"key": "runner-platform.io/system", "operator": "In", "values": ["true"]},
            "runner-platform.io/system",
        ),
        (
            {"key": "Runner-Platform.IO/system", "operator": "In", "values": ["true"]},
            "Runner-Platform.IO/system",
        ),
        (
            {"key": "x.runner-platform.io/system", "operator": "Exists"},
            "x.runner-platform.io/system",
        ),
    ],
)
def test_a_node_pool_that_labels_its_nodes_by_requirement_is_refused(
    dev_spec: PlatformSpec, requirement: dict[str, Any], label: str
) -> None:
    """Karpenter labels nodes from single-valued In requirements too, not only from labels."""
    pool = node_pools.node_pool(dev_spec, dev_spec.pool("warm"))
    pool["spec"]["template"]["spec"]["requirements"].append(requirement)
    assert check(controller_off_runner_nodes, NODE_POOL, "warm", pool) == [
        f"NodePool gives its nodes ['{label}']: the runner-platform.io/ labels are the "
        "platform's (system nodes run the controller)"
    ]
