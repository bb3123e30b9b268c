"""The OIDC Manager's exchanges: a validated GitHub token for short-lived AWS credentials.

Flow: validate the token (controller.identity.oidc) → map its repository to the one team that owns
it → ``sts:AssumeRoleWithWebIdentity`` into ``github-runner-<team>-role`` for 900 to 3600 s
(never longer than the team's ``session_duration_seconds``) → audit, granted or refused,
never the token.

Credentials are reused only by the same job's run: the cache key is the role, ``sub``,
run id, run attempt and actor — ``sub`` alone is shared by every pull request (and every
run of a branch) of a repository — and every hand-out, fresh or cached, is audited.

Who and what reach CloudTrail through the role session name (run id, actor, team):
``AssumeRoleWithWebIdentity`` has no ``Tags`` parameter — web-identity session tags
come only from an ``https://aws.amazon.com/tags`` claim in the token, which GitHub's
tokens do not carry.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controller.audit import AuditRecord, log_record
from controller.identity.access import team_for
from controller.identity.oidc import OidcValidator, TokenRefused, ValidToken
from controller.model import PlatformSpec

CacheKey = tuple[str, str, str, str, str]  # role, sub, run id, run attempt, actor

Clock = Callable[[], float]
MIN_SECONDS, MAX_SECONDS = 900, 3600
REUSE_MARGIN = 300  # hand out cached credentials only while they have 5 minutes left


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    role_arn: str
    session_name: str

    def credential_process(self) -> dict[str, Any]:
        """The JSON an AWS SDK ``credential_process`` expects (Version 1)."""
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expiration)),
        }


class ExchangeRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def session_name(claims: dict[str, Any], team: str) -> str:
    """``gh-<run id>-<actor>-<team>``, in the characters and 64 bytes STS allows."""
    raw = f"gh-{claims.get('run_id', '0')}-{claims.get('actor', 'unknown')}-{team}"
    return re.sub(r"[^\w+=,.@-]", "-", raw)[:64]


def cache_key(role_arn: str, claims: dict[str, Any]) -> CacheKey:
    """Who may share credentials: one role, one subject, one run attempt, one actor."""
    return (
        role_arn,
        str(claims["sub"]),
        str(claims.get("run_id", "")),
        str(claims.get("run_attempt", "")),
        str(claims.get("actor", "")),
    )


def clamp_duration(requested: int, team_max: int) -> int:
    return max(MIN_SECONDS, min(requested, team_max, MAX_SECONDS))


class AwsExchange:
    def __init__(
        self,
        spec: PlatformSpec,
        validator: OidcValidator,
        sts: Any,
        role_arns: dict[str, str],
        *,
        clock: Clock = time.time,
    ) -> None:
        self.spec = spec
        self.validator = validator
        self.sts = sts
        self.role_arns = role_arns
        self.clock = clock
        self._cache: dict[CacheKey, AwsCredentials] = {}

    def credentials(self, token: str, duration: int = MAX_SECONDS) -> AwsCredentials:
        try:
            valid = self.validator.validate(token)
        except TokenRefused as refusal:
            self._audit("refused", f"token {refusal}", None)
            raise ExchangeRefused(f"token refused: {refusal}") from None
        team = team_for(self.spec, valid.instance, valid.repository)
        if team is None or team.name not in self.role_arns:
            self._audit("refused", "repository belongs to no team", valid)
            raise ExchangeRefused(f"{valid.repository} belongs to no team")
        role_arn = self.role_arns[team.name]
        key = cache_key(role_arn, valid.claims)
        cached = self._cache.get(key)
        if cached is not None and self._fresh(cached):
            self._audit(
                "granted",
                f"reused cached credentials of {team.role_name} as {cached.session_name} "
                "(cache hit)",
                valid,
                team.name,
            )
            return cached
        name = session_name(valid.claims, team.name)
        try:
            response = self.sts.assume_role_with_web_identity(
                RoleArn=role_arn,
                RoleSessionName=name,
                WebIdentityToken=token,
                DurationSeconds=clamp_duration(duration, team.session_duration_seconds),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            self._audit("refused", f"STS refused {team.role_name}: {code}", valid, team.name)
            raise ExchangeRefused(f"STS refused {team.role_name}: {code}") from None
        except BotoCoreError as error:  # no answer from STS: nothing granted either
            reason = f"no answer from STS for {team.role_name}: {type(error).__name__}"
            self._audit("refused", reason, valid, team.name)
            raise ExchangeRefused(reason) from None
        raw = response["Credentials"]
        expiration = raw["Expiration"]
        credentials = AwsCredentials(
            raw["AccessKeyId"],
            raw["SecretAccessKey"],
            raw["SessionToken"],
            expiration.timestamp() if hasattr(expiration, "timestamp") else float(expiration),
            role_arn,
            name,
        )
        self._forget_stale()
        self._cache[key] = credentials
        self._audit("granted", f"assumed {team.role_name} as {name}", valid, team.name)
        return credentials

    def _fresh(self, credentials: AwsCredentials) -> bool:
        return credentials.expiration - REUSE_MARGIN > self.clock()

    def _forget_stale(self) -> None:
        """Drop what can no longer be handed out: one entry per job run would grow forever."""
        for key in [k for k, held in self._cache.items() if not self._fresh(held)]:
            del self._cache[key]

    def _audit(self, decision: str, reason: str, valid: ValidToken | None, team: str = "") -> None:
        claims = valid.claims if valid else {}
        log_record(
            AuditRecord(
                decision=decision,
                reason=reason,
                instance=valid.instance if valid else "",
                org=str(claims.get("repository_owner", "")),
                repo=str(claims.get("repository", "")),
                requester=str(claims.get("actor", "")),
                team=team,
                run_id=int(claims["run_id"]) if str(claims.get("run_id", "")).isdigit() else None,
                action="aws-credentials",
            )
        )
