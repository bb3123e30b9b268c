"""Stack config: ':latest' nowhere, the controller image by digest beyond dev, every image
runner pods run by digest in production; the policy pack reads references the same way."""

from __future__ import annotations

from typing import Any

import pytest

from components.controller_manifests import CONFIG_MAP
from controller.model import SpecError, load_spec
from controller.model.images import floats_on_latest, has_digest, spec_images, tag_of
from policies.rules import images as pack

DIGEST = "sha256:" + "ab" * 32
CONTROLLER = f"ghcr.io/acme/runner-platform-controller:0.1.0@{DIGEST}"
RUNNER = f"ghcr.io/actions/actions-runner:2.329.0@{DIGEST}"


@pytest.mark.parametrize(
    ("image", "tag", "digest", "floats"),
    [
        ("ghcr.io/runner-platform/controller:0.1.0", "0.1.0", False, False),
        ("ghcr.io/runner-platform/controller:latest", "latest", False, True),
        ("ghcr.io/runner-platform/controller", None, False, True),
        (f"ghcr.io/runner-platform/controller@{DIGEST}", None, True, False),
        (f"ghcr.io/runner-platform/controller:latest@{DIGEST}", "latest", True, True),
        ("registry.internal:5000/mirror/controller", None, False, True),
        ("registry.internal:5000/mirror/controller:1.2", "1.2", False, False),
        ("123456789012.dkr.ecr.us-west-2.amazonaws.com/controller:0.1.0", "0.1.0", False, False),
        ("ghcr.io/x/y@sha256:abc", None, False, True),  # not a whole digest
    ],
)
def test_references_are_read_alike_by_the_model_and_the_pack(
    image: str, tag: str | None, digest: bool, floats: bool
) -> None:
    assert tag_of(image) == pack.tag_of(image) == tag
    assert has_digest(image) is digest
    assert (pack.DIGEST.search(image) is not None) is digest
    assert floats_on_latest(image) is pack.floats_on_latest(image) is floats


def test_the_pack_knows_the_controllers_config_map() -> None:
    assert pack.CONTROLLER_CONFIG == CONFIG_MAP


def test_a_dev_stack_may_use_tags(dev_document: dict[str, Any]) -> None:
    spec = load_spec(dev_document)
    assert spec.cluster.environment == "dev"
    assert not has_digest(spec.controller.image)


@pytest.mark.parametrize("environment", ["dev", "staging", "production"])
def test_latest_is_refused_in_every_stack(dev_document: dict[str, Any], environment: str) -> None:
    dev_document["cluster"]["environment"] = environment
    dev_document["controller"]["image"] = f"ghcr.io/runner-platform/controller:latest@{DIGEST}"
    dev_document["teams"][1]["runner_image"] = "ghcr.io/actions/actions-runner"
    with pytest.raises(SpecError) as error:
        load_spec(dev_document)
    text = str(error.value)
    assert "controller.image: 'ghcr.io/runner-platform/controller:latest@" in text
    assert "teams[1].runner_image: 'ghcr.io/actions/actions-runner' floats on ':latest'" in text


def test_staging_takes_the_controller_by_digest_and_runners_by_tag(
    dev_document: dict[str, Any],
) -> None:
    dev_document["cluster"]["environment"] = "staging"
    with pytest.raises(SpecError, match=r"controller\.image: a staging stack takes this image"):
        load_spec(dev_document)
    dev_document["controller"]["image"] = CONTROLLER
    assert load_spec(dev_document).controller.image == CONTROLLER


def _production(document: dict[str, Any]) -> dict[str, Any]:
    document["cluster"]["environment"] = "production"
    document["controller"]["image"] = CONTROLLER
    for team in document["teams"]:
        team["runner_image"] = RUNNER
        team["buildkit_image"] = f"docker.io/moby/buildkit:v0.25.1-rootless@{DIGEST}"
        team["dind_image"] = f"docker.io/library/docker:28.5.1-dind@{DIGEST}"
    for pool in document["pools"]:
        if "tool_cache" in pool:
            pool["tool_cache"]["image"] = f"ghcr.io/acme/hostedtoolcache:2025.10@{DIGEST}"
    return document


def test_production_takes_every_image_its_runner_pods_run_by_digest(
    dev_document: dict[str, Any],
) -> None:
    spec = load_spec(_production(dev_document))
    assert all(has_digest(image) for _, image, role in spec_images(spec) if role != "unused")
    dev_document["teams"][0]["runner_image"] = "ghcr.io/actions/actions-runner:2.329.0"
    with pytest.raises(SpecError, match=r"teams\[0\]\.runner_image: a production stack takes"):
        load_spec(dev_document)


def test_a_sidecar_image_counts_only_where_its_container_mode_is_used(
    dev_document: dict[str, Any],
) -> None:
    """web builds with BuildKit on nvme and runs no Docker daemon: its dind image is not
    run, so a production stack need not pin it (nor may it be ':latest')."""
    _production(dev_document)
    dev_document["teams"][0]["dind_image"] = "docker.io/library/docker:28.5.1-dind"
    spec = load_spec(dev_document)
    roles = {path: role for path, _, role in spec_images(spec)}
    assert roles["teams[0].buildkit_image"] == "runner"
    assert roles["teams[0].dind_image"] == "unused"
    assert roles["teams[1].dind_image"] == "runner"
    dev_document["teams"][0]["buildkit_image"] = "docker.io/moby/buildkit:v0.25.1-rootless"
    with pytest.raises(SpecError, match=r"teams\[0\]\.buildkit_image: a production stack"):
        load_spec(dev_document)


def test_the_tool_cache_image_is_pinned_like_any_image_a_job_runs(
    dev_document: dict[str, Any],
) -> None:
    # Its tools run in every job on the pool: a movable tag is a way into every job.
    document = _production(dev_document)
    pool = next(i for i, p in enumerate(document["pools"]) if "tool_cache" in p)
    document["pools"][pool]["tool_cache"]["image"] = "ghcr.io/acme/hostedtoolcache:2025.10"
    with pytest.raises(SpecError, match=rf"pools\[{pool}\]\.tool_cache\.image: a production"):
        load_spec(document)
    document["cluster"]["environment"] = "dev"
    document["pools"][pool]["tool_cache"]["image"] = "ghcr.io/acme/hostedtoolcache:latest"
    with pytest.raises(SpecError, match=rf"pools\[{pool}\]\.tool_cache\.image: .*latest"):
        load_spec(document)
