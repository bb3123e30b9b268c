"""What the controller's processes find on disk and in GitHub before they start, as the
Deployment gives it to them: the mounted Secrets (each App's private key, each instance's
webhook secret), the spec and the runtime facts — and, in the GitHub emulators, the Apps,
installations, orgs, teams and each team's runner group. One place for the test harness
(``tests/integration/platform_support.py``), the benchmarks (``bench/provision_env.py``)
and ``make local`` (``localenv/local.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from controller.model import PlatformSpec, RuntimeFacts

if TYPE_CHECKING:
    from localenv.github import GitHubEmulator

ACCOUNT = "123456789012"


def team_role_arns(spec: PlatformSpec) -> dict[str, str]:
    """Each team's ``github-runner-<team>-role`` in the local account."""
    return {t.name: f"arn:aws:iam::{ACCOUNT}:role/{t.role_name}" for t in spec.teams}


def install_apps(spec: PlatformSpec, emulators: Mapping[str, GitHubEmulator]) -> dict[str, str]:
    """Each instance's first App and its installations in the emulator; returns the App
    private keys (PEM) by instance."""
    keys: dict[str, str] = {}
    for instance in spec.github_instances:
        emulator = emulators[instance.name]
        app = instance.apps[0]
        keys[instance.name] = emulator.add_app(app.app_id)
        for org, installation in app.installations.items():
            emulator.add_installation(app.app_id, org, installation_id=installation)
    return keys


def prepare_teams(
    spec: PlatformSpec,
    emulators: Mapping[str, GitHubEmulator],
    repositories: Mapping[str, Iterable[str]],
    members: Mapping[str, Iterable[str]],
) -> None:
    """Per team: its org, its GitHub teams with ``members[team]`` in the first, and its
    runner group open to exactly ``repositories[team]`` (the provisioner starts no runner
    in a group other repositories may use). A group an earlier user of a shared emulator
    left open is closed again."""
    for team in spec.teams:
        world = emulators[team.instance].world
        world.add_org(team.org)
        selected = tuple(repositories[team.name])
        group = next((g for g in world.org_groups(team.org) if g.name == team.runner_group), None)
        if group is None:
            world.add_runner_group(
                team.org, team.runner_group, visibility="selected", repositories=selected
            )
        else:
            group.visibility, group.selected_repositories = "selected", selected
        for slug in team.github_teams:
            try:
                world.team(team.org, slug)
            except LookupError:
                world.add_team(team.org, slug)
        for login in members.get(team.name, ()):
            world.set_membership(team.org, team.github_teams[0], login)


def write_controller_files(
    workdir: Path,
    spec: PlatformSpec,
    app_keys: Mapping[str, str],
    webhook_secrets: Mapping[str, bytes],
    role_arns: Mapping[str, str] | None = None,
) -> None:
    """``workdir/secrets/<name>/<key>`` (0600) for each App key and webhook secret, and
    ``workdir/spec.json`` and ``workdir/runtime.json`` — the files the settings point at."""
    store = workdir / "secrets"
    for instance in spec.github_instances:
        for ref, value in (
            (instance.apps[0].private_key, app_keys[instance.name].encode()),
            (instance.webhook_secret, webhook_secrets[instance.name]),
        ):
            (store / ref.name).mkdir(parents=True, exist_ok=True)
            (store / ref.name / ref.key).write_bytes(value)
            (store / ref.name / ref.key).chmod(0o600)
    (workdir / "spec.json").write_text(spec.model_dump_json())
    facts = RuntimeFacts(
        team_role_arns=dict(role_arns or team_role_arns(spec)),
        vault_mounts={i.name: f"jwt-{i.name}" for i in spec.github_instances},
        redis_endpoint="127.0.0.1",
    )
    (workdir / "runtime.json").write_text(facts.model_dump_json())
