"""The whole spec: cross-references between sections, scale sets, runtime facts, and
errors that name the path of each bad value."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from controller.model.base import Frozen
from controller.model.cluster import (
    ClusterSettings,
    ControllerSettings,
    ObservabilitySettings,
    VaultSettings,
)
from controller.model.containers import HOOK_MODES, HOOK_PODS_PER_RUNNER
from controller.model.images import image_problems
from controller.model.instances import GitHubInstance
from controller.model.pools import Pool
from controller.model.shares import share_problems
from controller.model.teams import Team
from controller.model.trust import trust_problems


class ScaleSet(Frozen):
    """One team on one pool: the unit the router queues for and listeners scale."""

    name: str
    team: str
    pool: str
    instance: str
    org: str
    runner_group: str
    labels: tuple[str, ...]


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for name in names:
        if name in seen and name not in dups:
            dups.append(name)
        seen.add(name)
    return dups


class PlatformSpec(Frozen):
    """Everything a stack declares; the controller reads the same JSON at start."""

    cluster: ClusterSettings
    """EKS cluster settings."""
    github_instances: tuple[GitHubInstance, ...] = Field(min_length=1)
    """GitHub instances served."""
    pools: tuple[Pool, ...] = Field(min_length=1)
    """Node pools."""
    teams: tuple[Team, ...] = Field(min_length=1)
    """Teams and what they may use."""
    controller: ControllerSettings
    """The controller deployment."""
    vault: VaultSettings
    """Vault JWT auth settings."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Alerts and dashboards."""

    @model_validator(mode="after")
    def _cross_references(self) -> PlatformSpec:
        problems: list[str] = []
        for field, items in (
            ("github_instances", self.github_instances),
            ("pools", self.pools),
            ("teams", self.teams),
        ):
            names = [item.name for item in items]
            for dup in _duplicates(names):
                problems.append(
                    f"{field}[{names.index(dup, names.index(dup) + 1)}].name: '{dup}' is used twice"
                )
        instances = {i.name: i for i in self.github_instances}
        pools = {p.name: p for p in self.pools}
        teams = {t.name: t for t in self.teams}
        for t_index, team in enumerate(self.teams):
            where = f"teams[{t_index}]"
            instance = instances.get(team.instance)
            if instance is None:
                problems.append(f"{where}.instance: unknown GitHub instance '{team.instance}'")
            elif team.org not in instance.orgs:
                problems.append(f"{where}.org: '{team.org}' is not an org of '{instance.name}'")
            for p_index, pool_name in enumerate(team.pools):
                pool = pools.get(pool_name)
                if pool is None:
                    problems.append(f"{where}.pools[{p_index}]: unknown pool '{pool_name}'")
                elif pool.kind == "isolated" and pool.owner != team.name:
                    problems.append(
                        f"{where}.pools[{p_index}]: pool '{pool_name}' is isolated for team "
                        f"'{pool.owner}'"
                    )
                elif len(f"{team.name}-{pool_name}") > 63:
                    problems.append(f"{where}.pools[{p_index}]: scale set name is too long")
                elif team.mode_on(pool_name) == "dind" and not (
                    pool.kind == "isolated" and pool.owner == team.name
                ):
                    # A privileged Docker daemon owns its node: only a pool no other team
                    # lands on may have one.
                    key = (
                        f"container_modes.{pool_name}"
                        if pool_name in team.container_modes
                        else "container_mode"
                    )
                    problems.append(
                        f"{where}.{key}: 'dind' runs a privileged Docker daemon and is only "
                        f"for an isolated pool the team owns; pool '{pool_name}' is a "
                        f"{pool.kind} pool other teams can land on (use 'buildkit' to build "
                        "images without privilege)"
                    )
        for t_index, team in enumerate(self.teams):
            for pool_name in team.container_modes:
                if pool_name not in team.pools:
                    problems.append(
                        f"teams[{t_index}].container_modes.{pool_name}: '{pool_name}' is not one "
                        "of the team's pools"
                    )
        groups: dict[tuple[str, str, str], str] = {}
        for t_index, team in enumerate(self.teams):
            group = (team.instance, team.org.lower(), team.runner_group.lower())
            if group in groups:
                # GitHub hands a job to any idle runner of a group whose labels match: a
                # shared group would let one team's jobs take the other's runners.
                problems.append(
                    f"teams[{t_index}].runner_group: '{team.runner_group}' is also team "
                    f"'{groups[group]}''s runner group in {team.org}; each team needs its own"
                )
            groups.setdefault(group, team.name)
        owners: dict[str, str] = {}
        for t_index, team in enumerate(self.teams):
            for p_index, pool_name in enumerate(team.pools):
                name = f"{team.name}-{pool_name}"
                if name in owners:
                    # Scale set names key Redis streams, runner names and pod labels.
                    problems.append(
                        f"teams[{t_index}].pools[{p_index}]: scale set name '{name}' is also "
                        f"{owners[name]}; rename the team or the pool"
                    )
                owners.setdefault(name, f"team '{team.name}' on pool '{pool_name}'")
        for p_index, pool in enumerate(self.pools):
            if pool.owner is not None and pool.owner not in teams:
                problems.append(f"pools[{p_index}].owner: unknown team '{pool.owner}'")
            elif not any(pool.name in team.pools for team in self.teams):
                problems.append(f"pools[{p_index}]: pool '{pool.name}' is used by no team")
        problems.extend(trust_problems(self.github_instances, self.teams))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _fair_shares(self) -> PlatformSpec:
        """Each pool's shares name teams that use it, and their minimums fit its limits."""
        problems = share_problems(self.pools, self.teams)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _pinned_images(self) -> PlatformSpec:
        """No ':latest'; digests beyond dev (controller) and in production (runners)."""
        problems = image_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- lookups used by both halves --

    def webhook_url(self, instance: str, base: str = "") -> str:
        """Where GitHub sends ``instance``'s webhooks: the Ingress's host, or ``base``
        (``scheme://host[:port]``) where the router is reached otherwise (a local run)."""
        root = base.rstrip("/") or f"https://{self.controller.webhook_host}"
        return f"{root}/webhooks/github/{instance}"

    def instance(self, name: str) -> GitHubInstance:
        return next(i for i in self.github_instances if i.name == name)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def teams_on_pool(self, pool_name: str) -> tuple[Team, ...]:
        return tuple(t for t in self.teams if pool_name in t.pools)

    def pods_per_runner(self, pool_name: str) -> int:
        """Pod slots a runner may need on a node of ``pool_name``: one, or with container
        hooks on the pool also its job pod and a container-step pod (they share its node)."""
        hooks = any(t.mode_on(pool_name) in HOOK_MODES for t in self.teams_on_pool(pool_name))
        return HOOK_PODS_PER_RUNNER if hooks else 1

    def scale_sets(self) -> tuple[ScaleSet, ...]:
        arch_label = {"amd64": "X64", "arm64": "ARM64"}
        sets = []
        for team in self.teams:
            for pool_name in team.pools:
                pool = self.pool(pool_name)
                sets.append(
                    ScaleSet(
                        name=f"{team.name}-{pool.name}",
                        team=team.name,
                        pool=pool.name,
                        instance=team.instance,
                        org=team.org,
                        runner_group=team.runner_group,
                        labels=(
                            "self-hosted",
                            "linux",
                            arch_label[pool.arch],
                            team.name,
                            pool.name,
                            *team.labels,
                        ),
                    )
                )
        return tuple(sets)

    def content_hash(self) -> str:
        """Hash of the canonical JSON; a change rolls the controller pods."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class RuntimeFacts(Frozen):
    """Values known only after deployment, written beside the spec in the ConfigMap."""

    team_role_arns: dict[str, str]
    vault_mounts: dict[str, str]
    redis_endpoint: str
    redis_port: int = 6379
    redis_tls: bool = True


# --- errors with paths ---------------------------------------------------------------


# A line that starts with a path below the failing value (``org_ids.acme-corp: …``); keys
# may be org logins or ``org/repo`` names.
_RELATIVE_PATH = re.compile(r"^[a-z_]+(\[\d+\]|\.[A-Za-z0-9_/-]+)*: ")


def _render_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("function-"):  # pydantic's validator frames, not data
            path += f".{part}" if path else part
    return path


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem, each starting with the path of the bad value."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        path = _render_loc(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the configuration reference)"
        elif item["type"] == "missing":
            message = "required"
        for line in message.splitlines():
            if not path:
                lines.append(line)  # cross-field problems carry their path from the root
            elif _RELATIVE_PATH.match(line):
                lines.append(f"{path}.{line}")
            else:
                lines.append(f"{path}: {line}")
    return lines


class SpecError(ValueError):
    """A spec that failed validation; ``problems`` has one path-prefixed line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid platform spec:\n  " + "\n  ".join(problems))
        self.problems = problems


def load_spec(data: object) -> PlatformSpec:
    """Validate a parsed document into a spec, or raise SpecError naming each bad path."""
    try:
        return PlatformSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe_errors(error)) from None


def load_spec_json(text: str | bytes) -> PlatformSpec:
    try:
        return PlatformSpec.model_validate_json(text)
    except ValidationError as error:
        raise SpecError(describe_errors(error)) from None
