"""Work folders of the local servers: gone after a stop, unless kept; logs saved on failure.

Every server (the control plane, Redis, OpenBao, moto, PostgreSQL) runs in a
``/tmp/localenv-<name>-*`` folder that holds its data and logs; the control plane's is
about 62 MB. :func:`release`, called by each ``stop()``, removes it, except that

- ``keep=True`` (or ``RUNNER_PLATFORM_KEEP_WORKDIRS=1`` in the environment, the default of
  every server's ``keep``) leaves the folder as it is, for a look after the run;
- ``failed=True`` first copies the folder's ``*.log`` files to
  ``${RUNNER_PLATFORM_CACHE:-~/.cache/runner-platform}/logs/<timestamp>-<name>/``, a
  stable place that outlives ``/tmp`` cleaners; the newest :data:`SAVED_LOG_RUNS` runs
  are kept there.

Folders made here and never released (a test that crashed before its ``stop()``) are
removed at interpreter exit, after :func:`localenv.process.stop_all` has ended the
servers writing into them — and, when the interpreter is killed (SIGTERM, SIGKILL: no
``atexit``), by its watchdog once it has ended the servers (:mod:`localenv.process`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

from localenv.process import stop_all, unwatch_folder, watch_folder

KEEP_ENV = "RUNNER_PLATFORM_KEEP_WORKDIRS"
SAVED_LOG_RUNS = 20  # a failing suite saves a few folders per run; more is only clutter
PREFIX = "localenv-"

_UNRELEASED: set[Path] = set()


def keep_requested() -> bool:
    """Whether the environment asks to keep work folders (``RUNNER_PLATFORM_KEEP_WORKDIRS``)."""
    return os.environ.get(KEEP_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """The cache ``localenv/build-k8s.sh`` uses, resolved the same way."""
    explicit = os.environ.get("RUNNER_PLATFORM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner-platform"


def logs_root() -> Path:
    return cache_root() / "logs"


def new_workdir(name: str) -> Path:
    """A fresh ``/tmp/localenv-<name>-XXXX`` folder, removed at exit if never released."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-"))
    _UNRELEASED.add(path)
    if not keep_requested():
        watch_folder(path)
    return path


def release(workdir: Path, *, keep: bool, failed: bool = False) -> Path | None:
    """Dispose of a stopped server's folder; return where its logs survive, if anywhere.

    Returns ``workdir`` itself when kept, the saved-logs folder after a failure, else
    ``None``. Call it only once the processes writing there have stopped.
    """
    _UNRELEASED.discard(workdir)
    unwatch_folder(workdir)
    if not workdir.exists():
        return None
    if keep:
        return workdir
    saved = save_logs(workdir) if failed else None
    shutil.rmtree(workdir, ignore_errors=True)
    return saved


def save_logs(workdir: Path) -> Path | None:
    """Copy every ``*.log`` under ``workdir`` to a new folder under :func:`logs_root`."""
    logs = sorted(workdir.rglob("*.log"))
    if not logs:
        return None
    label = workdir.name.removeprefix(PREFIX)
    target = logs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    target.mkdir(parents=True, exist_ok=True)
    for log in logs:
        # The path relative to the work folder keeps two components' logs apart.
        destination = target / "-".join(log.relative_to(workdir).parts)
        try:
            shutil.copyfile(log, destination)
        except OSError:
            continue  # a log that vanished or cannot be read: save the others
    _prune(logs_root())
    return target


def _prune(root: Path) -> None:
    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    for old in runs[:-SAVED_LOG_RUNS]:
        shutil.rmtree(old, ignore_errors=True)


# A forked child's exit removes nothing of its parent's.
os.register_at_fork(after_in_child=_UNRELEASED.clear)


@atexit.register
def _remove_unreleased() -> None:
    # atexit runs handlers last-registered first; this module imports localenv.process,
    # so its own stop_all hook would only run after this one: stop the servers here.
    stop_all()
    if keep_requested():
        return
    for path in list(_UNRELEASED):
        shutil.rmtree(path, ignore_errors=True)
    _UNRELEASED.clear()
