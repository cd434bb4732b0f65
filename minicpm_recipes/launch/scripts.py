"""Multi-node launch files for a plan: a per-node script and a Slurm sbatch script (pure: plan -> texts).

Both run `minicpm-recipes train CONFIG ...` on every node with NNODES/NODE_RANK/NPROC_PER_NODE/MASTER_ADDR/
MASTER_PORT exported, so each node checks the config before it trains. Templates: templates/launch/.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .engines import Plan

NODE_SCRIPT_ENV = "MINICPM_RECIPES_NODE_SCRIPT"  # set by the per-node script: do not write the scripts again


@dataclass(frozen=True)
class Script:
    name: str
    content: str


def script_names(config: str) -> tuple[str, str]:
    stem = Path(config).name
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return f"{stem}.node.sh", f"{stem}.sbatch"


def render_scripts(plan: Plan, *, workdir: str, scripts_dir: str, train_prefix: Sequence[str],
                   extra_args: Sequence[str] = ()) -> list[Script]:
    """The per-node and sbatch scripts for a multi-node plan. `train_prefix`: how to call `minicpm-recipes`."""
    from .. import __version__
    from ..render import jinja_env

    topo = plan.topology
    node_name, sbatch_name = script_names(plan.config)
    script_path = str(Path(scripts_dir) / node_name)
    train_command = " ".join(shlex.quote(w) for w in [*train_prefix, "train", plan.config, *plan.overrides,
                                                          *extra_args])
    job = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(plan.config).stem)[:60] or "train"
    values = dict(config=plan.config, version=__version__, engine=plan.engine, nnodes=topo.nnodes,
                  nproc_per_node=topo.nproc_per_node, master_addr=topo.master_addr or "",
                  master_port=topo.master_port or 29500, workdir=workdir, train_command=train_command,
                  script_name=node_name, sbatch_name=sbatch_name, script_path=script_path, job_name=job)
    env = jinja_env()
    return [Script(node_name, env.get_template("launch/train_node.sh.j2").render(**values)),
            Script(sbatch_name, env.get_template("launch/train.sbatch.j2").render(**values))]
