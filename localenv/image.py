"""The controller image, built and run here as a cluster would run it, with no registry.

No image registry is reachable from these machines, so the Dockerfile's two bases come
from Debian packages instead (``localenv/build-image-base.sh``: debootstrap, cached):
imported into podman's storage as they are for the build stage, and without any shell for
the runtime stage, as distroless has none. The dependency wheels are downloaded once per
pin set into the cache (:func:`wheelhouse`) and mounted into the build, which runs with
``--network none``: what the image holds came from the wheelhouse and the build context.

Containers run the way :func:`pod_run_args` reads them off a Deployment's pod template:
command, args, env, user and groups, read-only root, dropped capabilities, ConfigMap,
Secret and emptyDir mounts. A field it does not know how to honour is an error, so a
manifest that grows one fails the image test rather than being run differently.

Podman runs with ``--runtime runc --cgroup-manager=cgroupfs`` and a ``containers.conf``
holding ``default_ulimits = []``: crun and the default ulimits are refused here (hybrid
cgroups; setrlimit is not allowed).

``python -m localenv.image prepare`` makes the bases and the wheelhouse (``make
image-base``); ``python -m localenv.image build`` builds the image (``make image``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localenv.process import LocalEnvError, ManagedProcess
from localenv.workdir import cache_root

ROOT = Path(__file__).resolve().parent.parent
BASE_SCRIPT = Path(__file__).with_name("build-image-base.sh")
IMAGE = "localhost/runner-platform/controller"
BUILD_BASE = "localhost/runner-platform/base-build"
RUNTIME_BASE = "localhost/runner-platform/base-runtime"
WHEELHOUSE_MOUNT = "/wheelhouse"
# Every name a shell answers to in Debian (merged /usr: /bin is /usr/bin).
SHELLS = ("sh", "dash", "bash", "rbash")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PODMAN_GLOBAL = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
PodSpec = Mapping[str, Any]


def containers_conf() -> Path:
    """The ``containers.conf`` podman needs here (``CONTAINERS_CONF``)."""
    path = cache_root() / "containers.conf"
    text = "[containers]\n# setrlimit is refused on these machines\ndefault_ulimits = []\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman_result(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``podman`` with this machine's runtime flags and configuration."""
    if shutil.which("podman") is None:
        raise LocalEnvError("podman is not installed: run `make image-deps`")
    return subprocess.run(
        ["podman", *PODMAN_GLOBAL, *args],
        capture_output=True,
        text=True,
        env=podman_env(),
        timeout=timeout,
        check=False,
    )


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    """``podman``'s stdout; unless ``check`` is off, raise with its stderr when it fails."""
    result = podman_result(*args, timeout=timeout)
    if check and result.returncode != 0:
        raise LocalEnvError(
            f"podman {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout


def base_rootfs() -> Path:
    """The cached Debian rootfs, made first if this machine has none (about a minute)."""
    result = subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalEnvError(f"building the image base failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["podman", *PODMAN_GLOBAL, "image", "exists", name], env=podman_env(), check=False
        ).returncode
        == 0
    )


