"""Work folders: a stop removes them, keep keeps them, and a failure saves the logs."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from localenv.kube import ControlPlane, K8sBins
from localenv.process import LocalEnvError
from localenv.services import Redis
from localenv.workdir import KEEP_ENV


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The defaults, whatever the developer's shell says; saved logs go to a throwaway cache."""
    monkeypatch.delenv(KEEP_ENV, raising=False)
    monkeypatch.setenv("RUNNER_PLATFORM_CACHE", str(tmp_path / "cache"))


def test_control_plane_stop_leaves_no_folder_behind(bins: K8sBins) -> None:
    plane = ControlPlane(bins).start()
    workdir = plane.workdir
    assert (workdir / "logs" / "kube-apiserver.log").exists()
    assert (workdir / "etcd").is_dir()
    assert plane.stop() is None
    assert not workdir.exists()


def test_keep_leaves_the_control_plane_folder_in_place(bins: K8sBins) -> None:
    plane = ControlPlane(bins, keep=True).start()
    try:
        assert plane.stop() == plane.workdir
        assert (plane.workdir / "logs" / "kube-apiserver.log").exists()
    finally:
        shutil.rmtree(plane.workdir, ignore_errors=True)


def test_the_environment_variable_keeps_a_service_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "1")
    server = Redis().start()
    try:
        assert server.stop() == server.workdir
        assert "Ready to accept connections" in (server.workdir / "redis.log").read_text()
    finally:
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_a_stop_after_a_failure_saves_the_logs_in_the_cache(tmp_path: Path) -> None:
    server = Redis().start()
    saved = server.stop(failed=True)
    assert saved is not None and saved.parent == tmp_path / "cache" / "logs"
    assert saved.name.endswith(server.workdir.name.removeprefix("localenv-"))
    assert "Ready to accept connections" in (saved / "redis.log").read_text()
    assert not server.workdir.exists()


def test_a_failed_start_names_where_its_logs_were_saved(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Redis(port=taken.getsockname()[1])
        with pytest.raises(LocalEnvError) as caught:
            server.start(timeout=20)
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith("logs saved in ")
    saved = Path(notes[0].removeprefix("logs saved in "))
    assert saved.parent == tmp_path / "cache" / "logs"
    assert "Address already in use" in (saved / "redis.log").read_text()
    assert not server.workdir.exists()
