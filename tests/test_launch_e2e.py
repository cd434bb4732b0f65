"""End to end on CPU with the real LLaMA-Factory and the tiny model: `render ... -o DIR`, then `train`.

Every run is real training; the assertions read what LLaMA-Factory wrote (trainer_state.json, all_results.json,
the saved adapter/weights) and what `train` printed (engine, exact command).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from minicpm_recipes.lfcheck import free_port

pytestmark = pytest.mark.slow

STAGES = {"sft": "sft", "dpo": "dpo", "kto": "kto", "pretrain": "pt"}


def fast_sets(max_steps: int = 2, save_steps: int = 2) -> list[str]:
    values = {"bf16": "false", "use_cpu": "true", "max_steps": max_steps, "save_steps": save_steps,
              "preprocessing_num_workers": "null", "dataloader_num_workers": 0, "max_samples": 16,
              "val_size": "null", "eval_strategy": "null", "eval_steps": "null", "cutoff_len": 128,
              "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "logging_steps": 1}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def render(cwd: Path, tiny_model: Path, stage: str, *args: str, sets: list[str] | None = None) -> str:
    """Render into cwd/cfg with the bundled demo data; return the training YAML's path relative to cwd."""
    proc = run_cli("render", stage, "--model", str(tiny_model), "--template", "cpm4", "--output-dir", "out",
                   "-o", "cfg", *(sets if sets is not None else fast_sets()), *args, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = next(line for line in proc.stdout.splitlines() if line.startswith("wrote "))
    path = first[len("wrote "):]
    assert not os.path.isabs(path) and path.endswith(".yaml"), path
    return path


def train(cwd: Path, config: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run_cli("train", config, *args, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def logs(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def command_of(proc: subprocess.CompletedProcess) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("command: "))[len("command: "):]


def check_trained(out: Path, *, method: str, steps: int) -> dict:
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    if method == "lora":
        assert (out / "adapter_model.safetensors").stat().st_size > 0
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
        assert not (out / "model.safetensors").exists()
    else:
        assert (out / "model.safetensors").stat().st_size > 0
        assert not (out / "adapter_model.safetensors").exists()
    return state


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_single_process(tmp_path, tiny_model, stage, method):
    config = render(tmp_path, tiny_model, stage, "--method", method)
    proc = train(tmp_path, config)
    assert "plan: llamafactory, 1 node(s) x 1 process(es)" in proc.stdout
    assert command_of(proc).split()[-2:] == ["train", config]
    assert Path(command_of(proc).split()[0]).name == "llamafactory-cli"
    check_trained(tmp_path / "out", method=method, steps=2)
    args = yaml.safe_load((tmp_path / config).read_text())
    assert args["stage"] == STAGES[stage] and args["finetuning_type"] == method


def test_ddp_two_processes(tmp_path, tiny_model):
    config = render(tmp_path, tiny_model, "sft", "--gpus-per-node", "2")
    proc = train(tmp_path, config)
    command = command_of(proc)
    assert " --nnodes 1 --node_rank 0 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port " in command
    assert command.endswith(f"-m llamafactory.launcher {config}")
    assert logs(proc).count("world size: 2") == 2  # both ranks report it
    state = check_trained(tmp_path / "out", method="lora", steps=2)
    assert state["train_batch_size"] == 1


def test_two_nodes_rendezvous_on_localhost(tmp_path, tiny_model):
    config = render(tmp_path, tiny_model, "sft")
    port = free_port()
    base = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "minicpm_recipes", "train", config], cwd=tmp_path,
                              env=dict(os.environ, **base, NODE_RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for rank, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {rank}: {out[-3000:]}\n{err[-5000:]}"
        assert f"--nnodes 2 --node_rank {rank} --nproc_per_node 1 --master_addr 127.0.0.1 --master_port {port}" in out
    assert all("world size: 2" in out + err for out, err in outputs)
    check_trained(tmp_path / "out", method="lora", steps=2)
    # the per-node and Slurm scripts were written beside the YAML, and rerun the same command
    stem = Path(config).stem
    node_script = (tmp_path / "cfg" / f"{stem}.node.sh").read_text()
    sbatch = (tmp_path / "cfg" / f"{stem}.sbatch").read_text()
    assert f"export MASTER_PORT=\"${{MASTER_PORT:-{port}}}\"" in node_script and f"train {config}" in node_script
    assert "#SBATCH --nodes=2" in sbatch and f"{stem}.node.sh" in sbatch
    subprocess.run(["bash", "-n", str(tmp_path / "cfg" / f"{stem}.node.sh")], check=True)
    subprocess.run(["bash", "-n", str(tmp_path / "cfg" / f"{stem}.sbatch")], check=True)


def test_deepspeed_zero3_two_processes(tmp_path, tiny_model):
    config = render(tmp_path, tiny_model, "sft", "--method", "full", "--dist", "zero3", "--gpus-per-node", "2")
    # use_cpu: true makes transformers set up plain gloo without DeepSpeed's comm, and DeepSpeed then sees a world
    # of 1 and fails its batch-size check: preflight says so before anything starts
    refused = run_cli("train", config, "--dry-run", cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "use_cpu" in refused.stderr, refused.stderr
    # without use_cpu DeepSpeed picks the CPU accelerator itself
    # DeepSpeed JIT-builds its CPU communication op (a minute); keep our build apart from other flag sets
    ext = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions_minicpm_recipes")
    proc = train(tmp_path, config, "use_cpu=null", env={"TORCH_EXTENSIONS_DIR": str(ext)})
    assert "plan: torchrun, 1 node(s) x 2 process(es)" in proc.stdout
    assert logs(proc).count("world size: 2") == 2
    check_trained(tmp_path / "out", method="full", steps=2)
    # a DeepSpeed checkpoint: ZeRO-3 partitioned states, one per rank
    shards = sorted(p.name for p in (tmp_path / "out" / "checkpoint-2" / "global_step2").iterdir())
    assert any("zero_pp_rank_1" in s for s in shards) and any("zero_pp_rank_0" in s for s in shards), shards


def test_accelerate_fsdp2_two_processes(tmp_path, tiny_model):
    config = render(tmp_path, tiny_model, "sft", "--method", "full", "--dist", "fsdp2", "--gpus-per-node", "2")
    proc = train(tmp_path, config)
    command = command_of(proc)
    assert "accelerate launch --config_file cfg/fsdp2_config.yaml --num_machines 1 --num_processes 2 " in command
    assert command.endswith(f"-m llamafactory.launcher {config}")
    assert logs(proc).count("world size: 2") == 2 and "You are using fsdp2" in logs(proc)
    check_trained(tmp_path / "out", method="full", steps=2)


def test_fsdp1_config_is_checked_by_accelerate_loader(tmp_path, tiny_model):
    """FSDP (v1) needs a GPU to train; on CPU its rendered config still goes through accelerate's loader."""
    config = render(tmp_path, tiny_model, "sft", "--method", "full", "--dist", "fsdp", "--gpus-per-node", "2")
    proc = train(tmp_path, config, "--dry-run", "--json")
    plan = json.loads(proc.stdout)
    assert "LLaMA-Factory parser" in plan["checked"]
    assert plan["engine"] == "accelerate" and plan["topology"]["world_size"] == 2
    assert plan["argv"][1:4] == ["launch", "--config_file", "cfg/fsdp_config.yaml"]
    assert plan["argv"][-3:] == ["-m", "llamafactory.launcher", config]
    assert not (tmp_path / "out").exists()
    # a broken accelerate config is refused by accelerate's own loader
    acc = tmp_path / "cfg" / "fsdp_config.yaml"
    acc.write_text(acc.read_text().replace("fsdp_sharding_strategy: FULL_SHARD", "fsdp_sharding_strategy: HALF"))
    bad = run_cli("train", config, "--dry-run", cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "accelerate rejects" in bad.stderr, bad.stderr


def test_resume_after_sigkill(tmp_path, tiny_model):
    """Killed with SIGKILL after its first checkpoint, the same command continues from that checkpoint."""
    steps, every = 30, 5
    config = render(tmp_path, tiny_model, "sft", sets=fast_sets(max_steps=steps, save_steps=every))
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "minicpm_recipes", "train", config], cwd=tmp_path,
                             stdout=log, stderr=subprocess.STDOUT)
    state_file = tmp_path / "out" / f"checkpoint-{every}" / "trainer_state.json"
    end = time.monotonic() + 300
    while not state_file.exists() and first.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before its first checkpoint"
    time.sleep(0.2)  # let the checkpoint's last file land
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "trainer_state.json").exists()  # it really did not finish
    done = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))
    assert done and done[-1] < steps
    last = done[-1]

    proc = train(tmp_path, config)
    assert f"note: resuming from checkpoint-{last} (step {last})" in proc.stdout
    assert f"Resuming training from checkpoint with epoch 0 and global step {last}" in logs(proc)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged == list(range(1, steps + 1))  # steps 1..last from the first run, the rest from the second
    # --no-resume refuses the same folder now
    refused = run_cli("train", config, "--no-resume", "--dry-run", cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "--no-resume" in refused.stderr


def _pids_running(needle: str) -> list[int]:
    """Live processes whose command line mentions `needle` (zombies excluded)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(int(proc_dir.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_every_process_of_a_ddp_run(tmp_path, tiny_model):
    config = render(tmp_path, tiny_model, "sft", "--gpus-per-node", "2", sets=fast_sets(max_steps=400, save_steps=5))
    needle = str(tmp_path / config)  # torchrun and both workers carry the config path, made absolute below
    run = subprocess.Popen([sys.executable, "-m", "minicpm_recipes", "train", str(tmp_path / config)], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 300
        while not (tmp_path / "out" / "checkpoint-5").exists() and run.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it was signalled"
        children = [pid for pid in _pids_running(needle) if pid != run.pid]
        assert len(children) >= 3, children  # torchrun + 2 workers
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 143
        end = time.monotonic() + 30
        while _pids_running(needle) and time.monotonic() < end:
            time.sleep(0.1)
        assert _pids_running(needle) == []
        assert not (tmp_path / "out" / "trainer_state.json").exists()  # stopped, not finished
    finally:
        if run.poll() is None:
            run.kill()
