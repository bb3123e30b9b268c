"""OIDC validation with tokens from the emulator's Cloud and GHES issuers (real HTTP)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.identity.oidc import OidcValidator, TokenRefused
from localenv.github import GitHubEmulator
from localenv.github.oidc import OidcIssuer
from tests.integration.router_support import dev_spec

AUDIENCE = "sts.amazonaws.com"


@pytest.fixture
def validator(github_cloud: GitHubEmulator, github_ghes: GitHubEmulator) -> OidcValidator:
    spec = dev_spec()
    return OidcValidator(
        list(spec.github_instances),
        [AUDIENCE, "runner-platform-vault"],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
    )


def _token(emulator: GitHubEmulator, repository: str, **overrides: Any) -> str:
    claims = emulator.oidc.claims(repository, audience=AUDIENCE)
    claims.update(overrides)
    return emulator.oidc.mint(claims)


@pytest.mark.parametrize(
    ("emulator_name", "repository", "instance"),
    [("github_cloud", "acme-corp/storefront", "cloud"), ("github_ghes", "research/models", "ghes")],
)
def test_valid_tokens_of_each_instance_pass(
    validator: OidcValidator,
    emulator_name: str,
    repository: str,
    instance: str,
    request: pytest.FixtureRequest,
) -> None:
    emulator: GitHubEmulator = request.getfixturevalue(emulator_name)
    valid = validator.validate(_token(emulator, repository))
    assert (valid.instance, valid.repository) == (instance, repository)


def test_owner_id_subject_form_passes(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    issuer = OidcIssuer(github_cloud.oidc.issuer, owner_ids=True)
    issuer.key, issuer.kid = github_cloud.oidc.key, github_cloud.oidc.kid
    token = issuer.mint(
        issuer.claims("acme-corp/storefront", audience=AUDIENCE, repository_id=55, owner_id=7)
    )
    assert validator.validate(token).claims["sub"].startswith("repo:acme-corp@7/storefront@55:")


def _refusal(validator: OidcValidator, token: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        validator.validate(token)
    return caught.value.check


def test_each_bad_token_is_refused_with_its_reason(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    now = int(time.time())
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    oidc = github_cloud.oidc
    cases = {
        "issuer": oidc.mint({**good, "iss": "https://token.actions.example.com"}),
        "audience": oidc.mint({**good, "aud": "someone-else"}),
        "expiry": oidc.mint({**good, "iat": now - 900, "nbf": now - 900, "exp": now - 300}),
        "not-before": oidc.mint({**good, "nbf": now + 600, "exp": now + 900}),
        "subject": oidc.mint({**good, "sub": "repo:acme-corp/other:ref:refs/heads/main"}),
        "claims": oidc.mint({k: v for k, v in good.items() if k != "job_workflow_ref"}),
    }
    for check, token in cases.items():
        assert _refusal(validator, token) == check, check


def test_unknown_kid_refreshes_the_jwks_at_most_once_a_minute(
    github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    from controller.identity.oidc import http_fetch

    now = [time.time()]
    fetched: list[str] = []

    def counting_fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return http_fetch(url)

    validator = OidcValidator(
        list(dev_spec().github_instances),
        [AUDIENCE],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
        fetch=counting_fetch,
        clock=lambda: now[0],
    )
    assert validator.validate(_token(github_cloud, "acme-corp/storefront"))
    assert validator.validate(_token(github_cloud, "acme-corp/storefront"))
    assert len(fetched) == 2  # discovery + JWKS, once: the second token used the cache
    github_cloud.oidc.rotate()  # the issuer rotated its key
    rotated = _token(github_cloud, "acme-corp/storefront")
    assert _refusal(validator, rotated) == "key"  # within a minute: no refetch
    assert len(fetched) == 2
    now[0] += 61
    assert validator.validate(rotated)  # unknown kid after the interval: refetched
    assert len(fetched) == 4


def test_alg_none_and_hmac_with_the_public_key_are_refused(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    claims = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert _refusal(validator, unsigned) == "algorithm"
    public_pem = github_cloud.oidc.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": github_cloud.oidc.kid}
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, claims)
    ]
    import hashlib
    import hmac

    signing_input = b".".join(segments)
    signature = base64.urlsafe_b64encode(
        hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    ).rstrip(b"=")
    assert _refusal(validator, (signing_input + b"." + signature).decode()) == "algorithm"


def test_a_tampered_payload_fails_the_signature(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    header, payload, signature = _token(github_cloud, "acme-corp/storefront").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["repository"] = "acme-corp/web-admin"
    claims["sub"] = "repo:acme-corp/web-admin:ref:refs/heads/main"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refusal(validator, f"{header}.{forged}.{signature}") == "signature"


def test_garbage_is_refused(validator: OidcValidator) -> None:
    assert _refusal(validator, "not-a-token") == "format"


# -- exactness (issue 9, item 14): tokens signed with the issuer's real key, so each
# refusal below is the validator's own, not the signature's --


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed_raw(oidc: OidcIssuer, payload: str, header: str | None = None) -> str:
    """A token whose claims segment is exactly ``payload`` (JSON Python would not write),
    signed RS256 with the issuer's key."""
    header = header or json.dumps({"alg": "RS256", "typ": "JWT", "kid": oidc.kid})
    signing_input = f"{_b64(header.encode())}.{_b64(payload.encode())}"
    signature = oidc.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _claims_json(claims: dict[str, Any], **raw: str) -> str:
    """The claims as JSON, with the members in ``raw`` spelled verbatim."""
    body = json.dumps({k: v for k, v in claims.items() if k not in raw})
    extra = "".join(f', "{name}": {text}' for name, text in raw.items())
    return body[:-1] + extra + "}"


