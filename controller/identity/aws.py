"""The OIDC Manager's exchanges: a validated GitHub token for short-lived AWS credentials.

Flow: validate the token (controller.identity.oidc) → map its repository to the one team that owns
it → ``sts:AssumeRoleWithWebIdentity`` into ``github-runner-<team>-role`` for 900 to 3600 s
(never longer than the team's ``session_duration_seconds``) → audit, granted or refused,
never the token.

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

from controller.audit import AuditRecord, log_record
from controller.identity.access import team_for
from controller.identity.oidc import OidcValidator, TokenRefused, ValidToken
from controller.model import PlatformSpec

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
        self._cache: dict[tuple[str, str], AwsCredentials] = {}

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
        key = (role_arn, str(valid.claims["sub"]))
        cached = self._cache.get(key)
        if cached is not None and cached.expiration - REUSE_MARGIN > self.clock():
            return cached
        name = session_name(valid.claims, team.name)
        response = self.sts.assume_role_with_web_identity(
            RoleArn=role_arn,
            RoleSessionName=name,
            WebIdentityToken=token,
            DurationSeconds=clamp_duration(duration, team.session_duration_seconds),
        )
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
        self._cache[key] = credentials
        self._audit("granted", f"assumed {team.role_name} as {name}", valid, team.name)
        return credentials

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
