"""Fair share on shared pools: each team's weight, guaranteed minimum and maximum.

The platform owner sets them on the pool (``pools[].shares``), not on the team: a team
that edits its own entry cannot raise its weight. When the pool is at its limits, the
provisioner divides free capacity among the teams that want it by weight, max-min fair
over each team's dominant resource (``controller.provision.fairshare``); the minimum is
served first, the maximum is a hard cap on the team's runners on the pool. A team without
an entry has weight 1, no minimum and no maximum.

The minimums are checked against the pool's limits with what one runner of each team
asks for: :func:`runner_requests` mirrors the requests of the pod the provisioner builds
(``controller.provision.pod.runner_pod``; a unit test pins the two together), counted the
way the provisioner counts a pool's room.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from controller.model.base import Frozen
from controller.quantity import parse_quantity

if TYPE_CHECKING:
    from controller.model.pools import Pool
    from controller.model.teams import Team

MAX_SHARE_RUNNERS = 5000  # the most runners a team may have at all (teams[].max_runners)


def _not_bool(value: Any) -> Any:
    # YAML's true/false would otherwise pass as 1/0 in some validators: say what is wrong.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


Weight = Annotated[
    float,
    BeforeValidator(_not_bool),
    Field(gt=0, allow_inf_nan=False, strict=True),
]
RunnerCount = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, strict=True)]


class Share(Frozen):
    """One team's share of a shared pool when the pool is at its limits."""

    weight: Weight = Field(
        default=1.0,
        description="Relative weight (a positive number): when the pool is full, free "
        "capacity is divided among the teams that want it in proportion to their weights.",
    )
    min: RunnerCount = Field(
        default=0,
        le=MAX_SHARE_RUNNERS,
        description="Runners guaranteed on this pool while the team wants them: served "
        "before any weighted share (busy runners of others are never stopped for it; it is "
        "served from the next capacity that frees up).",
    )
    max: RunnerCount | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARE_RUNNERS,
        description="Most runners of the team on this pool at any time (none: only the "
        "team's max_runners and the pool's limits).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Share:
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


def runner_requests(team: Team, pool: Pool) -> tuple[float, float, int]:
    """What one runner of ``team`` on ``pool`` counts against the pool's limits: cpu cores
    and memory bytes of the runner pod's containers (the runner, plus the buildkitd or
    dockerd sidecar), and the pool's GPUs per runner (whichever pod holds them)."""
    mode = team.mode_on(pool.name)
    cpu = float(parse_quantity(team.resources.cpu))
    memory = float(parse_quantity(team.resources.memory))
    if mode in ("buildkit", "dind"):
        cpu += float(parse_quantity(team.job_resources.cpu))
        memory += float(parse_quantity(team.job_resources.memory))
    return cpu, memory, pool.gpus_per_runner


def share_problems(pools: Sequence[Pool], teams: Sequence[Team]) -> list[str]:
    """Cross-checks of every pool's shares against the teams: each team named uses the
    pool, no minimum beyond the team's max_runners, and the minimums together fit the
    pool's limits. One path-prefixed line per problem."""
    by_name = {team.name: team for team in teams}
    problems: list[str] = []
    for p_index, pool in enumerate(pools):
        where = f"pools[{p_index}].shares"
        needed = [0.0, 0.0, 0.0]
        parts: list[str] = []
        for name, share in pool.shares.items():
            team = by_name.get(name)
            if team is None:
                problems.append(f"{where}.{name}: unknown team '{name}'")
                continue
            if pool.name not in team.pools:
                problems.append(
                    f"{where}.{name}: team '{name}' does not use pool '{pool.name}' "
                    "(add the pool to the team's pools, or remove its share)"
                )
                continue
            if share.min > team.max_runners:
                problems.append(
                    f"{where}.{name}.min: {share.min} is more than team '{name}''s "
                    f"max_runners ({team.max_runners}); it could never be reached"
                )
            if share.min:
                cpu, memory, gpus = runner_requests(team, pool)
                needed[0] += share.min * cpu
                needed[1] += share.min * memory
                needed[2] += share.min * gpus
                parts.append(f"{name}: {share.min}")
        limits = (
            ("cpu", needed[0], float(pool.limits.cpu), f"{needed[0]:g}"),
            (
                "memory",
                needed[1],
                float(parse_quantity(pool.limits.memory)),
                f"{needed[1] / 2**30:g}Gi",
            ),
            ("gpu", needed[2], float(pool.limits.gpu or 0), f"{needed[2]:g}"),
        )
        for resource, need, limit, shown in limits:
            if need > limit:
                problems.append(
                    f"{where}: the minimums ({', '.join(parts)} runners) need {shown} "
                    f"{resource}, more than the pool's limits.{resource} "
                    f"({getattr(pool.limits, resource)}); lower a min or raise the limit"
                )
    return problems
