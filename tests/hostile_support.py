"""Hostile stacks: one-change variants of ``Pulumi.dev.yaml`` run through ``make plan``.

Each variant is the dev stack with one value changed by ``mutate`` (which edits the
``runner-platform:`` documents in place). The plan runs as ``make plan`` does —
``python -m localenv.plan --config FILE`` in a fresh interpreter — so a refusal by the
model (exit 2) and a violation found by the policy pack (exit 1) are both seen exactly as
a platform engineer would see them.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
_PREFIX = "runner-platform:"


@dataclass(frozen=True)
class PlanResult:
    returncode: int
    output: str


def dev_config() -> dict[str, Any]:
    """The dev stack's whole config file (``config:`` mapping), freshly loaded."""
    return yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())


def plan_variant(
    mutate: Callable[[dict[str, Any]], None], tmp_path: Path, name: str = "hostile"
) -> PlanResult:
    """Plan the dev stack after ``mutate`` edits its documents (keys without the prefix)."""
    whole = dev_config()
    documents = {
        key[len(_PREFIX) :]: copy.deepcopy(value)
        for key, value in whole["config"].items()
        if key.startswith(_PREFIX)
    }
    mutate(documents)
    others = {k: v for k, v in whole["config"].items() if not k.startswith(_PREFIX)}
    whole["config"] = others | {f"{_PREFIX}{key}": value for key, value in documents.items()}
    stack_file = tmp_path / f"Pulumi.{name}.yaml"
    stack_file.write_text(yaml.safe_dump(whole, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "localenv.plan", "--stack", name, "--config", str(stack_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return PlanResult(done.returncode, done.stdout + done.stderr)


def team(documents: dict[str, Any], name: str) -> dict[str, Any]:
    """The team called ``name`` in the documents (for mutators)."""
    return next(t for t in documents["teams"] if t["name"] == name)


def pool(documents: dict[str, Any], name: str) -> dict[str, Any]:
    """The pool called ``name`` in the documents (for mutators)."""
    return next(p for p in documents["pools"] if p["name"] == name)
