"""The PR preview runs where it can work: `pulumi preview` on the platform team's own
runners (the Vault dynamic provider must reach an internal Vault) with AWS access through
the OIDC role, and the check on a hosted runner whose builds are cached by version.
actionlint runs over it in tests/unit/test_release_workflow.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.ingest.events import WorkflowJobEvent
from controller.ingest.routing import Router
from controller.model import load_spec
from localenv import helm
from tests.conftest import DEV_DOCUMENT, ROOT


def _workflow() -> dict[Any, Any]:
    document: dict[Any, Any] = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "preview.yml").read_text()
    )
    return document


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = job["steps"]
    return steps


def test_the_preview_job_lands_on_the_platform_teams_runners() -> None:
    """Its runs-on labels route, by the controller's own router, to the dev stack's
    platform team (infra: GHES org `platform`, every repository of it, label `deploy`)."""
    job = _workflow()["jobs"]["preview"]
    labels = job["runs-on"]
    spec = load_spec(copy.deepcopy(DEV_DOCUMENT))
    event = WorkflowJobEvent.model_validate(
        {
            "action": "queued",
            "workflow_job": {"id": 1, "run_id": 1, "labels": labels},
            "repository": {"full_name": "platform/runner-platform"},
            "sender": {"login": "sre"},
        }
    )
    route = Router(spec).route("ghes", event)
    assert route is not None
    assert (route.team.name, route.scale_set.name) == ("infra", "infra-warm")
    custom = set(labels) - {"self-hosted", "linux", "X64"}
    known = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    assert custom <= set(known["self-hosted-runner"]["labels"])


def test_the_preview_keeps_aws_on_the_oidc_role_and_skips_forks() -> None:
    job = _workflow()["jobs"]["preview"]
    assert job["permissions"]["id-token"] == "write"
    aws = next(
        s for s in _steps(job) if str(s.get("uses", "")).startswith("aws-actions/configure-aws")
    )
    assert set(aws["with"]) == {"role-to-assume", "aws-region"}  # no keys
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert _workflow()["permissions"] == {"contents": "read"}


def test_the_check_restores_its_builds_by_version_and_saves_them_before_testing() -> None:
    steps = _steps(_workflow()["jobs"]["check"])
    runs = [s.get("run", "") for s in steps]
    pins = next(i for i, s in enumerate(steps) if s.get("id") == "pins")
    assert "python -m localenv.helm cache-key" in runs[pins]
    uses = [str(s.get("uses", "")) for s in steps]
    restores = [i for i, u in enumerate(uses) if u.startswith("actions/cache/restore")]
    saves = [i for i, u in enumerate(uses) if u.startswith("actions/cache/save")]
    build = runs.index("make k8s-bins helm actionlint")
    check = runs.index("make check")
    assert pins < min(restores) and max(restores) < build < min(saves) and max(saves) < check
    for index in restores + saves:
        assert "${{ steps.pins.outputs.key }}" in steps[index]["with"]["key"]
    assert steps[restores[0]]["with"]["path"] == "~/.cache/runner-platform"


def test_the_cache_key_follows_every_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    key = helm.cache_key()
    assert key == helm.cache_key()
    pins = helm.pinned_versions()
    monkeypatch.setattr(helm, "pinned_versions", lambda: {**pins, "cilium": "9.9.9"})
    assert helm.cache_key() != key
