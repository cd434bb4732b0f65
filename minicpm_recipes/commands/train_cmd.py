"""`minicpm-recipes train CONFIG [key=value ...]`: preflight, plan, then launch LLaMA-Factory training."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HELP = "check a training YAML, then launch it with the right engine (llamafactory-cli, torchrun, accelerate)"
DESCRIPTION = """\
Check a LLaMA-Factory training YAML before anything heavy starts, then launch it and pass its exit code through.

Preflight (each problem is one line, exit code 2): LLaMA-Factory's own parser accepts the config with the
overrides; every dataset is registered in dataset_dir/dataset_info.json and passes validation; the chat template
exists; cross-field rules (ZeRO-3 with predict_with_generate or pure_bf16, neat_packing outside sft,
quantization without LoRA, MiniCPM-SALA without flash-attn, missing trust_remote_code); an output_dir with
checkpoints is resumed from its newest checkpoint-N (refused with --no-resume).

Engine: `llamafactory-cli train` for one process; torchrun for DeepSpeed, several processes or nodes (or
FORCE_TORCHRUN=1); `accelerate launch -m llamafactory.launcher` when the YAML has an accelerate config
(the one `render --dist fsdp/fsdp2` wrote, named in the YAML's `# Run:` line, or --accelerate-config FILE).
NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT and FORCE_TORCHRUN are honoured, so the same
command runs on every node; a multi-node run needs MASTER_ADDR and MASTER_PORT and writes a per-node launch
script and a Slurm sbatch script beside the YAML. Ctrl-C / SIGTERM stop every process of the run.

examples:
  minicpm-recipes train configs/minicpm-sala_lora_sft.yaml
  minicpm-recipes train configs/minicpm-sala_lora_sft.yaml max_steps=100 learning_rate=5e-5 --dry-run
  minicpm-recipes train configs/minicpm-sala_full_sft_zero3.yaml --nproc-per-node 8
  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 minicpm-recipes train configs/x.yaml
  minicpm-recipes train configs/minicpm-sala_full_sft_fsdp2.yaml --accelerate-config configs/fsdp2_config.yaml
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="LLaMA-Factory training YAML (e.g. from `minicpm-recipes render`)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override LLaMA-Factory arguments for this run, as `llamafactory-cli train CONFIG k=v` does")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan and command; start nothing (a multi-node plan still "
                        "writes its launch scripts)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument("--no-resume", action="store_true",
                   help="refuse to continue an output_dir that already holds checkpoints")
    p.add_argument("--accelerate-config", default=None, metavar="FILE",
                   help="launch with `accelerate launch --config_file FILE` (FSDP/FSDP2)")
    p.add_argument("--nnodes", type=int, default=None, help="number of nodes (default: $NNODES, else 1)")
    p.add_argument("--node-rank", type=int, default=None, help="this node's rank (default: $NODE_RANK, else 0)")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="processes per node (default: $NPROC_PER_NODE, the rendered value, else the GPU count)")
    p.add_argument("--master-addr", default=None, help="address of node 0 (default: $MASTER_ADDR)")
    p.add_argument("--master-port", type=int, default=None,
                   help="rendezvous port (default: $MASTER_PORT; a free port on a single node)")
    p.add_argument("--scripts-dir", default=None, metavar="DIR",
                   help="where a multi-node run writes its per-node and sbatch scripts (default: the YAML's folder)")


def _train_prefix() -> list[str]:
    found = shutil.which("minicpm-recipes")
    here = Path(sys.executable).parent / "minicpm-recipes"
    if found and here.is_file() and Path(found).resolve() == here.resolve():
        return ["minicpm-recipes"]
    return [sys.executable, "-m", "minicpm_recipes"]


def _write_scripts(args: argparse.Namespace, plan) -> list[Path]:
    from ..errors import UserError
    from ..fsutil import atomic_write_text
    from ..launch.scripts import render_scripts

    scripts_dir = Path(args.scripts_dir) if args.scripts_dir else Path(args.config).parent
    extra = []
    if args.accelerate_config:
        extra += ["--accelerate-config", args.accelerate_config]
    if args.no_resume:
        extra.append("--no-resume")
    scripts = render_scripts(plan, workdir=os.getcwd(), scripts_dir=str(scripts_dir.resolve()),
                             train_prefix=_train_prefix(), extra_args=extra)
    written = []
    try:
        scripts_dir.mkdir(parents=True, exist_ok=True)
        for s in scripts:
            atomic_write_text(scripts_dir / s.name, s.content, mode=0o755)
            written.append(scripts_dir / s.name)
    except OSError as exc:
        raise UserError(f"--scripts-dir {scripts_dir}: cannot write the launch scripts ({exc.strerror})") from exc
    return written


def run(args: argparse.Namespace) -> int:
    from ..launch.preflight import PreflightError
    from ..launch.prepare import prepare
    from ..launch.scripts import NODE_SCRIPT_ENV

    if args.json and not args.dry_run:
        from ..errors import UserError

        raise UserError("--json only goes with --dry-run")
    try:
        prepared = prepare(args.config, args.overrides, nnodes=args.nnodes, node_rank=args.node_rank,
                           nproc_per_node=args.nproc_per_node, master_addr=args.master_addr,
                           master_port=args.master_port, accelerate_config=args.accelerate_config,
                           no_resume=args.no_resume)
    except PreflightError as exc:
        for problem in exc.problems:
            print(f"minicpm-recipes train: error: {problem.message}", file=sys.stderr)
        return exc.exit_code
    plan = prepared.plan
    topo = plan.topology
    written = []
    if topo.nnodes > 1 and not os.environ.get(NODE_SCRIPT_ENV):
        written = _write_scripts(args, plan)
    if args.json:
        data = plan.to_dict()
        data.update(notes=list(prepared.notes), resume_from=prepared.resume_from, checked=list(prepared.checked),
                    scripts=[str(p) for p in written])
        print(json.dumps(data, indent=2))
        return 0
    print(f"preflight: ok ({', '.join(prepared.checked)})")
    for note in prepared.notes:
        print(f"note: {note}")
    where = "" if plan.engine == "llamafactory" else (f", node rank {topo.node_rank}, rendezvous "
                                                      f"{topo.master_addr}:{topo.master_port}")
    print(f"plan: {plan.engine}, {topo.nnodes} node(s) x {topo.nproc_per_node} process(es){where}")
    for path in written:
        print(f"wrote {path}")
    print(f"command: {plan.command()}")
    if args.dry_run:
        print("dry run: launch scripts written, nothing started" if written else "dry run: nothing started")
        return 0
    from ..launch.run import launch

    status = launch(plan)
    if status == 0:
        print("minicpm-recipes train: training finished", file=sys.stderr)
    else:
        print(f"minicpm-recipes train: training stopped with exit code {status}", file=sys.stderr)
    return status
