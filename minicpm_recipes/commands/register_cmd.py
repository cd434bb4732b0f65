"""`minicpm-recipes register FILE --name NAME`: add or update one dataset_info.json entry, safely."""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path

HELP = "add or update a dataset in dataset_info.json (validated, every other entry kept byte for byte)"
DESCRIPTION = """\
Register FILE as dataset NAME in a LLaMA-Factory dataset_info.json. The entry's columns and tags are detected
from the file's first records (or follow --format/--stage, or a full --entry), and the file is validated
against the entry before anything is written.

Safe to run on a hand-edited or shared dataset_info.json: only the one entry is added or replaced, every other
byte stays as it was; the previous file is kept as dataset_info.json.bak; a lock file makes concurrent runs safe.
Registering the same thing twice changes nothing; a different definition under an existing name is refused
unless --force. FILE must lie inside the dataset folder (LLaMA-Factory reads file_name relative to it).

examples:
  minicpm-recipes register data/adgen_train.json --name adgen --dataset-dir data
  minicpm-recipes register data/prefs.jsonl --name prefs --stage dpo --into LLaMA-Factory/data/dataset_info.json
  minicpm-recipes register data/corpus.txt --name corpus --format text --dataset-dir data --dry-run
  minicpm-recipes register data/x.json --name x --dataset-dir data \\
      --entry '{"formatting": "sharegpt", "columns": {"messages": "conversations"}}'
"""

FORMAT_CHOICES = ("alpaca", "sharegpt", "messages", "openai", "text")
STAGE_CHOICES = ("sft", "dpo", "kto", "pt", "pretrain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the data file (or folder) to register; inside the dataset folder")
    p.add_argument("--name", required=True, help="dataset name, as used in `dataset:` of the training YAML")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset-dir", metavar="DIR", help="folder holding dataset_info.json (and FILE)")
    where.add_argument("--into", metavar="FILE", help="the dataset_info.json to edit (its folder is the dataset folder)")
    p.add_argument("--format", choices=FORMAT_CHOICES, default=None,
                   help="layout of FILE: alpaca, sharegpt (from/value), messages (role/content), openai, text "
                        "(default: detect)")
    p.add_argument("--stage", choices=STAGE_CHOICES, default=None,
                   help="the stage the data is for; decides ranking / kto_tag columns (default: detect)")
    p.add_argument("--entry", default=None, metavar="JSON",
                   help="the entry itself as a JSON object (file_name is filled in); no detection then")
    p.add_argument("--force", action="store_true", help="replace an existing entry of that name that differs")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip checking the data against the entry")


def _file_name(file: Path, dataset_dir: Path) -> str:
    """FILE as LLaMA-Factory's file_name: relative to the dataset folder (FILE may be given either way)."""
    from ..errors import UserError

    candidates = [file] if file.is_absolute() else [Path.cwd() / file, dataset_dir / file]
    for cand in candidates:
        if os.path.lexists(cand):
            rel = os.path.relpath(os.path.abspath(cand), os.path.abspath(dataset_dir))
            if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
                raise UserError(f"{file}: lies outside the dataset folder {dataset_dir}; LLaMA-Factory reads "
                                f"file_name relative to it: copy or move the file into {dataset_dir}")
            return Path(rel).as_posix()
    raise UserError(f"{file}: no such file (looked in {Path.cwd()} and {dataset_dir})")


def _detect_entry(path: Path, file_name: str, fmt: str | None, stage: str | None) -> dict:
    from ..data.convert import read_records
    from ..data.spec import detect_format, entry_for_format
    from ..errors import UserError

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        sample_file = files[0] if files else None
    else:
        sample_file = path
    keys: set[str] = set()
    detected = None
    if sample_file is not None and sample_file.suffix.lower() not in (".json", ".jsonl", ".txt"):
        if fmt is None:
            raise UserError(f"{path}: only .json/.jsonl/.txt layouts are detected; pass --format "
                            "(alpaca, sharegpt, messages, openai or text) or --entry")
    elif sample_file is not None and sample_file.suffix.lower() != ".txt":
        records = []
        for _, _, rec in read_records(sample_file):
            records.append(rec)
            if len(records) >= 50:
                break
        detected, keys = detect_format(records)
    elif sample_file is not None:
        detected, keys = "text", {"text"}
    fmt = fmt or detected
    if fmt is None:
        raise UserError(f"{path}: cannot tell its layout from the first records (keys: {', '.join(sorted(keys)) or 'none'}); "
                        "pass --format alpaca|sharegpt|messages|openai|text, or --entry")
    try:
        return entry_for_format(fmt, file_name, stage, keys)
    except ValueError as exc:
        raise UserError(f"--format/--stage: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from ..data.registry import plan_registration, register_entry
    from ..errors import UserError

    if args.into:
        info = Path(args.into).expanduser()
        dataset_dir = info.parent
        if info.name != "dataset_info.json":
            folder = info if info.is_dir() else dataset_dir
            raise UserError(f"--into {args.into}: LLaMA-Factory reads only the dataset_info.json of its dataset_dir; "
                            f"pass --into {folder / 'dataset_info.json'} (or --dataset-dir {folder})")
    else:
        dataset_dir = Path(args.dataset_dir).expanduser()
        info = dataset_dir / "dataset_info.json"
    if not dataset_dir.is_dir():
        raise UserError(f"dataset folder {dataset_dir} does not exist; create it or fix --dataset-dir/--into")
    file_name = _file_name(Path(args.file).expanduser(), dataset_dir)
    if args.entry is not None:
        try:
            entry = json.loads(args.entry)
        except ValueError as exc:
            raise UserError(f"--entry: not valid JSON ({exc}); pass a JSON object, e.g. "
                            "'{\"formatting\": \"sharegpt\"}'") from None
        if not isinstance(entry, dict):
            raise UserError("--entry: expected a JSON object")
        entry = {"file_name": file_name, **{k: v for k, v in entry.items() if k != "file_name"}}
    else:
        entry = _detect_entry(dataset_dir / file_name, file_name, args.format, args.stage)

    kwargs = dict(force=args.force, validate=args.validate, dataset_dir=dataset_dir)
    if args.dry_run:
        plan = plan_registration(info, args.name, entry, **kwargs)
        print(f"would be {plan.action}: {args.name} in {plan.path}")
        if plan.changes:
            diff = difflib.unified_diff((plan.old_text or "").splitlines(keepends=True),
                                        plan.new_text.splitlines(keepends=True),
                                        fromfile=str(plan.path), tofile=f"{plan.path} (new)")
            print("".join(diff), end="")
        return 0
    outcome = register_entry(info, args.name, entry, **kwargs)
    backup = f" (previous file kept as {outcome.backup_path})" if outcome.backup_path else ""
    print(f"{outcome.action}: {args.name} in {outcome.path}{backup}")
    print(json.dumps({args.name: outcome.entry}, ensure_ascii=False, indent=2))
    print(f"use: `dataset: {args.name}` with `dataset_dir: {dataset_dir}`")
    return 0
