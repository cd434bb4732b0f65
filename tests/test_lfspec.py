"""The shipped LLaMA-Factory snapshot (argument names, templates) matches the installed LLaMA-Factory."""

import pytest

from minicpm_recipes.lfspec import load_spec, spec_from_installed


@pytest.mark.slow
def test_snapshot_matches_installed_llamafactory():
    installed = spec_from_installed()
    spec = load_spec()
    assert spec.version == installed["llamafactory_version"]
    assert sorted(spec.train_keys) == installed["train_keys"], "run `python -m minicpm_recipes.lfspec`"
    assert sorted(spec.templates) == installed["templates"], "run `python -m minicpm_recipes.lfspec`"


def test_snapshot_has_what_recipes_use():
    spec = load_spec()
    assert {"cpm4", "qwen3", "chatglm3", "llama3"} <= spec.templates
    assert "cpm" not in spec.templates  # removed from LLaMA-Factory; MiniCPM-2B must not emit it
    assert {"learning_rate", "deepspeed", "flash_attn", "pref_beta", "use_cpu"} <= spec.train_keys
