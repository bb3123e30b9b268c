"""A job's Vault session against OpenBao and PostgreSQL, with emulator-minted tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest

from controller.identity.vault import VaultRefused, VaultSession
from localenv.github import GitHubEmulator
from localenv.process import wait_for
from localenv.services import OpenBao, Postgres
from tests.integration.vault_support import applied_vault, configure_database


@pytest.fixture
def mounts(
    openbao: OpenBao, postgres: Postgres, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> Iterator[str]:
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        configure_database(openbao, postgres, ["web", "ml"])
        yield suffix


def _web_token(github_cloud: GitHubEmulator) -> str:
    return github_cloud.oidc.mint(
        github_cloud.oidc.claims("acme-corp/storefront", audience="runner-platform-vault")
    )


def _session(openbao: OpenBao, suffix: str, role: str = "web") -> VaultSession:
    return VaultSession(openbao.address, f"jwt-cloud-{suffix}", role)


def test_a_jobs_database_user_works_in_its_schema_only_and_dies_with_its_lease(
    openbao: OpenBao, postgres: Postgres, github_cloud: GitHubEmulator, mounts: str
) -> None:
    session = _session(openbao, mounts)
    session.login(_web_token(github_cloud), "acme-corp/storefront")
    assert session.token_ttl == 900
    creds = session.database_credentials("runner-web")
    with postgres.connect(user=creds.username, password=creds.password) as conn:
        mark = f"from the job {mounts}"  # the table is shared by the session's tests
        conn.run("INSERT INTO web.secrets VALUES (:v)", v=mark)
        assert conn.run("SELECT v FROM web.secrets WHERE v = :v", v=mark) == [[mark]]
        with pytest.raises(pg8000.native.DatabaseError, match="permission denied"):
            conn.run("SELECT v FROM ml.secrets")
    with pytest.raises(VaultRefused, match="runner-ml"):
        session.database_credentials("runner-ml")  # another team's role
    session.close()

    def refused() -> bool:
        try:
            postgres.connect(user=creds.username, password=creds.password).close()
        except pg8000.native.DatabaseError:
            return True
        return False

    wait_for(refused, 15, "the job's database user to be dropped")  # the job ended


def test_kv_reads_follow_the_team_and_the_repository(
    openbao: OpenBao, github_cloud: GitHubEmulator, mounts: str
) -> None:
    from tests.integration.test_vault_provider import repository_id

    root: Any = openbao.client()
    own, sibling = (
        f"runners/web/repos/{repository_id(r)}/key"
        for r in ("acme-corp/storefront", "acme-corp/web-shop")
    )
    root.secrets.kv.v2.create_or_update_secret(path=own, secret={"k": "mine"})
    root.secrets.kv.v2.create_or_update_secret(path=sibling, secret={"k": "theirs"})
    session = _session(openbao, mounts)
    session.login(_web_token(github_cloud), "acme-corp/storefront")
    assert session.read_secret(own) == {"k": "mine"}
    with pytest.raises(VaultRefused, match="not allowed to read"):
        session.read_secret(sibling)
    session.close()
    with pytest.raises(VaultRefused, match="not logged in"):
        session.read_secret(own)


def test_leases_are_renewed_while_the_job_runs(
    openbao: OpenBao, github_cloud: GitHubEmulator, mounts: str
) -> None:
    now = [0.0]
    session = VaultSession(openbao.address, f"jwt-cloud-{mounts}", "web", clock=lambda: now[0])
    session.login(_web_token(github_cloud))
    creds = session.database_credentials("runner-web")
    assert session.renew_due() == []  # young leases are left alone
    now[0] += creds.ttl / 2 + 1
    assert session.renew_due(increment=600) == [creds.lease_id]
    root: Any = openbao.client()
    remaining = root.sys.read_lease(lease_id=creds.lease_id)["data"]["ttl"]
    assert 0 < remaining <= 600
    session.close()


def test_the_token_is_revoked_at_the_end(
    openbao: OpenBao, github_cloud: GitHubEmulator, mounts: str
) -> None:
    import hvac
    import hvac.exceptions

    session = _session(openbao, mounts)
    session.login(_web_token(github_cloud))
    token = session.client.token
    session.close()
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=openbao.address, token=token).auth.token.lookup_self()


def test_a_token_of_another_teams_repository_cannot_log_in(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator, mounts: str
) -> None:
    ml_token = github_ghes.oidc.mint(
        github_ghes.oidc.claims("research/models", audience="runner-platform-vault")
    )
    with pytest.raises(VaultRefused):
        _session(openbao, mounts, "web").login(ml_token)
    wrong_audience = github_cloud.oidc.mint(
        github_cloud.oidc.claims("acme-corp/storefront", audience="sts.amazonaws.com")
    )
    with pytest.raises(VaultRefused):
        _session(openbao, mounts, "web").login(wrong_audience)
