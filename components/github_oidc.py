"""GitHub Actions OIDC in IAM: a provider per GitHub instance, a role per team."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from components import iam_documents
from controller.model import PlatformSpec


class GitHubOidc(pulumi.ComponentResource):
    """``github-runner-<team>-role`` for each team, trusted only for its repositories."""

    role_arns: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        account_id: str,
        partition: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:github_oidc:GitHubOidc", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.cluster.tags
        providers: dict[str, aws.iam.OpenIdConnectProvider] = {}
        for instance in spec.github_instances:
            providers[instance.name] = aws.iam.OpenIdConnectProvider(
                f"{name}-{instance.name}",
                url=instance.oidc_issuer,
                client_id_lists=[iam_documents.STS_AUDIENCE],
                tags={**tags, "runner-platform.io/github-instance": instance.name},
                opts=child,
            )
        self.role_arns = {}
        for team in spec.teams:
            instance = spec.instance(team.instance)
            # The trust names the provider by ARN, which is known before it exists, so a
            # preview shows (and the policy pack checks) the exact document.
            trust = iam_documents.github_runner_trust_policy(instance, team, account_id, partition)
            role = aws.iam.Role(
                f"{name}-{team.name}",
                name=team.role_name,
                description=f"GitHub Actions runners of team {team.name} (OIDC, no static keys)",
                assume_role_policy=json.dumps(trust),
                max_session_duration=team.session_duration_seconds,
                tags={**tags, "runner-platform.io/team": team.name},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[providers[instance.name]]),
            )
            for index, arn in enumerate(team.aws_managed_policy_arns):
                # The role by its known name (and a dependency), not role.name, so a preview
                # shows the pack which role gets the policy before the role exists.
                aws.iam.RolePolicyAttachment(
                    f"{name}-{team.name}-{index}",
                    role=team.role_name,
                    policy_arn=arn,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
                )
            self.role_arns[team.name] = role.arn
        self.register_outputs({"role_arns": self.role_arns})
