"""Fair share of a pool at its limits: max-min fair by weight over dominant shares.

A pure function. Given a pool's capacity (cpu cores, memory bytes, GPUs; ``inf`` for a
resource without a limit) and, per team on the pool, what it has, what it wants, what
one of its runners requests, and its weight, minimum and maximum (``pools[].shares``),
:func:`entitlements` says how many runners each team is entitled to now.

- **Nothing is taken away.** Runners are ephemeral and a busy one is never stopped, so a
  team's entitlement is at least what it has; only *free* capacity is divided. A team
  above its fair share gets nothing new and converges down as its jobs finish.
- **Minimums first**, then weights: free capacity first raises teams towards their
  minimum (``min(min, want, max)``), then towards ``min(want, max)``.
- **Progressive filling, one runner at a time** (the rounding rule): the next runner goes
  to the team whose *dominant share after taking it*, divided by its weight, is lowest.
  A team's dominant share is the largest fraction of any limited resource its runners
  take (Dominant Resource Fairness), so a team of 8-cpu runners and a team of 2-cpu
  runners are compared by the capacity they use, not their runner counts. Ties go to the
  team whose name sorts first. A runner that no longer fits the free capacity closes its
  team; the others go on (a smaller runner may still fit). So 100 runners between weights
  2:1 split 67/33, the sum never exceeds the capacity, and the result depends only on the
  inputs.
- **Zero demand takes nothing**: a team that wants no more runners than it has keeps its
  share free for the others (work-conserving). When every team's wish fits, every team
  gets it: fair share only shapes a pool at its limits.

Weights are relative: they are scaled by the largest before use, so 1e-9 and 1e300 are
as good as 1 and 2 in the same ratio; a weight too small to compare with the largest
(a ratio below about 1e-308) just comes last.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Resources = tuple[float, float, float]  # cpu cores, memory bytes, GPUs

# Float sums of fractional requests (100m cpu) may land a hair above a limit they meet
# exactly; this much of a limit is treated as fitting.
_SLACK = 1e-9


@dataclass(frozen=True)
class Claim:
    """One team's position on the pool."""

    team: str
    current: int
    """Runners it has on the pool (pending, idle, busy and being created)."""
    want: int
    """Runners it wants on the pool (busy + queued jobs + idle floor)."""
    per_runner: Resources
    """What one more of its runners counts against the pool's limits."""
    weight: float = 1.0
    min: int = 0
    max: int | None = None
    used: Resources | None = None
    """What its current runners request, if not ``current`` times ``per_runner``."""

    def usage(self) -> Resources:
        if self.used is not None:
            return self.used
        cpu, memory, gpus = self.per_runner
        return (self.current * cpu, self.current * memory, self.current * gpus)


def _check(claim: Claim) -> None:
    if not (math.isfinite(claim.weight) and claim.weight > 0):
        raise ValueError(f"team '{claim.team}': weight must be a positive number")
    if claim.current < 0 or claim.want < 0 or claim.min < 0:
        raise ValueError(f"team '{claim.team}': runner counts cannot be negative")
    if claim.max is not None and claim.max < 0:
        raise ValueError(f"team '{claim.team}': max cannot be negative")
    if any(amount < 0 or math.isnan(amount) for amount in claim.per_runner):
        raise ValueError(f"team '{claim.team}': requests cannot be negative")


def _dominant(per_runner: Resources, capacity: Resources) -> float:
    """The largest fraction of a limited resource one runner takes (inf: none fit)."""
    share = 0.0
    for amount, limit in zip(per_runner, capacity, strict=True):
        if amount <= 0 or limit == math.inf:
            continue
        share = max(share, amount / limit if limit > 0 else math.inf)
    return share


def entitlements(capacity: Resources, claims: Iterable[Claim]) -> dict[str, int]:
    """Each team's entitlement on the pool: at least what it has, at most
    ``max(current, min(want, max))``, the free capacity divided max-min fair by weight
    (minimums first), never more in total than ``capacity`` allows."""
    teams = sorted(claims, key=lambda c: c.team)
    for claim in teams:
        _check(claim)
    if len({c.team for c in teams}) != len(teams):
        raise ValueError("a team is claimed twice")
    free = list(capacity)
    for claim in teams:
        for index, amount in enumerate(claim.usage()):
            free[index] -= amount
    granted = {c.team: c.current for c in teams}
    cap = {
        c.team: max(c.current, min(c.want, c.max if c.max is not None else c.want)) for c in teams
    }
    floor = {c.team: max(c.current, min(c.min, cap[c.team])) for c in teams}

    def fits(claim: Claim, count: int) -> bool:
        return all(
            limit == math.inf or free[i] - count * amount >= -_SLACK * max(1.0, limit)
            for i, (amount, limit) in enumerate(zip(claim.per_runner, capacity, strict=True))
        )

    def take(claim: Claim, count: int) -> None:
        for i, amount in enumerate(claim.per_runner):
            free[i] -= count * amount
        granted[claim.team] += count

    # Everyone's wish fits: no contention, nothing to share.
    wished = [(c, cap[c.team] - c.current) for c in teams]
    totals = [sum(count * c.per_runner[i] for c, count in wished) for i in range(3)]
    if all(
        limit == math.inf or free[i] - totals[i] >= -_SLACK * max(1.0, limit)
        for i, limit in enumerate(capacity)
    ):
        return dict(cap)

    heaviest = max(c.weight for c in teams)
    relative = {c.team: c.weight / heaviest for c in teams}
    dominant = {c.team: _dominant(c.per_runner, capacity) for c in teams}
    for target in (floor, cap):
        _fill(teams, target, granted, relative, dominant, fits, take)
    return granted


def _fill(
    teams: list[Claim],
    target: dict[str, int],
    granted: dict[str, int],
    relative: dict[str, float],
    dominant: dict[str, float],
    fits: Callable[[Claim, int], bool],
    take: Callable[[Claim, int], None],
) -> None:
    """Progressive filling towards ``target``, one runner at a time."""
    heap: list[tuple[float, int, Claim]] = []
    for order, claim in enumerate(teams):
        if granted[claim.team] >= target[claim.team]:
            continue
        if dominant[claim.team] == 0:
            # Its runners use no limited resource: they take nothing from anyone.
            take(claim, target[claim.team] - granted[claim.team])
            continue
        heap.append((_key(claim, granted, relative, dominant), order, claim))
    heapq.heapify(heap)
    while heap:
        _, order, claim = heapq.heappop(heap)
        if not fits(claim, 1):
            continue  # the pool is full for this team's runners; others may still fit
        take(claim, 1)
        if granted[claim.team] < target[claim.team]:
            heapq.heappush(heap, (_key(claim, granted, relative, dominant), order, claim))


def _key(
    claim: Claim, granted: dict[str, int], relative: dict[str, float], dominant: dict[str, float]
) -> float:
    """The team's dominant share with one more runner, divided by its (relative) weight."""
    weight = relative[claim.team]
    share = (granted[claim.team] + 1) * dominant[claim.team]
    return share / weight if weight > 0 else math.inf
