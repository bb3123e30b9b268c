"""The platform's Helm releases, rendered by the real charts at the pinned versions.

The values are the ones the Pulumi program hands the engine (the program run under mocks,
dev stack, both Cilium modes); the charts come from their Go modules at exactly the
versions the components pin (``localenv.helm``, docs/helm.md). Each release's values
validate against the chart's values.schema.json where it has one, set no path the chart
does not define, hold no null, and every object ``helm template`` renders passes a strict
server-side dry run on the real API server. The device plugin's DaemonSet is then created
for real: the real DaemonSet controller and scheduler put its pod on a KWOK node carrying
the GPU pool's labels and taints, and nowhere else.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client

from components import cilium, karpenter, node_pools
from controller.model import POOL_LABEL, PlatformSpec, load_spec
from localenv.dry_run import Rejected, submit
from localenv.helm import Chart, Helm, helm, nulls, pinned_versions, undefined_paths
from localenv.kube import ControlPlane, K8sBins
from localenv.kube_objects import pool_node
from localenv.process import wait_for
from localenv.pulumi_mocks import ROOT, Recorded, mock_config, run_program

RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
# Releases the program declares whose chart this test does not render, and why. The
# OpenEBS chart is served by no Go module at its pinned version (docs/helm.md).
NOT_RENDERED = {"localpv-provisioner": "no Go module serves the chart (docs/helm.md)"}
# Kinds a rendered object may have that the API server cannot judge here. Empty: Cilium's
# CRDs (which its operator registers at run time) are installed from its module, and the
# values render no object of any other kind the server lacks.
EXCLUDED_KINDS: dict[str, str] = {}


@dataclass(frozen=True)
class Release:
    """One Helm release as the program declares it, and its chart."""

    case: str
    recorded: Recorded
    chart: Chart

    @property
    def name(self) -> str:
        return str(self.recorded.inputs["name"])

    @property
    def namespace(self) -> str:
        return str(self.recorded.inputs["namespace"])

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.recorded.inputs["values"])


def _chart_name(recorded: Recorded) -> str:
    return str(recorded.inputs["chart"]).rsplit("/", 1)[-1]  # oci://…/karpenter too


def _program_releases(mode: str) -> list[Recorded]:
    config = mock_config(ROOT / "Pulumi.dev.yaml")
    cluster = json.loads(config["runner-platform:cluster"])
    cluster["cilium_mode"] = mode
    config["runner-platform:cluster"] = json.dumps(cluster)
    return run_program(config).of_type(RELEASE_TYPE)


@pytest.fixture(scope="module")
def charts() -> Helm:
    return helm()


@pytest.fixture(scope="module")
def program() -> dict[str, list[Recorded]]:
    """Every Helm release the program declares, per Cilium mode."""
    return {mode: _program_releases(mode) for mode in ("chaining", "eni")}


@pytest.fixture(scope="module")
def releases(charts: Helm, program: dict[str, list[Recorded]]) -> dict[str, Release]:
    found: dict[str, Release] = {}
    for mode, declared in program.items():
        for recorded in declared:
            name = _chart_name(recorded)
            if name in NOT_RENDERED:
                continue
            case = f"cilium-{mode}" if name == "cilium" else name
            if case in found:
                continue  # the same release in both runs: one case
            found[case] = Release(case, recorded, charts.chart(name))
    return found


@pytest.fixture(scope="module")
def spec() -> PlatformSpec:
    from tests.conftest import DEV_DOCUMENT

    return load_spec(copy.deepcopy(DEV_DOCUMENT))


CASES = ["cilium-chaining", "cilium-eni", "karpenter", "nvidia-device-plugin"]


def _render(charts: Helm, release: Release, spec: PlatformSpec) -> list[dict[str, Any]]:
    return charts.template(
        release.chart,
        release.name,
        release.namespace,
        release.values,
        kube_version=spec.cluster.kubernetes_version,
    )


@pytest.fixture(scope="module")
def rendered(
    charts: Helm, releases: dict[str, Release], spec: PlatformSpec
) -> dict[str, list[dict[str, Any]]]:
    return {case: _render(charts, release, spec) for case, release in releases.items()}


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


# --- the charts are the pinned ones ----------------------------------------------------


def test_the_program_declares_these_releases_at_the_chart_versions_rendered_here(
    charts: Helm, program: dict[str, list[Recorded]], releases: dict[str, Release]
) -> None:
    for declared in program.values():
        assert sorted(_chart_name(r) for r in declared) == sorted(
            ["cilium", "karpenter", "nvidia-device-plugin", *NOT_RENDERED]
        )
    assert sorted(releases) == sorted(CASES)
    pins = pinned_versions()
    for release in releases.values():
        chart = release.chart
        assert release.recorded.inputs["version"] == pins[chart.name] == chart.version
        metadata = chart.metadata
        assert (metadata["name"], str(metadata["version"])) == (chart.name, chart.version)
    # karpenter-provider-aws tags its release before its pipeline stamps the chart's version
    # (docs/helm.md): the module's Chart.yaml said the previous release; nothing else differs.
    assert charts.chart("karpenter").stamped_from == "1.14.1"
    assert charts.chart("cilium").stamped_from is None
    assert charts.chart("nvidia-device-plugin").stamped_from is None


@pytest.fixture(scope="module")
def built(spec: PlatformSpec) -> dict[str, dict[str, Any]]:
    """Each case's values straight from its builder, before the Pulumi SDK serialises them."""
    from tests.conftest import DEV_DOCUMENT

    document = copy.deepcopy(DEV_DOCUMENT)
    document["cluster"]["cilium_mode"] = "eni"
    return {
        "cilium-chaining": cilium.helm_values(spec.cluster),
        "cilium-eni": cilium.helm_values(load_spec(document).cluster),
        "karpenter": karpenter.helm_values(
            "runners-dev",
            "runners-dev",
            "arn:aws:iam::123456789012:role/KarpenterController-runners-dev",
        ),
        "nvidia-device-plugin": node_pools.nvidia_plugin_values(spec),
    }


