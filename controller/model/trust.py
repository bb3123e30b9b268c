"""Who can become a team: GitHub ids, repository globs, job contexts, Vault policy names.

A team's IAM role and Vault role trust GitHub's OIDC ``sub`` (and ``repository``) claims.
IAM's ``StringLike`` ``*`` runs across every character, ``/``, ``@`` and ``:`` included,
so what the model lets a team write here must stay decidable and safe once rendered
(components/oidc_subjects.py explains the rendering; docs/oidc.md, "Trust"):

- repository globs use ``*`` only (``?`` and ``[...]`` mean different things to IAM, Vault
  and fnmatch), and a glob that ends in ``*`` has no other ``*``: ``web-*`` and
  ``*-admin`` are fine, ``*web*`` is not (no guard keeps such a glob inside the name);
- two teams' patterns never match one repository name (decided exactly: both patterns
  are walked at once, :func:`overlap`);
- a job context allowlist names full refs (a trailing ``*`` at most) and literal
  environment names;
- ``runner-*`` Vault policies are the platform's (each team's own is attached for it),
  and ``root`` is Vault's superuser.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

if TYPE_CHECKING:
    from controller.model.instances import GitHubInstance
    from controller.model.teams import Team

STS_AUDIENCE = "sts.amazonaws.com"
"""The audience of tokens for AWS STS (the IAM OIDC provider's client id)."""
VAULT_POLICY_PREFIX = "runner-"
"""Vault policies the platform writes: ``runner-<team>``, one per team."""
VAULT_SUPERUSER_POLICY = "root"


def _whole_number(value: Any) -> Any:
    # YAML's true/false, or a string pydantic would read leniently ("7_0_0" is 700): an id
    # is pinned into trust policies, so only a whole number written as one is an id.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a GitHub id (a number)")
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not a GitHub id (a number)")
    return value


GitHubId = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=2**53)]
"""GitHub's numeric id of an org or repository (``gh api orgs/ORG --jq .id``)."""


# --- repository globs ----------------------------------------------------------------


def glob_shape_problem(name: str) -> str | None:
    """Why the repository part of ``org/<name>`` is not a glob the platform can render."""
    if any(ch in name for ch in "?[]"):
        return (
            "uses '?' or '[...]'; only '*' is a repository glob (IAM, Vault and the "
            "controller read the others differently)"
        )
    if name.endswith("*") and name.count("*") > 1:
        return (
            "is a glob that ends in '*' with another '*' before it; IAM's '*' runs past the "
            "end of a repository name, so such a glob could match another repository's "
            "subject (use 'prefix-*', '*-suffix' or 'prefix-*-suffix')"
        )
    return None


def overlap(first: str, second: str) -> str | None:
    """A name both ``*``-globs match (caseless), or None when no name matches both.

    Both patterns are walked at once: a state is a position in each; a literal character
    advances a pattern when the other's next character equals it or is a ``*`` that takes
    it; a ``*`` may also take nothing. A name matches both when both ends are reached. The
    walk records the characters it consumed, so the answer is a witness a reviewer can
    read (``acme-corp/web-admin``).
    """
    a, b = first.lower(), second.lower()
    if "*" not in a and "*" not in b:
        return a if a == b else None
    if "*" not in a or "*" not in b:  # a literal: it is the only candidate
        literal, pattern = (a, b) if "*" not in a else (b, a)
        return literal if _matches(pattern, literal) else None
    start = (0, 0)
    seen = {start: ""}
    queue = deque([start])
    while queue:
        i, j = queue.popleft()
        word = seen[(i, j)]
        if i == len(a) and j == len(b):
            return word
        steps: list[tuple[int, int, str]] = []
        if i < len(a) and a[i] == "*":
            steps.append((i + 1, j, ""))
        if j < len(b) and b[j] == "*":
            steps.append((i, j + 1, ""))
        if i < len(a) and j < len(b):
            if a[i] != "*" and b[j] != "*":
                if a[i] == b[j]:
                    steps.append((i + 1, j + 1, a[i]))
            elif a[i] != "*":
                steps.append((i + 1, j, a[i]))  # b's star takes a's character
            elif b[j] != "*":
                steps.append((i, j + 1, b[j]))  # a's star takes b's character
        for next_i, next_j, char in steps:
            if (next_i, next_j) not in seen:
                seen[(next_i, next_j)] = word + char
                queue.append((next_i, next_j))
    return None


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _matches(pattern: str, name: str) -> bool:
    return _glob_regex(pattern).fullmatch(name) is not None


