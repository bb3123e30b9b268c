"""The emulator's world: orgs, teams, runner groups, runners, jobs and webhooks.

Pure state behind one lock; the HTTP layer (server.py) only translates. Behaviour follows
GitHub where the platform depends on it: only ``active`` membership authorises and
child-team members count; a JIT config is single use and binds the runner to a group and
labels; a queued job goes to an idle online runner whose labels include every ``runs-on``
label (case-insensitive) in a group visible to the repository; ephemeral runners are
removed after their one job.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from localenv.github.webhooks import Delivery, Hook, new_guid


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    pass


@dataclass
class Team:
    id: int
    org: str
    slug: str
    parent: str | None = None
    members: dict[str, tuple[str, str]] = field(default_factory=dict)  # user -> (role, state)


@dataclass
class RunnerGroup:
    id: int
    org: str
    name: str
    visibility: str = "all"  # all | selected | private
    selected_repositories: tuple[str, ...] = ()
    default: bool = False

    def visible_to(self, repository: str) -> bool:
        if self.visibility == "all":
            return True
        return repository.lower() in (r.lower() for r in self.selected_repositories)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "visibility": self.visibility,
            "default": self.default,
            "allows_public_repositories": False,
            "restricted_to_workflows": False,
            "selected_workflows": [],
            "runners_url": f"/orgs/{self.org}/actions/runner-groups/{self.id}/runners",
        }


@dataclass
class Runner:
    id: int
    org: str
    name: str
    group_id: int
    labels: tuple[str, ...]
    jit_secret: str
    ephemeral: bool = True
    status: str = "offline"
    busy: bool = False
    job_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "os": "Linux",
            "status": self.status,
            "busy": self.busy,
            "ephemeral": self.ephemeral,
            "runner_group_id": self.group_id,
            "labels": [
                {
                    "id": i + 1,
                    "name": label,
                    "type": "read-only" if label == "self-hosted" else "custom",
                }
                for i, label in enumerate(self.labels)
            ],
        }


@dataclass(frozen=True)
class RunnerEvent:
    """One thing a runner did; ``seq`` numbers them 1, 2, 3, … per instance."""

    seq: int
    runner_id: int
    name: str
    org: str
    event: str  # online | job_started | job_completed
    job_id: int | None = None
    conclusion: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "runner_id": self.runner_id,
            "name": self.name,
            "org": self.org,
            "event": self.event,
            "job_id": self.job_id,
            "conclusion": self.conclusion,
        }


@dataclass
class Job:
    id: int
    run_id: int
    org: str
    repository: str
    labels: tuple[str, ...]
    sender: str
    name: str = "build"
    workflow_name: str = "ci"
    head_branch: str = "main"
    status: str = "queued"
    conclusion: str | None = None
    runner: Runner | None = None
    group: RunnerGroup | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


@dataclass
class World:
    """All state of one emulated GitHub instance."""

    kind: str = "cloud"
    host: str = "github.com"
    lock: threading.RLock = field(default_factory=threading.RLock)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    orgs: dict[str, int] = field(default_factory=dict)
    teams: dict[tuple[str, str], Team] = field(default_factory=dict)
    groups: dict[int, RunnerGroup] = field(default_factory=dict)
    runners: dict[int, Runner] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    registration_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    hooks: dict[int, Hook] = field(default_factory=dict)
    hook_orgs: dict[int, str] = field(default_factory=dict)  # org hooks; absent: app hook
    deliveries: list[Delivery] = field(default_factory=list)
    outbox: list[tuple[Hook, Delivery]] = field(default_factory=list)
    events: list[RunnerEvent] = field(default_factory=list)
    repositories: set[str] = field(default_factory=set)  # "org/repo"; jobs add theirs
    closed: bool = False
    # Shares ``lock``, so events are recorded and waited for under the world's one lock.
    events_changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.events_changed = threading.Condition(self.lock)

    def next_id(self) -> int:
        return next(self.ids)

    # -- organisations and teams --

    def add_org(self, org: str) -> int:
        with self.lock:
            if org not in self.orgs:
                self.orgs[org] = self.next_id()
                group = RunnerGroup(self.next_id(), org, "Default", default=True)
                self.groups[group.id] = group
            return self.orgs[org]

    def org_id(self, org: str) -> int:
        if org not in self.orgs:
            raise NotFound(f"organization {org}")
        return self.orgs[org]

    def add_team(self, org: str, slug: str, parent: str | None = None) -> Team:
        with self.lock:
            self.add_org(org)
            team = Team(self.next_id(), org, slug, parent)
            self.teams[(org, slug)] = team
            return team

    def team(self, org: str, slug: str) -> Team:
        try:
            return self.teams[(org, slug)]
        except KeyError:
            raise NotFound(f"team {org}/{slug}") from None

    def set_membership(
        self, org: str, slug: str, user: str, *, role: str = "member", state: str = "active"
    ) -> None:
        with self.lock:
            self.team(org, slug).members[user] = (role, state)

    def remove_membership(self, org: str, slug: str, user: str) -> None:
        with self.lock:
            self.team(org, slug).members.pop(user, None)

    def membership(self, org: str, slug: str, user: str) -> dict[str, Any]:
        """GitHub counts members of child teams as members of the parent."""
        with self.lock:
            team = self.team(org, slug)
            if user in team.members:
                role, state = team.members[user]
                return {
                    "role": role,
                    "state": state,
                    "url": f"/orgs/{org}/teams/{slug}/memberships/{user}",
                }
            for child in self.teams.values():
                if child.org == org and child.parent == slug:
                    try:
                        return self.membership(org, child.slug, user)
                    except NotFound:
                        continue
            raise NotFound(f"{user} in {org}/{slug}")

    # -- runner groups, registration, JIT --

    def add_runner_group(
        self, org: str, name: str, *, visibility: str = "all", repositories: tuple[str, ...] = ()
    ) -> RunnerGroup:
        with self.lock:
            self.add_org(org)
            group = RunnerGroup(self.next_id(), org, name, visibility, repositories)
            self.groups[group.id] = group
            return group

    def org_groups(self, org: str) -> list[RunnerGroup]:
        self.org_id(org)
        return [g for g in self.groups.values() if g.org == org]

    def registration_token(self, org: str, now: float) -> tuple[str, float]:
        with self.lock:
            self.org_id(org)
            token = "R" + secrets.token_hex(14).upper()
            expires = now + 3600
            self.registration_tokens[token] = (org, expires)
            return token, expires

    def generate_jit(self, org: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.org_id(org)
            name, group_id, labels = (
                body.get("name"),
                body.get("runner_group_id"),
                body.get("labels"),
            )
            if not isinstance(name, str) or not name:
                raise Invalid("name is required")
            if (
                not isinstance(group_id, int)
                or group_id not in self.groups
                or self.groups[group_id].org != org
            ):
                raise Invalid(f"runner_group_id {group_id!r} is not a runner group of {org}")
            if (
                not isinstance(labels, list)
                or not 1 <= len(labels) <= 100
                or not all(isinstance(label, str) and label for label in labels)
            ):
                raise Invalid("labels must hold 1 to 100 names")
            if any(r.name == name and r.org == org for r in self.runners.values()):
                raise Invalid(f"a runner named {name} already exists")
            runner = Runner(
                self.next_id(),
                org,
                name,
                group_id,
                tuple(labels),
                jit_secret=secrets.token_urlsafe(24),
            )
            self.runners[runner.id] = runner
            config = {
                "runner_id": runner.id,
                "org": org,
                "host": self.host,
                "secret": runner.jit_secret,
            }
            encoded = base64.b64encode(json.dumps(config).encode()).decode()
            return {"runner": runner.as_json(), "encoded_jit_config": encoded}

    def start_runner(self, encoded_jit_config: str) -> Runner:
        """What ``./run.sh --jitconfig`` does: register once, then take a job if one waits."""
        with self.lock:
            try:
                config = json.loads(base64.b64decode(encoded_jit_config))
                runner = self.runners[int(config["runner_id"])]
            except (ValueError, KeyError, TypeError):
                raise Invalid("not a JIT config of this server") from None
            if runner.status == "online" or runner.jit_secret == "":
                raise Invalid("JIT config already used (single use)")
            if not secrets.compare_digest(runner.jit_secret, str(config.get("secret"))):
                raise Invalid("JIT config does not match its runner")
            runner.status = "online"
            runner.jit_secret = ""
            self._record(runner, "online")
            self._assign()
            return runner

    def delete_runner(self, org: str, runner_id: int) -> None:
        with self.lock:
            runner = self.runners.get(runner_id)
            if runner is None or runner.org != org:
                raise NotFound(f"runner {runner_id}")
            if runner.busy:
                raise Invalid("runner is running a job")
            del self.runners[runner_id]

    def org_runners(self, org: str) -> list[Runner]:
        self.org_id(org)
        return sorted((r for r in self.runners.values() if r.org == org), key=lambda r: r.id)

    # -- jobs and assignment --

    def queue_job(
        self, org: str, repository: str, labels: list[str], sender: str, **fields: Any
    ) -> Job:
        with self.lock:
            self.org_id(org)
            job = Job(
                self.next_id(),
                fields.pop("run_id", None) or self.next_id(),
                org,
                repository,
                tuple(labels),
                sender,
                **fields,
            )
            self.jobs[job.id] = job
            self.repositories.add(repository)
            self._emit(job, "queued")
            self._assign()
            return job

    def _matches(self, runner: Runner, job: Job) -> bool:
        have = {label.lower() for label in runner.labels}
        group = self.groups[runner.group_id]
        return (
            runner.org == job.org
            and runner.status == "online"
            and not runner.busy
            and all(label.lower() in have for label in job.labels)
            and group.visible_to(job.repository)
        )

    def _assign(self) -> None:
        # Only idle online runners can take a job: with a thousand runners registered and
        # a thousand jobs queued, scanning every pair on every change would be quadratic.
        idle = [r for r in self.runners.values() if r.status == "online" and not r.busy]
        if not idle:
            return
        queued = sorted((j for j in self.jobs.values() if j.status == "queued"), key=lambda j: j.id)
        for job in queued:
            runner = next((r for r in idle if self._matches(r, job)), None)
            if runner is None:
                continue
            idle.remove(runner)
            runner.busy, runner.job_id = True, job.id
            job.runner, job.group = runner, self.groups[runner.group_id]
            job.status, job.started_at = "in_progress", time.time()
            self._record(runner, "job_started", job)
            self._emit(job, "in_progress")
            if not idle:
                return

    def complete_job(self, job_id: int, conclusion: str = "success") -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            if job.status == "completed":
                raise Invalid("job already completed")
            job.status, job.conclusion, job.completed_at = "completed", conclusion, time.time()
            self._emit(job, "completed")
            if job.runner is not None:
                self._record(job.runner, "job_completed", job)
                job.runner.busy, job.runner.job_id = False, None
                if job.runner.ephemeral:  # an ephemeral runner is gone after its job
                    self.runners.pop(job.runner.id, None)
            self._assign()
            return job

    def cancel_run(self, run_id: int) -> list[Job]:
        with self.lock:
            jobs = [j for j in self.jobs.values() if j.run_id == run_id]
            if not jobs:
                raise NotFound(f"run {run_id}")
            return [self.complete_job(j.id, "cancelled") for j in jobs if j.status != "completed"]

    def runner_lost(self, name: str) -> Job | None:
        """The runner ``name`` stopped answering (its machine went away): it is offline,
        and GitHub fails the job it was running (which ends an ephemeral runner)."""
        with self.lock:
            runner = next((r for r in self.runners.values() if r.name == name), None)
            if runner is None:
                raise NotFound(f"runner {name}")
            runner.status = "offline"
            job = self.jobs.get(runner.job_id) if runner.job_id is not None else None
            if job is None or job.status == "completed":
                return None
            return self.complete_job(job.id, "failure")

    def rerun_job(self, job_id: int) -> Job:
        """Re-run a finished job: a new job of the same run, queued (and announced)."""
        with self.lock:
            old = self.jobs.get(job_id)
            if old is None:
                raise NotFound(f"job {job_id}")
            if old.status != "completed":
                raise Invalid("only a completed job can be re-run")
            return self.queue_job(
                old.org,
                old.repository,
                list(old.labels),
                old.sender,
                run_id=old.run_id,
                name=old.name,
                workflow_name=old.workflow_name,
                head_branch=old.head_branch,
            )

    def job_json(self, job: Job) -> dict[str, Any]:
        runner = job.runner
        return {
            "id": job.id,
            "run_id": job.run_id,
            "run_attempt": 1,
            "name": job.name,
            "workflow_name": job.workflow_name,
            "head_branch": job.head_branch,
            "status": job.status,
            "conclusion": job.conclusion,
            "labels": list(job.labels),
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "completed_at": _iso(job.completed_at),
            "runner_id": runner.id if runner else None,
            "runner_name": runner.name if runner else None,
            "runner_group_id": job.group.id if job.group else None,
            "runner_group_name": job.group.name if job.group else None,
        }

    # -- repositories and workflow runs --

    def add_repository(self, full_name: str) -> None:
        with self.lock:
            self.add_org(full_name.split("/", 1)[0])
            self.repositories.add(full_name)

    def org_repositories(self, org: str) -> list[str]:
        with self.lock:
            self.org_id(org)
            return sorted(r for r in self.repositories if r.split("/", 1)[0] == org)

    def workflow_runs(self, repository: str, status: str | None = None) -> list[dict[str, Any]]:
        """The repository's runs, newest first: a run is ``queued`` while none of its jobs
        has started, ``completed`` once all have ended, else ``in_progress``."""
        with self.lock:
            runs: dict[int, list[Job]] = {}
            for job in self.jobs.values():
                if job.repository == repository:
                    runs.setdefault(job.run_id, []).append(job)
            found = []
            for run_id in sorted(runs, reverse=True):
                jobs = runs[run_id]
                states = {job.status for job in jobs}
                state = (
                    "queued"
                    if states == {"queued"}
                    else "completed"
                    if states == {"completed"}
                    else "in_progress"
                )
                if status is not None and state != status:
                    continue
                first = min(jobs, key=lambda j: j.id)
                conclusions = {job.conclusion for job in jobs}
                found.append(
                    {
                        "id": run_id,
                        "name": first.workflow_name,
                        "run_attempt": 1,
                        "status": state,
                        "conclusion": (
                            None
                            if state != "completed"
                            else "cancelled"
                            if "cancelled" in conclusions
                            else "failure"
                            if "failure" in conclusions
                            else "success"
                        ),
                        "head_branch": first.head_branch,
                        "event": "push",
                        "created_at": _iso(first.created_at),
                        "actor": {"login": first.sender, "type": "User"},
                        "triggering_actor": {"login": first.sender, "type": "User"},
                        "repository": {
                            "full_name": repository,
                            "name": repository.split("/", 1)[1],
                            "owner": {"login": first.org},
                        },
                        "jobs_url": f"/repos/{repository}/actions/runs/{run_id}/jobs",
                    }
                )
            return found

    def run_jobs(self, repository: str, run_id: int) -> list[dict[str, Any]]:
        with self.lock:
            jobs = [
                self.job_json(job)
                for job in sorted(self.jobs.values(), key=lambda j: j.id)
                if job.run_id == run_id and job.repository == repository
            ]
            if not jobs:
                raise NotFound(f"run {run_id}")
            return jobs

    # -- runner events --

    def _record(self, runner: Runner, event: str, job: Job | None = None) -> None:
        """Append to the event log; called with ``lock`` held."""
        self.events.append(
            RunnerEvent(
                len(self.events) + 1,
                runner.id,
                runner.name,
                runner.org,
                event,
                job.id if job else None,
                job.conclusion if job else None,
            )
        )
        self.events_changed.notify_all()

    def runner_events(
        self, after: int = 0, wait: float = 0.0, limit: int = 1000
    ) -> list[RunnerEvent]:
        """Events with ``seq > after``, oldest first; waits up to ``wait`` seconds for one."""
        with self.events_changed:
            self.events_changed.wait_for(lambda: self.closed or len(self.events) > after, wait)
            return self.events[max(0, after) : max(0, after) + limit]

    def close(self) -> None:
        """Wake every waiting :meth:`runner_events` call: the server is going away."""
        with self.events_changed:
            self.closed = True
            self.events_changed.notify_all()

    # -- webhooks --

    def add_hook(
        self,
        url: str,
        secret: str | None,
        org: str | None = None,
        events: tuple[str, ...] = ("workflow_job", "ping"),
    ) -> Hook:
        """An org hook (``org``) or, with no org, the GitHub App's hook."""
        with self.lock:
            hook = Hook(
                self.next_id(),
                url,
                secret,
                events,
                "organization" if org else "integration",
                self.orgs.get(org, 0) if org else 0,
            )
            self.hooks[hook.id] = hook
            if org:
                self.hook_orgs[hook.id] = org
            self.outbox.append(
                (
                    hook,
                    self._delivery(
                        hook,
                        "ping",
                        None,
                        {
                            "zen": "Keep it logically awesome.",
                            "hook_id": hook.id,
                            "hook": {
                                "id": hook.id,
                                "type": hook.target_type,
                                "events": list(events),
                                "config": {"url": url, "content_type": "json"},
                            },
                        },
                    ),
                )
            )
            return hook

    def _delivery(
        self, hook: Hook, event: str, action: str | None, payload: dict[str, Any]
    ) -> Delivery:
        delivery = Delivery(self.next_id(), new_guid(), hook.id, event, action, payload)
        self.deliveries.append(delivery)
        return delivery

    def _emit(self, job: Job, action: str) -> None:
        payload = {
            "action": action,
            "workflow_job": self.job_json(job),
            "repository": {
                "id": abs(hash(job.repository)) % 10**8,
                "full_name": job.repository,
                "name": job.repository.split("/")[1],
                "owner": {"login": job.org},
                "private": True,
            },
            "organization": {"login": job.org, "id": self.orgs[job.org]},
            "sender": {"login": job.sender, "type": "User"},
        }
        for hook in self.hooks.values():
            org = self.hook_orgs.get(hook.id)
            if "workflow_job" in hook.events and org in (None, job.org):
                self.outbox.append((hook, self._delivery(hook, "workflow_job", action, payload)))

    def redeliver(
        self, delivery_id: int, hook_id: int | None, *, app_hook: bool = False
    ) -> tuple[Hook, Delivery]:
        """Send a delivery again (same GUID): of ``hook_id``, of any hook (None), or with
        ``app_hook`` only of the App's hook (one with no org), as /app/hook/… serves."""
        with self.lock:
            original = next(
                (
                    d
                    for d in self.deliveries
                    if d.id == delivery_id
                    and (hook_id is None or d.hook_id == hook_id)
                    and not (app_hook and d.hook_id in self.hook_orgs)
                ),
                None,
            )
            if original is None:
                raise NotFound(f"delivery {delivery_id}")
            hook = self.hooks[original.hook_id]
            again = Delivery(
                self.next_id(),
                original.guid,
                hook.id,
                original.event,
                original.action,
                original.payload,
                redelivery=True,
            )
            self.deliveries.append(again)
            self.outbox.append((hook, again))
            return hook, again

    def take_outbox(self) -> list[tuple[Hook, Delivery]]:
        with self.lock:
            pending, self.outbox = self.outbox, []
            return pending
