"""Every shipped recipe combination, checked by the real libraries.

LLaMA-Factory's own argument parser (unknown keys, wrong types, cross-field rules), DeepSpeed's config classes
and accelerate's config loader + FSDP plugin, all in one child process (see minicpm_recipes/lfcheck.py).
"""

from __future__ import annotations

import itertools

import pytest

from minicpm_recipes.catalog import load_catalog
from minicpm_recipes.lfcheck import check_files
from minicpm_recipes.render import RenderOptions, render, write_rendered

pytestmark = pytest.mark.slow

CATALOG = load_catalog()
STAGES = list(CATALOG.stages)
METHODS = list(CATALOG.methods)
DISTS = list(CATALOG.dists)


def _combinations():
    for stage, method, dist in itertools.product(STAGES, METHODS, DISTS):
        yield RenderOptions(stage=stage, method=method, dist=dist)
    for dist in DISTS:  # multi-node, every dist
        yield RenderOptions(stage="sft", method="lora", dist=dist, nodes=2, gpus_per_node=8, master_addr="10.1.2.3")
    for stage in STAGES:  # multi-node, every stage
        yield RenderOptions(stage=stage, method="full", dist="zero3", nodes=4, gpus_per_node=8)
    for stage in ("sft", "dpo"):  # a separate validation set: val_size must go (LLaMA-Factory refuses both)
        yield RenderOptions(stage=stage, sets=(f"eval_dataset=minicpm_demo_{stage.replace('sft', 'sft_zh')}",))
    for model in CATALOG.models:  # every model family
        yield RenderOptions(stage="sft", model=model.id, template=None if model.template else "default")


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("combos")
    items, expected = [], []
    for i, options in enumerate(_combinations()):
        out = f"r{i:03d}"
        rendered = render(RenderOptions(**{**options.__dict__, "ref_dir": out, "output_dir": f"{out}/saves"}))
        write_rendered(rendered, root / out)
        for f in rendered.files:
            if f.role in ("train", "deepspeed", "accelerate"):
                items.append((f.role, f"{out}/{f.name}"))
                expected.append(options)
    results = check_files(items, cwd=root)
    return root, list(zip(expected, results, strict=True))


def test_every_combination_is_checked(checked):
    _, results = checked
    seen = {(o.stage, o.method, o.dist) for o, r in results if r.kind == "train"}
    assert seen >= set(itertools.product(STAGES, METHODS, DISTS))
    kinds = {r.kind for _, r in results}
    assert kinds == {"train", "deepspeed", "accelerate"}


def test_llamafactory_parser_accepts_every_training_yaml(checked):
    _, results = checked
    failures = [f"{r.path} ({o.stage}/{o.method}/{o.dist}/{o.nodes}n): {r.error}"
                for o, r in results if r.kind == "train" and not r.ok]
    assert not failures, "\n".join(failures)


def test_deepspeed_accepts_every_deepspeed_json(checked):
    _, results = checked
    failures = [f"{r.path}: {r.error}" for _, r in results if r.kind == "deepspeed" and not r.ok]
    assert not failures, "\n".join(failures)


def test_accelerate_loads_every_fsdp_config(checked):
    _, results = checked
    failures = [f"{r.path}: {r.error}" for _, r in results if r.kind == "accelerate" and not r.ok]
    assert not failures, "\n".join(failures)


def test_the_checker_rejects_what_llamafactory_rejects(tmp_path):
    """The check is real: configs LLaMA-Factory refuses come back as failures with its message."""
    cases = {
        "typo": ("sft", "single", ("learning_rate=1e-4",), "learnig_rate: 0.1\n"),
        "wrong_type": ("sft", "single", ("num_train_epochs=three",), ""),
        "cross_field": ("dpo", "single", ("neat_packing=true",), ""),
        "zero3_generate": ("sft", "zero3", ("predict_with_generate=true", "do_train=false", "do_predict=true"), ""),
    }
    items = []
    for name, (stage, dist, sets, extra) in cases.items():
        rendered = render(RenderOptions(stage=stage, dist=dist, sets=sets, ref_dir=name, output_dir=f"{name}/o"))
        write_rendered(rendered, tmp_path / name)
        train = tmp_path / name / rendered.train_file
        train.write_text(train.read_text(encoding="utf-8") + extra, encoding="utf-8")
        items.append(("train", f"{name}/{rendered.train_file}"))
    broken_ds = tmp_path / "broken_ds.json"
    broken_ds.write_text('{"zero_optimization": {"stage": 3, "no_such_option": 1}, "bf16": {"enabled": "auto"},'
                         ' "fp16": {"enabled": "auto"}}')
    items.append(("deepspeed", str(broken_ds)))
    broken_acc = tmp_path / "broken_acc.yaml"
    broken_acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nmixed_precision: bf16\n"
                          "use_cpu: false\ndebug: false\nnum_processes: 2\nnot_an_accelerate_key: 1\n")
    items.append(("accelerate", str(broken_acc)))
    results = {r.path: r for r in check_files(items, cwd=tmp_path)}
    assert not any(r.ok for r in results.values()), results
    errors = {path.split("/")[0]: r.error for path, r in results.items()}
    assert "learnig_rate" in errors["typo"]
    assert "num_train_epochs" in errors["wrong_type"] or "three" in errors["wrong_type"]
    assert "neat_packing" in errors["cross_field"]
    assert "ZeRO-3" in errors["zero3_generate"]
