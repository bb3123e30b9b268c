"""Malformed and forged tokens against the Vault exchange (issue 9, item 14): OpenBao
checks the token itself, and whatever it answers, a login that grants nothing is one
refusal type (``VaultRefused``) with one audit record — never another exception past the
audit. A token signed by the real issuer with ``iss`` one ``/`` off is refused too:
Vault compares issuers byte for byte, as the platform's own validator now does."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from controller.identity.vault import VaultRefused, VaultSession
from localenv.github import GitHubEmulator
from localenv.services import OpenBao
from tests.integration.vault_support import applied_vault

AUDIENCE = "runner-platform-vault"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed_raw(emulator: GitHubEmulator, claims_json: str) -> str:
    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": emulator.oidc.kid})
    signing_input = f"{_b64(header.encode())}.{_b64(claims_json.encode())}"
    signature = emulator.oidc.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _forged(emulator: GitHubEmulator) -> dict[str, str]:
    good = emulator.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    without_exp = json.dumps({k: v for k, v in good.items() if k != "exp"})[:-1]
    deep = "[" * 5000 + "]" * 5000
    return {
        "issuer with a trailing slash": emulator.oidc.mint({**good, "iss": good["iss"] + "/"}),
        "exp as a string": _signed_raw(emulator, without_exp + ', "exp": "99999999999"}'),
        "exp NaN": _signed_raw(emulator, without_exp + ', "exp": NaN}'),
        "deeply nested claims": ".".join(
            [_b64(b'{"alg": "RS256"}'), _b64(('{"a": ' + deep + "}").encode()), "AA"]
        ),
        "not a token": "not-a-token",
        "empty": "",
    }


def _audits(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "runner_platform.audit"]


def test_every_forged_token_is_one_audited_vault_refusal(
    openbao: OpenBao,
    github_cloud: GitHubEmulator,
    github_ghes: GitHubEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        good = github_cloud.oidc.mint(
            github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
        )
        session = VaultSession(openbao.address, f"jwt-cloud-{suffix}", "web")
        session.login(good, "acme-corp/storefront")  # the mount works: refusals are the token's
        session.close()
        for case, token in _forged(github_cloud).items():
            caplog.clear()
            session = VaultSession(openbao.address, f"jwt-cloud-{suffix}", "web")
            with pytest.raises(VaultRefused):
                session.login(token, "acme-corp/storefront")
            (record,) = _audits(caplog)
            assert (record["decision"], record["action"]) == ("refused", "vault"), case
            assert token == "" or token not in json.dumps(record), case
            assert session.client is None, case


def test_an_unreachable_vault_is_a_refusal_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    session = VaultSession("http://127.0.0.1:9", "jwt-cloud", "web")
    with pytest.raises(VaultRefused, match="ConnectionError"):
        session.login("a.b.c", "acme-corp/storefront")
    (record,) = _audits(caplog)
    assert record["decision"] == "refused" and "ConnectionError" in record["reason"]
