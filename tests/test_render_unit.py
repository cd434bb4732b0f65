"""Unit tests of the renderer: pure functions, no subprocess."""

from __future__ import annotations

import json
import random
import string

import pytest
import yaml

from minicpm_recipes.catalog import load_catalog
from minicpm_recipes.errors import UserError
from minicpm_recipes.render import RenderOptions, parse_set, render, write_rendered
from minicpm_recipes.yamlvalue import yaml_value


def _load_train(rendered):
    return yaml.safe_load(rendered.file("train").content)


# ---- safe serialization -------------------------------------------------------------------------------

NASTY = [
    "a\nstage: pt",
    "x: y",
    "# comment",
    "value # not a comment",
    "- item",
    "{a: 1}",
    "[1, 2]",
    "'quoted'",
    '"dq"',
    "true",
    "null",
    "1e-4",
    "0x10",
    "~",
    "  padded  ",
    "中文，：# 数据",
    "tab\tand\rreturn",
    "line\u2028sep\u0085nel",
    "&anchor *alias !tag %directive @at `tick`",
    "",
    "---",
    "...",
]


@pytest.mark.parametrize("text", NASTY)
def test_yaml_value_round_trips_and_stays_on_one_line(text):
    rendered = yaml_value(text)
    assert "\n" not in rendered
    doc = yaml.safe_load(f"key: {rendered}\nother: 1\n")
    assert doc == {"key": text, "other": 1}


def test_yaml_value_random_strings_never_add_keys():
    rng = random.Random(1234)
    alphabet = string.printable + "中文：，\u2028\u0085\x00\x7f"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        doc = yaml.safe_load(f"key: {yaml_value(text)}\nother: 1\n")
        assert doc == {"key": text, "other": 1}, text


@pytest.mark.parametrize("value", [True, False, 0, 7, 1e-4, 2.5, None, ["a", "b: c", 3]])
def test_yaml_value_scalars(value):
    assert yaml.safe_load(f"k: {yaml_value(value)}") == {"k": value}


def test_set_with_newline_cannot_inject_a_key():
    rendered = render(RenderOptions(stage="sft", sets=("dataset=a\nstage: pt",)))
    doc = _load_train(rendered)
    assert doc["dataset"] == "a\nstage: pt"
    assert doc["stage"] == "sft"


def test_set_injection_is_also_safe_for_omegaconf(tmp_path):
    # LLaMA-Factory reads configs with OmegaConf, not PyYAML
    omegaconf = pytest.importorskip("omegaconf")
    rendered = render(RenderOptions(stage="dpo", sets=("dataset=cpm4\ndo_train: false # x", "output_dir=o: #")))
    path = tmp_path / "t.yaml"
    path.write_text(rendered.file("train").content, encoding="utf-8")
    doc = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(path))
    assert doc["dataset"] == "cpm4\ndo_train: false # x"
    assert doc["do_train"] is True
    assert doc["output_dir"] == "o: #"


# ---- --set --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("learning_rate=5e-5", ("learning_rate", 5e-5)),
        ("max_steps=10", ("max_steps", 10)),
        ("bf16=false", ("bf16", False)),
        ("bf16=True", ("bf16", True)),
        ("eval_strategy=no", ("eval_strategy", "no")),
        ("save_strategy=NO", ("save_strategy", "NO")),
        ("dataset=on", ("dataset", "on")),
        ("dataset=a,b", ("dataset", "a,b")),
        ("val_size=null", ("val_size", None)),
        ("output_dir=", ("output_dir", "")),
        ("report_to=[tensorboard, wandb]", ("report_to", ["tensorboard", "wandb"])),
        ("lora_target=q_proj: v", ("lora_target", "q_proj: v")),
        ("lora_target={a: 1}", ("lora_target", "{a: 1}")),
        ("report_to=[[1]]", ("report_to", "[[1]]")),
        ("dataset=a: [", ("dataset", "a: [")),
    ],
)
def test_parse_set_types_values_as_yaml(item, expected):
    key, value = parse_set(item)
    assert (key, value) == expected


