"""The runner-group guard against the GitHub emulators: a group's verdict is its own,
never another org's or another GitHub instance's that happens to share its id."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from controller.github_client import AppCredentials, GitHubClient
from controller.model import PlatformSpec, load_spec
from controller.provision.jit import JitError, RunnerGroups
from localenv.controller_files import install_apps
from localenv.github import GitHubEmulator
from tests.conftest import DEV_DOCUMENT


@pytest.fixture
def emulators() -> Iterator[dict[str, GitHubEmulator]]:
    started = {
        "cloud": GitHubEmulator(kind="cloud").start(),
        "ghes": GitHubEmulator(kind="ghes", host="github.acme.internal").start(),
    }
    yield started
    for emulator in started.values():
        emulator.stop()


def _client(spec: PlatformSpec, name: str, key: str, emulator: GitHubEmulator) -> GitHubClient:
    instance = spec.instance(name)
    app = instance.apps[0]
    credentials = AppCredentials(app.app_id, key, dict(app.installations))
    return GitHubClient(instance, [credentials], api_url=emulator.api_url)


def test_a_group_id_shared_with_another_instance_is_checked_on_its_own(
    emulators: dict[str, GitHubEmulator],
) -> None:
    spec = load_spec(DEV_DOCUMENT)
    web = next(s for s in spec.scale_sets() if s.team == "web")  # github.com, acme-corp
    ml = next(s for s in spec.scale_sets() if s.team == "ml")  # the GHES, research
    keys = install_apps(spec, emulators)
    cloud, ghes = emulators["cloud"].world, emulators["ghes"].world
    cloud.add_org(web.org)
    ghes.add_org(ml.org)
    # Both instances number runner groups from the same place, as GitHub.com and a GHES do.
    cloud.ids = itertools.count(9000)
    ghes.ids = itertools.count(9000)
    safe = cloud.add_runner_group(
        web.org, web.runner_group, visibility="selected", repositories=("acme-corp/storefront",)
    )
    open_to_all = ghes.add_runner_group(ml.org, ml.runner_group, visibility="all")
    assert safe.id == open_to_all.id
    teams = {t.name: t for t in spec.teams}
    clients = {name: _client(spec, name, keys[name], emulators[name]) for name in ("cloud", "ghes")}

    async def check() -> None:
        groups = RunnerGroups()
        try:
            web_claims = teams["web"].claims_repository
            assert await groups.checked_id(clients["cloud"], web, web_claims) == safe.id
            # The same id on the other instance is another group: open to every repository
            # of research, it starts no runner — whatever web's group's verdict was.
            with pytest.raises(JitError, match="visible to all repositories"):
                await groups.checked_id(clients["ghes"], ml, teams["ml"].claims_repository)
            # And the other way round: the refused group's verdict is not web's.
            assert await groups.checked_id(clients["cloud"], web, web_claims) == safe.id
        finally:
            for client in clients.values():
                await client.aclose()

    asyncio.run(check())
