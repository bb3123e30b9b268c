"""The image rules: ':latest' nowhere, digests in a production stack's controller spec.

Called directly with hand-built props, as the engine would send them (camelCase, the
ConfigMap's spec as JSON text); a value unknown in a preview is not judged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from policies.evaluate import check
from policies.rules import images_not_latest, production_images_by_digest

DIGEST = "sha256:" + "cd" * 32
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"


def workload(*images: Any, init: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    }
    if init is not None:
        pod["initContainers"] = [{"name": "init", "image": init}]
    return {"spec": {"template": {"spec": pod}}}


def controller_config(environment: str | None, **team: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cluster": {"name": "c"},
        "controller": {"image": team.pop("controller", f"ghcr.io/acme/controller:0.1.0@{DIGEST}")},
        "teams": [
            {
                "name": "web",
                "pools": ["warm", "nvme"],
                "container_mode": "kubernetes",
                "container_modes": {"nvme": "buildkit"},
                "runner_image": f"ghcr.io/actions/actions-runner:2.329.0@{DIGEST}",
                "buildkit_image": f"docker.io/moby/buildkit:v0.25.1-rootless@{DIGEST}",
                "dind_image": "docker.io/library/docker:28.5.1-dind",
                **team,
            }
        ],
    }
    if environment is not None:
        spec["cluster"]["environment"] = environment
    return {
        "metadata": {"name": "runner-controller-config", "namespace": "runner-platform"},
        "data": {"spec.json": json.dumps(spec), "runtime.json": None},
    }


@pytest.mark.parametrize(
    ("kind", "props", "expected"),
    [
        ("kubernetes:apps/v1:Deployment", workload("ghcr.io/acme/controller:0.1.0"), []),
        (
            "kubernetes:apps/v1:Deployment",
            workload("ghcr.io/acme/controller:latest"),
            ["container 'c0' uses 'ghcr.io/acme/controller:latest', which floats on ':latest'"],
        ),
        (
            "kubernetes:apps/v1:DaemonSet",
            workload("registry.k8s.io/pause:3.10", init="ghcr.io/actions/actions-runner"),
            ["container 'init' uses 'ghcr.io/actions/actions-runner', which floats on ':latest'"],
        ),
        (
            "kubernetes:batch/v1:CronJob",
            {
                "spec": {
                    "jobTemplate": {
                        "spec": {
                            "template": {"spec": {"containers": [{"name": "x", "image": "a"}]}}
                        }
                    }
                }
            },
            ["container 'x' uses 'a', which floats on ':latest'"],
        ),
        ("kubernetes:core/v1:Pod", {"spec": {"containers": [{"name": "p", "image": None}]}}, []),
        ("kubernetes:apps/v1:Deployment", {}, []),  # unknown in a preview
        (CONFIG_MAP, controller_config("dev"), []),
        (
            CONFIG_MAP,
            controller_config("dev", controller="ghcr.io/acme/controller"),
            ["spec controller.image uses 'ghcr.io/acme/controller', which floats on ':latest'"],
        ),
        (
            CONFIG_MAP,
            controller_config(None, dind_image="docker.io/library/docker:latest"),
            [
                "spec teams[0].dind_image uses 'docker.io/library/docker:latest', which floats "
                "on ':latest'"
            ],
        ),
    ],
)
def test_nothing_floats_on_latest(kind: str, props: dict[str, Any], expected: list[str]) -> None:
    messages = check(images_not_latest, kind, "r", props)
    assert [m.split(": name a version tag")[0] for m in messages] == expected


def test_a_production_spec_pins_what_runner_pods_run() -> None:
    assert (
        check(production_images_by_digest, CONFIG_MAP, "c", controller_config("production")) == []
    )


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"controller": "ghcr.io/acme/controller:0.1.0"}, "controller.image"),
        ({"runner_image": "ghcr.io/actions/actions-runner:2.329.0"}, "teams[0].runner_image"),
        ({"buildkit_image": "docker.io/moby/buildkit:v0.25.1"}, "teams[0].buildkit_image"),
    ],
)
def test_production_refuses_an_image_without_a_digest(change: dict[str, str], path: str) -> None:
    messages = check(
        production_images_by_digest, CONFIG_MAP, "c", controller_config("production", **change)
    )
    assert len(messages) == 1 and messages[0].startswith(f"production stack: {path} '")


@pytest.mark.parametrize("environment", [None, "dev", "staging"])
def test_other_stacks_may_run_runner_images_by_tag(environment: str | None) -> None:
    props = controller_config(environment, runner_image="ghcr.io/actions/actions-runner:2.329.0")
    assert check(production_images_by_digest, CONFIG_MAP, "c", props) == []


def test_other_config_maps_and_unknown_specs_are_not_judged() -> None:
    other = controller_config("production", controller="ghcr.io/acme/controller:0.1.0")
    other["metadata"]["name"] = "something-else"
    assert check(production_images_by_digest, CONFIG_MAP, "c", other) == []
    unknown = {"metadata": {"name": "runner-controller-config"}, "data": {"spec.json": None}}
    assert check(production_images_by_digest, CONFIG_MAP, "c", unknown) == []
    assert check(images_not_latest, CONFIG_MAP, "c", unknown) == []


def test_production_refuses_a_tool_cache_image_without_a_digest() -> None:
    # The pool's tool cache runs in every job there: pinned like the runner itself.
    props = controller_config("production")
    spec = json.loads(props["data"]["spec.json"])
    spec["pools"] = [{"name": "warm", "tool_cache": {"image": "ghcr.io/acme/tools:2025.10"}}]
    props["data"]["spec.json"] = json.dumps(spec)
    messages = check(production_images_by_digest, CONFIG_MAP, "c", props)
    assert len(messages) == 1
    assert messages[0].startswith("production stack: pools[0].tool_cache.image '")
