"""The shared model: what it accepts, what it derives, and how it refuses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import PlatformSpec, SpecError, load_spec, load_spec_json
from controller.quantity import parse_duration, parse_quantity
from tests.conftest import DEV_DOCUMENT


def test_dev_stack_yields_one_scale_set_per_team_and_pool(dev_spec: PlatformSpec) -> None:
    names = [s.name for s in dev_spec.scale_sets()]
    assert names == [
        "web-warm",
        "web-nvme",
        "ml-ml-isolated",
        "ml-gpu",
        "ml-highmem",
        "infra-warm",
    ]
    web_warm = dev_spec.scale_sets()[0]
    assert web_warm.labels[:5] == ("self-hosted", "linux", "X64", "web", "warm")
    assert web_warm.runner_group == "web"  # defaults to the team name


def test_issuers_and_api_urls_follow_each_instance_kind(dev_document: dict[str, Any]) -> None:
    dev_document["github_instances"][0]["enterprise_slug"] = "acme"
    spec = load_spec(dev_document)
    cloud, ghes = spec.github_instances
    assert cloud.oidc_issuer == "https://token.actions.githubusercontent.com/acme"
    assert cloud.api_url == "https://api.github.com"
    assert ghes.oidc_issuer == "https://github.acme.internal/_services/token"
    assert ghes.api_url == "https://github.acme.internal/api/v3"


def test_plain_cloud_issuer_has_no_suffix(dev_spec: PlatformSpec) -> None:
    assert dev_spec.instance("cloud").oidc_issuer == "https://token.actions.githubusercontent.com"


def test_nvme_pools_stripe_instance_store_by_default(dev_spec: PlatformSpec) -> None:
    assert dev_spec.pool("nvme").raid0 is True
    assert dev_spec.pool("warm").raid0 is False


def test_pool_taints_cover_dedicated_and_gpu_pools(dev_spec: PlatformSpec) -> None:
    assert dev_spec.pool("warm").node_taints() == ()
    assert [t.key for t in dev_spec.pool("ml-isolated").node_taints()] == [
        "runner-platform.io/pool"
    ]
    assert [t.key for t in dev_spec.pool("gpu").node_taints()] == [
        "runner-platform.io/pool",
        "nvidia.com/gpu",
    ]


def test_globbed_repositories_are_claimed_caselessly(dev_spec: PlatformSpec) -> None:
    web = next(t for t in dev_spec.teams if t.name == "web")
    assert web.claims_repository("Acme-Corp/Web-Checkout")
    assert not web.claims_repository("acme-corp/payments")


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


INVALID: list[tuple[str, Mutation, str]] = [
    (
        "unknown pool",
        _set("teams.2.pools", ["warm", "gpuu"]),
        "teams[2].pools[1]: unknown pool 'gpuu'",
    ),
    (
        "unknown instance",
        _set("teams.0.instance", "gitlab"),
        "teams[0].instance: unknown GitHub instance 'gitlab'",
    ),
    (
        "org of another instance",
        lambda doc: doc["teams"][0].update(org="research", repositories=["research/web"]),
        "teams[0].org: 'research' is not an org of 'cloud'",
    ),
    (
        "isolated pool of another team",
        _set("teams.0.pools", ["warm", "ml-isolated"]),
        "teams[0].pools[1]: pool 'ml-isolated' is isolated for team 'ml'",
    ),
    (
        "min above max",
        _set("teams.0.min_idle", 61),
        "teams[0]: min_idle (61) is greater than max_runners (60)",
    ),
    (
        "too many runners per node",
        _set("pools.0.max_runners_per_node", 11),
        "pools[0].max_runners_per_node: Input should be less than or equal to 10",
    ),
    (
        "zero runners per node",
        _set("pools.0.max_runners_per_node", 0),
        "pools[0].max_runners_per_node: Input should be greater than or equal to 1",
    ),
    (
        "not a DNS label",
        _set("teams.1.name", "ML_Team"),
        "teams[1].name: 'ML_Team' is not a DNS-1123 label: use lowercase letters, digits and "
        "'-', start and end with a letter or digit, at most 40 characters",
    ),
    ("duplicate pool", _set("pools.4.name", "gpu"), "pools[4].name: 'gpu' is used twice"),
    (
        "repo not org/repo",
        _set("teams.0.repositories", ["storefront"]),
        "teams[0].repositories[0]: 'storefront' is not 'org/repo' (globs are allowed in the "
        "repository part only)",
    ),
    (
        "bare star",
        _set("teams.0.repositories", ["*"]),
        "teams[0].repositories[0]: '*' is not 'org/repo' (globs are allowed in the repository "
        "part only)",
    ),
    (
        "org-wide without the flag",
        _set("teams.2.allow_org_wide", False),
        "teams[2].repositories[0]: 'platform/*' grants every repository of the org; set "
        "allow_org_wide: true if that is meant",
    ),
    (
        "repo of another org",
        _set("teams.0.repositories", ["research/models"]),
        "teams[0].repositories[0]: 'research/models' is not in org 'acme-corp'",
    ),
    (
        "repo already another team's",
        _set("teams.2.repositories", ["research/training-x"]),
        "teams[2].repositories[0]: 'research/training-x' is not in org 'platform'",
    ),
    (
        "inline webhook secret",
        _set("github_instances.0.webhook_secret", "hunter2"),
        "github_instances[0].webhook_secret: must reference a Kubernetes Secret as {name, key}; "
        "the spec never holds a secret",
    ),
    (
        "ghes without host",
        _set("github_instances.1.host", None),
        "github_instances[1]: a 'ghes' instance needs 'host' (the server's host name)",
    ),
    (
        "org without installation",
        _set("github_instances.1.orgs", ["platform", "research", "x"]),
        "github_instances[1].orgs: 'x' has no App installation in 'apps'",
    ),
    (
        "typo key",
        _set("pools.0.warm_node", 3),
        "pools[0].warm_node: unknown key (check the spelling against the configuration reference)",
    ),
    (
        "warm pool without warm nodes",
        _set("pools.0.warm_nodes", 0),
        "pools[0]: a 'warm' pool needs 'warm_nodes' >= 1",
    ),
    (
        "gpu pool without gpu limit",
        _set("pools.2.limits", {"cpu": 10, "memory": "10Gi"}),
        "pools[2]: a 'gpu' pool needs 'limits.gpu'",
    ),
    (
        "bad memory quantity",
        _set("pools.0.limits.memory", "lots"),
        "pools[0].limits.memory: 'lots' is not a Kubernetes quantity (examples: '2', '500m', "
        "'4Gi', '512Mi')",
    ),
    (
        "open endpoint",
        _set("cluster.endpoint.public_access_cidrs", ["0.0.0.0/0"]),
        "cluster.endpoint.public_access_cidrs: 0.0.0.0/0 opens the API to the internet; set "
        "allow_public_from_anywhere: true if that is meant",
    ),
    (
        "public endpoint without cidrs",
        _set("cluster.endpoint.public_access_cidrs", []),
        "cluster.endpoint: public_access needs public_access_cidrs (EKS would open it to all)",
    ),
    (
        "vault ttl above an hour",
        _set("vault.token_ttl_seconds", 7200),
        "vault.token_ttl_seconds: Input should be less than or equal to 3600",
    ),
    (
        "session above an hour",
        _set("teams.0.session_duration_seconds", 7200),
        "teams[0].session_duration_seconds: Input should be less than or equal to 3600",
    ),
    ("missing teams", lambda doc: doc.pop("teams"), "teams: required"),
    (
        "pool nobody uses",
        _set("teams.1.pools", ["ml-isolated", "gpu"]),
        "pools[3]: pool 'highmem' is used by no team",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in INVALID], ids=[case for case, _, _ in INVALID]
)
def test_invalid_config_names_the_exact_path(
    dev_document: dict[str, Any], mutate: Mutation, message: str
) -> None:
    mutate(dev_document)
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert message in caught.value.problems, caught.value.problems


def test_a_repository_belongs_to_one_team(dev_document: dict[str, Any]) -> None:
    dev_document["teams"][2]["org"] = "research"
    dev_document["teams"][2]["allow_org_wide"] = False
    dev_document["teams"][2]["repositories"] = ["research/training-gpt"]
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[2].repositories[0]: 'research/training-gpt' is also claimed by team 'ml'"
    ]


def test_a_literal_repository_under_a_later_teams_glob_is_refused(
    dev_document: dict[str, Any],
) -> None:
    # ml (index 1) names a repository that infra's later 'platform/*' glob also claims.
    dev_document["teams"][1].update(org="platform", repositories=["platform/models"])
    dev_document["pools"][1]["owner"] = "ml"
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[1].repositories[0]: 'platform/models' is also claimed by team 'infra'"
    ]


def test_the_same_repository_on_two_instances_is_two_repositories(
    dev_document: dict[str, Any],
) -> None:
    dev_document["github_instances"][0]["orgs"] = ["acme-corp", "platform"]
    dev_document["github_instances"][0]["org_ids"]["platform"] = 9
    dev_document["github_instances"][0]["apps"][0]["installations"]["platform"] = 9
    dev_document["teams"][0].update(
        org="platform", repositories=["platform/site"], repository_ids={"platform/site": 3}
    )
    spec = load_spec(dev_document)
    assert spec.teams[0].repositories == ("platform/site",)


def test_every_problem_is_reported_at_once(dev_document: dict[str, Any]) -> None:
    dev_document["teams"][0]["pools"] = ["nope"]
    dev_document["teams"][1]["instance"] = "nope"
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert "teams[0].pools[0]: unknown pool 'nope'" in caught.value.problems
    assert "teams[1].instance: unknown GitHub instance 'nope'" in caught.value.problems


def test_quantities_and_durations_parse_exactly() -> None:
    assert parse_quantity("500m") * 2 == 1
    assert parse_quantity("4Gi") == 4 * 2**30
    assert parse_duration("1h30m") == 5400
    assert parse_duration("720h") == 720 * 3600
    for bad in ("", "5 m", "1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@settings(max_examples=60, deadline=None)
@given(
    runners=st.integers(min_value=1, max_value=10),
    warm=st.integers(min_value=1, max_value=20),
    min_idle=st.integers(min_value=0, max_value=60),
    team_name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    capacity=st.sampled_from([["spot"], ["on-demand"], ["spot", "on-demand"]]),
)
def test_spec_round_trips_through_its_json(
    runners: int, warm: int, min_idle: int, team_name: str, capacity: list[str]
) -> None:
    doc = copy.deepcopy(DEV_DOCUMENT)
    doc["pools"][0].update(max_runners_per_node=runners, warm_nodes=warm, capacity_types=capacity)
    doc["teams"][0].update(min_idle=min_idle)
    if team_name not in {"ml", "infra"}:
        doc["teams"][0]["name"] = team_name
        shares = doc["pools"][0]["shares"]
        shares[team_name] = shares.pop("web")  # a share names its team
    spec = load_spec(doc)
    again = load_spec_json(spec.model_dump_json())
    assert again == spec
    assert again.content_hash() == spec.content_hash()


@settings(max_examples=80, deadline=None)
@given(name=st.text(max_size=50))
def test_any_team_name_is_accepted_or_refused_by_path(name: str) -> None:
    doc = copy.deepcopy(DEV_DOCUMENT)
    doc["teams"][2]["name"] = name
    doc["pools"][0]["shares"].pop("infra")  # else also refused there: not infra's name now
    try:
        spec = load_spec(doc)
    except SpecError as error:
        assert any(p.startswith("teams[2].name: ") for p in error.problems), error.problems
    else:
        assert spec.teams[2].name == name


def test_two_teams_on_two_pools_cannot_share_a_scale_set_name(
    dev_document: dict[str, Any],
) -> None:
    # team web on pool nvme-x and team web-nvme on pool x are both "web-nvme-x": one stream,
    # one runner-name prefix, one pod label for two teams. Refused.
    highmem = next(p for p in dev_document["pools"] if p["name"] == "highmem")
    dev_document["pools"] += [{**highmem, "name": "x"}, {**highmem, "name": "nvme-x"}]
    dev_document["teams"][0]["pools"] = ["warm", "nvme", "nvme-x"]
    dev_document["teams"][2].update(name="web-nvme", pools=["warm", "x"])
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[2].pools[1]: scale set name 'web-nvme-x' is also team 'web' on pool 'nvme-x'; "
        "rename the team or the pool"
    ]


def test_two_teams_cannot_share_a_runner_group(dev_document: dict[str, Any]) -> None:
    # GitHub gives a job to any idle runner of the group whose labels match: a shared group
    # would hand one team's jobs to the other's runners (and pools, and identity).
    intruder = {
        **dev_document["teams"][0],
        "name": "intruder",
        "repositories": ["acme-corp/intruder"],
        "repository_ids": {"acme-corp/intruder": 4711},
        "runner_group": "WEB",
        "pools": ["warm"],
        "container_modes": {},
    }
    dev_document["teams"].append(intruder)
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "teams[3].runner_group: 'WEB' is also team 'web''s runner group in acme-corp; "
        "each team needs its own"
    ]


# --- fair share (pools[].shares) ---------------------------------------------------------


def test_the_dev_stack_shares_its_warm_pool_by_weight(dev_spec: PlatformSpec) -> None:
    shares = dev_spec.pool("warm").shares
    assert shares["web"].weight == 2 and shares["web"].min == 4 and shares["web"].max is None
    assert shares["infra"].weight == 1
    assert dev_spec.pool("gpu").shares == {}  # no entry: weight 1, no minimum, no maximum


SHARES_REFUSED: list[tuple[str, Any, str]] = [
    ("weight zero", {"web": {"weight": 0}}, "pools[0].shares.web.weight: Input should be"),
    ("weight negative", {"web": {"weight": -2}}, "pools[0].shares.web.weight: Input should be"),
    ("weight NaN", {"web": {"weight": float("nan")}}, "pools[0].shares.web.weight: nan is not"),
    ("weight inf", {"web": {"weight": float("inf")}}, "pools[0].shares.web.weight: inf is not"),
    ("weight bool", {"web": {"weight": True}}, "pools[0].shares.web.weight: true is not a number"),
    ("weight text", {"web": {"weight": "2"}}, "pools[0].shares.web.weight: Input should be"),
    ("min bool", {"web": {"min": False}}, "pools[0].shares.web.min: false is not a number"),
    ("min negative", {"web": {"min": -1}}, "pools[0].shares.web.min: Input should be"),
    ("min fraction", {"web": {"min": 1.5}}, "pools[0].shares.web.min: Input should be"),
    ("max zero", {"web": {"max": 0}}, "pools[0].shares.web.max: Input should be"),
    ("min over max", {"web": {"min": 9, "max": 8}}, "pools[0].shares.web: min (9) is greater"),
    ("unknown key", {"web": {"wieght": 2}}, "pools[0].shares.web.wieght: unknown key"),
    ("unknown team", {"ops": {"weight": 3}}, "pools[0].shares.ops: unknown team 'ops'"),
    (
        "a team not on the pool",
        {"ml": {"weight": 3}},
        "pools[0].shares.ml: team 'ml' does not use pool 'warm'",
    ),
    (
        "min beyond the team's max_runners",
        {"web": {"min": 61}},
        "pools[0].shares.web.min: 61 is more than team 'web''s max_runners (60)",
    ),
]


@pytest.mark.parametrize(
    ("shares", "message"),
    [(shares, message) for _, shares, message in SHARES_REFUSED],
    ids=[case for case, _, _ in SHARES_REFUSED],
)
def test_bad_shares_are_refused_by_path(
    dev_document: dict[str, Any], shares: Any, message: str
) -> None:
    dev_document["pools"][0]["shares"] = shares
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_a_team_cannot_raise_its_own_weight(dev_document: dict[str, Any]) -> None:
    # Shares live on the pool, which the platform owner writes; the team's entry has no key.
    dev_document["teams"][2]["shares"] = {"warm": {"weight": 100}}
    dev_document["teams"][2]["weight"] = 100
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert "teams[2].shares: unknown key" in caught.value.problems[0]
    assert "teams[2].weight: unknown key" in caught.value.problems[1]


def test_the_minimums_must_fit_the_pools_limits(dev_document: dict[str, Any]) -> None:
    # warm: 400 cpu, 1600Gi; web's and infra's runners ask for 2 cpu and 4Gi each.
    dev_document["pools"][0]["shares"] = {"web": {"min": 60}, "infra": {"min": 20}}
    dev_document["pools"][0]["limits"] = {"cpu": 150, "memory": "320Gi"}
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "pools[0].shares: the minimums (web: 60, infra: 20 runners) need 160 cpu, more than "
        "the pool's limits.cpu (150); lower a min or raise the limit"
    ]
    dev_document["pools"][0]["limits"] = {"cpu": 160, "memory": "320Gi"}  # exactly fits
    assert load_spec(dev_document).pool("warm").shares["web"].min == 60


def test_sidecars_and_gpus_count_in_the_minimums(dev_document: dict[str, Any]) -> None:
    # ml on gpu: 4 cpu + 16Gi per runner and 1 GPU; the gpu pool has 16 GPUs.
    gpu = next(p for p in dev_document["pools"] if p["name"] == "gpu")
    gpu["shares"] = {"ml": {"min": 17}}
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems == [
        "pools[2].shares: the minimums (ml: 17 runners) need 17 gpu, more than the pool's "
        "limits.gpu (16); lower a min or raise the limit"
    ]
    # web on nvme runs buildkit: its sidecar's job_resources (2 cpu, 4Gi) count too.
    nvme = next(p for p in dev_document["pools"] if p["name"] == "nvme")
    del gpu["shares"]
    nvme["shares"] = {"web": {"min": 33}}  # 33 x 4 cpu = 132 > 128
    with pytest.raises(SpecError) as caught:
        load_spec(dev_document)
    assert caught.value.problems[0].startswith("pools[4].shares: the minimums (web: 33 runners) ")
    assert "need 132 cpu" in caught.value.problems[0]
    nvme["shares"] = {"web": {"min": 32}}
    assert load_spec(dev_document).pool("nvme").shares["web"].min == 32


def test_shares_round_trip_through_the_spec_json(dev_spec: PlatformSpec) -> None:
    again = load_spec_json(dev_spec.model_dump_json())
    assert again.pool("warm").shares == dev_spec.pool("warm").shares
