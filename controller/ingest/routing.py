"""Which scale set a job belongs to.

GitHub gives a job to a runner whose labels include every ``runs-on`` label (compared
without case), in a runner group the repository may use. A scale set (team x pool)
matches a job when the job's instance and org are the team's, the repository is one of
the team's, every job label is one of the scale set's runner labels, and, once GitHub
names a runner group (``in_progress``/``completed``), it is the team's group.

When several scale sets of the team match, the rule is: the one with the fewest labels
the job did not ask for (the tightest fit), then the team's own order of pools in stack
config. So ``runs-on: [self-hosted, gpu]`` lands on the gpu pool, and a bare
``[self-hosted, linux]`` lands on the team's first pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.ingest.events import WorkflowJobEvent
from controller.model import PlatformSpec, ScaleSet, Team


@dataclass(frozen=True)
class Route:
    scale_set: ScaleSet
    team: Team


class Router:
    def __init__(self, spec: PlatformSpec) -> None:
        self.spec = spec
        teams = {team.name: team for team in spec.teams}
        # (instance, org lowercased) -> [(order, scale set, lowercased labels, team)]
        self._by_org: dict[tuple[str, str], list[tuple[int, ScaleSet, frozenset[str], Team]]] = {}
        for order, scale_set in enumerate(spec.scale_sets()):
            key = (scale_set.instance, scale_set.org.lower())
            labels = frozenset(label.lower() for label in scale_set.labels)
            self._by_org.setdefault(key, []).append(
                (order, scale_set, labels, teams[scale_set.team])
            )

    def route(self, instance: str, event: WorkflowJobEvent) -> Route | None:
        wanted = {label.lower() for label in event.workflow_job.labels}
        group = event.workflow_job.runner_group_name
        best: tuple[int, int, ScaleSet, Team] | None = None
        for order, scale_set, labels, team in self._by_org.get((instance, event.org.lower()), []):
            if not wanted <= labels or not team.claims_repository(event.repository.full_name):
                continue
            if group is not None and group != team.runner_group:
                continue
            candidate = (len(labels - wanted), order, scale_set, team)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return None if best is None else Route(best[2], best[3])
