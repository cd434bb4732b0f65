"""Conversations -> token ids + labels for the native (transformers.Trainer) backend. Pure; no torch.

One sample is one whole conversation (`{"messages": [{"role": ..., "content": ...}, ...]}`), so the loss
covers every assistant reply in a single forward pass. The tokens are built with the model's own chat
template, and the label mask is derived from that template, not from hard-coded role markers:

1. Render the conversation prefix by prefix with `apply_chat_template(..., tokenize=False)`. For the
   assistant message k, its reply starts where `render(messages[:k], add_generation_prompt=True)` ends and
   its turn ends where `render(messages[:k + 1])` ends. Every prefix rendering must be a prefix of the full
   rendering (true for ChatML / MiniCPM4, Llama-3, Qwen2.5, ...); a template that renders earlier turns
   differently (e.g. one that strips reasoning from history) is refused with a clear error.
2. Tokenize the whole text once (`add_special_tokens=False`: the template writes BOS itself), so the ids are
   exactly `apply_chat_template(..., tokenize=True)`'s, and cut it at the replies by character offsets (a
   token belongs to a reply when it starts inside it). Slow tokenizers, which have no offsets, tokenize the
   prompt and reply segments one by one instead.
3. Label each reply up to and including its end-of-turn token (the tokenizer's EOS / the generation config's
   EOS ids, e.g. `<|im_end|>`); whatever the template writes after it (ChatML's "\\n") and every system/user
   token and padding is -100. A template that puts no end-of-turn token after a reply gets the EOS token
   appended to that reply, so that every assistant turn, not only the last, teaches the model to stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


# ---- reading -------------------------------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON array or a JSON Lines file of `{"messages": [...]}` records."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{p}: no such data file; pass a JSON or JSONL file of {{\"messages\": [...]}} records") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the data file ({exc})") from exc
    stripped = text.lstrip()
    if not stripped:
        raise UserError(f"{p}: the data file is empty; it needs at least one {{\"messages\": [...]}} record")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{p}: not valid JSON ({exc})") from exc
        records = data
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise UserError(f"{p}: line {lineno} is not valid JSON ({exc}); expected JSON Lines or a JSON array") from exc
    if not records:
        raise UserError(f"{p}: no records; it needs at least one {{\"messages\": [...]}} record")
    for i, record in enumerate(records):
        check_record(record, where=f"{p}: record {i}")
    return records


def check_record(record: Any, *, where: str) -> None:
    """The shape the trainer needs: messages with system/user/assistant roles, ending with an assistant reply."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise UserError(f"{where}: expected an object with a \"messages\" list")
    messages = record["messages"]
    if not messages:
        raise UserError(f"{where}: \"messages\" is empty")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(
                f"{where}: messages[{j}] must be {{\"role\": \"system|user|assistant\", \"content\": \"...\"}}, "
                f"got {json.dumps(m, ensure_ascii=False)[:80]}"
            )
        if m["role"] == "system" and j != 0:
            raise UserError(f"{where}: messages[{j}] is a system message; only the first message may be one")
    roles = [m["role"] for m in messages if m["role"] != "system"]
    for j, role in enumerate(roles):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise UserError(
                f"{where}: turns must alternate user, assistant, user, ... (after an optional system message); "
                f"turn {j} is {role!r}, expected {expected!r}"
            )
    if not roles or roles[-1] != "assistant":
        raise UserError(f"{where}: the conversation must end with an assistant reply (nothing to learn otherwise)")