def test_parse_set_unknown_key_suggests_the_right_one():
    with pytest.raises(UserError, match=r"learning_rat.*did you mean 'learning_rate'"):
        parse_set("learning_rat=1e-4")


@pytest.mark.parametrize("item", ["novalue", "=3", " =x", "learning_rate=.nan"])
def test_parse_set_rejects_malformed(item):
    with pytest.raises(UserError):
        parse_set(item)


def test_set_no_is_written_as_the_string_llamafactory_expects():
    text = render(RenderOptions(stage="sft", sets=("eval_strategy=no",))).file("train").content
    assert "eval_strategy: 'no'" in text
    assert yaml.safe_load(text)["eval_strategy"] == "no"


def test_set_null_removes_a_key_and_set_adds_unknown_section_keys():
    doc = _load_train(render(RenderOptions(stage="sft", sets=("val_size=null", "eval_strategy=null",
                                                              "eval_steps=null", "seed=7"))))
    assert "val_size" not in doc and "eval_strategy" not in doc
    assert doc["seed"] == 7


def test_extra_keys_land_in_an_extra_section():
    text = render(RenderOptions(stage="sft", sets=("seed=7",))).file("train").content
    assert "### extra\nseed: 7\n" in text


# ---- defaults from the official guides ---------------------------------------------------------------

def test_default_render_is_a_usable_minicpm_sala_dpo_lora_config():
    doc = _load_train(render(RenderOptions(stage="dpo")))
    assert doc["model_name_or_path"] == "openbmb/MiniCPM-SALA"
    assert doc["template"] == "cpm4"
    assert doc["trust_remote_code"] is True
    assert doc["flash_attn"] == "fa2"
    assert doc["stage"] == "dpo" and doc["finetuning_type"] == "lora"
    assert doc["learning_rate"] == pytest.approx(1e-5)
    assert doc["pref_beta"] == pytest.approx(0.1) and doc["pref_loss"] == "sigmoid"
    assert doc["dataset"] == "minicpm_demo_dpo"


def test_sft_defaults_follow_the_minicpm_guide():
    doc = _load_train(render(RenderOptions(stage="sft")))
    assert doc["learning_rate"] == pytest.approx(1e-4)
    assert doc["cutoff_len"] == 1800
    assert doc["per_device_train_batch_size"] == 2 and doc["gradient_accumulation_steps"] == 4
    assert doc["num_train_epochs"] == 3.0 and doc["lr_scheduler_type"] == "cosine"
    assert doc["warmup_ratio"] == pytest.approx(0.1) and doc["bf16"] is True
    assert doc["val_size"] == pytest.approx(0.1) and doc["ddp_timeout"] == 180000000


def test_kto_and_pretrain_defaults():
    kto = _load_train(render(RenderOptions(stage="kto")))
    assert kto["learning_rate"] == pytest.approx(5e-6) and kto["pref_beta"] == pytest.approx(0.1)
    pt = _load_train(render(RenderOptions(stage="pt")))
    assert pt["stage"] == "pt" and "template" not in pt


def test_full_method_has_no_lora_keys():
    doc = _load_train(render(RenderOptions(stage="sft", method="full")))
    assert doc["finetuning_type"] == "full"
    assert not any(k.startswith("lora_") for k in doc)


# ---- models --------------------------------------------------------------------------------------------

def test_every_catalog_model_with_a_template_uses_an_existing_lf_template():
    from minicpm_recipes.lfspec import load_spec

    templates = load_spec().templates
    for model in load_catalog().models:
        if model.template is not None:
            assert model.template in templates, model.id


def test_minicpm_2b_explains_what_to_do_instead_of_emitting_a_removed_template():
    with pytest.raises(UserError) as info:
        render(RenderOptions(stage="sft", model="minicpm-2b"))
    message = str(info.value)
    assert "cpm" in message and "--template" in message and "MiniCPM4" in message
    doc = _load_train(render(RenderOptions(stage="sft", model="minicpm-2b", template="default")))
    assert doc["template"] == "default"


