"""The model's trust rules (issue 9, items 1-6): ids, globs, Vault policies and settings,
context allowlists — each refusal names the path of the bad value."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.vault import vault_config
from controller.model import SpecError, load_spec, overlap

Mutation = Callable[[dict[str, Any]], None]


def _team(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["teams"] if t["name"] == name)


def _add_team(doc: dict[str, Any], name: str, **fields: Any) -> None:
    web = _team(doc, "web")
    extra = {k: v for k, v in web.items() if k not in {"repository_ids", "container_modes"}}
    doc["teams"].append({**extra, "name": name, "runner_group": name, "pools": ["warm"], **fields})
    for pool in doc["pools"]:
        pool.pop("shares", None)  # another feature's weights name the dev teams only


REFUSED: list[tuple[str, Mutation, str]] = [
    (
        "org id missing",
        lambda d: d["github_instances"][0]["org_ids"].clear(),
        "github_instances[0].org_ids.acme-corp: required: GitHub's id of the org (gh api "
        "orgs/acme-corp --jq .id); the teams' roles pin it",
    ),
    (
        "ghes org id missing names the host",
        lambda d: d["github_instances"][1]["org_ids"].pop("research"),
        "github_instances[1].org_ids.research: required: GitHub's id of the org (gh api "
        "--hostname github.acme.internal orgs/research --jq .id); the teams' roles pin it",
    ),
    (
        "org id of an org not served",
        lambda d: d["github_instances"][0]["org_ids"].update({"evil-corp": 5}),
        "github_instances[0].org_ids.evil-corp: 'evil-corp' is not in 'orgs'",
    ),
    (
        "org id zero",
        lambda d: d["github_instances"][0]["org_ids"].update({"acme-corp": 0}),
        "github_instances[0].org_ids.acme-corp: Input should be greater than or equal to 1",
    ),
    (
        "org id true",
        lambda d: d["github_instances"][0]["org_ids"].update({"acme-corp": True}),
        "github_instances[0].org_ids.acme-corp: true is not a GitHub id (a number)",
    ),
    (
        # Read leniently this would pin org 700 into every trust policy.
        "org id as a string with underscores",
        lambda d: d["github_instances"][0]["org_ids"].update({"acme-corp": "7_0_0"}),
        "github_instances[0].org_ids.acme-corp: '7_0_0' is not a GitHub id (a number)",
    ),
    (
        "two orgs, one id",
        lambda d: d["github_instances"][1]["org_ids"].update({"research": 1728715}),
        "github_instances[1].org_ids.research: 1728715 is also the id of 'platform'; two orgs "
        "never share an id",
    ),
    (
        "repository id missing",
        lambda d: _team(d, "web").pop("repository_ids"),
        "teams[0].repository_ids.acme-corp/storefront: required: GitHub's id of the "
        "repository (gh api repos/acme-corp/storefront --jq .id); github.com subjects carry "
        "it and the team's roles pin it",
    ),
    (
        "repository id for a glob",
        lambda d: _team(d, "web")["repository_ids"].update({"acme-corp/web-*": 9}),
        "teams[0].repository_ids.acme-corp/web-*: 'acme-corp/web-*' is not one of the team's "
        "exact repositories (an id pins a literal name; a glob has no one id)",
    ),
    (
        "repository ids on GHES",
        lambda d: _team(d, "ml").update(repository_ids={"research/models": 3}),
        "teams[1].repository_ids: Enterprise Server subjects carry no ids; leave "
        "repository_ids out for a 'ghes' team",
    ),
    (
        "question-mark glob",
        lambda d: _team(d, "web").update(repositories=["acme-corp/storefront", "acme-corp/web?"]),
        "teams[0].repositories[1]: 'acme-corp/web?' uses '?' or '[...]'; only '*' is a "
        "repository glob (IAM, Vault and the controller read the others differently)",
    ),
    (
        "contains glob",
        lambda d: _team(d, "web").update(repositories=["acme-corp/storefront", "acme-corp/*web*"]),
        "teams[0].repositories[1]: 'acme-corp/*web*' is a glob that ends in '*' with another "
        "'*' before it; IAM's '*' runs past the end of a repository name, so such a glob "
        "could match another repository's subject (use 'prefix-*', '*-suffix' or "
        "'prefix-*-suffix')",
    ),
    (
        "another team's Vault policy",
        lambda d: _team(d, "ml").update(vault_policies=["runner-web"]),
        "teams[1].vault_policies[0]: 'runner-web' is team 'web''s policy; its tokens would "
        "read that team's secrets",
    ),
    (
        "the team's own Vault policy",
        lambda d: _team(d, "ml").update(vault_policies=["runner-ml"]),
        "teams[1].vault_policies[0]: 'runner-ml' is the team's own policy, which its role "
        "always carries; leave it out",
    ),
    (
        "a platform-named Vault policy",
        lambda d: _team(d, "ml").update(vault_policies=["ml-datasets-read", "runner-next"]),
        "teams[1].vault_policies[1]: 'runner-next': names under 'runner-' are the platform's "
        "(one per team); name the team's extra policies otherwise",
    ),
    (
        "the root Vault policy",
        lambda d: _team(d, "ml").update(vault_policies=["root"]),
        "teams[1].vault_policies[0]: 'root' is Vault's superuser policy; every job's token "
        "would hold every secret",
    ),
    (
        "Vault over http",
        lambda d: d["vault"].update(address="http://vault.acme.internal:8200"),
        "vault.address: 'http://vault.acme.internal:8200' is not https: a job sends its "
        "GitHub token to Vault and gets a Vault token back, and both would cross the network "
        "in clear",
    ),
    (
        "Vault audience is the STS one",
        lambda d: d["vault"].update(audience="sts.amazonaws.com"),
        "vault.audience: 'sts.amazonaws.com' is the AWS STS audience: a token a job asks for "
        "AWS would log in to Vault too (and a Vault token would assume the team's AWS role); "
        "use another, such as 'runner-platform-vault'",
    ),
    (
        "a branch name, not a ref",
        lambda d: _team(d, "infra").update(refs=["main"]),
        "teams[2].refs[0]: 'main' is not a full Git ref: write 'refs/heads/<branch>' or "
        "'refs/tags/<tag>' (a trailing '*' matches a prefix)",
    ),
    (
        "a ref with an inner wildcard",
        lambda d: _team(d, "infra").update(refs=["refs/heads/*-stable"]),
        "teams[2].refs[0]: 'refs/heads/*-stable' is not a ref pattern: a trailing '*' is the "
        "only wildcard, and a Git ref has no ':', space or '?[]\\'",
    ),
    (
        "a wildcard environment",
        lambda d: _team(d, "infra").update(environments=["prod*"]),
        "teams[2].environments[0]: 'prod*' is not a deployment environment name: a literal "
        "name, no wildcard and no ':'",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in REFUSED], ids=[c for c, _, _ in REFUSED]
)
def test_trust_problems_name_the_exact_path(
    dev_document: dict[str, Any], mutate: Mutation, message: str
) -> None:
    mutate(dev_document)
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert message in caught.value.problems, caught.value.problems


# --- overlapping repository globs (item 2) -----------------------------------------------


def test_two_teams_globs_that_match_one_name_are_refused(dev_document: dict[str, Any]) -> None:
    _add_team(dev_document, "admin", repositories=["acme-corp/*-admin"])
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[3].repositories[0]: 'acme-corp/*-admin' and team 'web''s 'acme-corp/web-*' both "
        "match 'acme-corp/web-admin'; a repository must belong to one team (narrow one of "
        "the globs)"
    ]


def test_globs_that_cannot_meet_are_accepted(dev_document: dict[str, Any]) -> None:
    _team(dev_document, "web")["repositories"] = ["acme-corp/storefront", "acme-corp/web-*-app"]
    _add_team(dev_document, "admin", repositories=["acme-corp/*-admin", "acme-corp/ops-*-cli"])
    spec = load_spec(dev_document)
    assert spec.teams[3].repositories == ("acme-corp/*-admin", "acme-corp/ops-*-cli")


def test_overlap_is_caseless_and_a_literal_under_a_glob_is_reported_on_the_literal(
    dev_document: dict[str, Any],
) -> None:
    _add_team(
        dev_document,
        "checkout",
        repositories=["Acme-Corp/WEB-checkout"],
        repository_ids={"Acme-Corp/WEB-checkout": 42},
    )
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[3].repositories[0]: 'Acme-Corp/WEB-checkout' is also claimed by team 'web'"
    ]


@pytest.mark.parametrize(
    ("first", "second", "witness"),
    [
        ("a/web-*", "a/*-admin", "a/web-admin"),
        ("a/x", "a/x", "a/x"),
        ("a/*", "a/x", "a/x"),
        ("a/web-*", "a/webshop", None),
        ("a/*-ops", "a/*-web", None),
        ("a/x-*-y", "a/*-z", None),
        ("a/x-*-y", "a/*-y", "a/x--y"),
        ("a/*", "b/*", None),
        ("A/Web-*", "a/web-1", "a/web-1"),
    ],
)
def test_overlap_names_a_witness_or_none(first: str, second: str, witness: str | None) -> None:
    assert overlap(first, second) == witness
    assert overlap(second, first) == witness


GLOB = st.lists(st.sampled_from(["a", "b", "-", "*"]), min_size=0, max_size=5).map("".join)


@settings(max_examples=400, deadline=None)
@given(first=GLOB, second=GLOB)
def test_overlap_agrees_with_brute_force(first: str, second: str) -> None:
    """Every short name over the alphabet is tried: a witness matches both; None means no
    name does (a shortest witness is never longer than the two patterns together)."""
    found = overlap(first, second)
    if found is not None:
        assert fnmatch.fnmatchcase(found, first) and fnmatch.fnmatchcase(found, second)
    limit = len(first) + len(second)
    names = (
        "".join(chars) for n in range(limit + 1) for chars in itertools.product("ab-", repeat=n)
    )
    brute = any(fnmatch.fnmatchcase(n, first) and fnmatch.fnmatchcase(n, second) for n in names)
    assert (found is not None) == brute, (first, second, found)


# --- what the Vault roles bind (items 1, 5, 6) -------------------------------------------


def test_vault_roles_bind_the_org_id_the_runner_kind_and_the_allowlist(
    dev_document: dict[str, Any],
) -> None:
    roles = {r["name"]: r for r in vault_config(load_spec(dev_document))["roles"]}
    assert roles["web"]["boundClaims"] == {
        "repository": ["acme-corp/storefront", "acme-corp/web-*"],
        "repository_owner_id": ["700624"],
        "runner_environment": ["self-hosted"],
    }
    # infra lists both: Vault binds both claims (AND). An either-or 'sub' alone would let
    # a workflow named like ':ref:refs/heads/main' in a custom sub template through.
    assert roles["infra"]["boundClaims"]["sub"] == [
        "repo:platform/*:ref:refs/heads/main",
        "repo:platform/*:environment:production",
    ]
    assert roles["infra"]["boundClaims"]["ref"] == ["refs/heads/main"]
    assert roles["infra"]["boundClaims"]["environment"] == ["production"]
    # refs only: the 'ref' claim itself is bound too (no template can dress it up).
    _team(dev_document, "infra")["environments"] = []
    dev_document["vault"]["self_hosted_only"] = False
    infra = next(r for r in vault_config(load_spec(dev_document))["roles"] if r["name"] == "infra")
    assert infra["boundClaims"] == {
        "repository": ["platform/*"],
        "repository_owner_id": ["1728715"],
        "sub": ["repo:platform/*:ref:refs/heads/main"],
        "ref": ["refs/heads/main"],
    }
