"""The Kubernetes-level half of a stack, on the local cluster, from the stack's own builders.

What ``pulumi up`` would declare in the cluster (components/controller_manifests.py,
components/node_pools.py), created on the local API server: namespaces, ServiceAccounts,
RBAC, the PriorityClasses, the warm namespace, placeholders and image pre-pull
DaemonSets, and per pool an EC2NodeClass and a NodePool. Karpenter's KWOK provider
launches nodes for a ``KWOKNodeClass``, not an ``EC2NodeClass``: :func:`kwok_node_pools`
is the one place where the two differ. The Vault configuration goes into OpenBao through
the hvac provider code the stack uses (components/vault_provider.py).

Karpenter's KWOK provider knows no EC2 instance types of its own: it reads them from a
JSON file (``INSTANCE_TYPES_FILE_PATH``). :func:`kwok_instance_types` writes one from
the price table (localenv/prices.yaml): every type whose labels satisfy a pool's
requirements, with AWS's capacity, the pool's ``maxPods`` and disk, and an offering per
capacity type and zone at its price.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.controller_manifests import namespaces, rbac, service_accounts
from components.node_pools import (
    PAUSE_IMAGE,
    ec2_node_class,
    node_pool,
    placeholder_deployment,
    placeholder_priority_class,
    prepull_daemonset,
    prepull_name,
    prepulls,
    runner_priority_class,
    warm_namespace,
)
from components.node_pools import daemonset_pods as pool_daemonsets
from components.node_pools import max_pods as pool_max_pods
from controller.model import CILIUM_STARTUP_TAINT, POOL_LABEL, PlatformSpec, Pool

PRICES = Path(__file__).resolve().parent / "prices.yaml"
KWOK_GROUP = "karpenter.kwok.sh"
KWOK_NODE_CLASS = "KWOKNodeClass"
AWS = "karpenter.k8s.aws"
GPU_RESOURCE = "nvidia.com/gpu"
Manifest = dict[str, Any]


class StackObjectError(ValueError):
    """The price table or the spec cannot be turned into the local cluster's objects."""


# -- the price table --


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: int
    memory_gib: int
    on_demand: float
    spot: float
    gpus: int = 0
    nvme_gib: int = 0

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def price(self, capacity_type: str) -> float:
        return self.spot if capacity_type == "spot" else self.on_demand

    def aws_labels(self) -> dict[str, str]:
        """The ``karpenter.k8s.aws/*`` labels AWS's provider gives this type's nodes and
        matches a NodePool's requirements against."""
        family = self.family
        generation = "".join(c for c in family[1:] if c.isdigit()) or "0"
        labels = {
            f"{AWS}/instance-family": family,
            f"{AWS}/instance-category": family[0],
            f"{AWS}/instance-generation": generation,
            f"{AWS}/instance-size": self.name.split(".", 1)[1],
            f"{AWS}/instance-cpu": str(self.vcpu),
            f"{AWS}/instance-memory": str(self.memory_gib * 1024),
            f"{AWS}/instance-gpu-count": str(self.gpus),
            f"{AWS}/instance-local-nvme": str(self.nvme_gib),
        }
        if self.gpus:
            labels[f"{AWS}/instance-gpu-manufacturer"] = "nvidia"
        return labels


@dataclass(frozen=True)
class PriceTable:
    currency: str
    region: str
    types: dict[str, InstanceType]

    def get(self, name: str) -> InstanceType:
        try:
            return self.types[name]
        except KeyError:
            raise StackObjectError(f"instance type {name} is not in the price table") from None


