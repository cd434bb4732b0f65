"""Agreement with LLaMA-Factory: the same files through our validator and through LLaMA-Factory's real loading
(datasets.load_dataset as llamafactory.data.loader does it), converter (llamafactory.data.converter) and dataset
processor (llamafactory.data.processor, with a chat template and a real tokenizer).

For every file: if LLaMA-Factory cannot load/convert/process it at all, we report at least one error; otherwise,
record by record, every record LLaMA-Factory drops (or logs as invalid: "Invalid role tag", "Invalid message
count", "Dropped invalid example") is flagged by us with an error, and no record it keeps gets an error.
Files: LLaMA-Factory's own demo data, MiniCPM's AdvertiseGenChatML, and seeded random mutations of them.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path

import pytest

from conftest import LF_DATA, MINICPM_DATA
from minicpm_recipes.data.validate import validate_file

pytestmark = pytest.mark.slow

LF_STAGE = {"sft": "sft", "dpo": "rm", "kto": "kto", "pt": "pt"}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tokenizer():
    from minicpm_recipes.tiny_model import build_tokenizer

    return build_tokenizer()


def lf_verdict(path: Path, entry: dict, stage: str, tokenizer, template: str, cache_dir: Path):
    """LLaMA-Factory's view: ("failed", reason) or ("rows", [kept: bool per record]) (pt: one verdict)."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.loader import _get_dataset_processor
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.extras.constants import FILEEXT2TYPE
    from llamafactory.hparams import DataArguments

    from datasets import load_dataset

    lf_stage = LF_STAGE[stage]
    data_args = DataArguments(template=template, cutoff_len=4096, dataset_dir=str(path.parent),
                              packing=(lf_stage == "pt"), preprocessing_num_workers=None)
    attr = get_dataset_list(["x"], {"x": entry})[0]
    if (lf_stage == "rm" and attr.ranking is False) or (lf_stage != "rm" and attr.ranking is True):
        return "failed", "The dataset is not applicable in the current training stage."
    try:
        dataset = load_dataset(FILEEXT2TYPE[path.suffix[1:]], data_files=[str(path)], split="train",
                               cache_dir=str(cache_dir))
    except Exception as exc:  # LLaMA-Factory's _load_single_dataset raises the same
        return "failed", f"load: {exc!r}"
    tpl = get_template_and_fix_tokenizer(tokenizer, data_args)
    converter = get_dataset_converter(attr.formatting, attr, data_args)
    processor = _get_dataset_processor(data_args, lf_stage, tpl, tokenizer, None)
    capture = _Capture()
    lf_logger = logging.getLogger("llamafactory")
    lf_logger.addHandler(capture)
    try:
        converted = []
        verdicts = []
        for row in dataset:
            capture.messages.clear()
            try:
                conv = converter(row)
            except Exception as exc:  # dataset.map(converter) raises: nothing loads
                return "failed", f"convert: {exc!r}"
            converted.append(conv)
            if lf_stage == "pt":
                continue
            try:
                out = processor.preprocess_dataset({k: [v] for k, v in conv.items()})
            except Exception as exc:
                return "failed", f"process: {exc!r}"
            key = "chosen_input_ids" if lf_stage == "rm" else "input_ids"
            kept = len(out.get(key, [])) == 1
            if kept and lf_stage == "kto":  # kept as written: LLaMA-Factory may flip the label (empty answer)
                kept = out["kto_tags"][0] == row[attr.kto_tag]
            complained = any(m.startswith(("Invalid role tag", "Invalid message count", "Dropped invalid"))
                             for m in capture.messages)
            verdicts.append(kept and not complained)
        if lf_stage == "pt":  # packing: all texts are concatenated into cutoff_len blocks
            if not converted:
                return "failed", "empty dataset"
            batch = {k: [c[k] for c in converted] for k in converted[0]}
            try:
                out = processor.preprocess_dataset(batch)
            except Exception as exc:
                return "failed", f"process: {exc!r}"
            if not out["input_ids"]:
                return "failed", "Cannot find sufficient samples"
            return "rows", [True] * len(converted)
        if not any(verdicts):
            return "failed", "Cannot find valid samples"
        return "rows", verdicts
    finally:
        lf_logger.removeHandler(capture)


