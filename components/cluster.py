"""The EKS cluster: network, control plane, system node group and a Kubernetes provider."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from components import iam_documents
from controller.model import ClusterSettings

DISCOVERY_TAG = "karpenter.sh/discovery"
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonSSMManagedInstanceCore",
)


@dataclass(frozen=True)
class SubnetPlan:
    private: tuple[str, ...]
    public: tuple[str, ...]


def subnet_plan(cidr: str, zones: int) -> SubnetPlan:
    """Large private subnets (nodes and pods live there), small public ones (load balancers).

    The VPC is cut in eighths: one eighth per zone for private subnets, and the last
    eighth split again for the public ones, so a /16 gives /19 private and /22 public.
    """
    network = ipaddress.IPv4Network(cidr)
    eighths = list(network.subnets(prefixlen_diff=3))
    public_pool = list(eighths[-1].subnets(prefixlen_diff=3))
    return SubnetPlan(
        private=tuple(str(block) for block in eighths[:zones]),
        public=tuple(str(block) for block in public_pool[:zones]),
    )


def node_policy_arns(partition: str) -> list[str]:
    return [f"arn:{partition}:iam::aws:policy/{name}" for name in NODE_POLICIES]


class Network(pulumi.ComponentResource):
    """A VPC with public and private subnets over N zones and one NAT gateway."""

    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]

    def __init__(
        self, name: str, settings: ClusterSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("runner-platform:cluster:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**settings.tags, "Name": settings.name}
        plan = subnet_plan(settings.vpc.cidr, settings.vpc.availability_zones)
        zones = aws.get_availability_zones(state="available").names[: len(plan.private)]
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=settings.vpc.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=tags,
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            tags=tags,
            opts=child,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
        )
        public, private = [], []
        for index, zone in enumerate(zones):
            subnet = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=plan.public[index],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                opts=child,
                tags={**tags, "kubernetes.io/role/elb": "1"},
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}",
                subnet_id=subnet.id,
                route_table_id=public_rt.id,
                opts=child,
            )
            public.append(subnet)
        eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=tags, opts=child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat", allocation_id=eip.id, subnet_id=public[0].id, tags=tags, opts=child
        )
        private_rt = aws.ec2.RouteTable(
            f"{name}-private",
            vpc_id=vpc.id,
            tags=tags,
            opts=child,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
        )
        for index, zone in enumerate(zones):
            subnet = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=plan.private[index],
                availability_zone=zone,
                opts=child,
                tags={
                    **tags,
                    "kubernetes.io/role/internal-elb": "1",
                    DISCOVERY_TAG: settings.name,
                },
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}",
                subnet_id=subnet.id,
                route_table_id=private_rt.id,
                opts=child,
            )
            private.append(subnet)
        self.vpc_id = vpc.id
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private])
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public])
        self.register_outputs({"vpc_id": self.vpc_id})


class Cluster(pulumi.ComponentResource):
    """EKS in API auth mode with IRSA, control-plane logs and a system node group."""

    name: str
    eks_cluster: eks.Cluster
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    vpc_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: ClusterSettings,
        partition: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:cluster:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.name = settings.name
        if settings.vpc.vpc_id is None:
            network = Network(f"{name}-network", settings, opts=child)
            vpc_id: pulumi.Input[str] = network.vpc_id
            private_ids: pulumi.Input[list[str]] = network.private_subnet_ids
            public_ids: pulumi.Input[list[str]] = network.public_subnet_ids
        else:
            vpc_id = settings.vpc.vpc_id
            private_ids = list(settings.vpc.private_subnet_ids)
            public_ids = list(settings.vpc.public_subnet_ids)
            # Karpenter finds subnets by tag; an existing VPC gets the tag here.
            for index, subnet_id in enumerate(settings.vpc.private_subnet_ids):
                aws.ec2.Tag(
                    f"{name}-discovery-{index}",
                    resource_id=subnet_id,
                    key=DISCOVERY_TAG,
                    value=settings.name,
                    opts=child,
                )
        endpoint = settings.endpoint
        self.eks_cluster = eks.Cluster(
            f"{name}-eks",
            name=settings.name,
            version=settings.kubernetes_version,
            vpc_id=vpc_id,
            private_subnet_ids=private_ids,
            public_subnet_ids=public_ids or None,
            authentication_mode=eks.AuthenticationMode.API,
            create_oidc_provider=True,
            skip_default_node_group=True,
            skip_default_security_groups=True,
            node_associate_public_ip_address=False,
            endpoint_private_access=endpoint.private_access,
            endpoint_public_access=endpoint.public_access,
            public_access_cidrs=list(endpoint.public_access_cidrs) or None,
            enabled_cluster_log_types=list(settings.log_types),
            kubernetes_service_ip_address_range=settings.service_cidr,
            tags=settings.tags,
            opts=child,
        )
        node_role = aws.iam.Role(
            f"{name}-system-node",
            assume_role_policy=pulumi.Output.json_dumps(
                iam_documents.service_trust_policy("ec2.amazonaws.com")
            ),
            tags=settings.tags,
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-system-node-{index}", role=node_role.name, policy_arn=arn, opts=child
            )
            for index, arn in enumerate(node_policy_arns(partition))
        ]
        nodes = settings.system_nodes
        aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=settings.name,
            node_role_arn=node_role.arn,
            subnet_ids=private_ids,
            instance_types=list(nodes.instance_types),
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            labels={"runner-platform.io/system": "true"},
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=nodes.min_size, desired_size=nodes.desired_size, max_size=nodes.max_size
            ),
            tags=settings.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks_cluster, *attachments]),
        )
        self.kubeconfig = pulumi.Output.secret(self.eks_cluster.kubeconfig_json)
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True, opts=child
        )
        self.oidc_provider_arn = self.eks_cluster.oidc_provider_arn
        self.oidc_issuer = self.eks_cluster.oidc_issuer
        self.private_subnet_ids = pulumi.Output.from_input(private_ids)
        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.register_outputs({"cluster_name": self.name, "kubeconfig": self.kubeconfig})

    def irsa_trust(self, namespace: str, service_account: str) -> pulumi.Output[str]:
        """Trust policy JSON for one ServiceAccount through this cluster's OIDC provider."""
        return pulumi.Output.all(self.oidc_provider_arn, self.oidc_issuer).apply(
            lambda args: json.dumps(
                iam_documents.irsa_trust_policy(args[0], args[1], namespace, service_account)
            )
        )
