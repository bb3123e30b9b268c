"""How localenv.image turns a pod's security context into podman arguments: exactly what
the manifest says, so the image test runs the controller as deployed."""

from __future__ import annotations

import pytest

from localenv.image import UnsupportedField, _security_args


def test_root_is_a_user_like_any_other() -> None:
    # runAsUser 0 must not read as "unset" (the image's USER would decide instead): a
    # manifest that regressed to root is run as root, and the image test sees it.
    assert _security_args({"securityContext": {"runAsUser": 0}}, {}) == ["--user=0"]
    assert _security_args({"securityContext": {"runAsUser": 0, "runAsGroup": 0}}, {}) == [
        "--user=0:0"
    ]


def test_non_root_needs_a_user_and_a_user_that_is_not_root() -> None:
    with pytest.raises(UnsupportedField, match="without a runAsUser"):
        _security_args({"securityContext": {"runAsNonRoot": True}}, {})
    with pytest.raises(UnsupportedField, match="runAsUser 0"):
        _security_args({"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}, {})


def test_a_container_cannot_choose_its_user_here() -> None:
    with pytest.raises(UnsupportedField, match="runAsUser"):
        _security_args({}, {"securityContext": {"runAsUser": 1000}})
