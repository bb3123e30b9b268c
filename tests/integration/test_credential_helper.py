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
import pytest

from localenv.github import GitHubEmulator
from localenv.process import wait_for
from localenv.services import Moto, OpenBao, Postgres
from tests.conftest import ROOT
from tests.integration.vault_support import applied_vault, configure_database

# What the runner sets in every job unless a test says otherwise: no Actions job, no
# RUNNER_TEMP (so a CI job running these tests does not leak its own into them).
_OUTSIDE_A_JOB = {"GITHUB_ACTIONS": "", "RUNNER_TEMP": ""}


def _helper(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.identity.credentials", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **_OUTSIDE_A_JOB, **env},
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def _audit_records(stderr: str) -> list[dict[str, Any]]:
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line)["audit"])
    return records


def _masks(stderr: str) -> list[str]:
    return [
        line.removeprefix("::add-mask::")
        for line in stderr.splitlines()
        if line.startswith("::add-mask::")
    ]


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


# -- files, masks and audit records (issue 9, item 16) --


def _aws_env(moto_server: Moto, github_cloud: GitHubEmulator) -> dict[str, str]:
    iam: Any = moto_server.client("iam")
    role = iam.create_role(
        RoleName=f"github-runner-helper-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    return {
        **_job_env(github_cloud, "acme-corp/storefront"),
        "RUNNER_PLATFORM_AWS_ROLE_ARN": role,
        "RUNNER_PLATFORM_STS_ENDPOINT": moto_server.endpoint,
        "AWS_REGION": "us-west-2",
    }


def test_a_symlink_at_the_target_is_replaced_never_followed(
    moto_server: Moto, github_cloud: GitHubEmulator, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"  # e.g. a file the job uploads, or another user's
    victim.write_text("untouched\n")
    victim.chmod(0o644)
    profile = tmp_path / "credentials"
    profile.symlink_to(victim)
    result = _helper(_aws_env(moto_server, github_cloud), "aws", "--profile-file", str(profile))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "untouched\n"
    assert oct(victim.stat().st_mode & 0o777) == "0o644"
    assert not profile.is_symlink() and "aws_session_token = " in profile.read_text()
    assert oct(profile.lstat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_an_existing_readable_file_does_not_keep_its_mode(
    moto_server: Moto, github_cloud: GitHubEmulator, tmp_path: Path
) -> None:
    profile = tmp_path / "credentials"
    profile.write_text("[old]\n")
    profile.chmod(0o644)
    result = _helper(_aws_env(moto_server, github_cloud), "aws", "--profile-file", str(profile))
    assert result.returncode == 0, result.stderr
    assert oct(profile.stat().st_mode & 0o777) == "0o600"
    assert "[old]" not in profile.read_text()


def test_in_a_job_every_secret_is_masked_and_every_grant_audited(
    moto_server: Moto, github_cloud: GitHubEmulator
) -> None:
    env = {**_aws_env(moto_server, github_cloud), "GITHUB_ACTIONS": "true"}
    result = _helper(env, "aws", "--duration", "900")
    assert result.returncode == 0, result.stderr
    credentials = json.loads(result.stdout)  # stdout is exactly credential_process JSON
    masks = _masks(result.stderr)
    for name in ("AccessKeyId", "SecretAccessKey", "SessionToken"):
        assert credentials[name] in masks, name
    (record,) = _audit_records(result.stderr)
    assert (record["decision"], record["action"]) == ("granted", "aws-credentials")
    assert (record["repo"], record["requester"], record["run_id"]) == (
        "acme-corp/storefront",
        "alice",
        77,
    )
    assert credentials["SecretAccessKey"] not in json.dumps(record)
    # Outside a job a mask line would print the secret: none is written, the record is.
    outside = _helper(_aws_env(moto_server, github_cloud), "aws")
    assert outside.returncode == 0 and _masks(outside.stderr) == []
    assert json.loads(outside.stdout)["SecretAccessKey"] not in outside.stderr
    assert [r["decision"] for r in _audit_records(outside.stderr)] == ["granted"]


def test_a_failed_exchange_is_audited_too(moto_server: Moto, github_cloud: GitHubEmulator) -> None:
    env = {
        **_aws_env(moto_server, github_cloud),
        "RUNNER_PLATFORM_STS_ENDPOINT": "http://127.0.0.1:9",
    }
    result = _helper(env, "aws")
    assert result.returncode == 2 and "no answer from STS" in result.stderr
    (record,) = _audit_records(result.stderr)
    assert (record["decision"], record["requester"]) == ("refused", "alice")


def test_mask_lines_escape_what_the_runner_unescapes(capsys: pytest.CaptureFixture[str]) -> None:
    from controller.identity.credentials import mask
    from controller.settings import JobSettings

    mask(JobSettings(github_actions=True), "p%25w\r\nx", "plain")
    assert capsys.readouterr().err.splitlines() == [
        "::add-mask::p%2525w",
        "::add-mask::x",
        "::add-mask::plain",
    ]
    mask(JobSettings(github_actions=False), "secret")
    assert capsys.readouterr().err == ""


def test_vault_secrets_are_masked_and_database_credentials_go_to_runner_temp(
    openbao: OpenBao,
    postgres: Postgres,
    github_cloud: GitHubEmulator,
    github_ghes: GitHubEmulator,
    tmp_path: Path,
) -> None:
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        configure_database(openbao, postgres, ["web"])
        workspace, runner_temp = tmp_path / "workspace", tmp_path / "_temp"
        workspace.mkdir()
        runner_temp.mkdir()
        env = {
            **_job_env(github_cloud, "acme-corp/storefront"),
            "VAULT_ADDR": openbao.address,
            "RUNNER_PLATFORM_VAULT_MOUNT": f"jwt-cloud-{suffix}",
            "RUNNER_PLATFORM_VAULT_ROLE": "web",
            "GITHUB_ACTIONS": "true",
            "RUNNER_TEMP": str(runner_temp),
        }
        result = _helper(env, "vault", "--print", "--database", "runner-web", cwd=workspace)
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert result.stdout == f"{token}\n"  # stdout is the token alone, for $(…)
        env_file = runner_temp / "vault-database.env"
        assert list(workspace.iterdir()) == []  # nothing in the job's workspace
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        values = dict(line.split("=", 1) for line in env_file.read_text().split())
        masks = _masks(result.stderr)
        assert token in masks and values["DB_PASSWORD"] in masks
        decisions = [(r["action"], r["decision"]) for r in _audit_records(result.stderr)]
        assert decisions == [("vault", "granted"), ("vault", "granted")]  # login, database
        assert f"database credentials in {env_file}" in result.stderr

        nowhere = _helper(
            {**env, "RUNNER_TEMP": ""}, "vault", "--print", "--database", "runner-web"
        )
        assert nowhere.returncode == 2 and "pass --env-file" in nowhere.stderr
        assert _masks(nowhere.stderr) == []  # refused before anything was handed out
