"""A job's Vault session: log in with the job's GitHub token, read the team's secrets,
get database credentials made for this job, keep their leases alive while the job runs,
and revoke the token when it ends, which revokes its leases — so a job's database user
stops working after it.

The mount is the job's GitHub instance's (``jwt-<instance>``), the role is the team that
owns the repository; Vault itself checks the token (issuer, audience, bound claims).
Every step is audited, never a token or a password.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.audit import AuditRecord, log_record

Clock = Callable[[], float]


class VaultRefused(Exception):
    pass


@dataclass(frozen=True)
class DatabaseCredentials:
    username: str
    password: str
    lease_id: str
    ttl: int


@dataclass
class Lease:
    lease_id: str
    ttl: int
    renewed_at: float


@dataclass
class VaultSession:
    address: str
    mount: str
    role: str
    client_factory: Callable[..., Any] | None = None
    clock: Clock = time.time
    leases: dict[str, Lease] = field(default_factory=dict)
    client: Any = None
    token_ttl: int = 0
    repository: str = ""

    def _new_client(self, token: str | None = None) -> Any:
        if self.client_factory is not None:
            return self.client_factory(url=self.address, token=token)
        import hvac

        return hvac.Client(url=self.address, token=token)

    def login(self, jwt: str, repository: str = "") -> None:
        import hvac.exceptions
        import requests

        self.repository = repository
        try:
            auth = self._new_client().auth.jwt.jwt_login(self.role, jwt, path=self.mount)["auth"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as error:
            self._audit("refused", f"login to {self.mount}/{self.role}: {_short(error)}")
            raise VaultRefused(f"Vault refused the login to {self.mount}/{self.role}") from None
        except (hvac.exceptions.VaultError, requests.RequestException) as error:
            # Any other answer (a 401, a 5xx, no answer) still grants nothing: audited and
            # raised as the one refusal type, never an escape past the audit (issue 9).
            self._audit("refused", f"login to {self.mount}/{self.role}: {type(error).__name__}")
            raise VaultRefused(
                f"Vault did not log in to {self.mount}/{self.role}: {type(error).__name__}"
            ) from None
        self.client = self._new_client(auth["client_token"])
        self.token_ttl = int(auth["lease_duration"])
        self._audit(
            "granted",
            f"Vault token for {self.mount}/{self.role}, "
            f"ttl {self.token_ttl}s, policies {auth['policies']}",
        )

    def read_secret(self, path: str) -> dict[str, Any]:
        """A KV v2 secret under ``secret/``; the team's policy decides what is readable."""
        import hvac.exceptions

        try:
            response = self._require().secrets.kv.v2.read_secret_version(
                path=path, raise_on_deleted_version=True
            )
        except hvac.exceptions.Forbidden:
            self._audit("refused", f"read secret/{path}")
            raise VaultRefused(f"not allowed to read secret/{path}") from None
        data: dict[str, Any] = response["data"]["data"]
        return data

    def database_credentials(self, role: str) -> DatabaseCredentials:
        import hvac.exceptions

        try:
            response = self._require().secrets.database.generate_credentials(name=role)
        except hvac.exceptions.Forbidden:
            self._audit("refused", f"database credentials of {role}")
            raise VaultRefused(f"not allowed to use database role {role}") from None
        lease = Lease(response["lease_id"], int(response["lease_duration"]), self.clock())
        self.leases[lease.lease_id] = lease
        self._audit("granted", f"database user for {role}, lease ttl {lease.ttl}s")
        return DatabaseCredentials(
            response["data"]["username"], response["data"]["password"], lease.lease_id, lease.ttl
        )

    def renew_due(self, increment: int | None = None) -> list[str]:
        """Renew every lease past half its time, and the token; returns the renewed leases."""
        client = self._require()
        renewed = []
        for lease in self.leases.values():
            if self.clock() - lease.renewed_at >= lease.ttl / 2:
                response = client.sys.renew_lease(lease_id=lease.lease_id, increment=increment)
                lease.ttl, lease.renewed_at = int(response["lease_duration"]), self.clock()
                renewed.append(lease.lease_id)
        client.auth.token.renew_self()
        return renewed

    def close(self) -> None:
        """The job ended: revoke the token, and with it every lease it created (Vault
        revokes a token's leases with it), so the job's database users are dropped.

        Revoking through the token keeps the job's policy minimal: ``sys/leases/revoke``
        would let a token revoke any lease whose id it learns.
        """
        if self.client is None:
            return
        self.client.auth.token.revoke_self()
        self.leases.clear()
        self._audit("revoked", f"token and leases of {self.mount}/{self.role}")
        self.client = None

    def _require(self) -> Any:
        if self.client is None:
            raise VaultRefused("not logged in")
        return self.client

    def _audit(self, decision: str, reason: str) -> None:
        log_record(
            AuditRecord(
                decision=decision,
                reason=reason,
                repo=self.repository,
                team=self.role,
                action="vault",
            )
        )


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
