"""The EKS cluster: network, control plane, system node group and a Kubernetes provider.

No node role carries the VPC CNI's permissions: in chaining mode ``aws-node`` (the EKS
``vpc-cni`` add-on) assumes its own role through IRSA, so a pod that reaches a node's
credentials cannot rewire the VPC's network interfaces. The system nodes require IMDSv2
with a hop limit of 1 (their pods cannot reach instance metadata) and carry a security
group of their own, the only source Redis admits.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from components import iam_documents
from components.k8s_objects import SYSTEM_NODE_LABEL
from controller.model import ClusterSettings

DISCOVERY_TAG = "karpenter.sh/discovery"
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonSSMManagedInstanceCore",
)
# The VPC CNI's EC2 rights: on aws-node's own IRSA role in chaining mode. In ENI mode
# Cilium's operator allocates the interfaces; it runs on system nodes with the host's
# network, so there (and only there) the system node role keeps them.
CNI_POLICY = "AmazonEKS_CNI_Policy"
VPC_CNI_ADDON = "vpc-cni"
VPC_CNI_NAMESPACE = "kube-system"
VPC_CNI_SERVICE_ACCOUNT = "aws-node"


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
    """Managed policies of a node role: joining the cluster, pulling from ECR, SSM."""
    return [f"arn:{partition}:iam::aws:policy/{name}" for name in NODE_POLICIES]


def cni_policy_arn(partition: str) -> str:
    return f"arn:{partition}:iam::aws:policy/{CNI_POLICY}"


def system_node_policy_arns(settings: ClusterSettings, partition: str) -> list[str]:
    """The system node role: a node role's, plus the CNI's rights in ENI mode (Cilium's
    operator, which runs there on the host network, allocates the interfaces)."""
    extra = [cni_policy_arn(partition)] if settings.cilium_mode == "eni" else []
    return [*node_policy_arns(partition), *extra]


# IMDSv2 only, one hop: a pod (one hop further) never reaches the node's credentials.
IMDS_TOKENS = "required"
IMDS_HOP_LIMIT = 1


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
    cluster_security_group_id: pulumi.Output[str]
    system_security_group_id: pulumi.Output[str]
    partition: str
    settings: ClusterSettings

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
        self.partition = partition
        self.settings = settings
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
            # EKS's own aws-node until the vpc-cni add-on below takes it over with IRSA.
            use_default_vpc_cni=True,
            tags=settings.tags,
            opts=child,
        )
        self.oidc_provider_arn = self.eks_cluster.oidc_provider_arn
        self.oidc_issuer = self.eks_cluster.oidc_issuer
        self.vpc_id = pulumi.Output.from_input(vpc_id)
        # EKS's cluster security group: the control plane's interfaces and every node that
        # is not in an isolated pool.
        self.cluster_security_group_id = self.eks_cluster.cluster_security_group_id
        before_nodes: list[pulumi.Resource] = [self.eks_cluster]
        if settings.cilium_mode == "chaining":
            before_nodes.append(self._vpc_cni(name))
        system_group = aws.ec2.SecurityGroup(
            f"{name}-system-nodes",
            vpc_id=vpc_id,
            description=f"System nodes of {settings.name}: the only source Redis admits",
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"]
                )
            ],
            tags={**settings.tags, "Name": f"{settings.name}-system-nodes"},
            opts=child,
        )
        self.system_security_group_id = system_group.id
        # With its own security groups a launch template replaces EKS's default, so the
        # cluster security group is listed too (nodes reach the control plane through it).
        template = aws.ec2.LaunchTemplate(
            f"{name}-system",
            description=f"System nodes of {settings.name}: IMDSv2, hop limit 1",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens=IMDS_TOKENS,
                http_put_response_hop_limit=IMDS_HOP_LIMIT,
                instance_metadata_tags="disabled",
            ),
            vpc_security_group_ids=[self.cluster_security_group_id, system_group.id],
            update_default_version=True,
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
            for index, arn in enumerate(system_node_policy_arns(settings, partition))
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
            labels={SYSTEM_NODE_LABEL: "true"},
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=nodes.min_size, desired_size=nodes.desired_size, max_size=nodes.max_size
            ),
            tags=settings.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*before_nodes, *attachments]),
        )
        self.kubeconfig = pulumi.Output.secret(self.eks_cluster.kubeconfig_json)
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True, opts=child
        )
        self.private_subnet_ids = pulumi.Output.from_input(private_ids)
        self.register_outputs({"cluster_name": self.name, "kubeconfig": self.kubeconfig})

    def _vpc_cni(self, name: str) -> pulumi.Resource:
        """The vpc-cni add-on with aws-node on its own IRSA role (before any node joins)."""
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-vpc-cni",
            assume_role_policy=self.irsa_trust(VPC_CNI_NAMESPACE, VPC_CNI_SERVICE_ACCOUNT),
            max_session_duration=3600,
            tags=self.settings.tags,
            opts=child,
        )
        attachment = aws.iam.RolePolicyAttachment(
            f"{name}-vpc-cni", role=role.name, policy_arn=cni_policy_arn(self.partition), opts=child
        )
        return aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=self.settings.name,
            addon_name=VPC_CNI_ADDON,
            service_account_role_arn=role.arn,
            # Takes over the aws-node EKS installed at creation (which ran on node roles).
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            tags=self.settings.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks_cluster, attachment]),
        )

    def irsa_trust(self, namespace: str, service_account: str) -> pulumi.Output[str]:
        """Trust policy JSON for one ServiceAccount through this cluster's OIDC provider."""
        return pulumi.Output.all(self.oidc_provider_arn, self.oidc_issuer).apply(
            lambda args: json.dumps(
                iam_documents.irsa_trust_policy(args[0], args[1], namespace, service_account)
            )
        )
