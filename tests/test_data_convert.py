"""`minicpm-recipes convert`: MiniCPM messages, ChatGLM3 conversations, alpaca and chat-export trees ->
LLaMA-Factory sharegpt/alpaca with a reproducible train/dev split."""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import LF_DATA, MINICPM_DATA, run_cli
from minicpm_recipes.data import convert as cv
from minicpm_recipes.errors import UserError


def load(path: Path) -> list:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def chat(*pairs: tuple[str, str], system: str | None = None, key: str = "conversations") -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    for role, content in pairs:
        msgs.append({"role": role, "content": content})
    return {key: msgs}


def _validator():
    try:
        from minicpm_recipes.data.validate import validate_file
    except ImportError:
        pytest.skip("minicpm_recipes.data.validate is not available yet")
    return validate_file


# ------------------------------------------------------------------------------------- pure core


def test_detect_source_format():
    assert cv.detect_source_format(chat(("user", "a"), ("assistant", "b"), key="messages")) == "messages"
    assert cv.detect_source_format(chat(("user", "a"), ("assistant", "b"))) == "chatglm3"
    assert cv.detect_source_format({"conversations": [{"from": "human", "value": "a"}]}) == "sharegpt"
    assert cv.detect_source_format({"instruction": "a", "input": "", "output": "b"}) == "alpaca"
    assert cv.detect_source_format({"foo": 1}) is None
    assert cv.detect_source_format([1, 2]) is None


def test_alpaca_reads_like_llamafactory():
    rec = {"instruction": "翻译", "input": "hello", "output": "你好", "system": "S",
           "history": [["q1", "a1"], ["q2", "a2"]]}
    turns = cv.to_turns(rec, "alpaca")
    assert turns.system == "S"
    assert [m["content"] for m in turns.messages] == ["q1", "a1", "q2", "a2", "翻译\nhello", "你好"]
    assert cv.to_turns({"instruction": "x", "input": "", "output": "y"}, "alpaca").messages[0]["content"] == "x"


def test_messages_alpaca_round_trip_keeps_every_turn():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 4)
        system = rng.choice(["", "系统提示", "sys\nline"])
        pairs = []
        for i in range(n):
            pairs += [("user", f"问题{i}-{rng.random()}"), ("assistant", f"回答{i}\n{rng.random()}")]
        rec = chat(*pairs, system=system or None, key="messages")
        turns = cv.to_turns(rec, "messages")
        assert cv.check_turns(turns) is None
        alpaca = cv.render_record(turns, "alpaca")
        back = cv.render_record(cv.to_turns(alpaca, "alpaca"), "sharegpt")
        assert back == rec


def test_chatglm3_tool_turns_become_function_call_and_observation():
    rec = {
        "tools": [{"name": "get_weather", "description": "天气", "parameters": {"type": "object"}}],
        "conversations": [
            {"role": "system", "content": "你是助手"},
            {"role": "user", "content": "北京天气？"},
            {"role": "tool", "name": "get_weather", "parameters": {"city": "北京"}, "observation": {"temp": 20}},
            {"role": "assistant", "content": "北京 20 度。"},
        ],
    }
    turns = cv.to_turns(rec, "chatglm3")
    assert cv.check_turns(turns) is None
    out = cv.render_record(turns, "sharegpt", with_tools=True)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "function_call", "observation", "assistant"]
    assert json.loads(out["messages"][2]["content"]) == {"name": "get_weather", "arguments": {"city": "北京"}}
    assert json.loads(out["messages"][3]["content"]) == {"temp": 20}
    assert json.loads(out["tools"]) == rec["tools"]
    with pytest.raises(cv.RecordError, match="alpaca"):
        cv.render_record(turns, "alpaca")


