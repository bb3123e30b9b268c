"""Shared fixtures: the dev stack's spec document, loaded from Pulumi.dev.yaml itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.model import PlatformSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
_DEV = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
DEV_DOCUMENT: dict[str, Any] = {
    key.split(":", 1)[1]: value for key, value in _DEV.items() if key.startswith("runner-platform:")
}


@pytest.fixture
def dev_document() -> dict[str, Any]:
    """A fresh, mutable copy of the dev stack's spec document."""
    return copy.deepcopy(DEV_DOCUMENT)


@pytest.fixture
def dev_spec() -> PlatformSpec:
    return load_spec(copy.deepcopy(DEV_DOCUMENT))
