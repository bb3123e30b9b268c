"""Images: nothing runs ``:latest``; a production stack runs its images by digest.

``:latest`` (or no tag, which means ``:latest``) is refused in every container of every
workload the program declares and in every image the controller's spec names (its
ConfigMap), whatever the stack. A stack declares itself production in its config,
``runner-platform:cluster: {environment: production}``; the controller carries that spec
in its ConfigMap (``spec.json``), and there the controller image and every image the
runner pods run (``runner_image``, and the ``<mode>_image`` of a container mode a team
uses) must be pinned by digest (``@sha256:…``): a tag can be pushed again, a digest
cannot. The stack config validation refuses the same (``controller/model/images.py``);
this pack stands alone, so it reads the spec's JSON itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.common import dig

CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
# components.controller_manifests.CONFIG_MAP and the key the spec travels in.
CONTROLLER_CONFIG = "runner-controller-config"
SPEC_KEY = "spec.json"
# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")


def tag_of(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def floats_on_latest(image: str) -> bool:
    tag = tag_of(image)
    return tag == "latest" or (tag is None and DIGEST.search(image) is None)


def _workload_images(args: ResourceValidationArgs) -> Iterator[tuple[str, str]]:
    path = POD_SPEC_PATHS.get(args.resource_type)
    pod = dig(args.props, *path) if path else None
    if not isinstance(pod, dict):
        return
    for key in ("initContainers", "containers", "ephemeralContainers"):
        containers = pod.get(key)
        for container in containers if isinstance(containers, list) else []:
            image = container.get("image") if isinstance(container, dict) else None
            if isinstance(image, str):  # unknown in a preview: nothing to judge
                yield f"container '{container.get('name', '?')}'", image


def _controller_spec(args: ResourceValidationArgs) -> dict[str, Any] | None:
    if args.resource_type != CONFIG_MAP:
        return None
    if dig(args.props, "metadata", "name") != CONTROLLER_CONFIG:
        return None
    text = dig(args.props, "data", SPEC_KEY)
    if not isinstance(text, str):
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


def _spec_images(spec: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(path, image, role)``: the controller's image, each team's ``*_image`` settings
    as ``runner`` when its runner pods run it, else ``unused``, each pool's tool cache."""
    image = dig(spec, "controller", "image")
    if isinstance(image, str):
        yield "controller.image", image, "controller"
    teams = spec.get("teams")
    for index, team in enumerate(teams if isinstance(teams, list) else []):
        if not isinstance(team, dict):
            continue
        default, per_pool = team.get("container_mode"), team.get("container_modes") or {}
        modes = {per_pool.get(pool, default) for pool in team.get("pools") or []}
        for key, value in team.items():
            if key.endswith("_image") and isinstance(value, str):
                runs = key == "runner_image" or key.removesuffix("_image") in modes
                yield f"teams[{index}].{key}", value, "runner" if runs else "unused"
    pools = spec.get("pools")
    for index, pool in enumerate(pools if isinstance(pools, list) else []):
        cache = pool.get("tool_cache") if isinstance(pool, dict) else None
        image = cache.get("image") if isinstance(cache, dict) else None
        if isinstance(image, str):  # its tools run in every job on the pool
            yield f"pools[{index}].tool_cache.image", image, "runner"


def _validate_not_latest(args: ResourceValidationArgs, report: ReportViolation) -> None:
    named = [(where, image) for where, image in _workload_images(args)]
    spec = _controller_spec(args)
    if spec is not None:
        named += [(f"spec {path}", image) for path, image, _ in _spec_images(spec)]
    for where, image in named:
        if floats_on_latest(image):
            report(
                f"{where} uses '{image}', which floats on ':latest': name a version tag "
                "or a digest",
                None,
            )


def _validate_production_digests(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _controller_spec(args)
    if spec is None or dig(spec, "cluster", "environment") != "production":
        return
    for path, image, role in _spec_images(spec):
        if role != "unused" and DIGEST.search(image) is None:
            report(
                f"production stack: {path} '{image}' is not pinned by digest "
                "(…@sha256:<64 hex>); a tag can be pushed again",
                None,
            )


images_not_latest = ResourceValidationPolicy(
    name="images-not-latest",
    description="No container and no image of the controller's spec floats on ':latest'.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_not_latest,
)

production_images_by_digest = ResourceValidationPolicy(
    name="production-images-by-digest",
    description=(
        "A stack whose config says environment: production runs the controller and runner "
        "images by digest."
    ),
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate_production_digests,
)
