"""How many runners a pass may create: the team's max_runners across its pools and the
pool's cpu/memory/gpu limits across every team on it (clients are built, never used)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from controller.audit import AuditLog
from controller.metrics import Metrics
from controller.model import PlatformSpec, RuntimeFacts, load_spec
from controller.provision.cache import RunnerPod
from controller.provision.demand import Demand, DemandStore
from controller.provision.kube import KubeApi, KubeConfig
from controller.provision.provisioner import Provisioner

FACTS = RuntimeFacts(
    team_role_arns={t: f"arn:aws:iam::123456789012:role/r-{t}" for t in ("web", "ml", "infra")},
    vault_mounts={"cloud": "jwt-cloud", "ghes": "jwt-ghes"},
    redis_endpoint="127.0.0.1",
)
GIB = float(2**30)


def _provisioner(spec: PlatformSpec) -> Provisioner:
    redis = aioredis.Redis()  # connects only when used: never, here
    names = [s.name for s in spec.scale_sets()]
    kube = KubeApi(KubeConfig(server="http://kube.invalid", verify=False))
    return Provisioner(
        spec, FACTS, DemandStore(redis, names, "t"), kube, {}, AuditLog(redis), Metrics()
    )


def _runner(scale_set: str, namespace: str, index: int, cpu: float, memory: float) -> RunnerPod:
    return RunnerPod(
        namespace=namespace,
        name=f"{scale_set}-{index:05d}",
        uid=f"u{index}",
        scale_set=scale_set,
        runner_id=index,
        phase="Running",
        node="n",
        created=0.0,
        running_since=0.0,
        deleting=False,
        exit_code=None,
        requests=(cpu, memory, 0),
    )


def test_gpu_runners_are_bounded_by_the_pools_gpu_limit(dev_spec: PlatformSpec) -> None:
    provisioner = _provisioner(dev_spec)
    gpu = next(s for s in dev_spec.scale_sets() if s.name == "ml-gpu")
    assert dev_spec.pool("gpu").limits.gpu == 16
    assert provisioner._pool_room(gpu) == 16  # 192 cpu / 4 = 48, 768Gi / 16Gi = 48, 16 gpus
    for index in range(10):
        provisioner.cache.put(_runner("ml-gpu", "runners-ml", index, 4, 16 * GIB))
    provisioner.inflight["ml-gpu"] = 2
    assert provisioner._pool_room(gpu) == 4  # whichever pod holds the GPUs, each runner has one


def test_every_teams_runners_on_a_shared_pool_count(dev_spec: PlatformSpec) -> None:
    provisioner = _provisioner(dev_spec)
    warm = next(s for s in dev_spec.scale_sets() if s.name == "web-warm")
    cpu, memory, _ = provisioner.runner_requests["web-warm"]
    first = provisioner._pool_room(warm)
    assert first == min(400 // cpu, 1600 * GIB // memory)
    for index in range(30):  # infra's runners on the same warm pool
        provisioner.cache.put(_runner("infra-warm", "runners-infra", index, 10, GIB))
    assert provisioner._pool_room(warm) == int((400 - 300) // cpu)


def test_a_team_never_exceeds_max_runners_across_its_pools(dev_spec: PlatformSpec) -> None:
    provisioner = _provisioner(dev_spec)
    assert dev_spec.teams[0].max_runners == 60
    for index in range(40):
        provisioner.cache.put(_runner("web-warm", "runners-web", index, 2, GIB))
    provisioner.inflight["web-nvme"] = 15
    assert provisioner._team_room("web") == 5
    # A pod labelled web-warm outside web's namespace is not web's runner at all.
    provisioner.cache.put(_runner("web-warm", "runners-ml", 99, 2, GIB))
    assert provisioner._team_room("web") == 5


# --- fair share on a pool at its limits (pools[].shares) -----------------------------


def _warm_for_100(dev_document: dict[str, Any]) -> PlatformSpec:
    """The dev stack with room for 100 runners of 2 cpu on warm; web weighs 2, infra 1."""
    warm = dev_document["pools"][0]
    warm["limits"] = {"cpu": 200, "memory": "1600Gi"}
    warm["shares"] = {"web": {"weight": 2}, "infra": {"weight": 1}}
    for team in dev_document["teams"]:
        team["max_runners"] = 1000
    return load_spec(dev_document)


def _fill(provisioner: Provisioner, scale_set: str, namespace: str, count: int) -> None:
    for index in range(count):
        provisioner.cache.put(_runner(scale_set, namespace, index, 2, 4 * GIB))


def test_on_a_full_pool_freed_room_goes_by_weight(dev_document: dict[str, Any]) -> None:
    spec = _warm_for_100(dev_document)
    provisioner = _provisioner(spec)
    web, infra = (next(s for s in spec.scale_sets() if s.name == n) for n in NAMES)
    provisioner.wanted.update({"web-warm": 500, "infra-warm": 500})
    _fill(provisioner, "web-warm", "runners-web", 80)
    _fill(provisioner, "infra-warm", "runners-infra", 20)
    assert (provisioner._pool_room(web), provisioner._pool_room(infra)) == (0, 0)  # full
    # 20 of web's runners finished: the 20 free runners bring the pool to 67/33 (web's
    # next runner at 61/2, infra's at 21/1, one at a time), not all to whoever asks first.
    for index in range(60, 80):  # being deleted: finishing, no longer counted
        done = _runner("web-warm", "runners-web", index, 2, 4 * GIB)
        provisioner.cache.put(dataclasses.replace(done, deleting=True))
    assert provisioner._pool_room(web) == 7
    assert provisioner._pool_room(infra) == 13
    sample = provisioner.metrics.registry.get_sample_value
    labels = {"pool": "warm", "team": "infra"}
    assert sample("runner_platform_fair_share_entitlement", labels) == 33
    # Runners being created count as had: infra's 13 in flight leave it no more room.
    provisioner.inflight["infra-warm"] = 13
    assert provisioner._pool_room(infra) == 0
    assert provisioner._pool_room(web) == 7


def test_a_pool_with_room_for_every_wish_behaves_as_without_shares(
    dev_document: dict[str, Any],
) -> None:
    spec = _warm_for_100(dev_document)
    provisioner = _provisioner(spec)
    web, infra = (next(s for s in spec.scale_sets() if s.name == n) for n in NAMES)
    provisioner.wanted.update({"web-warm": 30, "infra-warm": 60})
    _fill(provisioner, "web-warm", "runners-web", 10)
    # Both wishes fit (30 + 60 of 100): infra, the lighter team, may take 60, more than
    # its 33, because web does not want the rest; the pool's own room is the bound.
    assert provisioner._pool_room(infra) == 60
    assert provisioner._pool_room(web) == 20  # its wish: 30 less the 10 it has
    # A team that wants nothing more leaves the whole pool to the other.
    provisioner.wanted["infra-warm"] = 0
    provisioner.wanted["web-warm"] = 500
    assert provisioner._pool_room(web) == 90


def test_a_shares_max_caps_a_team_on_the_pool_even_with_room(
    dev_document: dict[str, Any],
) -> None:
    dev_document["pools"][0]["shares"] = {"web": {"max": 12}}
    provisioner = _provisioner(load_spec(dev_document))
    web = next(s for s in provisioner.scale_sets.values() if s.name == "web-warm")
    provisioner.wanted["web-warm"] = 50
    _fill(provisioner, "web-warm", "runners-web", 5)
    assert provisioner._pool_room(web) == 7


NAMES = ("web-warm", "infra-warm")


class _Demands(DemandStore):
    """Demand as Redis would answer it (the store's own reads are tested against Redis)."""

    def __init__(self, demands: dict[str, Demand]) -> None:
        self.demands = demands
        self.asked: list[list[str]] = []

    async def demand(self, scale_sets: list[str]) -> dict[str, Demand]:
        self.asked.append(scale_sets)
        return {name: self.demands[name] for name in scale_sets}


def test_a_peer_replicas_scale_set_on_the_pool_counts_with_its_demand(
    dev_document: dict[str, Any],
) -> None:
    # This replica acts on web-warm; another holds infra-warm's Lease, so infra's passes
    # run there. Its wish is read from its demand in Redis (100 queued, 20 busy runners).
    spec = _warm_for_100(dev_document)
    provisioner = _provisioner(spec)
    provisioner.may_act = lambda name: name != "infra-warm"
    busy = {f"infra-warm-{index:05d}": str(index) for index in range(20)}
    store = _Demands({"infra-warm": Demand(100, busy)})
    provisioner.demand_store = store
    web = next(s for s in spec.scale_sets() if s.name == "web-warm")
    provisioner.wanted["web-warm"] = 500
    _fill(provisioner, "web-warm", "runners-web", 40)
    _fill(provisioner, "infra-warm", "runners-infra", 20)
    # Not knowing infra's wish, web would take all 40 free runners ...
    assert provisioner._pool_room(web) == 40
    asyncio.run(provisioner._peer_wishes(web))
    assert store.asked == [["infra-warm"]]  # only the scale sets held elsewhere
    assert provisioner.wanted["infra-warm"] == 120
    # ... knowing it, the 40 go 27/13: web to 67, infra to 33.
    assert provisioner._pool_room(web) == 27


def test_a_stalled_demand_consumer_ends_the_process(dev_spec: PlatformSpec) -> None:
    # A Redis read that never returned after a restart was seen: the watchdog turns a loop
    # that stopped coming round into an error that ends the process (its peers take over).
    provisioner = _provisioner(dev_spec)

    async def stalled() -> None:
        provisioner._consumed_at = time.monotonic() - 10  # last round 10 s ago
        await asyncio.wait_for(provisioner._watchdog(stalled_after=1.0), timeout=30)

    with pytest.raises(RuntimeError, match="demand consumer stalled"):
        asyncio.run(stalled())


def test_what_counts_as_stalled(dev_spec: PlatformSpec) -> None:
    provisioner = _provisioner(dev_spec)
    provisioner._consumed_at = 1000.0
    assert provisioner.stalled(1000.0 + 119, stalled_after=120) == ""
    assert provisioner.stalled(1000.0 + 121, stalled_after=120) == (
        "the demand consumer stalled for 120s"
    )
    # A long pass (retiring runners at GitHub's pace) is not stalled; an hour-long one is.
    provisioner._pass_began["web-warm"] = 1000.0
    assert provisioner.stalled(1000.0 + 100, stalled_after=120) == ""
    provisioner._consumed_at = 1000.0 + 3600
    assert provisioner.stalled(1000.0 + 3601, stalled_after=120) == "the pass of web-warm stalled"
