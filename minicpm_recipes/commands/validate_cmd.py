"""`minicpm-recipes validate`: check data files the way LLaMA-Factory will read them, before any GPU is used."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "check dataset files (or a registered dataset) against LLaMA-Factory's formats and rules"
DESCRIPTION = """\
Check data files the way LLaMA-Factory 0.9.5 reads them: the JSON Schema of the format and stage
(datasets/schemas/), then the rules its converter and processors apply (role alternation, message-count
parity, system message only first, chosen/rejected, KTO boolean labels, ...). Every problem is reported as
`file:line: record N: $.json.path: severity: message (expected ...); fix: ... [rule]`, then a summary.
Warnings (duplicates, empty content, samples over --cutoff-len) do not fail the check unless --strict.

The layout is detected from the first records; --format/--stage override it. --dataset validates a dataset
registered in DIR/dataset_info.json through its entry (column and tag mapping included).

Exit status: 0 valid, 1 invalid data, 2 usage error.

examples:
  minicpm-recipes validate data/train.json
  minicpm-recipes validate dpo.jsonl --stage dpo --cutoff-len 4096
  minicpm-recipes validate --dataset alpaca_en_demo --dataset-dir data --json
"""


def _file_and_entry(file: str, dataset_dir: str | None, fmt: str | None) -> tuple[Path, str | None]:
    """Where FILE is (as given, else inside dataset_dir), and the name dataset_dir registers it under (None when
    it does not, or --format decides the layout)."""
    path = Path(file)
    if dataset_dir is None:
        return path, None
    if not path.is_absolute() and not path.exists() and (Path(dataset_dir) / path).exists():
        path = Path(dataset_dir) / path
    if fmt is not None or not path.is_file():
        return path, None
    from ..data.validate import read_dataset_info
    from ..errors import UserError

    try:
        info = read_dataset_info(dataset_dir)
    except (UserError, OSError):
        return path, None
    target = path.resolve()
    names = [name for name, entry in info.items() if isinstance(entry, dict) and isinstance(
        entry.get("file_name"), str) and (Path(dataset_dir) / entry["file_name"]).resolve() == target]
    return path, names[0] if len(names) == 1 else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help=".json, .jsonl, .parquet, .arrow, .csv or .txt files")
    p.add_argument("--format", choices=("alpaca", "sharegpt", "messages", "openai", "text"), default=None,
                   help="layout of FILE (default: detected); messages = {'messages': [{'role', 'content'}]}")
    p.add_argument("--stage", choices=("sft", "dpo", "kto", "pt"), default=None,
                   help="training stage the data is for (default: from the data/entry)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="registered dataset name(s), comma-separated, read through dataset_info.json")
    p.add_argument("--dataset-dir", default=None, metavar="DIR",
                   help="folder holding dataset_info.json (default ./data, as LLaMA-Factory); with FILEs: a "
                        "relative FILE not found here is read from DIR, and a FILE that DIR registers is checked "
                        "through its entry (unless --format)")
    p.add_argument("--cutoff-len", type=int, default=None, metavar="N",
                   help="warn on samples longer than about N tokens (estimate); pt: N is the packing block")
    p.add_argument("--max-errors", type=int, default=100, metavar="N",
                   help="list at most N problems (default 100; 0 = all); counts stay complete")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    p.add_argument("--strict", action="store_true", help="warnings fail the check too (exit 1)")
    p.add_argument("--no-duplicates", action="store_true", help="skip the duplicate-record check")


def run(args: argparse.Namespace) -> int:
    from ..data.report import format_json, format_text, passed
    from ..data.result import ValidationResult
    from ..data.validate import validate_dataset, validate_file
    from ..errors import UserError

    if not args.files and not args.dataset:
        raise UserError("nothing to check: pass FILE(s) or --dataset NAME --dataset-dir DIR")
    if args.files and args.dataset:
        raise UserError("pass either FILE(s) or --dataset, not both")
    if args.dataset and args.format:
        raise UserError("--format does not apply to --dataset (the dataset_info entry says the format)")
    if args.max_errors < 0:
        raise UserError(f"--max-errors {args.max_errors}: expected 0 (all) or more")
    if args.cutoff_len is not None and args.cutoff_len <= 0:
        raise UserError(f"--cutoff-len {args.cutoff_len}: expected a number of tokens above 0")
    max_errors = args.max_errors or None
    progress = sys.stderr.isatty() and not args.json
    results: list[ValidationResult] = []
    common = dict(stage=args.stage, cutoff_len=args.cutoff_len, max_errors=max_errors, progress=progress,
                  duplicates=not args.no_duplicates)
    if args.dataset:
        for name in [n.strip() for n in args.dataset.split(",") if n.strip()]:
            results.append(validate_dataset(name, args.dataset_dir or "data", **common))
    else:
        for f in args.files:
            path, name = _file_and_entry(f, args.dataset_dir, args.format)
            if name is not None:
                print(f"{path}: checked as dataset {name!r} of {Path(args.dataset_dir) / 'dataset_info.json'}",
                      file=sys.stderr)
                results.append(validate_dataset(name, args.dataset_dir, **common))
            else:
                results.append(validate_file(path, format=args.format, **common))
    if len(results) == 1:
        total = results[0]
    else:
        total = ValidationResult(max_errors=max_errors)
        for r in results:
            total.merge(r)
        formats = {r.format for r in results}
        stages = {r.stage for r in results}
        total.format = formats.pop() if len(formats) == 1 else None
        total.stage = stages.pop() if len(stages) == 1 else None
    if args.json:
        sys.stdout.write(format_json(total, strict=args.strict))
    else:
        sys.stdout.write(format_text(total, strict=args.strict))
    return 0 if passed(total, strict=args.strict) else 1