def assert_agree(path: Path, entry: dict, stage: str, tokenizer, template: str, cache_dir: Path,
                 cutoff_len: int | None = None) -> tuple[str, object]:
    kind, lf = lf_verdict(path, entry, stage, tokenizer, template, cache_dir)
    ours = validate_file(path, entry=entry, stage=stage, max_errors=None, cutoff_len=cutoff_len)
    if kind == "failed":
        assert not ours.ok, f"{path.name}: LLaMA-Factory fails ({lf}) but we report no error"
        return kind, lf
    flagged = {p.record for p in ours.problems if p.severity == "error" and p.record is not None}
    file_level = [p for p in ours.problems if p.severity == "error" and p.record is None]
    assert not file_level, [p.format() for p in file_level]
    assert ours.records == len(lf)
    dropped = {i for i, kept in enumerate(lf) if not kept}
    missed = sorted(dropped - flagged)
    wrong = sorted(flagged - dropped)
    assert not missed, f"{path.name}: LLaMA-Factory drops records {missed[:10]} that we call valid"
    assert not wrong, f"{path.name}: we flag records {wrong[:10]} that LLaMA-Factory keeps: " + "; ".join(
        p.format() for p in ours.problems if p.record in wrong[:3] and p.severity == "error")
    assert ours.invalid == len(dropped)
    return kind, lf


# --------------------------------------------------------------------------- the data, as LLaMA-Factory ships it

def _load(path: Path):
    text = path.read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines() if x.strip()] if path.suffix == ".jsonl" else json.loads(text)


