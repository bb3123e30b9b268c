"""The process harness: clear start failures, and nothing left running after a stop (the
whole tree, even what left the group). A killed starter: test_server_lifetime.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from localenv.process import LocalEnvError, ManagedProcess


def test_a_process_that_dies_at_start_reports_its_log_tail(tmp_path: Path) -> None:
    process = ManagedProcess(
        "doomed", ["sh", "-c", "echo 'listen: address in use'; exit 3"], tmp_path
    ).start()
    with pytest.raises(LocalEnvError) as caught:
        process.wait_until(lambda: False, timeout=10, what="ready")
    message = str(caught.value)
    assert "doomed exited (code 3) before ready" in message
    assert "listen: address in use" in message


def test_a_process_that_never_gets_ready_times_out_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess("slow", ["sh", "-c", "echo warming up; sleep 30"], tmp_path).start()
    try:
        with pytest.raises(LocalEnvError, match=r"slow was not ready within 1s") as caught:
            process.wait_until(lambda: False, timeout=1, what="ready")
        assert "warming up" in str(caught.value)
    finally:
        process.stop()


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell starts a grandchild and waits on it, as some servers fork workers.
    process = ManagedProcess(
        "parent", ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path
    ).start()
    process.wait_until(pid_file.exists, timeout=10, what="forked")
    child = int(pid_file.read_text().strip() or 0)
    assert _running(child)
    process.stop()
    assert not process.alive
    assert not _running(child)


def test_stop_ends_a_child_that_left_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # setsid: a session (and group) of its own, as each PostgreSQL backend makes.
    process = ManagedProcess(
        "parent", ["sh", "-c", f"setsid sleep 60 & echo $! > {pid_file}; wait"], tmp_path
    ).start()

    def left() -> bool:
        pid = pid_file.read_text().strip()
        return _fields(int(pid))[3] == pid  # its session's leader

    process.wait_until(left, timeout=10, what="forked into a session of its own")
    child = int(pid_file.read_text())
    process.stop()
    assert not _running(child)


def _fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan nobody reaped is dead, whatever kill(0) says)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_missing_binary_is_named(tmp_path: Path) -> None:
    with pytest.raises(LocalEnvError, match="nope: cannot start /no/such/binary"):
        ManagedProcess("nope", ["/no/such/binary"], tmp_path).start()
