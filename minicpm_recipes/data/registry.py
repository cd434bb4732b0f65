"""Safe edits of LLaMA-Factory's dataset_info.json: add or update one entry without touching anything else.

- The new entry is spliced into the original text (`splice_entry`, pure): every other byte stays as it was;
  the result is parsed back and must equal the old mapping plus the new entry, in the same key order.
- Registering what is already there writes nothing. A different definition under the same name is refused
  unless `force`. `file_name` must stay inside the dataset folder (no `..`, no absolute path or symlink out).
- Writes: temp file + fsync + rename, the previous file kept as `dataset_info.json.bak`, all under a file lock
  (`dataset_info.json.lock`) so that concurrent registrations never lose one another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..fsutil import atomic_write_bytes

Action = Literal["added", "updated", "unchanged"]
LOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class RegistrationPlan:
    """What registering would do, computed without writing."""

    path: Path
    name: str
    entry: dict[str, Any]
    action: Action
    previous: dict[str, Any] | None  # the entry there now (None: not there)
    old_text: str | None  # None: the file does not exist yet
    new_text: str

    @property
    def changes(self) -> bool:
        return self.action != "unchanged"


@dataclass(frozen=True)
class RegisterOutcome:
    action: Action
    path: Path
    backup_path: Path | None  # the previous file's copy (None when nothing was written or no file existed)
    name: str
    entry: dict[str, Any]


# ----------------------------------------------------------------------------------- text splicing (pure)


class _Span:
    __slots__ = ("key", "key_start", "value_start", "value_end")

    def __init__(self, key: str, key_start: int, value_start: int, value_end: int):
        self.key, self.key_start, self.value_start, self.value_end = key, key_start, value_start, value_end


_WS = " \t\r\n"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def scan_top_level(text: str) -> tuple[int, int, list[_Span]]:
    """Locate the top-level object of a JSON text: (index of `{`, index of `}`, one span per key).
    Raises ValueError where the text is not a JSON object."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        raise ValueError("the file is not a JSON object")
    open_at = i
    i = _skip_ws(text, i + 1)
    spans: list[_Span] = []
    if i < len(text) and text[i] == "}":
        close_at = i
    else:
        while True:
            if i >= len(text) or text[i] != '"':
                raise ValueError(f"expected a key at character {i}")
            key_start = i
            key, i = json.decoder.scanstring(text, i + 1)
            i = _skip_ws(text, i)
            if i >= len(text) or text[i] != ":":
                raise ValueError(f"expected ':' at character {i}")
            i = _skip_ws(text, i + 1)
            _, end = decoder.raw_decode(text, i)
            spans.append(_Span(key, key_start, i, end))
            i = _skip_ws(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < len(text) and text[i] == "}":
                close_at = i
                break
            raise ValueError(f"expected ',' or '}}' at character {i}")
    if _skip_ws(text, close_at + 1) != len(text):
        raise ValueError("extra text after the JSON object")
    return open_at, close_at, spans


def _line_indent(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    j = start
    while j < index and text[j] in " \t":
        j += 1
    return text[start:j] if j == index else ""


def _serialize(value: Any, indent_unit: str, base_indent: str, newline: str, pretty: bool) -> str:
    if not pretty:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    text = json.dumps(value, ensure_ascii=False, indent=indent_unit)
    return text.replace("\n", newline + base_indent)


def splice_entry(text: str | None, name: str, entry: dict[str, Any]) -> str:
    """Return `text` (a dataset_info.json; None: no file yet) with `name` set to `entry`. Every byte outside
    the one value (or the one inserted member) is kept. Raises ValueError when `text` is not a JSON object."""
    if text is None or not text.strip():
        return json.dumps({name: entry}, ensure_ascii=False, indent=2) + "\n"
    newline = "\r\n" if "\r\n" in text else "\n"
    open_at, close_at, spans = scan_top_level(text)
    matches = [s for s in spans if s.key == name]
    if len(matches) > 1:
        raise ValueError(f"the name {name!r} is defined {len(matches)} times; keep one of them")
    pretty = "\n" in text[open_at:close_at]
    if spans:
        ref = spans[0]
        base = _line_indent(text, ref.key_start) if pretty else ""
        unit = base or "  "
    else:
        base, unit = "  ", "  "
    value = _serialize(entry, unit, base, newline, pretty)
    if matches:
        s = matches[0]
        return text[: s.value_start] + value + text[s.value_end:]
    member = json.dumps(name, ensure_ascii=False) + ": " + value
    if spans:
        last = spans[-1]
        sep = "," + (newline + base if pretty else " ")
        return text[: last.value_end] + sep + member + text[last.value_end:]
    # empty object: `{}` or `{ \n }`
    inner = newline + base + member + newline
    return text[: open_at + 1] + inner + text[close_at:]


def verify_splice(old_text: str | None, new_text: str, name: str, entry: dict[str, Any]) -> None:
    """The spliced text must parse to the old mapping with `name` set to `entry`, keys in the same order."""
    new = json.loads(new_text)
    old = json.loads(old_text) if old_text and old_text.strip() else {}
    expected = dict(old)
    expected[name] = entry
    if new != expected or list(new) != list(expected):
        raise AssertionError("dataset_info.json splice check failed; nothing was written")


# ------------------------------------------------------------------------------------------- checks


def check_file_name(file_name: Any, dataset_dir: Path, name: str) -> Path:
    """Where `file_name` points, refusing anything that leaves the dataset folder. Returns the resolved path."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise UserError(f"entry {name!r}: file_name must be a non-empty path relative to {dataset_dir}")
    root = Path(os.path.realpath(dataset_dir))
    raw = Path(file_name)
    candidate = raw if raw.is_absolute() else Path(dataset_dir) / raw
    target = Path(os.path.realpath(candidate))
    if ".." in raw.parts or not (target == root or target.is_relative_to(root)):
        raise UserError(f"entry {name!r}: file_name {file_name!r} points outside the dataset folder {root} "
                        f"(to {target}); copy or move the data into {root} and use a path relative to it")
    return target


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); LLaMA-Factory cannot read it either") from None


def _entry_problems(name: str, entry: dict[str, Any]) -> list[str]:
    from .schemas import check_dataset_info_entry

    return [p.format() if hasattr(p, "format") else str(p) for p in check_dataset_info_entry(name, entry)]


def _validate_data(name: str, entry: dict[str, Any], dataset_dir: Path, target: Path) -> None:
    from .validate import validate_file

    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    if not files:
        raise UserError(f"entry {name!r}: {target} holds no data file")
    for path in files:
        result = validate_file(path, entry=entry, dataset_dir=dataset_dir, max_errors=3)
        if not result.ok:
            shown = "; ".join(p.format() if hasattr(p, "format") else str(p) for p in result.problems[:3])
            raise UserError(f"{path} does not fit the entry {name!r}: {result.invalid} of {result.records} "
                            f"record(s) invalid: {shown}; fix the data or the entry (`minicpm-recipes validate "
                            f"{path}` lists every problem)")


def _normalize_entry(entry: Any, name: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise UserError(f"entry {name!r}: expected a JSON object, got {type(entry).__name__}")
    try:
        return json.loads(json.dumps(entry, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise UserError(f"entry {name!r}: not JSON-serializable ({exc})") from None


def _real_target(path: Path) -> Path:
    """Edit a symlinked dataset_info.json where it really is (the rename must not replace the link)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _checked_entry(given: Path, name: str, entry: Any, *, validate: bool,
                   dataset_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The entry, normalized, once it is one LLaMA-Factory reads and its data (validate=True) fits it."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise UserError(f"dataset name {name!r}: expected a non-empty name without surrounding spaces")
    entry = _normalize_entry(entry, name)
    # LLaMA-Factory reads file_name relative to the folder it is given (a symlinked dataset_info.json's folder)
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else given.parent
    if not dataset_dir.is_dir():
        raise UserError(f"dataset folder {dataset_dir} does not exist; create it or pass the right --dataset-dir")
    problems = _entry_problems(name, entry)
    if problems:
        raise UserError(f"entry {name!r} is not one LLaMA-Factory reads: {'; '.join(problems[:5])}")
    if "file_name" in entry:
        target = check_file_name(entry["file_name"], dataset_dir, name)
        if not target.exists():
            raise UserError(f"entry {name!r}: file_name {entry['file_name']!r} does not exist in {dataset_dir}")
        if validate:
            _validate_data(name, entry, dataset_dir, target)
    return entry


class NameTaken(UserError):
    """The name is registered with another definition (and no force)."""

    def __init__(self, path: Path, name: str, previous: Any, entry: dict[str, Any],
                 fix: str = "pass --force to replace it, or pick another --name"):
        self.path, self.name, self.previous, self.entry = path, name, previous, entry
        super().__init__(f"{path}: {name!r} is already registered with a different definition "
                         f"({json.dumps(previous, ensure_ascii=False)}; new: {json.dumps(entry, ensure_ascii=False)}); "
                         f"{fix}")


def _plan_on_text(path: Path, old_text: str | None, name: str, entry: dict[str, Any], force: bool) -> RegistrationPlan:
    """Registering a checked entry into the text `old_text` of `path` (None: no file yet). Pure."""
    try:
        current = json.loads(old_text) if old_text is not None and old_text.strip() else {}
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); fix it (a backup may be at {path}.bak)") from None
    if not isinstance(current, dict):
        raise UserError(f"{path}: expected a JSON object of dataset entries, got {type(current).__name__}")
    previous = current.get(name)
    if name in current and previous == entry:
        return RegistrationPlan(path, name, entry, "unchanged", previous, old_text, old_text or "")
    if name in current and not force:
        raise NameTaken(path, name, previous, entry)
    try:
        new_text = splice_entry(old_text, name, entry)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    verify_splice(old_text, new_text, name, entry)
    return RegistrationPlan(path, name, entry, "updated" if name in current else "added", previous, old_text, new_text)


def plan_registration(
    dataset_info_path: str | os.PathLike,
    name: str,
    entry: dict[str, Any],
    *,
    force: bool = False,
    validate: bool = True,
    dataset_dir: str | os.PathLike | None = None,
) -> RegistrationPlan:
    """What `register_entry` would do (added | updated | unchanged and the new text), without writing.
    Raises UserError for a bad entry, data that does not fit it, or a conflicting name without `force`."""
    given = Path(dataset_info_path)
    path = _real_target(given)
    entry = _checked_entry(given, name, entry, validate=validate, dataset_dir=dataset_dir)
    return _plan_on_text(path, _read_text(path), name, entry, force)


def register_entry(
    dataset_info_path: str | os.PathLike,
    name: str,
    entry: dict[str, Any],
    *,
    force: bool = False,
    validate: bool = True,
    dataset_dir: str | os.PathLike | None = None,
) -> RegisterOutcome:
    """Add or update `name` in dataset_info.json (created when missing). Locked, atomic, backed up."""
    return register_entries(dataset_info_path, [(name, entry)], force=force, validate=validate,
                            dataset_dir=dataset_dir)[0]


def register_entries(
    dataset_info_path: str | os.PathLike,
    entries: Sequence[tuple[str, dict[str, Any]]],
    *,
    force: bool = False,
    validate: bool = True,
    dataset_dir: str | os.PathLike | None = None,
) -> list[RegisterOutcome]:
    """Add or update several entries in one locked, atomic write: all of them or none, and the backup
    (`dataset_info.json.bak`) is the file as it was before this call."""
    from filelock import FileLock, Timeout

    given = Path(dataset_info_path)
    path = _real_target(given)
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such folder; create it first")
    names = [name for name, _ in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{', '.join(map(repr, twice))}: given more than once; register each name once")
    # validate the data first, outside the lock (it reads whole files); plan again under the lock
    checked = [(name, _checked_entry(given, name, entry, validate=validate, dataset_dir=dataset_dir))
               for name, entry in entries]

    def plan_all(text: str | None) -> tuple[list[RegistrationPlan], str | None]:
        plans = []
        for name, entry in checked:
            plans.append(_plan_on_text(path, text, name, entry, force))
            text = plans[-1].new_text if plans[-1].changes else text
        return plans, text

    plans, _ = plan_all(_read_text(path))
    if not any(p.changes for p in plans):  # already registered: no write, not even the lock file
        return [RegisterOutcome("unchanged", path, None, p.name, p.entry) for p in plans]
    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            old_text = _read_text(path)
            plans, new_text = plan_all(old_text)
            backup = None
            if any(p.changes for p in plans):
                if old_text is not None:
                    backup = path.with_name(path.name + ".bak")
                    atomic_write_bytes(backup, old_text.encode("utf-8"))
                atomic_write_bytes(path, (new_text or "").encode("utf-8"))
            return [RegisterOutcome(p.action, path, backup if p.changes else None, p.name, p.entry) for p in plans]
    except Timeout:
        raise UserError(f"{path}: another registration holds {lock.lock_file} for over {LOCK_TIMEOUT_S}s; "
                        "retry, or delete the lock file if no other process is running") from None
    except PermissionError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror}); check the folder's permissions") from None
