"""Launch LLaMA-Factory training: config -> preflight -> plan -> launch.

    from minicpm_recipes.launch import prepare, launch

    prepared = prepare("configs/x.yaml", ["max_steps=10"])   # preflight + plan; UserError on any problem
    print(prepared.plan.command())                           # the exact command
    status = launch(prepared.plan)                            # the only step that runs anything

Modules, one job each:
  `preflight`  pure checks of a training YAML (+ overrides) returning `Problem`s; `run_preflight` gathers the
               facts (files, installed packages, LLaMA-Factory's own parser in a child process) and calls them
  `engines`    pure: `LaunchRequest` -> `Plan` (engine, argv, env); `Hints` read from rendered files
  `run`        `launch(plan)`: subprocess in its own process group, signals forwarded, exit code passed through
  `scripts`    multi-node per-node launch script and Slurm sbatch script (rendered, pure)
  `prepare`    wires them together for `minicpm-recipes train` (and for `preview`, make targets, benchmarks)

Nothing here imports torch or LLaMA-Factory at import time.
"""

from __future__ import annotations

from .engines import ENGINES, AccelerateSettings, Hints, LaunchRequest, Plan, Topology, plan_launch


def launch(plan: Plan, **kwargs) -> int:
    """Run a plan (see `minicpm_recipes.launch.run.launch`)."""
    from .run import launch as _launch

    return _launch(plan, **kwargs)


def prepare(config: str, overrides=(), **kwargs):
    """Preflight + plan for a training YAML (see `minicpm_recipes.launch.prepare.prepare`)."""
    from .prepare import prepare as _prepare

    return _prepare(config, overrides, **kwargs)


__all__ = ["ENGINES", "AccelerateSettings", "Hints", "LaunchRequest", "Plan", "Topology", "launch", "plan_launch",
           "prepare"]
