"""What counts as a value path a chart defines (localenv.helm.undefined_paths); the real
charts are checked in tests/integration/test_helm_charts.py."""

from __future__ import annotations

from localenv.helm import nulls, undefined_paths

DEFAULTS = {
    "replicas": 1,
    "image": {"repository": "example", "tag": ""},
    "podAnnotations": {},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "a", "operator": "Exists"}],
    "config": None,
    "affinity": {"nodeAffinity": {"required": []}},
}
SCHEMA = {
    "properties": {
        "replicas": {"type": "integer"},
        "documented": {"type": "string"},  # a key values.yaml only mentions in a comment
        "nested": {"type": "object", "properties": {"inner": {"type": "boolean"}}},
    }
}


def test_known_keys_pass_and_unknown_ones_are_named_by_path() -> None:
    values = {
        "replicas": 2,
        "image": {"tag": "1.0", "tga": "typo"},
        "replica": 2,
        "documented": "from the schema",
        "nested": {"inner": True, "outer": False},
    }
    assert undefined_paths(values, DEFAULTS, SCHEMA) == ["image.tga", "replica", "nested.outer"]
    assert undefined_paths(values, DEFAULTS) == [
        "image.tga",
        "replica",
        "documented",
        "nested",
    ]


def test_free_form_maps_empty_maps_lists_and_nulls_take_anything() -> None:
    values = {
        "podAnnotations": {"any/key": "x"},  # empty map by default
        "nodeSelector": {"runner-platform.io/system": "true"},  # free-form by name
        "tolerations": [{"key": "b", "value": "c"}],  # lists are replaced whole
        "config": {"anything": {"goes": 1}},  # null by default
        "affinity": {"podAntiAffinity": {}},  # free-form by name
    }
    assert undefined_paths(values, DEFAULTS, SCHEMA) == []


def test_nulls_are_found_at_any_depth() -> None:
    assert nulls({"a": {"b": None}, "c": [1, {"d": None}], "e": 0}) == ["a.b", "c[1].d"]
    assert nulls({"a": False, "b": "", "c": []}) == []
