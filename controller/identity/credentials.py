"""``python -m controller.identity.credentials`` (``runner-credentials``): credentials for a job.

For workflows that do not use the usual actions. Asks the Actions runtime for the job's
OIDC token (``ACTIONS_ID_TOKEN_REQUEST_URL`` with ``&audience=…`` and the bearer
``ACTIONS_ID_TOKEN_REQUEST_TOKEN``), then:

- ``aws``: exchanges it with STS for the team's role (900 to 3600 s) and prints the JSON
  an AWS ``credential_process`` expects, or writes a profile to ``--profile-file``;
- ``vault``: logs in to the team's Vault role and writes the token to ``--token-file``
  (0600), or prints it with ``--print``; with ``--database ROLE`` also writes database
  credentials made for this job to ``--env-file`` (by default in ``$RUNNER_TEMP``, which
  the runner empties after the job — never the workspace, whose files a job may upload,
  cache or commit); with ``--hold`` stays running beside the job, renewing the leases, and
  revokes the token (and so every lease and database user) when the job ends
  (SIGTERM/SIGINT).

Nothing here is a static credential: the files hold short-lived values. Each is written
as a new 0600 file renamed over the target, so neither a symlink planted there nor an
existing file's mode decides where the value goes or who reads it. In an Actions job every
secret handed out is first masked (``::add-mask::`` on stderr), so it never shows in the
job's log. Audit records go to stderr as JSON lines; stdout carries only what a
``credential_process`` or ``$(…)`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx

from controller.audit import AuditRecord, log_record
from controller.settings import JobSettings

DATABASE_ENV_FILE = "vault-database.env"


class HelperError(Exception):
    pass


def request_token(settings: JobSettings, audience: str) -> str:
    if not (settings.token_request_url and settings.token_request_token):
        raise HelperError(
            "no ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN: does the job have "
            "`permissions: id-token: write`?"
        )
    separator = "&" if "?" in settings.token_request_url else "?"
    try:
        response = httpx.get(
            f"{settings.token_request_url}{separator}audience={audience}",
            headers={"Authorization": f"Bearer {settings.token_request_token}"},
            timeout=10.0,
        )
    except httpx.HTTPError as error:
        raise HelperError(f"the token request failed: {type(error).__name__}") from None
    if response.status_code != 200:
        raise HelperError(f"the token request answered {response.status_code}")
    return str(response.json()["value"])


def aws_credentials(settings: JobSettings, token: str, duration: int) -> dict[str, Any]:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    from controller.identity.aws import clamp_duration

    if not settings.aws_role_arn:
        raise HelperError("no RUNNER_PLATFORM_AWS_ROLE_ARN for this runner")
    # AssumeRoleWithWebIdentity is unsigned: the web identity token is the credential.
    sts = boto3.client(
        "sts",
        region_name=settings.aws_region,
        endpoint_url=settings.sts_endpoint,
        config=Config(signature_version=UNSIGNED),
    )
    from botocore.exceptions import BotoCoreError, ClientError

    claims = _claims(token)
    name = _session_name(claims, settings)
    try:
        response = sts.assume_role_with_web_identity(
            RoleArn=settings.aws_role_arn,
            RoleSessionName=name,
            WebIdentityToken=token,
            DurationSeconds=clamp_duration(duration, 3600),
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        _audit("refused", f"STS refused {settings.aws_role_arn}: {code}", claims)
        raise HelperError(f"STS refused the role: {code}") from None
    except BotoCoreError as error:  # no answer, or a request STS would refuse anyway
        reason = type(error).__name__
        _audit("refused", f"no credentials for {settings.aws_role_arn}: {reason}", claims)
        raise HelperError(f"no answer from STS: {reason}") from None
    _audit("granted", f"assumed {settings.aws_role_arn} as {name}", claims)
    raw = response["Credentials"]
    return {
        "Version": 1,
        "AccessKeyId": raw["AccessKeyId"],
        "SecretAccessKey": raw["SecretAccessKey"],
        "SessionToken": raw["SessionToken"],
        "Expiration": raw["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _claims(token: str) -> dict[str, Any]:
    """The token's claims, read unverified: STS and Vault verify the token; these only
    label the session and the audit records (run id, actor, repository)."""
    from controller.identity.oidc import TokenRefused, split_token

    try:
        return split_token(token)[1]
    except TokenRefused:
        return {}


def _session_name(claims: dict[str, Any], settings: JobSettings) -> str:
    """Run id, actor and team for CloudTrail, as the OIDC Manager names sessions."""
    from controller.identity.aws import session_name

    role = settings.aws_role_arn.rsplit("/", 1)[-1]
    team = role.removeprefix("github-runner-").removesuffix("-role")
    return session_name(claims, team)


def _audit(decision: str, reason: str, claims: dict[str, Any]) -> None:
    run_id = str(claims.get("run_id", ""))
    log_record(
        AuditRecord(
            decision,
            reason,
            org=str(claims.get("repository_owner", "")),
            repo=str(claims.get("repository", "")),
            requester=str(claims.get("actor", "")),
            run_id=int(run_id) if run_id.isdigit() else None,
            action="aws-credentials",
        )
    )


def configure_audit_log() -> None:
    """Audit records as JSON lines on stderr, where the job's log keeps them.

    Without this the records went nowhere: the audit logger sits below the root logger's
    default WARNING. Only the audit logger is configured (no library chatter), and never
    on stdout, which carries ``credential_process`` JSON or a token.
    """
    from controller.audit import log
    from controller.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _command_data(value: str) -> str:
    # The runner unescapes a workflow command's data (%25, %0D, %0A): escape it so the mask
    # is the value itself.
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def mask(settings: JobSettings, *values: str) -> None:
    """Ask the runner to hide ``values`` in the job's log from now on (``::add-mask::``).

    On stderr, flushed before a value goes anywhere: the runner reads workflow commands on
    both streams and handles a batch's stderr lines before its stdout lines, while stdout
    must stay exactly what a ``credential_process`` or ``$(…)`` reads. Only in an Actions
    job: anywhere else the line would print the value instead of hiding it.
    """
    if not settings.github_actions:
        return
    for value in values:
        for line in value.splitlines():
            if line.strip():
                print(f"::add-mask::{_command_data(line)}", file=sys.stderr)
    sys.stderr.flush()


def write_private(path: Path, text: str) -> None:
    """``text`` in ``path`` as a new file only this user reads, whatever was there before.

    A temp file beside ``path`` is created with ``O_EXCL | O_NOFOLLOW`` (never an existing
    file, never through a symlink) and mode 0600 set with ``fchmod`` (whatever the umask),
    synced, then renamed over ``path``: a rename replaces a symlink at ``path`` instead of
    following it, an existing file's mode and owner go with the old file, and a reader
    never sees half a file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(temp, flags, 0o600), "w", encoding="utf-8") as handle:
            try:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            except BaseException:
                os.unlink(temp)
                raise
        try:
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    except OSError as error:
        raise HelperError(f"cannot write {path}: {error.strerror or error}") from None


