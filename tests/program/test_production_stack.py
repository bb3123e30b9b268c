"""A production stack under Pulumi's mocks: how it declares itself, what it must pin.

``runner-platform:cluster`` says ``environment: production``; the controller image and
every image its runner pods run are then taken by digest. The program refuses a stack
config that does not, naming the value's path; the policy pack refuses the same in what
the program declares (the controller's ConfigMap), should a spec reach it unvalidated.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from components.controller_manifests import CONFIG_MAP
from localenv.pulumi_mocks import Recorded, RecordingMocks, mock_config, run_program
from policies.evaluate import evaluate
from tests.conftest import ROOT

DIGEST = "sha256:" + "0f" * 32


def production_config() -> dict[str, str]:
    config = mock_config(ROOT / "Pulumi.dev.yaml")
    cluster = json.loads(config["runner-platform:cluster"])
    cluster["environment"] = "production"
    controller = json.loads(config["runner-platform:controller"])
    controller["image"] = f"ghcr.io/runner-platform/controller:0.1.0@{DIGEST}"
    teams = json.loads(config["runner-platform:teams"])
    for team in teams:
        team["runner_image"] = f"ghcr.io/actions/actions-runner:2.329.0@{DIGEST}"
        team["buildkit_image"] = f"docker.io/moby/buildkit:v0.25.1-rootless@{DIGEST}"
        team["dind_image"] = f"docker.io/library/docker:28.5.1-dind@{DIGEST}"
    pools = json.loads(config["runner-platform:pools"])
    for pool in pools:
        if "tool_cache" in pool:
            pool["tool_cache"]["image"] = f"ghcr.io/acme/hostedtoolcache:2025.10@{DIGEST}"
    config["runner-platform:pools"] = json.dumps(pools)
    config["runner-platform:cluster"] = json.dumps(cluster)
    config["runner-platform:controller"] = json.dumps(controller)
    config["runner-platform:teams"] = json.dumps(teams)
    return config


@pytest.fixture(scope="module")
def production_run() -> RecordingMocks:
    return run_program(production_config(), stack="prod")


def _config_map(run: RecordingMocks) -> Recorded:
    return next(
        r
        for r in run.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"] == CONFIG_MAP
    )


def test_a_pinned_production_stack_deploys_its_digests_and_passes_the_pack(
    production_run: RecordingMocks,
) -> None:
    deployment = next(
        r
        for r in production_run.of_type("kubernetes:apps/v1:Deployment")
        if r.inputs["metadata"]["name"] == "runner-controller"
    )
    images = {c["image"] for c in deployment.inputs["spec"]["template"]["spec"]["containers"]}
    assert images == {f"ghcr.io/runner-platform/controller:0.1.0@{DIGEST}"}
    spec = json.loads(_config_map(production_run).inputs["data"]["spec.json"])
    assert spec["cluster"]["environment"] == "production"
    assert evaluate((r.type, r.name, r.inputs) for r in production_run.resources) == []


@pytest.mark.parametrize(
    ("section", "change", "path"),
    [
        ("controller", {"image": "ghcr.io/runner-platform/controller:0.1.0"}, "controller.image"),
        ("teams", {"runner_image": "ghcr.io/actions/actions-runner:2.329.0"}, r"teams\[0\]"),
    ],
)
def test_the_program_refuses_a_production_image_by_tag(
    section: str, change: dict[str, Any], path: str
) -> None:
    config = production_config()
    value = json.loads(config[f"runner-platform:{section}"])
    (value[0] if isinstance(value, list) else value).update(change)
    config[f"runner-platform:{section}"] = json.dumps(value)
    with pytest.raises(pulumi.RunError, match=rf"{path}.*a production stack takes this image"):
        run_program(config, stack="prod")


def test_the_pack_refuses_an_unpinned_runner_image_in_a_production_config_map(
    production_run: RecordingMocks,
) -> None:
    recorded = _config_map(production_run)
    spec = json.loads(recorded.inputs["data"]["spec.json"])
    spec["teams"][2]["runner_image"] = "ghcr.io/actions/actions-runner:2.329.0"
    props = {**recorded.inputs, "data": {**recorded.inputs["data"], "spec.json": json.dumps(spec)}}
    violations = evaluate([(recorded.type, recorded.name, props)])
    assert [(v.policy, v.message.split(" '")[0]) for v in violations] == [
        ("production-images-by-digest", "production stack: teams[2].runner_image")
    ]
