"""``python -m controller.identity.credentials`` in a simulated job: the emulator's token endpoint,
moto's STS and OpenBao."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import hvac
import pg8000.native

from localenv.github import GitHubEmulator
from localenv.process import wait_for
from localenv.services import Moto, OpenBao, Postgres
from tests.conftest import ROOT
from tests.integration.vault_support import applied_vault, configure_database


def _helper(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.identity.credentials", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def _job_env(emulator: GitHubEmulator, repository: str) -> dict[str, str]:
    url, bearer = emulator.job_token_request(repository, run_id=77, actor="alice")
    return {"ACTIONS_ID_TOKEN_REQUEST_URL": url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": bearer}


def test_aws_credential_process_output(
    moto_server: Moto, github_cloud: GitHubEmulator, tmp_path: Path
) -> None:
    iam: Any = moto_server.client("iam")
    role = iam.create_role(
        RoleName=f"github-runner-helper-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    env = {
        **_job_env(github_cloud, "acme-corp/storefront"),
        "RUNNER_PLATFORM_AWS_ROLE_ARN": role,
        "RUNNER_PLATFORM_STS_ENDPOINT": moto_server.endpoint,
        "AWS_REGION": "us-west-2",
    }
    result = _helper(env, "aws", "--duration", "900")
    assert result.returncode == 0, result.stderr
    credentials = json.loads(result.stdout)
    assert credentials["Version"] == 1 and credentials["SessionToken"]
    import boto3

    identity = boto3.client(
        "sts",
        endpoint_url=moto_server.endpoint,
        region_name="us-west-2",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    ).get_caller_identity()
    team = role.rsplit("/", 1)[-1].removeprefix("github-runner-").removesuffix("-role")
    assert identity["Arn"].endswith(f"/gh-77-alice-{team}")  # run id, actor, team
    profile = tmp_path / "aws" / "credentials"
    assert _helper(env, "aws", "--profile-file", str(profile)).returncode == 0
    assert "aws_session_token = " in profile.read_text()
    assert oct(profile.stat().st_mode & 0o777) == "0o600"


def test_vault_token_file(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator, tmp_path: Path
) -> None:
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        env = {
            **_job_env(github_cloud, "acme-corp/storefront"),
            "VAULT_ADDR": openbao.address,
            "RUNNER_PLATFORM_VAULT_MOUNT": f"jwt-cloud-{suffix}",
            "RUNNER_PLATFORM_VAULT_ROLE": "web",
        }
        token_file = tmp_path / ".vault-token"
        result = _helper(env, "vault", "--token-file", str(token_file))
        assert result.returncode == 0, result.stderr
        looked_up = hvac.Client(
            url=openbao.address, token=token_file.read_text()
        ).auth.token.lookup_self()["data"]
        assert f"runner-web-{suffix}" in looked_up["policies"]
        assert looked_up["meta"]["actor"] == "alice"
        refused = _helper({**env, "RUNNER_PLATFORM_VAULT_ROLE": "ml"}, "vault", "--print")
        assert refused.returncode == 2 and "Vault refused" in refused.stderr


def test_without_id_token_permission_the_helper_says_so() -> None:
    result = _helper(
        {"ACTIONS_ID_TOKEN_REQUEST_URL": "", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ""}, "aws"
    )
    assert result.returncode == 2
    assert "permissions: id-token: write" in result.stderr


def test_held_database_credentials_live_as_long_as_the_job(
    openbao: OpenBao,
    postgres: Postgres,
    github_cloud: GitHubEmulator,
    github_ghes: GitHubEmulator,
    tmp_path: Path,
) -> None:
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        configure_database(openbao, postgres, ["web", "ml"])
        env_file = tmp_path / "db.env"
        env = {
            **_job_env(github_cloud, "acme-corp/storefront"),
            "VAULT_ADDR": openbao.address,
            "RUNNER_PLATFORM_VAULT_MOUNT": f"jwt-cloud-{suffix}",
            "RUNNER_PLATFORM_VAULT_ROLE": "web",
        }
        holder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.identity.credentials",
                "vault",
                "--token-file",
                str(tmp_path / "token"),
                "--database",
                "runner-web",
                "--env-file",
                str(env_file),
                "--hold",
            ],
            env={**os.environ, **env},
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(env_file.exists, 30, "database credentials written")
            values = dict(line.split("=", 1) for line in env_file.read_text().split())
            user, password = values["DB_USERNAME"], values["DB_PASSWORD"]
            with postgres.connect(user=user, password=password) as conn:
                conn.run("INSERT INTO web.secrets VALUES (:v)", v=f"held-{suffix}")
                assert conn.run(
                    "SELECT count(*) FROM web.secrets WHERE v = :v", v=f"held-{suffix}"
                ) == [[1]]
            holder.send_signal(signal.SIGTERM)  # the job ended
            assert holder.wait(timeout=30) == 0

            def refused() -> bool:
                try:
                    postgres.connect(user=user, password=password).close()
                except pg8000.native.DatabaseError:
                    return True
                return False

            wait_for(refused, 15, "the database user to be dropped after the job")
        finally:
            if holder.poll() is None:
                holder.kill()
            assert holder.stderr is not None
            holder.stderr.close()
