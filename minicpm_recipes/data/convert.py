"""Convert chat data to a LLaMA-Factory format: MiniCPM `messages`, ChatGLM3 `conversations`, sharegpt
(`from`/`value`), alpaca files and chat-record export folders -> sharegpt `messages` (role/content) or alpaca.

Pure core: `to_turns` (one source record -> normalized turns), `fix_turns`, `render_record` (turns -> one output
record), `build_entry` (the dataset_info entry), `split_indices` (reproducible train/dev split).
I/O at the edges: `read_records` streams JSON lines (a JSON array is read whole), `convert` writes atomically.
"""

from __future__ import annotations

import ast
import json
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsutil import fsync_dir, new_file_mode

SOURCE_FORMATS = ("auto", "messages", "chatglm3", "sharegpt", "alpaca", "chat-export")
TARGET_FORMATS = ("sharegpt", "alpaca")

# normalized roles (LLaMA-Factory's own role names)
SYSTEM, USER, ASSISTANT, FUNCTION, OBSERVATION = "system", "user", "assistant", "function_call", "observation"
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call"}
_SHAREGPT_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM,
                   "observation": OBSERVATION, "function_call": FUNCTION, "function": FUNCTION, "tool": OBSERVATION}


class RecordError(ValueError):
    """One record cannot be converted; the caller adds the file and record number."""


@dataclass
class Turns:
    """One conversation, normalized: optional system prompt, alternating messages, optional tools (JSON text)."""

    system: str
    messages: list[dict[str, str]]  # role in user/assistant/function_call/observation, content str
    tools: str = ""


# ---------------------------------------------------------------------------------------------- reading


def _loads(text: str | bytes) -> Any:
    try:
        import orjson

        return orjson.loads(text)
    except ImportError:  # pragma: no cover - orjson is a core dependency
        return json.loads(text)


