"""Make targets: {sft,dpo,kto,pretrain}-{lora,full} (mk/train.mk) and `make demo` (mk/demo.mk).

Fast tests run the real targets with MR pointing at a recording wrapper: `render` is the real command (fast, no
torch), `train` and `tiny-model` only record their arguments. Slow tests train for real on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

VENV = Path(sys.executable).parent.parent


def _make(*args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env)
    full_env.pop("MAKEFLAGS", None)
    full_env.pop("MFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), f"VENV={VENV}", *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def recorder(tmp_path) -> tuple[Path, Path]:
    """A stand-in for the minicpm-recipes executable: records each call; runs `render` for real."""
    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "mr"
    script.write_text(f"""#!{sys.executable}
import json, os, subprocess, sys
with open({str(calls)!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "render":
    sys.exit(subprocess.call([{sys.executable!r}, "-m", "minicpm_recipes", *sys.argv[1:]]))
if sys.argv[1] == "tiny-model":
    os.makedirs(sys.argv[2], exist_ok=True)
    open(os.path.join(sys.argv[2], "config.json"), "w").write("{{}}")
""")
    script.chmod(0o755)
    return script, calls


def _calls(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _sets(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


def test_model_target_renders_the_model_recipe_and_trains_it(recorder, tmp_path):
    mr, calls = recorder
    proc = _make("sft-lora", f"MR={mr}", "MODEL=openbmb/MiniCPM-SALA", "DIST=zero3", "GPUS=8", "NODES=1",
                 "DATASET=minicpm_demo_sft_zh", f"CONFIGS={tmp_path / 'cfg'}", f"TINY_MODEL={tmp_path / 'no-tiny'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    render, train = _calls(calls)
    assert render[:1] == ["render"] and train[:1] == ["train"]
    assert _opt(render, "--model") == "openbmb/MiniCPM-SALA" and _opt(render, "--dist") == "zero3"
    assert _opt(render, "--gpus-per-node") == "8" and _opt(render, "--method") == "lora"
    assert _sets(render) == {}  # no CPU overrides for a real model
    config = Path(train[1])
    assert config == tmp_path / "cfg" / "minicpm-sala_lora_sft_zero3.yaml"
    params = yaml.safe_load(config.read_text())
    assert params["model_name_or_path"] == "openbmb/MiniCPM-SALA" and params["deepspeed"].endswith("ds_z3_config.json")
    assert params["dataset"] == "minicpm_demo_sft_zh" and params["bf16"] is True and "use_cpu" not in params
    assert train[2:] == ["--nnodes", "1"]
    assert not (tmp_path / "no-tiny").exists()  # the tiny model is not built when MODEL is given


@pytest.mark.parametrize("target", [f"{s}-{m}" for s in ("sft", "dpo", "kto", "pretrain") for m in ("lora", "full")])
def test_default_targets_use_the_tiny_model_on_cpu(recorder, tmp_path, target):
    mr, calls = recorder
    stage, method = target.split("-")
    tiny = tmp_path / "models" / "tiny"
    proc = _make(target, f"MR={mr}", f"TINY_MODEL={tiny}", f"TINY_CONFIGS={tmp_path / 'cfg'}",
                 f"TINY_RUNS={tmp_path / 'runs'}", "TINY_STEPS=2", "DRY_RUN=1", "SET=learning_rate=0.001")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    made, render, train = _calls(calls)
    assert made == ["tiny-model", str(tiny)]
    assert _opt(render, "--model") == str(tiny) and _opt(render, "--template") == "cpm4"
    params = yaml.safe_load(Path(train[1]).read_text())
    assert params["stage"] == {"pretrain": "pt"}.get(stage, stage) and params["finetuning_type"] == method
    assert params["use_cpu"] is True and params["bf16"] is False and params["max_steps"] == 2
    assert params["logging_steps"] == 1 and params["learning_rate"] == 0.001
    assert params["output_dir"] == f"{tmp_path / 'runs'}/tiny/{method}/{stage}"
    assert params["dataset"].startswith("minicpm_demo_")
    assert "--dry-run" in train


def test_failed_render_stops_before_training(recorder, tmp_path):
    mr, calls = recorder
    proc = _make("sft-lora", f"MR={mr}", "MODEL=openbmb/MiniCPM-SALA", "DIST=no-such-dist",
                 f"CONFIGS={tmp_path / 'cfg'}")
    assert proc.returncode != 0
    assert [c[0] for c in _calls(calls)] == ["render"]
    assert "no-such-dist" in proc.stderr


# ---- real training ---------------------------------------------------------------------------------------

@pytest.fixture
def tiny_copy(tiny_model, tmp_path) -> Path:
    target = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model, target)
    return target


@pytest.mark.slow
def test_make_sft_full_trains_the_tiny_model(tiny_copy, tmp_path):
    runs = tmp_path / "runs"
    proc = _make("sft-full", f"TINY_MODEL={tiny_copy}", f"TINY_CONFIGS={tmp_path / 'cfg'}", f"TINY_RUNS={runs}",
                 "TINY_STEPS=2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = runs / "tiny" / "full" / "sft"
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in logged if "loss" in row] == [1, 2]
    assert (out / "model.safetensors").is_file() and (out / "training_loss.png").stat().st_size > 0
    assert "preflight: ok" in proc.stdout


@pytest.mark.slow
def test_make_demo_end_to_end(tiny_copy, tmp_path):
    demo = tmp_path / "demo"
    proc = _make("demo", f"TINY_MODEL={tiny_copy}", f"DEMO_DIR={demo}", "DEMO_STEPS=3", timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for stage in ("sft", "dpo", "kto", "pretrain"):
        run = demo / "runs" / "tiny" / "lora" / stage
        losses = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
        assert len([row for row in losses if "loss" in row]) == 3, stage
        assert (run / "training_loss.png").stat().st_size > 0 and (run / "adapter_model.safetensors").is_file()
    info = json.loads((demo / "data" / "dataset_info.json").read_text())
    assert set(info) == {"minicpm_demo_sft_zh", "minicpm_demo_dpo", "minicpm_demo_kto", "minicpm_demo_pretrain"}
    assert (demo / "merged" / "model.safetensors").is_file()
    export = yaml.safe_load((demo / "configs" / "tiny_lora_sft_export.yaml").read_text())
    assert export["adapter_name_or_path"] == str(demo / "runs" / "tiny" / "lora" / "sft")
    chat_log = (demo / "logs" / "chat.log").read_text()
    answer = [line.split("Assistant: ", 1)[1] for line in chat_log.splitlines() if "Assistant: " in line]
    assert answer and answer[0].strip()
    assert f"Assistant: {answer[0]}" in out  # the demo shows the answer
    assert "ok: " in out and "demo: done" in out
    assert "first sample (input_ids)" in out and "longer than cutoff_len 512" in out  # the preview step