def load_prices(path: Path = PRICES) -> PriceTable:
    """The price table; a bad entry is an error naming the file, the entry and the field."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise StackObjectError(f"{path}: cannot be read: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("instance_types"), dict):
        raise StackObjectError(f"{path}: instance_types: a mapping of instance type → figures")
    factor = document.get("spot_factor", 0.35)
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not 0 < factor <= 1:
        raise StackObjectError(f"{path}: spot_factor: a number in (0, 1], not {factor!r}")
    types: dict[str, InstanceType] = {}
    for name, entry in document["instance_types"].items():
        where = f"{path}: instance_types.{name}"
        if not isinstance(name, str) or "." not in name:
            raise StackObjectError(f"{where}: the name is not an EC2 type like m7i.4xlarge")
        if not isinstance(entry, dict):
            raise StackObjectError(f"{where}: a mapping of vcpu, memory_gib, on_demand, …")
        unknown = set(entry) - {"vcpu", "memory_gib", "gpus", "nvme_gib", "on_demand", "spot"}
        if unknown:
            raise StackObjectError(f"{where}.{sorted(unknown)[0]}: unknown field")
        values: dict[str, Any] = {}
        for field, kind, required in (
            ("vcpu", int, True),
            ("memory_gib", int, True),
            ("gpus", int, False),
            ("nvme_gib", int, False),
            ("on_demand", float, True),
            ("spot", float, False),
        ):
            value = entry.get(field)
            if value is None:
                if required:
                    raise StackObjectError(f"{where}.{field}: missing")
                continue
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if (
                not numeric
                or not math.isfinite(value if isinstance(value, float) else 0)
                or value < 0
                or (kind is int and not isinstance(value, int))
            ):
                raise StackObjectError(f"{where}.{field}: {value!r} is not a {kind.__name__} ≥ 0")
            if value > 1e9:  # no instance has that many of anything, nor costs that much
                raise StackObjectError(f"{where}.{field}: over 1e9, past any instance's figures")
            values[field] = value
        values.setdefault("spot", round(values["on_demand"] * factor, 5))
        types[name] = InstanceType(name=name, **values)
    return PriceTable(str(document.get("currency", "USD")), str(document.get("region", "")), types)


# -- requirements, evaluated as Karpenter does --


def _satisfies(labels: dict[str, str], requirement: dict[str, Any]) -> bool:
    value = labels.get(requirement["key"])
    operator, values = requirement["operator"], requirement.get("values", [])
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt"):
        if value is None:
            return False
        bound = int(values[0])
        return int(value) > bound if operator == "Gt" else int(value) < bound
    raise StackObjectError(f"requirement operator {operator} is not known")


def pool_instance_types(spec: PlatformSpec, pool: Pool, prices: PriceTable) -> list[InstanceType]:
    """The table's types a pool's NodePool admits (its requirements on instance labels)."""
    requirements = node_pool(spec, pool)["spec"]["template"]["spec"]["requirements"]
    found = []
    for instance in prices.types.values():
        labels = {
            **instance.aws_labels(),
            "node.kubernetes.io/instance-type": instance.name,
            "kubernetes.io/arch": pool.arch,
            "kubernetes.io/os": "linux",
        }
        checked = [r for r in requirements if r["key"] != "karpenter.sh/capacity-type"]
        if all(_satisfies(labels, r) for r in checked):
            found.append(instance)
    if not found:
        raise StackObjectError(
            f"pools[{pool.name}]: no instance type of the price table ({PRICES.name}) meets "
            f"the pool's requirements {requirements}; add one"
        )
    return found


def pool_ephemeral_gib(pool: Pool, instance: InstanceType) -> int:
    """The pool's root volume, or the striped instance store when the pool uses RAID0."""
    return instance.nvme_gib if pool.raid0 and instance.nvme_gib else pool.disk_gib