def test_the_program_hands_the_engine_exactly_what_the_builders_produce(
    releases: dict[str, Release], built: dict[str, dict[str, Any]]
) -> None:
    """The wire form (numbers become floats) equals the builders' own values: nothing is
    lost on the way, so what is rendered here is what Helm gets."""
    for case, release in releases.items():
        wire = json.loads(json.dumps(release.values))
        assert wire == json.loads(json.dumps(built[case])), case


# --- values: no nulls, schema, defined paths --------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_the_builders_values_hold_no_null(built: dict[str, dict[str, Any]], case: str) -> None:
    """A null would delete a chart default, but it never reaches Helm (next test)."""
    assert nulls(built[case]) == []


def test_the_pulumi_sdk_drops_a_null_before_the_engine_sees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the device plugin's affinity is explicit: the old ``affinity: None`` never left
    the program, so Helm kept the chart's NFD affinity and the plugin ran nowhere (the
    last test shows where that DaemonSet goes)."""
    explicit = node_pools.nvidia_plugin_values
    monkeypatch.setattr(
        node_pools, "nvidia_plugin_values", lambda spec: {**explicit(spec), "affinity": None}
    )
    (declared,) = [
        r for r in _program_releases("chaining") if _chart_name(r) == "nvidia-device-plugin"
    ]
    assert "affinity" not in declared.inputs["values"]
    assert "tolerations" in declared.inputs["values"]


@pytest.mark.parametrize("case", CASES)
def test_values_validate_against_the_chart_schema(releases: dict[str, Release], case: str) -> None:
    release = releases[case]
    schema = release.chart.schema
    if schema is None:
        assert release.chart.name in ("karpenter", "nvidia-device-plugin")  # none shipped
        return
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(release.values)
    ]
    assert errors == []


@pytest.mark.parametrize("case", CASES)
def test_every_value_path_is_one_the_chart_defines(releases: dict[str, Release], case: str) -> None:
    release = releases[case]
    assert undefined_paths(release.values, release.chart.defaults, release.chart.schema) == []


def test_the_value_checks_can_fail(charts: Helm, releases: dict[str, Release]) -> None:
    cilium_chart = charts.chart("cilium")
    values = copy.deepcopy(releases["cilium-eni"].values)
    values["hubble"]["relay"]["enabeld"] = True  # a typo
    values["operator"]["replicas"] = "two"
    # What ENI mode used to set: read by the config map template, but defined neither in
    # values.yaml nor in the schema, and inert with masquerading off (docs/helm.md).
    values["egressMasqueradeInterfaces"] = "ens+"
    values["operator"]["nodeSelector"]["any-label"] = "free-form maps take new keys"
    assert undefined_paths(values, cilium_chart.defaults, cilium_chart.schema) == [
        "hubble.relay.enabeld",
        "egressMasqueradeInterfaces",
    ]
    assert cilium_chart.schema is not None
    errors = list(jsonschema.Draft7Validator(cilium_chart.schema).iter_errors(values))
    assert [list(e.absolute_path) for e in errors] == [["operator", "replicas"]]
    nvidia = charts.chart("nvidia-device-plugin")
    assert undefined_paths({"afinity": {}}, nvidia.defaults, nvidia.schema) == ["afinity"]
    assert nulls({"affinity": None, "tolerations": [{"key": None}]}) == [
        "affinity",
        "tolerations[0].key",
    ]


# --- what the render says ---------------------------------------------------------------


def test_cilium_renders_each_mode_as_the_code_means_it(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    chaining = _named(rendered["cilium-chaining"], "ConfigMap", "cilium-config")["data"]
    eni = _named(rendered["cilium-eni"], "ConfigMap", "cilium-config")["data"]
    for config in (chaining, eni):
        assert config["enable-wireguard"] == "true"
        assert config["routing-mode"] == "native"
        assert config["enable-hubble"] == "true"
        assert config["enable-ipv4-masquerade"] == "false"
        assert "egress-masquerade-interfaces" not in config
    assert chaining["cni-chaining-mode"] == "aws-cni"
    assert chaining["enable-endpoint-routes"] == "true"
    assert eni["ipam"] == "eni"
    assert eni["enable-endpoint-routes"] == "true"  # the chart's ENI default
    assert "cni-chaining-mode" not in eni or eni["cni-chaining-mode"] == "none"


def test_every_deployment_the_charts_render_stays_on_system_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The warm pool is untainted: a Deployment pod there would take a runner's pod slot."""
    deployments = {
        (case, o["metadata"]["name"]): o["spec"]["template"]["spec"]
        for case, objects in rendered.items()
        for o in objects
        if o["kind"] == "Deployment"
    }
    assert {name for _, name in deployments} == {
        "cilium-operator",
        "hubble-relay",
        "hubble-ui",
        "karpenter",
    }
    for key, pod in deployments.items():
        assert pod["nodeSelector"]["runner-platform.io/system"] == "true", key


