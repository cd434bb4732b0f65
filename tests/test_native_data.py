"""Native backend, data side: multi-turn label masks from the model's own chat template (fast, no model)."""

from __future__ import annotations

import json

import pytest

from minicpm_recipes.errors import UserError
from minicpm_recipes.native import data as nd
from minicpm_recipes.native import train as nt
from minicpm_recipes.tiny_model import build_tokenizer

IGN = nd.IGNORE_INDEX

THREE_TURNS = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks, 再见"},
    {"role": "assistant", "content": "You're welcome. 再见!"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _text_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _expected_chatml(tok, messages):
    """The ChatML sequence written out by hand, with the labels the issue asks for, piece by piece."""
    start = tok.convert_tokens_to_ids("<|im_start|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        header = [start] + _text_ids(tok, m["role"] + "\n")
        body = _text_ids(tok, m["content"]) + [end]
        newline = _text_ids(tok, "\n")
        ids += header + body + newline
        labels += [IGN] * len(header)
        labels += body if m["role"] == "assistant" else [IGN] * len(body)
        labels += [IGN] * len(newline)
    return ids, labels


def test_three_turn_mask_is_exact_token_by_token(tok):
    enc = nd.encode_conversation(tok, THREE_TURNS)
    want_ids, want_labels = _expected_chatml(tok, THREE_TURNS)
    # the tokens are exactly the model's own chat template, tokenized in one go
    assert enc.input_ids == list(tok.apply_chat_template(THREE_TURNS, tokenize=True)["input_ids"])
    assert enc.input_ids == want_ids
    assert len(enc.labels) == len(enc.input_ids)
    for pos, (got, want) in enumerate(zip(enc.labels, want_labels, strict=True)):
        assert got == want, f"position {pos} ({tok.convert_ids_to_tokens(enc.input_ids[pos])!r}): {got} != {want}"


def test_every_assistant_turn_ends_with_end_of_turn_token(tok):
    enc = nd.encode_conversation(tok, THREE_TURNS)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    # split the labelled positions into contiguous runs: one per assistant reply
    runs, current = [], []
    for i, label in enumerate(enc.labels):
        if label != IGN:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    replies = [m["content"] for m in THREE_TURNS if m["role"] == "assistant"]
    assert len(runs) == len(replies) == 3
    for run, reply in zip(runs, replies, strict=True):
        assert enc.labels[run[-1]] == end  # intermediate turns too, not only the last one
        assert tok.decode([enc.labels[i] for i in run]) == reply + "<|im_end|>"
        assert enc.labels[run[-1] + 1] == IGN  # the "\n" after <|im_end|> is not trained
    # system and user contents never appear in the labels
    labelled_text = tok.decode([t for t in enc.labels if t != IGN])
    for m in THREE_TURNS:
        if m["role"] != "assistant":
            assert m["content"] not in labelled_text


def test_template_without_end_of_turn_token_gets_eos_on_every_reply(tok):
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    msgs = THREE_TURNS[1:5]
    enc = nd.encode_conversation(tok, msgs)
    eos = tok.eos_token_id
    assert enc.input_ids.count(eos) == 2  # one appended after each reply
    labelled = [t for t in enc.labels if t != IGN]
    assert labelled == _text_ids(tok, "Hello! How can I help?\n") + [eos] + _text_ids(tok, "4\n") + [eos]


def test_template_without_generation_prompt_skips_the_header(tok):
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>{% endfor %}"
    enc = nd.encode_conversation(tok, THREE_TURNS[1:3])
    labelled = [t for t in enc.labels if t != IGN]
    assert tok.decode(labelled) == "Hello! How can I help?<|im_end|>"


def test_generation_config_end_of_turn_ids_count(tok):
    tok = build_tokenizer()
    # a Llama-3-like template: the turn ends with a token that is not the tokenizer's EOS
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    turn_end = tok.convert_tokens_to_ids("</s>")
    eot = nd.end_of_turn_ids(tok, [turn_end])
    enc = nd.encode_conversation(tok, THREE_TURNS[1:5], eot_ids=eot)
    labelled = [t for t in enc.labels if t != IGN]
    assert labelled.count(turn_end) == 2 and tok.eos_token_id not in enc.input_ids


def test_template_that_rewrites_history_is_refused(tok):
    tok = build_tokenizer()
    # marks the last message differently, so earlier prefixes are not prefixes of the whole conversation
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                         "{% if loop.last %}[LAST]{% endif %}<|im_end|>{% endfor %}")
    with pytest.raises(UserError, match="renders earlier turns differently"):
        nd.encode_conversation(tok, THREE_TURNS)


def test_truncation_and_dropping(tok):
    full = nd.encode_conversation(tok, THREE_TURNS)
    short = nd.encode_conversation(tok, THREE_TURNS, max_length=40)
    assert short.input_ids == full.input_ids[:40] and short.labels == full.labels[:40]
    encoded, dropped = nd.encode_records(tok, [{"messages": THREE_TURNS}] * 2, max_length=len(full.input_ids))
    assert (len(encoded), dropped) == (2, 0)
    with pytest.raises(UserError, match="no record has an assistant token"):
        nd.encode_records(tok, [{"messages": THREE_TURNS}], max_length=10)


def test_collate_pads_right(tok):
    a = nd.encode_conversation(tok, THREE_TURNS[:3])
    b = nd.encode_conversation(tok, THREE_TURNS)
    batch = nd.collate([a, b], pad_token_id=tok.pad_token_id)
    width = len(b.input_ids)
    assert all(len(row) == width for rows in batch.values() for row in rows)
    pad = width - len(a.input_ids)
    assert batch["input_ids"][0] == a.input_ids + [tok.pad_token_id] * pad
    assert batch["labels"][0] == a.labels + [IGN] * pad
    assert batch["attention_mask"][0] == [1] * len(a.input_ids) + [0] * pad
    assert batch["labels"][1] == b.labels and batch["attention_mask"][1] == [1] * width


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"conversations": []}, "\"messages\" list"),
        ({"messages": []}, "is empty"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages\\[0\\]"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "b"}]}, "only the first message"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
        ({"messages": [{"role": "user", "content": "a"}]}, "end with an assistant reply"),
    ],
)
def test_check_record_rejects_bad_shapes(record, message):
    with pytest.raises(UserError, match=message):
        nd.check_record(record, where="f.json: record 0")


