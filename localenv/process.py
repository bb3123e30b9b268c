"""Start, watch and stop local server processes, leaving nothing behind.

Every process gets its own log file and its own process group; a start that does not
become ready in time raises :class:`LocalEnvError` with the tail of that log; stopping
terminates the whole group and then kills what remains. An ``atexit`` hook stops
anything still running when the interpreter ends, so a failing test cannot leak servers.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_RUNNING: list[ManagedProcess] = []


class LocalEnvError(RuntimeError):
    """A local service could not be built, started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class ManagedProcess:
    """One server process with a log file, started in its own process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as error:
            raise LocalEnvError(f"{self.name}: cannot start {self.argv[0]}: {error}") from None
        finally:
            log.close()
        _RUNNING.append(self)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail fast if the process dies, with its log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.popen.returncode if self.popen else None
                raise LocalEnvError(
                    f"{self.name} exited (code {code}) before {what}; last lines of "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise LocalEnvError(
            f"{self.name} was not {what} within {timeout:.0f}s; last lines of "
            f"{self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, grace: float = 5.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything the group left behind
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=grace)
        if self in _RUNNING:
            _RUNNING.remove(self)


@atexit.register
def stop_all() -> None:
    for process in reversed(list(_RUNNING)):
        process.stop(grace=2.0)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` returns something truthy; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