def test_unknown_model_needs_a_template_and_lists_choices():
    with pytest.raises(UserError, match="--template.*openbmb/MiniCPM-SALA"):
        render(RenderOptions(stage="sft", model="someone/SomeModel"))
    doc = _load_train(render(RenderOptions(stage="sft", model="someone/SomeModel", template="qwen3")))
    assert doc["model_name_or_path"] == "someone/SomeModel" and doc["template"] == "qwen3"
    assert "trust_remote_code" not in doc


def test_eval_dataset_replaces_val_size_unless_both_are_set():
    rendered = render(RenderOptions(stage="sft", sets=("eval_dataset=my_dev",)))
    doc = _load_train(rendered)
    assert doc["eval_dataset"] == "my_dev" and "val_size" not in doc
    assert any("val_size" in note for note in rendered.notes)
    assert "val_size" in _load_train(render(RenderOptions(stage="sft")))
    both = _load_train(render(RenderOptions(stage="sft", sets=("eval_dataset=my_dev", "val_size=0.2"))))
    assert both["val_size"] == 0.2  # asked for explicitly: kept (LLaMA-Factory's parser then says why not)


@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "~/missing-model", "a/b/c"])
def test_missing_local_folder_is_named_as_such(path):
    with pytest.raises(UserError, match="no such folder here.*--template"):
        render(RenderOptions(stage="sft", model=path))
    doc = _load_train(render(RenderOptions(stage="sft", model=path, template="cpm4")))
    assert doc["model_name_or_path"] == path  # may exist on the training machine


def test_template_that_lf_does_not_have_is_refused():
    with pytest.raises(UserError, match="cpm.*no such template"):
        render(RenderOptions(stage="sft", model="someone/SomeModel", template="cpm"))


def test_local_folder_detects_remote_code_and_known_names(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "m.M"}}))
    doc = _load_train(render(RenderOptions(stage="sft", model=str(folder), template="cpm4")))
    assert doc["model_name_or_path"] == str(folder) and doc["trust_remote_code"] is True
    known = tmp_path / "MiniCPM-SALA"
    known.mkdir()
    doc = _load_train(render(RenderOptions(stage="sft", model=str(known))))
    assert doc["model_name_or_path"] == str(known) and doc["flash_attn"] == "fa2" and doc["template"] == "cpm4"


@pytest.mark.parametrize(("alias", "model_id"), [("qwen3", "Qwen/Qwen3-8B"), ("ChatGLM3", "THUDM/chatglm3-6b"),
                                                 ("minicpm4.1", "openbmb/MiniCPM4.1-8B"), ("llama3", None)])
def test_aliases_resolve(alias, model_id):
    doc = _load_train(render(RenderOptions(stage="sft", model=alias)))
    if model_id:
        assert doc["model_name_or_path"] == model_id
    assert doc["template"] == load_catalog().find_model(alias).template


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        (RenderOptions(stage="sfx"), "unknown stage 'sfx'.*did you mean 'sft'"),
        (RenderOptions(stage="sft", method="qlora"), "unknown method"),
        (RenderOptions(stage="sft", dist="zero4"), "unknown --dist 'zero4'"),
        (RenderOptions(stage="sft", nodes=0), "--nodes"),
        (RenderOptions(stage="sft", gpus_per_node=0), "--gpus-per-node"),
        (RenderOptions(stage="sft", master_port=70000), "--master-port"),
    ],
)
def test_bad_options_raise_user_errors(options, pattern):
    with pytest.raises(UserError, match=pattern):
        render(options)


# ---- distributed files and references -----------------------------------------------------------------

def test_deepspeed_file_is_rendered_and_referenced():
    rendered = render(RenderOptions(stage="sft", dist="zero3-offload", ref_dir="configs"))
    doc = _load_train(rendered)
    ds = rendered.file("deepspeed")
    assert doc["deepspeed"] == f"configs/{ds.name}"
    config = json.loads(ds.content)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert rendered.engine == "torchrun"
    assert rendered.commands == ("FORCE_TORCHRUN=1 NPROC_PER_NODE=1 llamafactory-cli train "
                                 "configs/minicpm-sala_lora_sft_zero3-offload.yaml",)