def test_the_daemonsets_a_pool_counts_are_the_ones_the_charts_render(
    rendered: dict[str, list[dict[str, Any]]], spec: PlatformSpec
) -> None:
    """kubelet.maxPods counts Cilium's and the device plugin's DaemonSets by name."""
    cilium_sets = {
        o["metadata"]["name"] for o in rendered["cilium-eni"] if o["kind"] == "DaemonSet"
    }
    assert cilium_sets == {"cilium", "cilium-envoy"}
    assert cilium_sets <= set(node_pools.daemonset_pods(spec, spec.pool("warm")))
    nvidia = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in rendered["nvidia-device-plugin"]
        if o["kind"] == "DaemonSet"
    }
    assert set(nvidia) == {
        node_pools.NVIDIA_PLUGIN_CHART,
        "nvidia-device-plugin-mps-control-daemon",
    }
    assert node_pools.NVIDIA_PLUGIN_CHART in node_pools.daemonset_pods(spec, spec.pool("gpu"))
    # MPS is opt-in per node (a label no node here gets): that DaemonSet runs nowhere.
    assert nvidia["nvidia-device-plugin-mps-control-daemon"]["nodeSelector"] == {
        "nvidia.com/mps.capable": "true"
    }
    plugin = nvidia[node_pools.NVIDIA_PLUGIN_CHART]
    assert plugin["affinity"] == node_pools.nvidia_plugin_affinity(spec)
    assert plugin["tolerations"] == node_pools.nvidia_plugin_values(spec)["tolerations"]


