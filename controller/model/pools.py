"""Node pools: what Karpenter launches and runner pods land on."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from controller.model.base import (
    CILIUM_STARTUP_TAINT,
    GPU_TAINT_KEY,
    MAX_RUNNERS_PER_NODE,
    PLATFORM_DOMAIN,
    POOL_LABEL,
    POOL_TAINT_KEY,
    DnsLabel,
    Duration,
    Frozen,
    Quantity,
    in_platform_domain,
)
from controller.model.containers import ToolCache, WorkVolume, default_work_class
from controller.model.shares import Share


class Taint(Frozen):
    key: str = Field(pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]+$")
    """Taint key."""
    value: str = ""
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    """NoSchedule, PreferNoSchedule or NoExecute."""


class PoolLimits(Frozen):
    """The most a pool may grow to; Karpenter stops launching nodes beyond it."""

    cpu: int = Field(ge=1, description="Total vCPUs across the pool's nodes.")
    memory: Quantity = Field(description="Total memory across the pool's nodes ('4000Gi').")
    gpu: int | None = Field(default=None, ge=1, description="Total nvidia.com/gpu (GPU pools).")


class Consolidation(Frozen):
    policy: Literal["WhenEmpty", "WhenEmptyOrUnderutilized"] = "WhenEmptyOrUnderutilized"
    """When Karpenter may remove or replace nodes."""
    consolidate_after: Duration = "5m"
    """How long a node must be consolidatable first."""
    budget_nodes: str = Field(default="10%", pattern=r"^(\d+|\d+%)$")
    """Most nodes disrupted at once (count or percent)."""
    expire_after: Duration = "720h"
    """Maximum node lifetime before replacement."""


class Pool(Frozen):
    """A Karpenter node pool runner pods land on."""

    name: DnsLabel
    """Pool name; nodes carry the label pool=<name>."""
    kind: Literal["warm", "isolated", "custom"]
    """'warm' (shared warm-start), 'isolated' (one team), 'custom' (GPU, high-memory, NVMe)."""
    owner: DnsLabel | None = Field(
        default=None, description="The one team an 'isolated' pool belongs to."
    )
    profile: Literal["general", "gpu", "high-memory", "nvme"] = "general"
    """Hardware profile: general, gpu, high-memory or nvme."""
    instance_families: tuple[str, ...] = ()
    """EC2 instance families (m7i, g6, …); empty: chosen by profile."""
    instance_types: tuple[str, ...] = ()
    """Exact EC2 instance types, if families are too broad."""
    capacity_types: tuple[Literal["spot", "on-demand", "reserved"], ...] = ("spot", "on-demand")
    """spot, on-demand and/or reserved."""
    arch: Literal["amd64", "arm64"] = "amd64"
    """CPU architecture of the nodes."""
    max_runners_per_node: int = Field(default=MAX_RUNNERS_PER_NODE, ge=1, le=MAX_RUNNERS_PER_NODE)
    """Runner pods per node, at most 10 (kubelet maxPods adds the DaemonSets)."""
    warm_nodes: int = Field(default=0, ge=0, le=100)
    """Nodes kept warm by placeholder pods (at least 1 for 'warm' pools)."""
    gpus_per_runner: int = Field(default=0, ge=0, le=8)
    """nvidia.com/gpu each runner requests ('gpu' pools)."""
    limits: PoolLimits
    """The most the pool may grow to (cpu, memory, gpu); required."""
    disk_gib: int = Field(default=100, ge=20, le=16384)
    """Root volume size (gp3, encrypted)."""
    instance_store_raid0: bool | None = None
    """Stripe instance-store NVMe disks (default: on for 'nvme' pools)."""
    taints: tuple[Taint, ...] = ()
    """Extra node taints, beyond the pool and GPU taints the platform sets."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra node labels."""
    consolidation: Consolidation = Consolidation()
    """Karpenter disruption settings."""
    weight: int | None = Field(default=None, ge=1, le=100)
    """NodePool weight when several pools fit a pod."""
    work_volume: WorkVolume = WorkVolume()
    """Work volume of runners in the kubernetes and buildkit container modes."""
    tool_cache: ToolCache | None = None
    """A read-only tool cache runners on this pool mount (pre-pulled on the nodes)."""
    shares: dict[DnsLabel, Share] = Field(
        default_factory=dict,
        description="Fair share per team using the pool when it is at its limits: weight, "
        "min, max (set by the platform owner here, not by the team; docs/provisioner.md).",
    )

    @model_validator(mode="after")
    def _kind_rules(self) -> Pool:
        if self.kind == "isolated" and self.owner is None:
            raise ValueError("an 'isolated' pool needs 'owner' (the team it belongs to)")
        if self.kind != "isolated" and self.owner is not None:
            raise ValueError("only an 'isolated' pool has an 'owner'")
        if self.kind == "warm" and self.warm_nodes < 1:
            raise ValueError("a 'warm' pool needs 'warm_nodes' >= 1")
        if self.profile == "gpu":
            if self.gpus_per_runner < 1:
                raise ValueError("a 'gpu' pool needs 'gpus_per_runner' >= 1")
            if self.limits.gpu is None:
                raise ValueError("a 'gpu' pool needs 'limits.gpu'")
        elif self.gpus_per_runner:
            raise ValueError("'gpus_per_runner' is only for 'gpu' pools")
        problems = [
            f"labels: '{key}' is set by the platform" for key in self.labels if key == POOL_LABEL
        ]
        problems += [
            f"labels: '{key}' is in the '{PLATFORM_DOMAIN}/' domain the platform reserves "
            "(it marks system nodes, which run the controller, and pool kinds and owners)"
            for key in self.labels
            if in_platform_domain(key)
        ]
        problems += [
            f"taints[{index}].key: '{taint.key}' is in the '{PLATFORM_DOMAIN}/' domain the "
            "platform reserves (it sets the pool taints itself)"
            for index, taint in enumerate(self.taints)
            if in_platform_domain(taint.key)
        ]
        problems += [
            f"taints[{index}].key: '{taint.key}' is Cilium's startup taint (Cilium removes it "
            "once it manages the node; a pod tolerating it could start outside NetworkPolicy "
            "and WireGuard)"
            for index, taint in enumerate(self.taints)
            if taint.key == CILIUM_STARTUP_TAINT
        ]
        problems += [
            f"taints[{index}].key: '{taint.key}' is the GPU taint the platform sets on 'gpu' "
            f"pools; a '{self.profile}' pool may not carry it (its runners would tolerate "
            "GPU nodes)"
            for index, taint in enumerate(self.taints)
            if taint.key == GPU_TAINT_KEY and self.profile != "gpu"
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def raid0(self) -> bool:
        """Whether instance-store NVMe disks are striped (the default for 'nvme' pools)."""
        if self.instance_store_raid0 is None:
            return self.profile == "nvme"
        return self.instance_store_raid0

    @property
    def work_storage_class(self) -> str:
        """StorageClass of work volumes here: the pool's own, else gp3 or the instance store."""
        return self.work_volume.storage_class or default_work_class(self.raid0)

    @property
    def dedicated(self) -> bool:
        """Isolated and custom pools are tainted so only their runners land there."""
        return self.kind != "warm"

    def node_taints(self) -> tuple[Taint, ...]:
        """Taints on this pool's nodes; runner pods for the pool tolerate exactly these."""
        taints: list[Taint] = []
        if self.dedicated:
            taints.append(Taint(key=POOL_TAINT_KEY, value=self.name, effect="NoSchedule"))
        if self.profile == "gpu":
            taints.append(Taint(key=GPU_TAINT_KEY, value="true", effect="NoSchedule"))
        return (*taints, *self.taints)

    def tolerations(self) -> list[dict[str, str]]:
        """The Kubernetes tolerations of every taint the pool's nodes carry: what a pod
        that belongs on the pool (a runner, a job pod, a pool DaemonSet) declares."""
        return [
            {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}
            for t in self.node_taints()
        ]
