"""The workflows are actionlint-clean (with shellcheck over their scripts where installed),
and the release does what a platform team relies on: a version tag, both architectures,
SBOM and provenance, a keyless signature, the wheel as a release asset."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import yaml

from localenv.tools import actionlint
from tests.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def _release() -> dict[Any, Any]:
    document: dict[Any, Any] = yaml.safe_load((WORKFLOWS / "release.yml").read_text())
    return document


def _step(job: dict[str, Any], uses: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if str(s.get("uses", "")).startswith(uses))


def test_every_workflow_is_actionlint_clean() -> None:
    result = subprocess.run(
        [str(actionlint()), "-no-color", *sorted(str(p) for p in WORKFLOWS.glob("*.yml"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert shutil.which("shellcheck") is not None, "run `make actionlint` (Debian shellcheck)"


def test_the_release_runs_on_version_tags_only() -> None:
    # YAML 1.1 reads the key `on` as True.
    trigger = _release()[True]
    assert list(trigger) == ["push"]
    assert trigger["push"] == {"tags": ["v[0-9]+.[0-9]+.[0-9]+*"]}
    assert _release()["permissions"] == {}


def test_the_image_is_multi_arch_with_sbom_provenance_and_a_keyless_signature() -> None:
    job = _release()["jobs"]["image"]
    assert job["needs"] == ["check", "dist"]
    assert job["permissions"]["id-token"] == "write"
    build = _step(job, "docker/build-push-action")["with"]
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert build["push"] is True
    assert build["sbom"] is True
    assert build["provenance"] == "mode=max"
    assert "VERSION=${{ needs.dist.outputs.version }}" in build["build-args"]
    sign = next(s for s in job["steps"] if "cosign sign" in s.get("run", ""))
    assert '"$IMAGE@$DIGEST"' in sign["run"] and "--key" not in sign["run"]
    assert _step(job, "actions/attest-build-provenance")["with"]["push-to-registry"] is True


def test_the_release_carries_the_wheel_and_only_its_job_may_write_contents() -> None:
    jobs = _release()["jobs"]
    assert "python -m build" in "".join(s.get("run", "") for s in jobs["dist"]["steps"])
    release = jobs["release"]
    assert release["permissions"] == {"contents": "write"}
    script = release["steps"][-1]["run"]
    assert 'gh release create "$GITHUB_REF_NAME" dist/*' in script
    writers = [name for name, job in jobs.items() if job["permissions"].get("contents") == "write"]
    assert writers == ["release"]
