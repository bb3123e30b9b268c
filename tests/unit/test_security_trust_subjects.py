"""Crafted GitHub OIDC subjects reach no other team's role (issue 9, items 1, 2 and 6).

The project's own trust evaluator (``controller.identity.access.trust_allows``, IAM's
semantics: ``*`` runs across ``/``, ``@`` and ``:``) judges the trust policies the platform
renders. The subjects are what a job can make GitHub sign: a custom ``sub`` template that
appends claims (``…:workflow:NAME``), branch and workflow names with ``/``, ``@`` and ``:``,
an org or repository re-created under its old name (new ids).
"""

from __future__ import annotations

import copy
import fnmatch
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from components.iam_documents import github_runner_trust_policy, oidc_provider_arn
from controller.identity.access import trust_allows
from controller.model import PlatformSpec, Team, load_spec
from tests.conftest import DEV_DOCUMENT

ACCOUNT = "123456789012"
ORG_ID = 700624
STOREFRONT_ID = 26679908
ISSUER = "https://token.actions.githubusercontent.com"
PROVIDER = oidc_provider_arn(ACCOUNT, ISSUER)


def _spec() -> PlatformSpec:
    """The dev stack plus cloud teams with every glob shape: exact (id pinned), prefix,
    suffix, infix, and a deploy team with a ref/environment allowlist."""
    doc = copy.deepcopy(DEV_DOCUMENT)
    web = next(t for t in doc["teams"] if t["name"] == "web")
    web["repositories"] = ["acme-corp/storefront", "acme-corp/*-web"]
    base = {k: v for k, v in web.items() if k not in {"repository_ids", "container_modes"}}
    doc["teams"] += [
        {
            **base,
            "name": "ops",
            "runner_group": "ops",
            "repositories": ["acme-corp/*-ops", "acme-corp/tools-*-cli"],
            "pools": ["warm"],
            "min_idle": 0,
        },
        {
            **base,
            "name": "deploy",
            "runner_group": "deploy",
            "repositories": ["acme-corp/release", "acme-corp/deploy-*-app"],
            "repository_ids": {"acme-corp/release": 31337},
            "refs": ["refs/heads/main", "refs/tags/v*"],
            "environments": ["production"],
            "pools": ["warm"],
            "min_idle": 0,
        },
    ]
    for pool in doc["pools"]:
        pool.pop("shares", None)  # another feature's weights; not what is tested here
    return load_spec(doc)


SPEC = _spec()
TRUSTS = {
    t.name: github_runner_trust_policy(SPEC.instance(t.instance), t, ACCOUNT) for t in SPEC.teams
}


def _reached(sub: str, issuer: str = ISSUER) -> set[str]:
    """The teams whose role a token with ``sub`` from ``issuer`` may assume."""
    claims = {"sub": sub, "aud": "sts.amazonaws.com"}
    provider = oidc_provider_arn(ACCOUNT, issuer)
    return {
        name
        for name, trust in TRUSTS.items()
        if trust_allows(trust, claims, issuer=issuer, provider_arn=provider)
    }


