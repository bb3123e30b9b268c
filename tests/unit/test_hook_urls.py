"""Which hook URLs the reconciler counts as the router's own: the same URL however it is
spelled, and nothing on another host, port or scheme."""

from __future__ import annotations

import pytest

from controller.ingest.reconcile import _normal_url

OURS = "https://hooks.example.com/webhooks/github/cloud"


@pytest.mark.parametrize(
    "url",
    [
        OURS,
        "https://Hooks.Example.COM/webhooks/github/cloud/",
        "https://hooks.example.com:443/webhooks/github/cloud",
        " https://hooks.example.com/webhooks/github/cloud?x=1 ",
    ],
)
def test_the_same_url_spelled_otherwise_is_ours(url: str) -> None:
    assert _normal_url(url) == _normal_url(OURS)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:8443/webhooks/github/cloud",
        "http://hooks.example.com/webhooks/github/cloud",
        "http://hooks.example.com:443/webhooks/github/cloud",
        "https://hooks.example.com.evil.io/webhooks/github/cloud",
        "https://hooks.example.com@evil.io/webhooks/github/cloud",
        "https://hooks.example.com:notaport/webhooks/github/cloud",
        "https://hooks.example.com/webhooks/github/cloud/../ghes",
    ],
)
def test_another_host_port_or_scheme_is_not(url: str) -> None:
    assert _normal_url(url) != _normal_url(OURS)