# --- strict server-side dry run ---------------------------------------------------------


@pytest.fixture(scope="module")
def cilium_crds(kube_api: ControlPlane, charts: Helm) -> list[str]:
    """Cilium's CRDs at the pinned version, created as its operator registers them."""
    api = kube_api.api_client()
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in charts.chart("cilium").crds:
        crd = yaml.safe_load(path.read_text())
        try:
            extensions.create_custom_resource_definition(crd)
        except client.ApiException as error:
            if error.status != 409:
                raise
        names.append(crd["metadata"]["name"])

    def established() -> bool:
        for name in names:
            conditions = extensions.read_custom_resource_definition(name).status.conditions
            if not any(c.type == "Established" and c.status == "True" for c in conditions or []):
                return False
        return True

    wait_for(established, 30, "Cilium CRDs Established")
    return names


def _served(api: Any, manifest: dict[str, Any]) -> bool:
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        DynamicClient(api).resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    except ResourceNotFoundError:
        return False
    return True


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_passes_a_strict_server_side_dry_run(
    kube_api: ControlPlane,
    cilium_crds: list[str],
    rendered: dict[str, list[dict[str, Any]]],
    case: str,
) -> None:
    """Namespaces are created for real (objects in them need them); the rest is dry run."""
    api = kube_api.api_client()
    objects = rendered[case]
    assert objects
    accepted = []
    for manifest in sorted(objects, key=lambda o: o["kind"] != "Namespace"):
        if manifest["kind"] in EXCLUDED_KINDS:
            continue
        assert _served(api, manifest), f"no CRD for {manifest['apiVersion']} {manifest['kind']}"
        try:
            submit(api, manifest, dry_run=manifest["kind"] != "Namespace")
        except Rejected as error:
            if not (manifest["kind"] == "Namespace" and error.status == 409):
                raise
        accepted.append(manifest["kind"])
    assert len(accepted) == len(objects)


