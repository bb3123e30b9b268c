"""Container jobs and image builds: the modes a team picks per pool, the work volume and
read-only tool cache a pool offers, and the conventions both halves share.

The controller's runner pod (``controller/provision/pod.py``) and the infrastructure that
surrounds it (``components/containers.py``: the runner Role, the job pod template the
container hooks read, quotas, storage classes, the admission policy) must agree on names
and paths, so those live here, beside the settings themselves.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from controller.model.base import Frozen, Quantity
from controller.quantity import parse_quantity

# Directories of the runner and of the node the tool cache must not cover: mounted there
# read-only it would hide the runner, its work folder or the hooks, or shadow the system.
_RESERVED_PATHS = ("/home/runner", "/proc", "/sys", "/dev", "/var/run", "/run", "/etc")


def _tool_cache_path(value: str) -> str:
    if posixpath.normpath(value) != value or value == "/":
        raise ValueError(f"'{value}' is not a plain absolute path (no '.', '..' or '//')")
    for reserved in _RESERVED_PATHS:
        if (
            value == reserved
            or value.startswith(f"{reserved}/")
            or reserved.startswith(f"{value}/")
        ):
            raise ValueError(f"'{value}' would cover {reserved}: use a directory like /opt/…")
    return value


def _volume_size(value: str) -> str:
    if not 2**30 <= parse_quantity(value) <= 64 * 2**40:
        raise ValueError(f"'{value}' is not between 1Gi and 64Ti")
    return value


VolumeSize = Annotated[Quantity, AfterValidator(_volume_size)]
ToolCachePath = Annotated[str, AfterValidator(_tool_cache_path)]

ContainerMode = Literal["kubernetes", "buildkit", "dind", "none"]
"""How a runner serves ``container:``/``services:`` jobs and image builds (docs/containers.md)."""

HOOK_MODES: frozenset[str] = frozenset({"kubernetes", "buildkit"})
"""Modes whose runners start job pods through the container hooks (and need a work volume)."""

# --- images ------------------------------------------------------------------------------
# Versions are pinned so a warm node's pre-pulled image is the one runners ask for.
BUILDKIT_IMAGE = "docker.io/moby/buildkit:v0.25.1-rootless"
DIND_IMAGE = "docker.io/library/docker:28.5.1-dind"

# --- the container hooks (actions/runner-container-hooks, kubernetes mode) ----------------
# The runner image (ghcr.io/actions/actions-runner) ships the hooks here.
STOCK_HOOKS = "/home/runner/k8s/index.js"
# One ConfigMap per team namespace holds the platform's hook entry point (which runs the
# stock hooks and then makes the job pod a dependent of its runner pod) and one job pod
# template per pool; runner pods mount it read-only here.
HOOKS_CONFIG_MAP = "runner-hooks"
HOOKS_DIR = "/etc/runner-platform/hooks"
HOOKS_ENTRY_KEY = "index.js"


def job_template_key(pool: str) -> str:
    """The ConfigMap key (and file name) of the job pod template for ``pool``."""
    return f"job-{pool}.json"


# The hooks name the work volume of a job pod "work" and the job's container "job"; a
# template container named "$job" is merged into it (runner-container-hooks utils.ts).
JOB_CONTAINER_TEMPLATE = "$job"
JOB_POD_APP = "github-job"
# The hooks label every pod and Secret they create with the runner pod's name.
HOOKS_RUNNER_LABEL = "runner-pod"
CONTAINER_MODE_LABEL = "runner-platform.io/container-mode"
# A rootless buildkitd listens here; job pods reach it through the headless Service below.
BUILDKIT_PORT = 1234
RUNNER_SUBDOMAIN = "runners"
# Storage classes the platform declares for work volumes.
EBS_WORK_CLASS = "runner-work-gp3"
NVME_WORK_CLASS = "runner-work-nvme"
# Pod slots one runner may need on its node: itself, its job pod and one container-step pod.
HOOK_PODS_PER_RUNNER = 3


class WorkVolume(Frozen):
    """The volume under ``/home/runner/_work`` for runners whose job pods share it."""

    storage_class: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description=(
            "StorageClass of each runner's work volume (a generic ephemeral volume). Default: "
            f"'{EBS_WORK_CLASS}' (encrypted gp3), or '{NVME_WORK_CLASS}' (the instance store) "
            "on pools that stripe NVMe disks."
        ),
    )
    size: VolumeSize = "50Gi"
    """Size of each runner's work volume (kubernetes and buildkit modes), 1Gi to 64Ti."""


class ToolCache(Frozen):
    """A read-only tool cache: an image whose ``path`` holds pre-installed tool versions.

    Warm and isolated nodes pull the image ahead of time (the pre-pull DaemonSet); each
    runner copies it once into a volume of its own and mounts that read-only, so no
    writable volume is ever shared between runners, let alone teams.
    """

    image: str = Field(min_length=3)
    """Image holding the tool cache (for example setup-* tool versions)."""
    path: ToolCachePath = Field(default="/opt/hostedtoolcache", pattern=r"^/[A-Za-z0-9._/-]+$")
    """Directory of the tool cache inside the image; runners see it at the same path."""
    size: VolumeSize = "10Gi"
    """Most disk the copy may use on the node, 1Gi to 64Ti."""


def default_work_class(raid0: bool) -> str:
    return NVME_WORK_CLASS if raid0 else EBS_WORK_CLASS
