"""Start, watch and stop local server processes, leaving nothing behind.

Every process gets its own log file and its own process group; a start that does not
become ready in time raises :class:`LocalEnvError` with the tail of that log; stopping
terminates the whole tree (the group, and any child that left it with ``setsid``) and then
kills what remains. An ``atexit`` hook stops anything still running when the interpreter
ends, so a failing test cannot leak servers.

A SIGTERM or SIGKILL of the interpreter runs no ``atexit`` hook, so the servers also die
with the interpreter through a *watchdog*: the first start (or work folder) launches
``python localenv/process.py --watchdog`` (standard library only, in its own session)
holding the read end of a pipe whose one write end stays in this interpreter. Each start
registers the server's pid with its start time (so a reused pid is never hit), each stop
unregisters it. When the pipe reads end-of-file — the interpreter is gone, however it
ended — the watchdog ends every registered server's whole tree: its process group, its
session and every descendant, which covers ``runuser`` → postmaster → backends (each
backend leaves the group with ``setsid``). SIGTERM, then SIGKILL after a grace period;
then it removes the registered work folders (``localenv.workdir``).

Why not ``PR_SET_PDEATHSIG`` in each server: it signals the direct child only (a fork does
not inherit it: ``runuser`` dies, and the postmaster under it is orphaned before anything
could find it), and it fires when the *thread* that forked exits, not the process. The
pipe's end-of-file is the process's death alone. Out of reach: a daemon that double-forks
into a session of its own (none of the servers here does).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

_RUNNING: list[ManagedProcess] = []
WATCHDOG_GRACE = 5.0  # seconds between the watchdog's SIGTERM and its SIGKILL


class LocalEnvError(RuntimeError):
    """A local service could not be built, started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the process table, from /proc --


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot): a pid and this name one process."""
    fields = _stat(pid)
    return fields[19] if fields else None


def running(pid: int, started: str | None = None) -> bool:
    """Alive, not a zombie (an orphan nobody reaped is dead), and the same process."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started


def process_tree(roots: Iterable[int]) -> dict[int, str]:
    """Every live process of each root's tree, with its start time: the root, its process
    group and session (roots lead their own, started with ``start_new_session``) and all
    their descendants."""
    table: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            table[int(entry)] = fields
    members = {
        pid
        for root in roots
        if root in table
        for pid, fields in table.items()
        if pid == root or int(fields[2]) == root or int(fields[3]) == root
    }
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[1]), []).append(pid)
    pending = list(members)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in members:
                members.add(child)
                pending.append(child)
    return {pid: table[pid][19] for pid in members if table[pid][0] not in ("Z", "X")}


def end_processes(victims: dict[int, str], grace: float) -> None:
    """SIGTERM each (pid, start time) still running, SIGKILL what is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        for pid, started in victims.items():
            if running(pid, started):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait
        while any(running(p, s) for p, s in victims.items()) and time.monotonic() < deadline:
            time.sleep(0.05)


# -- the watchdog --


def watch(stream: BinaryIO, grace: float = WATCHDOG_GRACE) -> None:
    """The watchdog's loop: read registrations until end-of-file, then end what is left.

    Lines: ``+ PID START`` a server, ``- PID`` its stop, ``d+ PATH`` / ``d- PATH`` a work
    folder (only ``localenv-*`` folders are ever removed).
    """
    servers: dict[int, str] = {}
    folders: set[str] = set()
    for raw in stream:
        op, _, rest = raw.decode(errors="replace").rstrip("\n").partition(" ")
        if op == "+":
            pid, _, started = rest.partition(" ")
            servers[int(pid)] = started
        elif op == "-":
            servers.pop(int(rest), None)
        elif op == "d+":
            folders.add(rest)
        elif op == "d-":
            folders.discard(rest)
    roots = [pid for pid, started in servers.items() if running(pid, started)]
    if roots:
        end_processes(process_tree(roots), grace)
    for folder in folders:
        if Path(folder).name.startswith("localenv-"):
            shutil.rmtree(folder, ignore_errors=True)


class _Lifeline:
    """This interpreter's end of the pipe to its watchdog, and what it registered there
    (replayed to a new watchdog should this one die)."""

    def __init__(self, registered: dict[str, str] | None = None) -> None:
        read, write = os.pipe()  # both close on exec (PEP 446): no server inherits them
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve()), "--watchdog"],
                stdin=read,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signal or group kill reaches it
            )
        except OSError:
            os.close(write)
            raise
        finally:
            os.close(read)
        self.fd: int | None = write
        self.owner = os.getpid()
        self.registered: dict[str, str] = {}
        for line in (registered or {}).values():
            self.send(line)

    def send(self, line: str) -> None:
        if self.fd is None:
            raise BrokenPipeError("the lifeline is closed")
        os.write(self.fd, f"{line}\n".encode())  # one short line (< PIPE_BUF): atomic
        op, _, subject = line.partition(" ")
        key = f"folder {subject}" if op.startswith("d") else f"server {subject.split(' ')[0]}"
        if op.endswith("+"):
            self.registered[key] = line
        else:
            self.registered.pop(key, None)

    def close(self, timeout: float = 2 * WATCHDOG_GRACE + 5) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self.watchdog.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


_LIFELINE: _Lifeline | None = None
_LIFELINE_LOCK = threading.Lock()


def _lifeline_send(line: str, *, start: bool = True) -> None:
    """Tell this interpreter's watchdog; ``start`` it (again) when there is none."""
    global _LIFELINE
    with _LIFELINE_LOCK:
        if _LIFELINE is None and not start:
            return
        for _attempt in range(2):
            if _LIFELINE is None or _LIFELINE.fd is None:
                _LIFELINE = _Lifeline(_LIFELINE.registered if _LIFELINE else None)
            try:
                _LIFELINE.send(line)
                return
            except BrokenPipeError:  # the watchdog died: a new one takes over what it knew
                _LIFELINE.close(timeout=1.0)


def watch_folder(path: Path) -> None:
    """Have the watchdog remove ``path`` should this interpreter die without doing it."""
    _lifeline_send(f"d+ {path}")


def unwatch_folder(path: Path) -> None:
    _lifeline_send(f"d- {path}", start=False)


def _forget_in_child() -> None:
    # A forked child holds no pipe open (the watchdog would wait for it too), and its
    # exit stops nothing of its parent's.
    global _LIFELINE
    if _LIFELINE is not None and _LIFELINE.fd is not None:
        os.close(_LIFELINE.fd)
    _LIFELINE = None
    _RUNNING.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register  # registered before stop_all, so it runs after it: nothing is left then
def _close_lifeline() -> None:
    if _LIFELINE is not None and _LIFELINE.owner == os.getpid():
        _LIFELINE.close()


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
        self.started: str | None = None  # the process's start time, with its pid its name

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
        self.started = start_time(self.popen.pid)
        _RUNNING.append(self)
        _lifeline_send(f"+ {self.popen.pid} {self.started}")
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
        """End the whole tree: SIGTERM, then SIGKILL what is left after ``grace``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            # Read while the links hold: the group alone misses a child that left it
            # (setsid, as each PostgreSQL backend does), and an orphan cannot be traced.
            end_processes(process_tree([self.popen.pid]), grace)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything the group started since
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=grace)
        if self in _RUNNING:
            _RUNNING.remove(self)
            _lifeline_send(f"- {self.popen.pid}", start=False)


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


if __name__ == "__main__" and sys.argv[1:] == ["--watchdog"]:
    watch(sys.stdin.buffer)
