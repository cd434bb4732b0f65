"""How LLaMA-Factory reads one dataset: its dataset_info entry resolved exactly as `DatasetAttr.join` does.

LLaMA-Factory 0.9.5 (`llamafactory/data/parser.py`): without a `columns` key the alpaca/sharegpt defaults apply
(instruction/input/output, conversations); WITH a `columns` key every column not listed becomes None (unmapped).
The same holds for `tags`. This module is pure: entry -> DatasetSpec, first records -> detected entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

COLUMN_NAMES = ("prompt", "query", "response", "history", "messages", "system", "tools",
                "images", "videos", "audios", "chosen", "rejected", "kto_tag")
TAG_NAMES = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
DEFAULT_COLUMNS: dict[str, str | None] = {c: None for c in COLUMN_NAMES} | {
    "prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
DEFAULT_TAGS: dict[str, str | None] = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}

FORMATS = ("alpaca", "sharegpt", "openai", "messages", "text")
# stage names LLaMA-Factory's get_dataset uses; our aliases map onto them
STAGE_ALIASES = {"sft": "sft", "dpo": "rm", "orpo": "rm", "simpo": "rm", "rm": "rm", "kto": "kto",
                 "pt": "pt", "pretrain": "pt"}
STAGE_CHOICES = ("sft", "dpo", "kto", "pt")
STAGE_LABEL = {"sft": "sft", "rm": "dpo", "kto": "kto", "pt": "pt"}

# the MiniCPM / OpenAI-style {"messages": [{"role", "content"}]} layout, registered as LLaMA-Factory suggests
MESSAGES_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}


def normalize_stage(stage: str | None) -> str | None:
    if stage is None:
        return None
    try:
        return STAGE_ALIASES[stage.lower()]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGE_CHOICES)}") from None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset_info entry as LLaMA-Factory resolves it, plus the training stage it is checked for."""

    entry: dict[str, Any]
    formatting: str
    ranking: Any
    stage: str  # sft | rm | kto | pt
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], stage: str | None = None) -> DatasetSpec:
        formatting = entry.get("formatting", "alpaca")
        ranking = entry.get("ranking", False)
        if "columns" in entry and isinstance(entry["columns"], Mapping):
            columns = {c: entry["columns"].get(c) for c in COLUMN_NAMES}
        else:
            columns = dict(DEFAULT_COLUMNS)
        if "tags" in entry and isinstance(entry["tags"], Mapping):
            tags = {t: entry["tags"].get(t) for t in TAG_NAMES}
        else:
            tags = dict(DEFAULT_TAGS)
        stage = normalize_stage(stage) or infer_stage(formatting, ranking, columns)
        return cls(dict(entry), formatting, ranking, stage, columns, tags)

    @property
    def names(self) -> dict[str, str | None]:
        """Placeholder values for the schema templates."""
        return {**self.columns, **self.tags}

    @property
    def schema_name(self) -> str:
        if self.stage == "pt" and self.formatting == "alpaca":
            return "pretrain-text"
        kind = {"rm": "ranking", "kto": "kto"}.get(self.stage, "sft")
        fmt = self.formatting if self.formatting in ("alpaca", "sharegpt", "openai") else "alpaca"
        return f"{fmt}-{kind}"

    @property
    def label(self) -> str:
        """Short human name of the layout, e.g. `sharegpt (messages: role/content)`."""
        if self.formatting == "alpaca":
            return "text" if self.stage == "pt" else "alpaca"
        return f"{self.formatting} ({self.columns.get('messages')}: {self.tags.get('role_tag')}/{self.tags.get('content_tag')})"


def infer_stage(formatting: str, ranking: Any, columns: Mapping[str, str | None]) -> str:
    if ranking is True:
        return "rm"
    if columns.get("kto_tag"):
        return "kto"
    if formatting == "alpaca" and columns.get("prompt") and not columns.get("response") and not columns.get("query"):
        return "pt"  # LLaMA-Factory's pre-training entries: {"columns": {"prompt": "text"}}
    return "sft"


