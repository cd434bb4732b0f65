"""`minicpm-recipes install --into DIR`: put recipes and demo data into an existing LLaMA-Factory checkout."""

from __future__ import annotations

import argparse
import sys

HELP = "install recipes and demo data into a LLaMA-Factory checkout (examples/minicpm_config, data/)"
DESCRIPTION = """\
Install training recipes into an existing LLaMA-Factory checkout, as the MiniCPM guide does by hand:
YAMLs (plus DeepSpeed configs and multi-node launch scripts) into DIR/examples/minicpm_config/, the demo
data into DIR/data/, and their entries merged into DIR/data/dataset_info.json (every other entry is kept
as it is). The printed commands run from DIR.

Safe to rerun: files that are already right are not touched (a second run changes no byte), and a file you
edited since install wrote it (or one install did not write) is never overwritten: install shows the diff
and stops, unless --force, which keeps your version as FILE.bak. A DeepSpeed/accelerate config already in
DIR/examples/deepspeed or DIR/examples/accelerate with the same settings is used instead of a copy.

Default set: MiniCPM-SALA and MiniCPM4.1-8B x sft, dpo, kto, pretrain x three variants:
  lora       LoRA on 1 GPU
  full       full fine-tuning, --dist (default zero3) on --gpus-per-node GPUs (default 8)
  multinode  the same on --nodes machines (default 2), with a per-node launch script

examples:
  minicpm-recipes install --into ~/LLaMA-Factory --dry-run
  minicpm-recipes install --into ~/LLaMA-Factory
  minicpm-recipes install --into ~/LLaMA-Factory --models minicpm-sala --stages sft,dpo --variants lora
  minicpm-recipes install --into ~/LLaMA-Factory --variants multinode --nodes 4 --master-addr 10.0.0.1
  minicpm-recipes install --into ~/LLaMA-Factory --models ~/models/tiny --template cpm4 --stages sft
"""


