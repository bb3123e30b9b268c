"""Teams: who may run jobs, from which repositories, on which pools."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from controller.model.base import (
    MAX_SESSION_SECONDS,
    DnsLabel,
    Frozen,
    GitHubLogin,
    PolicyArn,
    Quantity,
    RunnerLabel,
    TeamSlug,
)
from controller.model.containers import BUILDKIT_IMAGE, DIND_IMAGE, ContainerMode
from controller.model.trust import (
    VAULT_POLICY_PREFIX,
    EnvironmentName,
    GitHubId,
    RefPattern,
    glob_shape_problem,
)


class RunnerResources(Frozen):
    cpu: Quantity = "2"
    """CPU request per runner pod."""
    memory: Quantity = "4Gi"
    """Memory request (and limit) per runner pod."""
    ephemeral_storage: Quantity = "20Gi"
    """Ephemeral storage request per runner pod."""


_REPO = re.compile(r"^(?P<org>[A-Za-z0-9][A-Za-z0-9-]*)/(?P<repo>[A-Za-z0-9._*?\[\]-]+)$")


def _repository(value: str) -> str:
    if value == "*" or _REPO.match(value) is None:
        raise ValueError(
            f"'{value}' is not 'org/repo' (globs are allowed in the repository part only)"
        )
    problem = glob_shape_problem(value.split("/", 1)[1])
    if problem is not None:
        raise ValueError(f"'{value}' {problem}")
    return value


Repository = Annotated[str, AfterValidator(_repository)]


def repo_org(repository: str) -> str:
    return repository.split("/", 1)[0]


def is_org_wide(repository: str) -> bool:
    """``org/*`` (or a pattern that matches every name) grants the whole organisation."""
    name = repository.split("/", 1)[1]
    return name.strip("*") == ""


class Team(Frozen):
    """A product team: who may run jobs, from which repositories, on which pools."""

    name: DnsLabel
    """Team name; the IAM role is github-runner-<name>-role, the namespace runners-<name>."""
    instance: DnsLabel
    """The GitHub instance the team's repositories live on."""
    org: GitHubLogin
    """The organisation of its repositories and runner group."""
    github_teams: tuple[TeamSlug, ...] = Field(min_length=1)
    """GitHub team slugs whose active members may run jobs."""
    repositories: tuple[Repository, ...] = Field(min_length=1)
    """org/repo names whose jobs the team runs ('*' globs in the repo part: 'web-*',
    '*-admin', 'web-*-app'; never matching another team's)."""
    allow_org_wide: bool = Field(
        default=False, description="Permit 'org/*': every repository of the organisation."
    )
    repository_ids: dict[str, GitHubId] = Field(default_factory=dict)
    """GitHub's id of each exact (glob-free) repository on github.com
    (``gh api repos/ORG/REPO --jq .id``): required there, where the id-form subject
    carries it, so a repository re-created under the same name is a stranger."""
    refs: tuple[RefPattern, ...] = ()
    """Only jobs on these refs may use the team's roles ('refs/heads/main', 'refs/tags/v*';
    a trailing '*' only). With environments: either. Both empty: any ref, environment or
    pull request."""
    environments: tuple[EnvironmentName, ...] = ()
    """Only jobs in these deployment environments may use the team's roles (with refs:
    either)."""
    pools: tuple[DnsLabel, ...] = Field(min_length=1)
    """Pools the team's runners may use (its isolated pools included)."""
    runner_group: str = Field(default="", max_length=100)
    """GitHub runner group of the team's runners (default: the team name)."""
    labels: tuple[RunnerLabel, ...] = ()
    """Extra runs-on labels of the team's runners."""
    min_idle: int = Field(default=0, ge=0, le=1000)
    """Idle runners kept ready."""
    max_runners: int = Field(default=20, ge=1, le=5000)
    """Most runners at once."""
    runner_image: str = Field(default="ghcr.io/actions/actions-runner:2.329.0", min_length=3)
    """Runner container image."""
    resources: RunnerResources = RunnerResources()
    """Runner pod resources."""
    job_timeout_minutes: int = Field(default=360, ge=5, le=7200)
    """Pod deadline; also sizes node termination grace."""
    vault_policies: tuple[str, ...] = ()
    """Extra Vault policies for the team's role (never 'root' or a platform 'runner-*' one;
    its own runner-<name> is always attached)."""
    aws_managed_policy_arns: tuple[PolicyArn, ...] = ()
    """IAM policies attached to github-runner-<team>-role."""
    session_duration_seconds: int = Field(default=MAX_SESSION_SECONDS, ge=900, le=3600)
    """Maximum AWS session, 900 to 3600 seconds."""
    container_mode: ContainerMode = "kubernetes"
    """Container jobs and builds on pools not in container_modes (docs/containers.md)."""
    container_modes: dict[DnsLabel, ContainerMode] = Field(default_factory=dict)
    """Container mode per pool of the team; 'dind' only on an isolated pool it owns."""
    require_job_container: bool = True
    """Refuse jobs without 'container:' in the hook modes (job code never runs beside the
    runner's API token)."""
    job_resources: RunnerResources = RunnerResources()
    """Requests (and memory limit) of the job container the hooks start."""
    buildkit_image: str = Field(default=BUILDKIT_IMAGE, min_length=3)
    """Rootless BuildKit image of the buildkit mode's sidecar."""
    dind_image: str = Field(default=DIND_IMAGE, min_length=3)
    """Docker-in-Docker image of the dind mode's sidecar."""

    @model_validator(mode="before")
    @classmethod
    def _default_runner_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("runner_group") and "name" in data:
            return {**data, "runner_group": data["name"]}
        return data

    @model_validator(mode="after")
    def _team_rules(self) -> Team:
        if self.min_idle > self.max_runners:
            raise ValueError(
                f"min_idle ({self.min_idle}) is greater than max_runners ({self.max_runners})"
            )
        for index, repo in enumerate(self.repositories):
            if repo_org(repo).lower() != self.org.lower():
                raise ValueError(f"repositories[{index}]: '{repo}' is not in org '{self.org}'")
            if is_org_wide(repo) and not self.allow_org_wide:
                raise ValueError(
                    f"repositories[{index}]: '{repo}' grants every repository of the org; "
                    "set allow_org_wide: true if that is meant"
                )
        if len(set(self.pools)) != len(self.pools):
            raise ValueError("pools: a pool is listed twice")
        return self

    def mode_on(self, pool_name: str) -> ContainerMode:
        """The container mode of the team's runners on ``pool_name``."""
        return self.container_modes.get(pool_name, self.container_mode)

    @property
    def role_name(self) -> str:
        return f"github-runner-{self.name}-role"

    @property
    def namespace(self) -> str:
        return f"runners-{self.name}"

    @property
    def vault_policy(self) -> str:
        """The team's own Vault policy, which its role always carries (the model refuses it
        and every other ``runner-*`` name in ``vault_policies``)."""
        return f"{VAULT_POLICY_PREFIX}{self.name}"

    def claims_repository(self, repository: str) -> bool:
        """Whether ``org/repo`` is one of this team's (globs match; GitHub names are caseless)."""
        return any(
            fnmatch.fnmatchcase(repository.lower(), pattern.lower())
            for pattern in self.repositories
        )
