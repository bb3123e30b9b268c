"""Servers die with the process that started them, however it ends (issue 9, item 18).

A child interpreter starts real servers through ``localenv`` and reports every process of
each server's tree (with its start time, so a reused pid is never mistaken for a
survivor), every TCP port those processes listen on, and its work folders; then it is
killed with SIGKILL or SIGTERM, neither of which runs ``atexit``. Within a bound — a
bound, not a timing target — every one of those processes is gone, every port refuses a
connection, the work folders are removed and the watchdog has left too.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localenv.kube import K8sBins
from localenv.process import process_tree, running, wait_for
from tests.conftest import ROOT

BOUND = 60.0  # the watchdog's SIGTERM grace and SIGKILL, with room for a busy machine


def _listening_ports(pids: set[int]) -> list[int]:
    """TCP ports in LISTEN state whose socket one of ``pids`` holds (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, PermissionError):
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def _report(name: str, root: int, workdir: Path) -> dict[str, Any]:
    tree = process_tree([root])
    return {
        "name": name,
        "processes": {str(pid): started for pid, started in tree.items()},
        "ports": _listening_ports(set(tree)),
        "workdir": str(workdir),
    }


def serve_until_killed(names: list[str], bins_root: str | None = None) -> None:
    """The child: start the servers, report them on one stdout line, wait to be killed."""
    from localenv import services

    started: dict[str, Any] = {}

    def start(name: str) -> None:
        started[name] = getattr(services, name)().start()

    # The first server starts from a thread that ends at once: a parent-death signal
    # (PR_SET_PDEATHSIG) would fire then, the watchdog only when the process goes.
    worker = threading.Thread(target=start, args=(names[0],))
    worker.start()
    worker.join()
    for name in names[1:]:
        start(name)
    report = [_report(n, s.process.popen.pid, s.workdir) for n, s in started.items()]
    if bins_root is not None:
        from localenv.kube import ControlPlane

        plane = ControlPlane(K8sBins(Path(bins_root))).start(scheduler=True, kwok=True)
        for process in plane.processes:
            assert process.popen is not None
            report.append(_report(process.name, process.popen.pid, plane.workdir))
    print(json.dumps(report), flush=True)
    time.sleep(3600)


def _start_child(
    names: list[str], tmp_path: Path, bins_root: str | None = None
) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    code = (
        "from tests.integration.test_server_lifetime import serve_until_killed; "
        f"serve_until_killed({names!r}, {bins_root!r})"
    )
    errors = (tmp_path / "child.err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True
    )
    errors.close()
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 240)
    line = child.stdout.readline() if ready else ""
    if not line:
        _end(child)
        pytest.fail(f"the child reported no servers:\n{(tmp_path / 'child.err').read_text()}")
    return child, json.loads(line)


def _watchdogs_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"--watchdog" in cmdline:
            found.append(int(entry))
    return found


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _serving(child: subprocess.Popen[str], report: list[dict[str, Any]]) -> int:
    """Check that everything reported runs and serves; return the child's watchdog."""
    assert all(running(int(p), t) for s in report for p, t in s["processes"].items())
    ports = [port for s in report for port in s["ports"]]
    assert ports and not any(_refuses(port) for port in ports)
    (watchdog,) = _watchdogs_of(child.pid)
    return watchdog


def _all_gone(child: subprocess.Popen[str], report: list[dict[str, Any]], watchdog: int) -> None:
    processes = {int(pid): started for s in report for pid, started in s["processes"].items()}
    ports = sorted({port for s in report for port in s["ports"]})
    folders = sorted({s["workdir"] for s in report})
    assert child.wait(timeout=30) != 0  # killed: no atexit hook ran
    wait_for(
        lambda: not [p for p, s in processes.items() if running(p, s)],
        BOUND,
        "every server process to end with its starter",
    )
    wait_for(lambda: all(_refuses(port) for port in ports), BOUND, "every port to close")
    wait_for(lambda: not any(Path(f).exists() for f in folders), BOUND, "the work folders to go")
    wait_for(lambda: not running(watchdog), BOUND, "the watchdog to leave")


def _end(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


SERVICES = ["Redis", "OpenBao", "Postgres", "Moto"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_servers_die_with_a_killed_starter(sig: signal.Signals, tmp_path: Path) -> None:
    child, report = _start_child(SERVICES, tmp_path)
    try:
        postgres = next(s for s in report if s["name"] == "Postgres")
        # runuser → postmaster → backends, each backend in a session of its own.
        assert len(postgres["processes"]) >= 4
        watchdog = _serving(child, report)
        child.send_signal(sig)
        _all_gone(child, report, watchdog)
    finally:
        _end(child)


def test_the_control_plane_dies_with_a_killed_starter(bins: K8sBins, tmp_path: Path) -> None:
    child, report = _start_child(["Redis"], tmp_path, bins_root=str(bins.root))
    try:
        names = {s["name"] for s in report}
        assert {"etcd", "kube-apiserver", "kube-scheduler", "kwok"} <= names
        watchdog = _serving(child, report)
        child.send_signal(signal.SIGKILL)
        _all_gone(child, report, watchdog)
    finally:
        _end(child)


def shell_with_a_grandchild(folder: str, then: str) -> None:
    """The child: a shell whose own child left its group and session (``setsid``), as each
    PostgreSQL backend does, so only the tree walk finds it; then exit or wait."""
    from localenv.process import ManagedProcess

    grandchild = Path(folder) / "grandchild"
    shell = ManagedProcess(
        "shell", ["sh", "-c", f"setsid sleep 300 & echo $! > {grandchild}; wait"], Path(folder)
    ).start()

    def left() -> bool:
        pid = grandchild.read_text().strip()
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3] == pid

    shell.wait_until(left, 10, "forked into a session of its own")
    assert shell.popen is not None
    print(shell.popen.pid, flush=True)
    if then == "exit":
        sys.exit(0)  # atexit: stop_all, then the watchdog is told nothing is left
    time.sleep(3600)


@pytest.mark.parametrize("exit_how", ["SIGKILL", "exit"])
def test_a_grandchild_out_of_its_group_goes_too(exit_how: str, tmp_path: Path) -> None:
    code = (
        "from tests.integration.test_server_lifetime import shell_with_a_grandchild; "
        f"shell_with_a_grandchild({str(tmp_path)!r}, {exit_how!r})"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        shell = int(child.stdout.readline())
        grandchild = int((tmp_path / "grandchild").read_text())
        watchdogs = _watchdogs_of(child.pid)
        if exit_how == "SIGKILL":
            assert running(shell) and running(grandchild) and len(watchdogs) == 1
            child.kill()
        child.wait(timeout=30)
        wait_for(lambda: not running(shell) and not running(grandchild), BOUND, "the tree to end")
        wait_for(lambda: not any(map(running, watchdogs)), BOUND, "the watchdog to leave")
    finally:
        _end(child)
