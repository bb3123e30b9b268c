"""The controller's deployment: its Kubernetes objects, IRSA role and ElastiCache Redis."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import controller_manifests as manifests
from components.cluster import Cluster
from components.k8s_objects import declare
from controller.model import PlatformSpec, RuntimeFacts


class Redis(pulumi.ComponentResource):
    """A replicated ElastiCache Redis with TLS in transit, encryption at rest and AUTH,
    reachable only from the system nodes' security group: the controller runs there, no
    runner can (Karpenter's nodes are never system nodes), and runner pods' egress excludes
    the VPC besides."""

    endpoint: pulumi.Output[str]
    auth_token: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        vpc_id: pulumi.Input[str],
        subnet_ids: pulumi.Input[list[str]],
        client_security_group_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:controller:Redis", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        settings = spec.controller.redis
        tags = spec.cluster.tags
        subnets = aws.elasticache.SubnetGroup(f"{name}-subnets", subnet_ids=subnet_ids, opts=child)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=vpc_id,
            description="Redis for the runner controller",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=6379,
                    to_port=6379,
                    security_groups=[client_security_group_id],
                    description="the controller (system nodes)",
                )
            ],
            tags=tags,
            opts=child,
        )
        token = random.RandomPassword(f"{name}-auth", length=48, special=False, opts=child)
        replication = aws.elasticache.ReplicationGroup(
            f"{name}-rg",
            description=f"runner-platform controller state ({spec.cluster.name})",
            engine="redis",
            engine_version=settings.engine_version,
            node_type=settings.node_type,
            num_cache_clusters=1 + settings.replicas,
            automatic_failover_enabled=settings.replicas > 0,
            multi_az_enabled=settings.replicas > 0,
            transit_encryption_enabled=True,
            at_rest_encryption_enabled=True,
            auth_token=token.result,
            subnet_group_name=subnets.name,
            security_group_ids=[group.id],
            tags=tags,
            opts=child,
        )
        self.endpoint = replication.primary_endpoint_address
        self.auth_token = pulumi.Output.secret(token.result)
        self.register_outputs({"endpoint": self.endpoint})


class ControllerDeployment(pulumi.ComponentResource):
    """Namespaces, RBAC, config, the Deployment and its exposure, NetworkPolicies, Redis."""

    role_name: pulumi.Output[str]
    webhook_urls: dict[str, str]
    config_hash: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        cluster: Cluster,
        vpc_id: pulumi.Input[str],
        team_role_arns: dict[str, pulumi.Output[str]],
        vault_mounts: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:controller:ControllerDeployment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = spec.controller.namespace
        role = aws.iam.Role(
            f"{name}-role",
            name=f"runner-controller-{spec.cluster.name}",
            assume_role_policy=cluster.irsa_trust(ns, manifests.CONTROLLER_NAME),
            max_session_duration=3600,
            tags=spec.cluster.tags,
            opts=child,
        )
        redis = Redis(
            f"{name}-redis",
            spec,
            vpc_id,
            cluster.private_subnet_ids,
            cluster.system_security_group_id,
            opts=child,
        )
        runtime_json = pulumi.Output.all(redis.endpoint, *team_role_arns.values()).apply(
            lambda values: RuntimeFacts(
                team_role_arns=dict(zip(team_role_arns, values[1:], strict=True)),
                vault_mounts=vault_mounts,
                redis_endpoint=values[0],
            ).model_dump_json()
        )
        spec_json = spec.model_dump_json()
        self.config_hash = runtime_json.apply(lambda rt: manifests.config_hash(spec_json, rt))
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        declared: dict[str, pulumi.Resource] = {}
        for manifest in manifests.controller_objects(
            spec,
            controller_role_arn=role.arn,
            spec_json=spec_json,
            runtime_json=runtime_json,
            hash_value=self.config_hash,
        ):
            namespace = manifest["metadata"].get("namespace")
            depends = [declared[namespace]] if namespace in declared else []
            resource = declare(
                manifest,
                pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=depends)),
            )
            if manifest["kind"] == "Namespace":
                declared[manifest["metadata"]["name"]] = resource
        k8s.core.v1.Secret(
            f"{name}-redis-auth",
            metadata={"name": manifests.REDIS_SECRET, "namespace": ns},
            string_data={"token": redis.auth_token},
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[declared[ns]])
            ),
        )
        self.role_name = role.name
        self.webhook_urls = {i.name: spec.webhook_url(i.name) for i in spec.github_instances}
        self.register_outputs({"webhook_urls": self.webhook_urls, "role": self.role_name})
