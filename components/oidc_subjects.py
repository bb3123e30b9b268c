"""The GitHub OIDC ``sub`` values a team's roles trust, and the ones they must refuse.

GitHub's default subject is ``repo:ORG/REPO:<context>``; github.com repositories created
after 2026-07-15 carry ``repo:ORG@ORG_ID/REPO@REPO_ID:<context>`` (REFERENCE.md), and the
context is ``ref:refs/heads/…``, ``environment:NAME`` or ``pull_request``. A repository
admin may also set a custom template that appends more claims (``…:workflow:NAME``), and
branch and workflow names may hold ``/``, ``@`` and ``:``.

IAM's ``StringLike`` ``*`` runs across every character, so a ``*`` followed by more
pattern can reach past the end of the slot it was written for (the repository name, the
repository id) into text the job chooses. Two things keep each ``*`` in its slot:

- **Pins.** The org id is always written out, and the repository id for an exact name:
  ``repo:acme-corp@700624/storefront@26679908:*`` — an org or repository re-created under
  the same name has new ids and matches nothing.
- **Guards** (``StringNotLike``, ANDed with the allow list). For a repository glob that
  ends in a literal (``*-admin``), a match in which the glob's ``*`` swallowed the slot's
  end places that literal after the first separator: ``repo:O/*:*-admin:*`` names exactly
  those subjects. With a context allowlist, a ``*`` before the context could let a
  workflow name pose as the context: ``repo:O/*:*:ref:refs/heads/main`` (a second ``:``
  before it) names those. A glob that ends in ``*`` only (``web-*``) needs no guard: the
  subject starts ``repo:O/web-``, so its name does.

Only a job that a custom template dresses up can meet a guard, so a default subject of
the team's own repositories is never refused by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import GitHubInstance, Team, contexts


@dataclass(frozen=True)
class Subjects:
    """``allow``: the StringLike values; ``deny``: the StringNotLike guards (may be empty)."""

    allow: list[str]
    deny: list[str]


def _forms(instance: GitHubInstance, team: Team, repository: str) -> list[tuple[str, str, str]]:
    """(prefix, separator that ends the name, what follows the name) per subject form."""
    owner, _ = repository.split("/", 1)
    forms = [(f"repo:{owner}/", ":", "")]
    if instance.kind == "cloud":
        owner_id = instance.org_ids[team.org]
        repository_id = team.repository_ids.get(repository)
        forms.append((f"repo:{owner}@{owner_id}/", "@", f"@{repository_id or '*'}"))
    return forms


def team_subjects(instance: GitHubInstance, team: Team) -> Subjects:
    """The subjects ``github-runner-<team>-role`` (and the team's Vault role) trust."""
    allow: list[str] = []
    deny: list[str] = []
    for repository in team.repositories:
        name = repository.split("/", 1)[1]
        for prefix, separator, after_name in _forms(instance, team, repository):
            for context in contexts(team):
                allow.append(f"{prefix}{name}{after_name}:{context}")
                if "*" in name and not name.endswith("*"):
                    last = name.rsplit("*", 1)[1]
                    deny.append(f"{prefix}*{separator}*{last}{after_name}:{context}")
                if context != "*" and "*" in name + after_name:
                    deny.append(f"{prefix}*:*:{context}")
    return Subjects(list(dict.fromkeys(allow)), list(dict.fromkeys(deny)))