def _list_arg(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    # defaults spelled out here so that building the parser imports nothing heavy (a test keeps them in sync)
    p.add_argument("--into", required=True, metavar="DIR", help="the LLaMA-Factory checkout (git clone) to install into")
    p.add_argument("--models", nargs="+", type=_list_arg, default=None, metavar="MODEL",
                   help="hub ids, aliases or local folders, space- or comma-separated "
                        "(default minicpm-sala,minicpm4.1)")
    p.add_argument("--stages", nargs="+", type=_list_arg, default=None, metavar="STAGE",
                   help="training stages (default sft,dpo,kto,pretrain)")
    p.add_argument("--variants", nargs="+", type=_list_arg, default=None, metavar="VARIANT",
                   help="lora, full, multinode (default lora,full,multinode)")
    p.add_argument("--template", default=None,
                   help="LLaMA-Factory chat template for every model; required for a local folder or unknown id")
    p.add_argument("--dist", default="zero3",
                   help="distributed set-up of the full and multinode variants (default zero3; "
                        "zero2, zero3-offload, fsdp, fsdp2, single)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per machine for full/multinode (default 8)")
    p.add_argument("--nodes", type=int, default=2, help="machines for the multinode variant (default 2)")
    p.add_argument("--master-addr", default=None, help="address of node 0 for the multinode variant")
    p.add_argument("--master-port", type=int, default=29500, help="rendezvous port (default 29500)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override or add a LLaMA-Factory argument in every recipe (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="list every file install would create or change and the dataset_info entries it would add")
    p.add_argument("--force", action="store_true",
                   help="replace files you edited (or that install did not write), keeping yours as FILE.bak")


def _flat(values: list[list[str]] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if values is None:
        return default
    return tuple(v for group in values for v in group)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..install import (
        DATASET_INFO,
        DEFAULT_MODELS,
        DEFAULT_STAGES,
        DEFAULT_VARIANTS,
        InstallOptions,
        apply_install,
        conflict_message,
        plan_install,
    )

    options = InstallOptions(
        into=args.into,
        models=_flat(args.models, DEFAULT_MODELS),
        stages=_flat(args.stages, DEFAULT_STAGES),
        variants=_flat(args.variants, DEFAULT_VARIANTS),
        template=args.template,
        dist=args.dist,
        gpus_per_node=args.gpus_per_node,
        nodes=args.nodes,
        master_addr=args.master_addr,
        master_port=args.master_port,
        sets=tuple(args.sets),
        force=args.force,
    )
    if options.gpus_per_node < 1 or options.nodes < 1:
        raise UserError("--gpus-per-node and --nodes must be 1 or more")
    plan = plan_install(options)

    if args.dry_run:
        _print_plan(plan)
        return 2 if plan.conflicts and not plan.force else 0  # as the real run would
    if plan.conflicts and not plan.force:
        for f in plan.conflicts:
            print(f"refusing to overwrite {plan.root / f.path}: {f.reason}. Your version -> ours:", file=sys.stderr)
            sys.stderr.write(f.diff())
        raise UserError(conflict_message(plan))

    result = apply_install(plan)
    root = plan.root
    for path in result.created:
        print(f"created   {root / path}")
    for path in result.updated:
        print(f"updated   {root / path}")
    for path, backup in result.backups:
        print(f"backup    {root / path} -> {root / backup}")
    for ref in plan.reused:
        print(f"reused    {root / ref} (same settings as ours)")
    added = [d.name for d in result.datasets if d.outcome == "added"]
    changed = [d.name for d in result.datasets if d.outcome == "updated"]
    if added:
        print(f"registered {', '.join(added)} in {root / DATASET_INFO}")
    if changed:
        print(f"updated   {', '.join(changed)} in {root / DATASET_INFO}")
    if not (result.created or result.updated or added or changed):
        print(f"already installed: {len(result.unchanged)} file(s) and {len(result.datasets)} dataset entries "
              f"in {root} are up to date; nothing changed")
    else:
        print(f"{len(result.created)} created, {len(result.updated)} updated, {len(result.unchanged)} unchanged")
    _print_commands(plan)
    return 0


def _print_plan(plan) -> None:
    from ..install import DATASET_INFO

    root = plan.root
    print(f"dry run: nothing written. `minicpm-recipes install` would, in {root}:")
    verbs = {"create": "create", "update": "update", "conflict": "REFUSE" if not plan.force else "replace"}
    for f in plan.changes:
        extra = ""
        if f.action == "update":
            extra = "   (written by an earlier install, unedited)"
        elif f.action == "conflict":
            extra = (f"   ({f.reason}; backup to {f.path}.bak)" if plan.force
                     else f"   ({f.reason}; needs --force)")
        print(f"  {verbs[f.action]:<8}{f.path}{extra}")
    unchanged = len(plan.files) - len(plan.changes)
    if unchanged:
        print(f"  ({unchanged} file(s) already up to date, left untouched)")
    for ref in plan.reused:
        print(f"  reuse   {ref}   (same settings as ours)")
    if plan.dataset_changes:
        print(f"  {'change':<8}{DATASET_INFO}   (merge {len(plan.dataset_changes)} entr"
              f"{'y' if len(plan.dataset_changes) == 1 else 'ies'}, every other byte kept; "
              f"previous version kept as {DATASET_INFO}.bak)")
    for d in plan.datasets:
        verb = {"added": "add", "updated": "update", "unchanged": "keep"}.get(d.outcome, d.outcome)
        print(f"  {DATASET_INFO}: {verb} entry {d.name} -> {d.entry.get('file_name', '')}")
    if not plan.changes and not plan.dataset_changes:
        print("  nothing: already installed")
    if plan.conflicts and not plan.force:
        print(f"{len(plan.conflicts)} file(s) would be refused; see the diffs with a real run, or pass --force")
    _print_commands(plan)


def _print_commands(plan) -> None:
    single = [r for r in plan.recipes if r.nodes == 1]
    multi = [r for r in plan.recipes if r.nodes > 1]
    if single:
        print(f"run from {plan.root}  (cd {plan.root}):")
        for recipe in single:
            print(f"  {recipe.commands[0]}   # {recipe.title}")
    if multi:
        print(f"multi-node: on each node, from {plan.root}, run that node's line:")
        for recipe in multi:
            print(f"  # {recipe.title}")
            for command in recipe.commands:
                print(f"  {command}")
    notes = [n for r in plan.recipes for n in r.notes if not n.startswith("set MASTER_ADDR")] + list(plan.notes)
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
