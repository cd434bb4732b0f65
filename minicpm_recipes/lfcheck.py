"""Check rendered files with the real libraries: LLaMA-Factory's argument parser, DeepSpeed's config classes
and accelerate's config loader.

The checks run in a child process (`python -m minicpm_recipes.lfcheck`) because LLaMA-Factory's parser sets up
torch.distributed and global DeepSpeed state. The child poses as rank 0 of a one-process torchrun job
(WORLD_SIZE=1 on a free loopback port), so DeepSpeed and FSDP configs parse as they would under torchrun;
without a GPU it adds `use_cpu: true` unless the config sets it (to true or false), as the only change to the
config. A train check also fails for a chat template the installed LLaMA-Factory does not have.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FileCheck:
    path: str
    kind: str  # train | deepspeed | accelerate
    ok: bool
    error: str | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> dict[str, str]:
    """The variables torchrun sets, for a world of one process on a free loopback port."""
    return {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def check_files(items: list[tuple[str, str | Path]], cwd: str | Path | None = None,
                overrides: dict[str, Any] | None = None, timeout: float = 600) -> list[FileCheck]:
    """Check (kind, path) items in one child process; paths inside configs resolve against `cwd`."""
    env = dict(os.environ)
    env.update(single_process_env())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    payload = json.dumps({"items": [[k, str(p)] for k, p in items], "overrides": overrides or {}})
    proc = subprocess.run(
        [sys.executable, "-m", "minicpm_recipes.lfcheck"], input=payload, capture_output=True, text=True,
        cwd=cwd, env=env, timeout=timeout,
    )
    marker = "@@LFCHECK@@"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(marker)), None)
    if line is None:
        raise RuntimeError(f"lfcheck child failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [FileCheck(**r) for r in json.loads(line[len(marker):])]


# ---- child side ------------------------------------------------------------------------------------------

def _check_train(path: str, overrides: dict[str, Any]) -> None:
    import torch
    from llamafactory.hparams import get_train_args
    from omegaconf import OmegaConf

    # read exactly as `llamafactory-cli train FILE` does
    config = OmegaConf.to_container(OmegaConf.load(Path(path).absolute()))
    config.update(overrides)
    if not torch.cuda.is_available() and config.get("use_cpu") is None:
        config["use_cpu"] = True
    _check_types(config)
    _, data_args, *_ = get_train_args(config)
    # the parser takes any template name; LLaMA-Factory only looks it up when it loads the tokenizer
    if data_args.template is not None:
        from llamafactory.data.template import TEMPLATES

        if data_args.template not in TEMPLATES:
            raise ValueError(f"template {data_args.template!r} does not exist in the installed LLaMA-Factory")


def _check_types(config: dict[str, Any]) -> None:
    """Type-check values the way LLaMA-Factory's command-line parser would.

    `llamafactory-cli train FILE.yaml` hands the YAML to HfArgumentParser.parse_dict, which assigns values
    without converting or checking them (`num_train_epochs: three` only fails an hour later). Parsing the same
    values as command-line arguments runs argparse's type conversion and choices for every field.
    """
    import contextlib
    import io

    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
    parser = HfArgumentParser(_TRAIN_ARGS)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        last = message[-1] if message else "invalid argument value"
        raise ValueError(last.split(": error: ", 1)[-1]) from None  # without argparse's "PROG: error: "
    except ValueError:
        # dataclass __post_init__ checks run again in get_train_args with the real values; only argparse's
        # type errors are wanted here
        pass


def _check_deepspeed(path: str) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    hf = HfTrainerDeepSpeedConfig(path)  # what transformers does with `deepspeed: FILE`
    # fill the "auto" values as the HF Trainer would for a small run, then let DeepSpeed validate everything
    filled = json.loads(json.dumps(hf.config))
    filled.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=1,
                  gradient_clipping=1.0)
    filled.setdefault("fp16", {})["enabled"] = False  # both sections are optional in DeepSpeed's JSON
    filled.setdefault("bf16", {})["enabled"] = True
    zero = filled.get("zero_optimization", {})
    for key, value in list(zero.items()):
        if value == "auto":
            zero[key] = 1_000_000
    DeepSpeedConfig(filled)
    if raw.get("zero_optimization", {}).get("stage") not in (0, 1, 2, 3):
        raise ValueError("zero_optimization.stage must be 0..3")


def _check_accelerate(path: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    load_config_from_file(path)
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "llamafactory.launcher", "x.yaml"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        import torch

        if not torch.cuda.is_available():
            # FSDP1 sync_module_states (and cpu_ram_efficient_loading, which needs it) must broadcast on an
            # accelerator; without one they are switched off for the check, everything else is checked
            os.environ["FSDP_SYNC_MODULE_STATES"] = "false"
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            FullyShardedDataParallelPlugin()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _child() -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    request = json.loads(sys.stdin.read())
    results = []
    for kind, path in request["items"]:
        try:
            if kind == "train":
                _check_train(path, request.get("overrides", {}))
            elif kind == "deepspeed":
                _check_deepspeed(path)
            elif kind == "accelerate":
                _check_accelerate(path)
            else:
                raise ValueError(f"unknown kind {kind}")
            results.append({"path": path, "kind": kind, "ok": True, "error": None})
        except BaseException as exc:  # noqa: BLE001 - report every failure, SystemExit from argparse included
            results.append({"path": path, "kind": kind, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    print("@@LFCHECK@@" + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
