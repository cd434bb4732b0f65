"""Validate dataset files the way LLaMA-Factory 0.9.5 will read them: stream -> check -> collect.

    validate_file(path, format=None, stage=None, entry=None, ...)   one file (layout auto-detected or given)
    validate_dataset(name, dataset_dir, ...)                        a registered dataset, via dataset_info.json

Both return a `ValidationResult`: `.ok` is True when LLaMA-Factory keeps every record (warnings allowed).
"""

from __future__ import annotations

import difflib
import gc
import itertools
import json
import os
import sys
from array import array
from pathlib import Path
from typing import Any

import orjson

from ..errors import UserError
from . import fastpath
from .checker import Checker, make_checker
from .fastpath import FastChunk
from .loader import FILEEXT2TYPE, LAZY, BadRecord, RecordStream, file_type
from .result import Problem, ValidationResult
from .schemas import check_dataset_info_entry
from .spec import STAGE_LABEL, DatasetSpec, detect_format, entry_for_format, normalize_stage

DEFAULT_MAX_ERRORS = 100
LF_DEFAULT_CUTOFF_LEN = 2048
DETECT_SAMPLE = 200
PROGRESS_MIN_BYTES = 32 << 20
SHAPE_CACHE_MAX = 50_000

__all__ = ["validate_file", "validate_dataset", "ValidationResult", "Problem", "entry_problems"]


def _stage_or_usage_error(stage: str | None) -> str | None:
    try:
        return normalize_stage(stage)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def entry_problems(spec: DatasetSpec, *, file: str, name: str | None = None) -> list[Problem]:
    """What makes LLaMA-Factory refuse or empty the dataset before looking at records: stage vs ranking,
    the columns each stage reads."""
    out: list[Problem] = []
    where = "$" if name is None else "$" + json.dumps([name])[1:-1].join("[]")

    def add(path: str, rule: str, message: str, expected: str, hint: str) -> None:
        out.append(Problem(file, None, None, where + path, rule, message, expected, hint, "error"))

    cols, stage = spec.columns, spec.stage
    label = STAGE_LABEL[stage]
    if stage == "rm" and spec.ranking is not True:
        add(".ranking", "stage", f"stage {label} needs ranking data", '"ranking": true',
            "add \"ranking\": true to the entry (LLaMA-Factory raises 'The dataset is not applicable in the current "
            "training stage')")
    elif stage != "rm" and spec.ranking is True:
        add(".ranking", "stage", f"ranking data cannot train stage {label}", "stage dpo",
            "train it with stage dpo, or drop \"ranking\": true")
    if stage == "rm" and not (cols.get("chosen") and cols.get("rejected")):
        add(".columns", "stage", "chosen/rejected columns are not mapped", '"chosen" and "rejected" in columns',
            'add "columns": {..., "chosen": "chosen", "rejected": "rejected"}')
    if stage == "kto" and not cols.get("kto_tag"):
        add(".columns.kto_tag", "stage", "kto needs the label column", 'columns.kto_tag (e.g. "label")',
            'add "kto_tag": "label" to the entry\'s columns')
    if spec.formatting == "alpaca" and stage in ("sft", "kto") and not cols.get("response"):
        add(".columns.response", "stage", f"stage {label} needs an answer column", 'columns.response (e.g. "output")',
            "map the answer column; without it every record is dropped")
    if spec.formatting in ("sharegpt", "openai") and not cols.get("messages"):
        add(".columns.messages", "stage", "the messages column is not mapped", 'columns.messages',
            'add "messages": "<your column>" to the entry\'s columns')
    if spec.formatting not in ("alpaca", "sharegpt", "openai"):
        add(".formatting", "entry:enum", f"unknown formatting {spec.formatting!r}", "alpaca, sharegpt or openai",
            "fix the formatting value")
    return out