def kwok_instance_types(spec: PlatformSpec, prices: PriceTable) -> list[dict[str, Any]]:
    """Karpenter-KWOK's instance types file for the spec's pools.

    Each type carries the pool's ``kubelet.maxPods`` as its ``pods`` capacity (KWOK nodes
    have no kubelet configuration), the pool's ephemeral storage, AWS's CPU, memory and
    GPUs, and one offering per capacity type and zone whose requirements hold the
    ``karpenter.k8s.aws/*`` labels: the provider makes those keys known and puts them on
    the nodes it launches, so the NodePool's own requirements select the types unchanged.
    Two pools that would give one type different ``maxPods`` or disks are refused.
    """
    zones = [f"{spec.cluster.region}{letter}" for letter in "abcdef"][
        : spec.cluster.vpc.availability_zones
    ]
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for pool in spec.pools:
        for instance in pool_instance_types(spec, pool, prices):
            resources = {
                "cpu": str(instance.vcpu),
                "memory": f"{instance.memory_gib}Gi",
                "pods": str(pool_max_pods(spec, pool)),
                "ephemeral-storage": f"{pool_ephemeral_gib(pool, instance)}Gi",
            }
            if instance.gpus:
                resources[GPU_RESOURCE] = str(instance.gpus)
            entry = {
                "name": instance.name,
                "architecture": pool.arch,
                "operatingSystems": ["linux"],
                "resources": resources,
                "offerings": [
                    {
                        "Price": instance.price(capacity),
                        "Available": True,
                        "Requirements": [
                            {
                                "key": "karpenter.sh/capacity-type",
                                "operator": "In",
                                "values": [capacity],
                            },
                            {
                                "key": "topology.kubernetes.io/zone",
                                "operator": "In",
                                "values": [zone],
                            },
                            *(
                                {"key": key, "operator": "In", "values": [value]}
                                for key, value in instance.aws_labels().items()
                            ),
                        ],
                    }
                    for capacity in ("on-demand", "spot")
                    for zone in zones
                ],
            }
            if instance.name in entries and entries[instance.name][1] != entry:
                raise StackObjectError(
                    f"pools[{pool.name}] and pools[{entries[instance.name][0]}] both use "
                    f"{instance.name} with a different maxPods or disk: Karpenter-KWOK knows "
                    "one capacity per instance type; give them different families"
                )
            entries[instance.name] = (pool.name, entry)
    return [entry for _, entry in entries.values()]


# -- the NodePools --


def kwok_node_pools(spec: PlatformSpec) -> list[Manifest]:
    """THE mapping from the stack's EC2NodeClass + NodePool to what Karpenter-KWOK runs.

    Per pool, a ``KWOKNodeClass`` named as the pool's EC2NodeClass (with its annotations:
    runners per node, DaemonSet pods, pods per runner) and the stack's own NodePool
    (components/node_pools.node_pool) with ``nodeClassRef`` pointing at it. Nothing else
    changes: requirements, limits, labels, taints, the Cilium startup taint, consolidation,
    weight. What the EC2NodeClass says and KWOK has no field for lives elsewhere:
    ``kubelet.maxPods`` and the root volume (or RAID0 instance store) are the ``pods`` and
    ``ephemeral-storage`` capacity of the pool's instance types
    (:func:`kwok_instance_types`); AMI, subnets, security groups, IMDS and the node role
    have no meaning without EC2.
    """
    objects: list[Manifest] = []
    for pool in spec.pools:
        ec2 = ec2_node_class(spec, pool, f"KarpenterNodeRole-{spec.cluster.name}")
        objects.append(
            {
                "apiVersion": f"{KWOK_GROUP}/v1alpha1",
                "kind": KWOK_NODE_CLASS,
                "metadata": {
                    "name": ec2["metadata"]["name"],
                    "annotations": dict(ec2["metadata"]["annotations"]),
                },
            }
        )
        nodes = copy.deepcopy(node_pool(spec, pool))
        nodes["spec"]["template"]["spec"]["nodeClassRef"] = {
            "group": KWOK_GROUP,
            "kind": KWOK_NODE_CLASS,
            "name": ec2["metadata"]["name"],
        }
        objects.append(nodes)
    return objects


def daemonset_standins(spec: PlatformSpec) -> list[Manifest]:
    """A DaemonSet (pause, tolerating every taint) per DaemonSet the real stack runs on a
    pool's nodes and this cluster does not (aws-node, kube-proxy, Cilium, the EBS CSI node
    plugin, the NVIDIA device plugin), on exactly the pools that run it: their pods take
    the slots ``maxPods`` counts for them, so only the runner share is left for runners.
    The image pre-pull DaemonSets are the stack's own (:func:`stack_manifests`)."""
    on_pools: dict[str, list[str]] = {}
    for pool in spec.pools:
        for name in pool_daemonsets(spec, pool):
            if name != prepull_name(pool):
                on_pools.setdefault(name, []).append(pool.name)
    objects = []
    for name, pools in on_pools.items():
        labels = {"app.kubernetes.io/name": name, "runner-platform.io/stand-in": "daemonset"}
        objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "automountServiceAccountToken": False,
                            "tolerations": [{"operator": "Exists"}],
                            "affinity": {
                                "nodeAffinity": {
                                    "requiredDuringSchedulingIgnoredDuringExecution": {
                                        "nodeSelectorTerms": [
                                            {
                                                "matchExpressions": [
                                                    {
                                                        "key": POOL_LABEL,
                                                        "operator": "In",
                                                        "values": sorted(pools),
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                }
                            },
                            "containers": [
                                {
                                    "name": "main",
                                    "image": PAUSE_IMAGE,
                                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                }
                            ],
                        },
                    },
                },
            }
        )
    return objects


