"""The reaper against the real API server, KWOK nodes, Redis and the GitHub emulator: each
kind of orphan is removed (audited, counted), and nothing a busy runner uses is."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from kubernetes import client

from controller.audit import AuditLog, iter_records
from controller.metrics import Metrics
from controller.model import ScaleSet
from controller.provision.demand import DemandStore
from controller.provision.kube import KubeApi, KubeConfig
from controller.provision.pod import jit_secret, runner_pod, secret_owner_reference
from controller.provision.provisioner import Provisioner, Tuning
from controller.provision.reaper import Reaper
from controller.settings import Settings
from controller.wiring import github_clients
from tests.integration.platform_support import Platform, module_platform

T = TypeVar("T")


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from module_platform(request, "reaper", start=False)  # the reaper runs in-process


def run_with(
    platform: Platform, body: Callable[[Provisioner, Reaper], Awaitable[T]], **reaper: float
) -> T:
    """Run ``body`` beside an in-process provisioner whose watches feed its cache; the
    provisioner's own passes are off (resync of an hour, no demand), so only ``body`` and
    the clean-up of finished pods act."""

    async def main() -> T:
        settings = Settings.from_env(platform.env())
        metrics = Metrics()
        redis = aioredis.Redis.from_url(platform.redis_url)
        kube = KubeApi(KubeConfig.load(platform.kubeconfig), metrics=metrics)
        spec = platform.spec
        provisioner = Provisioner(
            spec,
            _facts(platform),
            DemandStore(
                redis,
                [s.name for s in spec.scale_sets()],
                "reaper-test",
                {s.name: s.team for s in spec.scale_sets()},
            ),
            kube,
            github_clients(spec, settings, metrics),
            AuditLog(redis),
            metrics,
            Tuning(resync_seconds=3600),
        )
        watches = [asyncio.ensure_future(provisioner._watch(ns)) for ns in provisioner.namespaces]
        try:
            while not provisioner.synced():
                await asyncio.sleep(0.05)
            return await body(provisioner, Reaper(provisioner, **reaper))
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await kube.aclose()
            for github in provisioner.github.values():
                await github.aclose()
            await redis.aclose()

    return asyncio.run(main())


def _facts(platform: Platform) -> Any:
    from controller.model import RuntimeFacts

    return RuntimeFacts.model_validate_json((platform.workdir / "runtime.json").read_text())


def _scale_set(platform: Platform, name: str) -> ScaleSet:
    return next(s for s in platform.spec.scale_sets() if s.name == name)


def _register(platform: Platform, scale_set: ScaleSet, name: str, group: str | None = None) -> Any:
    world = platform.emulators[scale_set.instance].world
    group_id = next(
        g.id for g in world.org_groups(scale_set.org) if g.name == (group or scale_set.runner_group)
    )
    reply = world.generate_jit(
        scale_set.org, {"name": name, "runner_group_id": group_id, "labels": list(scale_set.labels)}
    )
    return reply


def _core(platform: Platform) -> Any:
    return client.CoreV1Api(platform.plane.api_client())


def _audited(platform: Platform, reason: str) -> list[dict[str, Any]]:
    records = iter_records(platform.redis(), decision="reaped", limit=1000)
    return [r for r in records if str(r.get("reason", "")).startswith(reason)]


def test_a_registration_without_a_pod_is_removed_on_the_second_sighting_only_if_ours(
    platform: Platform,
) -> None:
    warm = _scale_set(platform, "web-warm")
    world = platform.emulators["cloud"].world
    world.add_runner_group("acme-corp", "humans")
    orphan = _register(platform, warm, "web-warm-orph1")["runner"]["id"]
    human = _register(platform, warm, "web-warm-hum4n", group="humans")["runner"]["id"]
    other = _register(platform, warm, "build-box-1")["runner"]["id"]

    async def body(_: Provisioner, reaper: Reaper) -> tuple[dict[str, int], dict[str, int]]:
        return await reaper.reap_once(), await reaper.reap_once()

    first, second = run_with(platform, body)
    assert first.get("no-pod", 0) == 0  # first sighting: its pod may be being created
    assert second["no-pod"] == 1
    assert orphan not in world.runners
    assert human in world.runners  # named like ours, but in another runner group
    assert other in world.runners  # in the team's group, but not named like ours
    assert _audited(platform, "no-pod: registration web-warm-orph1")


def test_a_jit_secret_without_a_pod_is_removed_and_one_with_its_pod_is_kept(
    platform: Platform,
) -> None:
    warm = _scale_set(platform, "web-warm")
    core = _core(platform)
    facts = _facts(platform)
    core.create_namespaced_secret("runners-web", jit_secret(warm, "web-warm-lone1", "x"))
    kept_pod = runner_pod(platform.spec, facts, warm, "web-warm-kept1", 0)
    kept_pod["spec"]["nodeSelector"] = {"pool": "a-pool-with-no-nodes"}  # Pending: not reaped
    pod = core.create_namespaced_pod("runners-web", kept_pod)
    kept = jit_secret(warm, "web-warm-kept1", "y")
    kept["metadata"]["ownerReferences"] = [
        secret_owner_reference({"metadata": {"name": pod.metadata.name, "uid": pod.metadata.uid}})
    ]
    core.create_namespaced_secret("runners-web", kept)

    removed = run_with(platform, lambda _, reaper: reaper.reap_once(), startup_grace=0)
    assert removed.get("orphan-secret") == 1
    names = {s.metadata.name for s in platform.secrets("runners-web")}
    assert "web-warm-lone1" not in names
    assert "web-warm-kept1" in names
    assert _audited(platform, "orphan-secret: secret runners-web/web-warm-lone1")
    core.delete_namespaced_pod("web-warm-kept1", "runners-web", grace_period_seconds=0)
    core.delete_namespaced_secret("web-warm-kept1", "runners-web")


def test_a_pod_whose_node_never_came_is_reaped_with_its_registration(platform: Platform) -> None:
    highmem = _scale_set(platform, "ml-highmem")
    runner = _register(platform, highmem, "ml-highmem-nonod")["runner"]
    pod = runner_pod(platform.spec, _facts(platform), highmem, "ml-highmem-nonod", runner["id"])
    pod["spec"]["nodeSelector"] = {"pool": "a-pool-with-no-nodes"}  # stays Pending
    _core(platform).create_namespaced_pod("runners-ml", pod)

    removed = run_with(platform, lambda _, reaper: reaper.reap_once(), pending_timeout=0)
    assert removed.get("pending-timeout") == 1
    assert runner["id"] not in platform.emulators["ghes"].world.runners
    platform.wait(
        lambda: all(p.metadata.name != "ml-highmem-nonod" for p in platform.pods()),
        30,
        "the pending pod gone",
    )


def test_a_runner_that_never_came_online_is_reaped_but_a_busy_one_never_is(
    platform: Platform,
) -> None:
    warm = _scale_set(platform, "web-warm")
    world = platform.emulators["cloud"].world
    core = _core(platform)
    facts = _facts(platform)
    # One runner whose JIT Secret never existed: its pod runs, its runner never connects.
    silent = _register(platform, warm, "web-warm-mute1")["runner"]["id"]
    core.create_namespaced_pod(
        "runners-web", runner_pod(platform.spec, facts, warm, "web-warm-mute1", silent)
    )
    # One runner that comes online (the stand-in) and takes a job: busy.
    busy = _register(platform, warm, "web-warm-busy1")
    created = core.create_namespaced_pod(
        "runners-web",
        runner_pod(platform.spec, facts, warm, "web-warm-busy1", busy["runner"]["id"]),
    )
    secret = jit_secret(warm, "web-warm-busy1", busy["encoded_jit_config"])
    secret["metadata"]["ownerReferences"] = [
        secret_owner_reference(
            {"metadata": {"name": "web-warm-busy1", "uid": created.metadata.uid}}
        )
    ]
    core.create_namespaced_secret("runners-web", secret)
    job = world.queue_job("acme-corp", "acme-corp/storefront", ["self-hosted", "web"], "alice")
    platform.wait(lambda: world.jobs[job.id].status == "in_progress", 60, "the job on a runner")
    assert world.jobs[job.id].runner is not None
    platform.wait(
        lambda: all(
            p.status.phase == "Running"
            for p in platform.pods("web-warm")
            if p.metadata.name in ("web-warm-mute1", "web-warm-busy1")
        ),
        30,
        "both pods running",
    )

    async def body(provisioner: Provisioner, reaper: Reaper) -> tuple[dict[str, int], bool]:
        removed = await reaper.reap_once()
        pod = provisioner.cache.get("runners-web", "web-warm-busy1")
        assert pod is not None
        # Even asked directly, a retirement stops at GitHub's refusal: the job runs on.
        retired = await provisioner.retire(pod, "surplus-idle")
        return removed, retired

    removed, retired = run_with(
        platform, body, startup_grace=0, pending_timeout=0, idle_allowance=0
    )
    runner = world.jobs[job.id].runner
    assert runner is not None and runner.name == "web-warm-busy1"
    # The busy runner looked idle past its allowance to this reaper (no listener feeds it
    # here), so it tried to retire it, and GitHub's refusal kept pod and registration.
    assert removed == {"never-online": 1}
    assert silent not in world.runners
    assert retired is False
    assert "web-warm-busy1" in {p.metadata.name for p in platform.live_pods("web-warm")}
    assert busy["runner"]["id"] in world.runners
    world.complete_job(job.id, "success")


def test_no_runner_is_registered_in_a_group_that_other_repositories_may_use(
    platform: Platform,
) -> None:
    # GitHub hands a job to any idle runner of a group the job's repository may use: a web
    # runner in a group open to the org would run any repository's job as team web.
    from controller.provision.jit import JitError

    warm = _scale_set(platform, "web-warm")
    world = platform.emulators["cloud"].world
    group = next(g for g in world.org_groups("acme-corp") if g.name == "web")
    before = len(world.org_runners("acme-corp"))

    async def attempt(provisioner: Provisioner, _: Reaper) -> str:
        try:
            await provisioner._jit(warm)
        except JitError as error:
            return str(error)
        return "registered"

    try:
        group.visibility = "all"
        refused_open = run_with(platform, attempt)
        group.visibility = "selected"
        group.selected_repositories = ("acme-corp/storefront", "acme-corp/payments-admin")
        refused_foreign = run_with(platform, attempt)
        group.selected_repositories = ("acme-corp/storefront", "acme-corp/web-shop")
        allowed = run_with(platform, attempt)
    finally:
        group.visibility = "selected"
        group.selected_repositories = ("acme-corp/storefront", "acme-corp/web-shop")
    assert refused_open.startswith("runner group 'web' in acme-corp is visible to all")
    assert "open to acme-corp/payments-admin, which is not one of team 'web''s" in refused_foreign
    assert allowed == "registered"
    assert len(world.org_runners("acme-corp")) == before + 1  # only the allowed one
