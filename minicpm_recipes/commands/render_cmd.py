"""`minicpm-recipes render STAGE`: write a LLaMA-Factory training YAML and every file it references."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "render a LLaMA-Factory training config (and its DeepSpeed/accelerate/launch files)"
DESCRIPTION = """\
Render a LLaMA-Factory training YAML for STAGE, plus every file it references: the DeepSpeed JSON for
--dist zero2/zero3/zero3-offload, the accelerate config for --dist fsdp/fsdp2, and a per-node launch script
for --nodes > 1. Defaults give a usable MiniCPM-SALA LoRA recipe on the bundled demo data.

examples:
  minicpm-recipes render dpo
  minicpm-recipes render sft --method full --dist zero3 --gpus-per-node 8 -o configs
  minicpm-recipes render sft --model ~/models/tiny --template cpm4 --set max_steps=10 -o -
  minicpm-recipes render pretrain --nodes 2 --gpus-per-node 8 --master-addr 10.0.0.1 -o configs
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", metavar="STAGE", help="sft, dpo, kto or pretrain (alias pt)")
    p.add_argument("--method", default="lora", help="lora (default) or full")
    p.add_argument("--dist", default="single",
                   help="single (default), zero2, zero3, zero3-offload, fsdp or fsdp2")
    p.add_argument("--nodes", type=int, default=1, help="number of machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="processes per machine (default 1)")
    p.add_argument("--model", default=None, help="hub id, alias or local folder (default openbmb/MiniCPM-SALA)")
    p.add_argument("--template", default=None,
                   help="LLaMA-Factory chat template; required for a local folder or unknown model id")
    p.add_argument("--dataset", default=None,
                   help="dataset name(s) registered in dataset_info.json (default: the bundled demo for STAGE)")
    p.add_argument("--dataset-dir", default=None,
                   help="folder holding dataset_info.json (default: the bundled demo datasets)")
    p.add_argument("--output-dir", default=None,
                   help="training output folder written into the YAML (default saves/MODEL/METHOD/STAGE)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override or add any LLaMA-Factory argument; VALUE is read as a YAML scalar; "
                        "KEY=null removes the key (repeatable)")
    p.add_argument("--master-addr", default=None, help="address of node 0 for --nodes > 1")
    p.add_argument("--master-port", type=int, default=29500, help="rendezvous port for --nodes > 1 (default 29500)")
    p.add_argument("-o", "--out", default="configs", metavar="DIR",
                   help="folder to write the files to (default ./configs); '-' prints the training YAML")
    p.add_argument("--backend", choices=("llamafactory", "trainer"), default="llamafactory",
                   help="llamafactory (default): a LLaMA-Factory YAML; trainer: a launch script for "
                        "`minicpm-recipes finetune` (transformers.Trainer, sft only)")
    p.add_argument("--train-data", default=None, metavar="FILE",
                   help="--backend trainer: {\"messages\": [...]} training file (default: the bundled sft demo)")
    p.add_argument("--eval-data", default=None, metavar="FILE", help="--backend trainer: validation file")
    p.add_argument("--dev-ratio", type=float, default=None, metavar="R",
                   help="--backend trainer: split this fraction off --train-data instead (default 0.1 without "
                        "--eval-data)")


def _reference_dir(out_dir: Path) -> str:
    """How the rendered files refer to each other: relative to the current folder when inside it."""
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "."
    if resolved.is_relative_to(cwd):
        return resolved.relative_to(cwd).as_posix()
    return resolved.as_posix()


def _path_for_yaml(path: Path) -> str:
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else resolved.as_posix()


def _dataset_warnings(params: dict) -> list[str]:
    """Datasets the YAML names that its dataset_dir (as seen from here) does not register."""
    from ..data.validate import read_dataset_info
    from ..errors import UserError

    folder = str(params.get("dataset_dir") or "data")
    if "://" in folder or folder.startswith("REMOTE:"):
        return []
    info = Path(folder) / "dataset_info.json"
    try:
        entries = read_dataset_info(folder)
    except (UserError, OSError):
        return [f"{info} is not readable here; the datasets are checked when training starts "
                "(`minicpm-recipes train` from the folder the YAML is run from)"]
    names = [n.strip() for key in ("dataset", "eval_dataset") for n in str(params.get(key) or "").split(",")]
    return [f"dataset {name!r} is not registered in {info}; register it before training: "
            f"minicpm-recipes register FILE --name {name} --dataset-dir {folder}"
            for name in names if name and name not in entries]


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..render import DEFAULT_MODEL, RenderOptions, render, write_rendered
    from ..resources import datasets_dir

    for flag, value in (("--model", args.model), ("--template", args.template), ("--dataset", args.dataset),
                        ("--dataset-dir", args.dataset_dir), ("--output-dir", args.output_dir), ("-o", args.out)):
        if value is not None and not value.strip():
            raise UserError(f"{flag} is empty; give a value or leave the option out for its default")
    if args.backend == "trainer":
        from ..native.render import run_render

        return run_render(args)
    for flag, value in (("--train-data", args.train_data), ("--eval-data", args.eval_data),
                        ("--dev-ratio", args.dev_ratio)):
        if value is not None:
            raise UserError(f"{flag} applies to --backend trainer; LLaMA-Factory reads --dataset/--dataset-dir")
    to_stdout = args.out == "-"
    out_dir = Path(args.out)
    if args.dataset_dir is not None:
        dataset_dir = args.dataset_dir
    else:
        dataset_dir = _path_for_yaml(datasets_dir() / "demo")
    options = RenderOptions(
        stage=args.stage,
        method=args.method,
        dist=args.dist,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        model=args.model or DEFAULT_MODEL,
        template=args.template,
        dataset=args.dataset,
        dataset_dir=dataset_dir,
        output_dir=args.output_dir,
        sets=tuple(args.sets),
        master_addr=args.master_addr,
        master_port=args.master_port,
        ref_dir="." if to_stdout else _reference_dir(out_dir),
    )
    rendered = render(options)
    for warning in _dataset_warnings(rendered.params):
        print(f"warning: {warning}", file=sys.stderr)
    if to_stdout:
        sys.stdout.write(rendered.files[0].content)
        for note in rendered.notes:
            print(f"note: {note}", file=sys.stderr)
        others = [f.name for f in rendered.files[1:]]
        if others:
            print(f"note: the YAML references {', '.join(others)}, which -o - does not write; "
                  "render with -o DIR to get them", file=sys.stderr)
        return 0
    print_rendered(write_rendered(rendered, out_dir), rendered.notes, rendered.commands)
    return 0


def print_rendered(written, notes, commands) -> None:
    """What render wrote, its notes, and the command(s) that run it (from the current folder)."""
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(f"note: {note}")
    print(f"run (from {os.getcwd()}):" if len(commands) == 1 else f"run on each node (from {os.getcwd()}):")
    for command in commands:
        print(f"  {command}")