def stack_manifests(spec: PlatformSpec) -> list[Manifest]:
    """Everything the stack declares in the cluster that the local run needs, in order."""
    objects: list[Manifest] = [runner_priority_class()]
    if any(prepulls(pool) for pool in spec.pools):
        objects.append(warm_namespace())
    if any(pool.warm_nodes for pool in spec.pools):
        objects.append(placeholder_priority_class())
    objects += [
        *namespaces(spec),
        *service_accounts(spec, "arn:aws:iam::123456789012:role/runner-controller"),
        *rbac(spec),
    ]
    for pool in spec.pools:
        objects.append(ec2_node_class(spec, pool, f"KarpenterNodeRole-{spec.cluster.name}"))
    objects += kwok_node_pools(spec)
    objects += daemonset_standins(spec)
    for pool in spec.pools:
        if prepulls(pool):
            objects.append(prepull_daemonset(spec, pool))
        if pool.warm_nodes > 0:
            objects.append(placeholder_deployment(spec, pool))
    return objects


def apply(api: Any, manifests: list[Manifest]) -> int:
    """Create each object (strict field validation); one that exists is left alone."""
    from localenv.dry_run import Rejected, submit

    created = 0
    for manifest in manifests:
        try:
            submit(api, manifest, dry_run=False)
            created += 1
        except Rejected as error:
            if error.status != 409:
                raise
    return created


def lift_startup_taint(core: Any) -> int:
    """Play the Cilium agent: remove its startup taint from nodes that carry it (the
    NodePools put it on every new node, as the stack's do). Returns nodes changed."""
    changed = 0
    for node in core.list_node().items:
        taints = node.spec.taints or []
        kept = [t for t in taints if t.key != CILIUM_STARTUP_TAINT]
        if len(kept) != len(taints):
            body = {
                "spec": {
                    "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in kept]
                }
            }
            core.patch_node(node.metadata.name, body)
            changed += 1
    return changed


# -- Vault --


def vault_objects(
    spec: PlatformSpec, address: str, token: str, issuers: dict[str, str]
) -> list[dict[str, Any]]:
    """The stack's Vault configuration (components/vault.vault_config) as the provider's
    props, each mount trusting its GitHub instance's issuer (``issuers``: instance name →
    issuer URL; locally the emulators')."""
    from components.vault import mount_path, vault_config

    config = vault_config(spec)
    by_mount = {mount_path(i.name): issuers[i.name] for i in spec.github_instances}
    connection = {"address": address, "token": token}
    objects: list[dict[str, Any]] = []
    for mount in config["mounts"]:
        issuer = by_mount[mount["path"]]
        objects.append(
            {
                **connection,
                "kind": "jwt-mount",
                "path": mount["path"],
                "oidcDiscoveryUrl": issuer,
                "boundIssuer": issuer,
            }
        )
    objects += [{**connection, "kind": "policy", **policy} for policy in config["policies"]]
    objects += [{**connection, "kind": "jwt-role", **role} for role in config["roles"]]
    return objects


def configure_vault(spec: PlatformSpec, address: str, token: str, issuers: dict[str, str]) -> int:
    """Apply the stack's Vault configuration through the hvac provider; returns objects."""
    from components.vault_provider import VaultObjectProvider

    provider = VaultObjectProvider()
    objects = vault_objects(spec, address, token, issuers)
    for props in objects:
        provider.create(props)
    return len(objects)