def entry_for_format(fmt: str, file_name: str, stage: str | None = None, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The dataset_info entry that registers a file of layout `fmt` (what `--format` means)."""
    stage = normalize_stage(stage)
    keys = set(keys)
    entry: dict[str, Any] = {"file_name": file_name}
    if fmt == "text":
        entry["columns"] = {"prompt": "text" if "text" in keys or not keys else _first_text_key(keys)}
        return entry
    if fmt == "alpaca":
        cols = {"prompt": "instruction", "query": "input", "response": "output"}
        if keys:
            cols = {k: v for k, v in cols.items() if v in keys or k == "response"}
            for c in ("system", "history", "tools"):
                if c in keys:
                    cols[c] = c
        if stage == "rm" or (stage is None and {"chosen", "rejected"} <= keys):
            entry["ranking"] = True
            cols.pop("response", None)
            cols |= {"chosen": "chosen", "rejected": "rejected"}
        elif stage == "kto" or (stage is None and ("kto_tag" in keys or "label" in keys)):
            cols["kto_tag"] = "kto_tag" if "kto_tag" in keys or "label" not in keys else "label"
        if keys or "columns" in entry:
            entry["columns"] = cols
        return entry
    if fmt in ("sharegpt", "messages", "openai"):
        entry["formatting"] = "openai" if fmt == "openai" else "sharegpt"
        msg_col = "messages" if fmt in ("messages", "openai") else "conversations"
        if keys and msg_col not in keys:
            msg_col = "messages" if "messages" in keys else "conversations" if "conversations" in keys else msg_col
        cols: dict[str, str] = {"messages": msg_col}
        for c in ("system", "tools"):
            if c in keys:
                cols[c] = c
        for c in ("images", "videos", "audios"):
            if c in keys:
                cols[c] = c
        if stage == "rm" or (stage is None and {"chosen", "rejected"} <= keys):
            entry["ranking"] = True
            cols |= {"chosen": "chosen", "rejected": "rejected"}
        elif stage == "kto" or (stage is None and ("kto_tag" in keys or "label" in keys)):
            cols["kto_tag"] = "kto_tag" if "kto_tag" in keys or "label" not in keys else "label"
        entry["columns"] = cols
        if fmt in ("messages", "openai"):
            entry["tags"] = dict(MESSAGES_TAGS)
            if fmt == "openai":
                entry["tags"] |= {"observation_tag": "tool", "function_tag": "function_call"}
        return entry
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _first_text_key(keys: set[str]) -> str:
    for k in ("text", "content", "document"):
        if k in keys:
            return k
    return sorted(keys)[0]


def detect_format(records: Iterable[Any]) -> tuple[str | None, set[str]]:
    """Guess the layout from the first records: (format or None, union of their top-level keys)."""
    keys: set[str] = set()
    first_msgs = None
    tool_style = False  # OpenAI tool calling: tool_calls on assistant messages, role "tool" answers
    for rec in records:
        if isinstance(rec, dict):
            keys |= rec.keys()
            for col in ("messages", "conversations"):
                value = rec.get(col)
                if isinstance(value, list) and value and isinstance(value[0], dict):
                    if first_msgs is None:
                        first_msgs = (col, value[0])
                    tool_style = tool_style or any(
                        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in value)
    if first_msgs is not None:
        col, msg = first_msgs
        if "from" in msg or "value" in msg:
            return "sharegpt", keys
        if "role" in msg:
            return ("openai" if tool_style else "messages"), keys
    if "messages" in keys or "conversations" in keys:
        return ("messages" if "messages" in keys else "sharegpt"), keys
    if keys & {"instruction", "output", "chosen", "rejected"}:
        return "alpaca", keys
    if keys & {"text", "content", "document"} and len(keys) <= 2:
        return "text", keys
    return None, keys