def read_records(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """Yield (record index, 1-based line or None, record) of a JSON array or JSON-lines file.

    The layout is sniffed, not taken from the extension: ChatGLM3's `train.json` files are JSON lines.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}); check the path") from None
    with fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        fh.seek(0)
        if head.startswith(b"["):
            try:
                data = _loads(fh.read().removeprefix(b"\xef\xbb\xbf"))
            except ValueError as exc:
                raise UserError(f"{path}: not valid JSON ({exc}); fix the file or write it as JSON lines") from None
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON array of records or JSON lines")
            for i, rec in enumerate(data):
                yield i, None, rec
            return
        index = 0
        for lineno, line in enumerate(fh, 1):
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                rec = _loads(line)
            except ValueError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc}); each line must hold one JSON record "
                                "(or make the whole file a JSON array)") from None
            yield index, lineno, rec
            index += 1


def count_records(path: Path) -> int:
    return sum(1 for _ in read_records(path))


def detect_source_format(record: Any) -> str | None:
    """messages | chatglm3 | sharegpt | alpaca from one record, or None."""
    if not isinstance(record, dict):
        return None
    for col in ("messages", "conversations"):
        msgs = record.get(col)
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict):
            if "from" in msgs[0] or "value" in msgs[0]:
                return "sharegpt"
            if "role" in msgs[0]:
                return "messages" if col == "messages" else "chatglm3"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


# ------------------------------------------------------------------------------------- record -> turns


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise RecordError(f"{where}: expected a string, got {type(value).__name__}")


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _parse_tool_call(code: str) -> dict[str, Any] | None:
    """ChatGLM3 writes a call as `tool_call(a=1, b="x")` (optionally in a ``` block); -> its keyword arguments."""
    code = code.strip().strip("`").strip()
    if code.startswith("python"):
        code = code[len("python"):].strip()
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    try:
        return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        return None


def _function_call(name: str, arguments: Any) -> dict[str, str]:
    return {"role": FUNCTION, "content": json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)}


def _role_messages(msgs: Any, col: str, *, chatglm3: bool) -> tuple[str, list[dict[str, str]]]:
    """`[{"role", "content", ...}]` (MiniCPM/OpenAI messages or ChatGLM3 conversations) -> (system, messages)."""
    if not isinstance(msgs, list):
        raise RecordError(f"{col}: expected a list of messages, got {type(msgs).__name__}")
    system_parts: list[str] = []
    out: list[dict[str, str]] = []
    for i, msg in enumerate(msgs):
        where = f"{col}[{i}]"
        if not isinstance(msg, dict):
            raise RecordError(f"{where}: expected an object with role and content")
        role = msg.get("role")
        if role == "system":
            if out:
                raise RecordError(f"{where}: a system message after the conversation started; "
                                  "LLaMA-Factory only takes the system prompt first")
            system_parts.append(_text(msg.get("content"), f"{where}.content"))
        elif role == "user":
            out.append({"role": USER, "content": _text(msg.get("content"), f"{where}.content")})
        elif role == "assistant":
            calls = msg.get("tool_calls")
            metadata = msg.get("metadata")
            next_role = msgs[i + 1].get("role") if i + 1 < len(msgs) and isinstance(msgs[i + 1], dict) else None
            if calls:  # OpenAI style
                if msg.get("content"):
                    out.append({"role": ASSISTANT, "content": _text(msg.get("content"), f"{where}.content")})
                fc = []
                for call in calls:
                    fn = call.get("function", call) if isinstance(call, dict) else {}
                    args = fn.get("arguments", {})
                    if isinstance(args, str):
                        try:
                            args = json.loads(args)
                        except ValueError:
                            raise RecordError(f"{where}.tool_calls: arguments are not JSON") from None
                    fc.append({"name": fn.get("name"), "arguments": args})
                out.append({"role": FUNCTION, "content": json.dumps(fc if len(fc) > 1 else fc[0], ensure_ascii=False)})
            elif chatglm3 and metadata and str(metadata).strip() and next_role == "observation":
                # native ChatGLM3 call: <|assistant|>tool_name \n tool_call(...)
                args = _parse_tool_call(_text(msg.get("content"), f"{where}.content"))
                if args is None:
                    raise RecordError(f"{where}.content: cannot read the call of tool {metadata!r}; "
                                      "expected tool_call(name=value, ...)")
                out.append(_function_call(str(metadata).strip(), args))
            else:
                out.append({"role": ASSISTANT, "content": _text(msg.get("content"), f"{where}.content")})
        elif role == "tool" and chatglm3:
            # ChatGLM3 finetune_demo: {"role": "tool", "name", "parameters", "observation"}
            if "name" not in msg:
                raise RecordError(f"{where}: a tool message needs name, parameters and observation")
            out.append(_function_call(msg["name"], msg.get("parameters", {})))
            out.append({"role": OBSERVATION, "content": _json_text(msg.get("observation", ""))})
        elif role in ("observation", "tool", "function"):
            out.append({"role": OBSERVATION, "content": _json_text(msg.get("content", ""))})
        else:
            raise RecordError(f"{where}.role: unknown role {role!r}; expected system, user, assistant, "
                              "observation or tool")
    return "\n".join(system_parts), out


def _record_tools(record: Any) -> Any:
    """A record's tool definitions: its `tools` field, or (ChatGLM3) the `tools` of its system message."""
    if not isinstance(record, dict):
        return None
    if record.get("tools"):
        return record["tools"]
    for col in ("conversations", "messages"):
        msgs = record.get(col)
        if isinstance(msgs, list):
            for msg in msgs:
                if isinstance(msg, dict) and msg.get("role") == "system" and msg.get("tools"):
                    return msg["tools"]
    return None


def to_turns(record: Any, fmt: str) -> Turns:
    """One source record -> Turns. Raises RecordError naming the field."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    tools = _record_tools(record)
    tools = _json_text(tools) if tools else ""
    if fmt in ("messages", "chatglm3", "chat-export"):
        col = "messages" if "messages" in record else "conversations"
        if col not in record:
            raise RecordError("no messages or conversations field")
        system, msgs = _role_messages(record[col], col, chatglm3=fmt != "messages")
        if record.get("system"):
            system = "\n".join(x for x in (_text(record["system"], "system"), system) if x)
        return Turns(system, msgs, tools)
    if fmt == "sharegpt":
        col = "messages" if "messages" in record else "conversations"
        msgs = record.get(col)
        if not isinstance(msgs, list):
            raise RecordError(f"{col}: expected a list of messages")
        system, out = _text(record.get("system"), "system"), []
        for i, msg in enumerate(msgs):
            if not isinstance(msg, dict) or msg.get("from") not in _SHAREGPT_ROLES:
                raise RecordError(f"{col}[{i}].from: expected one of human, gpt, system, observation, function_call")
            role = _SHAREGPT_ROLES[msg["from"]]
            content = _text(msg.get("value"), f"{col}[{i}].value")
            if role == SYSTEM:
                if out:
                    raise RecordError(f"{col}[{i}]: a system message after the conversation started")
                system = content
            else:
                out.append({"role": role, "content": content})
        return Turns(system, out, tools)
    if fmt == "alpaca":
        if "chosen" in record or "rejected" in record:
            raise RecordError("preference (chosen/rejected) records are not converted; register the file as it is "
                              "with `minicpm-recipes register`")
        out = []
        history = record.get("history") or []
        if not isinstance(history, list):
            raise RecordError("history: expected a list of [instruction, response] pairs")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RecordError(f"history[{i}]: expected an [instruction, response] pair")
            out += [{"role": USER, "content": _text(pair[0], f"history[{i}][0]")},
                    {"role": ASSISTANT, "content": _text(pair[1], f"history[{i}][1]")}]
        # exactly LLaMA-Factory's alpaca reading: instruction and input joined by a newline
        query = [x for x in (_text(record.get("instruction"), "instruction"), _text(record.get("input"), "input")) if x]
        out += [{"role": USER, "content": "\n".join(query)},
                {"role": ASSISTANT, "content": _text(record.get("output"), "output")}]
        return Turns(_text(record.get("system"), "system"), out, tools)
    raise ValueError(f"unknown source format {fmt!r}")


# ---------------------------------------------------------------------------------- checks and fixes


def _odd_ok(role: str) -> bool:
    return role in (USER, OBSERVATION)


def check_turns(turns: Turns) -> str | None:
    """Why LLaMA-Factory would drop this conversation, or None: it needs user/observation at even positions,
    assistant/function_call at odd ones, an even count, and non-empty text."""
    msgs = turns.messages
    if not msgs:
        return "no user/assistant messages"
    for i, m in enumerate(msgs):
        want_user = i % 2 == 0
        if m["role"] == FUNCTION and i and msgs[i - 1]["role"] == ASSISTANT:
            return (f"message {i - 1} is assistant text right before a tool call; LLaMA-Factory holds one of them "
                    "per turn (--fix-turns drops the text)")
        if want_user != _odd_ok(m["role"]):
            expected = "user (or observation)" if want_user else "assistant (or a function call)"
            return f"message {i} has role {m['role']}, expected {expected}; roles must alternate starting with user"
    if len(msgs) % 2:
        return "the conversation ends with a user message; it must end with an assistant message"
    for i, m in enumerate(msgs):
        if not m["content"].strip():
            return f"message {i} ({m['role']}) is empty"
    return None


def fix_turns(turns: Turns) -> tuple[Turns | None, list[str]]:
    """Repair what chat exports typically have: consecutive messages of one role (joined by a newline), replies
    before the first user message and an unanswered last message (dropped), empty messages (dropped); and
    assistant text right before a tool call (ChatGLM3's "thought"; dropped: LLaMA-Factory has no place for it).
    Returns (turns or None when nothing usable is left, what was changed)."""
    notes: list[str] = []
    merged: list[dict[str, str]] = []
    for m in turns.messages:
        if m["role"] in (USER, ASSISTANT) and not m["content"].strip():
            notes.append("dropped an empty message")
            continue
        if merged and merged[-1]["role"] == ASSISTANT and m["role"] == FUNCTION:
            merged[-1] = dict(m)
            notes.append("dropped assistant text right before a tool call")
            continue
        if merged and merged[-1]["role"] == m["role"] and m["role"] in (USER, ASSISTANT):
            merged[-1] = {"role": m["role"], "content": merged[-1]["content"] + "\n" + m["content"]}
            notes.append(f"joined consecutive {m['role']} messages")
        else:
            merged.append(dict(m))
    while merged and not _odd_ok(merged[0]["role"]):
        merged.pop(0)
        notes.append("dropped a reply before the first user message")
    while merged and _odd_ok(merged[-1]["role"]):
        merged.pop()
        notes.append("dropped an unanswered last message")
    fixed = Turns(turns.system, merged, turns.tools)
    if not merged or check_turns(fixed):
        return None, notes + ["dropped a conversation without a usable user/assistant exchange"]
    return fixed, notes


# ------------------------------------------------------------------------------------ turns -> output


def render_record(turns: Turns, target: str, *, with_tools: bool = False) -> dict[str, Any]:
    """Normalized turns -> one record of the target format."""
    if target == "sharegpt":
        msgs = ([{"role": "system", "content": turns.system}] if turns.system else []) + [
            {"role": m["role"], "content": m["content"]} for m in turns.messages]
        rec: dict[str, Any] = {"messages": msgs}
        if with_tools:
            rec["tools"] = turns.tools
        return rec
    if target == "alpaca":
        if any(m["role"] in (FUNCTION, OBSERVATION) for m in turns.messages):
            raise RecordError("has tool calls, which alpaca cannot hold; convert with --to sharegpt")
        msgs = turns.messages
        history = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs) - 2, 2)]
        return {"instruction": msgs[-2]["content"], "input": "", "output": msgs[-1]["content"],
                "system": turns.system, "history": history}
    raise ValueError(f"unknown target format {target!r}")


def build_entry(file_name: str, target: str, *, with_tools: bool = False) -> dict[str, Any]:
    """The dataset_info.json entry that makes LLaMA-Factory read a file written by `render_record`."""
    if target == "sharegpt":
        columns = {"messages": "messages"}
        if with_tools:
            columns["tools"] = "tools"
        return {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(SHAREGPT_TAGS)}
    if target == "alpaca":
        return {"file_name": file_name, "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                    "system": "system", "history": "history"}}
    raise ValueError(f"unknown target format {target!r}")


def split_indices(n: int, dev_ratio: float, seed: int) -> set[int]:
    """Reproducible dev indices: round(n * ratio) records (at least 1 when ratio > 0 and n >= 2)."""
    if not 0 <= dev_ratio < 1:
        raise UserError(f"--dev-ratio {dev_ratio}: expected a number in [0, 1), e.g. 0.1")
    if dev_ratio == 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(n * dev_ratio)))
    return set(random.Random(seed).sample(range(n), k))


# ---------------------------------------------------------------------------------------------- I/O


class _AtomicJsonArray:
    """Stream records into a JSON array (one record per line) in a temp file; rename over the target on commit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(("[\n" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        self.count += 1

    def finish(self) -> None:
        """End the array and make the temp file durable (the target is not touched yet)."""
        self.fh.write("[]\n" if self.count == 0 else "\n]\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def same_as_target(self) -> bool:
        """The target exists with exactly the finished content."""
        try:
            if self.path.stat().st_size != os.stat(self.tmp).st_size:
                return False
        except FileNotFoundError:
            return False
        with open(self.path, "rb") as a, open(self.tmp, "rb") as b:
            while True:
                x, y = a.read(1 << 20), b.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True

    def commit(self) -> None:
        """Rename the finished temp file over the target."""
        os.chmod(self.tmp, new_file_mode())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


@dataclass
class Source:
    """Where the records of one split come from: (file, format) pairs in order."""

    files: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class SplitReport:
    file: Path
    entry_name: str
    entry: dict[str, Any]
    records: int = 0


@dataclass
class ConvertReport:
    train: SplitReport
    dev: SplitReport | None
    read: int = 0
    dropped: int = 0
    fixes: dict[str, int] = field(default_factory=dict)
    source_format: str = ""
    split_from_train: bool = False
    unchanged: list[Path] = field(default_factory=list)  # outputs that already held exactly this content

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        out = {self.train.entry_name: self.train.entry}
        if self.dev is not None:
            out[self.dev.entry_name] = self.dev.entry
        return out


def _chat_export_files(folder: Path) -> tuple[list[Path], list[Path]]:
    train = sorted((p for p in folder.rglob("*_train.json") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    dev = sorted((p for p in folder.rglob("*_dev.json") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    return train, dev


def _first_record(path: Path) -> Any:
    for _, _, rec in read_records(path):
        return rec
    return None


def _file_format(path: Path, fmt: str) -> str:
    if fmt not in ("auto", "chat-export"):
        return fmt
    detected = detect_source_format(_first_record(path))
    if detected is None:
        if fmt == "chat-export":
            return "chat-export"
        raise UserError(f"{path}: cannot tell its format from the first record; pass --from messages, chatglm3, "
                        "sharegpt or alpaca")
    return "chat-export" if fmt == "chat-export" and detected in ("messages", "chatglm3") else detected


def resolve_sources(inputs: list[Path], fmt: str, dev: Path | None) -> tuple[Source, Source | None, str]:
    """Input paths -> (train source, dev source or None, the source format reported)."""
    if fmt not in SOURCE_FORMATS:
        raise UserError(f"--from {fmt}: unknown format; use one of {', '.join(SOURCE_FORMATS)}")
    train, dev_src = Source(), None
    for path in inputs:
        if path.is_dir():
            t, d = _chat_export_files(path)
            if t or d:
                if fmt not in ("auto", "chat-export"):
                    raise UserError(f"{path}: a chat-export folder (*_train.json / *_dev.json) holds conversations; "
                                    "use --from chat-export (or leave --from out)")
                train.files += [(p, _file_format(p, "chat-export")) for p in t]
                if d:
                    dev_src = dev_src or Source()
                    dev_src.files += [(p, _file_format(p, "chat-export")) for p in d]
                fmt_seen = "chat-export"
            elif (path / "train.json").is_file():  # a train.json / dev.json pair, as in MiniCPM's examples
                train.files.append((path / "train.json", _file_format(path / "train.json", fmt)))
                if (path / "dev.json").is_file():
                    dev_src = dev_src or Source()
                    dev_src.files.append((path / "dev.json", _file_format(path / "dev.json", fmt)))
                fmt_seen = train.files[-1][1]
            else:
                raise UserError(f"{path}: a folder without *_train.json / *_dev.json files or a train.json; "
                                "pass the data file(s) themselves")
        elif path.is_file():
            train.files.append((path, _file_format(path, fmt)))
            fmt_seen = train.files[-1][1]
        else:
            raise UserError(f"{path}: no such file or folder")
    if dev is not None:
        if not dev.is_file():
            raise UserError(f"--dev {dev}: no such file")
        dev_src = Source([(dev, _file_format(dev, fmt))])
    if not train.files:
        raise UserError(f"{', '.join(map(str, inputs))}: found no training files (*_train.json)")
    formats = {f for _, f in train.files}
    return train, dev_src, fmt_seen if len(formats) == 1 else "+".join(sorted(formats))


def _scan_tools(sources: Iterable[Source]) -> bool:
    for src in sources:
        for path, _ in src.files:
            for _, _, rec in read_records(path):
                if _record_tools(rec):
                    return True
    return False


LOSS_NOTE = ("ignored per-message `loss` flags (LLaMA-Factory trains on every assistant turn; "
             "`mask_history: true` trains on the last one only)")


def _has_loss_flags(record: Any) -> bool:
    msgs = record.get("conversations") if isinstance(record, dict) else None
    return isinstance(msgs, list) and any(isinstance(m, dict) and "loss" in m for m in msgs)


def convert(
    inputs: list[Path],
    out_dir: Path,
    name: str,
    *,
    source_format: str = "auto",
    target: str = "sharegpt",
    dev: Path | None = None,
    dev_ratio: float = 0.1,
    seed: int = 42,
    fix: bool | None = None,
    overwrite: bool = False,
) -> ConvertReport:
    """Convert `inputs` into OUT_DIR/NAME_train.json (+ NAME_dev.json) and return the report with the entries."""
    if target not in TARGET_FORMATS:
        raise UserError(f"--to {target}: unknown format; use sharegpt or alpaca")
    out_dir = Path(out_dir)
    train_src, dev_src, fmt_seen = resolve_sources([Path(p) for p in inputs], source_format, dev)
    if fix is None:
        fix = fmt_seen == "chat-export"
    with_tools = target == "sharegpt" and _scan_tools([s for s in (train_src, dev_src) if s])

    split = dev_src is None and dev_ratio > 0
    train_path = out_dir / f"{name}_train.json"
    dev_path = out_dir / f"{name}_dev.json"
    targets = [train_path] + ([dev_path] if (dev_src is not None or split) else [])
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {out_dir}: is a file; pass a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    inputs_resolved = {p.resolve() for s in (train_src, dev_src) if s for p, _ in s.files}
    for t in targets:
        if t.resolve() in inputs_resolved:
            raise UserError(f"{t}: is also an input; write to another folder (-o) or use another --name")

    report = ConvertReport(
        train=SplitReport(train_path, name, build_entry(train_path.name, target, with_tools=with_tools)),
        dev=(SplitReport(dev_path, f"{name}_dev", build_entry(dev_path.name, target, with_tools=with_tools))
             if len(targets) > 1 else None),
        source_format=fmt_seen, split_from_train=split and len(targets) > 1)

    dev_idx: set[int] = set()
    if split:
        n = sum(count_records(p) for p, _ in train_src.files)
        dev_idx = split_indices(n, dev_ratio, seed)
        if not dev_idx:
            report.dev = None
            report.split_from_train = False

    writers: dict[str, _AtomicJsonArray] = {}
    try:
        writers["train"] = _AtomicJsonArray(train_path)
        if report.dev is not None:
            writers["dev"] = _AtomicJsonArray(dev_path)
    except OSError as exc:
        for w in writers.values():
            w.abort()
        raise UserError(f"-o {out_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        def feed(src: Source, default_split: str, use_idx: bool, start: int) -> int:
            index = start
            for path, fmt in src.files:
                for rec_no, line, rec in read_records(path):
                    where = f"{path}:{line}" if line else f"{path}"
                    split_name = "dev" if use_idx and index in dev_idx else default_split
                    index += 1
                    report.read += 1
                    try:
                        turns = to_turns(rec, fmt)
                        if fmt in ("chatglm3", "chat-export") and _has_loss_flags(rec):
                            report.fixes[LOSS_NOTE] = report.fixes.get(LOSS_NOTE, 0) + 1
                        if fix:
                            turns, notes = fix_turns(turns)
                            for note in notes:
                                report.fixes[note] = report.fixes.get(note, 0) + 1
                            if turns is None:
                                report.dropped += 1
                                continue
                        else:
                            problem = check_turns(turns)
                            if problem:
                                raise RecordError(problem + " (or pass --fix-turns to repair such records)")
                        out = render_record(turns, target, with_tools=with_tools)
                    except RecordError as exc:
                        raise UserError(f"{where}: record {rec_no}: {exc}") from None
                    writers[split_name].write(out)
            return index

        feed(train_src, "train", bool(dev_idx), 0)
        if dev_src is not None:
            feed(dev_src, "dev", False, 0)
        if writers["train"].count == 0:
            raise UserError(f"{', '.join(map(str, inputs))}: no usable record to write")
        for w in writers.values():
            w.finish()
        same = {w.path: w.same_as_target() for w in writers.values()}
        for w in writers.values():  # all or nothing: no file is replaced unless every one may be
            if w.path.exists() and not overwrite and not same[w.path]:
                raise UserError(f"{w.path}: already exists with other content; pass --force to replace it")
        for w in writers.values():
            if same[w.path]:
                report.unchanged.append(w.path)
            else:
                w.commit()
    except OSError as exc:  # unreadable input, full disk, ...: nothing is replaced, temp files go
        raise UserError(f"{exc.filename or out_dir}: {exc.strerror or exc}; conversion stopped") from None
    finally:
        for w in writers.values():
            w.abort()
    report.train.records = writers["train"].count
    if report.dev is not None:
        report.dev.records = writers["dev"].count
    return report