def _hold(session: Any, interval: float = 5.0) -> None:
    """Renew leases past half-life until the job ends (SIGTERM/SIGINT), then revoke."""
    import signal
    import threading

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    print("holding: leases are renewed until SIGTERM", file=sys.stderr, flush=True)
    try:
        while not done.wait(interval):
            session.renew_due()
    finally:
        session.close()  # revokes the token and, with it, every lease it created


def _env_file(args: argparse.Namespace, settings: JobSettings) -> Path:
    if args.env_file is not None:
        return Path(args.env_file)
    if settings.runner_temp_dir is None:
        raise HelperError("no RUNNER_TEMP (not in a runner job?): pass --env-file")
    return settings.runner_temp_dir / DATABASE_ENV_FILE


def _vault(args: argparse.Namespace, settings: JobSettings) -> int:
    from controller.identity.vault import VaultRefused, VaultSession

    if not (settings.vault_addr and settings.vault_mount and settings.vault_role):
        raise HelperError("VAULT_ADDR, RUNNER_PLATFORM_VAULT_MOUNT and _ROLE are needed")
    env_file = _env_file(args, settings) if args.database else None
    session = VaultSession(settings.vault_addr, settings.vault_mount, settings.vault_role)
    token = request_token(settings, settings.vault_audience)
    try:
        session.login(token, repository=str(_claims(token).get("repository", "")))
    except VaultRefused as error:
        raise HelperError(str(error)) from None
    try:
        mask(settings, session.client.token)
        if args.print:
            print(session.client.token, flush=True)
        else:
            write_private(args.token_file, session.client.token)
        if env_file is not None:
            try:
                database = session.database_credentials(args.database)
            except VaultRefused as error:
                raise HelperError(str(error)) from None
            mask(settings, database.password)
            write_private(
                env_file, f"DB_USERNAME={database.username}\nDB_PASSWORD={database.password}\n"
            )
            print(f"runner-credentials: database credentials in {env_file}", file=sys.stderr)
    except BaseException:
        session.close()  # nothing handed out: revoke the token and any lease at once
        raise
    if args.hold:
        _hold(session)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runner-credentials", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    aws = commands.add_parser("aws", help="AWS credentials for the team's role")
    aws.add_argument("--duration", type=int, default=3600, help="seconds, 900 to 3600")
    aws.add_argument("--profile-file", type=Path, help="write an AWS credentials file")
    aws.add_argument("--profile", default="default")
    vault = commands.add_parser("vault", help="a Vault token for the team's role")
    vault.add_argument("--token-file", type=Path, default=Path.home() / ".vault-token")
    vault.add_argument("--print", action="store_true", help="print the token instead")
    vault.add_argument(
        "--database", metavar="ROLE", help="also get database credentials of ROLE (runner-<team>)"
    )
    vault.add_argument(
        "--env-file",
        type=Path,
        help="where the database credentials go (DB_USERNAME, DB_PASSWORD); "
        f"default $RUNNER_TEMP/{DATABASE_ENV_FILE}",
    )
    vault.add_argument(
        "--hold",
        action="store_true",
        help="stay running, renewing the leases, until SIGTERM or SIGINT "
        "(the job's end), then revoke the token and its leases",
    )
    args = parser.parse_args(argv)
    configure_audit_log()
    settings = JobSettings.from_env()
    try:
        if args.command == "aws":
            credentials = aws_credentials(
                settings, request_token(settings, "sts.amazonaws.com"), args.duration
            )
            mask(
                settings,
                credentials["AccessKeyId"],
                credentials["SecretAccessKey"],
                credentials["SessionToken"],
            )
            if args.profile_file is None:
                print(json.dumps(credentials))
            else:
                write_private(
                    args.profile_file,
                    (
                        f"[{args.profile}]\naws_access_key_id = {credentials['AccessKeyId']}\n"
                        f"aws_secret_access_key = {credentials['SecretAccessKey']}\n"
                        f"aws_session_token = {credentials['SessionToken']}\n"
                    ),
                )
            return 0
        return _vault(args, settings)
    except HelperError as error:
        print(f"runner-credentials: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
