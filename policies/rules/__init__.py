"""The platform's invariants as CrossGuard resource policies.

Each rule module exposes policy objects; :data:`ALL_POLICIES` is the pack. Rules read
``args.props`` in the engine's wire form (camelCase) and treat a value that is not known
yet (a preview of a computed value) as something they cannot judge, not as a pass.
"""

from pulumi_policy import Policy

from policies.rules.iam import (
    github_oidc_trust,
    no_iam_users,
    role_session_limit,
    team_role_no_escalation,
)
from policies.rules.images import images_not_latest, production_images_by_digest
from policies.rules.karpenter import (
    controller_off_runner_nodes,
    node_group_imds,
    nodeclass_runner_cap,
    nodepool_limits,
)
from policies.rules.network import (
    cilium_encryption,
    controller_only_behind_ingress,
    eks_endpoint_not_open,
    ingress_tls,
    redis_transit_encryption,
    runner_egress_excludes_internal,
)
from policies.rules.runner_pods import (
    privileged_runner_on_shared_pool,
    runner_pod_host_access,
    runner_service_accounts_no_token,
)
from policies.rules.vault import vault_role_scoped, vault_token_ttl

ALL_POLICIES: list[Policy] = [
    github_oidc_trust,
    no_iam_users,
    role_session_limit,
    team_role_no_escalation,
    nodepool_limits,
    nodeclass_runner_cap,
    node_group_imds,
    controller_off_runner_nodes,
    cilium_encryption,
    eks_endpoint_not_open,
    ingress_tls,
    redis_transit_encryption,
    runner_egress_excludes_internal,
    controller_only_behind_ingress,
    vault_token_ttl,
    vault_role_scoped,
    images_not_latest,
    production_images_by_digest,
    runner_pod_host_access,
    privileged_runner_on_shared_pool,
    runner_service_accounts_no_token,
]
