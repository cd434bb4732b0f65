"""Native backend, training side: real Trainer runs on the tiny model, CPU (LoRA, full, resume, DeepSpeed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_native_data import THREE_TURNS

from minicpm_recipes.cli import main
from minicpm_recipes.native import data as nd
from minicpm_recipes.native.train import SUMMARY_FILE

IGN = nd.IGNORE_INDEX


@pytest.fixture()
def repeated_data(tmp_path) -> tuple[Path, Path]:
    """One 3-turn conversation repeated: the model can memorise it."""
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps([{"messages": THREE_TURNS}] * 4, ensure_ascii=False), encoding="utf-8")
    dev.write_text(json.dumps([{"messages": THREE_TURNS}], ensure_ascii=False), encoding="utf-8")
    return train, dev


def _finetune(model: Path, train: Path, dev: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "--model", str(model), "--train-data", str(train), "--eval-data", str(dev),
                 "--output-dir", str(out), "--logging-steps", "1", "--no-bf16", *extra])


def _summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))


def _loss_and_predictions(model, tokenizer):
    """Masked loss of THREE_TURNS and the model's greedy prediction for every labelled position."""
    import torch

    enc = nd.encode_conversation(tokenizer, THREE_TURNS)
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        out = model(input_ids=ids, labels=torch.tensor([enc.labels]))
    predicted = out.logits[0].argmax(-1).tolist()
    positions = [i for i in range(1, len(enc.labels)) if enc.labels[i] != IGN]
    return float(out.loss), {i: (enc.labels[i], predicted[i - 1]) for i in positions}, out.logits


# ---- fast: argument errors ------------------------------------------------------------------------------
def test_validation_set_is_required(tiny_model, repeated_data, tmp_path, capsys):
    train, _dev = repeated_data
    rc = main(["finetune", "--model", str(tiny_model), "--train-data", str(train), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "a validation set is required" in err and err.count("\n") == 1


def test_machine_limits_are_one_line_errors(tiny_model, repeated_data, tmp_path, capsys):
    import importlib.util

    import torch

    train, dev = repeated_data
    if importlib.util.find_spec("flash_attn") is None:
        rc = _finetune(tiny_model, train, dev, tmp_path / "fa", "--attn-implementation", "flash_attention_2")
        err = capsys.readouterr().err
        assert rc == 2 and "needs the flash-attn package" in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        rc = main(["finetune", "--model", str(tiny_model), "--train-data", str(train), "--eval-data", str(dev),
                   "--output-dir", str(tmp_path / "bf"), "--bf16"])
        err = capsys.readouterr().err
        assert rc == 2 and "bf16" in err and "on a CPU pass --no-bf16" in err and err.count("\n") == 1
        assert not (tmp_path / "bf" / SUMMARY_FILE).exists()


def test_bad_record_is_reported_before_loading_the_model(tiny_model, repeated_data, tmp_path, capsys):
    _train, dev = repeated_data
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"messages": THREE_TURNS}, {"messages": THREE_TURNS[:2]}]), encoding="utf-8")
    rc = _finetune(tiny_model, bad, dev, tmp_path / "o")
    err = capsys.readouterr().err
    # one line naming the file and the record (from the project's validator, or the trainer's own check)
    assert rc == 2 and err.count("\n") == 1
    assert re.search(r"bad\.json(:\d+)?: record 1:", err) and "assistant" in err


