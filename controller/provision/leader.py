"""Each scale set acted on by exactly one replica, held by a Kubernetes Lease of its own.

Every replica runs ``provision`` and holds a *member* Lease (``runner-member-<identity>``)
that it renews; the live members (those whose Lease record changed within its duration,
on this replica's clock) share the scale sets by rendezvous hashing with bounded load of
the scale set's *team* over the members' identities (:func:`assign`). Every replica
computes the same owner from the same view, the teams are spread evenly, and a team's
scale sets stay together so its ``max_runners`` is counted by one replica.

A scale set's Lease (``runner-set-<scale set>``) is taken by the replica the hash names
once the Lease is free, released by its holder, or expired; a holder that is no longer
the hash's choice releases it (the new owner takes it on its next tick). A holder acts
only before its own deadline — the time its last successful write was *sent*, plus 80 %
of the duration, measured on its own monotonic clock — so a replica that cannot renew
stops acting before another may take over. Expiry follows client-go: a Lease has expired
when its record has not changed for its duration on the observer's clock; no two
machines' clocks are compared. The Lease's resourceVersion decides races.

RBAC: ``leases`` get, list, create, update and delete in the controller's namespace (delete:
a replica's own member Lease on a clean stop, and a dead replica's member Lease once it
has been expired for four durations).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.provision.kube import Conflict, KubeApi, KubeError, NotFound

log = logging.getLogger(__name__)
KIND_LABEL = "runner-platform.io/lease"
SCALE_SET_ANNOTATION = "runner-platform.io/scale-set"
MEMBER_PREFIX = "runner-member-"
SET_PREFIX = "runner-set-"


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(prefix: str, key: str) -> str:
    """A valid, stable Lease name for ``key`` (a DNS-1123 subdomain, at most 63 chars so
    it is also a valid label value): cleaned, with a hash suffix when cleaning changed it."""
    clean = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    name = f"{prefix}{clean}"
    if clean != key or len(name) > 63:
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        name = f"{prefix}{clean[: 63 - len(prefix) - 11]}-{digest}".replace("--", "-")
    return name


def _weight(key: str, member: str) -> bytes:
    return hashlib.sha256(f"{key}\0{member}".encode()).digest()


def assign(keys: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """Rendezvous hashing with bounded load: each key (in sorted order) goes to the member
    that ranks it highest among those with room (floor(keys / members), and one more for
    as many members as the division leaves over). Every replica computes the same map
    from the same members, and the loads differ by at most one."""
    keys, members = sorted(set(keys)), sorted(set(members))
    if not members:
        return {}
    base, extra = divmod(len(keys), len(members))  # ``extra`` members carry one more
    load = dict.fromkeys(members, 0)
    owners: dict[str, str] = {}
    for key in keys:
        ranked = sorted(members, key=lambda m: _weight(key, m), reverse=True)
        owner = next(m for m in ranked if load[m] < base or (load[m] == base and extra > 0))
        if load[owner] == base:
            extra -= 1
        load[owner] += 1
        owners[key] = owner
    return owners


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


@dataclass
class _Seen:
    version: str
    since: float  # monotonic time this replica first saw ``version``


class Shards:
    """The scale sets this replica acts on, kept by :meth:`keep`."""

    def __init__(
        self,
        kube: KubeApi,
        namespace: str,
        identity: str,
        teams: dict[str, str],
        *,
        duration: int = 15,
        renew_seconds: float = 3.0,
        on_change: Callable[[set[str]], None] = lambda _: None,
        in_flight: Callable[[str], bool] = lambda _: False,
    ) -> None:
        if duration < 2 or not 0 < renew_seconds <= duration * 0.4:
            raise ValueError(
                f"lease renewal every {renew_seconds}s with a {duration}s lease: "
                "RUNNER_PLATFORM_LEASE_RENEW must be above 0 and at most 40 % of "
                "RUNNER_PLATFORM_LEASE_SECONDS (at least 2), so a renewal can fail once "
                "before the holder must stop acting"
            )
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.identity = identity
        self.teams = teams  # scale set -> team
        self.duration = duration
        self.renew_seconds = renew_seconds
        self.on_change = on_change
        self.in_flight = in_flight  # creations of the scale set under way here
        self._draining: dict[str, float] = {}
        self.member_name = lease_name(MEMBER_PREFIX, identity)
        self.names = {s: lease_name(SET_PREFIX, s) for s in teams}
        self.valid_until: dict[str, float] = {}  # scale set -> monotonic deadline
        self.member_until = 0.0
        self.stopping = False
        self._seen: dict[str, _Seen] = {}
        self._owned: set[str] = set()

    # -- what the provisioner asks --

    def held(self, scale_set: str) -> bool:
        """May this replica write for ``scale_set`` now? (Checked before each batch.)"""
        return not self.stopping and time.monotonic() < self.valid_until.get(scale_set, 0.0)

    def owned(self) -> set[str]:
        return {s for s in self.teams if self.held(s)}

    # -- keeping --

    async def keep(self) -> None:
        """Tick every ``renew_seconds`` until cancelled; a failing tick is logged, and the
        scale sets whose deadlines pass stop being acted on (see :meth:`held`)."""
        while True:
            try:
                await self.tick()
            except Exception as error:  # anything: the deadlines stop acting on their own
                log.warning("lease round failed: %s: %s", type(error).__name__, error)
            self._announce()
            await asyncio.sleep(self.renew_seconds)

    def _announce(self) -> None:
        owned = self.owned()
        if owned != self._owned:
            log.info(
                "%s acts on %d scale sets: %s", self.identity, len(owned), ",".join(sorted(owned))
            )
            self._owned = owned
            self.on_change(owned)

    def _expired(self, lease: dict[str, Any], now: float) -> bool:
        meta = lease.get("metadata", {})
        name = str(meta.get("name", ""))
        version = str(meta.get("resourceVersion", ""))
        seen = self._seen.get(name)
        if seen is None or seen.version != version:
            self._seen[name] = seen = _Seen(version, now)
        try:
            duration = float(lease.get("spec", {}).get("leaseDurationSeconds") or self.duration)
        except (TypeError, ValueError):
            duration = float(self.duration)  # a Lease someone wrote badly: ours is the rule
        return now - seen.since > duration

    def _stale(self, lease: dict[str, Any], now: float) -> bool:
        """A member Lease unchanged for four durations: its replica is long gone."""
        seen = self._seen.get(str(lease.get("metadata", {}).get("name", "")))
        return seen is not None and now - seen.since > 4 * self.duration

    async def tick(self) -> None:
        """One round: renew this member, read every Lease, take, renew or release."""
        started = time.monotonic()
        leases = await self._list()
        sent = await self._write(self.member_name, leases.get(self.member_name), "member", None)
        if sent is not None:
            self.member_until = sent + self.duration * 0.8
        live = {self.identity} if time.monotonic() < self.member_until else set()
        for name, peer in leases.items():
            labels = peer.get("metadata", {}).get("labels") or {}
            if labels.get(KIND_LABEL) != "member" or name == self.member_name:
                continue
            holder = peer.get("spec", {}).get("holderIdentity")
            if holder and not self._expired(peer, started):
                live.add(str(holder))
            elif self._expired(peer, started) and self._stale(peer, started):
                await self._delete(name, peer)
        owners = assign(self.teams.values(), live)
        bound = asyncio.Semaphore(8)  # many scale sets: renewed side by side, not in a row

        async def one(scale_set: str) -> None:
            async with bound:
                wanted = owners.get(self.teams[scale_set]) == self.identity
                await self._keep_one(scale_set, leases.get(self.names[scale_set]), wanted, started)

        await asyncio.gather(*(one(scale_set) for scale_set in self.names))

    async def _keep_one(
        self, scale_set: str, lease: dict[str, Any] | None, wanted: bool, started: float
    ) -> None:
        name = self.names[scale_set]
        holder = (lease or {}).get("spec", {}).get("holderIdentity") or ""
        mine = holder == self.identity
        expired = lease is not None and self._expired(lease, started)  # observe every record
        free = lease is None or not holder or (not mine and expired)
        if self.stopping:
            wanted = False
        if mine and not wanted:
            # Stop acting at once; hand over once this replica's creations under way for
            # the scale set are done (renewing meanwhile, for one duration at most), so the
            # next holder never counts without them.
            self.valid_until.pop(scale_set, None)
            since = self._draining.setdefault(scale_set, started)
            if self.in_flight(scale_set) and started - since < self.duration:
                await self._write(name, lease, "scale-set", scale_set)
                return
            self._draining.pop(scale_set, None)
            await self._release(scale_set, lease)
        elif wanted and (mine or free):
            self._draining.pop(scale_set, None)
            sent = await self._write(name, lease, "scale-set", scale_set)
            if sent is not None:
                self.valid_until[scale_set] = sent + self.duration * 0.8
            elif not mine:
                self.valid_until.pop(scale_set, None)
        elif not mine:
            self.valid_until.pop(scale_set, None)  # someone else's: never act on it

    async def _list(self) -> dict[str, dict[str, Any]]:
        reply = await self.kube.request(
            "GET", self.path, params={"labelSelector": KIND_LABEL}, resource="leases"
        )
        return {str(item["metadata"]["name"]): item for item in reply.get("items", [])}

    async def _write(
        self,
        name: str,
        lease: dict[str, Any] | None,
        kind: str,
        scale_set: str | None,
    ) -> float | None:
        """Take or renew ``name``; the monotonic time the successful write was sent (its
        deadline counts from there), or None."""
        spec = (lease or {}).get("spec", {})
        holder = spec.get("holderIdentity") or ""
        annotations = {SCALE_SET_ANNOTATION: scale_set} if scale_set else {}
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {KIND_LABEL: kind},
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "renewTime": _now_micro(),
                "acquireTime": spec.get("acquireTime") if holder == self.identity else _now_micro(),
                "leaseTransitions": _count(spec.get("leaseTransitions"))
                + (0 if holder in ("", self.identity) else 1),
            },
        }
        sent = time.monotonic()
        try:
            if lease is None:
                await self.kube.request("POST", self.path, body=body, resource="leases")
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                await self.kube.request("PUT", f"{self.path}/{name}", body=body, resource="leases")
        except (Conflict, NotFound):
            return None  # another replica changed it first: the next round sees who
        except KubeError as error:
            log.warning("writing lease %s failed: %s", name, error)
            return None
        return sent

    async def _release(self, scale_set: str, lease: dict[str, Any] | None) -> None:
        """Stop acting at once, then hand the Lease over (a peer takes it next round)."""
        self.valid_until.pop(scale_set, None)
        if lease is None:
            return
        name = lease["metadata"]["name"]
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["leaseDurationSeconds"] = 1
        try:
            await self.kube.request("PUT", f"{self.path}/{name}", body=lease, resource="leases")
        except KubeError as error:
            log.warning("releasing lease %s failed: %s", name, error)

    async def _delete(self, name: str, lease: dict[str, Any]) -> None:
        """Remove a Lease as it was read (resourceVersion precondition): a dead replica's
        member Lease, or this replica's own on a clean stop."""
        version = lease.get("metadata", {}).get("resourceVersion")
        body = {"preconditions": {"resourceVersion": version}} if version else None
        try:
            await self.kube.request("DELETE", f"{self.path}/{name}", body=body, resource="leases")
        except (Conflict, NotFound):
            pass  # renewed or removed meanwhile: nothing to do
        except KubeError as error:
            log.warning("removing lease %s failed: %s", name, error)
        self._seen.pop(name, None)

    async def release_all(self) -> None:
        """Clean shutdown: stop acting, give every Lease (and the membership) up."""
        self.stopping = True
        self.valid_until.clear()
        try:
            leases = await self._list()
        except KubeError as error:
            log.warning("releasing leases failed: %s", error)
            return
        for name, lease in leases.items():
            if name == self.member_name:
                await self._delete(name, lease)
            elif (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                scale_set = next((s for s, n in self.names.items() if n == name), name)
                await self._release(scale_set, lease)
        self.member_until = 0.0
