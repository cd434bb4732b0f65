"""Preflight checks of `minicpm-recipes train` (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import LF_DATA, run_cli
from minicpm_recipes.errors import UserError
from minicpm_recipes.launch import preflight
from minicpm_recipes.launch.preflight import (
    Facts,
    ModelFacts,
    Resume,
    check_datasets,
    check_resume,
    check_rules,
)

PLAIN = Facts(model=ModelFacts(name="m"))


def messages(problems) -> str:
    return " | ".join(p.message for p in problems)


# ---- pure rules ---------------------------------------------------------------------------------------------

def test_clean_config_has_no_problems():
    cfg = {"stage": "sft", "finetuning_type": "lora", "deepspeed": "ds.json", "predict_with_generate": False}
    assert check_rules(cfg, Facts(model=ModelFacts(name="m"), zero_stage=3)) == []


@pytest.mark.parametrize("key", ["predict_with_generate", "pure_bf16"])
def test_zero3_rules(key):
    cfg = {"stage": "sft", key: True, "deepspeed": "ds_z3.json"}
    problems = check_rules(cfg, Facts(model=ModelFacts(name="m"), zero_stage=3))
    assert [p.key for p in problems] == [key]
    assert "ZeRO-3" in problems[0].message and "ds_z3.json" in problems[0].message
    assert check_rules(cfg, Facts(model=ModelFacts(name="m"), zero_stage=2)) == []


def test_deepspeed_with_use_cpu_on_several_processes():
    cfg = {"stage": "sft", "deepspeed": "ds.json", "use_cpu": True}
    problems = check_rules(cfg, Facts(model=ModelFacts(name="m"), zero_stage=2, world_size=2))
    assert [p.key for p in problems] == ["use_cpu"]
    assert check_rules(cfg, Facts(model=ModelFacts(name="m"), zero_stage=2, world_size=1)) == []
    assert check_rules({**cfg, "use_cpu": False}, Facts(model=ModelFacts(name="m"), world_size=2)) == []


def test_neat_packing_only_in_sft():
    assert [p.key for p in check_rules({"stage": "dpo", "neat_packing": True}, PLAIN)] == ["neat_packing"]
    assert check_rules({"stage": "sft", "neat_packing": True}, PLAIN) == []


def test_quantization_needs_lora():
    problems = check_rules({"stage": "sft", "finetuning_type": "full", "quantization_bit": 4}, PLAIN)
    assert [p.key for p in problems] == ["quantization_bit"] and "finetuning_type: lora" in problems[0].message
    assert check_rules({"stage": "sft", "quantization_bit": 4}, PLAIN) == []  # lora is LLaMA-Factory's default


def test_minicpm_sala_needs_flash_attn():
    sala = preflight.model_facts("openbmb/MiniCPM-SALA")
    assert sala.requires_flash_attn and sala.needs_remote_code
    cfg = {"stage": "sft", "trust_remote_code": True}
    problems = check_rules(cfg, Facts(model=sala, flash_attn_available=False))
    assert [p.key for p in problems] == ["flash_attn"] and "flash-attn" in problems[0].message
    assert check_rules(cfg, Facts(model=sala, flash_attn_available=True)) == []


def test_trust_remote_code_from_catalog_and_auto_map(tmp_path):
    facts = Facts(model=preflight.model_facts("minicpm4"))
    assert [p.key for p in check_rules({"stage": "sft"}, facts)] == ["trust_remote_code"]
    assert check_rules({"stage": "sft", "trust_remote_code": True}, facts) == []
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.X"}}))
    facts = Facts(model=preflight.model_facts(str(local)))
    problems = check_rules({"stage": "sft", "trust_remote_code": False}, facts)
    assert "auto_map" in messages(problems)
    (local / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert check_rules({"stage": "sft"}, Facts(model=preflight.model_facts(str(local)))) == []


def test_template_must_exist():
    templates = frozenset({"cpm4", "qwen3"})
    assert preflight.check_template({"stage": "sft", "template": "cpm4"}, templates) == []
    problem = preflight.check_template({"stage": "sft", "template": "cpm"}, templates)[0]
    assert "cpm4" in problem.message and problem.key == "template"
    assert preflight.check_template({"stage": "pt"}, templates) == []
    assert preflight.check_template({"stage": "sft"}, templates)[0].key == "template"


# ---- resume -------------------------------------------------------------------------------------------------

def test_find_checkpoints(tmp_path):
    out = tmp_path / "out"
    assert preflight.find_checkpoints(out) == Resume(output_dir=str(out))
    for n in (2, 10, 4):
        (out / f"checkpoint-{n}").mkdir(parents=True)
    (out / "checkpoint-99.tmp").mkdir()
    (out / "checkpoint-50").write_text("a file, not a checkpoint")
    r = preflight.find_checkpoints(out)
    assert (r.checkpoint, r.step) == ("checkpoint-10", 10)


def test_resume_reported_or_refused():
    res = Resume(output_dir="out", checkpoint="checkpoint-4", step=4)
    outcome = check_resume({}, res, no_resume=False)
    assert outcome.notes == ("resuming from checkpoint-4 (step 4) in out",) and not outcome.problems
    assert outcome.resume_from.endswith("checkpoint-4")
    refused = check_resume({}, res, no_resume=True)
    assert refused.problems and "--no-resume" in refused.problems[0].message
    over = check_resume({"overwrite_output_dir": True}, res, no_resume=True)
    assert not over.problems and "starting from step 0" in over.notes[0]
    assert check_resume({}, Resume(output_dir="out"), no_resume=True).problems == ()
    done = check_resume({}, Resume(output_dir="out", model_files=("adapter_model.safetensors",)), no_resume=False)
    assert "already holds a trained model" in done.problems[0].message


# ---- datasets -----------------------------------------------------------------------------------------------

def test_datasets_must_be_registered(tmp_path):
    assert check_datasets({"dataset": "alpaca_en_demo,dpo_en_demo", "dataset_dir": str(LF_DATA)}) == []
    problems = check_datasets({"dataset": "alpaca_en_dem", "dataset_dir": str(LF_DATA)})
    assert len(problems) == 1 and "did you mean 'alpaca_en_demo'" in problems[0].message
    problems = check_datasets({"dataset": "x", "dataset_dir": str(tmp_path)})
    assert "no dataset_info.json" in problems[0].message
    problems = check_datasets({"dataset": "alpaca_en_demo", "eval_dataset": ["nope"], "dataset_dir": str(LF_DATA)})
    assert [p.key for p in problems] == ["eval_dataset"]


def test_datasets_pass_the_validator():
    calls = []

    def fake_validate(name, dataset_dir, **kw):
        calls.append((name, dataset_dir))
        bad = name == "dpo_en_demo"
        return SimpleNamespace(ok=not bad, problems=[f"record {i}: chosen is empty" for i in range(5)] if bad else [])

    cfg = {"dataset": ["alpaca_en_demo", "dpo_en_demo"], "dataset_dir": str(LF_DATA)}
    problems = check_datasets(cfg, fake_validate)
    assert calls == [("alpaca_en_demo", str(LF_DATA)), ("dpo_en_demo", str(LF_DATA))]
    assert len(problems) == 1
    assert "dpo_en_demo does not pass validation: record 0: chosen is empty" in problems[0].message
    assert "(and 2 more)" in problems[0].message


def test_a_crashing_validator_does_not_block_training():
    def broken_validate(name, dataset_dir, **kw):
        raise ValueError("bug in the validator")

    notes: list[str] = []
    problems = check_datasets({"dataset": "alpaca_en_demo", "dataset_dir": str(LF_DATA)}, broken_validate,
                              notes=notes)
    assert problems == [] and len(notes) == 1 and "bug in the validator" in notes[0]


def test_validator_gets_stage_and_cutoff_len():
    seen = []

    def validate(name, dataset_dir, **kw):
        seen.append(kw)
        return SimpleNamespace(ok=True, problems=[])

    check_datasets({"dataset": "dpo_en_demo", "dataset_dir": str(LF_DATA), "stage": "dpo", "cutoff_len": 64}, validate)
    check_datasets({"dataset": "dpo_en_demo", "dataset_dir": str(LF_DATA), "stage": "ppo"}, validate)
    assert seen == [{"stage": "dpo", "cutoff_len": 64}, {"stage": None}]


def test_real_validator_when_installed(tmp_path):
    validate = preflight.default_validator()
    if validate is None:
        pytest.skip("minicpm_recipes.data.validate is not there yet")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"broken": {"file_name": "broken.json"}}))
    (data / "broken.json").write_text(json.dumps([{"instruction": 1}, {"nothing": "here"}]))
    problems = check_datasets({"dataset": "broken", "dataset_dir": str(data)}, validate)
    assert problems and "broken" in problems[0].message
    assert check_datasets({"dataset": "alpaca_en_demo", "dataset_dir": str(LF_DATA)}, validate) == []


# ---- reading the config --------------------------------------------------------------------------------------

def test_load_config_applies_overrides_like_llamafactory(tmp_path):
    cfg_path = tmp_path / "x.yaml"
    cfg_path.write_text(yaml.safe_dump({"stage": "sft", "max_steps": 10, "bf16": True, "template": "cpm4"}))
    cfg = preflight.load_config(cfg_path, ["max_steps=3", "bf16=false", "template=null", "learning_rate=5e-5"])
    assert cfg == {"stage": "sft", "max_steps": 3, "bf16": False, "template": None, "learning_rate": 5e-5}
    with pytest.raises(UserError, match="did you mean 'max_steps'"):
        preflight.load_config(cfg_path, ["max_step=3"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        preflight.load_config(cfg_path, ["max_steps"])
    with pytest.raises(UserError, match="no such file"):
        preflight.load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match=r"is a folder; give one training YAML in it \(x.yaml\)"):
        preflight.load_config(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="yaml"):
        preflight.load_config(tmp_path / "x.json")


# ---- the command: one line per problem, exit 2, before anything heavy ---------------------------------------------

def _config(tmp_path: Path, tiny_model, **changes) -> Path:
    cfg = {"model_name_or_path": str(tiny_model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "dataset": "alpaca_en_demo", "dataset_dir": str(LF_DATA), "template": "cpm4",
           "output_dir": str(tmp_path / "out"), "use_cpu": True, "max_steps": 1, "report_to": "none"}
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_reports_every_problem_on_its_own_line(tmp_path, tiny_model):
    ds = tmp_path / "ds_z3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    path = _config(tmp_path, tiny_model, stage="dpo", neat_packing=True, dataset="nope", template="cpmm",
                   deepspeed=str(ds), pure_bf16=True)
    proc = run_cli("train", str(path), "--dry-run", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("minicpm-recipes train: error: ") for line in lines), proc.stderr
    text = proc.stderr
    for needle in ("pure_bf16", "neat_packing", "template: cpmm", "dataset: nope is not registered",
                   "minicpm-recipes register FILE --name nope --dataset-dir "):
        assert needle in text
    assert len(lines) == 4
    assert "command:" not in proc.stdout


def test_train_reports_llamafactory_parser_errors(tmp_path, tiny_model):
    """A problem only LLaMA-Factory's own parser finds: do_predict without predict_with_generate."""
    path = _config(tmp_path, tiny_model, do_predict=True, val_size=0.1)
    proc = run_cli("train", str(path), "--dry-run", timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "LLaMA-Factory rejects" in proc.stderr and "predict_with_generate" in proc.stderr
    # the same config with an override that fixes it passes, and the override reaches the printed command
    proc = run_cli("train", str(path), "do_predict=false", "--dry-run", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LLaMA-Factory parser" in proc.stdout
    assert proc.stdout.splitlines()[-2].endswith(f"train {path} do_predict=false")


def test_train_no_resume_refuses_checkpoints(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model)
    (tmp_path / "out" / "checkpoint-7").mkdir(parents=True)
    proc = run_cli("train", str(path), "--dry-run", "--no-resume", timeout=120)
    assert proc.returncode == 2 and "checkpoint-7" in proc.stderr and "--no-resume" in proc.stderr


def test_train_multi_node_needs_rendezvous(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model)
    proc = run_cli("train", str(path), "--dry-run", env={"NNODES": "2", "NODE_RANK": "0"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("minicpm-recipes train: error: a 2-node run needs the rendezvous of node 0 on "
                                   "every node: set MASTER_ADDR and MASTER_PORT (or pass --master-addr/"
                                   "--master-port), the same on all nodes")


def test_lfcheck_refuses_a_template_the_installed_llamafactory_lacks(tmp_path, tiny_model):
    from minicpm_recipes import lfcheck

    path = _config(tmp_path, tiny_model, template="cpm4")
    bad, good = lfcheck.check_files([("train", path)], overrides={"template": "no_such_template"}), \
        lfcheck.check_files([("train", path)])
    assert not bad[0].ok and "no_such_template" in bad[0].error and "does not exist" in bad[0].error
    assert good[0].ok, good[0].error
    minimal = tmp_path / "ds_minimal.json"  # no fp16/bf16 sections: valid for DeepSpeed
    minimal.write_text(json.dumps({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                                   "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 3}}))
    broken = tmp_path / "ds_broken.json"
    broken.write_text(json.dumps({"zero_optimization": {"stage": 3, "no_such_option": 1}}))
    ds_ok, ds_bad = lfcheck.check_files([("deepspeed", str(minimal)), ("deepspeed", str(broken))])
    assert ds_ok.ok, ds_ok.error
    assert not ds_bad.ok and "no_such_option" in ds_bad.error
    typed = lfcheck.check_files([("train", path)], overrides={"learning_rate": "abc"})[0]
    assert not typed.ok
    assert typed.error == ("ValueError: argument --learning_rate/--learning-rate: invalid float value: 'abc'")


# ---- keys LLaMA-Factory's parser does not use -------------------------------------------------------------

LF_RANGE = "!=4.52.0,!=4.57.0,<=5.6.0,>=4.55.0"
UNUSED = "ValueError: Some keys are not used by the HfArgumentParser: ['warmup_ratio']"


def test_unused_warmup_ratio_with_an_unsupported_transformers_names_the_version_and_both_fixes():
    hint = preflight.unused_keys_hint(UNUSED, preflight.Versions("0.9.5", "5.17.0", LF_RANGE, True))
    assert "transformers 5.17.0 is outside the range LLaMA-Factory 0.9.5 supports" in hint
    assert "DISABLE_VERSION_CHECK=1 hides" in hint
    assert f"pip install 'transformers{LF_RANGE}'" in hint
    assert "replace warmup_ratio with warmup_steps: 0.1" in hint


def test_unused_keys_inside_the_supported_range_are_called_typos():
    versions = preflight.Versions("0.9.5", "5.6.0", LF_RANGE, False)
    hint = preflight.unused_keys_hint("ValueError: Some keys are not used by the HfArgumentParser: ['lerning_rate']",
                                      versions)
    assert "lerning_rate: not an argument of LLaMA-Factory 0.9.5" in hint and "outside" not in hint
    assert preflight.unused_keys_hint("ValueError: cutoff_len must be positive", versions) == ""


def test_installed_versions_reads_llamafactorys_transformers_requirement():
    from importlib import metadata

    pytest.importorskip("llamafactory")
    v = preflight.installed_versions({"DISABLE_VERSION_CHECK": "1"})
    assert v.version_check_disabled and v.llamafactory == metadata.version("llamafactory")
    assert v.transformers == metadata.version("transformers")
    assert v.transformers_supported and "<=" in v.transformers_supported
    assert not preflight.installed_versions({}).version_check_disabled


def test_dry_run_starts_nothing_and_says_when_it_wrote_multi_node_scripts(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model)
    single = run_cli("train", str(path), "--dry-run", timeout=120)
    assert single.returncode == 0, single.stderr
    assert single.stdout.splitlines()[-1] == "dry run: nothing started"
    assert not list(tmp_path.glob("*.node.sh"))
    multi = run_cli("train", str(path), "--dry-run", timeout=120,
                    env={"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"})
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout.splitlines()[-1] == "dry run: launch scripts written, nothing started"
    assert f"wrote {path.with_suffix('.node.sh')}" in multi.stdout and path.with_suffix(".sbatch").is_file()
    assert not (tmp_path / "out").exists()  # no training output
