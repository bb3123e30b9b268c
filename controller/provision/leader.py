"""One acting provisioner across the controller's replicas, held by a Kubernetes Lease.

Every replica runs ``provision``; only the holder of the ``runner-provisioner`` Lease
(``coordination.k8s.io/v1``, in the controller's namespace) creates and deletes runners:
two would both see the same demand and each create runners for it. The holder renews every
``renew_seconds``; a holder that cannot renew before its own deadline (``duration`` minus a
margin, measured on its own clock) stops acting before another replica may take over, and
the others take a Lease whose record has not changed for its duration on their own
clock (client-go's rule: no comparison of two machines' clocks). The Lease's optimistic
concurrency (resourceVersion) decides races between candidates. Per-scale-set leases
spread over replicas build on this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from controller.provision.kube import Conflict, KubeApi, KubeError, NotFound

log = logging.getLogger(__name__)
LEASE_NAME = "runner-provisioner"


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    def __init__(
        self,
        kube: KubeApi,
        namespace: str,
        identity: str,
        *,
        name: str = LEASE_NAME,
        duration: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration = duration
        self.renew_seconds = renew_seconds
        self.valid_until = 0.0  # monotonic: act only before this
        self.lost = asyncio.Event()
        self._observed: tuple[str, float] = ("", 0.0)  # (resourceVersion, when first seen)

    @property
    def held(self) -> bool:
        return time.monotonic() < self.valid_until

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        while not await self.try_acquire():
            await asyncio.sleep(self.renew_seconds)
        log.info("provisioner lease %s/%s held by %s", self.namespace, self.name, self.identity)

    async def try_acquire(self) -> bool:
        started = time.monotonic()
        try:
            lease = await self.kube.request("GET", f"{self.path}/{self.name}", resource="leases")
        except NotFound:
            lease = None
        except KubeError as error:
            log.warning("reading the provisioner lease failed: %s", error)
            return False
        spec = (lease or {}).get("spec", {})
        holder = spec.get("holderIdentity")
        # client-go's rule: a Lease has expired when its record has not changed for its
        # duration *on this replica's clock*. Comparing the holder's renewTime with our
        # wall clock would let clock skew make two holders.
        version = str((lease or {}).get("metadata", {}).get("resourceVersion", ""))
        if version != self._observed[0]:
            self._observed = (version, started)
        duration = float(spec.get("leaseDurationSeconds", self.duration))
        expired = started - self._observed[1] > duration
        if lease is not None and holder not in (None, "", self.identity) and not expired:
            self.valid_until = 0.0  # someone else holds it: stop acting at once
            return False
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "renewTime": _now_micro(),
                "acquireTime": spec.get("acquireTime") if holder == self.identity else _now_micro(),
                "leaseTransitions": int(spec.get("leaseTransitions", 0))
                + (0 if holder in (None, "", self.identity) else 1),
            },
        }
        try:
            if lease is None:
                await self.kube.request("POST", self.path, body=body, resource="leases")
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                await self.kube.request(
                    "PUT", f"{self.path}/{self.name}", body=body, resource="leases"
                )
        except Conflict:
            return False  # another candidate (or our own renewal) changed it first
        except KubeError as error:
            log.warning("writing the provisioner lease failed: %s", error)
            return False
        # Valid from when the request was sent, less a margin for clock rate differences.
        self.valid_until = started + self.duration * 0.8
        return True

    async def keep(self) -> None:
        """Renew until renewal fails past the deadline; then set :attr:`lost` and return."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            if await self.try_acquire():
                continue
            if not self.held:
                log.error("provisioner lease lost by %s: stopping", self.identity)
                self.lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a peer takes over at once."""
        if not self.held:
            return
        try:
            lease = await self.kube.request("GET", f"{self.path}/{self.name}", resource="leases")
            if lease.get("spec", {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            await self.kube.request(
                "PUT", f"{self.path}/{self.name}", body=lease, resource="leases"
            )
        except KubeError as error:
            log.warning("releasing the provisioner lease failed: %s", error)
        self.valid_until = 0.0
