"""Vault set-up shared by the Vault tests: the spec's objects and a database engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.vault import vault_config
from components.vault_provider import VaultObjectProvider
from controller.model import PlatformSpec
from localenv.github import GitHubEmulator
from localenv.services import OpenBao, Postgres
from tests.integration.router_support import dev_spec


def vault_objects(
    openbao: OpenBao,
    cloud: GitHubEmulator,
    ghes: GitHubEmulator,
    suffix: str,
    spec: PlatformSpec | None = None,
) -> list[dict[str, Any]]:
    """The spec's Vault config (the dev stack's by default), pointed at the emulators'
    issuers and unique mount paths."""
    config = vault_config(spec or dev_spec())
    issuers = {"jwt-cloud": cloud.oidc.issuer, "jwt-ghes": ghes.oidc.issuer}
    connection = {"address": openbao.address, "token": openbao.token}
    objects: list[dict[str, Any]] = []
    for mount in config["mounts"]:
        objects.append(
            {
                **connection,
                "kind": "jwt-mount",
                "path": f"{mount['path']}-{suffix}",
                "oidcDiscoveryUrl": issuers[mount["path"]],
                "boundIssuer": issuers[mount["path"]],
            }
        )
    for policy in config["policies"]:
        text = policy["policy"]
        for path in issuers:  # the test's mounts carry a suffix; so do their accessors
            text = text.replace(f"@@accessor:{path}@@", f"@@accessor:{path}-{suffix}@@")
        objects.append(
            {**connection, "kind": "policy", "name": f"{policy['name']}-{suffix}", "policy": text}
        )
    for role in config["roles"]:
        objects.append(
            {
                **connection,
                **role,
                "kind": "jwt-role",
                "mount": f"{role['mount']}-{suffix}",
                "tokenPolicies": [f"{p}-{suffix}" for p in role["tokenPolicies"]],
            }
        )
    return objects


@contextmanager
def applied_vault(
    openbao: OpenBao, cloud: GitHubEmulator, ghes: GitHubEmulator, spec: PlatformSpec | None = None
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The spec's Vault objects applied under a fresh suffix; removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    provider = VaultObjectProvider()
    objects = vault_objects(openbao, cloud, ghes, suffix, spec)
    created = []
    try:
        for props in objects:
            provider.create(props)
            created.append(props)
        yield suffix, objects
    finally:
        for props in reversed(created):
            provider.delete("id", props)


def configure_database(openbao: OpenBao, postgres: Postgres, teams: list[str]) -> None:
    """What an operator sets up once: a schema per team and a Vault role per team that
    creates a user for one job, allowed into that team's schema only."""
    with postgres.connect() as conn:
        for team in teams:
            conn.run(f'CREATE SCHEMA IF NOT EXISTS "{team}"')
            conn.run(f'CREATE TABLE IF NOT EXISTS "{team}".secrets (v text)')
    client: Any = openbao.client()
    if "database/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("database", path="database")
    client.secrets.database.configure(
        name="runners",
        plugin_name="postgresql-database-plugin",
        connection_url=postgres.vault_connection_url,
        allowed_roles=["runner-*"],
        username=postgres.admin,
        password=postgres.password,
        verify_connection=True,
    )
    for team in teams:
        grants = (
            f'GRANT USAGE ON SCHEMA "{team}" TO "{{{{name}}}}"; '
            f'GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA "{team}" TO "{{{{name}}}}";'
        )
        client.secrets.database.create_role(
            name=f"runner-{team}",
            db_name="runners",
            creation_statements=[
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                "VALID UNTIL '{{expiration}}';",
                grants,
            ],
            revocation_statements=[
                f'REVOKE ALL ON ALL TABLES IN SCHEMA "{team}" FROM "{{{{name}}}}"; '
                f'REVOKE ALL ON SCHEMA "{team}" FROM "{{{{name}}}}"; '
                'DROP ROLE IF EXISTS "{{name}}";'
            ],
            default_ttl=900,
            max_ttl=3600,
        )
