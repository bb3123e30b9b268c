"""Hostile stacks, trust section (issue 9, items 1-6 and 12): one-change variants of
``Pulumi.dev.yaml``, each refused by ``make plan`` — exit 2 when the model refuses it,
naming the path; exit 1 when the policy pack does, naming the rule and the resource.

Where the model refuses first, the pack is proven on its own as well: the spec is changed
past the model (``model_copy`` does not validate), rendered by the same builders the
program uses, and the pack judges the resource inputs (policies/evaluate.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.iam_documents import github_runner_trust_policy
from components.vault import vault_config
from controller.model import PlatformSpec, Team
from policies.evaluate import evaluate
from tests.hostile_support import ROOT, dev_config, plan_variant, team

Mutation = Callable[[dict[str, Any]], None]
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def _add_team(documents: dict[str, Any], name: str, **fields: Any) -> None:
    web = team(documents, "web")
    base = {k: v for k, v in web.items() if k not in {"repository_ids", "container_modes"}}
    documents["teams"].append(
        {**base, "name": name, "runner_group": name, "pools": ["nvme"], "min_idle": 0, **fields}
    )


def _set_vault(**values: Any) -> Mutation:
    return lambda documents: documents["vault"].update(values)


# (case, mutation, exit code, a line the output must contain)
HOSTILE: list[tuple[str, Mutation, int, str]] = [
    (
        "org id left out",
        lambda d: d["github_instances"][0].pop("org_ids"),
        2,
        "github_instances[0].org_ids.acme-corp: required: GitHub's id of the org (gh api "
        "orgs/acme-corp --jq .id)",
    ),
    (
        "org id of an org the instance does not serve",
        lambda d: d["github_instances"][0]["org_ids"].update({"evil-corp": 1}),
        2,
        "github_instances[0].org_ids.evil-corp: 'evil-corp' is not in 'orgs'",
    ),
    (
        "exact repository without its id",
        lambda d: team(d, "web").pop("repository_ids"),
        2,
        "teams[0].repository_ids.acme-corp/storefront: required",
    ),
    (
        "an id pinned on a glob",
        lambda d: team(d, "web")["repository_ids"].update({"acme-corp/web-*": 1}),
        2,
        "teams[0].repository_ids.acme-corp/web-*: 'acme-corp/web-*' is not one of the team's "
        "exact repositories",
    ),
    (
        "a glob that overlaps another team's",
        lambda d: _add_team(d, "admin", repositories=["acme-corp/*-admin"]),
        2,
        "teams[3].repositories[0]: 'acme-corp/*-admin' and team 'web''s 'acme-corp/web-*' both "
        "match 'acme-corp/web-admin'",
    ),
    (
        "another team's repository by name",
        lambda d: _add_team(
            d,
            "shop",
            repositories=["acme-corp/storefront"],
            repository_ids={"acme-corp/storefront": 26679908},
        ),
        2,
        "teams[3].repositories[0]: 'acme-corp/storefront' is also claimed by team 'web'",
    ),
    (
        "a glob no guard keeps inside the name",
        lambda d: team(d, "web").update(repositories=["acme-corp/storefront", "acme-corp/*web*"]),
        2,
        "teams[0].repositories[1]: 'acme-corp/*web*' is a glob that ends in '*' with another '*'",
    ),
    (
        "a '?' glob",
        lambda d: team(d, "ml").update(repositories=["research/models", "research/model?"]),
        2,
        "teams[1].repositories[1]: 'research/model?' uses '?' or '[...]'",
    ),
    (
        "another team's Vault policy",
        lambda d: team(d, "ml").update(vault_policies=["ml-datasets-read", "runner-web"]),
        2,
        "teams[1].vault_policies[1]: 'runner-web' is team 'web''s policy",
    ),
    (
        "Vault's root policy",
        lambda d: team(d, "infra").update(vault_policies=["root"]),
        2,
        "teams[2].vault_policies[0]: 'root' is Vault's superuser policy",
    ),
    (
        "AdministratorAccess on a team role",
        lambda d: team(d, "web").update(aws_managed_policy_arns=[ADMIN]),
        1,
        "[team-role-no-escalation-policy] aws:iam/rolePolicyAttachment:RolePolicyAttachment "
        f"github-oidc-web-0: attaches {ADMIN} to team role 'github-runner-web-role'",
    ),
    (
        "IAMFullAccess on a team role",
        lambda d: team(d, "ml").update(
            aws_managed_policy_arns=["arn:aws:iam::aws:policy/IAMFullAccess"]
        ),
        1,
        "to team role 'github-runner-ml-role': IAMFullAccess reaches past the team",
    ),
    (
        "PowerUserAccess on a team role",
        lambda d: team(d, "infra").update(
            aws_managed_policy_arns=["arn:aws:iam::aws:policy/PowerUserAccess"]
        ),
        1,
        "to team role 'github-runner-infra-role': PowerUserAccess reaches past the team",
    ),
    (
        "Vault over http",
        _set_vault(address="http://vault.acme.internal:8200"),
        2,
        "vault.address: 'http://vault.acme.internal:8200' is not https",
    ),
    (
        "Vault audience = STS audience",
        _set_vault(audience="sts.amazonaws.com"),
        2,
        "vault.audience: 'sts.amazonaws.com' is the AWS STS audience",
    ),
    (
        "a branch name where a ref belongs",
        lambda d: team(d, "infra").update(refs=["main"]),
        2,
        "teams[2].refs[0]: 'main' is not a full Git ref",
    ),
    (
        "a wildcard environment",
        lambda d: team(d, "infra").update(environments=["*"]),
        2,
        "teams[2].environments[0]: '*' is not a deployment environment name",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "code", "line"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_make_plan_refuses_the_hostile_stack(
    tmp_path: Path, mutate: Mutation, code: int, line: str
) -> None:
    result = plan_variant(mutate, tmp_path)
    assert result.returncode == code, result.output[-3000:]
    assert line in result.output, result.output[-3000:]


def test_a_stack_allows_one_escalation_policy_in_its_policy_config(tmp_path: Path) -> None:
    """The allowance is on the record: a file beside the stack, with a reason, printed."""
    whole = dev_config()
    for entry in whole["config"]["runner-platform:teams"]:
        if entry["name"] == "infra":
            entry["aws_managed_policy_arns"] = ["arn:aws:iam::aws:policy/PowerUserAccess"]
    stack = tmp_path / "Pulumi.allowed.yaml"
    stack.write_text(yaml.safe_dump(whole, sort_keys=False))
    allow = {
        "role": "github-runner-infra-role",
        "policyArn": "arn:aws:iam::aws:policy/PowerUserAccess",
        "reason": "bootstrap of the shared-services account, until 2026-12 (PLAT-42)",
    }
    config = tmp_path / "allowed.json"
    config.write_text(json.dumps({"team-role-no-escalation-policy": {"allow": [allow]}}))

    def plan(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "localenv.plan", "--stack", "allowed"]
        return subprocess.run(
            [*command, "--config", str(stack), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    refused = plan()
    assert refused.returncode == 1 and "PowerUserAccess reaches past the team" in refused.stdout
    allowed = plan("--policy-config", str(config))
    assert allowed.returncode == 0, allowed.stdout[-3000:] + allowed.stderr
    assert "Policy config allowed.json:" in allowed.stdout
    assert "bootstrap of the shared-services account" in allowed.stdout


# --- the pack on its own, where the model refuses first ----------------------------------

VAULT_AUTH = "runner-platform:vault:VaultAuth"


def _past_the_model(spec: PlatformSpec, name: str, **changes: Any) -> PlatformSpec:
    teams = tuple(t.model_copy(update=changes) if t.name == name else t for t in spec.teams)
    return spec.model_copy(update={"teams": teams})


def _vault_violations(spec: PlatformSpec) -> list[str]:
    config = vault_config(spec)
    props = {"address": spec.vault.address, **config}
    return [v.message for v in evaluate([(VAULT_AUTH, "vault", props)])]


def test_pack_refuses_another_teams_vault_policy_on_its_own(dev_spec: PlatformSpec) -> None:
    hostile = _past_the_model(dev_spec, "ml", vault_policies=("runner-web",))
    assert _vault_violations(hostile) == [
        "Vault role 'ml' gives its tokens 'runner-web', a platform policy that is not its own "
        "('runner-ml'): another team's secrets"
    ]
    assert _vault_violations(dev_spec) == []


def test_pack_refuses_the_sts_audience_and_http_on_its_own(dev_spec: PlatformSpec) -> None:
    vault = dev_spec.vault.model_copy(
        update={"audience": "sts.amazonaws.com", "address": "http://vault:8200"}
    )
    messages = _vault_violations(dev_spec.model_copy(update={"vault": vault}))
    assert messages[0].startswith("Vault address 'http://vault:8200' is not https")
    assert sum("binds the AWS STS audience" in m for m in messages) == len(dev_spec.teams)


def test_pack_refuses_a_vault_role_for_any_repository_on_its_own(
    dev_spec: PlatformSpec,
) -> None:
    hostile = _past_the_model(dev_spec, "ml", repositories=("*",))
    assert _vault_violations(hostile) == ["Vault role 'ml' binds repositories of any owner: ['*']"]


def test_pack_refuses_an_unpinned_or_wildcard_subject_on_its_own(dev_spec: PlatformSpec) -> None:
    """A trust rendered for a glob the model refuses ('*' as the whole pattern)."""
    web = next(t for t in dev_spec.teams if t.name == "web")
    hostile: Team = web.model_copy(update={"repositories": ("acme-corp/storefront", "*/*")})
    trust = github_runner_trust_policy(dev_spec.instance("cloud"), hostile, "1")
    props = {"assumeRolePolicy": json.dumps(trust), "name": hostile.role_name}
    messages = [v.message for v in evaluate([("aws:iam/role:Role", "web", props)])]
    assert messages == [
        "trusts GitHub OIDC subjects that match any owner: ['repo:*/*:*', 'repo:*@700624/*@*:*']"
    ]