def test_chatglm3_tools_in_the_system_message_are_kept(tmp_path):
    """ChatGLM3's own format puts the tool list in the system message: {"role": "system", "tools": [...]}."""
    tools = [{"name": "track", "description": "实时追踪", "parameters": {"type": "object",
              "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]}}]
    rec = {"conversations": [
        {"role": "system", "content": "Answer the following questions as best as you can.", "tools": tools},
        {"role": "user", "content": "帮我查一下 10111 的价格"},
        {"role": "assistant", "metadata": "track", "content": " ```python\ntool_call(symbol='10111')\n```"},
        {"role": "observation", "content": "{\"price\": 12412}"},
        {"role": "assistant", "content": "价格是 12412。"},
    ]}
    turns = cv.to_turns(rec, "chatglm3")
    assert json.loads(turns.tools) == tools
    assert turns.system == "Answer the following questions as best as you can."
    src = tmp_path / "glm.jsonl"
    src.write_text(json.dumps(rec, ensure_ascii=False) + "\n" + json.dumps(
        {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]},
        ensure_ascii=False) + "\n", encoding="utf-8")
    report = cv.convert([src], tmp_path / "out", "glm", dev_ratio=0.0)
    out = json.loads(report.train.file.read_text(encoding="utf-8"))
    assert report.entries["glm"]["columns"] == {"messages": "messages", "tools": "tools"}
    assert json.loads(out[0]["tools"]) == tools and out[1]["tools"] == ""
    assert [m["role"] for m in out[0]["messages"]][1:] == ["user", "function_call", "observation", "assistant"]


def test_native_chatglm3_call_with_metadata():
    rec = {"conversations": [
        {"role": "user", "content": "查天气"},
        {"role": "assistant", "metadata": "get_weather", "content": "```python\ntool_call(city='上海', days=2)\n```"},
        {"role": "observation", "content": "晴"},
        {"role": "assistant", "content": "上海晴。"},
    ]}
    msgs = cv.to_turns(rec, "chatglm3").messages
    assert [m["role"] for m in msgs] == ["user", "function_call", "observation", "assistant"]
    assert json.loads(msgs[1]["content"]) == {"name": "get_weather", "arguments": {"city": "上海", "days": 2}}


@pytest.mark.parametrize("messages, problem", [
    ([("assistant", "a"), ("user", "b")], "expected user"),
    ([("user", "a"), ("user", "b"), ("assistant", "c")], "expected assistant"),
    ([("user", "a"), ("assistant", "b"), ("user", "c")], "ends with a user"),
    ([("user", "a"), ("assistant", " ")], "empty"),
    ([], "no user"),
])
def test_check_turns_finds_what_llamafactory_drops(messages, problem):
    turns = cv.to_turns(chat(*messages), "chatglm3")
    assert problem in cv.check_turns(turns)


def test_fix_turns_joins_and_trims():
    turns = cv.to_turns(chat(("assistant", "在吗"), ("user", "你好"), ("user", "在不在"), ("assistant", "在"),
                             ("assistant", "怎么了"), ("user", "没事")), "chatglm3")
    fixed, notes = cv.fix_turns(turns)
    assert fixed.messages == [{"role": "user", "content": "你好\n在不在"},
                              {"role": "assistant", "content": "在\n怎么了"}]
    assert cv.check_turns(fixed) is None
    assert len(notes) == 4
    nothing, _ = cv.fix_turns(cv.to_turns(chat(("user", "只有一句")), "chatglm3"))
    assert nothing is None


@pytest.mark.parametrize("n, ratio", [(10, 0.1), (1000, 0.1), (7, 0.5), (2, 0.1), (1, 0.1), (50, 0.0)])
def test_split_indices(n, ratio):
    a = cv.split_indices(n, ratio, 7)
    assert a == cv.split_indices(n, ratio, 7)
    assert all(0 <= i < n for i in a)
    if ratio == 0 or n < 2:
        assert a == set()
    else:
        assert 1 <= len(a) <= n - 1
        assert abs(len(a) - n * ratio) <= 1
    if n >= 100 and ratio:
        assert a != cv.split_indices(n, ratio, 8)
    with pytest.raises(UserError):
        cv.split_indices(n, 1.0, 7)


# ------------------------------------------------------------------------------------------ files


def test_minicpm_train_dev_folder_keeps_every_record(tmp_path):
    report = cv.convert([MINICPM_DATA], tmp_path / "out", "adgen")
    assert report.source_format == "messages" and not report.split_from_train
    for split, name in ((report.train, "train.json"), (report.dev, "dev.json")):
        source = load(MINICPM_DATA / name)
        assert load(split.file) == [{"messages": r["messages"]} for r in source]
        assert split.records == len(source)
    text = report.train.file.read_text(encoding="utf-8")
    assert "\\u" not in text and "广告" in text
    assert report.entries["adgen"]["file_name"] == "adgen_train.json"
    assert report.entries["adgen_dev"]["file_name"] == "adgen_dev.json"


def test_single_file_split_is_reproducible_and_lossless(tmp_path):
    src = LF_DATA / "alpaca_zh_demo.json"
    source = load(src)
    a = cv.convert([src], tmp_path / "a", "az", dev_ratio=0.1, seed=3)
    b = cv.convert([src], tmp_path / "b", "az", dev_ratio=0.1, seed=3)
    c = cv.convert([src], tmp_path / "c", "az", dev_ratio=0.1, seed=4)
    assert a.split_from_train
    assert a.train.file.read_bytes() == b.train.file.read_bytes()
    assert a.dev.file.read_bytes() == b.dev.file.read_bytes()
    assert a.dev.file.read_bytes() != c.dev.file.read_bytes()
    train, dev = load(a.train.file), load(a.dev.file)
    assert len(dev) == round(len(source) * 0.1) and len(train) + len(dev) == len(source)
    expected = [cv.render_record(cv.to_turns(r, "alpaca"), "sharegpt") for r in source]
    key = lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True)  # noqa: E731
    assert sorted(map(key, train + dev)) == sorted(map(key, expected))
    # records keep their source order within each split
    it = iter(map(key, expected))
    assert all(k in it for k in map(key, train))  # train is a subsequence of the source


def test_chatglm3_jsonl_named_json_with_tools(tmp_path):
    records = [chat(("user", f"问{i}"), ("assistant", f"答{i}"), system="你是 ChatGLM3") for i in range(19)]
    records.append({"tools": [{"name": "calc", "description": "算", "parameters": {}}], "conversations": [
        {"role": "user", "content": "1+1"},
        {"role": "tool", "name": "calc", "parameters": {"expr": "1+1"}, "observation": "2"},
        {"role": "assistant", "content": "等于 2"}]})
    src = write_jsonl(tmp_path / "train.json", records)  # ChatGLM3's files: JSON lines named .json
    report = cv.convert([src], tmp_path / "out", "glm", dev_ratio=0.2, seed=1)
    assert report.source_format == "chatglm3"
    out = load(report.train.file) + load(report.dev.file)
    assert len(out) == 20 and report.dev.records == 4
    assert all("tools" in r for r in out)  # one column layout for every record
    assert report.entries["glm"]["columns"] == {"messages": "messages", "tools": "tools"}
    tool_rec = next(r for r in out if r["tools"])
    assert [m["role"] for m in tool_rec["messages"]] == ["user", "function_call", "observation", "assistant"]


def make_chat_export(root: Path) -> dict[str, int]:
    """A WeChat-history-style export: per-contact *_train.json / *_dev.json, some JSON lines, some arrays."""
    sys_prompt = "请你扮演一名人类，不要说自己是人工智能"
    write_json(root / "张三" / "张三_train.json", [
        chat(("user", "在吗"), ("assistant", "在"), system=sys_prompt),
        chat(("user", "吃了吗"), ("user", "一起吃饭？"), ("assistant", "好"), ("assistant", "几点"), system=sys_prompt),
        chat(("assistant", "早"), ("user", "早"), ("assistant", "今天干嘛"), system=sys_prompt),
        chat(("user", "晚安"), system=sys_prompt),  # nothing usable
    ])
    write_json(root / "张三" / "张三_dev.json", [chat(("user", "周末"), ("assistant", "出去玩"), system=sys_prompt)])
    write_jsonl(root / "lisi" / "lisi_train.json", [
        chat(("user", f"消息{i}"), ("assistant", f"回复{i}"), ("user", "未回复")) for i in range(3)])
    write_jsonl(root / "lisi" / "lisi_dev.json", [chat(("user", "hi"), ("assistant", "hello"))])
    (root / "readme.txt").write_text("not data")
    return {"train": 3 + 3, "dev": 2, "dropped": 1}


def test_chat_export_tree_is_merged_and_repaired(tmp_path):
    expected = make_chat_export(tmp_path / "export")
    report = cv.convert([tmp_path / "export"], tmp_path / "out", "chats")
    assert report.source_format == "chat-export"
    train, dev = load(report.train.file), load(report.dev.file)
    assert len(train) == expected["train"] and len(dev) == expected["dev"]
    assert report.dropped == expected["dropped"]
    for rec in train + dev:
        turns = cv.to_turns(rec, "messages")
        assert cv.check_turns(turns) is None
    joined = train[4]["messages"]  # lisi (3 records) sorts before 张三
    assert joined[1] == {"role": "user", "content": "吃了吗\n一起吃饭？"}
    assert joined[2] == {"role": "assistant", "content": "好\n几点"}
    assert train[5]["messages"][1:] == [{"role": "user", "content": "早"}, {"role": "assistant", "content": "今天干嘛"}]
    # lisi sorts before 张三; files are merged in path order
    assert train[0]["messages"][0]["content"] == "消息0"


def test_to_alpaca(tmp_path):
    report = cv.convert([MINICPM_DATA], tmp_path, "adgen", target="alpaca")
    rec = load(report.train.file)[0]
    src = load(MINICPM_DATA / "train.json")[0]["messages"]
    assert rec == {"instruction": src[1]["content"], "input": "", "output": src[2]["content"],
                   "system": src[0]["content"], "history": []}
    assert report.entries["adgen"]["columns"]["prompt"] == "instruction"


def test_outputs_validate(tmp_path):
    validate_file = _validator()
    make_chat_export(tmp_path / "export")
    for inputs, target in (([MINICPM_DATA], "sharegpt"), ([MINICPM_DATA], "alpaca"),
                           ([tmp_path / "export"], "sharegpt"), ([LF_DATA / "alpaca_zh_demo.json"], "sharegpt")):
        out = tmp_path / f"out-{target}-{inputs[0].name}"
        report = cv.convert(inputs, out, "d", target=target)
        for split in (report.train, report.dev):
            result = validate_file(split.file, entry=split.entry, dataset_dir=out)
            assert result.ok, [p.format() for p in result.problems]
            assert result.records == split.records


# --------------------------------------------------------------------------------------------- CLI


def test_cli_prints_entries_and_registers(tmp_path):
    proc = run_cli("convert", str(MINICPM_DATA), "-o", str(tmp_path / "data"), "--name", "adgen", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    start = proc.stdout.index("{")
    entries, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    assert set(entries) == {"adgen", "adgen_dev"}
    assert not (tmp_path / "data" / "dataset_info.json").exists()
    proc = run_cli("convert", str(MINICPM_DATA), "-o", str(tmp_path / "data"), "--name", "adgen", "--register",
                   "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == entries
    # the printed render command works as printed: both datasets registered, no val_size beside eval_dataset
    command = next(line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("minicpm-recipes"))
    rendered = run_cli(*shlex.split(command)[1:], "-o", "-", cwd=tmp_path)
    assert rendered.returncode == 0 and "warning" not in rendered.stderr, rendered.stderr
    doc = yaml.safe_load(rendered.stdout)
    assert (doc["dataset"], doc["eval_dataset"]) == ("adgen", "adgen_dev") and "val_size" not in doc


@pytest.mark.parametrize("records, args, pattern", [
    ([chat(("user", "a"), ("assistant", "b")), chat(("user", "a"), ("user", "b"))], [],
     r"record 1: .*expected assistant.*--fix-turns"),
    ([chat(("user", "a"), ("robot", "b"))], [], r"record 0: conversations\[1\].role: unknown role 'robot'"),
    ([{"instruction": "a", "chosen": "x", "rejected": "y"}], [], r"preference"),
    ([chat(("user", "a"), ("assistant", "b"))], ["--dev-ratio", "1.5"], r"--dev-ratio"),
    ([{"foo": 1}], [], r"cannot tell its format"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, records, args, pattern):
    src = write_jsonl(tmp_path / "in.jsonl", records)
    proc = run_cli("convert", str(src), "-o", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    import re

    assert re.search(pattern, proc.stderr), proc.stderr
    assert not list((tmp_path / "out").glob("*.json")) if (tmp_path / "out").exists() else True
    assert not list((tmp_path / "out").glob(".*.tmp")) if (tmp_path / "out").exists() else True


def test_cli_bad_json_line_names_the_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(chat(("user", "a"), ("assistant", "b"))) + "\n{oops\n", encoding="utf-8")
    proc = run_cli("convert", str(src), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "in.jsonl:2" in proc.stderr


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", str(MINICPM_DATA), "-o", str(out), "--name", "x", cwd=tmp_path).returncode == 0
    before = (out / "x_train.json").read_bytes()
    (out / "x_train.json").write_text("mine")
    proc = run_cli("convert", str(MINICPM_DATA), "-o", str(out), "--name", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "x_train.json").read_text() == "mine"
    assert run_cli("convert", str(MINICPM_DATA), "-o", str(out), "--name", "x", "--force",
                   cwd=tmp_path).returncode == 0
    assert (out / "x_train.json").read_bytes() == before


def test_cli_rerun_with_the_same_result_changes_nothing(tmp_path):
    out = tmp_path / "out"
    args = ("convert", str(MINICPM_DATA), "-o", str(out), "--name", "x")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.json")}
    dev_before = (out / "x_dev.json").read_bytes()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"unchanged {out / 'x_train.json'}" in again.stdout and f"unchanged {out / 'x_dev.json'}" in again.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.json")} == stats
    other = run_cli(*args, "--to", "alpaca", cwd=tmp_path)  # both files would change
    assert other.returncode == 2 and "already exists with other content; pass --force" in other.stderr
    assert (out / "x_dev.json").read_bytes() == dev_before and not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------ real LLaMA-Factory


@pytest.mark.slow
def test_llamafactory_trains_on_converted_chat_export_chatglm3_and_alpaca(tiny_model, tmp_path):
    import os
    import re
    import subprocess
    import sys

    make_chat_export(tmp_path / "export")
    glm = [chat(("user", f"问{i}"), ("assistant", f"答{i}"), system="系统") for i in range(8)]
    glm.append({"tools": [{"name": "calc", "description": "计算器",
                           "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}],
                "conversations": [{"role": "user", "content": "1+1"},
                                  {"role": "tool", "name": "calc", "parameters": {"expr": "1+1"}, "observation": "2"},
                                  {"role": "assistant", "content": "2"}]})
    write_jsonl(tmp_path / "glm.json", glm)
    data = tmp_path / "data"
    names = ("chats", "glm", "adgen")
    for args in ((str(tmp_path / "export"), "--name", "chats"), (str(tmp_path / "glm.json"), "--name", "glm"),
                 (str(MINICPM_DATA), "--name", "adgen", "--to", "alpaca")):
        proc = run_cli("convert", *args, "-o", str(data), "--register", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    n_train = sum(len(load(data / f"{n}_train.json")) for n in names)
    n_dev = sum(len(load(data / f"{n}_dev.json")) for n in names)
    out = tmp_path / "cfg"
    proc = run_cli("render", "sft", "--model", str(tiny_model), "--template", "cpm4", "--dataset", "chats,glm,adgen",
                   "--dataset-dir", str(data), "--set", "eval_dataset=chats_dev,glm_dev,adgen_dev", "--set", "val_size=null",
                   "--set", "bf16=false", "--set", "use_cpu=true", "--set", "max_steps=1",
                   "--set", "preprocessing_num_workers=null", "--set", "dataloader_num_workers=0",
                   "--set", f"output_dir={tmp_path / 'run'}", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (train_yaml,) = out.glob("*.yaml")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([str(Path(sys.executable).with_name("llamafactory-cli")), "train", str(train_yaml)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Skipping this abnormal example" not in log and "Dropped invalid example" not in log
    counts = [int(n) for n in re.findall(r"Num examples = (\d+)", log)]
    assert counts[0] == n_train and counts[1] == n_dev, counts


def test_chatglm3_thought_before_tool_call_needs_fix_turns():
    rec = {"conversations": [
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "我来查一下天气。"},
        {"role": "tool", "name": "get_weather", "parameters": {"city": "北京"}, "observation": "晴"},
        {"role": "assistant", "content": "北京晴。"},
    ]}
    turns = cv.to_turns(rec, "chatglm3")
    assert "before a tool call" in cv.check_turns(turns)
    fixed, notes = cv.fix_turns(turns)
    assert [m["role"] for m in fixed.messages] == ["user", "function_call", "observation", "assistant"]
    assert notes == ["dropped assistant text right before a tool call"]
    assert cv.check_turns(fixed) is None


def test_explicit_dev_file_and_no_split(tmp_path):
    train_src, dev_src = MINICPM_DATA / "train.json", MINICPM_DATA / "dev.json"
    report = cv.convert([train_src], tmp_path / "a", "x", dev=dev_src, dev_ratio=0.5)
    assert not report.split_from_train
    assert report.train.records == len(load(train_src)) and report.dev.records == len(load(dev_src))
    report = cv.convert([train_src], tmp_path / "b", "x", dev_ratio=0)
    assert report.dev is None and report.train.records == len(load(train_src))
    assert not (tmp_path / "b" / "x_dev.json").exists()
    proc = run_cli("convert", str(train_src), "-o", str(tmp_path / "c"), "--dev-ratio", "0", cwd=tmp_path)
    assert proc.returncode == 0 and "no validation set" in proc.stdout


def test_output_may_not_overwrite_an_input(tmp_path):
    src = write_jsonl(tmp_path / "x_train.json", [chat(("user", "a"), ("assistant", "b"))] * 3)
    with pytest.raises(UserError, match="also an input"):
        cv.convert([src], tmp_path, "x", overwrite=True)
    assert src.read_text().count("\n") == 3  # untouched


def test_chatglm3_loss_flags_are_reported(tmp_path):
    rec = chat(("user", "a"), ("assistant", "b"))
    rec["conversations"][1]["loss"] = False
    src = write_jsonl(tmp_path / "glm.jsonl", [rec, chat(("user", "c"), ("assistant", "d"))])
    report = cv.convert([src], tmp_path / "out", "g", dev_ratio=0)
    assert report.fixes == {cv.LOSS_NOTE: 1}
    proc = run_cli("convert", str(src), "-o", str(tmp_path / "out2"), "--dev-ratio", "0", cwd=tmp_path)
    assert proc.returncode == 0 and "`loss` flags" in proc.stdout


def test_cli_output_folder_problems_are_one_line(tmp_path):
    (tmp_path / "ff").write_text("a file")
    for out, message in (("ff", "-o ff: is a file; pass a folder"),
                         ("ff/sub", "-o ff/sub: cannot create the folder")):
        proc = run_cli("convert", str(MINICPM_DATA), "-o", out, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