class _Run:
    """Accumulates one dataset's validation over its files, then adds the dataset-level findings."""

    def __init__(self, spec: DatasetSpec, *, cutoff_len: int | None, max_errors: int | None,
                 progress: bool, duplicates: bool = True, shapes: bool = True, fast: bool = True):
        self.spec = spec
        self.checker: Checker = make_checker(spec, cutoff_len)
        self.fast = fastpath.build(spec, self.checker, cutoff_len) if fast else None
        self.cutoff_len = cutoff_len
        self.result = ValidationResult(format=spec.label, stage=STAGE_LABEL[spec.stage], entry=spec.entry,
                                       max_errors=max_errors)
        self.progress = progress
        self.duplicates = duplicates
        self.shapes = shapes
        self.clean: set[bytes] = set()
        self.missing = set(self.checker.accessed_columns())
        self.hashes = array("q")
        self.seen: set[int] = set()
        self.dups: list[tuple[str, int | None, int, int]] = []
        self.n_dups = 0
        self.pt_upper = 0  # tokens can't exceed UTF-8 bytes (+ specials)
        self.pt_estimate = 0
        self.kto = [0, 0]
        self.file_starts: list[int] = []

    def run_file(self, path: Path, stream: RecordStream | None = None, records=None) -> None:
        res = self.result
        fname = str(path)
        res.files.append(fname)
        checker = self.checker
        stream = stream or RecordStream(path, checker.shape_mask if self.shapes else None, self.clean)
        if records is not None:
            items = records
        elif self.fast is not None and stream.kind == "json":
            items = fastpath.json_items(stream, self.fast, seen=self.seen if self.duplicates else None,
                                        hashes=self.hashes, missing=self.missing)
        else:
            items = iter(stream)
        bar = None
        if self.progress and stream.size >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=stream.size, unit="B", unit_scale=True, desc=path.name, file=sys.stderr, leave=False)
        self.file_starts.append(len(self.hashes))
        check = checker.check
        missing = self.missing
        seen, hashes, dups = self.seen, self.hashes, self.duplicates
        clean = self.clean
        cache_shapes = checker.shape_mask is not None and self.shapes
        is_pt = self.spec.stage == "pt"
        is_kto = self.spec.stage == "kto"
        add = res.add
        loads = orjson.loads
        invalid = 0
        hits = 0
        fast_hits = 0
        index = -1
        gc_was_enabled = gc.isenabled()
        gc.disable()  # records are acyclic; collection passes only cost time on large files
        try:
            for item in items:
                if item.__class__ is FastChunk:  # records with no finding, hashes and columns noted
                    for k, line, h in item.dups:
                        self._dup(fname, line, index + 1 + k, h)
                    index += item.n
                    fast_hits += item.n
                    if bar is not None:
                        bar.update(stream.position - bar.n)
                    continue
                index += 1
                line, rec, raw, shape = item
                if bar is not None and index & 4095 == 0:
                    bar.update(stream.position - bar.n)
                if shape is not None and shape in clean:
                    # same shape as a record that passed every check: passes them too (loader.ShapeMask)
                    hits += 1
                    if dups:
                        h = hash(raw)
                        hashes.append(h)
                        if h in seen:
                            self._dup(fname, line, index, h)
                        else:
                            seen.add(h)
                    continue
                if rec is LAZY:
                    try:
                        rec = loads(raw)
                    except orjson.JSONDecodeError as err:
                        rec = BadRecord(line + raw.count(b"\n", 0, getattr(err, "pos", 0) or 0),
                                        f"invalid JSON: {err.msg}")
                if rec.__class__ is BadRecord:
                    invalid += 1
                    if dups:
                        hashes.append(0)
                    add(Problem(fname, rec.line, index, "$", "json-syntax", rec.message, "one JSON value per record",
                                "fix the JSON; LLaMA-Factory cannot load the file at all", "error"))
                    continue
                if missing and rec.__class__ is dict:
                    missing.difference_update(rec.keys())
                findings = check(rec)
                if dups:
                    h = hash(raw) if raw is not None else hash(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))
                    hashes.append(h)
                    if h in seen:
                        self._dup(fname, line, index, h)
                    else:
                        seen.add(h)
                if findings:
                    bad = False
                    for path_, rule, message, expected, hint, severity in findings:
                        if severity == "error":
                            bad = True
                        add(Problem(fname, line, index, path_, rule, message, expected, hint, severity))
                    if bad:
                        invalid += 1
                        continue
                elif (shape is not None and cache_shapes and len(clean) < SHAPE_CACHE_MAX
                      and checker.shape_cacheable(rec)):
                    clean.add(shape)
                if is_pt:
                    text = checker.text_of(rec)
                    self.pt_upper += len(text.encode("utf-8")) + 2
                    self.pt_estimate += len(text) // 4 + 1
                elif is_kto:
                    self.kto[bool(checker.kto_label(rec))] += 1
        finally:
            if gc_was_enabled:
                gc.enable()
            if bar is not None:
                bar.close()
        res.records += index + 1
        res.invalid += invalid
        res.shape_hits += hits
        res.fast_hits += fast_hits

    def _dup(self, fname: str, line: int | None, index: int, h: int) -> None:
        self.n_dups += 1
        if len(self.dups) < (self.result.max_errors or 1 << 62):
            self.dups.append((fname, line, len(self.hashes) - 1, index, h))

    def finish(self) -> ValidationResult:
        res = self.result
        where = res.files[0] if len(res.files) == 1 else ", ".join(res.files)
        if res.records == 0:
            res.add(Problem(where, None, None, "$", "no-records", "holds no record", "at least one record",
                            "LLaMA-Factory cannot train on an empty dataset; check the file", "error"))
        if self.dups:
            wanted = {h for *_, h in self.dups}
            first: dict[int, int] = {}
            for i, h in enumerate(self.hashes):
                if h in wanted and h not in first:
                    first[h] = i
            starts = self.file_starts
            for fname, line, _pos, index, h in self.dups:
                j = first.get(h, 0)
                k = max(i for i, s in enumerate(starts) if s <= j)
                other = f"record {j - starts[k]}" + ("" if res.files[k] == fname else f" of {res.files[k]}")
                res.add(Problem(fname, line, index, "$", "duplicate", f"same record as {other}",
                                "unique records", "remove duplicates; they weigh those samples twice", "warning"))
        extra = self.n_dups - len(self.dups)
        if extra > 0:
            res.by_rule["duplicate"] += extra
            res.warnings += extra
            res.truncated = True
        if res.records and self.missing:
            cols = self.spec.columns
            for col in sorted(self.missing):
                role = next((k for k, v in cols.items() if v == col), "?")
                res.add(Problem(where, None, None, "$." + col, "column-missing",
                                f"column {col!r} (columns.{role}) is in no record",
                                f"the key {col!r} in the records",
                                f"LLaMA-Factory fails with KeyError: {col!r}; map only columns the data has "
                                f"(e.g. set \"columns\" in the entry without {role!r})", "error"))
        if self.spec.stage == "pt" and res.records and res.invalid == 0:
            cutoff = (self.cutoff_len or LF_DEFAULT_CUTOFF_LEN) - 1  # packing (the pt default) reserves one token
            if self.pt_upper < cutoff:
                res.add(Problem(where, None, None, "$", "too-few-samples",
                                f"all texts together are at most {self.pt_upper} tokens",
                                f"at least cutoff_len={cutoff + 1} tokens to fill one packed block",
                                "add text or lower cutoff_len; LLaMA-Factory raises 'Cannot find sufficient samples'",
                                "error"))
            elif self.pt_estimate < cutoff:
                res.add(Problem(where, None, None, "$", "too-few-samples",
                                f"all texts together are about {self.pt_estimate} tokens (estimate)",
                                f"at least cutoff_len={cutoff + 1} tokens", "add text or lower cutoff_len",
                                "warning"))
        if self.spec.stage == "kto" and res.records > res.invalid and 0 in self.kto:
            res.add(Problem(where, None, None, "$", "one-preference-type",
                            f"every label is {'true' if self.kto[1] else 'false'}",
                            "both desirable (true) and undesirable (false) examples",
                            "KTO learns from the contrast; add the other kind", "warning"))
        return res


