"""Container images in the spec: which references pin an image and which float.

A digest (``…@sha256:<64 hex>``) names one image for good; a tag can be pushed again; and
``:latest``, or no tag at all (which means ``:latest``), names whatever was pushed last.
So ``:latest`` is refused in every stack, a stack that is not ``dev`` takes the controller
image by digest (what ``pulumi up`` deploys is then exactly what was released and signed),
and a ``production`` stack takes every runner image by digest too.

The policy pack checks the same on what the program declares (``policies/rules/images.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from controller.model.spec import PlatformSpec

Environment = Literal["dev", "staging", "production"]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")


def has_digest(image: str) -> bool:
    return DIGEST.search(image) is not None


def tag_of(image: str) -> str | None:
    """The tag, or None: ``host:5000/a/b:1.2@sha256:…`` has tag ``1.2``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def floats_on_latest(image: str) -> bool:
    """``:latest`` anywhere, or neither a tag nor a digest (an implicit ``:latest``)."""
    tag = tag_of(image)
    return tag == "latest" or (tag is None and not has_digest(image))


def spec_images(spec: PlatformSpec) -> Iterator[tuple[str, str, str]]:
    """``(path, image, role)`` for every image the spec names: the controller's, each
    team's ``*_image`` settings and each pool's tool cache. ``role`` is ``controller``,
    ``runner`` for an image the runner pods run (the runner, ``<mode>_image`` of a
    container mode the team uses on a pool, the tool cache), or ``unused``."""
    yield "controller.image", spec.controller.image, "controller"
    for index, team in enumerate(spec.teams):
        modes = {team.mode_on(pool) for pool in team.pools}
        for name in type(team).model_fields:
            value = getattr(team, name)
            if name.endswith("_image") and isinstance(value, str):
                runs = name == "runner_image" or name.removesuffix("_image") in modes
                yield f"teams[{index}].{name}", value, "runner" if runs else "unused"
    for index, pool in enumerate(spec.pools):
        if pool.tool_cache is not None:  # its tools run in every job on the pool
            yield f"pools[{index}].tool_cache.image", pool.tool_cache.image, "runner"


def image_problems(spec: PlatformSpec) -> list[str]:
    """One ``path: message`` line per image the stack's environment does not allow."""
    environment = spec.cluster.environment
    problems = []
    for path, image, role in spec_images(spec):
        if floats_on_latest(image):
            problems.append(
                f"{path}: '{image}' floats on ':latest'; name a version tag or a digest (@sha256:…)"
            )
        elif not has_digest(image) and (
            (role == "controller" and environment != "dev")
            or (role == "runner" and environment == "production")
        ):
            problems.append(
                f"{path}: a {environment} stack takes this image by digest "
                f"('{image.split('@', 1)[0]}@sha256:<64 hex>'): a tag can be pushed again"
            )
    return problems
