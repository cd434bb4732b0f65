"""The JSON Schemas in `datasets/schemas/`: load, fill from a dataset_info entry, compile.

The files are the one source: record schemas are templates whose `${name}` placeholders are the column and tag
names of a dataset_info entry (`${messages}`, `${role_tag}`, ...). `fill_schema` puts the entry's names in and
drops every property whose column is not mapped; `compiled` compiles the result once with fastjsonschema (fast
path) and `schema_errors` explains a failing record with jsonschema (all errors, exact paths; slow path, only
for invalid records).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..resources import datasets_dir
from .result import Problem

SCHEMA_NAMES = (
    "alpaca-sft", "alpaca-ranking", "alpaca-kto",
    "sharegpt-sft", "sharegpt-ranking", "sharegpt-kto",
    "openai-sft", "openai-ranking", "openai-kto",
    "messages-sft", "pretrain-text",
    "dataset-info-entry", "dataset-info",
)

_PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")


def schemas_dir() -> Path:
    return datasets_dir() / "schemas"


@functools.cache
def _load_text(name: str) -> str:
    path = schemas_dir() / f"{name}.schema.json"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}") from None


def load_schema(name: str) -> dict[str, Any]:
    """The schema `datasets/schemas/NAME.schema.json` as a fresh dict (templates keep their placeholders)."""
    return json.loads(_load_text(name))


def _inline_refs(node: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            target = definitions[ref.rsplit("/", 1)[1]]
            merged = {**{k: v for k, v in node.items() if k != "$ref"}, **target}
            return _inline_refs(merged, definitions)
        return {k: _inline_refs(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, definitions) for v in node]
    return node


def fill_schema(template: Mapping[str, Any], names: Mapping[str, str | None]) -> dict[str, Any]:
    """Fill `${name}` placeholders (property names, `required` items) with `names[name]`.

    A placeholder whose name maps to None (column not mapped) removes the property / the required item.
    Local `#/definitions/...` references are inlined, so the compiled validator makes no extra calls.
    """

    def sub(value: str) -> str | None:
        m = _PLACEHOLDER.match(value)
        if not m:
            return value
        if m.group(1) not in names:
            raise KeyError(f"schema placeholder ${{{m.group(1)}}} has no value")
        return names[m.group(1)]

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if key == "properties":
                    k2 = sub(k)
                    if k2 is None:
                        continue
                    out[k2] = walk(v)
                else:
                    out[k] = walk(v, k)
            return out
        if isinstance(node, list):
            if key in ("required", "enum"):
                items = [sub(v) if isinstance(v, str) else v for v in node]
                return list(dict.fromkeys(v for v in items if v is not None))
            return [walk(v) for v in node]
        return node

    definitions = template.get("definitions", {})
    body = {k: v for k, v in template.items() if k != "definitions"}
    return walk(_inline_refs(body, definitions))


def _cache_key(names: Mapping[str, str | None]) -> tuple:
    return tuple(sorted(names.items()))


@functools.lru_cache(maxsize=64)
def _filled(name: str, names_key: tuple) -> str:
    return json.dumps(fill_schema(load_schema(name), dict(names_key)))


def filled_schema(name: str, names: Mapping[str, str | None]) -> dict[str, Any]:
    """`load_schema(name)` with the entry's column/tag names filled in."""
    return json.loads(_filled(name, _cache_key(names)))


@functools.lru_cache(maxsize=64)
def _compiled(name: str, names_key: tuple):
    import fastjsonschema

    return fastjsonschema.compile(json.loads(_filled(name, names_key)), use_formats=False)


def compiled(name: str, names: Mapping[str, str | None]):
    """fastjsonschema validator for the filled schema (raises JsonSchemaValueException on the first error)."""
    return _compiled(name, _cache_key(names))


@functools.lru_cache(maxsize=64)
def _jsonschema_validator(name: str, names_key: tuple):
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(_filled(name, names_key)))


