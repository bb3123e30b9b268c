"""GitHub instances (github.com or Enterprise Server), their Apps and secret references."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    model_validator,
)

from controller.model.base import (
    GITHUB_CLOUD_API,
    GITHUB_CLOUD_HOST,
    GITHUB_CLOUD_ISSUER,
    DnsLabel,
    Frozen,
    GitHubLogin,
    HostName,
)
from controller.model.trust import GitHubId


def _refuse_inline_secret(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "must reference a Kubernetes Secret as {name, key}; the spec never holds a secret"
        )
    return value


class SecretRef(Frozen):
    """A key of a Kubernetes Secret in the controller's namespace."""

    name: DnsLabel
    """Name of the Kubernetes Secret in the controller namespace."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")
    """Key inside that Secret."""


InlineSafeSecretRef = Annotated[SecretRef, BeforeValidator(_refuse_inline_secret)]


class GitHubApp(Frozen):
    """A GitHub App the controller authenticates as; several may share one instance's load."""

    app_id: int = Field(ge=1)
    """The GitHub App's numeric id."""
    installations: dict[GitHubLogin, int] = Field(min_length=1)
    """Installation id of the App in each org (org login to id)."""
    private_key: InlineSafeSecretRef
    """Secret holding the App's private key (PEM)."""


class GitHubInstance(Frozen):
    """GitHub.com (``cloud``) or a GitHub Enterprise Server (``ghes``) the platform serves."""

    name: DnsLabel
    """Short name; used in webhook paths (/webhooks/github/<name>) and Vault mounts."""
    kind: Literal["cloud", "ghes"]
    """'cloud' for github.com, 'ghes' for GitHub Enterprise Server."""
    host: HostName | None = None
    """GHES host name (no scheme); leave out for cloud."""
    enterprise_slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    """github.com enterprise with a customised OIDC issuer (…/<slug>)."""
    orgs: tuple[GitHubLogin, ...] = Field(min_length=1)
    """Organisations served on this instance."""
    org_ids: dict[GitHubLogin, GitHubId] = Field(default_factory=dict)
    """GitHub's numeric id of every org in 'orgs' (``gh api orgs/ORG --jq .id``; on GHES
    add ``--hostname HOST``). IAM trust and Vault roles pin it, so an org re-created under
    a freed name is a stranger."""
    apps: tuple[GitHubApp, ...] = Field(min_length=1)
    """GitHub Apps the controller authenticates as; several share the API budget."""
    webhook_secret: InlineSafeSecretRef
    """Secret holding the webhook HMAC secret."""

    @model_validator(mode="after")
    def _host_matches_kind(self) -> GitHubInstance:
        if self.kind == "ghes" and self.host is None:
            raise ValueError("a 'ghes' instance needs 'host' (the server's host name)")
        if self.kind == "cloud" and self.host not in (None, GITHUB_CLOUD_HOST):
            raise ValueError("a 'cloud' instance is github.com; leave 'host' out")
        if self.kind == "ghes" and self.enterprise_slug is not None:
            raise ValueError("'enterprise_slug' customises the github.com issuer; not for 'ghes'")
        for index, app in enumerate(self.apps):
            for org in app.installations:
                if org not in self.orgs:
                    raise ValueError(f"apps[{index}].installations: '{org}' is not in 'orgs'")
        for org in self.orgs:
            if not any(org in app.installations for app in self.apps):
                raise ValueError(f"orgs: '{org}' has no App installation in 'apps'")
        return self

    @model_validator(mode="after")
    def _org_ids(self) -> GitHubInstance:
        problems = [
            f"org_ids.{org}: required: GitHub's id of the org ({self._id_command(org)}); "
            "the teams' roles pin it"
            for org in self.orgs
            if org not in self.org_ids
        ] + [
            f"org_ids.{org}: '{org}' is not in 'orgs'"
            for org in self.org_ids
            if org not in self.orgs
        ]
        seen: dict[int, str] = {}
        for org, org_id in self.org_ids.items():
            if org_id in seen:
                problems.append(
                    f"org_ids.{org}: {org_id} is also the id of '{seen[org_id]}'; two orgs "
                    "never share an id"
                )
            seen.setdefault(org_id, org)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _id_command(self, org: str) -> str:
        host = "" if self.kind == "cloud" else f"--hostname {self.host} "
        return f"gh api {host}orgs/{org} --jq .id"

    @property
    def api_url(self) -> str:
        return GITHUB_CLOUD_API if self.kind == "cloud" else f"https://{self.host}/api/v3"

    @property
    def oidc_issuer(self) -> str:
        """The ``iss`` of this instance's Actions OIDC tokens (see REFERENCE.md)."""
        if self.kind == "ghes":
            return f"https://{self.host}/_services/token"
        if self.enterprise_slug:
            return f"{GITHUB_CLOUD_ISSUER}/{self.enterprise_slug}"
        return GITHUB_CLOUD_ISSUER
