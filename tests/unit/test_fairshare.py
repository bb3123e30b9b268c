"""The fair-share allocation (controller/provision/fairshare.py), by hand-computed cases
and by the properties every answer must have."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import ContainerMode, RuntimeFacts, load_spec, runner_requests
from controller.provision.cache import pod_requests
from controller.provision.fairshare import Claim, Resources, entitlements
from controller.provision.pod import runner_pod
from tests.conftest import DEV_DOCUMENT

GIB = float(2**30)
RUNNER: Resources = (2.0, 4 * GIB, 0.0)  # the dev stack's default runner
POOL_100: Resources = (200.0, 1600 * GIB, math.inf)  # room for 100 such runners (cpu)


def _claim(team: str, want: int, **fields: object) -> Claim:
    return Claim(team=team, current=0, want=want, per_runner=RUNNER, **fields)  # type: ignore[arg-type]


def test_one_team_alone_takes_everything_it_wants() -> None:
    assert entitlements(POOL_100, [_claim("web", 40)]) == {"web": 40}
    assert entitlements(POOL_100, [_claim("web", 500)]) == {"web": 100}


def test_two_to_one_weights_split_100_runners_67_33() -> None:
    claims = [_claim("web", 500, weight=2.0), _claim("infra", 500, weight=1.0)]
    assert entitlements(POOL_100, claims) == {"web": 67, "infra": 33}
    # The names do not decide it: the heavier team sorting last gets the same 67.
    claims = [_claim("alpha", 500, weight=1.0), _claim("zeta", 500, weight=2.0)]
    assert entitlements(POOL_100, claims) == {"alpha": 33, "zeta": 67}


def test_a_tie_goes_to_the_team_whose_name_sorts_first() -> None:
    pool_101 = (202.0, 1600 * GIB, math.inf)
    claims = [_claim("b", 500), _claim("a", 500)]
    assert entitlements(pool_101, claims) == {"a": 51, "b": 50}


def test_a_team_under_its_min_gets_its_min_first() -> None:
    # Without the min, weights 1:3 give 25/75; with min 40, a gets 40 first and b the rest
    # (b's next runner, 61st, would have 61/3 > 40 + 1, yet a's 41st cannot fit).
    claims = [_claim("a", 500, weight=1.0), _claim("b", 500, weight=3.0)]
    assert entitlements(POOL_100, claims) == {"a": 25, "b": 75}
    claims = [_claim("a", 500, weight=1.0, min=40), _claim("b", 500, weight=3.0)]
    assert entitlements(POOL_100, claims) == {"a": 40, "b": 60}
    # A min is a guarantee of what it wants, not a reservation: wanting 10, a gets 10.
    claims = [_claim("a", 10, weight=1.0, min=40), _claim("b", 500, weight=3.0)]
    assert entitlements(POOL_100, claims) == {"a": 10, "b": 90}


def test_max_caps_and_the_rest_goes_to_the_others() -> None:
    claims = [_claim("web", 500, weight=2.0, max=50), _claim("infra", 500, weight=1.0)]
    assert entitlements(POOL_100, claims) == {"web": 50, "infra": 50}
    # The max caps even when the pool has room to spare.
    assert entitlements(POOL_100, [_claim("web", 80, max=30)]) == {"web": 30}


def test_a_team_with_zero_demand_gets_nothing_and_its_share_goes_to_the_others() -> None:
    claims = [_claim("big", 0, weight=5.0), _claim("b", 500), _claim("c", 500)]
    assert entitlements(POOL_100, claims) == {"big": 0, "b": 50, "c": 50}


def test_busy_runners_are_never_taken_away_only_free_capacity_is_shared() -> None:
    # web holds 80 (above its 67) and infra 20: the pool is full, nobody gets more.
    held = [
        Claim("web", current=80, want=500, per_runner=RUNNER, weight=2.0),
        Claim("infra", current=20, want=500, per_runner=RUNNER, weight=1.0),
    ]
    assert entitlements(POOL_100, held) == {"web": 80, "infra": 20}
    # One of web's jobs ends: the freed runner goes to infra (21/1 < 80/2).
    held[0] = Claim("web", current=79, want=500, per_runner=RUNNER, weight=2.0)
    assert entitlements(POOL_100, held) == {"web": 79, "infra": 21}
    # ... until the split is 67/33 again; from there it stays.
    converged = [
        Claim("web", current=66, want=500, per_runner=RUNNER, weight=2.0),
        Claim("infra", current=33, want=500, per_runner=RUNNER, weight=1.0),
    ]
    assert entitlements(POOL_100, converged) == {"web": 67, "infra": 33}


def test_free_capacity_is_divided_among_the_teams_that_want_it() -> None:
    # a holds 60 and wants no more; the 40 free runners go 20/20 to b and c, not all to
    # whichever asks first.
    claims = [
        Claim("a", current=60, want=60, per_runner=RUNNER),
        _claim("b", 100),
        _claim("c", 100),
    ]
    assert entitlements(POOL_100, claims) == {"a": 60, "b": 20, "c": 20}


def test_a_pool_over_its_limits_gives_nobody_more() -> None:
    # The limits were lowered under running jobs: what runs stays, nothing is added.
    claims = [Claim("a", current=120, want=500, per_runner=RUNNER), _claim("b", 10)]
    assert entitlements(POOL_100, claims) == {"a": 120, "b": 0}


def test_dominant_resource_fairness_compares_what_teams_take_not_counts() -> None:
    # 100 cpu, 100Gi. x: 4 cpu + 1Gi (4 % of the cpu each), y: 1 cpu + 4Gi (4 % of the
    # memory each): equal weights give 20 each, both resources exactly full.
    pool = (100.0, 100 * GIB, math.inf)
    claims = [
        Claim("x", current=0, want=100, per_runner=(4.0, 1 * GIB, 0.0)),
        Claim("y", current=0, want=100, per_runner=(1.0, 4 * GIB, 0.0)),
    ]
    assert entitlements(pool, claims) == {"x": 20, "y": 20}


def test_a_team_whose_runner_no_longer_fits_leaves_the_rest_to_smaller_runners() -> None:
    # 10 cpu; big (4 cpu a runner) has ten times small's weight and takes 2 runners (8
    # cpu) first; its third does not fit in the 2 left, and small's 1-cpu runners do.
    pool = (10.0, 1000 * GIB, math.inf)
    claims = [
        Claim("big", current=0, want=10, per_runner=(4.0, GIB, 0.0), weight=10.0),
        Claim("small", current=0, want=10, per_runner=(1.0, GIB, 0.0), weight=1.0),
    ]
    assert entitlements(pool, claims) == {"big": 2, "small": 2}


def test_gpus_are_a_resource_like_any_other() -> None:
    # 16 GPUs, one per runner, cpu to spare; weights 3:1 give 12/4.
    pool = (1000.0, 10_000 * GIB, 16.0)
    gpu_runner = (4.0, 16 * GIB, 1.0)
    claims = [
        Claim("a", current=0, want=50, per_runner=gpu_runner, weight=3.0),
        Claim("b", current=0, want=50, per_runner=gpu_runner, weight=1.0),
    ]
    assert entitlements(pool, claims) == {"a": 12, "b": 4}


@pytest.mark.parametrize(
    ("light", "heavy", "expected"),
    [
        (1e-9, 2e-9, (33, 67)),  # tiny weights in the same ratio: the same split
        (1e300, 2e300, (33, 67)),  # huge ones too
        (1e-9, 1.0, (0, 100)),  # a billionth of the weight: not one runner of 100
        (5e-324, 1.7e308, (0, 100)),  # the extremes: no overflow, no error
        (1.0, 1.0 + 1e-15, (50, 50)),  # almost equal: equal
    ],
)
def test_extreme_weights_behave(light: float, heavy: float, expected: tuple[int, int]) -> None:
    claims = [_claim("a", 500, weight=light), _claim("b", 500, weight=heavy)]
    result = entitlements(POOL_100, claims)
    assert (result["a"], result["b"]) == expected


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_a_weight_that_is_not_a_positive_number_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="weight must be a positive number"):
        entitlements(POOL_100, [_claim("a", 5, weight=weight)])


def test_a_team_claimed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="claimed twice"):
        entitlements(POOL_100, [_claim("a", 5), _claim("a", 6)])


_claims = st.lists(
    st.builds(
        Claim,
        team=st.sampled_from("abcdefgh"),
        current=st.integers(0, 60),
        want=st.integers(0, 200),
        per_runner=st.tuples(
            st.sampled_from([0.5, 1.0, 2.0, 4.0]),
            st.sampled_from([GIB, 4 * GIB, 16 * GIB]),
            st.sampled_from([0.0, 0.0, 1.0]),
        ),
        weight=st.floats(1e-6, 1e6),
        min=st.integers(0, 30),
        max=st.none() | st.integers(1, 150),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda c: c.team,
)


@settings(max_examples=300, deadline=None)
@given(claims=_claims, cpu=st.integers(1, 300), memory=st.integers(1, 800), gpu=st.integers(0, 20))
def test_every_answer_is_bounded_within_capacity_and_work_conserving(
    claims: list[Claim], cpu: int, memory: int, gpu: int
) -> None:
    capacity = (float(cpu), memory * GIB, float(gpu) if gpu else math.inf)
    result = entitlements(capacity, claims)
    assert set(result) == {c.team for c in claims}
    extra = [0.0, 0.0, 0.0]
    for claim in claims:
        got = result[claim.team]
        cap = max(claim.current, min(claim.want, claim.max if claim.max is not None else 10**9))
        assert claim.current <= got <= cap
        for index in range(3):
            extra[index] += (got - claim.current) * claim.per_runner[index]
    free = [
        limit - sum(c.current * c.per_runner[i] for c in claims) for i, limit in enumerate(capacity)
    ]
    # What is handed out beyond what runs fits in what was free (nothing when nothing was).
    for index, limit in enumerate(capacity):
        if limit != math.inf:
            assert extra[index] <= max(0.0, free[index]) + 1e-6 * limit
    # Work-conserving: a team left below its wish could not fit one more runner.
    for claim in claims:
        cap = max(claim.current, min(claim.want, claim.max if claim.max is not None else 10**9))
        if result[claim.team] < cap:
            left = [free[i] - extra[i] for i in range(3)]
            assert any(
                capacity[i] != math.inf and claim.per_runner[i] > left[i] + 1e-6 * capacity[i]
                for i in range(3)
            ), (claim, result)


@settings(max_examples=200, deadline=None)
@given(claims=_claims)
def test_the_answer_depends_only_on_the_inputs(claims: list[Claim]) -> None:
    capacity = (120.0, 400 * GIB, 8.0)
    assert entitlements(capacity, claims) == entitlements(capacity, list(reversed(claims)))


MODES: tuple[ContainerMode, ...] = ("kubernetes", "buildkit", "none")


@pytest.mark.parametrize("mode", MODES)
def test_the_models_runner_requests_are_what_the_pod_builder_asks_for(mode: ContainerMode) -> None:
    # The spec checks minimums with runner_requests; the provisioner counts the built pod.
    document = copy.deepcopy(DEV_DOCUMENT)
    for team in document["teams"]:
        team["container_modes"] = {
            pool: ("dind" if pool == "ml-isolated" else mode) for pool in team["pools"]
        }
        team["job_resources"] = {"cpu": "1500m", "memory": "3Gi"}
    spec = load_spec(document)
    facts = RuntimeFacts(
        team_role_arns={t.name: f"arn:aws:iam::123456789012:role/r-{t.name}" for t in spec.teams},
        vault_mounts={i.name: f"jwt-{i.name}" for i in spec.github_instances},
        redis_endpoint="127.0.0.1",
    )
    teams = {t.name: t for t in spec.teams}
    for scale_set in spec.scale_sets():
        pool = spec.pool(scale_set.pool)
        built = pod_requests(runner_pod(spec, facts, scale_set, "r-check", 1)["spec"])
        cpu, memory, gpus = runner_requests(teams[scale_set.team], pool)
        assert (cpu, memory) == pytest.approx(built[:2]), scale_set.name
        assert gpus == pool.gpus_per_runner
