"""``python -m controller.identity.credentials`` (``runner-credentials``): credentials for a job.

For workflows that do not use the usual actions. Asks the Actions runtime for the job's
OIDC token (``ACTIONS_ID_TOKEN_REQUEST_URL`` with ``&audience=…`` and the bearer
``ACTIONS_ID_TOKEN_REQUEST_TOKEN``), then:

- ``aws``: exchanges it with STS for the team's role (900 to 3600 s) and prints the JSON
  an AWS ``credential_process`` expects, or writes a profile to ``--profile-file``;
- ``vault``: logs in to the team's Vault role and writes the token to ``--token-file``
  (0600), or prints it with ``--print``; with ``--database ROLE`` also writes database
  credentials made for this job to ``--env-file``; with ``--hold`` stays running beside
  the job, renewing the leases, and revokes the token (and so every lease and database
  user) when the job ends (SIGTERM/SIGINT).

Nothing here is a static credential: the files hold short-lived values, written 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from controller.settings import JobSettings


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
    from botocore.exceptions import ClientError

    from controller.audit import AuditRecord, log_record

    try:
        response = sts.assume_role_with_web_identity(
            RoleArn=settings.aws_role_arn,
            RoleSessionName=_session_name(token, settings),
            WebIdentityToken=token,
            DurationSeconds=clamp_duration(duration, 3600),
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        log_record(
            AuditRecord(
                "refused", f"STS refused {settings.aws_role_arn}: {code}", action="aws-credentials"
            )
        )
        raise HelperError(f"STS refused the role: {code}") from None
    log_record(AuditRecord("granted", f"assumed {settings.aws_role_arn}", action="aws-credentials"))
    raw = response["Credentials"]
    return {
        "Version": 1,
        "AccessKeyId": raw["AccessKeyId"],
        "SecretAccessKey": raw["SecretAccessKey"],
        "SessionToken": raw["SessionToken"],
        "Expiration": raw["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _session_name(token: str, settings: JobSettings) -> str:
    """Run id, actor and team for CloudTrail, as the OIDC Manager names sessions. The
    claims are read unverified: STS verifies the token; this only labels the session."""
    from controller.identity.aws import session_name
    from controller.identity.oidc import TokenRefused, split_token

    try:
        claims = split_token(token)[1]
    except TokenRefused:
        claims = {}
    role = settings.aws_role_arn.rsplit("/", 1)[-1]
    team = role.removeprefix("github-runner-").removesuffix("-role")
    return session_name(claims, team)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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
        default=Path("vault-database.env"),
        help="where the database credentials go (DB_USERNAME, DB_PASSWORD)",
    )
    vault.add_argument(
        "--hold",
        action="store_true",
        help="stay running, renewing the leases, until SIGTERM or SIGINT "
        "(the job's end), then revoke the token and its leases",
    )
    args = parser.parse_args(argv)
    settings = JobSettings.from_env()
    try:
        if args.command == "aws":
            credentials = aws_credentials(
                settings, request_token(settings, "sts.amazonaws.com"), args.duration
            )
            if args.profile_file is None:
                print(json.dumps(credentials))
            else:
                _write_private(
                    args.profile_file,
                    (
                        f"[{args.profile}]\naws_access_key_id = {credentials['AccessKeyId']}\n"
                        f"aws_secret_access_key = {credentials['SecretAccessKey']}\n"
                        f"aws_session_token = {credentials['SessionToken']}\n"
                    ),
                )
            return 0
        from controller.identity.vault import VaultRefused, VaultSession

        if not (settings.vault_addr and settings.vault_mount and settings.vault_role):
            raise HelperError("VAULT_ADDR, RUNNER_PLATFORM_VAULT_MOUNT and _ROLE are needed")
        session = VaultSession(settings.vault_addr, settings.vault_mount, settings.vault_role)
        try:
            session.login(request_token(settings, settings.vault_audience))
        except VaultRefused as error:
            raise HelperError(str(error)) from None
        if args.print:
            print(session.client.token)
        else:
            _write_private(args.token_file, session.client.token)
        if args.database:
            try:
                database = session.database_credentials(args.database)
            except VaultRefused as error:
                session.close()
                raise HelperError(str(error)) from None
            _write_private(
                args.env_file, f"DB_USERNAME={database.username}\nDB_PASSWORD={database.password}\n"
            )
        if args.hold:
            _hold(session)
        return 0
    except HelperError as error:
        print(f"runner-credentials: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
