"""Installed recipes work from inside the checkout: LLaMA-Factory accepts them, and one trains the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_install import LF_INFO, make_checkout, snapshot

from minicpm_recipes.cli import main
from minicpm_recipes.install import CONFIG_DIR, MANIFEST
from minicpm_recipes.lfcheck import check_files

# CPU settings for a run of seconds; everything else comes from the installed YAML
CPU_OVERRIDES = ["bf16=false", "use_cpu=true", "max_steps=3", "max_samples=40", "save_steps=2", "eval_steps=2",
                 "logging_steps=1", "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
                 "preprocessing_num_workers=1", "dataloader_num_workers=0", "cutoff_len=256"]


def _llamafactory_cli() -> str:
    exe = Path(sys.executable).with_name("llamafactory-cli")
    return str(exe) if exe.exists() else shutil.which("llamafactory-cli") or "llamafactory-cli"


@pytest.mark.slow
def test_llamafactory_accepts_every_file_of_the_default_install(tmp_path):
    root = make_checkout(tmp_path / "LLaMA-Factory")
    assert main(["install", "--into", str(root)]) == 0
    manifest = json.loads((root / MANIFEST).read_text())
    items = []
    for rel in manifest["files"]:
        if rel.endswith(".yaml"):
            items.append(("train", rel))
        elif rel.endswith(".json") and rel.startswith(CONFIG_DIR):
            items.append(("deepspeed", rel))
    assert len([i for i in items if i[0] == "train"]) == 24 and any(k == "deepspeed" for k, _ in items)
    results = check_files(items, cwd=root)  # relative paths inside the YAMLs resolve from the checkout
    failures = [f"{r.path}: {r.error}" for r in results if not r.ok]
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_an_installed_recipe_trains_the_tiny_model_from_the_checkout(tmp_path, tiny_model, stage):
    root = make_checkout(tmp_path / "LLaMA-Factory")
    assert main(["install", "--into", str(root), "--models", str(tiny_model), "--template", "cpm4",
                 "--stages", stage, "--variants", "lora"]) == 0
    recipe = f"{CONFIG_DIR}/{tiny_model.name}_lora_{stage}.yaml"
    params = yaml.safe_load((root / recipe).read_text())
    assert params["model_name_or_path"] == str(tiny_model.resolve())
    before = snapshot(root)

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", WANDB_DISABLED="true", OMP_NUM_THREADS="1")
    proc = subprocess.run([_llamafactory_cli(), "train", recipe, *CPU_OVERRIDES], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    out_dir = root / params["output_dir"]  # relative to the checkout: the run happened there
    assert (out_dir / "adapter_model.safetensors").is_file() or (out_dir / "adapter_model.bin").is_file()
    state = json.loads((out_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    # training read the installed data and left the checkout's data alone
    info = json.loads((root / "data" / "dataset_info.json").read_text())
    assert all(info[name] == entry for name, entry in LF_INFO.items())
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k.startswith(("data/", "examples/"))} == \
        {k: v for k, v in before.items() if k.startswith(("data/", "examples/"))}
