"""Developer tools built from their Go modules at pinned versions, cached outside the repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localenv.process import LocalEnvError

ACTIONLINT_SCRIPT = Path(__file__).with_name("build-actionlint.sh")


def actionlint() -> Path:
    """The actionlint binary, built first if this machine has none (seconds to a minute)."""
    result = subprocess.run(
        ["bash", str(ACTIONLINT_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise LocalEnvError(f"building actionlint failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])
