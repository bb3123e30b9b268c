"""The provisioner's view of runner pods: one lean record per pod, fed by the watches.

Only the fields the provisioner uses are kept (about 300 bytes a pod instead of the
several kilobytes of a parsed Pod object), indexed by scale set. A runner's state is
read from the pod and from what GitHub told us of its job:

``pending``    the pod is not running yet (no node, or the node is coming)
``idle``       running, and no job started on it
``busy``       running a job (an ``in_progress`` event named this runner)
``finishing``  done (Succeeded/Failed) or being deleted: no longer supply
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.provision.pod import LABEL_SCALE_SET, RUNNER_CONTAINER, RUNNER_ID_ANNOTATION
from controller.quantity import parse_quantity

STATES = ("pending", "idle", "busy", "finishing")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True)
class RunnerPod:
    namespace: str
    name: str
    uid: str
    scale_set: str
    runner_id: int
    phase: str
    node: str
    created: float
    running_since: float | None
    deleting: bool
    exit_code: int | None
    requests: tuple[float, float, int]  # cpu cores, memory bytes, gpus (pool limits)

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def finishing(self) -> bool:
        return self.deleting or self.done

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.finishing


def pod_requests(spec: dict[str, Any]) -> tuple[float, float, int]:
    """What a pod spec requests: cpu cores, memory bytes, GPUs (all containers)."""
    cpu = memory = 0.0
    gpus = 0
    for container in spec.get("containers", []):
        requests = (container.get("resources") or {}).get("requests") or {}
        try:
            cpu += float(parse_quantity(str(requests.get("cpu", "0"))))
            memory += float(parse_quantity(str(requests.get("memory", "0"))))
            gpus += int(requests.get("nvidia.com/gpu", 0))
        except ValueError:
            continue  # not a quantity we write: counted as nothing, never a crash
    return cpu, memory, gpus


def lean(obj: dict[str, Any]) -> RunnerPod | None:
    """The record of a runner pod, or None for an object that is not one of ours."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    scale_set = labels.get(LABEL_SCALE_SET)
    if not scale_set:
        return None
    status = obj.get("status") or {}
    exit_code = None
    running_since = None
    for container in status.get("containerStatuses") or []:
        if container.get("name") != RUNNER_CONTAINER:
            continue
        state = container.get("state") or {}
        if "terminated" in state:
            exit_code = int(state["terminated"].get("exitCode", 0))
        if "running" in state:
            running_since = _epoch(state["running"].get("startedAt"))
    if running_since is None and status.get("phase") == "Running":
        running_since = _epoch(status.get("startTime"))
    try:
        runner_id = int((meta.get("annotations") or {}).get(RUNNER_ID_ANNOTATION, "0"))
    except ValueError:
        runner_id = 0
    return RunnerPod(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        scale_set=scale_set,
        runner_id=runner_id,
        phase=status.get("phase") or "Pending",
        node=(obj.get("spec") or {}).get("nodeName") or "",
        created=_epoch(meta.get("creationTimestamp")) or 0.0,
        running_since=running_since,
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=exit_code,
        requests=pod_requests(obj.get("spec") or {}),
    )


Listener = Callable[[RunnerPod | None, RunnerPod | None], None]


class PodCache:
    """Runner pods by (namespace, name) and by scale set; tells a listener of each change."""

    def __init__(
        self,
        on_change: Listener | None = None,
        accept: Callable[[RunnerPod], bool] | None = None,
    ) -> None:
        self.accept = accept  # which records are runners at all (e.g. in the right namespace)
        self.pods: dict[tuple[str, str], RunnerPod] = {}
        self.by_scale_set: dict[str, dict[str, RunnerPod]] = {}
        self.on_change = on_change
        self.synced: set[str] = set()  # namespaces listed at least once

    def __len__(self) -> int:
        return len(self.pods)

    def of(self, scale_set: str) -> Iterable[RunnerPod]:
        return self.by_scale_set.get(scale_set, {}).values()

    def get(self, namespace: str, name: str) -> RunnerPod | None:
        return self.pods.get((namespace, name))

    def put(self, pod: RunnerPod) -> None:
        if self.accept is not None and not self.accept(pod):
            return
        key = (pod.namespace, pod.name)
        old = self.pods.get(key)
        if old is not None and old.uid != pod.uid and pod.uid:
            self._drop(key)  # same name, new object
            old = None
        self.pods[key] = pod
        self.by_scale_set.setdefault(pod.scale_set, {})[pod.name] = pod
        if self.on_change is not None:
            self.on_change(old, pod)

    def remove(self, namespace: str, name: str) -> None:
        old = self._drop((namespace, name))
        if old is not None and self.on_change is not None:
            self.on_change(old, None)

    def _drop(self, key: tuple[str, str]) -> RunnerPod | None:
        old = self.pods.pop(key, None)
        if old is not None:
            self.by_scale_set.get(old.scale_set, {}).pop(old.name, None)
        return old

    def apply(self, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        """One watch event (``SYNC`` replaces everything known in ``namespace``)."""
        if kind == "SYNC":  # items: Pods, or records already (KubeApi.watch's transform)
            records = (i if isinstance(i, RunnerPod) else lean(i) for i in obj["items"])
            fresh = {p.name: p for p in records if p is not None}
            for key in [k for k in self.pods if k[0] == namespace and k[1] not in fresh]:
                self.remove(*key)
            for pod in fresh.values():
                self.put(pod)
            self.synced.add(namespace)
            return
        record = lean(obj)
        if record is None:
            return
        pod = record
        if kind == "DELETED":
            current = self.pods.get((pod.namespace, pod.name))
            if current is not None and current.uid == pod.uid:
                self.remove(pod.namespace, pod.name)
        else:
            self.put(pod)
