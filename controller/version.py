"""The controller's version, read from the installed distribution's metadata.

``pyproject.toml`` (``[project] version``) is the one place a version is written. The
wheel's metadata carries it into every install, so ``runner-controller --version``, the
``runner_platform_build_info`` gauge and the image's ``org.opencontainers.image.version``
label (the Dockerfile refuses a build whose ``VERSION`` argument disagrees) all say the same.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "runner-platform"


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        # Source tree on sys.path without an install: say so rather than guess.
        return "0+unknown"


VERSION = _installed_version()
PYTHON_VERSION = platform.python_version()
