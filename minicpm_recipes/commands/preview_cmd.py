"""`minicpm-recipes preview CONFIG`: the first sample as token/id/label, and token lengths vs cutoff_len."""

from __future__ import annotations

import argparse
import json

HELP = "show how LLaMA-Factory tokenizes and masks the data of a training config (sanity check)"
DESCRIPTION = """\
The "sanity check" of the fine-tuning guides, done with LLaMA-Factory's own template and the model's
tokenizer: the first sample as a table of token, id and label (-100 where the loss ignores the token), then
the token lengths of the whole dataset (after max_samples) against cutoff_len: how many samples would be
truncated. Runs on CPU; needs the model's tokenizer files, not its weights.

examples:
  minicpm-recipes preview configs/minicpm-sala_lora_sft.yaml
  minicpm-recipes preview configs/minicpm-sala_lora_dpo.yaml --rows 40
  minicpm-recipes preview configs/tiny_lora_sft.yaml --max-samples 1000 --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="LLaMA-Factory training YAML")
    p.add_argument("--rows", type=int, default=200, metavar="N",
                   help="show at most N tokens of the first sample (default 200; 0 shows all)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="length statistics over the first N samples only (default: the config's max_samples, "
                        "else all)")
    p.add_argument("--no-stats", action="store_true", help="only the first sample, no length statistics")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..preview import format_report, run_preview

    if args.rows < 0:
        raise UserError(f"--rows must be 0 (all) or more, got {args.rows}")
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max-samples must be 1 or more, got {args.max_samples}")
    result = run_preview(args.config, max_samples=args.max_samples, stats=not args.no_stats)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(format_report(result, args.rows), end="")
    return 0
