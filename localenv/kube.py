"""A real Kubernetes control plane on loopback: etcd and kube-apiserver as envtest runs
them, and on request kube-scheduler, kube-controller-manager, KWOK (fake nodes whose pods
become Running) and Karpenter's KWOK provider (real node autoscaling decisions).

The binaries come from ``localenv/build-k8s.sh`` (built from Go modules, cached outside
the repository); :func:`k8s_bins` builds them when they are missing. :meth:`ControlPlane.stop`
removes the work folder (certificates, etcd data, logs) unless ``keep``; see
:mod:`localenv.workdir`.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localenv import certs
from localenv.process import LocalEnvError, ManagedProcess, free_port
from localenv.workdir import keep_requested, new_workdir, release

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "localenv" / "build-k8s.sh"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FINISH_ANNOTATION = "localenv.runner-platform.io/finish"
PROJECT_STAGES = sorted((ROOT / "localenv" / "kwok").glob("*.yaml"))


@dataclass(frozen=True)
class K8sBins:
    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    @property
    def crds(self) -> list[Path]:
        return sorted((self.root / "crds").glob("*.yaml"))

    @property
    def kwok_stages(self) -> list[Path]:
        return sorted((self.root / "kwok-stages").glob("*.yaml"))


def k8s_bins() -> K8sBins:
    """The cached binaries, building them first if this machine has none (10-20 min)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise LocalEnvError(f"building the Kubernetes binaries failed:\n{result.stderr[-4000:]}")
    return K8sBins(Path(result.stdout.strip().splitlines()[-1]))