def _sample(path: Path, n: int) -> tuple[list, bool]:
    """The first n records that parse (for layout detection), and whether a record that does not parse came
    before them."""
    out = []
    bad = False
    for _, rec, raw, _ in itertools.islice(iter(RecordStream(path)), n):
        if rec is LAZY:
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad = True
                continue
        if isinstance(rec, BadRecord):
            bad = True
        else:
            out.append(rec)
    return out, bad


def _check_path(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass its files, or validate it as a registered dataset with "
                        "--dataset NAME --dataset-dir DIR")
    if file_type(path) is None:
        raise UserError(f"{path}: LLaMA-Factory loads only {', '.join('.' + e for e in FILEEXT2TYPE)} files; "
                        "convert or rename it")


def validate_file(path: str | os.PathLike, *, format: str | None = None, stage: str | None = None,
                  entry: dict[str, Any] | None = None, dataset_dir: str | os.PathLike | None = None,
                  cutoff_len: int | None = None, max_errors: int | None = DEFAULT_MAX_ERRORS,
                  progress: bool = False, duplicates: bool = True, shapes: bool = True,
                  fast: bool = True) -> ValidationResult:
    """Validate one data file. With `entry` (a dataset_info entry) the file is read through its column and tag
    mapping; otherwise through the entry `format` implies, or the one detected from the first records.
    `dataset_dir` resolves a relative `path`."""
    path = Path(path)
    if dataset_dir is not None and not path.is_absolute():
        path = Path(dataset_dir) / path
    _check_path(path)
    stage = _stage_or_usage_error(stage)
    problems: list[Problem] = []
    unreadable = False  # no record parses: the syntax errors are reported under any layout, none is claimed
    if entry is None:
        sample, bad = _sample(path, DETECT_SAMPLE)
        keys: set[str] = set()
        if format is None:
            if file_type(path) == "text":
                format = "text"
            else:
                format, keys = detect_format(sample)
            if format is None and not sample:  # empty, or nothing parses: invalid data under any layout
                format, unreadable = "alpaca", True
            if format is None:
                raise UserError(f"{path}: cannot tell the layout from the keys {sorted(keys)}; pass --format "
                                "alpaca, sharegpt, messages, openai or text, or validate it with --dataset through "
                                "its dataset_info entry")
        else:
            _, keys = detect_format(sample)
        try:
            entry = entry_for_format(format, path.name, stage, keys)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if stage is None and format == "text":
            stage = "pt"
    else:
        problems += check_dataset_info_entry("entry", entry, file=str(path))
    spec = DatasetSpec.from_entry(entry, stage)
    problems += entry_problems(spec, file=str(path))
    run = _Run(spec, cutoff_len=cutoff_len, max_errors=max_errors, progress=progress, duplicates=duplicates,
               shapes=shapes, fast=fast)
    for p in problems:
        run.result.add(p)
    if any(p.severity == "error" for p in problems) and _fatal(problems):
        run.result.files.append(str(path))
        return run.result
    run.run_file(path)
    if unreadable:
        run.missing.clear()  # columns of the stand-in layout: not the user's mistake
    result = run.finish()
    if unreadable:
        result.format = result.stage = result.entry = None
    return result


