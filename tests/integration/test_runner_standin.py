"""The runner stand-in plays the runner binary in KWOK runner pods: a Running pod's runner
comes online in the emulator and takes its job; the job's end ends the pod."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from localenv.github import GitHubEmulator
from localenv.kube import ControlPlane
from localenv.kube_objects import kwok_node, pool_node
from localenv.process import ManagedProcess, free_port, wait_for
from localenv.runner_standin import RunnerStandIn
from tests.integration.kube_support import (
    generate_jit,
    installation_token,
    jit_secret,
    runner_pod,
    small_spec,
)


class Setup:
    """One team's org in an emulator, its namespace and a general-pool node in the cluster."""

    def __init__(self, plane: ControlPlane, gh: GitHubEmulator) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.gh = gh
        self.spec = small_spec(self.suffix)
        self.team = self.spec.teams[0]
        self.scale_set = self.spec.scale_sets()[0]  # the team on its general pool
        self.org = self.team.org
        self.namespace = f"runners-{self.team.name}"
        self.core = client.CoreV1Api(plane.api_client())
        pool = self.spec.pool(self.scale_set.pool)
        self.core.create_node(pool_node(self.spec, pool, f"{pool.name}-node"))
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        self.token = installation_token(gh, int(self.suffix, 16), self.org)
        self.group = gh.world.add_runner_group(self.org, self.team.name)

    def jit(self, name: str) -> dict[str, Any]:
        labels = list(self.scale_set.labels)
        return generate_jit(self.gh, self.token, self.org, name, self.group.id, labels)

    def queue_job(self) -> int:
        response = requests.post(
            f"{self.gh.url}/_emulator/jobs",
            json={
                "org": self.org,
                "repository": f"{self.org}/site",
                "labels": ["self-hosted", "linux", self.team.name],
                "sender": "alice",
            },
            timeout=5,
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        response = requests.get(
            f"{self.gh.api_url}/repos/{self.org}/site/actions/jobs/{job_id}",
            headers={"Authorization": f"token {self.token}"},
            timeout=5,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def runner(self, runner_id: int) -> dict[str, Any]:
        response = requests.get(
            f"{self.gh.api_url}/orgs/{self.org}/actions/runners/{runner_id}",
            headers={"Authorization": f"token {self.token}"},
            timeout=5,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def create_runner_pod(
        self, name: str, jit: dict[str, Any] | None, *, instance: str = "cloud"
    ) -> None:
        if jit is not None:
            self.core.create_namespaced_secret(
                self.namespace, jit_secret(name, self.namespace, jit["encoded_jit_config"])
            )
        runner_id = jit["runner"]["id"] if jit else None
        self.core.create_namespaced_pod(
            self.namespace,
            runner_pod(name, self.scale_set, self.spec, instance=instance, runner_id=runner_id),
        )

    def phase(self, name: str) -> str:
        return str(self.core.read_namespaced_pod(name, self.namespace).status.phase)

    def exit_code(self, name: str) -> int:
        found = self.core.read_namespaced_pod(name, self.namespace)
        return int(found.status.container_statuses[0].state.terminated.exit_code)


def test_runner_events_are_a_long_poll_of_what_runners_did(github_cloud: GitHubEmulator) -> None:
    org = f"acme-{uuid.uuid4().hex[:6]}"
    token = installation_token(github_cloud, 77, org)
    group = github_cloud.world.add_runner_group(org, "web")
    events_url = f"{github_cloud.url}/_emulator/runners/events"
    start = len(github_cloud.world.events)
    jit = generate_jit(github_cloud, token, org, "web-1", group.id, ["self-hosted", "web"])
    job = github_cloud.world.queue_job(org, f"{org}/site", ["self-hosted", "web"], "alice")

    polled: list[Any] = []
    poll = threading.Thread(
        target=lambda: polled.extend(
            requests.get(events_url, params={"after": start, "wait": 30}, timeout=40).json()
        )
    )
    poll.start()  # waits in the emulator until the runner does something
    started = requests.post(
        f"{github_cloud.url}/_emulator/runners/start",
        json={"encoded_jit_config": jit["encoded_jit_config"]},
        timeout=5,
    )
    assert started.status_code == 200
    poll.join()
    assert polled and polled[0]["event"] == "online"

    done = requests.post(
        f"{github_cloud.url}/_emulator/jobs/{job.id}/complete",
        json={"conclusion": "failure"},
        timeout=5,
    )
    assert done.status_code == 200
    events = requests.get(events_url, params={"after": start}, timeout=5).json()
    mine = [e for e in events if e["runner_id"] == jit["runner"]["id"]]
    assert [(e["event"], e["job_id"], e["conclusion"]) for e in mine] == [
        ("online", None, None),
        ("job_started", job.id, None),
        ("job_completed", job.id, "failure"),
    ]
    assert [e["seq"] for e in events] == list(range(start + 1, start + 1 + len(events)))
    assert {e["name"] for e in mine} == {"web-1"} and {e["org"] for e in mine} == {org}


@pytest.mark.parametrize(
    ("conclusion", "phase", "code"), [("success", "Succeeded", 0), ("failure", "Failed", 1)]
)
def test_a_runner_pod_takes_its_job_and_ends_with_the_jobs_conclusion(
    kube_nodes: ControlPlane,
    github_cloud: GitHubEmulator,
    runner_standin: RunnerStandIn,
    conclusion: str,
    phase: str,
    code: int,
) -> None:
    setup = Setup(kube_nodes, github_cloud)
    name = f"{setup.scale_set.name}-{setup.suffix}"
    jit = setup.jit(name)
    runner_id = jit["runner"]["id"]
    job_id = setup.queue_job()
    assert setup.runner(runner_id)["status"] == "offline"

    setup.create_runner_pod(name, jit)
    job = wait_for(
        lambda: (found := setup.job(job_id))["status"] == "in_progress" and found,
        60,
        "the job taken by the pod's runner",
    )
    assert job["runner_id"] == runner_id and job["runner_name"] == name
    runner = setup.runner(runner_id)
    assert (runner["status"], runner["busy"]) == ("online", True)
    assert setup.phase(name) == "Running"  # the runner works until its job is done

    done = requests.post(
        f"{github_cloud.url}/_emulator/jobs/{job_id}/complete",
        json={"conclusion": conclusion},
        timeout=5,
    )
    assert done.status_code == 200
    wait_for(lambda: setup.phase(name) == phase, 60, f"pod {phase}")
    assert setup.exit_code(name) == code


def test_retries_carry_a_pod_through_a_missing_secret_and_a_down_emulator(
    kube_nodes: ControlPlane,
) -> None:
    port = free_port()  # nothing listens there yet: the instance's emulator is down
    standin = RunnerStandIn(
        kube_nodes.kubeconfig,
        {"lab": f"http://127.0.0.1:{port}"},
        attempts=8,
        retry_delay=0.5,
        poll_wait=1.0,
    ).start()
    emulator: GitHubEmulator | None = None
    try:
        suffix = uuid.uuid4().hex[:6]
        spec = small_spec(suffix)
        team, scale_set = spec.teams[0], spec.scale_sets()[0]
        core = client.CoreV1Api(kube_nodes.api_client())
        pool = spec.pool(scale_set.pool)
        core.create_node(pool_node(spec, pool, f"{pool.name}-node"))
        namespace = f"runners-{team.name}"
        core.create_namespace({"metadata": {"name": namespace}})
        name = f"{scale_set.name}-{suffix}"
        # Neither the Secret nor the runner exists yet (so no runner-id annotation either).
        core.create_namespaced_pod(
            namespace, runner_pod(name, scale_set, spec, instance="lab", runner_id=None)
        )
        wait_for(lambda: standin.stats["retried"] >= 1, 60, "a failed first attempt")

        emulator = GitHubEmulator(port=port).start()
        token = installation_token(emulator, 5, team.org)
        group = emulator.world.add_runner_group(team.org, team.name)
        jit = generate_jit(emulator, token, team.org, name, group.id, list(scale_set.labels))
        core.create_namespaced_secret(
            namespace, jit_secret(name, namespace, jit["encoded_jit_config"])
        )
        world = emulator.world
        runner_id = jit["runner"]["id"]
        wait_for(lambda: world.runners[runner_id].status == "online", 60, "runner online")
        job = world.queue_job(team.org, f"{team.org}/site", ["self-hosted", "linux"], "bob")
        assert job.status == "in_progress" and job.runner is not None
        world.complete_job(job.id, "success")
        wait_for(
            lambda: core.read_namespaced_pod(name, namespace).status.phase == "Succeeded",
            60,
            "pod Succeeded",
        )
        assert standin.stats["gave_up"] == 0
    finally:
        standin.stop()
        if emulator is not None:
            emulator.stop()


def test_a_refused_jit_config_is_given_up_on_and_the_next_pod_is_served(
    kube_nodes: ControlPlane, github_cloud: GitHubEmulator, runner_standin: RunnerStandIn
) -> None:
    setup = Setup(kube_nodes, github_cloud)
    gave_up = runner_standin.stats["gave_up"]
    refused = f"{setup.scale_set.name}-refused-{setup.suffix}"
    forged = {"encoded_jit_config": "bm90IGEgSklUIGNvbmZpZw==", "runner": {"id": 1}}
    setup.create_runner_pod(refused, forged)  # the emulator answers 422 to every attempt
    wait_for(lambda: runner_standin.stats["gave_up"] > gave_up, 60, "the stand-in giving up")
    assert setup.phase(refused) == "Running"  # left alone: no job of its own will end it

    fresh = f"{setup.scale_set.name}-{setup.suffix}"
    fresh_jit = setup.jit(fresh)
    setup.create_runner_pod(fresh, fresh_jit)
    wait_for(
        lambda: setup.runner(fresh_jit["runner"]["id"])["status"] == "online", 60, "runner online"
    )


def test_the_stand_in_runs_as_its_own_process(
    kube_nodes: ControlPlane, github_cloud: GitHubEmulator, tmp_path: Path
) -> None:
    process = ManagedProcess(
        "runner-standin",
        [
            sys.executable,
            "-m",
            "localenv.runner_standin",
            f"--kubeconfig={kube_nodes.kubeconfig}",
            f"--github=elsewhere={github_cloud.url}",
        ],
        tmp_path,
    ).start()
    try:
        process.wait_until(
            lambda: "watching runner pods" in process.log_path.read_text(), 60, "watching"
        )
        setup = Setup(kube_nodes, github_cloud)
        name = f"{setup.scale_set.name}-{setup.suffix}"
        jit = setup.jit(name)
        setup.create_runner_pod(name, jit, instance="elsewhere")
        job_id = setup.queue_job()
        wait_for(lambda: setup.job(job_id)["status"] == "in_progress", 60, "job taken")
        github_cloud.world.complete_job(job_id, "cancelled")
        wait_for(lambda: setup.phase(name) == "Failed", 60, "pod Failed")
        assert setup.exit_code(name) == 1
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert "Traceback" not in log
    assert f"runner {jit['runner']['id']} online" in log


SCALE = 1000  # runner pods turning Running at once, as a busy morning's burst would


def _phases(setup: Setup) -> Counter[str]:
    # Raw JSON: the client's models would cost more than the stand-in being watched.
    listed = json.loads(
        setup.core.list_namespaced_pod(setup.namespace, _preload_content=False).data
    )
    return Counter(item["status"].get("phase") for item in listed["items"])


@pytest.fixture
def burst_github() -> Iterator[GitHubEmulator]:
    """An emulator of its own: a thousand jobs stay out of the session's shared one."""
    emulator = GitHubEmulator().start()
    yield emulator
    emulator.stop()


def test_a_thousand_runner_pods_are_served_at_once(
    kube_nodes: ControlPlane, burst_github: GitHubEmulator
) -> None:
    standin = RunnerStandIn(kube_nodes.kubeconfig, {"burst": burst_github.url}).start()
    setup = Setup(kube_nodes, burst_github)
    world = burst_github.world
    node = f"burst-{setup.suffix}"
    names = [f"burst-{i}-{setup.suffix}" for i in range(SCALE)]
    labels = ["self-hosted", "burst"]
    jits = {
        name: world.generate_jit(
            setup.org, {"name": name, "runner_group_id": setup.group.id, "labels": labels}
        )
        for name in names
    }

    def create(name: str) -> None:
        jit = jits[name]
        setup.core.create_namespaced_secret(
            setup.namespace, jit_secret(name, setup.namespace, jit["encoded_jit_config"])
        )
        manifest = runner_pod(
            name, setup.scale_set, setup.spec, instance="burst", runner_id=jit["runner"]["id"]
        )
        # Bound to a node that does not exist yet: the pods wait, and all turn Running
        # together once KWOK gets the node. The scheduler is not what this measures.
        manifest["spec"].update(nodeName=node, nodeSelector={}, tolerations=[])
        setup.core.create_namespaced_pod(setup.namespace, manifest)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, names))
        assert _phases(setup) == {"Pending": SCALE}
        setup.core.create_node(
            kwok_node(node, cpu="4000", memory="16000Gi", ephemeral_storage="50000Gi", pods=SCALE)
        )
        created = time.monotonic()
        wait_for(lambda: _phases(setup)["Running"] == SCALE, 300, "all pods Running", 0.5)
        running = time.monotonic()
        ids = [jit["runner"]["id"] for jit in jits.values()]
        wait_for(
            lambda: all(world.runners[i].status == "online" for i in ids), 300, "all online", 0.1
        )
        online = time.monotonic()
        jobs = [world.queue_job(setup.org, f"{setup.org}/site", labels, "alice") for _ in names]
        assert {job.status for job in jobs} == {"in_progress"}
        for job in jobs:
            world.complete_job(job.id, "success")
        completed = time.monotonic()
        wait_for(lambda: standin.stats["finished"] == SCALE, 300, "all pods annotated", 0.1)
        annotated = time.monotonic()
        wait_for(lambda: _phases(setup)["Succeeded"] == SCALE, 300, "all pods Succeeded", 0.5)
        assert standin.stats["online"] == SCALE and standin.stats["gave_up"] == 0
        print(  # for the record; no timed assertion on a shared machine
            f"\n{SCALE} runner pods: all Running {running - created:.1f}s after their node "
            f"came, all runners online {online - running:.1f}s after that; all pods "
            f"annotated {annotated - completed:.1f}s after their jobs completed and "
            f"Succeeded {time.monotonic() - annotated:.1f}s after that"
        )
    finally:
        standin.stop()
        # Later tests share this cluster: leave it as light as it was.
        setup.core.delete_collection_namespaced_pod(setup.namespace, grace_period_seconds=0)
        setup.core.delete_collection_namespaced_secret(setup.namespace)
        setup.core.delete_node(node)
