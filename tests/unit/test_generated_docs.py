"""The committed schema and configuration reference match the model (run `make docs`)."""

from __future__ import annotations

import json

from controller import schema
from controller.model import PlatformSpec
from tests.conftest import DEV_DOCUMENT, ROOT


def test_committed_json_schema_is_current() -> None:
    committed = (ROOT / "docs/schema/platform-spec.schema.json").read_text()
    assert committed == schema.json_schema(), "run `make docs`"


def test_committed_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs/configuration.md").read_text()
    assert committed == schema.markdown(), "run `make docs`"


def test_schema_describes_every_top_level_key() -> None:
    properties = json.loads(schema.json_schema())["properties"]
    assert set(DEV_DOCUMENT) <= set(properties)
    assert set(properties) == {
        "cluster",
        "github_instances",
        "pools",
        "teams",
        "controller",
        "vault",
        "observability",
    }


def test_cli_refuses_an_unknown_format(capsys: object) -> None:
    assert schema.main(["schema", "yaml"]) == 2


def test_every_configuration_key_is_described() -> None:
    undocumented = [
        f"{model.__name__}.{name}"
        for model in schema._models(PlatformSpec)
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []
