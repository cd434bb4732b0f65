"""`minicpm-recipes validate`: check data files the way LLaMA-Factory will read them, before any GPU is used."""

from __future__ import annotations

import argparse
import sys

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help=".json, .jsonl, .parquet, .arrow, .csv or .txt files")
    p.add_argument("--format", choices=("alpaca", "sharegpt", "messages", "openai", "text"), default=None,
                   help="layout of FILE (default: detected); messages = {'messages': [{'role', 'content'}]}")
    p.add_argument("--stage", choices=("sft", "dpo", "kto", "pt"), default=None,
                   help="training stage the data is for (default: from the data/entry)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="registered dataset name(s), comma-separated, read through dataset_info.json")
    p.add_argument("--dataset-dir", default=None, metavar="DIR",
                   help="folder holding dataset_info.json (default ./data, as LLaMA-Factory)")
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
    if args.max_errors < 0 or (args.cutoff_len is not None and args.cutoff_len <= 0):
        raise UserError("--max-errors must be >= 0 and --cutoff-len > 0")
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
            results.append(validate_file(f, format=args.format, dataset_dir=args.dataset_dir, **common))
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