LF_INFO = json.loads((LF_DATA / "dataset_info.json").read_text(encoding="utf-8"))
MESSAGES_ENTRY = {"formatting": "sharegpt", "columns": {"messages": "messages"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant", "system_tag": "system"}}

ORIGINALS = [  # (dataset name, stage, template)
    ("identity", "sft", "qwen"), ("alpaca_en_demo", "sft", "qwen"), ("alpaca_zh_demo", "sft", "qwen"),
    ("glaive_toolcall_en_demo", "sft", "qwen"), ("dpo_en_demo", "dpo", "qwen"), ("dpo_zh_demo", "dpo", "qwen"),
    ("kto_en_demo", "kto", "qwen"), ("c4_demo", "pt", "qwen"), ("wiki_demo", "pt", "qwen"),
]


@pytest.mark.parametrize("name,stage,template", ORIGINALS, ids=[o[0] for o in ORIGINALS])
def test_llamafactory_demo_files_agree(name, stage, template, tokenizer, tmp_path):
    entry = LF_INFO[name]
    kind, lf = assert_agree(LF_DATA / entry["file_name"], entry, stage, tokenizer, template, tmp_path)
    assert kind == "rows" and all(lf)  # LLaMA-Factory's demos are clean ...
    ours = validate_file(LF_DATA / entry["file_name"], entry=entry, stage=stage)
    assert ours.ok and ours.invalid == 0  # ... and so we say


@pytest.mark.parametrize("split", ["train.json", "dev.json"])
def test_minicpm_advertisegen_agrees(split, tokenizer, tmp_path):
    entry = {"file_name": split, **MESSAGES_ENTRY}
    kind, lf = assert_agree(MINICPM_DATA / split, entry, "sft", tokenizer, "cpm4", tmp_path)
    assert kind == "rows" and all(lf)
    auto = validate_file(MINICPM_DATA / split)  # detected layout == the registered one
    assert auto.ok and auto.entry["tags"] == MESSAGES_ENTRY["tags"]


# --------------------------------------------------------------------------- mutations

def _mutate_messages(rec: dict, col: str, rng: random.Random, tags: dict, *, allow_unknown: bool = True) -> dict:
    rec = copy.deepcopy(rec)
    msgs = rec[col]
    rt, ct = tags["role_tag"], tags["content_tag"]
    user, asst = tags["user_tag"], tags["assistant_tag"]
    choice = rng.randrange(14)
    if choice == 0 and len(msgs) >= 2:  # swap two neighbours
        i = rng.randrange(len(msgs) - 1)
        msgs[i][rt], msgs[i + 1][rt] = msgs[i + 1][rt], msgs[i][rt]
    elif choice == 1 and msgs:  # drop the last turn
        msgs.pop()
    elif choice == 2:  # an extra user turn at the end
        msgs.append({rt: user, ct: "one more question"} | {k: None for k in msgs[0] if k not in (rt, ct)})
    elif choice == 3 and msgs:  # system message in the middle
        msgs.insert(rng.randrange(1, len(msgs) + 1), {rt: "system", ct: "be brief"} | {
            k: None for k in msgs[0] if k not in (rt, ct)})
    elif choice == 4 and msgs and allow_unknown:  # an unknown role
        msgs[rng.randrange(len(msgs))][rt] = rng.choice(["bot", "User", "tool", "human ", "assistant", "gpt"])
    elif choice == 5:  # no turns at all
        rec[col] = []
    elif choice == 6 and msgs:  # only the first message
        rec[col] = msgs[:1]
    elif choice == 7 and msgs:  # empty / whitespace content (kept by LLaMA-Factory: we warn)
        plain = [m for m in msgs if m[rt] != tags.get("function_tag")]  # (function calls must be JSON: see BROKEN)
        if plain:
            rng.choice(plain)[ct] = rng.choice(["", "  ", "\n"])
    elif choice == 8 and msgs:  # a leading system message (fine where a system tag is mapped)
        msgs.insert(0, {rt: "system", ct: "You are helpful."} | {k: None for k in msgs[0] if k not in (rt, ct)})
    elif choice == 9 and msgs and tags.get("observation_tag"):  # observation at an even turn is legal
        for i, m in enumerate(msgs):
            if m[rt] == user and i > 0:
                m[rt] = tags["observation_tag"]
                break
    elif choice == 10 and len(msgs) >= 2:  # reversed roles throughout
        for m in msgs:
            m[rt] = asst if m[rt] == user else user if m[rt] == asst else m[rt]
    elif choice == 11 and msgs:  # two systems at the start
        msgs.insert(0, {rt: "system", ct: "A"} | {k: None for k in msgs[0] if k not in (rt, ct)})
        msgs.insert(0, {rt: "system", ct: "B"} | {k: None for k in msgs[0] if k not in (rt, ct)})
    elif choice == 12 and msgs:  # duplicate a user/assistant pair at the end
        msgs.extend(copy.deepcopy(msgs[-2:]) if len(msgs) >= 2 else [])
    # choice 13 (and impossible ones): unchanged
    return rec


def _write(path: Path, records: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def _sharegpt_tags(entry: dict) -> dict:
    from minicpm_recipes.data.spec import DatasetSpec

    return DatasetSpec.from_entry(entry).tags


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,stage,template,suffix", [
    ("glaive_toolcall_en_demo", "sft", "qwen", ".json"),
    ("dpo_en_demo", "dpo", "qwen", ".jsonl"),
    ("kto_en_demo", "kto", "qwen", ".json"),
])
def test_mutated_sharegpt_agrees(name, stage, template, suffix, seed, tokenizer, tmp_path):
    entry = LF_INFO[name]
    rng = random.Random(f"{name}-{seed}")
    base = _load(LF_DATA / entry["file_name"])[:120]
    col = entry.get("columns", {}).get("messages", "conversations")
    tags = _sharegpt_tags(entry)
    records = []
    for rec in base:
        rec = _mutate_messages(rec, col, rng, tags) if rng.random() < 0.7 else copy.deepcopy(rec)
        if stage == "dpo" and rng.random() < 0.15:  # a chosen answer with a user role
            rec["chosen"][tags["role_tag"]] = tags["user_tag"]  # (LLaMA-Factory logs it, keeps it: see BROKEN)
        if stage == "kto" and rng.random() < 0.1:
            rec[entry["columns"]["kto_tag"]] = None  # not a boolean: dropped
        records.append(rec)
    path = _write(tmp_path / f"mut_{name}{suffix}", records)
    kind, lf = assert_agree(path, {**entry, "file_name": path.name}, stage, tokenizer, template, tmp_path)
    assert kind == "rows", lf
    assert not all(lf) and any(lf)  # the mutations did drop some records, not all


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_minicpm_messages_agree(seed, tokenizer, tmp_path):
    rng = random.Random(seed)
    base = _load(MINICPM_DATA / "train.json") + _load(MINICPM_DATA / "dev.json")
    tags = _sharegpt_tags(MESSAGES_ENTRY)
    records = [_mutate_messages(base[i % len(base)], "messages", rng, tags) for i in range(150)]
    path = _write(tmp_path / "mut_messages.jsonl", records)
    kind, lf = assert_agree(path, {**MESSAGES_ENTRY, "file_name": path.name}, "sft", tokenizer, "cpm4", tmp_path)
    assert kind == "rows", lf
    assert not all(lf) and any(lf)


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_openai_formatting_agrees(seed, tokenizer, tmp_path):
    """formatting: openai (tool_calls, merged tool messages). Unknown roles crash its converter: left out here."""
    rng = random.Random(seed)
    entry = {"formatting": "openai", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                      "system_tag": "system", "observation_tag": "tool", "function_tag": "function_call"}}
    base = _load(MINICPM_DATA / "train.json") + _load(MINICPM_DATA / "dev.json")
    tags = _sharegpt_tags(entry)
    records = []
    for i in range(120):
        rec = _mutate_messages(base[i % len(base)], "messages", rng, tags, allow_unknown=False)
        if rng.random() < 0.2 and len(rec["messages"]) >= 3:  # a tool call + tool answers inserted after a user turn
            k = 1 if rec["messages"][0]["role"] == "system" else 0
            call = {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]}
            tool_msgs = [{"role": "tool", "content": "42"}] * rng.choice([1, 2])
            rec["messages"][k + 1:k + 1] = [call, *tool_msgs]
        records.append(rec)
    for rec in records:  # one struct type for every message (as Arrow needs)
        for m in rec["messages"]:
            m.setdefault("tool_calls", None)
    path = _write(tmp_path / "mut_openai.json", records)
    kind, lf = assert_agree(path, {**entry, "file_name": path.name}, "sft", tokenizer, "qwen", tmp_path)
    assert kind == "rows", lf
    assert not all(lf) and any(lf)


