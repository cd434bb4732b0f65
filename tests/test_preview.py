"""`minicpm-recipes preview`: pure summaries, and real LLaMA-Factory tokenization of the demo data."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from minicpm_recipes.errors import UserError
from minicpm_recipes.preview import (
    IGNORE_INDEX,
    TokenRow,
    format_table,
    length_stats,
    preview_config,
    sample_fields,
    sample_rows,
    show_token,
)

DEMO = REPO / "datasets" / "demo"


# ---- pure core -------------------------------------------------------------------------------------------

def test_preview_config_drops_distributed_setup_and_keeps_data_settings():
    config = {"model_name_or_path": "m", "dataset": "d", "template": "cpm4", "cutoff_len": 77, "deepspeed": "ds.json",
              "bf16": True, "val_size": 0.1, "max_samples": 5, "eval_dataset": "e", "preprocessing_num_workers": 999}
    out = preview_config(config)
    assert "deepspeed" not in out and "eval_dataset" not in out
    assert out["use_cpu"] is True and out["bf16"] is False and out["val_size"] == 0.0
    assert out["cutoff_len"] == 77 and out["template"] == "cpm4" and out["max_samples"] == 5
    assert 1 <= out["preprocessing_num_workers"] < 999
    assert config["deepspeed"] == "ds.json"  # the input is not modified
    assert preview_config(config, max_samples=2)["max_samples"] == 2


@pytest.mark.parametrize("config", [{}, {"model_name_or_path": "m"}, {"dataset": "d"}, ["not", "a", "mapping"]])
def test_preview_config_needs_model_and_dataset(config):
    with pytest.raises(UserError):
        preview_config(config)


@pytest.mark.parametrize("lengths", [[5], [3, 9, 1, 7], [10, 10, 2, 40, 8, 8, 100, 1]])
def test_length_stats_agree_with_statistics_module(lengths):
    st = length_stats(lengths, cutoff_len=8)
    assert st.count == len(lengths)
    assert st.min == min(lengths) and st.max == max(lengths)
    assert st.mean == pytest.approx(statistics.mean(lengths))
    assert st.median == pytest.approx(statistics.median(lengths))
    assert st.over_cutoff == len([x for x in lengths if x > 8])
    assert lengths[st.longest[0]] == max(lengths)
    assert [lengths[i] for i in st.longest] == sorted(lengths, reverse=True)[: len(st.longest)]
    assert min(lengths) <= st.p95 <= max(lengths)


def test_length_stats_cutoff_boundary_is_strict():
    assert length_stats([8, 8, 9], 8).over_cutoff == 1
    assert length_stats([], 8).count == 0


def test_sample_fields_per_stage():
    assert sample_fields({"input_ids": [1, 2], "labels": [-100, 2]}, "sft") == ("input_ids", [1, 2], [-100, 2])
    pair = {"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3], "rejected_input_ids": [1, 4],
            "rejected_labels": [-100, 4]}
    assert sample_fields(pair, "rm") == ("chosen_input_ids", [1, 2, 3], [-100, 2, 3])
    assert sample_fields({"input_ids": [7, 8]}, "pt") == ("input_ids", [7, 8], [7, 8])


def test_table_rows_and_truncation():
    rows = sample_rows([5, 6, 7], [IGNORE_INDEX, 6, 7], ["a", "\n", " b"])
    assert rows[1] == TokenRow(1, 6, 6, "\n")
    lines = format_table(rows, max_rows=2)
    assert len(lines) == 1 + 2 + 1 and "1 more tokens" in lines[-1]
    assert "\\n" in lines[2]  # the newline token is shown escaped, on one line
    assert len(format_table(rows, max_rows=0)) == 4
    with pytest.raises(ValueError):
        sample_rows([1], [1, 2], ["x"])


def test_show_token_makes_whitespace_visible():
    assert show_token("a") == "a"
    assert show_token(" ") == "' '"
    assert show_token("\t") == "\\t"


def test_cli_missing_config_is_one_line_exit_2(tmp_path):
    proc = run_cli("preview", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nope.yaml" in proc.stderr and "render" in proc.stderr


# ---- real LLaMA-Factory ----------------------------------------------------------------------------------

def _render(stage: str, model, out_dir, *sets: str) -> str:
    proc = run_cli("render", stage, "--model", str(model), "--template", "cpm4", "--output-dir", str(out_dir / "o"),
                   "--dataset-dir", str(DEMO), "--set", "bf16=false", *[a for s in sets for a in ("--set", s)],
                   "-o", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    return str(next(out_dir.glob(f"*_{stage}.yaml")))


def _preview_json(config: str) -> dict:
    proc = run_cli("preview", config, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_preview_sft_masks_the_prompt_and_trains_the_answer(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = json.loads((DEMO / "minicpm_demo_sft_zh.json").read_text(encoding="utf-8"))[0]["messages"]
    answer = first[-1]["content"]
    records = len(json.loads((DEMO / "minicpm_demo_sft_zh.json").read_text(encoding="utf-8")))

    result = _preview_json(_render("sft", tiny_model, tmp_path / "long", "cutoff_len=100000"))
    rows = result["rows"]
    trained = [r["id"] for r in rows if r["label"] != IGNORE_INDEX]
    masked = [r["id"] for r in rows if r["label"] == IGNORE_INDEX]
    assert all(r["label"] in (IGNORE_INDEX, r["id"]) for r in rows)
    decoded = tokenizer.decode(trained)  # cpm4: the answer and its end-of-turn token are trained
    assert decoded.startswith(answer + "<|im_end|>") and not decoded[len(answer) + len("<|im_end|>"):].strip()
    prompt_text = tokenizer.decode(masked)
    assert first[0]["content"] in prompt_text and first[1]["content"] in prompt_text
    assert prompt_text.rstrip().endswith("<|im_start|>assistant")
    first_trained = next(i for i, r in enumerate(rows) if r["label"] != IGNORE_INDEX)
    assert all(r["label"] != IGNORE_INDEX for r in rows[first_trained:])  # one turn: prompt masked, then answer
    st = result["stats"]
    assert st["count"] == records and st["over_cutoff"] == 0
    assert st["min"] <= len(rows) <= st["max"]

    # same data, small cutoff: the statistics are measured before truncation, the table after it
    short = _preview_json(_render("sft", tiny_model, tmp_path / "short", "cutoff_len=64"))
    assert short["cutoff_len"] == 64 and len(short["rows"]) <= 64
    assert short["stats"]["max"] == st["max"] and short["stats"]["min"] == st["min"]
    assert short["stats"]["over_cutoff"] == records  # every demo record is longer than 64 tokens


@pytest.mark.slow
def test_preview_dpo_and_text_report(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = json.loads((DEMO / "minicpm_demo_dpo.json").read_text(encoding="utf-8"))[0]
    config = _render("dpo", tiny_model, tmp_path, "cutoff_len=100000", "max_samples=7")
    result = _preview_json(config)
    assert result["stage"] == "dpo" and result["sample_field"] == "chosen_input_ids"
    trained = [r["id"] for r in result["rows"] if r["label"] != IGNORE_INDEX]
    decoded = tokenizer.decode(trained)
    chosen = first["chosen"]["value"] + "<|im_end|>"
    assert decoded.startswith(chosen) and not decoded[len(chosen):].strip()
    assert result["stats"]["count"] == 7  # max_samples of the config

    proc = run_cli("preview", config, "--rows", "5", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "first sample (chosen_input_ids)" in out and "token lengths of 7 samples" in out
    assert "more tokens (--rows 0 shows all)" in out
    table = [ln for ln in out.splitlines() if len(ln.split()) >= 4 and ln.split()[2] in ("-100", ln.split()[1])]
    assert len(table) == 5


@pytest.mark.slow
def test_preview_reports_unknown_dataset_as_user_error(tiny_model, tmp_path):
    config = _render("sft", tiny_model, tmp_path, "dataset=not_registered_anywhere")
    proc = run_cli("preview", config, timeout=300)
    assert proc.returncode == 2
    assert "not_registered_anywhere" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_preview_reports_an_unknown_template_and_a_missing_model_folder_in_one_line(tiny_model, tmp_path):
    config = Path(_render("sft", tiny_model, tmp_path))
    text = config.read_text(encoding="utf-8")
    bad_template = tmp_path / "t.yaml"
    bad_template.write_text(text.replace("template: cpm4", "template: nosuch"), encoding="utf-8")
    no_model = tmp_path / "m.yaml"
    no_model.write_text(text.replace(str(tiny_model), str(tmp_path / "missing-model")), encoding="utf-8")
    for path, needle in ((bad_template, "template: Template nosuch does not exist"),
                         (no_model, f"model_name_or_path {tmp_path / 'missing-model'}: no such folder")):
        proc = run_cli("preview", str(path), timeout=300)
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    quick = run_cli("preview", str(config), "--rows", "3", "--no-stats", timeout=300)
    assert quick.returncode == 0 and "total tokens" not in quick.stdout and "token lengths" not in quick.stdout
    assert run_cli("preview", str(config), "--rows", "-1").returncode == 2