def test_read_records_json_and_jsonl(tmp_path):
    rec = {"messages": THREE_TURNS}
    (tmp_path / "a.json").write_text(json.dumps([rec, rec]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n\n" + json.dumps(rec) + "\n", encoding="utf-8")
    assert nd.read_records(tmp_path / "a.json") == [rec, rec]
    assert nd.read_records(tmp_path / "b.jsonl") == [rec, rec]
    (tmp_path / "bad.jsonl").write_text(json.dumps(rec) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        nd.read_records(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="no such data file"):
        nd.read_records(tmp_path / "missing.json")


def test_advertisegen_fixture_reads_and_encodes(tok):
    from conftest import MINICPM_DATA

    records = nd.read_records(MINICPM_DATA / "dev.json")
    encoded, dropped = nd.encode_records(tok, records[:5], max_length=4096)
    assert dropped == 0
    for record, enc in zip(records[:5], encoded, strict=True):
        reply = record["messages"][-1]["content"]
        assert tok.decode([t for t in enc.labels if t != IGN]) == reply + "<|im_end|>"


def test_split_records_is_deterministic_and_disjoint():
    records = [{"messages": [], "i": i} for i in range(20)]
    train, dev = nd.split_records(records, 0.1, seed=1)
    assert len(dev) == 2 and len(train) == 18
    assert sorted(r["i"] for r in train + dev) == list(range(20))
    assert nd.split_records(records, 0.1, seed=1) == (train, dev)
    with pytest.raises(UserError, match="--dev-ratio"):
        nd.split_records(records, 1.5, seed=1)


def test_resolve_resume(tmp_path):
    assert nt.resolve_resume(None, tmp_path) is None
    assert nt.resolve_resume("no", tmp_path) is None
    with pytest.raises(UserError, match="no checkpoint"):
        nt.resolve_resume("latest", tmp_path)
    for step in (5, 10, 40):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text("{}")
    assert nt.resolve_resume("yes", tmp_path) == str(tmp_path / "checkpoint-40")
    assert nt.resolve_resume("latest", tmp_path) == str(tmp_path / "checkpoint-40")
    assert nt.resolve_resume("10", tmp_path) == str(tmp_path / "checkpoint-10")
    with pytest.raises(UserError, match="checkpoints there: 5, 10, 40"):
        nt.resolve_resume("7", tmp_path)
    assert nt.resolve_resume(str(tmp_path / "checkpoint-40"), tmp_path) == str(tmp_path / "checkpoint-40")


def test_lora_targets_come_from_the_catalog():
    assert nt.model_defaults("chatglm3")["lora_target"] == "query_key_value"
    assert nt.model_defaults("minicpm-2b")["lora_target"] == "q_proj,v_proj"
    assert nt.peft_target_modules("q_proj,v_proj") == ["q_proj", "v_proj"]
    assert nt.peft_target_modules("all") == "all-linear"
    sala = nt.model_defaults("minicpm-sala")
    assert (sala["trust_remote_code"], sala["lora_rank"]) == (True, 16)


def _metaspace_tokenizer():
    """A sentencepiece-like tokenizer (Metaspace: a '▁' is prepended to every text section), ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from minicpm_recipes.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS

    text = "".join(m["role"] + m["content"] for m in THREE_TURNS) + "\n▁"
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(set(text)):
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    core.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>", bos_token="<s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_ids_are_the_templates_own_with_a_sentencepiece_like_tokenizer():
    tok = _metaspace_tokenizer()
    enc = nd.encode_conversation(tok, THREE_TURNS)
    # tokenizing reply segments on their own would add a '▁' before each reply; the ids must not change
    assert enc.input_ids == list(tok.apply_chat_template(THREE_TURNS, tokenize=True)["input_ids"])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    runs, current = [], []
    for label in enc.labels + [IGN]:
        if label != IGN:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    replies = [m["content"] for m in THREE_TURNS if m["role"] == "assistant"]
    assert [r[-1] for r in runs] == [end] * 3
    assert [tok.decode(r[:-1]).strip() for r in runs] == replies


def test_slow_tokenizer_path_matches_offsets_path(tok):
    full, spans = nd._spans(tok, THREE_TURNS)
    by_offsets = nd._pieces_by_offsets(tok, full, spans)
    by_segments = nd._pieces_by_segments(tok, full, spans)
    assert by_offsets == by_segments  # byte-level: no token crosses a prompt/reply boundary
    assert [is_reply for _ids, is_reply in by_offsets] == [False, True] * 3 + [False]
