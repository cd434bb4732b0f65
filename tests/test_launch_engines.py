"""Launch plans: the exact argv and environment of each engine, without training anything."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from minicpm_recipes.errors import UserError
from minicpm_recipes.launch.engines import (
    AccelerateSettings,
    Hints,
    LaunchRequest,
    parse_node_script,
    parse_run_hint,
    plan_launch,
)

TORCH_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1"}


def req(**kw) -> LaunchRequest:
    kw.setdefault("config", "configs/x.yaml")
    kw.setdefault("free_port", 40001)
    return LaunchRequest(**kw)


def test_single_process_is_llamafactory_cli():
    plan = plan_launch(req(overrides=("max_steps=3", "learning_rate=1e-4")))
    assert plan.engine == "llamafactory"
    assert plan.argv == ("llamafactory-cli", "train", "configs/x.yaml", "max_steps=3", "learning_rate=1e-4")
    assert plan.env == {}
    assert plan.command() == "llamafactory-cli train configs/x.yaml max_steps=3 learning_rate=1e-4"
    assert plan.topology.world_size == 1


def test_tools_mapping_replaces_executables():
    plan = plan_launch(req(), tools={"llamafactory-cli": "/venv/bin/llamafactory-cli"})
    assert plan.argv[0] == "/venv/bin/llamafactory-cli"


def test_deepspeed_single_gpu_uses_torchrun_with_free_port():
    plan = plan_launch(req(uses_deepspeed=True))
    assert plan.engine == "torchrun"
    assert plan.argv == ("torchrun", "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "1",
                         "--master_addr", "127.0.0.1", "--master_port", "40001",
                         "-m", "llamafactory.launcher", "configs/x.yaml")
    assert plan.env == TORCH_ENV


def test_multi_gpu_from_device_count_and_flag():
    plan = plan_launch(req(device_count=4))
    assert plan.engine == "torchrun"
    assert plan.argv[plan.argv.index("--nproc_per_node") + 1] == "4"
    plan = plan_launch(req(device_count=4, nproc_per_node=2))
    assert plan.argv[plan.argv.index("--nproc_per_node") + 1] == "2"
    plan = plan_launch(req(device_count=1, nproc_per_node=1))
    assert plan.engine == "llamafactory"


def test_environment_variables_are_honoured_and_flags_win():
    env = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511"}
    plan = plan_launch(req(env=env, overrides=("max_steps=5",)))
    assert plan.argv == ("torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "8",
                         "--master_addr", "10.0.0.1", "--master_port", "29511",
                         "-m", "llamafactory.launcher", "configs/x.yaml", "max_steps=5")
    assert plan.topology.world_size == 16
    plan = plan_launch(req(env=env, node_rank=0, master_port=30000, nproc_per_node=2))
    assert plan.argv[plan.argv.index("--node_rank") + 1] == "0"
    assert plan.argv[plan.argv.index("--master_port") + 1] == "30000"
    assert plan.argv[plan.argv.index("--nproc_per_node") + 1] == "2"


def test_force_torchrun_and_optim_torch():
    plan = plan_launch(req(env={"FORCE_TORCHRUN": "1"}))
    assert plan.engine == "torchrun" and plan.env == TORCH_ENV
    plan = plan_launch(req(env={"FORCE_TORCHRUN": "true", "OPTIM_TORCH": "0"}))
    assert plan.engine == "torchrun" and plan.env == {}
    plan = plan_launch(req(env={"FORCE_TORCHRUN": "1", "PYTORCH_CUDA_ALLOC_CONF": "mine"}))
    assert plan.env == {"TORCH_NCCL_AVOID_RECORD_STREAMS": "1"}  # the user's own value is kept, not overridden
    assert plan_launch(req(env={"FORCE_TORCHRUN": "0"})).engine == "llamafactory"


def test_accelerate_single_node():
    plan = plan_launch(req(accelerate_config="configs/fsdp2_config.yaml",
                           accelerate=AccelerateSettings(num_machines=1, num_processes=2)))
    assert plan.engine == "accelerate"
    assert plan.argv == ("accelerate", "launch", "--config_file", "configs/fsdp2_config.yaml",
                         "--num_machines", "1", "--num_processes", "2", "--machine_rank", "0",
                         "--main_process_port", "40001", "-m", "llamafactory.launcher", "configs/x.yaml")
    assert plan.env == {}


def test_accelerate_multi_node_from_environment():
    env = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "29600"}
    plan = plan_launch(req(accelerate_config="a.yaml", env=env, overrides=("max_steps=1",)))
    assert plan.argv == ("accelerate", "launch", "--config_file", "a.yaml", "--num_machines", "2",
                         "--num_processes", "8", "--machine_rank", "1", "--main_process_ip", "node0",
                         "--main_process_port", "29600", "-m", "llamafactory.launcher", "configs/x.yaml",
                         "max_steps=1")


def test_accelerate_with_deepspeed_is_refused():
    with pytest.raises(UserError, match="deepspeed"):
        plan_launch(req(accelerate_config="a.yaml", uses_deepspeed=True))


@pytest.mark.parametrize("env,missing", [
    ({"NNODES": "2", "NODE_RANK": "0"}, "MASTER_ADDR and MASTER_PORT"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}, "MASTER_PORT"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_PORT": "29500"}, "MASTER_ADDR"),
])
def test_multi_node_needs_explicit_rendezvous(env, missing):
    with pytest.raises(UserError, match=missing):
        plan_launch(req(env=env))


def test_multi_node_needs_node_rank():
    with pytest.raises(UserError, match="NODE_RANK"):
        plan_launch(req(env={"NNODES": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}))


@pytest.mark.parametrize("env,match", [
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "NODE_RANK=2"),
    ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE=0"),
    ({"NPROC_PER_NODE": "two"}, "whole number"),
    ({"MASTER_PORT": "70000", "FORCE_TORCHRUN": "1"}, "MASTER_PORT=70000"),
    ({"NNODES": "0"}, "NNODES=0"),
])
def test_bad_numbers_are_user_errors(env, match):
    with pytest.raises(UserError, match=match):
        plan_launch(req(env=env))


def test_command_quotes_paths_with_spaces():
    plan = plan_launch(req(config="my configs/x.yaml", env={"FORCE_TORCHRUN": "1"}))
    assert shlex.split(plan.command())[-1] == "my configs/x.yaml"
    assert "my configs/x.yaml" in plan.argv


# ---- hints render leaves in the files ------------------------------------------------------------------------

def test_run_hints_from_render_output():
    assert parse_run_hint("# t\n# Run: llamafactory-cli train c/x.yaml\nstage: sft\n") == Hints(engine="llamafactory")
    h = parse_run_hint("# Run: FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train c/x.yaml\n")
    assert h == Hints(engine="torchrun", nproc_per_node=8)
    h = parse_run_hint("# Run: accelerate launch --config_file c/fsdp2_config.yaml -m llamafactory.launcher c/x.yaml")
    assert h == Hints(engine="accelerate", accelerate_config="c/fsdp2_config.yaml")
    h = parse_run_hint("# Run: NODE_RANK=0 MASTER_ADDR='<node-0 address>' bash c/x_node.sh\n")
    assert h == Hints(launch_script="c/x_node.sh")
    assert parse_run_hint("stage: sft\n") == Hints()


def test_hints_drive_the_plan():
    h = parse_run_hint("# Run: FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train c/x.yaml\n")
    plan = plan_launch(req(hints=h))
    assert plan.engine == "torchrun" and plan.topology.nproc_per_node == 8
    plan = plan_launch(req(hints=h, env={"NPROC_PER_NODE": "2"}))  # the environment wins over the rendered value
    assert plan.topology.nproc_per_node == 2


def test_node_script_hints_match_render(tmp_path):
    """Render's per-node script (templates/launch/node.sh.j2) is read back for nodes, processes and rendezvous."""
    from minicpm_recipes.render import RenderOptions, render

    rendered = render(RenderOptions(stage="sft", method="full", dist="zero3", nodes=2, gpus_per_node=4,
                                    model="openbmb/MiniCPM4-8B", master_addr="10.1.2.3", master_port=29555,
                                    ref_dir="cfg"))
    script = rendered.file("launch").content
    (tmp_path / "node.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "node.sh")], check=True)  # the script parses
    hints = parse_run_hint(rendered.files[0].content)
    assert hints.launch_script == "cfg/" + rendered.file("launch").name
    h = parse_node_script(script)
    assert h == Hints(engine="torchrun", nnodes=2, nproc_per_node=4, master_addr="10.1.2.3", master_port=29555)
    plan = plan_launch(req(hints=h, env={"NODE_RANK": "1"}))
    assert plan.argv[:11] == ("torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4",
                              "--master_addr", "10.1.2.3", "--master_port", "29555")
    fsdp = render(RenderOptions(stage="sft", method="full", dist="fsdp2", nodes=2, gpus_per_node=4,
                                model="openbmb/MiniCPM4-8B", ref_dir="cfg"))
    h = parse_node_script(fsdp.file("launch").content)
    assert h.engine == "accelerate" and h.accelerate_config == "cfg/fsdp2_config.yaml" and h.master_addr is None


def test_elastic_rendezvous_like_llamafactory_cli():
    env = {"RDZV_ID": "job7", "MAX_RESTARTS": "3", "MIN_NNODES": "1", "MAX_NNODES": "4", "NNODES": "2",
           "NPROC_PER_NODE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    plan = plan_launch(req(env=env))
    assert plan.argv == ("torchrun", "--nnodes", "1:4", "--nproc-per-node", "8", "--rdzv-id", "job7",
                         "--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400", "--max-restarts", "3",
                         "-m", "llamafactory.launcher", "configs/x.yaml")


def test_multi_node_scripts(tmp_path):
    from minicpm_recipes.launch.scripts import render_scripts

    env = {"NNODES": "3", "NODE_RANK": "0", "NPROC_PER_NODE": "8", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29700"}
    plan = plan_launch(req(config="cfg/my run.yaml", accelerate_config="cfg/fsdp2_config.yaml", env=env,
                           overrides=("max_steps=9",)))
    node, sbatch = render_scripts(plan, workdir="/work dir", scripts_dir="/work dir/cfg",
                                  train_prefix=["minicpm-recipes"], extra_args=["--accelerate-config", "a b.yaml"])
    assert (node.name, sbatch.name) == ("my run.node.sh", "my run.sbatch")
    lines = node.content.splitlines()
    assert "export NNODES=3" in lines and 'export MASTER_ADDR="${MASTER_ADDR:-10.0.0.9}"' in lines
    assert 'export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"' in lines and "cd '/work dir'" in lines
    assert lines[-1] == "exec minicpm-recipes train 'cfg/my run.yaml' max_steps=9 --accelerate-config 'a b.yaml'"
    assert "#SBATCH --nodes=3" in sbatch.content and "#SBATCH --gpus-per-node=8" in sbatch.content
    assert "'/work dir/cfg/my run.node.sh'" in sbatch.content
    for s in (node, sbatch):
        (tmp_path / s.name).write_text(s.content)
        subprocess.run(["bash", "-n", str(tmp_path / s.name)], check=True)
    # the node script really exports what `train` reads on each node
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "minicpm-recipes").write_text("#!/bin/sh\necho \"$NNODES $NODE_RANK $NPROC_PER_NODE $MASTER_ADDR "
                                          "$MASTER_PORT $MINICPM_RECIPES_NODE_SCRIPT $*\"\n")
    (fake / "minicpm-recipes").chmod(0o755)
    script = tmp_path / node.name
    script.write_text(node.content.replace("cd '/work dir'", f"cd {tmp_path}"))
    out = subprocess.run(["bash", str(script)], env={"PATH": f"{fake}:/usr/bin:/bin", "NODE_RANK": "2"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "3 2 8 10.0.0.9 29700 1 train cfg/my run.yaml max_steps=9 --accelerate-config a b.yaml"
    missing = subprocess.run(["bash", str(script)], env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True,
                             text=True)
    assert missing.returncode != 0 and "NODE_RANK" in missing.stderr
