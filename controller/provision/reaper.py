"""The reaper: on a schedule, remove what the event-driven path missed.

Each pass looks for, and removes (each action audited and counted by reason):

``pending-timeout``  runner pods Pending longer than ``pending_timeout`` (their node never
                     came); their registration goes too
``finished``         Succeeded/Failed pods the immediate clean-up could not remove
``never-online``     pods running longer than ``startup_grace`` whose runner GitHub still
                     shows offline (it never connected), unless busy
``no-pod``           registrations of this platform's runners (a scale set's name prefix
                     and the team's runner group id, both) with no pod, seen so on two passes in a
                     row (a runner being created right now has its pod a moment later)
``idle-expired``     runners idle for the whole idle allowance of their pod's deadline
                     (``activeDeadlineSeconds`` = job timeout + allowance): a job they
                     took now could be cut short, so a fresh runner replaces them
``orphan-secret``    JIT Secrets with no pod of their name, older than the start-up grace

Nothing a busy runner uses is removed: a registration GitHub reports busy, or that
GitHub refuses to delete because a job just started on it, keeps its pod.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from controller.audit import AuditRecord
from controller.errors import GitHubError
from controller.provision.jit import scale_set_of
from controller.provision.kube import KubeError
from controller.provision.pod import IDLE_ALLOWANCE_SECONDS, selector
from controller.provision.provisioner import Provisioner

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        provisioner: Provisioner,
        *,
        pending_timeout: float = 900.0,
        startup_grace: float = 300.0,
        idle_allowance: float = IDLE_ALLOWANCE_SECONDS,
    ) -> None:
        self.p = provisioner
        self.pending_timeout = pending_timeout
        self.startup_grace = startup_grace
        self.idle_allowance = idle_allowance
        self._suspects: set[tuple[str, str, int]] = set()  # (instance, org, runner id)

    async def run(self, interval: float) -> None:
        import asyncio

        while True:
            await asyncio.sleep(interval)
            if not self.p.synced() or not self.p.held():
                continue  # a partial picture, or no scale set of this replica's
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed; trying again next interval")

    async def reap_once(self) -> dict[str, int]:
        """One pass; returns how many objects it removed by reason."""
        removed: dict[str, int] = {}
        registrations, complete = await self._registrations()
        now = self.p.clock()
        held = sorted(self.p.held())  # another replica's scale sets are its own reaper's
        demand = await self.p.demand_store.demand(held)
        for scale_set in (self.p.scale_sets[name] for name in held):
            if not self.p.may_act(scale_set.name):
                continue  # handed over during the pass
            busy = demand[scale_set.name].busy
            await self._rebuild_busy(scale_set, busy, registrations, complete)
            for pod in list(self.p.cache.of(scale_set.name)):
                reason = None
                if (pod.namespace, pod.name) in self.p.cleaning:
                    continue  # the immediate path is on it
                if pod.done and not pod.deleting:
                    reason = "finished"
                elif pod.finishing:
                    continue
                elif not pod.running and now - pod.created > self.pending_timeout:
                    reason = "pending-timeout"
                elif pod.running and pod.name not in busy:
                    if (scale_set.instance, scale_set.org) not in complete:
                        continue  # GitHub's list was cut short: absent is not offline
                    runner = registrations.get((scale_set.instance, scale_set.org, pod.name))
                    started = pod.running_since or pod.created
                    offline = runner is None or (
                        runner.get("status") != "online" and not runner.get("busy")
                    )
                    if now - started > self.startup_grace and offline:
                        reason = "never-online"
                    elif now - started > self.idle_allowance:
                        # The pod's deadline is job timeout + this allowance: a runner idle
                        # longer could have a job cut short, so it makes way for a fresh one.
                        reason = "idle-expired"
                if reason is None:
                    continue
                if reason == "finished":
                    self.p.cleaning.add((pod.namespace, pod.name))  # finish() clears it
                    await self.p.finish(pod, "failed" if pod.phase == "Failed" else "succeeded")
                    ok = True
                else:
                    ok = await self.p.retire(pod, reason)
                if ok:
                    removed[reason] = removed.get(reason, 0) + 1
        removed["no-pod"] = await self._orphan_registrations(registrations, complete)
        removed["orphan-secret"] = await self._orphan_secrets(now)
        return {k: v for k, v in removed.items() if v}

    async def _registrations(
        self,
    ) -> tuple[dict[tuple[str, str, str], dict[str, Any]], set[tuple[str, str]]]:
        """The runner registrations by (instance, org, runner name), and the (instance,
        org) pairs whose listing completed: a listing cut short by a rate limit or an
        outage says nothing about the runners it did not reach."""
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        complete: set[tuple[str, str]] = set()
        orgs = {(s.instance, s.org) for s in self.p.scale_sets.values() if self.p.may_act(s.name)}
        for instance, org in sorted(orgs):
            client = self.p.github[instance]
            page = 1
            while True:
                try:
                    reply = await client.runners(org, page)
                except GitHubError as error:
                    log.warning("listing runners of %s failed: %s", org, error)
                    break
                if reply.status != 200:
                    log.warning("listing runners of %s: GitHub answered %s", org, reply.status)
                    break
                runners = reply.body.get("runners", [])
                for runner in runners:
                    found[(instance, org, str(runner.get("name", "")))] = runner
                if len(runners) < 100:
                    complete.add((instance, org))
                    break
                page += 1
        return found, complete

    async def _rebuild_busy(
        self,
        scale_set: Any,
        busy: dict[str, str],
        registrations: dict[tuple[str, str, str], dict[str, Any]],
        complete: set[tuple[str, str]],
    ) -> None:
        """Busy runners as they are: one whose pod is gone is busy no more; one GitHub says
        is busy and Redis does not know (its ``in_progress`` was lost, or Redis restarted
        without it) is counted busy again, so demand is right and the runner is never taken
        for idle surplus."""
        namespace = self.p.teams[scale_set.team].namespace
        for name in list(busy):  # busy runners whose pod is gone (a clean-up without Redis)
            if self.p.cache.get(namespace, name) is None and name not in self.p.inflight_names:
                await self.p.demand_store.forget_busy(scale_set.name, name)
                del busy[name]
        if (scale_set.instance, scale_set.org) not in complete:
            return
        asked = 0
        for pod in list(self.p.cache.of(scale_set.name)):  # the cache changes meanwhile
            if not pod.running or pod.name in busy:
                continue
            runner = registrations.get((scale_set.instance, scale_set.org, pod.name))
            if runner is None and pod.runner_id and asked < 20:
                # Not in the listing: GitHub's pages are offsets, and a registration deleted
                # meanwhile shifts the next page past one. Ask for this one (1 point).
                asked += 1
                try:
                    reply = await self.p.github[scale_set.instance].runner(
                        scale_set.org, pod.runner_id
                    )
                except GitHubError:
                    continue
                runner = reply.body if reply.status == 200 else None
                if runner is not None and runner.get("name") != pod.name:
                    continue  # the annotation names someone else's registration
            if runner is not None and runner.get("busy") and runner.get("id") == pod.runner_id:
                await self.p.demand_store.mark_busy(scale_set.name, pod.name, "unknown")
                busy[pod.name] = "unknown"
                log.info("runner %s is busy on GitHub: counted busy again", pod.name)

    def _owner(self, instance: str, org: str, name: str) -> str | None:
        """The scale set a runner name belongs to (name = ``<scale set>-<5 chars>``)."""
        scale_set = self.p.scale_sets.get(scale_set_of(name) or "")
        if scale_set is None:
            return None
        if scale_set.instance != instance or scale_set.org != org:
            return None
        return scale_set.name

    async def _orphan_registrations(
        self,
        registrations: dict[tuple[str, str, str], dict[str, Any]],
        complete: set[tuple[str, str]],
    ) -> int:
        removed = 0
        suspects: set[tuple[str, str, int]] = set()
        for (instance, org, name), runner in registrations.items():
            if (instance, org) not in complete:
                continue
            owner = self._owner(instance, org, name)
            if owner is None or runner.get("busy") or not self.p.may_act(owner):
                continue
            namespace = self.p.teams[self.p.scale_sets[owner].team].namespace
            if self.p.cache.get(namespace, name) is not None or name in self.p.inflight_names:
                continue
            scale_set = self.p.scale_sets[owner]
            try:
                group = await self.p.groups.id(self.p.github[instance], org, scale_set.runner_group)
            except GitHubError:
                continue  # the group is unknown right now: never guess
            if runner.get("runner_group_id") != group:
                continue  # named like ours, but not in the team's group: not ours to remove
            key = (instance, org, int(runner["id"]))
            if key not in self._suspects:
                suspects.add(key)  # first sighting: its pod may be being created
                continue
            client = self.p.github[instance]
            try:
                reply = await client.delete_runner(org, key[2])
            except GitHubError as error:
                log.warning("deleting orphan registration %s failed: %s", name, error)
                suspects.add(key)
                continue
            if reply.status in (204, 404):
                removed += 1
                self.p.metrics.reaped.labels("no-pod", "registration").inc()
                await self._audit(owner, "no-pod", f"registration {name} had no pod")
        self._suspects = suspects
        return removed

    async def _orphan_secrets(self, now: float) -> int:
        removed = 0
        held = {self.p.teams[self.p.scale_sets[name].team].namespace for name in self.p.held()}
        for namespace in sorted(held):  # only namespaces of scale sets this replica holds
            try:
                secrets, _ = await self.p.kube.list(namespace, "secrets", selector())
            except KubeError as error:
                log.warning("listing secrets in %s failed: %s", namespace, error)
                continue
            for secret in secrets:
                meta = secret.get("metadata", {})
                name = meta.get("name", "")
                created = _epoch(meta.get("creationTimestamp"))
                if self.p.cache.get(namespace, name) is not None or name in self.p.inflight_names:
                    continue
                if now - created < self.startup_grace:
                    continue
                owner = (meta.get("labels") or {}).get("runner-platform.io/scale-set", "")
                if not self.p.may_act(owner):
                    continue  # another replica's scale set (or no scale set of ours)
                if await self.p.kube.delete(namespace, "secrets", name, uid=meta.get("uid")):
                    removed += 1
                    self.p.metrics.reaped.labels("orphan-secret", "secret").inc()
                    await self._audit(owner, "orphan-secret", f"secret {namespace}/{name}")
        return removed

    async def _audit(self, scale_set_name: str, reason: str, what: str) -> None:
        scale_set = self.p.scale_sets.get(scale_set_name)
        await self.p.audit.record(
            AuditRecord(
                decision="reaped",
                reason=f"{reason}: {what}",
                instance=scale_set.instance if scale_set else "",
                org=scale_set.org if scale_set else "",
                scale_set=scale_set_name,
                team=scale_set.team if scale_set else "",
                action="reap",
            )
        )


def _epoch(text: str | None) -> float:
    if not text:
        return time.time()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
