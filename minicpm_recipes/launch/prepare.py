"""Wire config -> preflight -> plan for `minicpm-recipes train` (no process is started here).

`prepare()` reads the YAML (with the overrides), the launch hints render left in it, the accelerate config and
the environment, builds the plan, and runs every preflight check; any problem raises `PreflightError` (a
`UserError`) listing them all. The result says what would run; `minicpm_recipes.launch.run.launch` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import preflight
from .engines import (
    AccelerateSettings,
    Hints,
    LaunchRequest,
    Plan,
    merge_hints,
    parse_node_script,
    parse_run_hint,
)
from .engines import plan_launch as _plan_launch


@dataclass(frozen=True)
class Prepared:
    config_path: str
    config: dict[str, Any]  # the YAML with the overrides applied
    plan: Plan
    notes: tuple[str, ...] = ()
    resume_from: str | None = None
    checked: tuple[str, ...] = field(default=())  # what preflight checked, for the report


def _resolve_near(ref: str, config_path: Path) -> Path | None:
    """A path written by render: relative to the folder render ran in (normally the current one) or the YAML's."""
    candidates = [Path(ref)] if Path(ref).is_absolute() else [Path(ref), config_path.parent / ref,
                                                              config_path.parent / Path(ref).name]
    return next((c for c in candidates if c.is_file()), None)


def read_hints(config_path: Path, text: str) -> Hints:
    hints = parse_run_hint(text)
    if hints.launch_script:
        script = _resolve_near(hints.launch_script, config_path)
        if script is not None:
            try:
                hints = merge_hints(hints, parse_node_script(script.read_text(encoding="utf-8")))
            except OSError:
                pass
    return hints


def read_accelerate_settings(path: Path) -> AccelerateSettings:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"accelerate config {path}: not readable YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"accelerate config {path}: expected a mapping (write one with `accelerate config` "
                        "or `minicpm-recipes render --dist fsdp2`)")

    def num(key: str) -> int | None:
        value = data.get(key)
        return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else None

    ip = data.get("main_process_ip")
    return AccelerateSettings(num_machines=num("num_machines"), num_processes=num("num_processes"),
                              main_process_ip=str(ip) if ip else None, main_process_port=num("main_process_port"))


def visible_gpu_count(env: Mapping[str, str]) -> int:
    """GPUs this process would see, without importing torch: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def tool_paths() -> dict[str, str]:
    """How to call the launchers: the bare name when PATH finds the one beside this Python, else its full path."""
    tools = {}
    bindir = Path(sys.executable).parent
    for name in ("llamafactory-cli", "torchrun", "accelerate"):
        local = bindir / name
        found = shutil.which(name)
        if local.is_file() and (found is None or Path(found).resolve() != local.resolve()):
            tools[name] = str(local)
        else:
            tools[name] = name
    return tools


def prepare(config: str, overrides: Sequence[str] = (), *, nnodes: int | None = None, node_rank: int | None = None,
            nproc_per_node: int | None = None, master_addr: str | None = None, master_port: int | None = None,
            accelerate_config: str | None = None, no_resume: bool = False, env: Mapping[str, str] | None = None,
            lf_check: bool = True, validate: preflight.Validator | None | str = "default",
            tools: Mapping[str, str] | None = None) -> Prepared:
    """Preflight + plan for `config` with `overrides`; raises PreflightError/UserError on any problem."""
    from ..lfcheck import free_port
    from ..lfspec import load_spec

    env = dict(os.environ if env is None else env)
    path = Path(config)
    cfg = preflight.load_config(path, overrides)
    text = path.read_text(encoding="utf-8")
    hints = read_hints(path, text)

    # the accelerate config: --accelerate-config, else the one render named in the YAML's `# Run:` line
    acc_path: Path | None = None
    if accelerate_config:
        acc_path = Path(accelerate_config)
        if not acc_path.is_file():
            raise UserError(f"--accelerate-config {accelerate_config}: no such file")
    elif hints.accelerate_config:
        acc_path = _resolve_near(hints.accelerate_config, path)
        if acc_path is None:
            raise UserError(f"{config} is meant for accelerate with {hints.accelerate_config} (its `# Run:` line), "
                            "which is not there; render it again, or pass --accelerate-config FILE")
    acc = read_accelerate_settings(acc_path) if acc_path else AccelerateSettings()

    explicit_nproc = any(v not in (None, "") for v in (nproc_per_node, env.get("NPROC_PER_NODE"),
                                                       hints.nproc_per_node, acc.num_processes))
    request = LaunchRequest(
        config=config, overrides=tuple(overrides), uses_deepspeed=cfg.get("deepspeed") not in (None, ""),
        accelerate_config=str(acc_path) if acc_path else None, accelerate=acc, nnodes=nnodes, node_rank=node_rank,
        nproc_per_node=nproc_per_node, master_addr=master_addr, master_port=master_port, env=env, hints=hints,
        device_count=0 if explicit_nproc else visible_gpu_count(env), free_port=free_port(),
    )
    plan = _plan_launch(request, tools if tools is not None else tool_paths())

    # preflight: cheap checks first, LLaMA-Factory's parser last
    facts, problems = preflight.gather_facts(cfg, world_size=plan.topology.world_size)
    outcome = preflight.evaluate(cfg, facts, no_resume=no_resume, version=load_spec().version)
    problems += list(outcome.problems)
    validator = preflight.default_validator() if validate == "default" else validate
    data_notes: list[str] = []
    problems += preflight.check_datasets(cfg, validator, notes=data_notes)
    checked = ["config keys", "cross-field rules", "template", "output_dir",
               "datasets registered" + (" and validated" if validator else " (validation not installed)")]
    if problems:
        raise preflight.PreflightError(problems)
    if lf_check:
        parsed_overrides = preflight.parse_overrides(overrides)
        problems = preflight.lf_parser_problems(path, parsed_overrides, accelerate_config=request.accelerate_config,
                                                cfg=cfg)
        if problems:
            raise preflight.PreflightError(problems)
        checked.append("LLaMA-Factory parser")
    return Prepared(config_path=config, config=cfg, plan=plan, notes=outcome.notes + tuple(data_notes) + plan.notes,
                    resume_from=outcome.resume_from, checked=tuple(checked))