def _fatal(problems: list[Problem]) -> bool:
    """Entry problems that make record checks meaningless (no message column, unknown formatting)."""
    return any(p.rule in ("entry:enum",) or p.path.endswith("columns.messages") for p in problems)


def read_dataset_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    info_path = Path(dataset_dir) / "dataset_info.json"
    if not info_path.is_file():
        raise UserError(f"{info_path}: not found; --dataset-dir must be the folder holding dataset_info.json")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{info_path}: invalid JSON ({exc}); fix the file") from None
    if not isinstance(info, dict):
        raise UserError(f"{info_path}: must be a JSON object of dataset entries")
    return info


def validate_dataset(name: str, dataset_dir: str | os.PathLike, *, stage: str | None = None,
                     cutoff_len: int | None = None, max_errors: int | None = DEFAULT_MAX_ERRORS,
                     progress: bool = False, duplicates: bool = True, shapes: bool = True,
                     fast: bool = True) -> ValidationResult:
    """Validate the dataset `name` registered in `dataset_dir/dataset_info.json`, through its entry (column and
    tag mapping, formatting, ranking) exactly as LLaMA-Factory would load it."""
    info = read_dataset_info(dataset_dir)
    info_file = str(Path(dataset_dir) / "dataset_info.json")
    if name not in info:
        close = difflib.get_close_matches(name, list(info), n=1)
        raise UserError(f"{info_file}: no dataset {name!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                f"; registered: {', '.join(sorted(info)[:10])}"))
    entry = info[name]
    stage = _stage_or_usage_error(stage)
    problems = check_dataset_info_entry(name, entry, file=info_file)
    if not isinstance(entry, dict):
        res = ValidationResult(files=[info_file], max_errors=max_errors)
        for p in problems:
            res.add(p)
        return res
    for remote in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"):
        if remote in entry:
            raise UserError(f"{info_file}: dataset {name!r} is loaded from {remote} {entry[remote]!r}, not a local "
                            "file; download it and validate the files")
    spec = DatasetSpec.from_entry(entry, stage)
    problems += entry_problems(spec, file=info_file, name=name)
    run = _Run(spec, cutoff_len=cutoff_len, max_errors=max_errors, progress=progress, duplicates=duplicates,
               shapes=shapes, fast=fast)
    for p in problems:
        run.result.add(p)
    file_name = entry.get("file_name")
    if not isinstance(file_name, str):
        return run.result
    local = Path(dataset_dir) / file_name
    if local.is_dir():
        files = sorted(local / f for f in os.listdir(local))
    elif local.is_file():
        files = [local]
    else:
        run.result.add(Problem(info_file, None, None, "$" + json.dumps([name])[1:-1].join("[]") + ".file_name",
                               "file-missing", f"{local} does not exist", "an existing file or folder",
                               "fix file_name (it is relative to the dataset_dir)", "error"))
        return run.result
    if not files:
        run.result.add(Problem(str(local), None, None, "$", "file-missing", "the folder is empty",
                               "data files", "put the data files in the folder", "error"))
        return run.result
    types = {file_type(f) for f in files}
    if None in types or len(types) > 1:
        bad = sorted({f.suffix or f.name for f in files})
        run.result.add(Problem(str(local), None, None, "$", "file-type",
                               f"file types {', '.join(bad)} " + ("are mixed" if len(types) > 1 else "unsupported"),
                               "files of one type: " + ", ".join("." + e for e in FILEEXT2TYPE),
                               "LLaMA-Factory raises 'File types should be identical'; keep one type per dataset",
                               "error"))
        return run.result
    if _fatal(problems):
        return run.result
    for f in files:
        run.run_file(f)
    return run.finish()
