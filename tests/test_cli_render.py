"""The render/list CLI as a user runs it: files written, commands printed, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from conftest import REPO, run_cli


def test_render_dpo_alone_writes_a_usable_config(tmp_path):
    proc = run_cli("render", "dpo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "configs" / "minicpm-sala_lora_dpo.yaml"
    assert "wrote configs/minicpm-sala_lora_dpo.yaml" in proc.stdout
    assert "llamafactory-cli train configs/minicpm-sala_lora_dpo.yaml" in proc.stdout
    doc = yaml.safe_load(written.read_text(encoding="utf-8"))
    assert doc["stage"] == "dpo" and doc["template"] == "cpm4"
    # the default dataset dir is the bundled demo data, absolute because tmp_path is outside the repo
    assert doc["dataset_dir"] == (REPO / "datasets" / "demo").as_posix()


def test_render_references_resolve_from_the_current_folder(tmp_path):
    proc = run_cli("render", "sft", "--dist", "zero3", "-o", "out/cfg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((tmp_path / "out/cfg/minicpm-sala_lora_sft_zero3.yaml").read_text(encoding="utf-8"))
    assert doc["deepspeed"] == "out/cfg/ds_z3_config.json"
    assert (tmp_path / doc["deepspeed"]).is_file()


def test_render_outside_the_current_folder_uses_absolute_references(tmp_path):
    (tmp_path / "here").mkdir()
    proc = run_cli("render", "sft", "--dist", "zero2", "-o", str(tmp_path / "elsewhere"), cwd=tmp_path / "here")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((tmp_path / "elsewhere/minicpm-sala_lora_sft_zero2.yaml").read_text(encoding="utf-8"))
    assert doc["deepspeed"] == (tmp_path / "elsewhere/ds_z2_config.json").as_posix()


def test_render_to_stdout(tmp_path):
    proc = run_cli("render", "kto", "--set", "learning_rate=2e-6", "-o", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["stage"] == "kto" and doc["learning_rate"] == pytest.approx(2e-6)
    assert not list(tmp_path.iterdir())


def test_render_stdout_notes_unwritten_references(tmp_path):
    proc = run_cli("render", "sft", "--dist", "zero3", "-o", "-", cwd=tmp_path)
    assert proc.returncode == 0
    assert "ds_z3_config.json" in proc.stderr


def test_multi_node_render_prints_one_command_per_node(tmp_path):
    proc = run_cli("render", "sft", "--nodes", "2", "--gpus-per-node", "8", "--master-addr", "10.0.0.1",
                   "-o", "c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash c/minicpm-sala_lora_sft_2nodes_node.sh" in proc.stdout
    assert "NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash c/minicpm-sala_lora_sft_2nodes_node.sh" in proc.stdout
    assert os.access(tmp_path / "c/minicpm-sala_lora_sft_2nodes_node.sh", os.X_OK)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["render", "sfx"], "unknown stage 'sfx'"),
        (["render", "sft", "--model", "nobody/NoModel"], "unknown model id 'nobody/NoModel'"),
        (["render", "sft", "--dist", "zero5"], "unknown --dist 'zero5'"),
        (["render", "sft", "--set", "learnin_rate=1"], "did you mean 'learning_rate'"),
        (["render", "sft", "--set", "oops"], "expected KEY=VALUE"),
        (["render", "sft", "--model", "minicpm-2b"], "cpm"),
        (["render", "sft", "--nodes", "0"], "--nodes"),
    ],
)
def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path, args, pattern):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert pattern in lines[0]
    assert lines[0].startswith("minicpm-recipes render: error:")


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    proc = run_cli("render", "sft", "-o", "blocker/sub", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cannot create" in proc.stderr
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    proc = run_cli("render", "sft", "-o", "ro", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot write" in proc.stderr


@pytest.mark.parametrize("args, line", [
    (["render"], "minicpm-recipes render: error: the following arguments are required: STAGE "
                 "(see `minicpm-recipes render --help`)"),
    (["render", "sft", "--nodes", "two"], "minicpm-recipes render: error: argument --nodes: invalid int value: 'two' "
                                          "(see `minicpm-recipes render --help`)"),
    (["train", "x.yaml", "--bogus"], "minicpm-recipes train: error: unrecognized arguments: --bogus "
                                     "(see `minicpm-recipes train --help`)"),
    ([], "minicpm-recipes: error: the following arguments are required: COMMAND (see `minicpm-recipes --help`)"),
])
def test_argparse_usage_errors_are_one_line_exit_2(tmp_path, args, line):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == line + "\n"


def test_list_shows_models_stages_methods_and_dist(tmp_path):
    proc = run_cli("list", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("openbmb/MiniCPM-SALA", "THUDM/chatglm3-6b", "pretrain", "alias pt", "lora", "full",
                 "zero3-offload", "fsdp2"):
        assert word in proc.stdout
    data = json.loads(run_cli("list", "--json", cwd=tmp_path).stdout)
    assert {"sft", "dpo", "kto", "pretrain"} == set(data["stages"])
    assert "cpm4" in json.loads(run_cli("list", "--templates", "--json", cwd=tmp_path).stdout)


def test_render_and_list_start_fast_without_torch(tmp_path):
    code = ("import sys, time; t=time.perf_counter(); from minicpm_recipes.cli import main; "
            "main(['render','sft','-o','-']); "
            "print('torch' in sys.modules, time.perf_counter()-t, file=sys.stderr)")
    import subprocess
    import sys

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    torch_loaded = proc.stderr.strip().splitlines()[-1].split()[0]
    assert torch_loaded == "False"
    assert time.perf_counter() - start < 10  # generous: the point is no heavy import, measured above


def test_render_warns_about_datasets_its_dataset_dir_does_not_register(tmp_path):
    proc = run_cli("render", "sft", "--dataset", "nosuch", "-o", "c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dataset 'nosuch' is not registered" in proc.stderr
    assert "minicpm-recipes register FILE --name nosuch --dataset-dir" in proc.stderr
    ok = run_cli("render", "sft", "-o", "c", "--out", "d", cwd=tmp_path)
    assert ok.returncode == 0 and "warning" not in ok.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text('{"mine": {"file_name": "m.json"}}', encoding="utf-8")
    proc = run_cli("render", "sft", "--dataset-dir", "data", "--dataset", "mine",
                   "--set", "eval_dataset=mine_dev", "-o", "-", cwd=tmp_path)
    assert "'mine'" not in proc.stderr and "dataset 'mine_dev' is not registered in data/dataset_info.json" in proc.stderr
    assert "val_size" in proc.stderr and "val_size" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", ""], "--model is empty"),
    (["--dataset", " "], "--dataset is empty"),
    (["--output-dir", ""], "--output-dir is empty"),
    (["--set", "template=nosuch"], "--set template=nosuch: LLaMA-Factory 0.9.5 has no such template"),
])
def test_empty_values_and_unknown_templates_via_set_are_refused(tmp_path, args, message):
    proc = run_cli("render", "sft", *args, "-o", "-", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