def _alpaca_mutation(rec: dict, rng: random.Random, stage: str) -> dict:
    rec = copy.deepcopy(rec)
    choice = rng.randrange(7)
    answer = "chosen" if stage == "dpo" else "output"
    if choice == 0 and stage != "kto":
        rec[answer] = None  # no answer: dropped (kto: a crash, see BROKEN)
    elif choice == 1:
        rec["instruction"], rec["input"] = "", ""  # empty prompt: kept (we warn)
    elif choice == 2:
        rec[answer] = " "  # whitespace answer: kept (we warn)
    elif choice == 3 and stage == "dpo":
        rec["rejected"] = None
    elif choice == 4:
        rec["instruction"] = None  # missing instruction, input still used
    return rec


@pytest.mark.parametrize("stage", ["sft", "dpo", "kto"])
def test_mutated_alpaca_agrees(stage, tokenizer, tmp_path):
    rng = random.Random(stage)
    base = _load(LF_DATA / "alpaca_en_demo.json")[:150]
    records = []
    for i, rec in enumerate(base):
        if stage == "dpo":
            rec = {"instruction": rec["instruction"], "input": rec["input"], "chosen": rec["output"],
                   "rejected": rec["output"][::-1]}
        elif stage == "kto":
            rec = {**rec, "label": i % 3 != 0}
        rec = _alpaca_mutation(rec, rng, stage) if rng.random() < 0.5 else rec
        if stage == "kto" and rng.random() < 0.15:
            rec["label"] = None
        records.append(rec)
    entry = {"file_name": "x.json"}
    if stage == "dpo":
        entry |= {"ranking": True, "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                               "rejected": "rejected"}}
    elif stage == "kto":
        entry |= {"columns": {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "label"}}
    path = _write(tmp_path / "x.json", records)
    kind, lf = assert_agree(path, entry, stage, tokenizer, "qwen", tmp_path)
    assert kind == "rows", lf
    assert not all(lf) and any(lf)


# ------------------------------------------------------------------- files LLaMA-Factory cannot load at all

BROKEN = {
    # alpaca file without any "input" key under the default entry: KeyError 'input'
    "no_input_column": ("alpaca", [{"instruction": "hi", "output": "hello"}] * 3, {}, "sft"),
    # a history item that is not a pair: unpacking fails in the converter
    "history_triple": ("alpaca", [{"instruction": "a", "input": "", "output": "b", "history": [["q", "a", "x"]]}],
                       {"columns": {"prompt": "instruction", "query": "input", "response": "output",
                                    "history": "history"}}, "sft"),
    # openai formatting: an unknown role is a KeyError in its converter
    "openai_unknown_role": ("messages", [{"messages": [{"role": "user", "content": "a"},
                                                       {"role": "bot", "content": "b"}]}],
                            {"formatting": "openai", "columns": {"messages": "messages"},
                             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                      "assistant_tag": "assistant", "system_tag": "system"}}, "sft"),
    # a function call that is not JSON: FunctionFormatter raises
    "function_not_json": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"},
                                                          {"from": "function_call", "value": "call f"}]}],
                          {"formatting": "sharegpt"}, "sft"),
    # an empty function call: FunctionFormatter raises too
    "function_empty": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"},
                                                       {"from": "function_call", "value": " "},
                                                       {"from": "observation", "value": "1"},
                                                       {"from": "gpt", "value": "b"}]}],
                       {"formatting": "sharegpt"}, "sft"),
    # a chosen answer marked as a function call must be a JSON call
    "chosen_function_not_json": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"}],
                                               "chosen": {"from": "function_call", "value": "b"},
                                               "rejected": {"from": "gpt", "value": "c"}}],
                                 {"formatting": "sharegpt", "ranking": True,
                                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
                                 "dpo"),
    # kto record without an answer: the tokenizer gets None
    "kto_answer_null": ("alpaca", [{"instruction": "a", "output": None, "label": False},
                                   {"instruction": "b", "output": "x", "label": True}],
                        {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}}, "kto"),
    # tools that are not JSON: ToolFormatter raises
    "tools_not_json": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
                                     "tools": "lookup(q)"}],
                       {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}, "sft"),
    # every record is broken: "Cannot find valid samples"
    "all_odd": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"}]}] * 2, {"formatting": "sharegpt"},
                "sft"),
    # kto without labels: every record dropped
    "kto_label_strings": ("messages", [{"messages": [{"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"}], "label": "true"}] * 2,
                          {**MESSAGES_ENTRY, "columns": {"messages": "messages", "kto_tag": "label"}}, "kto"),
    # sft data used for dpo: LLaMA-Factory refuses the stage
    "stage_mismatch": ("sharegpt", [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}],
                       {"formatting": "sharegpt"}, "dpo"),
    # pre-training text shorter than one packed block: "Cannot find sufficient samples"
    "pt_too_short": ("text", [{"text": "short text"}] * 3, {"columns": {"prompt": "text"}}, "pt"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_files_llamafactory_cannot_load_are_invalid(case, tokenizer, tmp_path):
    _, records, entry, stage = BROKEN[case]
    path = _write(tmp_path / f"{case}.json", records)
    kind, reason = assert_agree(path, {"file_name": path.name, **entry}, stage, tokenizer, "qwen", tmp_path)
    assert kind == "failed", reason  # the case really breaks LLaMA-Factory (else it tests nothing)


def test_kto_null_answer_with_true_label_is_flagged(tokenizer, tmp_path):
    """LLaMA-Factory keeps it, but as an *undesirable* example with an empty answer: we call it invalid."""
    records = [{"instruction": "a", "output": None, "label": True}, {"instruction": "b", "output": "x", "label": False}]
    path = _write(tmp_path / "kto.json", records)
    entry = {"file_name": path.name, "columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}}
    kind, lf = assert_agree(path, entry, "kto", tokenizer, "qwen", tmp_path)
    assert (kind, lf) == ("rows", [False, True])


def test_alpaca_history_that_is_not_a_list_is_ignored_by_both(tokenizer, tmp_path):
    records = [{"instruction": "q", "input": "", "output": "a", "history": "earlier chat"}] * 2
    path = _write(tmp_path / "h.json", records)
    entry = {"file_name": path.name,
             "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}}
    kind, lf = assert_agree(path, entry, "sft", tokenizer, "qwen", tmp_path)
    assert (kind, lf) == ("rows", [True, True])