def test_a_misspelt_rendered_field_is_rejected(
    kube_api: ControlPlane, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The dry run above can fail: a field the API does not know is refused."""
    daemonset = copy.deepcopy(
        _named(rendered["nvidia-device-plugin"], "DaemonSet", node_pools.NVIDIA_PLUGIN_CHART)
    )
    daemonset["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(Rejected, match=r'unknown field "spec.template.spec.tolerationz"'):
        submit(kube_api.api_client(), daemonset)


def test_the_builders_cilium_objects_pass_against_the_pinned_crds(
    kube_api: ControlPlane, cilium_crds: list[str], spec: PlatformSpec
) -> None:
    """The builders' own cilium.io objects (skipped by test_iac_fidelity for want of CRDs)
    are valid CiliumNetworkPolicies of the version the chart installs."""
    from components import container_manifests

    assert "ciliumnetworkpolicies.cilium.io" in cilium_crds
    found = [
        manifest
        for team in spec.teams
        for manifest in container_manifests.team_objects(spec, team)
        if manifest["apiVersion"].startswith("cilium.io/")
    ]
    assert found
    api = kube_api.api_client()
    namespaces = {m["metadata"]["namespace"] for m in found}
    for namespace in namespaces:
        try:
            submit(
                api,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                dry_run=False,
            )
        except Rejected as error:
            if error.status != 409:
                raise
    for manifest in found:
        submit(api, manifest)


# --- the device plugin lands on GPU pool nodes ------------------------------------------


@pytest.fixture(scope="module")
def plane(bins: K8sBins) -> Iterator[ControlPlane]:
    """Its own cluster: the DaemonSet controller runs in the controller-manager."""
    control = ControlPlane(bins).start(scheduler=True, kwok=True, controller_manager=True)
    yield control
    control.stop()


def _daemonset_status(apps: Any, name: str) -> Any:
    return apps.read_namespaced_daemon_set_status(name, "kube-system").status


def test_the_device_plugin_pod_lands_on_the_gpu_pool_node_and_nowhere_else(
    plane: ControlPlane,
    charts: Helm,
    releases: dict[str, Release],
    spec: PlatformSpec,
) -> None:
    api = plane.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    gpu_node = pool_node(spec, spec.pool("gpu"), f"gpu-{suffix}")
    # Karpenter's AWS provider labels a node with each single-valued requirement of its
    # instance type (cloudprovider.go, instanceToNodeClaim): a g6's GPU maker among them.
    gpu_node["metadata"]["labels"][node_pools.NVIDIA_GPU_MANUFACTURER_LABEL] = "nvidia"
    nodes = [
        gpu_node,
        pool_node(spec, spec.pool("warm"), f"warm-{suffix}"),  # untainted
        pool_node(spec, spec.pool("highmem"), f"highmem-{suffix}"),
    ]
    for node in nodes:
        core.create_node(node)
    assert gpu_node["metadata"]["labels"][POOL_LABEL] == "gpu"
    assert {t["key"] for t in gpu_node["spec"]["taints"]} == {
        "runner-platform.io/pool",
        "nvidia.com/gpu",
    }

    release = releases["nvidia-device-plugin"]
    for manifest in _render(charts, release, spec):
        submit(api, manifest, dry_run=False)

    def placed() -> list[str] | None:
        pods = core.list_namespaced_pod(
            "kube-system", label_selector="app.kubernetes.io/name=nvidia-device-plugin"
        ).items
        running = [p.spec.node_name for p in pods if p.status.phase == "Running"]
        return running or None

    assert wait_for(placed, 60, "device plugin pod Running") == [gpu_node["metadata"]["name"]]

    def counts() -> tuple[int, int] | None:
        status = _daemonset_status(apps, node_pools.NVIDIA_PLUGIN_CHART)
        found = (status.desired_number_scheduled, status.number_ready)
        return found if found == (1, 1) else None

    # The DaemonSet controller counts it too (its status lags the pod by a moment).
    assert wait_for(counts, 30, "device plugin DaemonSet status 1 desired, 1 ready")
    mps = _daemonset_status(apps, "nvidia-device-plugin-mps-control-daemon")
    assert mps.desired_number_scheduled == 0

    # What the chart does with its own affinity (what a null dropped on the way would
    # leave): it waits for Node Feature Discovery labels this platform never sets.
    default = copy.deepcopy(release.values)
    del default["affinity"]
    for manifest in charts.template(
        release.chart,
        "nfd-default",
        "kube-system",
        default,
        kube_version=spec.cluster.kubernetes_version,
    ):
        if manifest["kind"] == "DaemonSet":
            submit(api, manifest, dry_run=False)
    names = {
        d.metadata.name
        for d in apps.list_namespaced_daemon_set("kube-system").items
        if d.metadata.name.startswith("nfd-default")
    }
    plugin_default = next(n for n in names if "mps" not in n)
    wait_for(
        lambda: _daemonset_status(apps, plugin_default).observed_generation,
        60,
        "the DaemonSet controller saw the default-affinity DaemonSet",
    )
    assert _daemonset_status(apps, plugin_default).desired_number_scheduled == 0