def split_records(records: Sequence[dict], dev_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A deterministic train/dev split: at least one record in each."""
    import random

    if not 0.0 < dev_ratio < 1.0:
        raise UserError(f"--dev-ratio must be between 0 and 1 (exclusive), got {dev_ratio}")
    if len(records) < 2:
        raise UserError("--dev-ratio needs at least 2 training records to split off a validation set")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(records) - 1, max(1, round(len(records) * dev_ratio)))
    dev_idx = set(order[:n_dev])
    train = [r for i, r in enumerate(records) if i not in dev_idx]
    dev = [r for i, r in enumerate(records) if i in dev_idx]
    return train, dev


# ---- end-of-turn tokens --------------------------------------------------------------------------------
def end_of_turn_ids(tokenizer: Any, generation_eos: int | Iterable[int] | None = None) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus the generation config's EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if generation_eos is not None:
        ids.update(int(i) for i in ([generation_eos] if isinstance(generation_eos, int) else generation_eos))
    if not ids:
        raise UserError("the tokenizer has no EOS token, so replies cannot be taught to end; set eos_token")
    return ids


# ---- encoding ------------------------------------------------------------------------------------------
def _render(tokenizer: Any, messages: Sequence[dict], *, generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2 errors from the model's own template
        raise UserError(f"the model's chat template failed on a conversation: {exc}") from exc
    if not isinstance(text, str):  # pragma: no cover - defensive (batched input)
        raise UserError("the model's chat template did not return text")
    return text


def _spans(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """The full text and, per assistant message, (reply_start, reply_end, message_index) in characters."""
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int, int]] = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], generation_prompt=False) if k else ""
        upto = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not full.startswith(before) or not full.startswith(upto):
            raise UserError(
                "the model's chat template renders earlier turns differently from the conversation's end "
                f"(assistant message {k}), so its replies cannot be located; use a template without that "
                "behaviour (--chat-template FILE)"
            )
        start = len(before)
        prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        if full.startswith(prompt) and len(before) <= len(prompt) <= len(upto):
            start = len(prompt)
        # a template without a generation prompt: skip the turn header up to the reply text itself
        content = message["content"].strip()
        if content and start == len(before):
            found = full.find(content, start, len(upto))
            if found >= 0:
                start = found
        if spans and start < spans[-1][1]:  # pragma: no cover - defensive
            raise UserError(f"assistant message {k}: reply overlaps the previous one in the rendered template")
        spans.append((start, len(upto), k))
    return full, spans


def _pieces_by_offsets(tokenizer: Any, full: str, spans: list[tuple[int, int, int]]) -> list[tuple[list[int], bool]]:
    """Tokenize the whole text once (exactly the template's tokens, as at inference) and cut it at the replies
    by character offsets: a token belongs to a reply when it starts inside the reply's span."""
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    pieces: list[tuple[list[int], bool]] = []
    t = 0
    for start, end, _k in spans:
        prompt: list[int] = []
        while t < len(ids) and offsets[t][0] < start:
            prompt.append(ids[t])
            t += 1
        reply: list[int] = []
        while t < len(ids) and offsets[t][0] < end:
            reply.append(ids[t])
            t += 1
        pieces += [(prompt, False), (reply, True)]
    pieces.append((ids[t:], False))
    return pieces


def _pieces_by_segments(tokenizer: Any, full: str, spans: list[tuple[int, int, int]]) -> list[tuple[list[int], bool]]:
    """Slow tokenizers (no offsets): tokenize prompt and reply segments one by one."""

    def tok(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    pieces: list[tuple[list[int], bool]] = []
    cursor = 0
    for start, end, _k in spans:
        pieces += [(tok(full[cursor:start]), False), (tok(full[start:end]), True)]
        cursor = end
    pieces.append((tok(full[cursor:]), False))
    return pieces


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[dict],
    *,
    eot_ids: set[int] | None = None,
    max_length: int | None = None,
) -> Encoded:
    """Token ids of the whole conversation (model's chat template) and labels: -100 except assistant replies.

    Each reply is labelled up to and including its end-of-turn token; text after it (e.g. "\\n") is not.
    """
    eot = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    full, spans = _spans(tokenizer, messages)
    if getattr(tokenizer, "is_fast", False):
        pieces = _pieces_by_offsets(tokenizer, full, spans)
    else:
        pieces = _pieces_by_segments(tokenizer, full, spans)
    input_ids: list[int] = []
    labels: list[int] = []
    eos_id = int(tokenizer.eos_token_id)
    for ids, is_reply in pieces:
        if not is_reply:
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        last_eot = max((i for i, t in enumerate(ids) if t in eot), default=-1)
        if last_eot < 0:  # the template ends this turn without an end-of-turn token: add one
            ids = ids + [eos_id]
            last_eot = len(ids) - 1
        input_ids += ids
        labels += ids[: last_eot + 1] + [IGNORE_INDEX] * (len(ids) - last_eot - 1)
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return Encoded(input_ids=input_ids, labels=labels)


def encode_records(
    tokenizer: Any,
    records: Sequence[dict],
    *,
    eot_ids: set[int] | None = None,
    max_length: int | None = None,
    where: str = "data",
) -> tuple[list[Encoded], int]:
    """Encode every record; drop those left with no target token after truncation. Returns (encoded, dropped)."""
    encoded: list[Encoded] = []
    dropped = 0
    for i, record in enumerate(records):
        try:
            enc = encode_conversation(tokenizer, record["messages"], eot_ids=eot_ids, max_length=max_length)
        except UserError as exc:
            raise UserError(f"{where}: record {i}: {exc}") from exc
        if enc.num_target_tokens == 0:
            dropped += 1
            continue
        encoded.append(enc)
    if not encoded:
        raise UserError(
            f"{where}: no record has an assistant token within --max-length {max_length}; raise --max-length"
        )
    return encoded, dropped


def collate(batch: Sequence[Encoded | dict], pad_token_id: int) -> dict[str, list[list[int]]]:
    """Right-pad a batch: input_ids with the pad token, labels with -100, attention_mask 0 on padding."""
    rows = [(b.input_ids, b.labels) if isinstance(b, Encoded) else (b["input_ids"], b["labels"]) for b in batch]
    width = max(len(ids) for ids, _ in rows)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for ids, labels in rows:
        pad = width - len(ids)
        out["input_ids"].append(list(ids) + [pad_token_id] * pad)
        out["labels"].append(list(labels) + [IGNORE_INDEX] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
    return out
