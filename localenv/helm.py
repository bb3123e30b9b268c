"""helm (v3) and the charts the platform installs, at exactly the versions the components
pin, built and taken from Go modules by ``localenv/build-helm.sh`` into the cache outside
the repository (docs/helm.md).

``python -m localenv.helm prepare`` builds what is missing (``make helm``);
``python -m localenv.helm cache-key`` prints a key of every version the local environment
builds, for CI caches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localenv.process import LocalEnvError

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "localenv" / "build-helm.sh"
# Every script whose pinned versions decide what the cache holds.
BUILD_SCRIPTS = ("build-k8s.sh", "build-helm.sh", "build-actionlint.sh")

CHART_NAMES = ("cilium", "karpenter", "nvidia-device-plugin")

# Maps the charts pass through to Kubernetes objects as they are (toYaml): any key is theirs
# to hold, and the API server's strict dry run judges the rendered object.
FREE_FORM_KEYS = frozenset(
    {
        "annotations",
        "labels",
        "nodeSelector",
        "podAnnotations",
        "podLabels",
        "extraArgs",
        "resources",
        "affinity",
        "securityContext",
        "podSecurityContext",
    }
)


def pinned_versions() -> dict[str, str]:
    """The chart versions the components pin: the stack defaults and the device plugin's."""
    from components.node_pools import NVIDIA_PLUGIN_VERSION
    from controller.model import ClusterSettings

    fields = ClusterSettings.model_fields
    return {
        "cilium": str(fields["cilium_version"].default),
        "karpenter": str(fields["karpenter_version"].default),
        "nvidia-device-plugin": NVIDIA_PLUGIN_VERSION,
    }