def _import(rootfs: Path, name: str, exclude: Sequence[str] = ()) -> None:
    """``tar`` the rootfs into ``podman import`` (no registry, no intermediate file)."""
    excludes = [f"--exclude=./{path}" for path in exclude]
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", *excludes, "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    try:
        result = subprocess.run(
            ["podman", *PODMAN_GLOBAL, "import", "--change", f"ENV PATH={DEFAULT_PATH}", "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=podman_env(),
            check=False,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
    if result.returncode != 0 or tar.returncode != 0:
        raise LocalEnvError(f"podman import {name} failed:\n{result.stderr[-4000:]}")


@dataclass(frozen=True)
class Bases:
    build: str
    runtime: str


def base_images() -> Bases:
    """The build and runtime bases in podman's storage, tagged by the rootfs they hold."""
    rootfs = base_rootfs()
    stamp = (rootfs.parent / ".complete").read_text() + rootfs.parent.name
    tag = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    bases = Bases(f"{BUILD_BASE}:{tag}", f"{RUNTIME_BASE}:{tag}")
    if not _image_exists(bases.build):
        _import(rootfs, bases.build)
    if not _image_exists(bases.runtime):
        shells = [f"{prefix}bin/{shell}" for prefix in ("", "usr/") for shell in SHELLS]
        _import(rootfs, bases.runtime, exclude=shells)
    return bases


def _pyproject(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def project_version(root: Path = ROOT) -> str:
    """``[project] version``: the one place the version is written."""
    return str(_pyproject(root)["project"]["version"])


def runtime_requirements(root: Path = ROOT) -> list[str]:
    """What installing the wheel needs: its dependencies, plus the build backend."""
    document = _pyproject(root)
    return [*document["project"]["dependencies"], *document["build-system"]["requires"]]


def wheelhouse(root: Path = ROOT, *, for_image: bool = False) -> Path:
    """Binary wheels of every runtime dependency (and setuptools), pinned by
    ``constraints.txt``, downloaded once per pin set into the cache. Installs from it run
    with ``--no-index``: the virtualenv test and the image build reach no index.

    Environment markers are evaluated by the interpreter that downloads (pip's
    ``--python-version`` does not change them): redis needs async-timeout below Python
    3.11.3, which Debian's 3.11.2 is and this machine's Python may not be. So the image's
    own python3 downloads too (``for_image``), in a container of the build base, into the
    same folder."""
    requirements = runtime_requirements(root)
    key_text = json.dumps(
        [
            requirements,
            (root / "constraints.txt").read_text(),
            sys.implementation.cache_tag,
            platform.machine(),
        ]
    )
    dest = cache_root() / f"wheelhouse-{hashlib.sha256(key_text.encode()).hexdigest()[:12]}"
    dest.mkdir(parents=True, exist_ok=True)
    download = ["download", "--quiet", "--only-binary=:all:", "--constraint"]
    if not (dest / ".host-complete").exists():
        # An interrupted download leaves no stamp; pip keeps the files already there.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                *download,
                str(root / "constraints.txt"),
                "--dest",
                str(dest),
                *requirements,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalEnvError(f"downloading the runtime wheels failed:\n{result.stderr[-4000:]}")
        (dest / ".host-complete").write_text("\n".join(requirements) + "\n")
    if not for_image:
        return dest
    bases = base_images()
    stamp = dest / f".image-complete-{bases.build.rsplit(':', 1)[1]}"
    if stamp.exists():
        return dest
    work = dest / ".image-request"
    work.mkdir(exist_ok=True)
    (work / "requirements.txt").write_text("\n".join(requirements) + "\n")
    shutil.copy(root / "constraints.txt", work / "constraints.txt")
    # The host's CA bundle: this machine's TLS to PyPI may rely on a CA the base lacks.
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    cert_args = ["--volume", f"{cert}:/host-ca.crt:ro", "--env", "PIP_CERT=/host-ca.crt"]
    podman(
        "run",
        "--rm",
        "--network=host",
        *(cert_args if Path(cert).is_file() else []),
        "--volume",
        f"{dest}:{WHEELHOUSE_MOUNT}",
        bases.build,
        "sh",
        "-c",
        f"python3 -m venv /tmp/venv && /tmp/venv/bin/pip {' '.join(download)} "
        f"{WHEELHOUSE_MOUNT}/.image-request/constraints.txt --dest {WHEELHOUSE_MOUNT} "
        f"--disable-pip-version-check "
        f"--requirement {WHEELHOUSE_MOUNT}/.image-request/requirements.txt",
        timeout=600,
    )
    stamp.write_text("\n".join(requirements) + "\n")
    return dest


def _revision(root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_image(
    tag: str | None = None, root: Path = ROOT, *, target: str | None = None, timeout: float = 1200.0
) -> str:
    """Build the Dockerfile offline on the Debian bases (up to stage ``target``, or the
    whole image); returns the image's name."""
    bases = base_images()
    wheels = wheelhouse(root, for_image=True)
    version = project_version(root)
    name = tag or f"{IMAGE}:{version}"
    podman(
        "build",
        "--network",
        "none",
        "--layers",
        "--volume",
        f"{wheels}:{WHEELHOUSE_MOUNT}:ro",
        "--build-arg",
        f"BUILD_BASE={bases.build}",
        "--build-arg",
        f"RUNTIME_BASE={bases.runtime}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        f"PIP_FIND_LINKS={WHEELHOUSE_MOUNT}",
        "--build-arg",
        f"VERSION={version}",
        "--build-arg",
        f"REVISION={_revision(root)}",
        "--file",
        str(root / "Dockerfile"),
        *(["--target", target] if target else []),
        "--tag",
        name,
        str(root),
        timeout=timeout,
    )
    return name


def image_config(name: str) -> dict[str, Any]:
    """``podman image inspect``'s answer for one image."""
    inspected: list[dict[str, Any]] = json.loads(podman("image", "inspect", name))
    return inspected[0]


# --- running a container as the pod template says -------------------------------------


class UnsupportedField(LocalEnvError):
    """The pod template asks for something :func:`pod_run_args` cannot honour here."""


_POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "capabilities",
    "seccompProfile",
}
# What the kubelet or the scheduler does, with nothing to do for one container here.
_POD_IGNORED = {
    "serviceAccountName",
    "nodeSelector",
    "affinity",
    "topologySpreadConstraints",
    "containers",
    "volumes",
    "securityContext",
}
_CONTAINER_IGNORED = {"name", "image", "ports", "resources", "livenessProbe", "readinessProbe"}


def _unknown(what: str, keys: set[str], known: set[str]) -> None:
    extra = sorted(keys - known)
    if extra:
        raise UnsupportedField(f"{what}: {extra} not honoured by localenv.image.pod_run_args")


def _security_args(pod: PodSpec, container: Mapping[str, Any]) -> list[str]:
    pod_security = dict(pod.get("securityContext", {}))
    security = dict(container.get("securityContext", {}))
    _unknown("pod securityContext", set(pod_security), _POD_SECURITY)
    _unknown("container securityContext", set(security), _CONTAINER_SECURITY)
    for context in (pod_security, security):
        profile = context.get("seccompProfile", {"type": "RuntimeDefault"})
        if profile != {"type": "RuntimeDefault"}:  # podman's default profile is that
            raise UnsupportedField(f"seccompProfile {profile}")
    # The container context may not set these (_CONTAINER_SECURITY): the pod's decide.
    user = pod_security.get("runAsUser")
    group = pod_security.get("runAsGroup")
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot", False))
    if non_root and user is None:
        raise UnsupportedField("runAsNonRoot without a runAsUser: the image's USER decides")
    if non_root and user == 0:
        raise UnsupportedField("runAsNonRoot with runAsUser 0: the kubelet refuses to start it")
    # 0 is a user too (root): run as exactly what the manifest says, never the image's.
    args = (
        [f"--user={user}:{group}" if group is not None else f"--user={user}"]
        if user is not None
        else []
    )
    if "fsGroup" in pod_security:  # the kubelet adds it to every container's groups
        args.append(f"--group-add={pod_security['fsGroup']}")
    if security.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if security.get("readOnlyRootFilesystem"):
        # Only what the pod mounts is writable: no podman tmpfs on /tmp, /run, /var/tmp.
        args += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = dict(security.get("capabilities", {}))
    _unknown("capabilities", set(capabilities), {"drop", "add"})
    args += [f"--cap-drop={cap.lower()}" for cap in capabilities.get("drop", [])]
    args += [f"--cap-add={cap.lower()}" for cap in capabilities.get("add", [])]
    return args


def _mount_args(
    pod: PodSpec, container: Mapping[str, Any], sources: Mapping[str, Path]
) -> list[str]:
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        _unknown("volumeMount", set(mount), {"name", "mountPath", "readOnly"})
        volume = volumes[mount["name"]]
        kinds = set(volume) - {"name"}
        target = mount["mountPath"]
        if kinds == {"emptyDir"}:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").removesuffix("i").lower()
            args.append(f"--mount=type=tmpfs,destination={target},tmpfs-size={size}")
        elif kinds <= {"configMap", "secret"} and len(kinds) == 1:
            # ConfigMap and Secret volumes are read-only whatever the mount says.
            source = sources.get(mount["name"])
            if source is None:
                raise UnsupportedField(f"no files given for volume {mount['name']!r}")
            args.append(f"--volume={source}:{target}:ro")
        else:
            raise UnsupportedField(f"volume {mount['name']!r} of kind {sorted(kinds)}")
    return args


def pod_run_args(
    pod: PodSpec,
    container_name: str,
    sources: Mapping[str, Path],
    *,
    env_overrides: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """``podman run`` options and the arguments after the image, for one container of
    ``pod`` (a pod template's spec). ``sources`` gives the host folder of each ConfigMap or
    Secret volume; ``env_overrides`` adds or replaces variables (a host-network run moves
    ports, as the kubelet would add KUBERNETES_SERVICE_HOST)."""
    _unknown("pod spec", set(pod), _POD_IGNORED)
    container = next(c for c in pod["containers"] if c["name"] == container_name)
    _unknown(
        "container",
        set(container),
        _CONTAINER_IGNORED | {"command", "args", "env", "securityContext", "volumeMounts"},
    )
    options = [*_security_args(pod, container), *_mount_args(pod, container, sources)]
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        _unknown("env", set(variable), {"name", "value"})
        env[variable["name"]] = variable["value"]
    env.update(env_overrides or {})
    options += [f"--env={name}={value}" for name, value in env.items()]
    if "command" in container:
        options.append(f"--entrypoint={json.dumps(container['command'])}")
    return options, list(container.get("args", []))


@dataclass
class Container:
    """One ``podman run`` in the foreground under :class:`ManagedProcess` (its own log,
    stopped with the session); the container is removed when it stops."""

    name: str
    image: str
    options: list[str]
    args: list[str]
    log_dir: Path
    process: ManagedProcess | None = field(default=None, init=False)

    def start(self) -> Container:
        argv = [
            "podman",
            *PODMAN_GLOBAL,
            "run",
            "--rm",
            f"--name={self.name}",
            "--network=host",
            *self.options,
            self.image,
            *self.args,
        ]
        self.process = ManagedProcess(self.name, argv, self.log_dir, env=podman_env()).start()
        return self

    def pid(self) -> int:
        """The container's first process, as the host sees it."""
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).strip())

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a program in the container (no shell: argv as given)."""
        return subprocess.run(
            ["podman", *PODMAN_GLOBAL, "exec", self.name, *argv],
            capture_output=True,
            text=True,
            env=podman_env(),
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10.0)
        podman("rm", "--force", "--ignore", self.name, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["prepare", "build"])
    args = parser.parse_args(argv)
    try:
        if args.action == "prepare":
            bases = base_images()
            print(f"{bases.build}\n{bases.runtime}\n{wheelhouse(for_image=True)}")
        else:
            print(build_image())
    except LocalEnvError as error:
        print(f"image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
