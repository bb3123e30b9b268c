"""JIT runner registrations: one single-use config per runner pod, bound to the team's
runner group and the scale set's labels.

The spec names runner groups; the JIT API wants their ids, so :class:`RunnerGroups`
resolves and caches them (a missing group is an error that names the group and org, and
is asked again at most once a minute). :func:`generate` asks for a config under a fresh
name: a 409/422 for a name that exists (the reply to an earlier request was lost) is
answered with a new name once, never retried forever; the orphaned registration is the
reaper's. GitHub's rate limits surface as :class:`RateLimited` for the caller to back off.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.errors import GitHubError, GitHubUnavailable
from controller.github_client import GitHubClient
from controller.model import ScaleSet

SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
GROUP_TTL_SECONDS = 600.0
GROUP_MISS_RETRY_SECONDS = 60.0


class JitError(GitHubError):
    """GitHub refused the JIT request for a reason a retry will not fix."""


def runner_name(scale_set: ScaleSet) -> str:
    """``<scale set>-<5 random chars>``: the pod's name and the runner's, one DNS label."""
    suffix = "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(5))
    return f"{scale_set.name}-{suffix}"


def scale_set_of(name: str) -> str | None:
    """The scale set a runner name says it belongs to (:func:`runner_name`'s form), or None
    for a name not of that form. Callers still check that the scale set is one they know
    and belongs where they expect: a name is only a claim."""
    prefix, _, suffix = name.rpartition("-")
    if not prefix or len(suffix) != 5 or any(c not in SUFFIX_ALPHABET for c in suffix):
        return None
    return prefix


class RunnerGroups:
    def __init__(self) -> None:
        self._ids: dict[tuple[str, str, str], tuple[int | None, float]] = {}
        # Group ids are per org and per GitHub instance (GitHub.com and a GHES both number
        # from 1): every cache is keyed by (instance, org, id), never by the id alone.
        self._visibility: dict[tuple[str, str, int], str] = {}
        self._access: dict[tuple[str, str, int], tuple[str | None, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def checked_id(
        self, client: GitHubClient, scale_set: ScaleSet, claims: Callable[[str], bool]
    ) -> int:
        """The team's runner group id, once GitHub confirms that only the team's
        repositories may use the group. GitHub hands a queued job to any idle runner of a
        group the job's repository may use: a group open to the whole org would let any
        repository's job take the team's runners, pools and identity."""
        group_id = await self.id(client, scale_set.org, scale_set.runner_group)
        key = (client.instance.name, scale_set.org, group_id)
        cached = self._access.get(key)
        if cached is None or time.monotonic() - cached[1] >= GROUP_TTL_SECONDS:
            cached = (await self._problem(client, scale_set, group_id, claims), time.monotonic())
            self._access[key] = cached
        if cached[0] is not None:
            raise JitError(cached[0])
        return group_id

    async def _problem(
        self,
        client: GitHubClient,
        scale_set: ScaleSet,
        group_id: int,
        claims: Callable[[str], bool],
    ) -> str | None:
        where = f"runner group '{scale_set.runner_group}' in {scale_set.org}"
        visibility = self._visibility.get((client.instance.name, scale_set.org, group_id), "all")
        if visibility != "selected":
            return (
                f"{where} is visible to {visibility} repositories; set it to the team's "
                "selected repositories (no runner is started until then)"
            )
        page = 1
        while True:
            reply = await client.runner_group_repositories(scale_set.org, group_id, page)
            if reply.status != 200:
                raise GitHubUnavailable(f"{where}: repositories answered {reply.status}")
            repositories = reply.body.get("repositories", [])
            for repository in repositories:
                name = str(repository.get("full_name", ""))
                if not claims(name):
                    return (
                        f"{where} is open to {name}, which is not one of team "
                        f"'{scale_set.team}''s repositories (no runner is started until then)"
                    )
            if len(repositories) < 100:
                return None
            page += 1

    async def id(self, client: GitHubClient, org: str, name: str) -> int:
        key = (client.instance.name, org, name)
        cached = self._ids.get(key)
        now = time.monotonic()
        if cached is not None:
            group_id, at = cached
            if group_id is not None and now - at < GROUP_TTL_SECONDS:
                return group_id
            if group_id is None and now - at < GROUP_MISS_RETRY_SECONDS:
                raise JitError(f"runner group '{name}' does not exist in org {org}")
        async with self._locks.setdefault((client.instance.name, org), asyncio.Lock()):
            cached = self._ids.get(key)
            if cached is not None and time.monotonic() - cached[1] < 1.0 and cached[0]:
                return cached[0]  # another caller refreshed it while this one waited
            await self._refresh(client, org)
        group_id = self._ids.get(key, (None, 0.0))[0]
        if group_id is None:
            self._ids[key] = (None, time.monotonic())
            raise JitError(f"runner group '{name}' does not exist in org {org}")
        return group_id

    async def _refresh(self, client: GitHubClient, org: str) -> None:
        page, found = 1, {}
        while True:
            reply = await client.runner_groups(org, page)
            if reply.status != 200:
                raise GitHubUnavailable(f"runner groups of {org}: GitHub answered {reply.status}")
            groups = reply.body.get("runner_groups", [])
            found.update({g["name"]: int(g["id"]) for g in groups})
            self._visibility.update(
                {
                    (client.instance.name, org, int(g["id"])): str(g.get("visibility", "all"))
                    for g in groups
                }
            )
            if len(groups) < 100:
                break
            page += 1
        now = time.monotonic()
        for (instance, group_org, name), _ in list(self._ids.items()):
            if instance == client.instance.name and group_org == org and name not in found:
                self._ids[(instance, group_org, name)] = (None, now)
        for name, group_id in found.items():
            self._ids[(client.instance.name, org, name)] = (group_id, now)


@dataclass(frozen=True)
class JitRunner:
    name: str
    runner_id: int
    encoded_jit_config: str = field(repr=False)  # a credential: never in a log line


async def generate(
    client: GitHubClient,
    groups: RunnerGroups,
    scale_set: ScaleSet,
    claims: Callable[[str], bool],
    name: str | None = None,
) -> JitRunner:
    """A JIT runner for ``scale_set``; ``claims`` says whether a repository is the team's."""
    group_id = await groups.checked_id(client, scale_set, claims)
    for attempt in (1, 2):
        name = name if attempt == 1 and name else runner_name(scale_set)
        reply = await client.generate_jitconfig(
            scale_set.org, name, group_id, list(scale_set.labels)
        )
        if reply.status == 201:
            body = reply.body
            return JitRunner(name, int(body["runner"]["id"]), str(body["encoded_jit_config"]))
        if reply.status in (409, 422) and attempt == 1:
            continue  # the name is taken (a lost reply, or a collision): one new name
        message = (reply.body or {}).get("message", "") if isinstance(reply.body, dict) else ""
        raise JitError(f"generate-jitconfig for {scale_set.name}: {reply.status} {message[:200]}")
    raise AssertionError("unreachable")
