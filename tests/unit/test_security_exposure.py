"""Exposure (issue 9, items 7-11): the model refuses what would open the platform, and the
builders close what no config can open.

Public endpoint CIDRs are parsed, an existing VPC lists every block, the runner-platform.io
label domain is the platform's, the controller stays on system nodes and behind its load
balancer, runner namespaces mount no token by default, isolated pools have their own node
identity, and no node role carries the VPC CNI's rights.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from components import cluster as cluster_component
from components import container_manifests as ccm
from components import controller_manifests as cm
from components import iam_documents, node_pools
from components.k8s_objects import cluster_made
from controller.model import PlatformSpec, SpecError, load_spec

# --- the public endpoint -----------------------------------------------------------------

ENDPOINT = "cluster.endpoint.public_access_cidrs"
MEANT = "; set allow_public_from_anywhere: true if that is meant"

OPEN_CIDRS: list[tuple[str, list[str], str]] = [
    (
        "two halves",
        ["0.0.0.0/1", "128.0.0.0/1"],
        f"{ENDPOINT}: ['0.0.0.0/1', '128.0.0.0/1'] together cover every IPv4 address (as "
        f"0.0.0.0/0 does): that opens the API to the internet{MEANT}",
    ),
    (
        "four quarters",
        ["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"],
        f"{ENDPOINT}: ['0.0.0.0/2', '64.0.0.0/2', '128.0.0.0/2', '192.0.0.0/2'] together cover "
        f"every IPv4 address (as 0.0.0.0/0 does): that opens the API to the internet{MEANT}",
    ),
    ("all of IPv6", ["::/0"], f"{ENDPOINT}: ::/0 opens the API to the internet{MEANT}"),
    (
        "all of IPv4",
        ["203.0.113.0/24", "0.0.0.0/0"],
        f"{ENDPOINT}: 0.0.0.0/0 opens the API to the internet{MEANT}",
    ),
    (
        "IPv6 halves",
        ["::/1", "8000::/1"],
        f"{ENDPOINT}: ['::/1', '8000::/1'] together cover every IPv6 address (as ::/0 does): "
        f"that opens the API to the internet{MEANT}",
    ),
    (
        "IPv4-mapped halves",
        ["::ffff:0.0.0.0/97", "::ffff:128.0.0.0/97"],
        f"{ENDPOINT}: ['0.0.0.0/1', '128.0.0.0/1'] together cover every IPv4 address (as "
        f"0.0.0.0/0 does): that opens the API to the internet{MEANT}",
    ),
    (
        "too short IPv4",
        ["203.0.113.0/24", "10.0.0.0/7"],
        f"{ENDPOINT}[1]: '10.0.0.0/7' is a /7 (33,554,432 addresses); a public endpoint takes "
        f"IPv4 blocks of /8 or narrower{MEANT}",
    ),
    (
        "too short IPv6",
        ["2001:db8::/31"],
        f"{ENDPOINT}[0]: '2001:db8::/31' is a /31 (158,456,325,028,528,675,187,087,900,672 "
        f"addresses); a public endpoint takes IPv6 blocks of /32 or narrower{MEANT}",
    ),
    (
        "IPv6 block holding all IPv4-mapped addresses",
        ["203.0.113.0/24", "::/64"],
        f"{ENDPOINT}[1]: '::/64' contains every IPv4-mapped address (::ffff:0:0/96), so it "
        "covers every IPv4 address (as 0.0.0.0/0 does): that opens the API to the internet"
        f"{MEANT}",
    ),
    (
        "IPv6 block just above the IPv4-mapped range",
        ["::fffe:0:0/95"],
        f"{ENDPOINT}[0]: '::fffe:0:0/95' contains every IPv4-mapped address (::ffff:0:0/96), "
        "so it covers every IPv4 address (as 0.0.0.0/0 does): that opens the API to the "
        f"internet{MEANT}",
    ),
]


@pytest.mark.parametrize(
    ("cidrs", "message"), [c[1:] for c in OPEN_CIDRS], ids=[c[0] for c in OPEN_CIDRS]
)
def test_public_endpoint_cidrs_that_open_the_api_are_refused(
    dev_document: dict[str, Any], cidrs: list[str], message: str
) -> None:
    dev_document["cluster"]["endpoint"]["public_access_cidrs"] = cidrs
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert message in caught.value.problems, caught.value.problems


def test_each_too_wide_block_is_named_beside_the_union(dev_document: dict[str, Any]) -> None:
    dev_document["cluster"]["endpoint"]["public_access_cidrs"] = ["0.0.0.0/1", "128.0.0.0/1"]
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        f"{ENDPOINT}[0]",
        f"{ENDPOINT}[1]",
        ENDPOINT,
    ]


@pytest.mark.parametrize(
    "cidrs",
    [
        ["203.0.113.0/24", "198.51.100.7/32"],
        ["10.0.0.0/8"],
        ["2001:db8::/32", "2001:db8:1::/48", "203.0.113.0/24"],
        # Nearly everything, but not everything: only the prefix limit speaks for these.
        [f"{first}.0.0.0/8" for first in range(1, 41)],
    ],
)
def test_narrow_public_endpoint_cidrs_pass(dev_document: dict[str, Any], cidrs: list[str]) -> None:
    dev_document["cluster"]["endpoint"]["public_access_cidrs"] = cidrs
    assert load_spec(dev_document).cluster.endpoint.public_access_cidrs == tuple(cidrs)


def test_allow_public_from_anywhere_is_the_one_way_to_open_it(
    dev_document: dict[str, Any],
) -> None:
    dev_document["cluster"]["endpoint"].update(
        public_access_cidrs=["0.0.0.0/1", "128.0.0.0/1"], allow_public_from_anywhere=True
    )
    load_spec(dev_document)


# --- an existing VPC ---------------------------------------------------------------------


def _existing_vpc(document: dict[str, Any], **vpc: Any) -> dict[str, Any]:
    document["cluster"]["vpc"] = {
        "vpc_id": "vpc-0abc1234",
        "private_subnet_ids": ["subnet-a", "subnet-b"],
        **vpc,
    }
    return document


def test_an_existing_vpc_must_list_every_block(dev_document: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_existing_vpc(dev_document))
    assert caught.value.problems == [
        "cluster.vpc: an existing VPC needs 'cidrs': every CIDR block of the VPC (primary and "
        "secondary), so runner egress excludes all of it"
    ]


def test_an_existing_vpc_does_not_take_the_created_vpcs_cidr(
    dev_document: dict[str, Any],
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_existing_vpc(dev_document, cidr="10.40.0.0/16", cidrs=["10.40.0.0/16"]))
    assert caught.value.problems == [
        "cluster.vpc.cidr: is for a VPC the platform creates; an existing VPC lists every block "
        "in 'cidrs'"
    ]


def test_an_existing_vpc_lists_its_primary_ipv4_block(dev_document: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_existing_vpc(dev_document, cidrs=["2600:1f14:abc::/56"]))
    assert caught.value.problems == [
        "cluster.vpc.cidrs: lists no IPv4 block, yet every VPC has one (its primary block): "
        "list every block of the VPC"
    ]


def test_cidrs_need_an_existing_vpc(dev_document: dict[str, Any]) -> None:
    dev_document["cluster"]["vpc"]["cidrs"] = ["10.40.0.0/16"]
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "cluster.vpc.cidrs: lists an existing VPC's blocks and needs 'vpc_id'; a VPC the "
        "platform creates has the one 'cidr'"
    ]


def test_runner_egress_excludes_every_block_of_an_existing_vpc(
    dev_document: dict[str, Any],
) -> None:
    blocks = ["10.40.0.0/16", "100.64.0.0/16", "2600:1f14:abc::/56"]
    spec = load_spec(_existing_vpc(dev_document, cidrs=blocks))
    assert spec.cluster.vpc.all_cidrs == tuple(blocks)
    # The runner ipBlock is IPv4 (no IPv6 is reachable at all); every IPv4 block is out.
    assert cm.runner_egress_exceptions(spec) == [
        "169.254.0.0/16",
        "10.40.0.0/16",
        "100.64.0.0/16",
        "172.20.0.0/16",
    ]
    controller = next(
        o for o in cm.network_policies(spec) if o["metadata"]["name"] == cm.CONTROLLER_NAME
    )
    assert controller["spec"]["ingress"][0]["from"] == [
        {"ipBlock": {"cidr": block}} for block in blocks
    ]


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        (
            ["10.40.0.0/16", "::ffff:100.64.0.0/112", "10.40.0.0/16"],
            [
                "cluster.vpc.cidrs[1]: '::ffff:100.64.0.0/112' is an IPv4-mapped IPv6 block; "
                "list the IPv4 block '100.64.0.0/16' itself (a VPC has no IPv4-mapped blocks)",
                "cluster.vpc.cidrs[2]: '10.40.0.0/16' is listed twice (first at index 0)",
            ],
        ),
        (
            ["10.40.0.0/16", "::/64"],
            [
                "cluster.vpc.cidrs[1]: '::/64' holds the IPv4-mapped range ::ffff:0:0/96; a VPC "
                "has no IPv4-mapped blocks"
            ],
        ),
        (
            ["10.40.0.0/16", "2600:1f14:abc::/56", "2600:1f14:0abc::/56"],
            ["cluster.vpc.cidrs[2]: '2600:1f14:0abc::/56' is listed twice (first at index 1)"],
        ),
    ],
    ids=["mapped and duplicate", "holds the mapped range", "same IPv6 block spelt twice"],
)
def test_an_existing_vpc_lists_each_block_once_and_none_ipv4_mapped(
    dev_document: dict[str, Any], cidrs: list[str], message: list[str]
) -> None:
    """Runner egress excludes the IPv4 blocks: a mapped block would silently drop out."""
    with pytest.raises(SpecError) as caught:
        load_spec(_existing_vpc(dev_document, cidrs=cidrs))
    assert caught.value.problems == message


def test_a_created_vpc_is_its_one_cidr(dev_spec: PlatformSpec) -> None:
    assert dev_spec.cluster.vpc.all_cidrs == ("10.40.0.0/16",)


# --- the platform's label domain ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"labels": {"runner-platform.io/system": "true"}},
            "pools[0].labels: 'runner-platform.io/system' is in the 'runner-platform.io/' domain "
            "the platform reserves (it marks system nodes, which run the controller, and pool "
            "kinds and owners)",
        ),
        (
            {"labels": {"Runner-Platform.IO/owner": "ml"}},
            "pools[0].labels: 'Runner-Platform.IO/owner' is in the 'runner-platform.io/' domain",
        ),
        (
            {"labels": {"nodes.runner-platform.io/anything": "x"}},
            "pools[0].labels: 'nodes.runner-platform.io/anything' is in the 'runner-platform.io/' "
            "domain",
        ),
        ({"labels": {"pool": "gpu"}}, "pools[0].labels: 'pool' is set by the platform"),
        (
            {"taints": [{"key": "runner-platform.io/pool", "value": "ml-isolated"}]},
            "pools[0].taints[0].key: 'runner-platform.io/pool' is in the 'runner-platform.io/' "
            "domain the platform reserves (it sets the pool taints itself)",
        ),
        (
            {
                "taints": [
                    {"key": "acme.example/dedicated", "value": "ci"},
                    {
                        "key": "node.cilium.io/agent-not-ready",
                        "value": "true",
                        "effect": "NoExecute",
                    },
                ]
            },
            "pools[0].taints[1].key: 'node.cilium.io/agent-not-ready' is Cilium's startup taint "
            "(Cilium removes it once it manages the node; a pod tolerating it could start outside "
            "NetworkPolicy and WireGuard)",
        ),
        (
            {"taints": [{"key": "nvidia.com/gpu", "value": "true"}]},
            "pools[0].taints[0].key: 'nvidia.com/gpu' is the GPU taint the platform sets on 'gpu' "
            "pools; a 'general' pool may not carry it (its runners would tolerate GPU nodes)",
        ),
    ],
)
def test_the_platform_label_and_taint_domain_is_reserved(
    dev_document: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    dev_document["pools"][0].update(change)
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_no_runner_pod_tolerates_cilium_s_startup_taint(dev_spec: PlatformSpec) -> None:
    """Pools carry no such taint, and the admission policy refuses the toleration itself."""
    for pool in dev_spec.pools:
        assert all(t["key"] != "node.cilium.io/agent-not-ready" for t in pool.tolerations())
    policy = ccm.admission_policy(dev_spec)[0]
    tolerations = next(
        v["expression"]
        for v in policy["spec"]["validations"]
        if "object.spec.tolerations" in v["expression"]
    )
    assert "t.key != 'node.cilium.io/agent-not-ready'" in tolerations
    assert "has(t.key) && t.key != ''" in tolerations


def test_labels_outside_the_domain_are_the_pools_own(dev_document: dict[str, Any]) -> None:
    dev_document["pools"][0]["labels"] = {"acme.example/cost-center": "ci", "tier": "x"}
    dev_document["pools"][0]["taints"] = [{"key": "acme.example/dedicated", "value": "ci"}]
    load_spec(dev_document)


def test_the_controller_never_lands_on_a_karpenter_node(dev_spec: PlatformSpec) -> None:
    pod = cm.deployment(dev_spec, "h")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"runner-platform.io/system": "true"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "runner-platform.io/system", "operator": "In", "values": ["true"]},
                    {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"},
                ]
            }
        ]
    }


def test_no_kubelet_may_change_the_labels_that_place_the_controller(
    dev_spec: PlatformSpec,
) -> None:
    policy, binding = cm.node_label_guard()
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["nodes"]
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        "request.userInfo.username.startsWith('system:node:')"
    )
    (validation,) = policy["spec"]["validations"]
    for label in ("runner-platform.io/system", "karpenter.sh/nodepool"):
        assert f"object.metadata.labels['{label}']" in validation["expression"]
        assert f"oldObject.metadata.labels['{label}']" in validation["expression"]
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    objects = cm.controller_objects(
        dev_spec, controller_role_arn="r", spec_json="{}", runtime_json="{}", hash_value="h"
    )
    assert policy in objects and binding in objects


# --- the controller's way in -------------------------------------------------------------


def test_the_webhook_ingress_serves_tls_and_targets_pods(dev_spec: PlatformSpec) -> None:
    ingress = cm.ingress(dev_spec)
    assert ingress["spec"]["tls"] == [{"hosts": ["runners-dev.acme.example"]}]
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"] == "ip"


def test_an_alb_ingress_targets_pods_even_when_the_stack_does_not_say(
    dev_document: dict[str, Any],
) -> None:
    del dev_document["controller"]["ingress_annotations"]["alb.ingress.kubernetes.io/target-type"]
    ingress = cm.ingress(load_spec(dev_document))
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"] == "ip"


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            {"alb.ingress.kubernetes.io/target-type": "instance"},
            "controller.ingress_annotations: 'alb.ingress.kubernetes.io/target-type' is "
            "'instance'; the ALB must send to the pods' own addresses ('ip')",
        ),
        (
            {"alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}, {"HTTPS": 443}]'},
            "controller.ingress_annotations: 'alb.ingress.kubernetes.io/listen-ports' opens a "
            "plain HTTP listener without 'alb.ingress.kubernetes.io/ssl-redirect'",
        ),
        (
            {"alb.ingress.kubernetes.io/listen-ports": "HTTP:80"},
            "controller.ingress_annotations: 'alb.ingress.kubernetes.io/listen-ports' is not a "
            "JSON list of listeners",
        ),
    ],
)
def test_ingress_annotations_that_open_another_path_are_refused(
    dev_document: dict[str, Any], annotations: dict[str, str], message: str
) -> None:
    dev_document["controller"]["ingress_annotations"].update(annotations)
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_an_in_cluster_ingress_controller_is_the_only_source(
    dev_document: dict[str, Any],
) -> None:
    dev_document["controller"].update(ingress_class="nginx", ingress_annotations={})
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "controller.ingress_controller_namespace: required with ingress class 'nginx': the "
        "controller admits webhooks only from the pods of that namespace (an ALB reaches the "
        "pods from the VPC instead)"
    ]
    dev_document["controller"]["ingress_controller_namespace"] = "ingress-nginx"
    spec = load_spec(dev_document)
    assert cm.ingress_sources(spec) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert "alb.ingress.kubernetes.io/target-type" not in cm.ingress(spec)["metadata"].get(
        "annotations", {}
    )


def test_an_alb_needs_no_ingress_namespace(dev_document: dict[str, Any]) -> None:
    dev_document["controller"]["ingress_controller_namespace"] = "kube-system"
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "controller.ingress_controller_namespace: is for an in-cluster ingress controller; an "
        "ALB reaches the pods from the VPC"
    ]


def test_an_http_listener_that_redirects_is_allowed(dev_document: dict[str, Any]) -> None:
    dev_document["controller"]["ingress_annotations"].update(
        {
            "alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}, {"HTTPS": 443}]',
            "alb.ingress.kubernetes.io/ssl-redirect": "443",
        }
    )
    load_spec(dev_document)


# --- runner namespaces -------------------------------------------------------------------


def test_the_default_account_of_each_runner_namespace_mounts_no_token(
    dev_spec: PlatformSpec,
) -> None:
    accounts = cm.service_accounts(dev_spec, "arn:aws:iam::1:role/c")
    defaults = [a for a in accounts if a["metadata"]["name"] == "default"]
    assert {a["metadata"]["namespace"] for a in defaults} == {t.namespace for t in dev_spec.teams}
    assert all(a["automountServiceAccountToken"] is False for a in defaults)
    # The cluster makes that account itself: the program patches it rather than create it.
    assert all(cluster_made(a) for a in defaults)
    assert not any(cluster_made(a) for a in accounts if a["metadata"]["name"] != "default")


def test_runner_egress_excludes_all_of_link_local(dev_spec: PlatformSpec) -> None:
    egress = next(
        o
        for o in cm.network_policies(dev_spec)
        if o["metadata"]["name"] == "runner-egress" and o["metadata"]["namespace"] == "runners-web"
    )
    block = egress["spec"]["egress"][1]["to"][0]["ipBlock"]
    assert "169.254.0.0/16" in block["except"]


# --- node identity -----------------------------------------------------------------------


def test_no_node_role_carries_the_vpc_cni_policy(dev_document: dict[str, Any]) -> None:
    assert not any("CNI" in arn for arn in cluster_component.node_policy_arns("aws"))
    spec = load_spec(dev_document)
    assert cluster_component.system_node_policy_arns(spec.cluster, "aws") == (
        cluster_component.node_policy_arns("aws")
    )
    # In ENI mode Cilium's operator (system nodes, host network) allocates the interfaces.
    dev_document["cluster"]["cilium_mode"] = "eni"
    eni = load_spec(dev_document)
    assert cluster_component.system_node_policy_arns(eni.cluster, "aws")[-1] == (
        "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
    )


def test_system_nodes_require_imdsv2_with_one_hop() -> None:
    assert cluster_component.IMDS_TOKENS == "required"
    assert cluster_component.IMDS_HOP_LIMIT == 1


def _pass_role_patterns(cluster: str) -> list[str]:
    policy = iam_documents.karpenter_controller_policy(
        cluster_name=cluster,
        region="us-west-2",
        account_id="123456789012",
        node_role_arn=f"arn:aws:iam::123456789012:role/KarpenterNodeRole-{cluster}",
        queue_arn="arn:aws:sqs:us-west-2:123456789012:q",
    )
    statement = next(s for s in policy["Statement"] if s["Action"] == "iam:PassRole")
    resources = statement["Resource"]
    return resources if isinstance(resources, list) else [resources]


@pytest.mark.parametrize(
    ("cluster", "pool"),
    [("runners-dev", "ml-isolated"), ("c" * 40, "p" * 40), ("c" * 40, "a"), ("x", "p" * 40)],
)
def test_isolated_node_roles_fit_iam_and_karpenter_may_pass_exactly_them(
    cluster: str, pool: str
) -> None:
    name = node_pools.isolated_node_role_name(cluster, pool)
    assert len(name) <= 64
    assert name.startswith(f"KarpenterNodeRole-{cluster}.")
    arn = f"arn:aws:iam::123456789012:role/{name}"
    assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in _pass_role_patterns(cluster))


def test_karpenter_may_not_pass_another_clusters_node_roles() -> None:
    patterns = _pass_role_patterns("runners-dev")
    for other in (
        node_pools.isolated_node_role_name("runners-dev-x", "ml-isolated"),
        node_pools.isolated_node_role_name("runners", "dev.ml"),
        "KarpenterNodeRole-runners-dev-x",
        "Admin",
    ):
        arn = f"arn:aws:iam::123456789012:role/{other}"
        assert not any(fnmatch.fnmatchcase(arn, p) for p in patterns), other


def test_long_pool_names_keep_distinct_roles() -> None:
    first = node_pools.isolated_node_role_name("c" * 40, "p" * 39 + "a")
    second = node_pools.isolated_node_role_name("c" * 40, "p" * 39 + "b")
    assert first != second


def test_an_isolated_pool_launches_with_its_own_security_group(dev_spec: PlatformSpec) -> None:
    pool = dev_spec.pool("ml-isolated")
    node_class = node_pools.ec2_node_class(
        dev_spec, pool, "KarpenterNodeRole-runners-dev.ml-isolated", ["sg-0123456789abcdef0"]
    )
    assert node_class["spec"]["role"] == "KarpenterNodeRole-runners-dev.ml-isolated"
    assert node_class["spec"]["securityGroupSelectorTerms"] == [{"id": "sg-0123456789abcdef0"}]
    shared = node_pools.ec2_node_class(dev_spec, dev_spec.pool("warm"), "KarpenterNodeRole-x")
    assert shared["spec"]["securityGroupSelectorTerms"] == [
        {"tags": {"aws:eks:cluster-name": "runners-dev"}}
    ]


def test_isolated_nodes_and_the_cluster_exchange_only_what_nodes_need() -> None:
    into_isolated = {(p, low) for p, low, _, _ in node_pools.INTO_ISOLATED_FROM_CLUSTER}
    into_cluster = {(p, low) for p, low, _, _ in node_pools.INTO_CLUSTER_FROM_ISOLATED}
    # The kubelet answers the control plane; the isolated nodes reach the API and CoreDNS;
    # Cilium's WireGuard and health checks cross both ways. Nothing is "all traffic".
    assert ("tcp", 10250) in into_isolated
    assert {("tcp", 443), ("tcp", 53), ("udp", 53)} <= into_cluster
    assert ("udp", 51871) in into_isolated & into_cluster
    assert all(p != "-1" for p, _ in into_isolated | into_cluster)
