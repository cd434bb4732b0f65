"""Serialize one value as a single-line YAML scalar (or flow sequence) that can never add or change a key."""

from __future__ import annotations

import math
import shlex
from typing import Any

import yaml

_INF = math.inf


def _dump(value: Any, **kwargs: Any) -> str:
    text = yaml.safe_dump(value, allow_unicode=True, width=_INF, default_flow_style=True, **kwargs)
    if text.endswith("\n...\n"):
        text = text[: -len("\n...\n")]
    return text.rstrip("\n")


def yaml_value(value: Any) -> str:
    """`value` as YAML text on one line; loading `key: <text>` gives back exactly `value`."""
    if isinstance(value, dict):
        raise TypeError("yaml_value takes scalars and lists, not mappings")
    if isinstance(value, str):
        plain = _dump(value)
        if "\n" not in plain and yaml.safe_load(f"k: {plain}") == {"k": value}:
            return plain
        return _dump(value, default_style='"')
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text = _dump(value)
    if "\n" in text:  # pragma: no cover - scalars other than str always dump on one line
        raise ValueError(f"cannot write {value!r} on one line")
    return text


def shell_quote(value: Any) -> str:
    return shlex.quote(str(value))