def test_the_issuer_must_match_byte_for_byte(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    issuer = good["iss"]
    for forged in (issuer + "/", issuer.upper(), issuer + " ", [issuer], None):
        token = _signed_raw(github_cloud.oidc, json.dumps({**good, "iss": forged}))
        assert _refusal(validator, token) == "issuer", forged
    assert validator.validate(github_cloud.oidc.mint(good))


@pytest.mark.parametrize(
    ("name", "raw", "check"),
    [
        ("exp", '"9999999999"', "claims"),  # a string is not a NumericDate
        ("exp", "NaN", "format"),  # not JSON at all; a NaN exp would never expire
        ("exp", "Infinity", "format"),
        ("exp", "1e400", "claims"),  # JSON, but a float it overflows to infinity
        ("exp", "1" + "0" * 400, "claims"),  # an integer no float holds
        ("exp", "true", "claims"),  # to Python a bool is an int
        ("nbf", '"0"', "claims"),
        ("nbf", "-Infinity", "format"),
        ("iat", "false", "claims"),
        ("iat", "null", "claims"),
        ("iat", "[1]", "claims"),
    ],
)
def test_numeric_dates_are_finite_json_numbers(
    validator: OidcValidator, github_cloud: GitHubEmulator, name: str, raw: str, check: str
) -> None:
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    token = _signed_raw(github_cloud.oidc, _claims_json(good, **{name: raw}))
    assert _refusal(validator, token) == check


def test_a_repeated_member_name_is_refused(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    other = json.dumps("repo:acme-corp/web-admin:ref:refs/heads/main")
    token = _signed_raw(github_cloud.oidc, _claims_json(good, sub=json.dumps(good["sub"])))
    assert validator.validate(token)  # spelled verbatim once: still valid
    repeated = _claims_json(good, sub=json.dumps(good["sub"]))[:-1] + f', "sub": {other}}}'
    assert _refusal(validator, _signed_raw(github_cloud.oidc, repeated)) == "format"


def test_deeply_nested_json_is_a_refusal_not_a_recursion_error(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    deep = "[" * 5000 + "]" * 5000  # within the length bound, past json's recursion limit
    header = json.dumps({"alg": "RS256", "kid": github_cloud.oidc.kid})
    claims = '{"iss": "x", "a": ' + deep + "}"
    assert _refusal(validator, f"{_b64(header.encode())}.{_b64(claims.encode())}.AAAA") == "format"
    nested_header = '{"alg": "RS256", "x": ' + deep + "}"
    assert _refusal(validator, f"{_b64(nested_header.encode())}.{_b64(b'{}')}.AAAA") == "format"
    # Signed by the issuer, nested within json's limit but where a string belongs.
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    nested = "[" * 200 + '"x"' + "]" * 200
    signed = _signed_raw(github_cloud.oidc, _claims_json(good, actor=nested))
    assert _refusal(validator, signed) == "claims"


def test_claims_the_platform_reads_must_be_strings(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    for name, value in (("actor", 7), ("run_id", 42), ("repository", {"a": 1}), ("sub", ["x"])):
        token = github_cloud.oidc.mint({**good, name: value})
        assert _refusal(validator, token) in ("claims", "subject"), name
    assert _refusal(validator, github_cloud.oidc.mint({**good, "aud": [AUDIENCE, 3]})) == "audience"


def test_an_overlong_token_and_crit_headers_are_refused(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    padded = github_cloud.oidc.mint({**good, "padding": "x" * 20_000})
    assert _refusal(validator, padded) == "format"
    crit = json.dumps({"alg": "RS256", "kid": github_cloud.oidc.kid, "crit": ["exp"]})
    assert _refusal(validator, _signed_raw(github_cloud.oidc, json.dumps(good), crit)) == (
        "algorithm"
    )


_VALIDATORS: dict[str, OidcValidator] = {}
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "iss",
                "aud",
                "exp",
                "nbf",
                "iat",
                "sub",
                "repository",
                "actor",
                "repository_owner",
                "run_id",
                "repository_id",
                "repository_owner_id",
                "job_workflow_ref",
                "runner_environment",
            ]
        ),
        _JSON,
        max_size=4,
    ),
    kid=_JSON,
)
def test_whatever_a_signed_token_holds_the_only_error_is_a_refusal(
    github_cloud: GitHubEmulator, github_ghes: GitHubEmulator, overrides: dict[str, Any], kid: Any
) -> None:
    issuers = {"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer}
    key = json.dumps(issuers)
    if key not in _VALIDATORS:  # one per emulator pair: its JWKS fetched once, not per example
        _VALIDATORS[key] = OidcValidator(
            list(dev_spec().github_instances), [AUDIENCE], issuers=issuers
        )
    validator = _VALIDATORS[key]
    claims = {**github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE), **overrides}
    oidc = github_cloud.oidc
    header = {"alg": "RS256", "kid": oidc.kid if kid is None else kid}
    for token in (
        _signed_raw(oidc, json.dumps(claims), json.dumps(header)),
        _signed_raw(oidc, json.dumps(claims)),
    ):
        try:
            validator.validate(token)
        except TokenRefused:
            pass
