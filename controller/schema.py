"""Export the spec's JSON Schema and a Markdown configuration reference.

``python -m controller.schema json`` feeds editors (YAML language servers complete
stack config from it); ``python -m controller.schema markdown`` writes
docs/configuration.md. Both come from the model, so they cannot drift from it; a test
compares the committed files with fresh output.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from controller.model import PlatformSpec


def json_schema() -> str:
    schema = PlatformSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "runner-platform stack config (runner-platform:* keys)"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(defaults)"
    return f"`{json.dumps(value)}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                item = stack.pop()
                if isinstance(item, type) and issubclass(item, BaseModel):
                    visit(item)
                stack.extend(get_args(item))

    visit(root)
    return seen


def markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `controller/model/` by `make docs`; do not edit by hand.",
        "Each top-level key of `PlatformSpec` is one stack config key in the",
        "`runner-platform` namespace (`runner-platform:teams`). The JSON Schema is",
        "`docs/schema/platform-spec.schema.json`.",
    ]
    for model in _models(PlatformSpec):
        doc = (model.__doc__ or "").strip().splitlines()
        lines += ["", f"## {model.__name__}", ""]
        if doc and not doc[0].startswith("!!!") and model.__module__.startswith("controller.model"):
            lines += [doc[0], ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            description = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(
                f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[1:] == ["json"]:
        sys.stdout.write(json_schema())
    elif argv[1:] == ["markdown"]:
        sys.stdout.write(markdown())
    else:
        print("usage: python -m controller.schema json|markdown", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
