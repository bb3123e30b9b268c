"""The Pod Provisioner: level-triggered, per scale set.

Each pass over a scale set reads demand from Redis (jobs queued and not started, busy
runners; see :mod:`controller.provision.demand`) and supply from the pod cache (the
scale set's runner pods that are not finishing, plus those being created right now):

    desired = busy + queued + min_idle
    create  = min(desired - supply, team's max_runners headroom, pool limits headroom)

and creates that many JIT runners (a bounded number at once), or retires surplus idle
runners that have been idle for the grace period. Everything is counted, nothing is bound
to a job, so a restart, a duplicate event or a replayed stream cannot double a runner.
Passes run when demand or a pod changes, and at least every ``resync`` seconds.

A finished runner pod (Succeeded/Failed) is cleaned up as soon as the watch shows it: pod
and Secret deleted, the runner registration deleted if it still exists, the outcome
recorded. Orphans of every other kind are the reaper's (:mod:`controller.provision.reaper`).
On :meth:`Provisioner.stop` (SIGTERM) no runner is created any more; running jobs are
left alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.audit import AuditLog, AuditRecord, AuditUnavailable
from controller.errors import GitHubError, GitHubUnavailable, RateLimited, retry_delay
from controller.github_client import GitHubClient
from controller.metrics import Metrics
from controller.model import PlatformSpec, RuntimeFacts, ScaleSet, Share, runner_requests
from controller.provision import jit
from controller.provision.cache import STATES, PodCache, RunnerPod, lean
from controller.provision.demand import Applied, Demand, DemandStore, job_time
from controller.provision.fairshare import Claim, Resources, entitlements
from controller.provision.kube import Conflict, KubeApi, KubeError
from controller.provision.pod import (
    jit_secret,
    runner_pod,
    secret_owner_reference,
    selector,
)
from controller.quantity import parse_quantity

log = logging.getLogger(__name__)
# A loop this long without coming round is stalled (its calls are bounded far below).
STALLED_AFTER_SECONDS = 120.0
PASS_STALLED_AFTER_SECONDS = 3600.0


@dataclass(frozen=True)
class Tuning:
    """How hard and how often the provisioner acts (from Settings)."""

    write_concurrency: int = 32
    resync_seconds: float = 5.0
    idle_grace_seconds: float = 60.0
    github_retries: int = 3
    github_backoff_seconds: float = 0.5


class Provisioner:
    def __init__(
        self,
        spec: PlatformSpec,
        facts: RuntimeFacts,
        redis_demand: DemandStore,
        kube: KubeApi,
        github: dict[str, GitHubClient],
        audit: AuditLog,
        metrics: Metrics,
        tuning: Tuning = Tuning(),
        clock: Callable[[], float] = time.time,
        may_act: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.spec = spec
        self.facts = facts
        self.demand_store = redis_demand
        self.kube = kube
        self.github = github
        self.audit = audit
        self.metrics = metrics
        self.tuning = tuning
        self.clock = clock
        # This replica holds the scale set's Lease (leader.py): checked before each batch
        # of writes for that scale set.
        self.may_act = may_act
        self.scale_sets = {s.name: s for s in spec.scale_sets()}
        self.teams = {t.name: t for t in spec.teams}
        self.pools = {p.name: p for p in spec.pools}
        self.groups = jit.RunnerGroups()
        self.cache = PodCache(self._pod_changed, accept=self._ours)
        self.inflight: dict[str, int] = dict.fromkeys(self.scale_sets, 0)
        self.inflight_names: set[str] = set()
        self.writes = asyncio.Semaphore(tuning.write_concurrency)
        self.stopping = False
        self.backoff_until: dict[str, float] = {}  # scale set -> monotonic time
        self.demand_since: dict[str, float] = {}  # pod name -> when its demand was queued
        self.cleaning: set[tuple[str, str]] = set()
        # Pods this replica deleted (or is deleting): their DELETED event is no loss.
        self.removing: set[tuple[str, str]] = set()
        self.surplus_since: dict[str, float] = {}  # scale set -> when its surplus began
        self.wanted: dict[str, int] = {}  # scale set -> its last pass's desired (fair share)
        self._dirty: set[str] = set()
        self._consumed_at = time.monotonic()  # the demand consumer's last round (watchdog)
        self._pass_began: dict[str, float] = {}  # scale set -> when its running pass began
        self._wake = asyncio.Event()
        self._passes: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.namespaces = sorted({t.namespace for t in spec.teams})
        # Building every scale set's pod once refuses to start on a pod that cannot be
        # built (a team missing from the runtime facts), instead of finding out after a
        # registration was made, every pass.
        for name, s in self.scale_sets.items():
            runner_pod(spec, facts, s, f"{name}-check", 1)
        # What one runner counts against its pool's limits (cpu, memory, GPUs: sidecars
        # included, GPUs with the runner whichever pod holds them) — the model's figure,
        # the one the stack's fair-share minimums were checked with.
        self.runner_requests = {
            name: runner_requests(self.teams[s.team], self.pools[s.pool])
            for name, s in self.scale_sets.items()
        }

    # -- running --

    async def run(self) -> None:
        """Watch pods, consume demand and reconcile until :meth:`stop` or cancellation."""
        await self.demand_store.ensure_groups()
        loops = [
            *(self._watch(namespace) for namespace in self.namespaces),
            self._consume_demand(),
            self._reconcile_loop(),
            self._watchdog(),
        ]
        await asyncio.gather(*loops)

    async def _watchdog(self, stalled_after: float = STALLED_AFTER_SECONDS) -> None:
        """A stalled loop is a dead one: if the demand consumer has not come round for
        ``stalled_after`` seconds (it bounds its own calls far below that), or a scale set's
        pass has not ended in an hour, end the process — its peers, or the restarted
        container, take over. A Redis read that never returned after a restart was seen."""
        while True:
            await asyncio.sleep(stalled_after / 4)
            stalled = self.stalled(time.monotonic(), stalled_after)
            if stalled:
                raise RuntimeError(stalled)

    def stalled(self, now: float, stalled_after: float = STALLED_AFTER_SECONDS) -> str:
        """What has stalled at monotonic time ``now`` ("" when nothing has)."""
        if now - self._consumed_at > stalled_after:
            return f"the demand consumer stalled for {stalled_after:.0f}s"
        for name, began in self._pass_began.items():
            # A pass may retire many runners at GitHub's pace (150 a minute under the
            # secondary limit): only one that outlasts any such work is stalled.
            if now - began > PASS_STALLED_AFTER_SECONDS:
                return f"the pass of {name} stalled"
        return ""

    async def stop(self, drain_seconds: float = 20.0) -> None:
        """Create no more runners; wait (bounded) for creations under way to finish, so
        none leaves a registration without its pod. Running jobs are not touched."""
        self.stopping = True
        deadline = time.monotonic() + drain_seconds
        while any(self.inflight.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def mark(self, *scale_sets: str) -> None:
        self._dirty.update(scale_sets)
        self._wake.set()

    def synced(self) -> bool:
        return all(ns in self.cache.synced for ns in self.namespaces)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, namespace: str) -> None:
        # Listed pods become lean records page by page: never 10,000 parsed Pods at once.
        async for kind, obj in self.kube.watch(namespace, "pods", selector(), transform=lean):
            self.cache.apply(namespace, kind, obj)

    def held(self) -> set[str]:
        """The scale sets this replica acts on now."""
        return {name for name in self.scale_sets if self.may_act(name)}

    async def _consume_demand(self) -> None:
        last_claim = 0.0
        failures = 0
        while True:
            self._consumed_at = time.monotonic()
            held = self.held()
            try:
                applied = await self.demand_store.consume(block_ms=1000, only=held)
                if time.monotonic() - last_claim > 30:
                    applied += await self.demand_store.claim_abandoned(only=held)
                    dropped = await self.demand_store.expire_stale(self.clock())
                    if dropped:
                        log.warning("dropped %d jobs queued longer than GitHub keeps them", dropped)
                    last_claim = time.monotonic()
                failures = 0
            except Exception as error:
                # Redis away (a restart, a failover): back off up to 5 s and reconnect; the
                # demand is in Redis, so nothing is acted on from a stale picture meanwhile.
                failures += 1
                delay = retry_delay(failures)
                log.warning("reading demand from Redis failed (%r); retry in %.1fs", error, delay)
                # Every pooled connection may be one the restart left half-open: start over.
                await self.demand_store.reconnect(error)
                await asyncio.sleep(delay)
                continue
            for item in applied:
                self._observe_event(item)
                self.mark(item.scale_set)

    def _observe_event(self, item: Applied) -> None:
        scale_set = self.scale_sets[item.scale_set]
        if item.action == "in_progress" and item.was_pending:
            waited = max(0.0, job_time(item.job, "received_at") - job_time(item.job))
            self.metrics.queue_time.labels(scale_set.team, scale_set.pool).observe(waited)
        elif item.action == "completed":
            conclusion = item.job.get("conclusion") or "unknown"
            self.metrics.jobs_completed.labels(scale_set.team, scale_set.pool, conclusion).inc()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.tuning.resync_seconds)
            except TimeoutError:
                self._dirty.update(self.held())  # the periodic level-triggered pass
            self._wake.clear()
            if not self.synced():
                continue  # never act on a partial picture of the pods
            dirty, self._dirty = self._dirty, set()
            for name in dirty:
                running = self._passes.get(name)
                if running is not None and not running.done():
                    self._dirty.add(name)  # one pass per scale set at a time; run again after
                    continue
                self._passes[name] = asyncio.ensure_future(self._pass_safely(name))
            if self._dirty:
                await asyncio.sleep(0.01)
                self._wake.set()

    async def _pass_safely(self, name: str) -> None:
        if not self.may_act(name):
            return  # another replica's scale set
        self._pass_began[name] = time.monotonic()
        try:
            demand = (await self.demand_store.demand([name]))[name]
            await self.reconcile(self.scale_sets[name], demand)
            self.metrics.provision_passes.labels(name, "ok").inc()
        except Exception:
            self.metrics.provision_passes.labels(name, "error").inc()
            log.exception("reconciling scale set %s failed", name)
        finally:
            self._pass_began.pop(name, None)

    # -- one pass --

    def counts(self, scale_set: ScaleSet, busy: dict[str, str]) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for pod in self.cache.of(scale_set.name):
            counts[self.state(pod, busy)] += 1
        return counts

    @staticmethod
    def state(pod: RunnerPod, busy: dict[str, str]) -> str:
        if pod.finishing:
            return "finishing"
        if pod.name in busy:  # GitHub said so: trust it over a watch event still on its way
            return "busy"
        return "idle" if pod.running else "pending"

    async def reconcile(self, scale_set: ScaleSet, demand: Demand) -> int:
        """One pass; returns how many runners it started creating (negative: retired)."""
        team = self.teams[scale_set.team]
        counts = self.counts(scale_set, demand.busy)
        for state, count in counts.items():
            self.metrics.runners.labels(scale_set.team, scale_set.pool, state).set(count)
        alive = counts["pending"] + counts["idle"] + counts["busy"]
        supply = alive + self.inflight[scale_set.name]
        desired = self._wish(scale_set, counts["busy"], demand.queued)
        self.metrics.desired_runners.labels(scale_set.name).set(desired)
        self.metrics.actual_runners.labels(scale_set.name).set(supply)
        self.wanted[scale_set.name] = desired  # what it asks of its pool's fair share
        if not self.may_act(scale_set.name):
            return 0
        if desired >= supply:
            self.surplus_since.pop(scale_set.name, None)
        if desired > supply:
            if self.stopping or time.monotonic() < self.backoff_until.get(scale_set.name, 0.0):
                return 0
            await self._peer_wishes(scale_set)  # the pool's scale sets other replicas hold
            room = min(desired - supply, self._team_room(team.name), self._pool_room(scale_set))
            if room <= 0:
                return 0
            log.info(
                "%s: creating %d runners (desired %d, supply %d, busy %d, queued %d)",
                scale_set.name,
                room,
                desired,
                supply,
                counts["busy"],
                demand.queued,
            )
            # Counted in flight before the await below: a pass of another scale set of this
            # team or pool that runs meanwhile must see these runners in its room.
            self.inflight[scale_set.name] += room
            covered = max(0, supply - counts["busy"])  # oldest jobs already have a runner
            queued_at = await self.demand_store.queued_times(scale_set.name, covered, room)
            for index in range(room):
                queued = queued_at[index] if index < len(queued_at) else None
                self._spawn(self._create(scale_set, queued))
            return room
        if desired < supply:
            # Only a surplus that lasts the grace period is retired: demand that dips for a
            # moment (a job starting while the next is queued) keeps its runners.
            began = self.surplus_since.setdefault(scale_set.name, self.clock())
            if self.clock() - began >= self.tuning.idle_grace_seconds:
                return -await self._retire_surplus(scale_set, supply - desired, demand.busy)
            return 0
        return 0

    def _team_room(self, team_name: str) -> int:
        team = self.teams[team_name]
        used = 0
        for scale_set in self.scale_sets.values():
            if scale_set.team == team_name:
                used += self.inflight[scale_set.name]
                used += sum(1 for p in self.cache.of(scale_set.name) if not p.finishing)
        return max(0, team.max_runners - used)

    def _wish(self, scale_set: ScaleSet, busy: int, queued: int) -> int:
        """The runners a scale set wants: busy + queued + its idle floor, at most the
        team's max_runners. min_idle keeps warm runners on the team's first pool, where
        bare [self-hosted, linux] jobs land (routing.py), not on every pool it may use."""
        team = self.teams[scale_set.team]
        idle_floor = team.min_idle if scale_set.pool == team.pools[0] else 0
        return min(team.max_runners, busy + queued + idle_floor)

    async def _peer_wishes(self, scale_set: ScaleSet) -> None:
        """What the pool's scale sets that another replica acts on want (their passes do
        not run here), from their demand in Redis and their pods in the cache: the fair
        share of the pool counts every team on it. A failed read keeps the last known."""
        peers = [
            other
            for other in self.scale_sets.values()
            if other.pool == scale_set.pool
            and other.name != scale_set.name
            and not self.may_act(other.name)
        ]
        if not peers:
            return
        try:
            demands = await self.demand_store.demand([other.name for other in peers])
        except Exception as error:
            log.warning("reading the demand on pool %s failed: %s", scale_set.pool, error)
            return
        for other in peers:
            demand = demands[other.name]
            busy = self.counts(other, demand.busy)["busy"]
            self.wanted[other.name] = self._wish(other, busy, demand.queued)

    def _pool_room(self, scale_set: ScaleSet) -> int:
        """How many more of this team's runners fit under the pool's limits (every team's
        runners on the pool count, those being created too), and, on a pool at its
        limits, within the team's fair share of it (:meth:`_fair_room`)."""
        pool = self.pools[scale_set.pool]
        usage = self._pool_usage(pool.name)
        used = [sum(u[1][i] for u in usage.values()) for i in range(3)]
        limits = self._pool_limits(pool.name)
        need = self.runner_requests[scale_set.name]
        room = [
            math.floor((limit - spent) / amount)
            for limit, spent, amount in zip(limits, used, need, strict=True)
            if amount > 0 and limit != math.inf
        ]
        free = max(0, min(room, default=10**9))
        return min(free, self._fair_room(scale_set, usage, limits))

    def _pool_limits(self, pool_name: str) -> Resources:
        pool = self.pools[pool_name]
        return (
            float(pool.limits.cpu),
            float(parse_quantity(pool.limits.memory)),
            float(pool.limits.gpu) if pool.limits.gpu is not None else math.inf,
        )

    def _pool_usage(self, pool_name: str) -> dict[str, tuple[int, Resources]]:
        """Per scale set on the pool: its runners (not finishing, plus being created) and
        what they request (cpu cores, memory bytes, GPUs)."""
        usage: dict[str, tuple[int, Resources]] = {}
        for other in self.scale_sets.values():
            if other.pool != pool_name:
                continue
            runners = [p.requests for p in self.cache.of(other.name) if not p.finishing]
            runners += [self.runner_requests[other.name]] * self.inflight[other.name]
            gpus = self.runner_requests[other.name][2]
            usage[other.name] = (
                len(runners),
                (
                    sum(r[0] for r in runners),
                    sum(r[1] for r in runners),
                    float(gpus * len(runners)),
                ),
            )
        return usage

    def _fair_room(
        self,
        scale_set: ScaleSet,
        usage: dict[str, tuple[int, Resources]],
        limits: Resources,
    ) -> int:
        """The team's entitlement on the pool (max-min fair by weight, ``pools[].shares``;
        see :mod:`controller.provision.fairshare`) minus the runners it has. What each
        other team wants is its own last pass's desired count (a scale set not passed
        yet wants what it has); with no count yet for ``scale_set`` itself, it asks for
        all the pool could give. When every team's wish fits, this is the wish itself:
        fair share only shapes a pool at its limits (and a share's max always caps)."""
        pool = self.pools[scale_set.pool]
        claims = []
        for name, (count, used) in usage.items():
            other = self.scale_sets[name]
            wanted = self.wanted.get(name)
            if wanted is None:
                wanted = 10**9 if name == scale_set.name else count
            share = pool.shares.get(other.team, Share())
            cpu, memory, gpus = self.runner_requests[name]
            claims.append(
                Claim(
                    team=other.team,
                    current=count,
                    want=wanted,
                    per_runner=(cpu, memory, float(gpus)),
                    weight=share.weight,
                    min=share.min,
                    max=share.max,
                    used=used,
                )
            )
        entitled = entitlements(limits, claims)
        if pool.shares or len(claims) > 1:
            for team, count in entitled.items():
                self.metrics.fair_share.labels(pool.name, team).set(count)
        return max(0, entitled[scale_set.team] - usage[scale_set.name][0])

    # -- creating a runner --

    async def _create(self, scale_set: ScaleSet, queued_at: float | None) -> None:
        try:
            async with self.writes:
                if self.stopping or not self.may_act(scale_set.name):
                    return
                if time.monotonic() < self.backoff_until.get(scale_set.name, 0.0):
                    return  # a sibling hit a limit or an error: the next pass tries again
                await self._create_runner(scale_set, queued_at)
        except RateLimited as error:
            self.metrics.jit_configs.labels(scale_set.instance, "rate_limited").inc()
            self._back_off(scale_set, error.retry_after, str(error))
        except (GitHubError, KubeError) as error:
            self.metrics.jit_configs.labels(scale_set.instance, "error").inc()
            self._back_off(scale_set, 2.0, str(error))
        except AuditUnavailable as error:  # Redis away: demand is there too; wait for it
            self._back_off(scale_set, 2.0, str(error))
        except Exception:
            log.exception("creating a runner for %s failed", scale_set.name)
            self._back_off(scale_set, 2.0, "unexpected error")
        finally:
            self.inflight[scale_set.name] -= 1
            self.mark(scale_set.name)

    def _back_off(self, scale_set: ScaleSet, seconds: float, reason: str) -> None:
        until = time.monotonic() + seconds
        if until > self.backoff_until.get(scale_set.name, 0.0):
            self.backoff_until[scale_set.name] = until
            log.warning("scale set %s backs off %.1fs: %s", scale_set.name, seconds, reason)

    async def _jit(self, scale_set: ScaleSet) -> jit.JitRunner:
        client = self.github[scale_set.instance]
        for attempt in range(1, self.tuning.github_retries + 1):
            try:
                claims = self.teams[scale_set.team].claims_repository
                runner = await jit.generate(client, self.groups, scale_set, claims)
                self.metrics.jit_configs.labels(scale_set.instance, "created").inc()
                return runner
            except GitHubUnavailable:
                self.metrics.jit_configs.labels(scale_set.instance, "unavailable").inc()
                if attempt == self.tuning.github_retries:
                    raise
                await asyncio.sleep(self.tuning.github_backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _create_runner(self, scale_set: ScaleSet, queued_at: float | None) -> None:
        runner = await self._jit(scale_set)
        team = self.teams[scale_set.team]
        namespace = team.namespace
        self.inflight_names.add(runner.name)

        def held() -> bool:
            return self.may_act(scale_set.name)

        try:
            if not held():  # the Lease went while GitHub answered: hand over clean
                await self._delete_registration(scale_set, runner.runner_id)
                return
            # Recorded before the pod exists: a process killed after this leaves a record
            # and at most a registration without a pod, which the reaper removes (and
            # records); never a pod nobody recorded. No record (Redis away): no pod.
            try:
                await self._record(
                    scale_set,
                    "runner-created",
                    f"pod {runner.name} runner {runner.runner_id}",
                    "create",
                    required=True,
                )
            except AuditUnavailable:
                await self._delete_registration(scale_set, runner.runner_id)
                raise
            pod = runner_pod(self.spec, self.facts, scale_set, runner.name, runner.runner_id)
            try:
                created = await self.kube.create(namespace, "pods", pod, guard=held)
            except Conflict:  # a retried create whose first attempt got through
                created = await self.kube.get(namespace, "pods", runner.name)
            except KubeError:
                # An attempt may have created the pod before its reply was lost: left, it
                # would count as supply for a runner that never starts until the reaper's
                # timeout. The name is this registration's own, so delete by name.
                try:
                    self.removing.add((namespace, runner.name))
                    if not await self.kube.delete(namespace, "pods", runner.name):
                        self.removing.discard((namespace, runner.name))  # never created
                except KubeError:
                    pass  # still failing: the reaper's
                await self._abandon(scale_set, runner, "its pod was not created")
                raise
            record = lean(created)
            if record is not None:
                self.cache.put(record)
            now = self.clock()
            if queued_at is not None:
                self.demand_since[runner.name] = queued_at
                self.metrics.pod_created.labels(scale_set.team, scale_set.pool).observe(
                    max(0.0, now - queued_at)
                )
            secret = jit_secret(scale_set, runner.name, runner.encoded_jit_config)
            secret["metadata"]["ownerReferences"] = [secret_owner_reference(created)]
            try:
                await self.kube.create(namespace, "secrets", secret, guard=held)
            except Conflict:
                pass  # created by an earlier attempt of this same request
            except KubeError:
                # Without its Secret the pod can never start: undo all of it now.
                self.removing.add((namespace, runner.name))
                await self.kube.delete(
                    namespace, "pods", runner.name, uid=created["metadata"]["uid"]
                )
                await self._abandon(scale_set, runner, "its Secret was not created")
                raise
        finally:
            self.inflight_names.discard(runner.name)

    async def _abandon(self, scale_set: ScaleSet, runner: jit.JitRunner, why: str) -> None:
        """Undo a recorded creation that did not complete: the registration goes (if this
        replica may still touch it; else the reaper's), and its end is on the record."""
        outcome = await self._delete_registration(scale_set, runner.runner_id)
        await self._record(
            scale_set, "runner-abandoned", f"pod {runner.name}: {why}; registration {outcome}"
        )

    async def _record(
        self,
        scale_set: ScaleSet,
        decision: str,
        reason: str,
        action: str = "cleanup",
        *,
        job_id: int | None = None,
        required: bool = False,
    ) -> None:
        """One audit record of what happened to a runner of ``scale_set``."""
        await self.audit.record(
            AuditRecord(
                decision=decision,
                reason=reason,
                instance=scale_set.instance,
                org=scale_set.org,
                job_id=job_id,
                scale_set=scale_set.name,
                team=scale_set.team,
                action=action,
            ),
            required=required,
        )

    # -- pods changing --

    def _ours(self, pod: RunnerPod) -> bool:
        """A scale set's runner lives in its team's namespace: a pod elsewhere that carries
        the label (anyone who may create pods in some team namespace can write one) is not
        supply, uses no pool room, and names no registration this provisioner touches."""
        scale_set = self.scale_sets.get(pod.scale_set)
        return scale_set is not None and self.teams[scale_set.team].namespace == pod.namespace

    def _pod_changed(self, old: RunnerPod | None, new: RunnerPod | None) -> None:
        pod = new or old
        assert pod is not None
        if pod.scale_set not in self.scale_sets:
            return
        if new is not None and new.running and (old is None or not old.running):
            queued = self.demand_since.get(new.name)
            if queued is not None:
                scale_set = self.scale_sets[new.scale_set]
                self.metrics.pod_start.labels(scale_set.team, scale_set.pool).observe(
                    max(0.0, self.clock() - queued)
                )
        if new is not None and new.done and not new.deleting and self.may_act(new.scale_set):
            key = (new.namespace, new.name)
            if key not in self.cleaning:
                self.cleaning.add(key)
                self._spawn(self.finish(new, "succeeded" if new.phase == "Succeeded" else "failed"))
        if new is None:
            self.demand_since.pop(pod.name, None)
            key = (pod.namespace, pod.name)
            ours = key in self.removing or key in self.cleaning
            self.removing.discard(key)
            if not ours and not pod.done and self.may_act(pod.scale_set):
                # Deleted by someone else while it could run a job: its node went (spot
                # interruption, node loss and the pod GC), or a person deleted it.
                self._spawn(self.lost(pod))
        self.mark(pod.scale_set)

    async def finish(self, pod: RunnerPod, reason: str, *, registration: bool = True) -> None:
        """A runner is done (or must go): pod, Secret and registration removed, recorded."""
        scale_set = self.scale_sets[pod.scale_set]
        self.removing.add((pod.namespace, pod.name))
        try:
            await asyncio.gather(
                self.kube.delete(pod.namespace, "pods", pod.name, uid=pod.uid),
                self.kube.delete(pod.namespace, "secrets", pod.name),
            )
            if pod.runner_id and registration:
                await self._delete_registration(scale_set, pod.runner_id, name=pod.name)
            try:
                await self.demand_store.forget_busy(pod.scale_set, pod.name)
            except Exception as error:  # Redis away: the reaper's busy pass mends it
                log.warning("forgetting %s as busy failed: %s", pod.name, error)
            await self._record(
                scale_set,
                "runner-finished" if reason in ("succeeded", "failed") else "reaped",
                f"{reason}: pod {pod.name} exit {pod.exit_code}",
            )
            if reason not in ("succeeded",):
                self.metrics.reaped.labels(reason, "pod").inc()
        except (KubeError, GitHubError) as error:
            log.warning("cleaning up runner %s failed (%s); the reaper retries", pod.name, error)
        finally:
            self.cleaning.discard((pod.namespace, pod.name))

    async def lost(self, pod: RunnerPod) -> None:
        """A runner pod that went without finishing (its node was lost): the Secret and
        the registration go (GitHub refuses while it still counts the runner busy; the
        reaper removes it once the job has failed), the runner is busy no more, and the
        job's fate is recorded. A re-run is a new job and is served like any other."""
        scale_set = self.scale_sets[pod.scale_set]
        job = ""
        outcome = "none"
        try:
            job = await self.demand_store.busy_job(pod.scale_set, pod.name)
            await self.kube.delete(pod.namespace, "secrets", pod.name)
            if pod.runner_id:
                outcome = await self._delete_registration(scale_set, pod.runner_id, name=pod.name)
            await self.demand_store.forget_busy(pod.scale_set, pod.name)
        except Exception as error:  # the API, GitHub or Redis away: recorded all the same
            outcome = f"error ({type(error).__name__}); the reaper retries"
        self.metrics.reaped.labels("lost", "pod").inc()
        try:
            await self._record(
                scale_set,
                "runner-lost",
                f"pod {pod.name} on node {pod.node or '-'} gone while "
                f"{'running job ' + job if job else 'idle'}; registration {outcome}",
                job_id=int(job) if job.isdigit() else None,
            )
        except Exception:
            log.exception("auditing the loss of %s failed", pod.name)

    async def _delete_registration(
        self,
        scale_set: ScaleSet,
        runner_id: int,
        *,
        name: str | None = None,
    ) -> str:
        """Remove a runner registration: "deleted", "gone" or "busy" (GitHub refuses to
        delete a runner that is running a job: that runner is not retired). With ``name``,
        only a registration of that name: a runner id read from a pod annotation is not
        trusted to name one of this scale set's runners."""
        client = self.github[scale_set.instance]
        if name is not None:  # a GET costs 1 point, a DELETE 5
            reply = await client.runner(scale_set.org, runner_id)
            if reply.status == 404:
                return "gone"
            if reply.status == 200 and name is not None and reply.body.get("name") != name:
                log.warning("runner %s is not %s: its registration is left alone", runner_id, name)
                return "gone"
            if reply.status == 200 and reply.body.get("busy"):
                return "busy"
            if not self.may_act(scale_set.name):
                return "busy"  # not ours to touch any more: leave it as if in use
        reply = await client.delete_runner(scale_set.org, runner_id)
        if reply.status in (200, 204):
            return "deleted"
        if reply.status == 404:
            return "gone"
        if reply.status in (409, 422):
            return "busy"
        raise GitHubUnavailable(f"delete runner {runner_id}: GitHub answered {reply.status}")

    # -- scaling down --

    async def _retire_surplus(self, scale_set: ScaleSet, surplus: int, busy: dict[str, str]) -> int:
        now = self.clock()
        grace = self.tuning.idle_grace_seconds
        candidates = [
            pod
            for pod in self.cache.of(scale_set.name)
            if not pod.finishing
            and pod.name not in busy
            and (pod.namespace, pod.name) not in self.cleaning
            and now - (pod.running_since or pod.created) >= grace
        ]
        # Pending pods first (no runner has come up there yet), then the longest idle.
        candidates.sort(key=lambda p: (p.running, p.running_since or p.created))

        async def retire_one(pod: RunnerPod) -> bool:
            async with self.writes:  # as many at once as creations, no more
                if self.stopping or not self.may_act(scale_set.name):
                    return False  # shutting down or handed over: the next holder retires
                return await self.retire(pod, "surplus-idle")

        results = await asyncio.gather(*(retire_one(pod) for pod in candidates[:surplus]))
        return sum(results)

    async def retire(self, pod: RunnerPod, reason: str) -> bool:
        """Retire a runner that is not busy: registration first (GitHub refuses if a job
        has just started on it, and then the pod is left alone), then pod and Secret."""
        scale_set = self.scale_sets[pod.scale_set]
        key = (pod.namespace, pod.name)
        if key in self.cleaning:
            return False
        self.cleaning.add(key)
        try:
            if pod.runner_id:
                outcome = await self._delete_registration(scale_set, pod.runner_id, name=pod.name)
                if outcome == "busy":
                    self.cleaning.discard(key)
                    return False
        except GitHubError as error:
            log.warning("could not retire %s: %s", pod.name, error)
            self.cleaning.discard(key)
            return False
        await self.finish(pod, reason, registration=False)
        return True