# (case, subject, the team the sending repository belongs to and may reach, or None)
CRAFTED = [
    # Default subjects, as GitHub signs them: only the owner's role.
    (
        "own repository",
        f"repo:acme-corp@{ORG_ID}/storefront@{STOREFRONT_ID}:ref:refs/heads/x",
        "web",
    ),
    ("own glob", f"repo:acme-corp@{ORG_ID}/a-web@5:pull_request", "web"),
    ("suffix glob", "repo:acme-corp/build-ops:ref:refs/heads/main", "ops"),
    ("deploy from main", "repo:acme-corp/deploy-eu-app:ref:refs/heads/main", "deploy"),
    ("deploy from a tag", f"repo:acme-corp@{ORG_ID}/release@31337:ref:refs/tags/v1.2", "deploy"),
    ("deploy env", f"repo:acme-corp@{ORG_ID}/deploy-eu-app@6:environment:production", "deploy"),
    # The hole of issue 9: an id-form '*' in the owner-id slot ran into another repository
    # whose (custom-template) subject carries '/storefront@…:' in a branch name.
    (
        "branch with / and @ in another repository",
        f"repo:acme-corp@{ORG_ID}/payments@9:ref:refs/heads/a/storefront@{STOREFRONT_ID}:job:x",
        None,
    ),
    (
        "workflow named after a repository",
        f"repo:acme-corp@{ORG_ID}/payments@9:workflow:x/storefront@1:ref:refs/heads/main",
        None,
    ),
    # Re-created org or repository: the name is the same, the ids are new.
    (
        "re-created org",
        f"repo:acme-corp@{ORG_ID + 1}/storefront@{STOREFRONT_ID}:pull_request",
        None,
    ),
    (
        "re-created repository",
        f"repo:acme-corp@{ORG_ID}/storefront@{STOREFRONT_ID + 1}:ref:x",
        None,
    ),
    ("re-created org, glob", "repo:acme-corp@1/a-web@5:ref:refs/heads/main", None),
    # A suffix or infix glob's '*' run past the repository name into the context.
    ("suffix via a branch", "repo:acme-corp/payments:ref:refs/heads/x-ops:workflow:ci", None),
    (
        "suffix via a branch, id form",
        f"repo:acme-corp@{ORG_ID}/payments@9:ref:refs/heads/x-ops@2:workflow:ci",
        None,
    ),
    ("infix via a branch", "repo:acme-corp/tools-x:ref:refs/heads/y-cli:workflow:ci", None),
    ("suffix via an environment", "repo:acme-corp/pay:environment:a-web:workflow:ci", None),
    # A workflow name dressed up as an allowed context (custom template, team's repository).
    ("fake ref", "repo:acme-corp/deploy-eu-app:workflow:x:ref:refs/heads/main", None),
    (
        "fake ref, id form",
        f"repo:acme-corp@{ORG_ID}/deploy-eu-app@6:workflow:x:environment:production",
        None,
    ),
    ("deploy from a branch", "repo:acme-corp/deploy-eu-app:ref:refs/heads/feature", None),
    ("deploy from a pull request", f"repo:acme-corp@{ORG_ID}/release@31337:pull_request", None),
    # Other owners, and subjects that do not start with the repository.
    ("longer org name", "repo:acme-corp-evil/storefront:ref:refs/heads/main", None),
    ("repository name prefix", "repo:acme-corp/storefront-fork:ref:refs/heads/main", None),
    ("template without repo first", "workflow:repo:acme-corp/storefront:ref:x", None),
]


def test_crafted_subjects_reach_only_their_own_teams_role() -> None:
    for case, sub, owner in CRAFTED:
        assert _reached(sub) == ({owner} if owner else set()), (case, sub)


def test_the_old_id_form_pattern_let_another_repository_in() -> None:
    # Today's code before issue 9: "repo:acme-corp@*/storefront@*:*".
    old = copy.deepcopy(TRUSTS["web"])
    condition = old["Statement"][0]["Condition"]
    key = "token.actions.githubusercontent.com:sub"
    condition["StringLike"][key] = ["repo:acme-corp@*/storefront@*:*"]
    crafted = CRAFTED[6][1]
    claims = {"sub": crafted, "aud": "sts.amazonaws.com"}
    assert trust_allows(old, claims, issuer=ISSUER, provider_arn=PROVIDER)
    assert not trust_allows(TRUSTS["web"], claims, issuer=ISSUER, provider_arn=PROVIDER)


# --- every subject GitHub could sign, against every team's trust -------------------------

_SUBJECT = re.compile(
    r"^repo:(?P<owner>[A-Za-z0-9-]+)(@(?P<oid>[0-9]+))?/(?P<name>[A-Za-z0-9._-]+)"
    r"(@(?P<rid>[0-9]+))?:(?P<rest>.*)$",
    re.DOTALL,
)


def _legitimate(team: Team, sub: str) -> bool:
    """Whether a GitHub-signed ``sub`` comes from the team's repository and context."""
    parsed = _SUBJECT.match(sub)
    if parsed is None or (parsed["oid"] is None) != (parsed["rid"] is None):
        return False
    repository = f"{parsed['owner']}/{parsed['name']}"
    if not any(fnmatch.fnmatchcase(repository, pattern) for pattern in team.repositories):
        return False
    if parsed["oid"] is not None:
        if int(parsed["oid"]) != SPEC.instance(team.instance).org_ids[team.org]:
            return False
        pinned = team.repository_ids.get(repository)
        if pinned is not None and int(parsed["rid"]) != pinned:
            return False
    if not team.refs and not team.environments:
        return True
    rest = parsed["rest"]
    return any(
        rest.startswith(f"ref:{ref[:-1]}") if ref.endswith("*") else rest == f"ref:{ref}"
        for ref in team.refs
    ) or any(rest == f"environment:{name}" for name in team.environments)