def test_zero2_config():
    config = json.loads(render(RenderOptions(stage="dpo", dist="zero2")).file("deepspeed").content)
    assert config["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in config["zero_optimization"]


@pytest.mark.parametrize(("dist", "version"), [("fsdp", 1), ("fsdp2", 2)])
def test_fsdp_accelerate_config(dist, version):
    rendered = render(RenderOptions(stage="sft", dist=dist, gpus_per_node=4, ref_dir="c"))
    acc = yaml.safe_load(rendered.file("accelerate").content)
    assert acc["distributed_type"] == "FSDP"
    assert acc["fsdp_config"]["fsdp_version"] == version
    assert acc["num_processes"] == 4 and acc["mixed_precision"] == "bf16"
    assert "deepspeed" not in _load_train(rendered)
    assert rendered.commands[0].startswith(f"accelerate launch --config_file c/{rendered.file('accelerate').name}")
    assert rendered.commands[0].endswith(f"-m llamafactory.launcher c/{rendered.train_file}")


def test_fsdp_mixed_precision_follows_the_training_precision():
    rendered = render(RenderOptions(stage="sft", dist="fsdp2", sets=("bf16=false", "fp16=true")))
    assert yaml.safe_load(rendered.file("accelerate").content)["mixed_precision"] == "fp16"


def test_multi_node_writes_a_launch_script_per_node_commands():
    rendered = render(RenderOptions(stage="sft", dist="zero3", nodes=2, gpus_per_node=8,
                                    master_addr="10.0.0.1", master_port=29600, ref_dir="cfg"))
    script = rendered.file("launch")
    assert script.executable and script.name.endswith("_node.sh")
    assert "export NNODES=2" in script.content
    assert 'MASTER_ADDR="${MASTER_ADDR:-10.0.0.1}"' in script.content
    assert 'MASTER_PORT="${MASTER_PORT:-29600}"' in script.content
    assert "FORCE_TORCHRUN=1" in script.content
    assert f"llamafactory-cli train cfg/{rendered.train_file}" in script.content
    assert len(rendered.commands) == 2
    assert rendered.commands[1].startswith(f"NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash cfg/{script.name}")


def test_multi_node_fsdp_script_uses_accelerate_with_machine_rank():
    rendered = render(RenderOptions(stage="sft", dist="fsdp2", nodes=3, gpus_per_node=2, master_addr="h0"))
    script = rendered.file("launch").content
    assert "accelerate launch" in script and '--machine_rank "$NODE_RANK"' in script
    acc = yaml.safe_load(rendered.file("accelerate").content)
    assert acc["num_machines"] == 3 and acc["num_processes"] == 6 and acc["main_process_ip"] == "h0"


def test_write_rendered_writes_every_file_atomically(tmp_path):
    rendered = render(RenderOptions(stage="sft", dist="zero3", nodes=2))
    paths = write_rendered(rendered, tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(f.name for f in rendered.files)
    for f in rendered.files:
        assert (tmp_path / "out" / f.name).read_text(encoding="utf-8") == f.content
    assert (tmp_path / "out" / rendered.file("launch").name).stat().st_mode & 0o111
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_write_rendered_to_unwritable_place_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create"):
        write_rendered(render(RenderOptions(stage="sft")), blocker / "sub")


@pytest.mark.parametrize("dist", [d for d in load_catalog().dists])
def test_every_rendered_launch_script_is_valid_bash(tmp_path, dist):
    import subprocess

    rendered = render(RenderOptions(stage="sft", dist=dist, nodes=2, gpus_per_node=2, master_addr="10.0.0.1"))
    scripts = [f for f in rendered.files if f.name.endswith(".sh")]
    assert scripts
    for f in scripts:
        path = tmp_path / f.name
        path.write_text(f.content, encoding="utf-8")
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{f.name}: {proc.stderr}"
        # without NODE_RANK the script stops with a clear message before launching anything
        proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode != 0 and "NODE_RANK" in proc.stderr