# ---- slow: real training ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_finetune_lowers_loss_and_learns_every_turn_end(tiny_model, repeated_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train, dev = repeated_data
    out = tmp_path / "full"
    assert _finetune(tiny_model, train, dev, out, "--max-steps", "30", "--learning-rate", "5e-3",
                     "--eval-steps", "15", "--save-steps", "100") == 0
    summary = _summary(out)
    assert (summary["method"], summary["global_step"], summary["steps_run"]) == ("full", 30, 30)

    tokenizer = AutoTokenizer.from_pretrained(out)
    base_loss, base_pred, _ = _loss_and_predictions(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer)
    loss, pred, _ = _loss_and_predictions(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    assert loss < base_loss - 2.0, (base_loss, loss)
    # every reply's <|im_end|>, the intermediate ones included, is what the trained model predicts there
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    turn_ends = [i for i, (label, _p) in pred.items() if label == end]
    assert len(turn_ends) == 3
    assert [pred[i][1] for i in turn_ends] == [end] * 3
    assert [base_pred[i][1] for i in turn_ends] != [end] * 3  # not true of the untrained model
    # the Trainer's own logs agree: the loss went down
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 30 and losses[-1] < losses[0] - 2.0


def _skip_on_one_gpu() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("2 processes need 2 GPUs (or none: then they run on CPU)")


@pytest.mark.slow
def test_lora_adapter_and_merged_model_load(tiny_model, repeated_data, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train, dev = repeated_data
    out = tmp_path / "lora"
    assert _finetune(tiny_model, train, dev, out, "--use-lora", "--merge-lora", "--max-steps", "20",
                     "--learning-rate", "2e-2", "--eval-steps", "10", "--save-steps", "100") == 0
    summary = _summary(out)
    assert summary["method"] == "lora" and summary["merged_dir"] == str(out / "merged")
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    # the catalog's "all" for an unknown model: every linear layer, not the output head
    assert {name.split(".")[-1] for name in adapter_config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"}
    assert not (out / "model.safetensors").exists()  # only the adapter, not a full copy

    tokenizer = AutoTokenizer.from_pretrained(out)
    base_loss, _, base_logits = _loss_and_predictions(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer)
    adapter_loss, _, adapter_logits = _loss_and_predictions(AutoPeftModelForCausalLM.from_pretrained(out), tokenizer)
    merged_loss, _, merged_logits = _loss_and_predictions(
        AutoModelForCausalLM.from_pretrained(out / "merged"), tokenizer)
    assert adapter_loss < base_loss - 0.2, (base_loss, adapter_loss)  # frozen base: slower than full
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)
    assert not torch.allclose(base_logits, merged_logits, atol=1e-2)
    assert abs(adapter_loss - merged_loss) < 1e-4


@pytest.mark.slow
def test_resume_continues_the_global_step(tiny_model, repeated_data, tmp_path, capsys):
    train, dev = repeated_data
    out = tmp_path / "resume"
    common = ("--learning-rate", "1e-3", "--save-steps", "2", "--eval-steps", "2")
    assert _finetune(tiny_model, train, dev, out, "--max-steps", "4", *common) == 0
    assert (_summary(out)["global_step"], _summary(out)["steps_run"]) == (4, 4)
    first_ckpt = out / "checkpoint-2" / "trainer_state.json"
    first_mtime = first_ckpt.stat().st_mtime_ns

    # without --resume, an output folder with checkpoints is not silently trained over
    capsys.readouterr()
    assert _finetune(tiny_model, train, dev, out, "--max-steps", "6", *common) == 2
    assert "--resume latest" in capsys.readouterr().err
    assert _finetune(tiny_model, train, dev, out, "--max-steps", "6", "--resume", "3", *common) == 2
    assert "checkpoints there: 2, 4" in capsys.readouterr().err

    assert _finetune(tiny_model, train, dev, out, "--max-steps", "6", "--resume", "latest", *common) == 0
    summary = _summary(out)
    assert summary["resumed_from"] == str(out / "checkpoint-4")
    assert (summary["start_step"], summary["steps_run"], summary["global_step"]) == (4, 2, 6)
    assert (out / "checkpoint-6").is_dir()
    assert first_ckpt.stat().st_mtime_ns == first_mtime  # steps 1-4 were not trained again
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4, 5, 6]

    # resume from an earlier step number: back to step 2, on to 6 again
    assert _finetune(tiny_model, train, dev, out, "--max-steps", "6", "--resume", "2", *common) == 0
    summary = _summary(out)
    assert (summary["start_step"], summary["steps_run"], summary["global_step"]) == (2, 4, 6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deepspeed_zero2_two_processes(tiny_model, repeated_data, tmp_path):
    """torchrun with 2 CPU processes (gloo) and DeepSpeed ZeRO-2, then a DeepSpeed resume.

    The first DeepSpeed run on a machine JIT-builds DeepSpeed's shared-memory comm op (a minute or two,
    cached in ~/.cache/torch_extensions afterwards).
    """
    _skip_on_one_gpu()
    train, dev = repeated_data
    out = tmp_path / "zero2"
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "minicpm_recipes.native.finetune", "--model", str(tiny_model), "--train-data", str(train),
               "--eval-data", str(dev), "--output-dir", str(out), "--deepspeed", "zero2", "--no-bf16",
               "--learning-rate", "5e-3", "--logging-steps", "1", "--eval-steps", "4", "--save-steps", "4", *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=840)

    proc = launch("--max-steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    ds_config = json.loads(Path(summary["deepspeed"]).read_text())
    assert ds_config["zero_optimization"]["stage"] == 2 and ds_config["zero_allow_untested_optimizer"] is True
    shards = out / "checkpoint-4" / "global_step4"
    # ZeRO partitions the optimizer state: one shard per process
    assert (shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    assert (shards / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0]

    proc = launch("--max-steps", "8", "--resume", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(out)
    assert (summary["start_step"], summary["steps_run"], summary["global_step"]) == (4, 4, 8)
    assert (out / "checkpoint-8" / "global_step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()


@pytest.mark.slow
def test_deepspeed_without_a_launcher_is_a_world_of_one(tiny_model, repeated_data, tmp_path):
    """`finetune --deepspeed` started directly (no torchrun): the launcher's variables are set for one process
    (DeepSpeed would otherwise try MPI discovery); ZeRO-3 loads the model partitioned and saves it whole."""
    train, dev = repeated_data
    out = tmp_path / "zero3"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "minicpm_recipes", "finetune", "--model", str(tiny_model),
                           "--train-data", str(train), "--eval-data", str(dev), "--output-dir", str(out),
                           "--deepspeed", "zero3", "--no-bf16", "--max-steps", "2", "--eval-steps", "2",
                           "--save-steps", "2"], env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["world_size"] == 1 and summary["global_step"] == 2
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in base.parameters())


def test_project_validator_checks_both_files(tiny_model, repeated_data, tmp_path, monkeypatch, capsys):
    from minicpm_recipes.data import validate as validate_mod
    from minicpm_recipes.data.result import Problem, ValidationResult

    calls = []

    def fake_validate_file(path, **kwargs):
        calls.append((str(path), kwargs))
        result = ValidationResult()
        if str(path).endswith("dev.json"):
            result.add(Problem(file=str(path), line=3, record=0, path="$.messages", rule="planted",
                               message="planted problem"))
        return result

    monkeypatch.setattr(validate_mod, "validate_file", fake_validate_file)
    train, dev = repeated_data
    assert _finetune(tiny_model, train, dev, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert [c[0] for c in calls] == [str(train), str(dev)]
    assert all(c[1].get("format") == "messages" and c[1].get("stage") == "sft" for c in calls)
    assert "dev.json:3: record 0: $.messages: error: planted problem" in err and err.count("\n") == 1
