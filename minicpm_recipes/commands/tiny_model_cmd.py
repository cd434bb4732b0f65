"""`minicpm-recipes tiny-model DIR`: build the tiny local test model."""

from __future__ import annotations

import argparse

HELP = "build a tiny random-weight chat model with the cpm4 tokens (for tests and CPU demos)"
DESCRIPTION = """\
Build a tiny Llama-architecture model with random weights and a byte-level tokenizer that has MiniCPM4's
chat tokens (<|im_start|>, <|im_end|>), so LLaMA-Factory's cpm4 template works. No download; deterministic.

example:
  minicpm-recipes tiny-model models/tiny
  minicpm-recipes render sft --model models/tiny --template cpm4 --set bf16=false
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    p.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--layers", type=int, default=2, help="number of layers (default 2)")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..tiny_model import build_tiny_model

    if args.hidden_size < 8 or args.hidden_size % 4:
        raise UserError(f"--hidden-size must be a multiple of 4 and at least 8, got {args.hidden_size}")
    if args.layers < 1:
        raise UserError(f"--layers must be 1 or more, got {args.layers}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for one tiny shard is noise
    try:
        out = build_tiny_model(args.dir, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers)
    except OSError as exc:
        raise UserError(f"{args.dir}: cannot write the model ({exc.strerror})") from exc
    print(f"wrote tiny model to {out}")
    return 0