def is_glob(repository: str) -> bool:
    return "*" in repository


def _may_meet(first: str, second: str) -> bool:
    """A quick necessary condition for two globs to share a name: their literal heads (up
    to the first ``*``) agree as far as both go, and so do their literal tails."""
    head_a, head_b = first.split("*", 1)[0], second.split("*", 1)[0]
    tail_a, tail_b = first.rsplit("*", 1)[1], second.rsplit("*", 1)[1]
    return (head_a.startswith(head_b) or head_b.startswith(head_a)) and (
        tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    )


def repository_overlaps(teams: Sequence[Team]) -> list[str]:
    """A repository belongs to one team: OIDC maps a token's repository to one role.

    Any two teams' patterns on one instance that can match one name are refused: a literal
    name on the literal (on the later team when both are), two globs on the later team.
    Literals meet by equality, a glob and a literal by matching, two globs by
    :func:`overlap` — so a stack of many teams stays quick to validate.
    """
    found: list[tuple[int, int, str]] = []  # (team, repository, problem), sorted below
    literals: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    globs: dict[str, list[tuple[int, int, str]]] = {}
    for t_index, team in enumerate(teams):
        for r_index, repo in enumerate(team.repositories):
            entry = (t_index, r_index, repo)
            if is_glob(repo):
                globs.setdefault(team.instance, []).append(entry)
            else:
                literals.setdefault((team.instance, repo.lower()), []).append(entry)
    for named in literals.values():
        first = named[0]
        for t_index, r_index, repo in named[1:]:
            if t_index != first[0]:
                name = teams[first[0]].name
                found.append((t_index, r_index, f"'{repo}' is also claimed by team '{name}'"))
    for (instance, name), named in literals.items():
        for g_team, _, pattern in globs.get(instance, []):
            if _matches(pattern.lower(), name):
                for t_index, r_index, repo in named:
                    if t_index != g_team:
                        other = teams[g_team].name
                        found.append(
                            (t_index, r_index, f"'{repo}' is also claimed by team '{other}'")
                        )
    for instance_globs in globs.values():
        # In team order: of two globs, the second is the later team's.
        for index, (t_index, _, repo) in enumerate(instance_globs):
            for o_index, s_index, theirs in instance_globs[index + 1 :]:
                if o_index == t_index or not _may_meet(repo.lower(), theirs.lower()):
                    continue
                witness = overlap(repo, theirs)
                if witness is not None:
                    found.append(
                        (
                            o_index,
                            s_index,
                            f"'{theirs}' and team '{teams[t_index].name}''s '{repo}' both "
                            f"match '{witness}'; a repository must belong to one team "
                            "(narrow one of the globs)",
                        )
                    )
    problems = [f"teams[{t}].repositories[{r}]: {text}" for t, r, text in sorted(found)]
    return list(dict.fromkeys(problems))


# --- job contexts ----------------------------------------------------------------------


def _ref(value: str) -> str:
    if not value.startswith("refs/") or len(value) > 255:
        raise ValueError(
            f"'{value}' is not a full Git ref: write 'refs/heads/<branch>' or "
            "'refs/tags/<tag>' (a trailing '*' matches a prefix)"
        )
    body = value.removesuffix("*")
    if any(ch in body for ch in "*?[]:\\ ") or any(ord(ch) < 0x20 for ch in body):
        raise ValueError(
            f"'{value}' is not a ref pattern: a trailing '*' is the only wildcard, and a Git "
            "ref has no ':', space or '?[]\\'"
        )
    return value


