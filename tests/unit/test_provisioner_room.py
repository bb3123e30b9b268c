"""How many runners a pass may create: the team's max_runners across its pools and the
pool's cpu/memory/gpu limits across every team on it (clients are built, never used)."""

from __future__ import annotations

import redis.asyncio as aioredis

from controller.audit import AuditLog
from controller.metrics import Metrics
from controller.model import PlatformSpec, RuntimeFacts
from controller.provision.cache import RunnerPod
from controller.provision.demand import DemandStore
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