def _url_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, context=context, timeout=2) as response:
        return bool(response.status == 200)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver, plus whatever :meth:`start` is asked for."""

    bins: K8sBins
    workdir: Path = field(default_factory=lambda: new_workdir("k8s"))
    keep: bool = field(default_factory=keep_requested)
    processes: list[ManagedProcess] = field(default_factory=list)
    kubeconfig: Path = field(init=False)
    server: str = field(init=False)

    def start(
        self,
        *,
        scheduler: bool = False,
        controller_manager: bool = False,
        kwok: bool = False,
        karpenter: bool = False,
        instance_types: Path | None = None,
        timeout: float = 90.0,
    ) -> ControlPlane:
        """Start the API server and the components asked for; ``instance_types`` is the
        instance types file Karpenter's KWOK provider offers (its built-in list if None)."""
        try:
            self._start_apiserver(controller_manager, timeout)
            if scheduler or kwok or karpenter:
                self._start_component(
                    "kube-scheduler",
                    [
                        "--leader-elect=false",
                    ],
                    timeout,
                )
            if controller_manager:
                self._start_component(
                    "kube-controller-manager",
                    [
                        "--leader-elect=false",
                        f"--service-account-private-key-file={self.certs.sa_private}",
                        f"--root-ca-file={self.certs.ca_cert}",
                        "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle",
                    ],
                    timeout,
                )
            if kwok or karpenter:
                self._start_kwok(timeout)
            if karpenter:
                self._start_karpenter(timeout, instance_types)
        except BaseException as error:
            saved = self.stop(failed=True)
            if saved is not None:
                error.add_note(f"logs saved in {saved}")
            raise
        return self

    # -- etcd and the API server --

    def _start_apiserver(self, controller_manager: bool, timeout: float) -> None:
        log_dir = self.workdir / "logs"
        self.certs = certs.generate(self.workdir / "pki")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd = ManagedProcess(
            "etcd",
            [
                self.bins.bin("etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # a throwaway store: durability buys nothing here
                "--log-level=warn",
            ],
            log_dir,
        ).start()
        self.processes.append(etcd)
        etcd.wait_until(
            lambda: (
                json.loads(
                    urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2).read()
                )["health"]
                == "true"
            ),
            timeout,
            "healthy",
        )
        # TaintNodesByCondition taints every new node not-ready, and only the node
        # lifecycle controller lifts it; KWOK nodes report Ready themselves, so it stays off.
        # Without the controller-manager nobody creates "default" ServiceAccounts, which
        # the ServiceAccount admission plugin would demand of every pod.
        disabled = "TaintNodesByCondition" + ("" if controller_manager else ",ServiceAccount")
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                self.bins.bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={self.workdir / 'pki'}",
                f"--tls-cert-file={self.certs.serving_cert}",
                f"--tls-private-key-file={self.certs.serving_key}",
                f"--client-ca-file={self.certs.ca_cert}",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={self.certs.sa_public}",
                f"--service-account-signing-key-file={self.certs.sa_private}",
                "--allow-privileged=true",
                f"--disable-admission-plugins={disabled}",
                "--enable-priority-and-fairness=false",
            ],
            log_dir,
        ).start()
        self.processes.append(apiserver)
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = self._write_kubeconfig()
        context = ssl.create_default_context(cafile=str(self.certs.ca_cert))
        context.load_cert_chain(str(self.certs.admin_cert), str(self.certs.admin_key))
        apiserver.wait_until(lambda: _url_ok(f"{self.server}/readyz", context), timeout, "ready")

    def _write_kubeconfig(self) -> Path:
        user = {
            "client-certificate": str(self.certs.admin_cert),
            "client-key": str(self.certs.admin_key),
        }
        return self.write_kubeconfig(self.workdir / "kubeconfig", "admin", user)

    def write_kubeconfig(
        self, path: Path, user_name: str, user: dict[str, str], *, server: str | None = None
    ) -> Path:
        """A kubeconfig for ``user`` (credentials as kubeconfig spells them) at ``path``,
        0600; ``server`` replaces the API server (a plain-http one, e.g. a fault proxy,
        needs no CA)."""
        address = server or self.server
        cluster = {"server": address}
        if not address.startswith("http://"):
            cluster["certificate-authority"] = str(self.certs.ca_cert)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": user_name, "user": user}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user_name}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        seconds: int = 4 * 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """A token of ServiceAccount ``namespace/name`` (a TokenRequest, as the kubelet
        asks for one): a process or a test acts with exactly that account's RBAC."""
        from kubernetes import client  # local import: only tests that use the cluster pay

        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if audiences:
            spec["audiences"] = audiences
        core: Any = client.CoreV1Api(self.api_client())
        reply = core.create_namespaced_service_account_token(name, namespace, {"spec": spec})
        return str(reply.status.token)

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, server: str | None = None
    ) -> Path:
        """A kubeconfig at ``path`` holding a token of ServiceAccount ``namespace/name``."""
        token = self.service_account_token(namespace, name)
        return self.write_kubeconfig(path, name, {"token": token}, server=server)

    def _launch(
        self,
        name: str,
        argv: list[str],
        probe: str,
        timeout: float,
        *,
        env: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Start one component and wait until ``probe`` (a health URL) answers 200."""
        process = ManagedProcess(name, argv, self.workdir / "logs", env=env).start()
        self.processes.append(process)
        process.wait_until(lambda: _url_ok(probe, context), timeout, f"healthy at {probe}")

    def _start_component(self, name: str, flags: list[str], timeout: float) -> None:
        port = free_port()
        argv = [
            self.bins.bin(name),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            *flags,
        ]
        # Each serves /healthz with its own self-signed certificate.
        self._launch(
            name,
            argv,
            f"https://127.0.0.1:{port}/healthz",
            timeout,
            context=ssl._create_unverified_context(),
        )

    # -- KWOK and Karpenter --

    def _start_kwok(self, timeout: float) -> None:
        port = free_port()
        argv = [
            self.bins.bin("kwok"),
            f"--kubeconfig={self.kubeconfig}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{port}",
            "--node-ip=10.244.0.1",
            *(f"--config={stage}" for stage in [*self.bins.kwok_stages, *PROJECT_STAGES]),
        ]
        self._launch("kwok", argv, f"http://127.0.0.1:{port}/healthz", timeout)

    def _start_karpenter(self, timeout: float, instance_types: Path | None) -> None:
        self.apply_crds()
        health = free_port()
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "DISABLE_LEADER_ELECTION": "true",
            "SYSTEM_NAMESPACE": "kube-system",
            "METRICS_PORT": str(free_port()),
            "HEALTH_PROBE_PORT": str(health),
            "LOG_LEVEL": "info",
        }
        if instance_types is not None:
            env["INSTANCE_TYPES_FILE_PATH"] = str(instance_types)
        self._launch(
            "karpenter-kwok",
            [self.bins.bin("karpenter-kwok")],
            f"http://127.0.0.1:{health}/readyz",
            timeout,
            env=env,
        )

    # -- helpers for tests --

    def api_client(self) -> Any:
        from kubernetes import config  # local import: only tests that use the cluster pay

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def apply_crds(self) -> None:
        """Install the Karpenter, KWOKNodeClass and EC2NodeClass CRDs and wait for them."""
        from kubernetes import client, utils

        api = self.api_client()
        for path in self.bins.crds:
            for document in yaml.safe_load_all(path.read_text()):
                if not document:
                    continue
                try:
                    utils.create_from_dict(api, document)
                except utils.FailToCreateError as error:
                    if not all(e.status == 409 for e in error.api_exceptions):
                        raise
        extensions = client.ApiextensionsV1Api(api)
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in self.bins.crds]
        for name in names:
            self._wait_established(extensions, name)

    def _wait_established(self, extensions: Any, name: str, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                return
            time.sleep(0.1)
        raise LocalEnvError(f"CRD {name} was not Established within {timeout:.0f}s")

    def stop(self, *, failed: bool = False) -> Path | None:
        """Stop every component and release the work folder; returns where logs survive
        (the kept folder, or the saved copy of the logs when ``failed``), else ``None``."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        return release(self.workdir, keep=self.keep, failed=failed)
