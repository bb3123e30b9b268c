"""What the local run replays: jobs with a team, repository, labels, requester, arrival
time and duration; a built-in scenario or a YAML file (docs/local.md, "Workload files").

```yaml
members:                 # optional: who is in each team's first GitHub team
  web: [alice, ana]
jobs:
  - team: web            # the team whose organisation the job is queued in
    repo: acme-corp/storefront
    labels: [self-hosted, linux, web]
    requester: alice     # the job's sender; a non-member is denied
    at: 0                # seconds after the start of the replay
    duration: 20         # seconds the job runs once a runner has it
    count: 5             # optional: this many such jobs…
    every: 2             # …one every 2 seconds (default 0: all at once)
```

Every error names the file, the entry and the field: ``w.yaml: jobs[3].duration: …``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.model import PlatformSpec, ScaleSet

DEFAULT_MEMBERS = {"web": ("alice", "ana"), "ml": ("rob", "mia"), "infra": ("sam",)}
JOB_FIELDS = {"team", "repo", "labels", "requester", "at", "duration", "count", "every"}


class WorkloadError(ValueError):
    """A workload that cannot be replayed; the message names file, entry and field."""


@dataclass(frozen=True)
class WorkloadJob:
    index: int  # the entry of the file it came from
    team: str
    repo: str
    labels: tuple[str, ...]
    requester: str
    at: float
    duration: float
    scale_set: str  # where the platform routes it (controller.ingest.routing)
    pool: str  # that scale set's pool (a team name may hold '-': never split the name)


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: tuple[WorkloadJob, ...]
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def allowed(self, job: WorkloadJob) -> bool:
        return job.requester in self.members.get(job.team, ())

    @property
    def span(self) -> float:
        return max((j.at for j in self.jobs), default=0.0)


def _route(spec: PlatformSpec, team_name: str, repo: str, labels: list[str]) -> ScaleSet | None:
    from controller.ingest.events import WorkflowJobEvent
    from controller.ingest.routing import Router

    team = next(t for t in spec.teams if t.name == team_name)
    event = WorkflowJobEvent.model_validate(
        {
            "action": "queued",
            "workflow_job": {"id": 1, "run_id": 1, "labels": labels},
            "repository": {"full_name": repo},
            "organization": {"login": team.org},
            "sender": {"login": "x"},
        }
    )
    route = Router(spec).route(team.instance, event)
    return None if route is None else route.scale_set


def _number(where: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadError(f"{where}: a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an integer past any float: as endless as inf
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise WorkloadError(f"{where}: must be {'> 0' if positive else '≥ 0'}, not {seconds}")
    return seconds


def parse(document: Any, spec: PlatformSpec, source: str) -> Workload:
    """Validate a workload document against the spec (teams, orgs, routes)."""
    if not isinstance(document, dict):
        raise WorkloadError(f"{source}: a mapping with 'jobs' (and optionally 'members')")
    unknown = set(document) - {"jobs", "members"}
    if unknown:
        raise WorkloadError(f"{source}: {sorted(unknown)[0]}: unknown key (jobs, members)")
    teams = {team.name: team for team in spec.teams}
    members: dict[str, tuple[str, ...]] = {
        name: DEFAULT_MEMBERS.get(name, (f"{name}-dev",)) for name in teams
    }
    raw_members = document.get("members", {})
    if not isinstance(raw_members, dict):
        raise WorkloadError(f"{source}: members: a mapping of team → list of logins")
    for name, logins in raw_members.items():
        if name not in teams:
            raise WorkloadError(f"{source}: members.{name}: no such team in the stack")
        if not isinstance(logins, list) or not all(isinstance(x, str) and x for x in logins):
            raise WorkloadError(f"{source}: members.{name}: a list of GitHub logins")
        members[name] = tuple(logins)
    entries = document.get("jobs")
    if not isinstance(entries, list) or not entries:
        raise WorkloadError(f"{source}: jobs: a non-empty list of jobs")
    jobs: list[WorkloadJob] = []
    for index, entry in enumerate(entries):
        where = f"{source}: jobs[{index}]"
        if not isinstance(entry, dict):
            raise WorkloadError(
                f"{where}: a mapping of team, repo, labels, requester, at, duration"
            )
        extra = set(entry) - JOB_FIELDS
        if extra:
            raise WorkloadError(f"{where}.{sorted(extra)[0]}: unknown field")
        for required in ("team", "repo", "labels", "requester", "at", "duration"):
            if required not in entry:
                raise WorkloadError(f"{where}.{required}: missing")
        team = entry["team"]
        if team not in teams:
            raise WorkloadError(
                f"{where}.team: {team!r} is not a team of the stack ({sorted(teams)})"
            )
        repo = entry["repo"]
        if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
            raise WorkloadError(f"{where}.repo: 'org/name', not {repo!r}")
        if repo.split("/")[0].lower() != teams[team].org.lower():
            raise WorkloadError(
                f"{where}.repo: {repo} is not in team {team}'s organisation {teams[team].org}"
            )
        labels = entry["labels"]
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) and x for x in labels)
        ):
            raise WorkloadError(f"{where}.labels: a non-empty list of runs-on labels")
        requester = entry["requester"]
        if not isinstance(requester, str) or not requester:
            raise WorkloadError(f"{where}.requester: a GitHub login")
        at = _number(f"{where}.at", entry["at"], positive=False)
        duration = _number(f"{where}.duration", entry["duration"], positive=True)
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise WorkloadError(f"{where}.count: a whole number from 1 to 10000, not {count!r}")
        every = _number(f"{where}.every", entry.get("every", 0), positive=False)
        if not teams[team].claims_repository(repo):
            raise WorkloadError(f"{where}.repo: {repo} is not one of team {team}'s repositories")
        scale_set = _route(spec, team, repo, labels)
        if scale_set is None:
            raise WorkloadError(
                f"{where}.labels: {labels} match no pool of team {team} (a runner has "
                f"self-hosted, linux, its arch, the team, the pool and the team's labels)"
            )
        for n in range(count):
            jobs.append(
                WorkloadJob(
                    index,
                    team,
                    repo,
                    tuple(labels),
                    requester,
                    at + n * every,
                    duration,
                    scale_set.name,
                    scale_set.pool,
                )
            )
    jobs.sort(key=lambda j: (j.at, j.index))
    return Workload(source, tuple(jobs), members)


def load(path: Path, spec: PlatformSpec) -> Workload:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise WorkloadError(f"{path}: cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise WorkloadError(f"{path}: not YAML: {error}") from None
    return parse(document, spec, str(path))


def default_document(seed: int = 11) -> dict[str, Any]:
    """The built-in scenario (about 2½ minutes of arrivals on the dev stack's teams):

    - a morning ramp of web jobs on the warm pool, ever closer together;
    - infra deploys and ml jobs on its isolated pool throughout;
    - GPU jobs of ml (one GPU each) and a few high-memory ones;
    - a burst of 24 web jobs at once (some on the NVMe pool);
    - a web engineer trying infra's pool, and an outsider trying ml's: both denied.
    """
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []

    def add(
        team: str, repo: str, labels: list[str], who: str, at: float, low: int, high: int
    ) -> None:
        jobs.append(
            {
                "team": team,
                "repo": repo,
                "labels": labels,
                "requester": who,
                "at": round(at, 1),
                "duration": rng.randint(low, high),
            }
        )

    web = ["self-hosted", "linux", "web"]
    moment = 0.0
    for gap in (8.0, 4.0, 2.0):  # the morning ramp: 30 s each, faster and faster
        end = moment + 30
        while moment < end:
            add("web", "acme-corp/storefront", web, rng.choice(("alice", "ana")), moment, 20, 45)
            moment += gap
    for n in range(9):
        add(
            "infra",
            "platform/deploy",
            ["self-hosted", "linux", "deploy"],
            "sam",
            5 + n * 11,
            25,
            40,
        )
    for n in range(8):
        add(
            "ml",
            "research/models",
            ["self-hosted", "linux", "ml-isolated"],
            "rob",
            10 + n * 12,
            20,
            40,
        )
    for n in range(6):
        add(
            "ml",
            "research/training-gpt",
            ["self-hosted", "linux", "gpu"],
            "mia",
            30 + n * 6,
            40,
            60,
        )
    for n in range(2):
        add(
            "ml", "research/models", ["self-hosted", "linux", "highmem"], "rob", 50 + n * 20, 30, 40
        )
    for _ in range(20):  # the burst
        add("web", "acme-corp/web-shop", web, "ana", 100, 15, 30)
    for _ in range(4):
        add("web", "acme-corp/web-shop", ["self-hosted", "linux", "nvme"], "alice", 100, 20, 30)
    # Denied: a web engineer on infra's pool, an outsider on ml's GPU pool.
    add("infra", "platform/deploy", ["self-hosted", "linux", "deploy"], "alice", 40, 10, 10)
    add("ml", "research/models", ["self-hosted", "linux", "gpu"], "mallory", 70, 10, 10)
    return {"members": {k: list(v) for k, v in DEFAULT_MEMBERS.items()}, "jobs": jobs}


def default(spec: PlatformSpec) -> Workload:
    return parse(default_document(), spec, "built-in scenario")
