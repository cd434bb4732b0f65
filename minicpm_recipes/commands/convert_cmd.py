"""`minicpm-recipes convert`: chat data -> LLaMA-Factory sharegpt/alpaca files + their dataset_info entries."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

HELP = "convert MiniCPM/ChatGLM3/alpaca/chat-export data to LLaMA-Factory format (train + dev split)"
DESCRIPTION = """\
Convert chat data to a LLaMA-Factory format and print (or --register) the matching dataset_info.json entries.

Inputs (the format is detected from the first record; --from forces it):
  messages     MiniCPM / OpenAI style: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}
  chatglm3     ChatGLM3 finetune_demo: {"conversations": [{"role": ..., "content": ...}], "tools": [...]}
               (roles system/user/assistant/observation, and tool: {"name", "parameters", "observation"})
  sharegpt     LLaMA-Factory sharegpt: {"conversations": [{"from": "human"|"gpt", "value": ...}]}
  alpaca       {"instruction", "input", "output", "system", "history"}
  chat-export  a folder of per-contact *_train.json / *_dev.json files (WeChat-history exports), merged into
               one train and one dev file; consecutive messages of one sender are joined (--fix-turns)
A folder holding train.json (+ dev.json), like MiniCPM's AdvertiseGenChatML, is read as a train/dev pair.

Writes OUT/NAME_train.json and OUT/NAME_dev.json. The fine-tuning guides want a validation set: without a dev
file, --dev-ratio (default 0.1) of the records go to NAME_dev.json, picked reproducibly by --seed.
Use them with `dataset: NAME` and `eval_dataset: NAME_dev` (and no val_size) in the training YAML.

examples:
  minicpm-recipes convert tests/fixtures/minicpm-data/AdvertiseGenChatML -o data --name adgen --register
  minicpm-recipes convert chatglm3_train.json --from chatglm3 -o data --name glm --dev-ratio 0.05 --seed 1
  minicpm-recipes convert ~/wechat_export -o data --name my_chats --register
  minicpm-recipes convert alpaca.json --to sharegpt -o data --name mydata
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.convert import SOURCE_FORMATS, TARGET_FORMATS

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="data file(s) or folder(s)")
    p.add_argument("--from", dest="source_format", default="auto", choices=SOURCE_FORMATS,
                   help="input format (default: detect)")
    p.add_argument("--to", dest="target", default="sharegpt", choices=TARGET_FORMATS,
                   help="output format: sharegpt (messages with role/content, default) or alpaca")
    p.add_argument("-o", "--output-dir", default=".", metavar="DIR",
                   help="folder for the converted files (default: the current folder)")
    p.add_argument("--name", default=None,
                   help="dataset name; files NAME_train.json / NAME_dev.json (default: from the first input)")
    p.add_argument("--dev", default=None, metavar="FILE", help="a separate validation file (no split then)")
    p.add_argument("--dev-ratio", type=float, default=0.1,
                   help="share of the records split off as validation set when no dev file is given "
                        "(default 0.1; 0: no validation set)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/dev split (default 42)")
    p.add_argument("--fix-turns", action=argparse.BooleanOptionalAction, default=None,
                   help="join consecutive messages of one role, drop replies before the first user message and "
                        "an unanswered last message (default: on for chat exports, off otherwise: such records "
                        "are an error)")
    p.add_argument("--register", action="store_true",
                   help="add the entries to OUT/dataset_info.json (validated; backup kept)")
    p.add_argument("--force", action="store_true",
                   help="replace existing output files / differing dataset_info entries")


def _default_name(path: Path) -> str:
    stem = path.resolve().name if path.is_dir() else path.stem
    stem = re.sub(r"_(train|dev)$", "", stem)
    name = re.sub(r"[^0-9A-Za-z_\-\u4e00-\u9fff]+", "_", stem).strip("_")
    return name or "dataset"


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert
    from ..errors import UserError

    inputs = [Path(p).expanduser() for p in args.inputs]
    if args.name is not None and not args.name.strip():
        raise UserError("--name is empty; give a dataset name or leave the option out (named after the input)")
    name = args.name or _default_name(inputs[0])
    if not re.fullmatch(r"[^\s/\\]+", name):
        raise UserError(f"--name {name!r}: expected a name without spaces or slashes, e.g. my_data")
    out_dir = Path(args.output_dir).expanduser()
    report = convert(inputs, out_dir, name, source_format=args.source_format, target=args.target,
                     dev=Path(args.dev).expanduser() if args.dev else None, dev_ratio=args.dev_ratio,
                     seed=args.seed, fix=args.fix_turns, overwrite=args.force)
    print(f"read {report.read} record(s) ({report.source_format})")
    for split in (report.train, report.dev):
        if split is not None:
            done = "unchanged" if split.file in report.unchanged else "wrote"
            print(f"{done} {split.file} ({split.records} record(s))")
    if report.split_from_train:
        print(f"note: validation set split off the training data: --dev-ratio {args.dev_ratio}, --seed {args.seed}")
    if report.dev is None:
        print("note: no validation set; the fine-tuning guides expect one (use --dev FILE or --dev-ratio 0.1)")
    for what, n in sorted(report.fixes.items()):
        print(f"changed: {what}: {n} time(s)")
    if report.dropped:
        print(f"note: {report.dropped} conversation(s) had nothing usable left and were not written")
    if args.register:
        from ..data.registry import register_entries

        info = out_dir / "dataset_info.json"
        for outcome in register_entries(info, list(report.entries.items()), force=args.force, dataset_dir=out_dir):
            print(f"{outcome.action}: {outcome.name} in {outcome.path}")
    else:
        print(f"dataset_info.json entries (add them to {out_dir / 'dataset_info.json'}, or rerun with --register):")
        print(json.dumps(report.entries, ensure_ascii=False, indent=2))
    eval_part = f", `eval_dataset: {report.dev.entry_name}` and no `val_size`" if report.dev else ""
    print(f"use: `dataset: {report.train.entry_name}`{eval_part} with `dataset_dir: {out_dir}` in the training YAML, "
          "or render one:")
    eval_set = f" --set eval_dataset={report.dev.entry_name}" if report.dev else ""
    print(f"  minicpm-recipes render sft --dataset {report.train.entry_name} "
          f"--dataset-dir {shlex.quote(str(out_dir))}{eval_set}")
    return 0