def json_path(parts) -> str:
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", str(p)):
            out += f".{p}"
        else:
            out += "[" + json.dumps(str(p), ensure_ascii=False) + "]"
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES = {"string": "a string", "boolean": "a JSON boolean (true/false)", "array": "an array",
               "object": "an object", "integer": "an integer", "null": "null", "number": "a number"}


def _describe_error(err) -> tuple[str, str, str, str]:
    """(path, message, expected, keyword) for one jsonschema ValidationError."""
    path, message, expected = _describe(err)
    while err.validator in ("anyOf", "oneOf") and err.context and not all(
            "required" in s for s in err.validator_value):
        from jsonschema.exceptions import best_match

        err = best_match([e for e in err.context if e.validator != "not"] or list(err.context))
    return path, message, expected, err.validator


def _describe(err) -> tuple[str, str, str]:
    path = list(err.absolute_path)
    kw = err.validator
    if kw == "required":
        missing = [r for r in err.validator_value if not (isinstance(err.instance, dict) and r in err.instance)]
        name = missing[0] if missing else "?"
        return json_path(path + [name]), f"missing required key {name!r}", f"key {name!r}"
    if kw == "type":
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        return json_path(path), f"got {_short(err.instance)}", expected
    if kw == "minItems":
        return json_path(path), "is empty" if err.instance == [] else f"has {len(err.instance)} items", \
            f"at least {err.validator_value} item(s)"
    if kw == "maxItems":
        return json_path(path), f"has {len(err.instance)} items", f"at most {err.validator_value} items"
    if kw == "additionalProperties":
        allowed = list((err.schema.get("properties") or {}).keys())
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        name = extra[0] if extra else "?"
        close = difflib.get_close_matches(name, allowed, n=1)
        msg = f"unknown key {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        return json_path(path + [name]), msg, "one of " + ", ".join(allowed)
    if kw == "enum":
        return json_path(path), f"got {_short(err.instance)}", "one of " + ", ".join(map(str, err.validator_value))
    if kw in ("anyOf", "oneOf") and err.context and not all("required" in s for s in err.validator_value):
        from jsonschema.exceptions import best_match

        relevant = [e for e in err.context if e.validator != "not"] or list(err.context)
        return _describe(best_match(relevant))
    if kw == "anyOf" and all("required" in s for s in err.validator_value):
        keys = [s["required"][0] for s in err.validator_value]
        return json_path(path), "names no data source", "one of the keys " + ", ".join(keys)
    return json_path(path), err.message, str(err.validator_value)


_HINTS = {
    "required": "add the key to every record, or map the column to your key name in the dataset_info entry",
    "type": "fix the value's JSON type",
    "minItems": "remove the record or give it at least one message",
    "maxItems": "each history item is [instruction, response]",
    "additionalProperties": "remove or rename the key; LLaMA-Factory ignores unknown keys silently",
    "enum": "use one of the expected values",
}


def schema_errors(name: str, names: Mapping[str, str | None], instance: Any) -> list[tuple]:
    """All schema errors of `instance` as (path, rule, message, expected, hint) tuples, in document order."""
    validator = _jsonschema_validator(name, _cache_key(names))
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    out = []
    for err in errors:
        path, message, expected, kw = _describe_error(err)
        hint = "each history item is [instruction, response]" if ".history" in path else _HINTS.get(kw, "")
        out.append((path, f"schema:{kw}", message, expected, hint))
    return out


def check_dataset_info_entry(name: str, entry: Any, *, file: str = "dataset_info.json") -> list[Problem]:
    """Problems of one dataset_info.json entry against `dataset-info-entry.schema.json` (unknown keys included).

    Each problem's path is `$.NAME.key...`; an empty list means LLaMA-Factory reads every key as written.
    """
    problems = []
    for path, rule, message, expected, hint in schema_errors("dataset-info-entry", {}, entry):
        entry_path = "$" + json_path([name])[1:] + path[1:]
        problems.append(Problem(file=file, line=None, record=None, path=entry_path, rule=rule.replace("schema:", "entry:"),
                                message=message, expected=expected, hint=hint, severity="error"))
    return problems
