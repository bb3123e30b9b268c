"""Per-scale-set Leases against the real API server: spread over the live replicas, never
held by two at once, moved off a dead replica, handed over on a clean stop."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from kubernetes import client

from controller.provision.kube import KubeApi, KubeConfig, KubeError
from controller.provision.leader import KIND_LABEL, Shards, assign, lease_name
from localenv.kube import ControlPlane

# Six scale sets of three teams (two each), as the dev stack has.
TEAMS = {
    "web-warm": "web",
    "web-nvme": "web",
    "ml-gpu": "ml",
    "ml-highmem": "ml",
    "infra-warm": "infra",
    "infra-deploy": "infra",
}


def test_assign_spreads_teams_evenly_and_agrees_everywhere() -> None:
    members = ["replica-a", "replica-b", "replica-c"]
    teams = [f"team-{n}" for n in range(10)]
    owners = assign(teams, members)
    assert set(owners) == set(teams)
    load = Counter(owners.values())
    assert max(load.values()) - min(load.values()) <= 1  # bounded load: 4/3/3
    # The same members in any order, and any repetition, give the same map.
    for order in itertools.permutations(members):
        assert assign(reversed(teams), [*order, order[0]]) == owners
    # One member leaving moves its teams only... mostly: those of the others stay put
    # unless the bound forces a move (it never grows a survivor's load beyond the bound).
    survivors = assign(teams, members[:2])
    assert set(survivors.values()) == {"replica-a", "replica-b"}
    assert max(Counter(survivors.values()).values()) == 5
    assert assign(teams, []) == {}


@pytest.mark.parametrize(
    "key",
    ["web-warm", "Web_Warm", "a" * 80, "ünïcode/with spaces", "x-" * 40],
)
def test_lease_names_are_valid_and_distinct(key: str) -> None:
    name = lease_name("runner-set-", key)
    assert len(name) <= 63
    assert name.startswith("runner-set-")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name  # ASCII DNS label
    if key != "web-warm":  # a cleaned name carries a hash: two keys that clean alike differ
        assert lease_name("runner-set-", key) != lease_name("runner-set-", key.upper() + "!")


def test_bad_lease_timing_is_refused_with_the_settings_named() -> None:
    kube = KubeApi(KubeConfig(server="http://kube.invalid", verify=False))
    with pytest.raises(ValueError, match="RUNNER_PLATFORM_LEASE_RENEW"):
        Shards(kube, "ns", "me", TEAMS, duration=15, renew_seconds=10)
    with pytest.raises(ValueError, match="RUNNER_PLATFORM_LEASE_SECONDS"):
        Shards(kube, "ns", "me", TEAMS, duration=1, renew_seconds=0.2)


_OPEN: list[Shards] = []  # every replica a scenario made: its client closed when it ends


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario; whether it passes or fails, close the API clients it opened (else
    the garbage collector finds open sockets during some later test)."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            while _OPEN:
                await _OPEN.pop().kube.aclose()

    asyncio.run(main())


async def _replicas(
    plane: ControlPlane, namespace: str, *names: str, duration: int = 3
) -> list[Shards]:
    made = [
        Shards(
            KubeApi(KubeConfig.load(plane.kubeconfig)),
            namespace,
            name,
            TEAMS,
            duration=duration,
            renew_seconds=0.5,
        )
        for name in names
    ]
    _OPEN.extend(made)
    return made


def _namespace(plane: ControlPlane, tag: str) -> str:
    """A namespace of the test's own: no other test's member Leases in it."""
    name = f"leases-{tag}"
    client.CoreV1Api(plane.api_client()).create_namespace({"metadata": {"name": name}})
    return name


def _never_shared(replicas: list[Shards]) -> None:
    for scale_set in TEAMS:
        holders = [r.identity for r in replicas if r.held(scale_set)]
        assert len(holders) <= 1, (scale_set, holders)


async def _tick_all(replicas: list[Shards], rounds: int, pause: float = 0.5) -> None:
    for _ in range(rounds):
        for replica in replicas:
            await replica.tick()
            _never_shared(replicas)
        await asyncio.sleep(pause)
        _never_shared(replicas)


def test_two_replicas_share_the_scale_sets_and_one_takes_over_from_a_dead_one(
    kube_api: ControlPlane,
) -> None:
    tag = uuid.uuid4().hex[:6]
    namespace = _namespace(kube_api, tag)

    async def scenario() -> None:
        # Leases of 8 s: a loaded machine's pauses between rounds stay well inside them.
        a, b = await _replicas(kube_api, namespace, f"a-{tag}", f"b-{tag}", duration=8)
        a.teams = b.teams = {f"{s}-{tag}": t for s, t in TEAMS.items()}
        a.names = {s: lease_name("runner-set-", s) for s in a.teams}
        b.names = dict(a.names)
        # a starts alone and takes everything at once (no Lease exists yet).
        await a.tick()
        assert a.owned() == set(a.teams)
        # b joins: within a few rounds the teams are split, none held twice meanwhile.
        await _tick_all([a, b], 10)
        owned_a, owned_b = a.owned(), b.owned()
        assert owned_a | owned_b == set(a.teams)
        assert not owned_a & owned_b
        teams_a = {a.teams[s] for s in owned_a}
        teams_b = {b.teams[s] for s in owned_b}
        assert not teams_a & teams_b  # a team's scale sets stay together
        assert sorted([len(teams_a), len(teams_b)]) == [1, 2]
        # b dies without a word (no more ticks): a stops nothing of its own, and takes
        # b's scale sets only once b's Leases have expired on a's clock.
        died = time.monotonic()
        while not a.owned() == set(a.teams):
            await a.tick()
            if owned_b & a.owned():
                # b's deadline (0.8 x its duration after its last renewal) passed before
                # a took it
                assert time.monotonic() - died > b.duration * 0.8
            assert not any(b.held(s) for s in a.owned() & owned_b)
            await asyncio.sleep(0.25)
            assert time.monotonic() - died < 30, "a never took b's scale sets"
        # A clean stop hands everything over at once: a new replica c takes what a
        # released on its first round, without waiting for any expiry.
        c = (await _replicas(kube_api, namespace, f"c-{tag}", duration=8))[0]
        c.teams, c.names = a.teams, a.names
        await a.release_all()
        assert a.owned() == set()
        await c.tick()
        # At once: what the hash gives c among {b, c} (c has not watched b's member Lease
        # for its duration yet, so it still counts b as live and leaves b its share).
        owners = assign(c.teams.values(), {b.identity, c.identity})
        share_c = {s for s, team in c.teams.items() if owners[team] == c.identity}
        assert share_c and share_c != set(c.teams)
        assert c.owned() == share_c
        while c.owned() != set(a.teams):  # and all of it once b's member Lease expires
            await asyncio.sleep(0.25)
            await c.tick()
            assert time.monotonic() - died < 90, "c never took b's share"

    _run(scenario)


def test_a_replica_that_cannot_renew_stops_acting_before_its_lease_could_pass(
    kube_api: ControlPlane,
) -> None:
    tag = uuid.uuid4().hex[:6]
    namespace = _namespace(kube_api, tag)

    async def scenario() -> None:
        (a,) = await _replicas(kube_api, namespace, f"lonely-{tag}")
        a.teams = {f"{s}-{tag}": t for s, t in TEAMS.items()}
        a.names = {s: lease_name("runner-set-", s) for s in a.teams}
        await a.tick()
        assert a.owned() == set(a.teams)
        deadline = max(a.valid_until.values())
        # The API server becomes unreachable for this replica: its rounds fail, never
        # extend a deadline, and once the deadline passes it acts on nothing.
        await a.kube.aclose()
        a.kube = KubeApi(KubeConfig(server="http://127.0.0.1:9", verify=False))
        while time.monotonic() <= deadline + 0.2:
            try:
                await a.tick()
            except KubeError:
                pass
            assert max(a.valid_until.values(), default=0.0) <= deadline
            await asyncio.sleep(0.1)
        assert a.owned() == set()
        assert not any(a.held(s) for s in a.teams)

    _run(scenario)


def test_a_dead_replicas_member_lease_is_removed_and_a_clean_stop_removes_its_own(
    kube_api: ControlPlane,
) -> None:
    tag = uuid.uuid4().hex[:6]
    namespace = _namespace(kube_api, tag)
    coordination = client.CoordinationV1Api(kube_api.api_client())
    # A member Lease a crashed replica left behind.
    coordination.create_namespaced_lease(
        namespace,
        {
            "metadata": {"name": f"runner-member-ghost-{tag}", "labels": {KIND_LABEL: "member"}},
            "spec": {"holderIdentity": f"ghost-{tag}", "leaseDurationSeconds": 2},
        },
    )

    def members() -> set[str]:
        items = coordination.list_namespaced_lease(
            namespace, label_selector=f"{KIND_LABEL}=member"
        ).items
        return {item.metadata.name for item in items}

    async def scenario() -> None:
        (a,) = await _replicas(kube_api, namespace, f"keeper-{tag}")
        a.duration, a.renew_seconds = 2, 0.5
        began = time.monotonic()
        while f"runner-member-ghost-{tag}" in members():
            await a.tick()
            await asyncio.sleep(0.5)
            assert time.monotonic() - began < 60, "the ghost's member Lease stayed"
        assert members() == {a.member_name}  # its own stays while it runs
        await a.release_all()
        assert members() == set()  # and goes on a clean stop

    _run(scenario)


def test_a_holder_hands_over_only_once_its_creations_under_way_are_done(
    kube_api: ControlPlane,
) -> None:
    tag = uuid.uuid4().hex[:6]
    namespace = _namespace(kube_api, tag)
    busy: set[str] = set()

    async def scenario() -> None:
        # A long Lease: the hand-over waits for creations one duration at most.
        a, b = await _replicas(kube_api, namespace, f"a-{tag}", f"b-{tag}", duration=30)
        a.teams = b.teams = {f"{s}-{tag}": t for s, t in TEAMS.items()}
        a.names = {s: lease_name("runner-set-", s) for s in a.teams}
        b.names = dict(a.names)
        a.in_flight = lambda scale_set: scale_set in busy
        await a.tick()
        assert a.owned() == set(a.teams)
        busy.update(a.teams)  # a is creating runners for every scale set right now
        await _tick_all([a, b], 6)
        # b is due a share, but a has not let go: a acts on nothing it is giving up, and
        # b acts on nothing a still holds.
        moving = set(a.teams) - a.owned()
        assert moving
        assert b.owned() == set()
        busy.clear()  # a's creations are done: the hand-over completes
        await _tick_all([a, b], 6)
        assert b.owned() == moving

    _run(scenario)