@dataclass(frozen=True)
class Chart:
    """One chart as the cache holds it: ``chart/`` and, for Cilium, ``crds/``."""

    name: str
    version: str
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / "chart"

    @property
    def metadata(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((self.path / "Chart.yaml").read_text())
        return loaded

    @property
    def defaults(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((self.path / "values.yaml").read_text()) or {}
        return loaded

    @property
    def schema(self) -> dict[str, Any] | None:
        path = self.path / "values.schema.json"
        if not path.exists():
            return None
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    @property
    def crds(self) -> list[Path]:
        """CRDs of kinds the chart's software registers at run time (Cilium's operator)."""
        return sorted((self.folder / "crds").glob("*.yaml"))

    @property
    def stamped_from(self) -> str | None:
        """What the module's Chart.yaml said when the build stamped the version (docs/helm.md)."""
        said = self.folder / "chart-yaml-said"
        return said.read_text().strip() if said.exists() else None


@dataclass(frozen=True)
class Helm:
    binary: Path
    charts: dict[str, Chart]

    def chart(self, name: str) -> Chart:
        return self.charts[name]

    def template(
        self,
        chart: Chart,
        release: str,
        namespace: str,
        values: Mapping[str, Any],
        *,
        kube_version: str,
    ) -> list[dict[str, Any]]:
        """``helm template`` with ``values`` (as JSON): every rendered object, in order."""
        with tempfile.TemporaryDirectory(prefix="localenv-helm-") as folder:
            values_file = Path(folder) / "values.json"
            values_file.write_text(json.dumps(values))
            result = subprocess.run(
                [
                    str(self.binary),
                    "template",
                    release,
                    str(chart.path),
                    "--namespace",
                    namespace,
                    "--kube-version",
                    kube_version,
                    "--values",
                    str(values_file),
                ],
                capture_output=True,
                text=True,
                check=False,
                # Nothing of the user's helm configuration or repositories is read.
                env={
                    "HOME": folder,
                    "HELM_CACHE_HOME": folder,
                    "HELM_CONFIG_HOME": folder,
                    "HELM_DATA_HOME": folder,
                    "PATH": "/usr/bin:/bin",
                },
            )
        if result.returncode != 0:
            raise LocalEnvError(f"helm template {chart.name} failed:\n{result.stderr[-4000:]}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def helm() -> Helm:
    """helm and the pinned charts, built or taken first if this machine has none (about
    a minute and a half cold, on 2 cores)."""
    versions = pinned_versions()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *(versions[name] for name in CHART_NAMES)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LocalEnvError(f"building helm or taking the charts failed:\n{result.stderr[-4000:]}")
    paths = dict(line.split("=", 1) for line in result.stdout.strip().splitlines() if "=" in line)
    return Helm(
        binary=Path(paths["helm"]),
        charts={name: Chart(name, versions[name], Path(paths[name])) for name in CHART_NAMES},
    )


# --- what a chart defines ---------------------------------------------------------------


def _schema_child(node: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if node is None:
        return None
    child = (node.get("properties") or {}).get(key)
    return child if isinstance(child, Mapping) else None


def undefined_paths(
    values: Mapping[str, Any],
    defaults: Mapping[str, Any],
    schema: Mapping[str, Any] | None = None,
    free_form: frozenset[str] = FREE_FORM_KEYS,
) -> list[str]:
    """Dotted paths in ``values`` that the chart does not define.

    A key is defined when the chart's ``values.yaml`` has it, or its ``values.schema.json``
    declares it (charts such as Cilium document optional keys only as comments). Below a key
    whose name is a free-form map (:data:`FREE_FORM_KEYS`), or whose default is an empty
    map, a list, a scalar or null (with no properties in the schema), whatever is set
    replaces or extends the default wholesale: nothing further is checked here (the schema
    and the API server's dry run judge it).
    """
    found: list[str] = []

    def walk(
        given: Mapping[str, Any],
        default: Any,
        schema_node: Mapping[str, Any] | None,
        path: tuple[str, ...],
    ) -> None:
        for key, value in given.items():
            here = (*path, str(key))
            in_defaults = isinstance(default, Mapping) and key in default
            child_schema = _schema_child(schema_node, key)
            if not in_defaults and child_schema is None:
                found.append(".".join(here))
                continue
            child_default = default.get(key) if in_defaults else None
            if key in free_form or not isinstance(value, Mapping):
                continue
            if isinstance(child_default, Mapping):
                if child_default:  # an empty map by default is free-form
                    walk(value, child_default, child_schema, here)
            elif child_schema is not None and child_schema.get("properties"):
                walk(value, None, child_schema, here)  # a map documented in the schema only

    walk(values, defaults, schema, ())
    return found


def nulls(values: Any, path: str = "") -> list[str]:
    """Paths holding None: the Pulumi SDK drops them before the engine sees them, so a
    value meant to delete a chart default must be written as an explicit value instead."""
    if values is None:
        return [path or "."]
    if isinstance(values, Mapping):
        return [p for k, v in values.items() for p in nulls(v, f"{path}.{k}".lstrip("."))]
    if isinstance(values, list):
        return [p for i, v in enumerate(values) for p in nulls(v, f"{path}[{i}]")]
    return []


# --- CI cache key -----------------------------------------------------------------------

_PIN = re.compile(r"^([A-Z_]*(?:VERSION|LAYOUT)[A-Z_]*)=(\S+)", re.MULTILINE)


def cache_key() -> str:
    """A short hash of every version the local environment builds or takes (the build
    scripts' pins, the chart pins and the Go version): a CI cache under this key holds
    exactly what ``make test`` would otherwise build."""
    parts = []
    for script in BUILD_SCRIPTS:
        text = (ROOT / "localenv" / script).read_text()
        parts += [f"{script}:{name}={value}" for name, value in _PIN.findall(text)]
    parts += [f"chart:{name}={version}" for name, version in sorted(pinned_versions().items())]
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=False)
    parts.append(f"go={go.stdout.strip() or 'none'}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.helm", description=__doc__)
    parser.add_argument("command", choices=["prepare", "cache-key", "versions"])
    args = parser.parse_args(argv)
    if args.command == "prepare":
        found = helm()
        print(found.binary)
        for chart in found.charts.values():
            print(f"{chart.name} {chart.version}: {chart.path}")
    elif args.command == "cache-key":
        print(cache_key())
    else:
        print(json.dumps(pinned_versions()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
