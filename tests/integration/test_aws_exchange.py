"""GitHub OIDC → STS against moto server, with the emulator's tokens."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from controller.identity.aws import AwsExchange, ExchangeRefused, clamp_duration, session_name
from controller.identity.oidc import OidcValidator
from localenv.github import GitHubEmulator
from localenv.services import Moto
from tests.integration.router_support import dev_spec


@pytest.fixture
def exchange(
    moto_server: Moto, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> AwsExchange:
    spec = dev_spec()
    iam: Any = moto_server.client("iam")
    arns = {}
    for team in spec.teams:
        try:
            arns[team.name] = iam.create_role(
                RoleName=team.role_name, AssumeRolePolicyDocument="{}"
            )["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            arns[team.name] = iam.get_role(RoleName=team.role_name)["Role"]["Arn"]
    validator = OidcValidator(
        list(spec.github_instances),
        ["sts.amazonaws.com"],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
    )
    return AwsExchange(spec, validator, CountingSts(moto_server.client("sts")), arns)


class CountingSts:
    """moto's STS, counting the calls that reach it."""

    def __init__(self, sts: Any) -> None:
        self.sts = sts
        self.calls: list[dict[str, Any]] = []

    def assume_role_with_web_identity(self, **request: Any) -> Any:
        self.calls.append(request)
        return self.sts.assume_role_with_web_identity(**request)


def _token(emulator: GitHubEmulator, repository: str, **extra: Any) -> str:
    return emulator.oidc.mint(
        emulator.oidc.claims(repository, audience="sts.amazonaws.com", **extra)
    )


def test_a_teams_repository_gets_its_role_for_a_bounded_time(
    exchange: AwsExchange, github_ghes: GitHubEmulator
) -> None:
    credentials = exchange.credentials(
        _token(github_ghes, "research/models", run_id=42, actor="rob"), duration=86400
    )
    assert credentials.role_arn.endswith(":role/github-runner-ml-role")
    assert credentials.session_name == "gh-42-rob-ml"
    # ml's roles last at most 1800 s (stack config), whatever was asked.
    assert 1700 <= credentials.expiration - time.time() <= 1800 + 5
    assert credentials.credential_process()["Version"] == 1


def test_credentials_are_reused_until_shortly_before_expiry(
    exchange: AwsExchange, github_cloud: GitHubEmulator
) -> None:
    token = _token(github_cloud, "acme-corp/storefront")
    first = exchange.credentials(token)
    assert exchange.credentials(token) is first


def test_a_repository_of_no_team_and_a_bad_token_are_refused(
    exchange: AwsExchange, github_cloud: GitHubEmulator
) -> None:
    with pytest.raises(ExchangeRefused, match="acme-corp/payments belongs to no team"):
        exchange.credentials(_token(github_cloud, "acme-corp/payments"))
    wrong_audience = github_cloud.oidc.mint(
        github_cloud.oidc.claims("acme-corp/storefront", audience="vault")
    )
    with pytest.raises(ExchangeRefused, match="token refused: audience"):
        exchange.credentials(wrong_audience)


def test_session_names_and_durations_stay_within_sts_limits() -> None:
    name = session_name({"run_id": "9" * 30, "actor": "a user/with spaces"}, "x" * 40)
    assert len(name) <= 64 and " " not in name and "/" not in name
    assert clamp_duration(60, 3600) == 900
    assert clamp_duration(7200, 3600) == 3600
    assert clamp_duration(3000, 1800) == 1800


def _audits(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "runner_platform.audit"]


