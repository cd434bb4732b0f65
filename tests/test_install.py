"""`minicpm-recipes install --into DIR`: recipes and demo data put into a LLaMA-Factory checkout, safely.

Every test works on a checkout-shaped temp folder whose data/ is a copy of LLaMA-Factory's real data folder.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import LF_DATA, run_cli
from minicpm_recipes.cli import main
from minicpm_recipes.errors import UserError
from minicpm_recipes.install import (
    CONFIG_DIR,
    MANIFEST,
    InstallOptions,
    check_checkout,
    plan_install,
)
from minicpm_recipes.render import RenderOptions, render
from minicpm_recipes.resources import datasets_dir

DEMO_DIR = datasets_dir() / "demo"
DEMO_INFO = json.loads((DEMO_DIR / "dataset_info.json").read_text(encoding="utf-8"))
LF_INFO = json.loads((LF_DATA / "dataset_info.json").read_text(encoding="utf-8"))
USER_RECIPE = "examples/train_lora/my_own.yaml"


def make_checkout(root: Path) -> Path:
    """The shape of a LLaMA-Factory clone: package source, packaging file, examples/ and the real data/."""
    (root / "src" / "llamafactory").mkdir(parents=True)
    (root / "src" / "llamafactory" / "__init__.py").write_text('__version__ = "0.9.5"\n')
    (root / "pyproject.toml").write_text('[project]\nname = "llamafactory"\ndynamic = ["version"]\n')
    (root / "examples" / "deepspeed").mkdir(parents=True)
    (root / "examples" / "accelerate").mkdir()
    (root / "examples" / "train_lora").mkdir()
    (root / USER_RECIPE).write_text("model_name_or_path: my/model\nstage: sft\n")  # the user's own work
    shutil.copytree(LF_DATA, root / "data")
    return root


@pytest.fixture
def checkout(tmp_path) -> Path:
    return make_checkout(tmp_path / "LLaMA-Factory")


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, mtime_ns, mode) of every file under root."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns,
                                                      st.st_mode)
    return out


def install(root: Path, *extra: str) -> int:
    return main(["install", "--into", str(root), *extra])


SMALL = ("--models", "minicpm-sala", "--stages", "sft,dpo", "--variants", "lora", "full")


# ---- what a checkout is ---------------------------------------------------------------------------------


def test_accepts_a_checkout(checkout):
    check_checkout(checkout)  # no error


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: shutil.rmtree(r / "src"), "no src/llamafactory/__init__.py"),
    (lambda r: (r / "pyproject.toml").write_text('[project]\nname = "something-else"\n'), "naming the project llamafactory"),
    (lambda r: shutil.rmtree(r / "data"), "no data/ folder"),
])
def test_refuses_what_is_not_a_checkout(checkout, capsys, breakage, expected):
    breakage(checkout)
    before = snapshot(checkout)
    assert install(checkout) == 2
    err = capsys.readouterr().err
    assert "not a LLaMA-Factory checkout" in err and expected in err and str(checkout) in err
    assert err.count("\n") == 1  # one line
    assert snapshot(checkout) == before


def test_setup_py_checkout_is_accepted(checkout):
    (checkout / "pyproject.toml").unlink()
    (checkout / "setup.py").write_text('from setuptools import setup\nsetup(name="llamafactory", version="0.9.5")\n')
    check_checkout(checkout)


def test_refusal_points_at_the_checkout_when_given_a_subfolder(checkout):
    with pytest.raises(UserError, match=r"did you mean .*LLaMA-Factory\?"):
        check_checkout(checkout / "data")


def test_refuses_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        check_checkout(tmp_path / "nowhere")


# ---- a first install ------------------------------------------------------------------------------------


def test_install_writes_recipes_and_data_and_keeps_every_llamafactory_entry(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    out = capsys.readouterr().out

    info = json.loads((checkout / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert len(LF_INFO) >= 100
    for name, entry in LF_INFO.items():  # all of LLaMA-Factory's entries survive, unchanged
        assert info[name] == entry, name
    assert list(info)[: len(LF_INFO)] == list(LF_INFO)  # ... in their order
    for name in ("minicpm_demo_sft_zh", "minicpm_demo_dpo"):
        assert info[name] == DEMO_INFO[name]
        file_name = DEMO_INFO[name]["file_name"]
        assert (checkout / "data" / file_name).read_bytes() == (DEMO_DIR / file_name).read_bytes()
    assert "minicpm_demo_kto" not in info  # kto was not asked for
    original = (LF_DATA / "dataset_info.json").read_text(encoding="utf-8")
    merged = (checkout / "data" / "dataset_info.json").read_text(encoding="utf-8")
    assert merged.startswith(original.rstrip()[:-1].rstrip())  # every byte of theirs kept; ours appended
    # all entries went in with one write: the backup is their file as it was, not a half-merged one
    assert (checkout / "data" / "dataset_info.json.bak").read_text(encoding="utf-8") == original
    for name in LF_INFO:  # LLaMA-Factory's data files untouched
        file_name = LF_INFO[name].get("file_name", "")
        if (LF_DATA / file_name).is_file():
            assert (checkout / "data" / file_name).read_bytes() == (LF_DATA / file_name).read_bytes()
    assert (checkout / USER_RECIPE).read_text() == "model_name_or_path: my/model\nstage: sft\n"

    yamls = sorted(p.name for p in (checkout / CONFIG_DIR).glob("*.yaml"))
    assert yamls == ["minicpm-sala_full_dpo_zero3.yaml", "minicpm-sala_full_sft_zero3.yaml",
                     "minicpm-sala_lora_dpo.yaml", "minicpm-sala_lora_sft.yaml"]
    for name in yamls:
        params = yaml.safe_load((checkout / CONFIG_DIR / name).read_text())
        assert params["dataset_dir"] == "data"
        assert (checkout / params["dataset_dir"] / "dataset_info.json").is_file()
        assert params["dataset"] in info
        if "deepspeed" in params:  # paths in the YAML resolve from the checkout
            assert (checkout / params["deepspeed"]).is_file()
        assert f"llamafactory-cli train {CONFIG_DIR}/{name}" in out
    assert f"cd {checkout}" in out


def test_install_writes_a_manifest_of_what_it_wrote(checkout):
    assert install(checkout, *SMALL) == 0
    manifest = json.loads((checkout / MANIFEST).read_text())
    assert manifest["files"], manifest
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((checkout / rel).read_bytes()).hexdigest() == digest
    assert "data/dataset_info.json" not in manifest["files"]  # merged, never owned
    assert sorted(manifest["datasets"]) == ["minicpm_demo_dpo", "minicpm_demo_sft_zh"]


def test_second_run_changes_no_byte(checkout, capsys):
    assert install(checkout) == 0  # the default set
    capsys.readouterr()
    before = snapshot(checkout)
    assert install(checkout) == 0
    out = capsys.readouterr().out
    assert snapshot(checkout) == before  # bytes, mtimes and modes
    assert "nothing changed" in out


def test_default_set_covers_two_minicpm_models_four_stages_three_variants(checkout, capsys):
    assert install(checkout) == 0
    out = capsys.readouterr().out
    yamls = {p.name for p in (checkout / CONFIG_DIR).glob("*.yaml")}
    for slug in ("minicpm-sala", "minicpm4.1-8b"):
        for stage in ("sft", "dpo", "kto", "pretrain"):
            assert f"{slug}_lora_{stage}.yaml" in yamls
            assert f"{slug}_full_{stage}_zero3.yaml" in yamls
            assert f"{slug}_full_{stage}_zero3_2nodes.yaml" in yamls
            script = f"{CONFIG_DIR}/{slug}_full_{stage}_zero3_2nodes_node.sh"
            assert (checkout / script).is_file()
            for rank in (0, 1):  # the multi-node commands are printed
                assert f"NODE_RANK={rank} MASTER_ADDR='<node-0 address>' bash {script}" in out
    assert len(yamls) == 2 * 4 * 3
    info = json.loads((checkout / "data" / "dataset_info.json").read_text())
    assert set(DEMO_INFO) <= set(info)


def test_printed_commands_name_files_that_exist_from_the_checkout(checkout, capsys):
    assert install(checkout, "--models", "minicpm4.1", "--stages", "kto") == 0
    out = capsys.readouterr().out
    commands = [line.split("   #")[0].strip() for line in out.splitlines()
                if "llamafactory-cli train" in line or " bash " in line]
    assert len(commands) == 1 + 1 + 2  # lora, full, and one line per node
    for command in commands:
        target = shlex.split(command)[-1]
        assert (checkout / target).is_file(), command
    script = (checkout / f"{CONFIG_DIR}/minicpm4.1-8b_full_kto_zero3_2nodes_node.sh").read_text()
    assert f"llamafactory-cli train {CONFIG_DIR}/minicpm4.1-8b_full_kto_zero3_2nodes.yaml" in script


# ---- edits are never lost ----------------------------------------------------------------------------------


def test_edited_file_is_refused_with_a_diff_and_nothing_is_written(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    target = checkout / CONFIG_DIR / "minicpm-sala_lora_sft.yaml"
    edited = target.read_text().replace("learning_rate: 0.0001", "learning_rate: 3.0e-05")
    assert edited != target.read_text()
    target.write_text(edited)
    (checkout / CONFIG_DIR / "ds_z3_config.json").unlink()  # would be re-created, if anything were written
    capsys.readouterr()
    before = snapshot(checkout)

    assert install(checkout, *SMALL) == 2
    err = capsys.readouterr().err
    assert snapshot(checkout) == before
    assert "-learning_rate: 3.0e-05" in err and "+learning_rate: 0.0001" in err  # diff: yours -> ours
    assert f"{CONFIG_DIR}/minicpm-sala_lora_sft.yaml (on disk)" in err
    assert "edited since minicpm-recipes wrote it" in err and "--force" in err
    assert err.strip().splitlines()[-1].startswith("minicpm-recipes install: error:")


def test_force_replaces_an_edited_file_and_keeps_a_backup(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    target = checkout / CONFIG_DIR / "minicpm-sala_lora_sft.yaml"
    ours = target.read_bytes()
    target.write_text(target.read_text() + "max_steps: 7\n")
    mine = target.read_bytes()

    assert install(checkout, *SMALL, "--force") == 0
    out = capsys.readouterr().out
    assert target.read_bytes() == ours
    backup = target.with_name(target.name + ".bak")
    assert backup.read_bytes() == mine
    assert "backup" in out and str(backup) in out
    before = snapshot(checkout)
    assert install(checkout, *SMALL) == 0  # settled: no conflict, no change
    assert snapshot(checkout) == before


def test_second_force_keeps_the_first_backup(checkout):
    assert install(checkout, *SMALL) == 0
    target = checkout / CONFIG_DIR / "minicpm-sala_lora_sft.yaml"
    for n in (1, 2):
        target.write_text(f"# edit {n}\n" + target.read_text())
        assert install(checkout, *SMALL, "--force") == 0
    assert target.with_name(target.name + ".bak").read_text().startswith("# edit 1\n")
    assert target.with_name(target.name + ".bak1").read_text().startswith("# edit 2\n")


def test_a_users_own_file_with_our_name_is_refused(checkout, capsys):
    theirs = checkout / "data" / "minicpm_demo_sft_zh.json"
    theirs.write_text('[{"messages": []}]\n')
    before = snapshot(checkout)
    assert install(checkout, *SMALL) == 2
    err = capsys.readouterr().err
    assert "not written by minicpm-recipes" in err and str(theirs) in err
    assert snapshot(checkout) == before


def test_a_users_dataset_entry_with_our_name_is_refused_unless_force(checkout, capsys):
    info_path = checkout / "data" / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["minicpm_demo_dpo"] = {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    before = snapshot(checkout)
    assert install(checkout, *SMALL) == 2
    err = capsys.readouterr().err
    assert "minicpm_demo_dpo" in err and "already registered" in err
    assert snapshot(checkout) == before  # refused before anything was written

    assert install(checkout, *SMALL, "--force") == 0
    merged = json.loads(info_path.read_text(encoding="utf-8"))
    assert merged["minicpm_demo_dpo"] == DEMO_INFO["minicpm_demo_dpo"]
    assert all(merged[name] == entry for name, entry in LF_INFO.items())


def test_an_unedited_file_from_an_earlier_install_is_updated(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    rel = f"{CONFIG_DIR}/minicpm-sala_lora_dpo.yaml"
    old = b"# written by an older minicpm-recipes\nstage: dpo\n"
    (checkout / rel).write_bytes(old)
    manifest = json.loads((checkout / MANIFEST).read_text())
    manifest["files"][rel] = hashlib.sha256(old).hexdigest()  # as the older version recorded it
    (checkout / MANIFEST).write_text(json.dumps(manifest))
    capsys.readouterr()

    assert install(checkout, *SMALL) == 0
    out = capsys.readouterr().out
    assert f"updated   {checkout / rel}" in out
    assert (checkout / rel).read_bytes() != old
    assert not (checkout / rel).with_name("minicpm-sala_lora_dpo.yaml.bak").exists()


def test_a_broken_manifest_is_a_clear_error(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    (checkout / MANIFEST).write_text("{not json")
    assert install(checkout, *SMALL) == 2
    err = capsys.readouterr().err
    assert "not a minicpm-recipes install manifest" in err and str(checkout / MANIFEST) in err


def test_a_later_install_of_other_models_keeps_the_earlier_ones_in_the_manifest(checkout):
    assert install(checkout, "--models", "minicpm-sala", "--stages", "sft", "--variants", "lora") == 0
    assert install(checkout, "--models", "qwen3", "--stages", "sft", "--variants", "lora") == 0
    files = json.loads((checkout / MANIFEST).read_text())["files"]
    assert f"{CONFIG_DIR}/minicpm-sala_lora_sft.yaml" in files and f"{CONFIG_DIR}/qwen3-8b_lora_sft.yaml" in files


# ---- dry run ------------------------------------------------------------------------------------------------


def test_dry_run_lists_every_change_and_writes_nothing(checkout, capsys):
    before = snapshot(checkout)
    assert install(checkout, *SMALL, "--dry-run") == 0
    out = capsys.readouterr().out
    assert snapshot(checkout) == before
    plan = plan_install(InstallOptions(into=checkout, models=("minicpm-sala",), stages=("sft", "dpo"),
                                       variants=("lora", "full")))
    assert plan.changes and not plan.conflicts
    for f in plan.changes:
        assert f"create  {f.path}" in out
    for name in ("minicpm_demo_sft_zh", "minicpm_demo_dpo"):
        assert f"data/dataset_info.json: add entry {name}" in out
    assert "minicpm_demo_kto" not in out

    assert install(checkout, *SMALL) == 0  # the real run writes exactly what was listed
    capsys.readouterr()
    written = set(snapshot(checkout)) - set(before)
    # plus the registry's backup and lock file beside dataset_info.json
    assert written == {f.path for f in plan.changes} | {"data/dataset_info.json.bak", "data/dataset_info.json.lock"}
    assert "change  data/dataset_info.json" in out


def test_dry_run_after_an_edit_shows_the_refusal(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    (checkout / CONFIG_DIR / "minicpm-sala_lora_sft.yaml").write_text("stage: sft\n")
    capsys.readouterr()
    assert install(checkout, *SMALL, "--dry-run") == 2  # as the real run would
    out = capsys.readouterr().out
    assert f"REFUSE  {CONFIG_DIR}/minicpm-sala_lora_sft.yaml" in out
    assert install(checkout, *SMALL, "--dry-run", "--force") == 0
    assert "nothing: already installed" not in out


def test_a_differing_dataset_entry_is_refused_with_install_s_own_fix(checkout, capsys):
    info = checkout / "data" / "dataset_info.json"
    text = info.read_text(encoding="utf-8")
    mine = dict(DEMO_INFO["minicpm_demo_sft_zh"], file_name="my_sft.json")
    info.write_text(text.rstrip()[:-1].rstrip() + ',\n  "minicpm_demo_sft_zh": ' + json.dumps(mine) + "\n}\n",
                    encoding="utf-8")
    before = snapshot(checkout)
    for extra in ((), ("--dry-run",)):
        assert install(checkout, *SMALL, *extra) == 2
        err = capsys.readouterr().err
        assert "'minicpm_demo_sft_zh' is already registered with a different definition" in err
        assert "rerun install with --force" in err and "--name" not in err
    assert snapshot(checkout) == before  # nothing written


def test_dry_run_of_an_installed_checkout_says_so(checkout, capsys):
    assert install(checkout, *SMALL) == 0
    capsys.readouterr()
    assert install(checkout, *SMALL, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "nothing: already installed" in out and "create " not in out and "keep entry minicpm_demo_dpo" in out


# ---- the checkout's own DeepSpeed / accelerate configs ------------------------------------------------------


def _our_config(role: str, **options) -> str:
    rendered = render(RenderOptions(**options))
    return rendered.file(role).content


def test_an_equivalent_deepspeed_config_in_the_checkout_is_reused(checkout):
    ours = json.loads(_our_config("deepspeed", method="full", dist="zero3"))
    # same settings, other formatting and key order
    text = json.dumps(dict(reversed(list(ours.items()))), indent=4)
    (checkout / "examples/deepspeed/ds_z3_config.json").write_text(text)
    assert install(checkout, *SMALL) == 0
    params = yaml.safe_load((checkout / CONFIG_DIR / "minicpm-sala_full_sft_zero3.yaml").read_text())
    assert params["deepspeed"] == "examples/deepspeed/ds_z3_config.json"
    assert not (checkout / CONFIG_DIR / "ds_z3_config.json").exists()
    assert (checkout / "examples/deepspeed/ds_z3_config.json").read_text() == text


def test_a_different_deepspeed_config_in_the_checkout_is_left_alone(checkout):
    theirs = json.loads(_our_config("deepspeed", method="full", dist="zero3"))
    theirs["monitor_config"] = {"enabled": True}
    text = json.dumps(theirs, indent=2)
    (checkout / "examples/deepspeed/ds_z3_config.json").write_text(text)
    assert install(checkout, *SMALL) == 0
    params = yaml.safe_load((checkout / CONFIG_DIR / "minicpm-sala_full_sft_zero3.yaml").read_text())
    assert params["deepspeed"] == f"{CONFIG_DIR}/ds_z3_config.json"
    assert json.loads((checkout / params["deepspeed"]).read_text()) != theirs
    assert (checkout / "examples/deepspeed/ds_z3_config.json").read_text() == text


def test_accelerate_configs_get_one_file_per_recipe_or_reuse_the_checkouts(checkout, capsys):
    # equivalent to the single-node fsdp2 config ours would write for 8 GPUs
    same = yaml.safe_load(_our_config("accelerate", method="full", dist="fsdp2", gpus_per_node=8))
    (checkout / "examples/accelerate/fsdp2_config.yaml").write_text(yaml.safe_dump(same))
    assert install(checkout, "--models", "minicpm-sala", "--stages", "sft", "--variants", "full", "multinode",
                   "--dist", "fsdp2") == 0
    out = capsys.readouterr().out
    assert "accelerate launch --config_file examples/accelerate/fsdp2_config.yaml" in out
    multi = checkout / CONFIG_DIR / "minicpm-sala_full_sft_fsdp2_2nodes_fsdp2_config.yaml"
    assert yaml.safe_load(multi.read_text())["num_machines"] == 2
    script = (checkout / CONFIG_DIR / "minicpm-sala_full_sft_fsdp2_2nodes_node.sh").read_text()
    assert f"--config_file {CONFIG_DIR}/{multi.name}" in script
    assert not (checkout / CONFIG_DIR / "fsdp2_config.yaml").exists()


# ---- options -----------------------------------------------------------------------------------------------


def test_unknown_values_are_user_errors(checkout, capsys):
    assert install(checkout, "--variants", "lora,qlora") == 2
    assert "--variants qlora" in capsys.readouterr().err
    assert install(checkout, "--stages", "sfft") == 2
    assert "did you mean 'sft'" in capsys.readouterr().err
    assert install(checkout, "--variants", "multinode", "--nodes", "1") == 2
    assert "2 or more nodes" in capsys.readouterr().err
    assert not (checkout / CONFIG_DIR).exists()


def test_a_local_model_folder_is_written_as_an_absolute_path(checkout, tmp_path, monkeypatch):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert install(checkout, "--models", "models/tiny", "--template", "cpm4", "--stages", "sft",
                   "--variants", "lora") == 0
    params = yaml.safe_load((checkout / CONFIG_DIR / "tiny_lora_sft.yaml").read_text())
    assert params["model_name_or_path"] == str(model.resolve())
    assert params["template"] == "cpm4"


def test_cli_entry_point_end_to_end(checkout):
    proc = run_cli("install", "--into", str(checkout), "--models", "minicpm-sala", "--stages", "pretrain",
                   "--variants", "lora", cwd=checkout.parent)
    assert proc.returncode == 0, proc.stderr
    assert "llamafactory-cli train examples/minicpm_config/minicpm-sala_lora_pretrain.yaml" in proc.stdout
    assert (checkout / CONFIG_DIR / "minicpm-sala_lora_pretrain.yaml").is_file()


def test_help_states_the_real_defaults(capsys):
    from minicpm_recipes.install import DEFAULT_MODELS, DEFAULT_STAGES, DEFAULT_VARIANTS

    with pytest.raises(SystemExit):
        main(["install", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for defaults in (DEFAULT_MODELS, DEFAULT_STAGES, DEFAULT_VARIANTS):
        assert f"(default {','.join(defaults)})" in out