def _environment(value: str) -> str:
    if not re.fullmatch(r"[^*?\[\]:\s][^*?\[\]:\n\r\t]{0,254}", value):
        raise ValueError(
            f"'{value}' is not a deployment environment name: a literal name, no wildcard "
            "and no ':'"
        )
    return value


RefPattern = Annotated[str, AfterValidator(_ref)]
EnvironmentName = Annotated[str, AfterValidator(_environment)]


def contexts(team: Team) -> list[str]:
    """The ``sub`` contexts a team's roles accept: ``*`` (any), or its allowlist."""
    if not team.refs and not team.environments:
        return ["*"]
    return [f"ref:{ref}" for ref in team.refs] + [
        f"environment:{name}" for name in team.environments
    ]


# --- cross-checks over the whole spec ----------------------------------------------------


_VAULT_POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _vault_policy_problems(teams: Sequence[Team]) -> list[str]:
    owners = {t.vault_policy: t.name for t in teams}
    problems: list[str] = []
    for t_index, team in enumerate(teams):
        for p_index, given in enumerate(team.vault_policies):
            where = f"teams[{t_index}].vault_policies[{p_index}]"
            # Vault trims and lower-cases policy names: ' Runner-Web' is runner-web there.
            policy = given.strip().lower()
            if not _VAULT_POLICY_NAME.fullmatch(given):
                problems.append(
                    f"{where}: {given!r} is not a plain policy name (lower-case letters, "
                    "digits, '.', '_' and '-'; Vault would read it as "
                    f"{policy!r})"
                )
            elif policy == VAULT_SUPERUSER_POLICY:
                problems.append(
                    f"{where}: 'root' is Vault's superuser policy; every job's token would "
                    "hold every secret"
                )
            elif owners.get(policy) == team.name:
                problems.append(
                    f"{where}: '{policy}' is the team's own policy, which its role always "
                    "carries; leave it out"
                )
            elif policy in owners:
                problems.append(
                    f"{where}: '{policy}' is team '{owners[policy]}''s policy; its tokens "
                    "would read that team's secrets"
                )
            elif policy.startswith(VAULT_POLICY_PREFIX):
                problems.append(
                    f"{where}: '{policy}': names under '{VAULT_POLICY_PREFIX}' are the "
                    "platform's (one per team); name the team's extra policies otherwise"
                )
    return problems


def _repository_id_problems(
    instances: dict[str, GitHubInstance], teams: Sequence[Team]
) -> list[str]:
    problems: list[str] = []
    for t_index, team in enumerate(teams):
        where = f"teams[{t_index}].repository_ids"
        instance = instances.get(team.instance)
        exact = [r for r in team.repositories if not is_glob(r)]
        problems += [
            f"{where}.{repo}: '{repo}' is not one of the team's exact repositories (an id "
            "pins a literal name; a glob has no one id)"
            for repo in team.repository_ids
            if repo not in exact
        ]
        if instance is None:
            continue  # reported as an unknown instance
        if instance.kind == "ghes":
            if team.repository_ids:
                problems.append(
                    f"{where}: Enterprise Server subjects carry no ids; leave repository_ids "
                    "out for a 'ghes' team"
                )
            continue
        for repo in exact:
            if repo not in team.repository_ids:
                problems.append(
                    f"{where}.{repo}: required: GitHub's id of the repository "
                    f"(gh api repos/{repo} --jq .id); github.com subjects carry it and the "
                    "team's roles pin it"
                )
    return problems


def trust_problems(instances: Sequence[GitHubInstance], teams: Sequence[Team]) -> list[str]:
    """Every trust problem of the spec, one path-prefixed line each."""
    by_name = {i.name: i for i in instances}
    return [
        *repository_overlaps(teams),
        *_vault_policy_problems(teams),
        *_repository_id_problems(by_name, teams),
    ]
