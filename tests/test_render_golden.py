"""Golden-file tests: a few renders, byte for byte. Regenerate with UPDATE_GOLDEN=1 after an intended change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minicpm_recipes.render import RenderOptions, render

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "dpo_default": RenderOptions(stage="dpo", dataset_dir="datasets/demo", ref_dir="configs"),
    "sft_full_zero3": RenderOptions(stage="sft", method="full", dist="zero3", gpus_per_node=8,
                                    dataset_dir="data", ref_dir="configs"),
    "pt_fsdp2_2nodes": RenderOptions(stage="pretrain", dist="fsdp2", nodes=2, gpus_per_node=4,
                                     master_addr="10.0.0.1", dataset_dir="data", ref_dir="configs"),
    "kto_qwen3_zero2": RenderOptions(stage="kto", model="qwen3", dist="zero2", dataset="my_kto",
                                     dataset_dir="data", sets=("max_samples=1000",), ref_dir="cfg"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case):
    rendered = render(CASES[case])
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for f in rendered.files:
            (folder / f.name).write_text(f.content, encoding="utf-8")
    expected = {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir()}
    actual = {f.name: f.content for f in rendered.files}
    assert sorted(actual) == sorted(expected)
    for name, content in actual.items():
        assert content == expected[name], f"{case}/{name} differs from the golden file"
