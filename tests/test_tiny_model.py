"""`minicpm-recipes tiny-model DIR`: a deterministic local model whose tokenizer has the cpm4 chat tokens."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_model_is_the_same_bytes_for_the_same_seed(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        proc = run_cli("tiny-model", str(tmp_path / name), "--seed", seed, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "Writing model shards" not in proc.stderr  # no progress bar for one tiny shard
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(a)
    assert a == b
    assert c["model.safetensors"] != a["model.safetensors"] and c["tokenizer.json"] == a["tokenizer.json"]


def test_tiny_model_tokenizer_speaks_the_cpm4_template(tiny_model):
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    template = TEMPLATES["cpm4"]
    prompt, answer = template.encode_oneturn(tok, [{"role": "user", "content": "你好"},
                                                   {"role": "assistant", "content": "hi"}])
    assert tok.decode(prompt) == "<s><|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(answer) == "hi<|im_end|>\n"
    for token in ("<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(token, add_special_tokens=False)) == 1


def test_tiny_model_refuses_sizes_that_make_no_model(tmp_path):
    for args, message in ((["--layers", "0"], "--layers must be 1 or more, got 0"),
                          (["--hidden-size", "6"], "--hidden-size must be a multiple of 4 and at least 8, got 6")):
        proc = run_cli("tiny-model", str(tmp_path / "t"), *args)
        assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "t").exists()
