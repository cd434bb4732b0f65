"""`minicpm-recipes render-export CONFIG`: configs that merge the trained LoRA adapter and chat with the result."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "render the llamafactory-cli export config that merges a trained LoRA adapter (and a chat config)"
DESCRIPTION = """\
From a training config, render <name>_export.yaml for `llamafactory-cli export` (merge the adapter in the
training output_dir into the base model, save it to --export-dir) and <name>_merged_infer.yaml for
`llamafactory-cli chat` / `minicpm-recipes serve` on the merged model. Run both from the folder you trained
from: the paths are the training config's.

examples:
  minicpm-recipes render-export configs/minicpm-sala_lora_sft.yaml
  minicpm-recipes render-export configs/minicpm-sala_lora_sft.yaml --export-dir models/sala-sft-merged
  minicpm-recipes render-export configs/tiny_lora_sft.yaml --adapter saves/tiny/checkpoint-2 -o configs
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="the training YAML whose result to export")
    p.add_argument("--export-dir", default=None,
                   help="folder for the merged model (default: the training output_dir + '-merged')")
    p.add_argument("--adapter", default=None, help="adapter folder to merge (default: the training output_dir)")
    p.add_argument("--template", default=None, help="chat template (default: the training config's)")
    p.add_argument("--export-size", type=int, default=5, help="shard size in GB (default 5)")
    p.add_argument("--export-device", default="cpu", choices=["cpu", "auto"],
                   help="device to merge on (default cpu)")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="folder to write the configs to (default: the folder of CONFIG)")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..inference import read_yaml_config, render_export, write_configs

    config = read_yaml_config(args.config)
    export_dir = args.export_dir
    if export_dir is None:
        output_dir = config.get("output_dir")
        if not output_dir:
            raise UserError(f"{args.config}: no output_dir; pass --export-dir DIR")
        export_dir = str(output_dir).rstrip("/") + "-merged"
    out_dir = Path(args.out) if args.out else Path(args.config).parent
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd:
        ref_dir = "."
    elif resolved.is_relative_to(cwd):
        ref_dir = resolved.relative_to(cwd).as_posix()
    else:
        ref_dir = resolved.as_posix()
    configs = render_export(config, args.config, export_dir, ref_dir=ref_dir, adapter=args.adapter,
                            template=args.template, export_size=args.export_size, export_device=args.export_device)
    for path in write_configs(configs, out_dir):
        print(f"wrote {path}")
    print(f"run (from {os.getcwd()}):")
    for c in configs:
        print(f"  {c.command}")
    return 0