OWNERS = ["acme-corp", "acme-corp", "acme-corp-evil", "acme", "platform", "research"]
NAMES = [
    "deploy",
    "models",
    "training-x",
    "storefront",
    "storefront-fork",
    "a-web",
    "web",
    "b-ops",
    "ops",
    "tools-x-cli",
    "tools-cli",
    "release",
    "deploy-eu-app",
    "payments",
    "x",
]
FRAGMENTS = [
    # Whole pieces a crafted tail needs: a glob's last literal followed by a separator,
    # and a context after another claim.
    "-ops:",
    "-ops@",
    "-web:",
    "-web@",
    "-cli:",
    "-app@",
    ":ref:refs/heads/main",
    ":environment:production",
    ":ref:refs/tags/v",
    "ref",
    "refs/heads/main",
    "refs/heads/",
    "refs/tags/v1",
    "environment",
    "production",
    "pull_request",
    "workflow",
    "job_workflow_ref",
    ":",
    "@",
    "/",
    "-ops",
    "-web",
    "-cli",
    "storefront",
    "deploy-",
    "tools-",
    "26679908",
    "700624",
    "31337",
    "x",
]


@st.composite
def github_subjects(draw: st.DrawFn) -> tuple[str, str]:
    """(instance, sub): any repository's subject in either form, with any tail a custom
    template, a branch or a workflow name could give it."""
    instance = draw(st.sampled_from(["cloud", "ghes"]))
    owner = draw(st.sampled_from(OWNERS))
    name = draw(st.sampled_from(NAMES))
    rest = "".join(draw(st.lists(st.sampled_from(FRAGMENTS), max_size=8)))
    if instance == "cloud" and draw(st.booleans()):  # the id form
        oid = draw(st.sampled_from([ORG_ID, ORG_ID + 1, 1]))
        rid = draw(st.sampled_from([STOREFRONT_ID, 31337, 5]))
        return instance, f"repo:{owner}@{oid}/{name}@{rid}:{rest}"
    return instance, f"repo:{owner}/{name}:{rest}"


@settings(max_examples=3000, deadline=None)
@given(signed=github_subjects())
def test_no_subject_github_could_sign_reaches_a_role_it_should_not(
    signed: tuple[str, str],
) -> None:
    instance, sub = signed
    reached = _reached(sub, SPEC.instance(instance).oidc_issuer)
    for team in SPEC.teams:
        if team.name in reached:
            assert team.instance == instance and _legitimate(team, sub), (team.name, sub)


def test_default_subjects_of_each_teams_repositories_are_trusted() -> None:
    samples: dict[str, list[str]] = {
        "web": [
            "repo:acme-corp/storefront:ref:refs/heads/main",
            f"repo:acme-corp@{ORG_ID}/storefront@{STOREFRONT_ID}:pull_request",
            f"repo:acme-corp@{ORG_ID}/checkout-web@77:environment:staging",
        ],
        "ops": [
            "repo:acme-corp/build-ops:ref:refs/heads/a/b@c",
            f"repo:acme-corp@{ORG_ID}/tools-x-cli@8:ref:refs/tags/v9",
        ],
        "deploy": [
            "repo:acme-corp/release:ref:refs/heads/main",
            f"repo:acme-corp@{ORG_ID}/deploy-eu-app@6:ref:refs/tags/v2",
            "repo:acme-corp/deploy-us-app:environment:production",
        ],
    }
    for team, subjects in samples.items():
        for sub in subjects:
            assert _reached(sub) == {team}, (team, sub)


def test_guards_appear_only_where_a_star_could_leave_its_slot() -> None:
    def guards(team: str) -> list[str]:
        condition: dict[str, Any] = TRUSTS[team]["Statement"][0]["Condition"]
        return [g for values in condition.get("StringNotLike", {}).values() for g in values]

    assert guards("web") == ["repo:acme-corp/*:*-web:*", f"repo:acme-corp@{ORG_ID}/*@*-web@*:*"]
    assert "repo:acme-corp/*:*:ref:refs/heads/main" in guards("deploy")
    assert not any(g.startswith("repo:acme-corp/release") for g in guards("deploy"))
