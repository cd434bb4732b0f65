"""`render sft --backend trainer`: launch script + configs for `minicpm-recipes finetune`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MINICPM_DATA, REPO
from minicpm_recipes.cli import main
from minicpm_recipes.native.render import TrainerRenderOptions, finetune_parser, render_trainer
from minicpm_recipes.render import RenderOptions, render


def _finetune_argv(script: str) -> list[str]:
    """The arguments the script passes to `minicpm-recipes finetune` (continuation lines, "$@" dropped)."""
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("exec "))
    words = shlex.split(line)
    start = words.index("finetune") + 1
    assert words[-1] == "$@"
    return words[start:-1]


def test_default_backend_output_is_unchanged(tmp_path, monkeypatch, capsys):
    outputs = {}
    for name, extra in (("a", []), ("b", ["--backend", "llamafactory"])):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert main(["render", "sft", "--dist", "zero2", *extra, "-o", "cfg"]) == 0
        outputs[name] = {p.name: p.read_text() for p in (tmp_path / name / "cfg").iterdir()}
        assert "llamafactory-cli train" in capsys.readouterr().out
    assert outputs["a"] == outputs["b"] and len(outputs["a"]) == 2


def test_trainer_zero2_script_parses_as_finetune_arguments(tmp_path):
    rendered = render_trainer(TrainerRenderOptions(dist="zero2", gpus_per_node=8, model="minicpm4",
                                                   train_data="data/train.json", eval_data="data/dev.json",
                                                   ref_dir="cfg"))
    names = [f.name for f in rendered.files]
    assert names == ["minicpm4-8b_lora_sft_zero2_trainer.sh", "ds_z2_config.json"]
    script = rendered.files[0]
    assert script.executable and script.role == "launch"
    assert 'exec torchrun --standalone --nproc_per_node "$NPROC_PER_NODE" -m minicpm_recipes finetune' in script.content
    args = finetune_parser().parse_args(_finetune_argv(script.content))
    assert (args.model, args.train_data, args.eval_data, args.dev_ratio) == (
        "openbmb/MiniCPM4-8B", "data/train.json", "data/dev.json", None)
    assert args.use_lora and args.deepspeed == "cfg/ds_z2_config.json"
    # the same recipe defaults as the LLaMA-Factory backend
    lf = render(RenderOptions(stage="sft", dist="zero2", model="minicpm4", gpus_per_node=8)).params
    assert args.learning_rate == lf["learning_rate"] and args.bf16 is lf["bf16"] is True
    assert args.per_device_train_batch_size == lf["per_device_train_batch_size"]
    assert args.gradient_accumulation_steps == lf["gradient_accumulation_steps"]
    assert args.num_train_epochs == lf["num_train_epochs"] and args.max_length == lf["cutoff_len"]
    assert (args.eval_steps, args.save_steps, args.logging_steps) == (lf["eval_steps"], lf["save_steps"],
                                                                      lf["logging_steps"])
    # the DeepSpeed JSON is the one the LLaMA-Factory backend writes
    lf_ds = render(RenderOptions(stage="sft", dist="zero2")).file("deepspeed").content
    assert rendered.files[1].content == lf_ds and json.loads(lf_ds)["zero_optimization"]["stage"] == 2
    assert rendered.commands == ("bash cfg/minicpm4-8b_lora_sft_zero2_trainer.sh",)


def test_trainer_set_overrides_and_errors():
    opts = dict(method="full", eval_data="dev.json", train_data="train.json")
    rendered = render_trainer(TrainerRenderOptions(**opts, sets=(
        "learning_rate=5e-5", "max_steps=100", "bf16=false", "cutoff_len=512", "gradient_checkpointing=true",
        "save_total_limit=null")))
    args = finetune_parser().parse_args(_finetune_argv(rendered.files[0].content))
    assert (args.learning_rate, args.max_steps, args.bf16, args.max_length) == (5e-5, 100, False, 512)
    assert args.gradient_checkpointing and not args.use_lora and args.deepspeed is None
    assert "exec minicpm-recipes finetune" in rendered.files[0].content  # one process: no launcher
    from minicpm_recipes.errors import UserError

    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        render_trainer(TrainerRenderOptions(**opts, sets=("learning_rat=1",)))
    with pytest.raises(UserError, match="not a valid int"):
        render_trainer(TrainerRenderOptions(**opts, sets=("max_steps=many",)))
    with pytest.raises(UserError, match="own render option"):
        render_trainer(TrainerRenderOptions(**opts, sets=("output_dir=x",)))
    with pytest.raises(UserError, match="sft only"):
        render_trainer(TrainerRenderOptions(**opts), "dpo")
    for ratio in (2.0, -1.0, 1.0):
        with pytest.raises(UserError, match=f"--dev-ratio must be between 0 and 1 \\(exclusive\\), got {ratio:g}"):
            render_trainer(TrainerRenderOptions(method="full", train_data="train.json", dev_ratio=ratio))


def test_trainer_fsdp2_multinode_script(tmp_path):
    rendered = render_trainer(TrainerRenderOptions(dist="fsdp2", nodes=2, gpus_per_node=4, dev_ratio=0.05,
                                                   master_addr="10.0.0.1", ref_dir="cfg"))
    script = rendered.files[0].content
    assert [f.name for f in rendered.files] == ["minicpm-sala_lora_sft_fsdp2_2nodes_trainer.sh", "fsdp2_config.yaml"]
    assert "--config_file cfg/fsdp2_config.yaml" in script and '--machine_rank "$NODE_RANK"' in script
    args = finetune_parser().parse_args(_finetune_argv(script))
    assert args.dev_ratio == 0.05 and args.eval_data is None and args.deepspeed is None
    import yaml

    acc = yaml.safe_load(rendered.files[1].content)
    assert (acc["distributed_type"], acc["num_processes"], acc["mixed_precision"]) == ("FSDP", 8, "bf16")
    assert len(rendered.commands) == 2 and rendered.commands[1].startswith("NODE_RANK=1 MASTER_ADDR=10.0.0.1 ")
    path = tmp_path / "node.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # a node started without NODE_RANK stops with a clear message before launching anything
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert proc.returncode != 0 and "set NODE_RANK" in proc.stderr


def test_render_cli_trainer_backend(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["render", "sft", "--backend", "trainer", "--dist", "zero3", "--gpus-per-node", "2", "-o", "cfg"]) == 0
    out = capsys.readouterr().out
    script = tmp_path / "cfg" / "minicpm-sala_lora_sft_zero3_trainer.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    assert (tmp_path / "cfg" / "ds_z3_config.json").is_file()
    assert "bash cfg/minicpm-sala_lora_sft_zero3_trainer.sh" in out and "0.1 of the training data" in out
    args = finetune_parser().parse_args(_finetune_argv(script.read_text()))
    assert Path(args.train_data).resolve() == (REPO / "datasets" / "demo" / "minicpm_demo_sft_zh.json").resolve()
    assert args.dev_ratio == 0.1 and args.deepspeed == "cfg/ds_z3_config.json"
    for bad in (["--template", "cpm4"], ["--dataset", "x"]):
        assert main(["render", "sft", "--backend", "trainer", *bad]) == 2
        assert "LLaMA-Factory option" in capsys.readouterr().err
    assert main(["render", "sft", "--train-data", "t.json"]) == 2
    assert "applies to --backend trainer" in capsys.readouterr().err
    assert main(["render", "sft", "--backend", "trainer", "--eval-data", "d.json", "-o", "-"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("#!/usr/bin/env bash") and "--eval-data d.json" in printed


def _skip_on_one_gpu() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("2 processes need 2 GPUs (or none: then they run on CPU)")


@pytest.mark.slow
def test_rendered_torchrun_script_trains(tiny_model, tmp_path):
    """The rendered script, run as is: torchrun with 2 CPU processes (DDP over gloo) on the tiny model."""
    _skip_on_one_gpu()
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    render_cmd = [sys.executable, "-m", "minicpm_recipes", "render", "sft", "--backend", "trainer",
                  "--model", str(tiny_model), "--method", "full", "--gpus-per-node", "2",
                  "--train-data", str(MINICPM_DATA / "train.json"), "--eval-data", str(MINICPM_DATA / "dev.json"),
                  "--output-dir", "out", "--set", "max_steps=3", "--set", "bf16=false", "--set", "save_steps=3",
                  "--set", "eval_steps=3", "--set", "logging_steps=1", "--set", "max_length=1024",
                  "--set", "per_device_train_batch_size=1", "--set", "gradient_accumulation_steps=1", "-o", "cfg"]
    proc = subprocess.run(render_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    command = re.search(r"^  (bash \S+)$", proc.stdout, re.M).group(1)
    proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "finetune_summary.json").read_text())
    assert (summary["world_size"], summary["global_step"], summary["method"]) == (2, 3, "full")
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "checkpoint-3").is_dir()