def test_each_run_attempt_and_actor_gets_its_own_credentials_and_record(
    exchange: AwsExchange, github_cloud: GitHubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pull request of a repository shares one ``sub``: credentials are not."""
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    sts: CountingSts = exchange.sts

    def pull_request(**extra: Any) -> str:
        return _token(github_cloud, "acme-corp/storefront", event_name="pull_request", **extra)

    first = exchange.credentials(pull_request(run_id=501, actor="alice"))
    others = [
        exchange.credentials(pull_request(run_id=502, actor="alice")),  # another run
        exchange.credentials(pull_request(run_id=501, actor="mallory")),  # another actor
        exchange.credentials(pull_request(run_id=501, actor="alice", run_attempt="2")),
    ]
    subjects = {call["WebIdentityToken"].split(".")[1] for call in sts.calls}
    assert len(sts.calls) == 4 and len(subjects) == 4
    keys = {c.access_key_id for c in [first, *others]}
    assert len(keys) == 4
    granted = [a for a in _audits(caplog) if a["decision"] == "granted"]
    assert [(a["run_id"], a["requester"]) for a in granted] == [
        (501, "alice"),
        (502, "alice"),
        (501, "mallory"),
        (501, "alice"),
    ]
    assert all("assumed github-runner-web-role" in a["reason"] for a in granted)


def test_a_cache_hit_is_audited(
    exchange: AwsExchange, github_cloud: GitHubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    sts: CountingSts = exchange.sts
    first = exchange.credentials(_token(github_cloud, "acme-corp/storefront", run_id=601))
    again = exchange.credentials(_token(github_cloud, "acme-corp/storefront", run_id=601))
    assert again is first and len(sts.calls) == 1  # the same job's run: one STS call
    records = [a for a in _audits(caplog) if a["action"] == "aws-credentials"]
    assert [a["decision"] for a in records] == ["granted", "granted"]
    assert "cache hit" not in records[0]["reason"]
    assert "cache hit" in records[1]["reason"] and first.session_name in records[1]["reason"]
    assert (records[1]["run_id"], records[1]["repo"]) == (601, "acme-corp/storefront")


# -- malformed tokens against the exchange (issue 9, item 14): one refusal, audited --


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed_raw(emulator: GitHubEmulator, claims_json: str) -> str:
    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": emulator.oidc.kid})
    signing_input = f"{_b64(header.encode())}.{_b64(claims_json.encode())}"
    signature = emulator.oidc.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _forged(emulator: GitHubEmulator) -> dict[str, str]:
    good = emulator.oidc.claims("acme-corp/storefront", audience="sts.amazonaws.com")
    body = json.dumps({k: v for k, v in good.items() if k != "exp"})[:-1]
    deep = "[" * 5000 + "]" * 5000
    return {
        "issuer with a trailing slash": emulator.oidc.mint({**good, "iss": good["iss"] + "/"}),
        "exp as a string": _signed_raw(emulator, body + ', "exp": "99999999999"}'),
        "exp NaN": _signed_raw(emulator, body + ', "exp": NaN}'),
        "exp Infinity": _signed_raw(emulator, body + ', "exp": Infinity}'),
        "exp true": _signed_raw(emulator, body + ', "exp": true}'),
        "deeply nested claims": ".".join([_b64(b'{"alg": "RS256"}'), _b64(deep.encode()), "AA"]),
        "deeply nested header": ".".join([_b64(b'{"a": ' + deep.encode() + b"}"), "e30", "AA"]),
        "not a token": "\u00e9\u00e9.\u00e9.\u00e9",
    }


def test_every_malformed_token_is_one_audited_refusal(
    exchange: AwsExchange, github_cloud: GitHubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    sts: CountingSts = exchange.sts
    for case, token in _forged(github_cloud).items():
        caplog.clear()
        with pytest.raises(ExchangeRefused, match="token refused: "):
            exchange.credentials(token)
        (record,) = _audits(caplog)
        assert (record["decision"], record["action"]) == ("refused", "aws-credentials"), case
        assert record["reason"].startswith("token "), case
        assert token not in json.dumps(record), case  # never the token
    assert sts.calls == []  # none reached STS


def test_a_refusal_by_sts_is_audited_and_raised_as_a_refusal(
    moto_server: Moto, github_cloud: GitHubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner_platform.audit")
    spec = dev_spec()
    sts: Any = moto_server.client("sts")
    validator = OidcValidator(
        list(spec.github_instances),
        ["sts.amazonaws.com"],
        issuers={"cloud": github_cloud.oidc.issuer},
    )
    arns = {team.name: f"arn:aws:iam::123456789012:role/{team.role_name}" for team in spec.teams}
    with Stubber(sts) as stubbed:
        stubbed.add_client_error(
            "assume_role_with_web_identity", service_error_code="InvalidIdentityToken"
        )
        with pytest.raises(ExchangeRefused, match="STS refused github-runner-web-role"):
            AwsExchange(spec, validator, sts, arns).credentials(
                _token(github_cloud, "acme-corp/storefront", run_id=77)
            )
    (record,) = _audits(caplog)
    assert record["decision"] == "refused" and "InvalidIdentityToken" in record["reason"]
    assert record["run_id"] == 77
