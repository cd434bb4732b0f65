"""Dataset schemas, the streaming loader, the LLaMA-Factory rules, reports and the `validate` command."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import fastjsonschema
import jsonschema
import pytest

from conftest import LF_DATA, MINICPM_DATA, REPO, run_cli
from minicpm_recipes.data import schemas
from minicpm_recipes.data.loader import LAZY, BadRecord, RecordStream
from minicpm_recipes.data.schemas import check_dataset_info_entry, fill_schema, load_schema
from minicpm_recipes.data.spec import COLUMN_NAMES, MESSAGES_TAGS, TAG_NAMES, DatasetSpec
from minicpm_recipes.data.validate import validate_dataset, validate_file
from minicpm_recipes.errors import UserError

LF_PARSER = REPO / ".venv/lib/python3.11/site-packages/llamafactory/data/parser.py"
MESSAGES_ENTRY = {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": dict(MESSAGES_TAGS)}
LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): record (?P<rec>\d+): (?P<path>\$\S*): (?P<sev>error|warning): ")


def write(path: Path, records, *, jsonl: bool | None = None) -> Path:
    jsonl = path.suffix == ".jsonl" if jsonl is None else jsonl
    if jsonl:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def chat(*roles: str, content: str = "text") -> dict:
    return {"messages": [{"role": r, "content": f"{content} {i}"} for i, r in enumerate(roles)]}


def errors(result, rule: str | None = None):
    return [p for p in result.problems if p.severity == "error" and (rule is None or p.rule == rule)]


# ----------------------------------------------------------------------------------------------- schemas

@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_every_schema_is_draft07_and_compiles_with_fastjsonschema(name):
    schema = load_schema(name)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    if name.startswith("dataset-info"):
        return
    filled = fill_schema(schema, DatasetSpec.from_entry({**MESSAGES_ENTRY, "ranking": "ranking" in name}).names)
    assert not re.search(r'"\$\{\w+\}"', json.dumps(filled))  # no placeholder left as a name
    fastjsonschema.compile(filled)


def test_messages_schema_is_the_sharegpt_template_filled_with_messages_tags():
    filled = fill_schema(load_schema("sharegpt-sft"), DatasetSpec.from_entry(MESSAGES_ENTRY).names)
    shipped = load_schema("messages-sft")
    for key in ("$id", "title", "description"):
        filled.pop(key), shipped.pop(key)
    assert filled == shipped


def test_fill_schema_uses_the_entry_names_and_drops_unmapped_columns():
    spec = DatasetSpec.from_entry({"formatting": "sharegpt", "columns": {"messages": "chat", "system": "sys"},
                                   "tags": {"role_tag": "speaker", "content_tag": "text"}})
    schema = fill_schema(load_schema("sharegpt-sft"), spec.names)
    assert set(schema["properties"]) == {"chat", "sys"}
    assert schema["properties"]["chat"]["items"]["required"] == ["speaker", "text"]
    validate = fastjsonschema.compile(schema)
    validate({"chat": [{"speaker": "human", "text": "hi"}]})
    with pytest.raises(fastjsonschema.JsonSchemaException):
        validate({"chat": [{"role": "user", "content": "hi"}]})


def _lf_keys():
    """The keys LLaMA-Factory's parser reads, taken from its source."""
    src = LF_PARSER.read_text(encoding="utf-8")
    top = set(re.findall(r'self\.set_attr\("(\w+)", attr', src))
    top |= set(re.findall(r'"(\w+_url|cloud_file_name|file_name)" in dataset_info\[name\]', src))
    top |= {"file_name", "columns", "tags"}
    cols = set(re.findall(r'"(\w+)"', "".join(re.findall(r"column_names \+?= \[([^\]]*)\]", src))))
    tags = set(re.findall(r'"(\w+)"', "".join(re.findall(r"tag_names \+?= \[([^\]]*)\]", src))))
    return top, cols, tags


def test_entry_schema_accepts_exactly_the_keys_llamafactory_reads():
    top, cols, tags = _lf_keys()
    schema = load_schema("dataset-info-entry")
    assert set(schema["properties"]) == top
    assert set(schema["properties"]["columns"]["properties"]) == cols == set(COLUMN_NAMES)
    assert set(schema["properties"]["tags"]["properties"]) == tags == set(TAG_NAMES)
    assert schema["additionalProperties"] is False


def test_llamafactory_dataset_info_passes_and_typos_are_caught():
    info = json.loads((LF_DATA / "dataset_info.json").read_text(encoding="utf-8"))
    assert len(info) > 100
    assert [p for name, entry in info.items() for p in check_dataset_info_entry(name, entry)] == []
    problems = check_dataset_info_entry("mine", {"file_name": "a.json", "colums": {"messages": "m"},
                                                 "tags": {"role": "r"}, "ranking": "true"})
    by_path = {p.path: p for p in problems}
    assert "did you mean 'columns'" in by_path["$.mine.colums"].message
    assert "did you mean 'role_tag'" in by_path["$.mine.tags.role"].message
    assert by_path["$.mine.ranking"].rule == "entry:type"
    assert check_dataset_info_entry("x", {"formatting": "sharegpt"})[0].rule == "entry:anyOf"


# ------------------------------------------------------------------------------------------------ loader

def _items(path):
    import orjson

    out = []
    for line, rec, raw, _ in RecordStream(path):
        if rec is LAZY:
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                rec = BadRecord(line, "bad")
        out.append((line, rec))
    return out


def test_json_array_streams_records_with_their_lines(tmp_path):
    records = [chat("user", "assistant"), {"other": 1, "messages": []}, chat("user", "assistant"), [1, 2], "x", 3]
    path = write(tmp_path / "a.json", records)
    items = _items(path)
    assert [rec for _, rec in items] == records
    text = path.read_text()
    starts = [1 + text.count("\n", 0, m.start()) for m in re.finditer(r"^  [^\s\]}]", text, re.M)]
    assert [line for line, _ in items] == starts


def test_json_array_split_is_exact_when_record_openers_occur_inside_strings(tmp_path):
    tricky = '}, {"messages": [{"role": "user"'  # the opener literal inside a string value
    records = [{"messages": [{"role": "user", "content": tricky}, {"role": "assistant", "content": "a\\\"}"}]}] * 3
    for compact in (True, False):
        path = tmp_path / f"t{compact}.json"
        path.write_text(json.dumps(records, indent=None if compact else 1), encoding="utf-8")
        assert [rec for _, rec in _items(path)] == records


def test_json_array_with_a_broken_record_reports_its_line_and_continues(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('[\n{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},\n'
                    '{"messages": [{"role": "user", "content": "a"} {"role": "assistant"}]},\n'
                    '{"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}\n]\n')
    result = validate_file(path)
    assert result.records == 3 and result.invalid == 1
    (p,) = errors(result)
    assert (p.rule, p.line, p.record) == ("json-syntax", 3, 1)


def test_jsonl_blank_lines_bom_and_bad_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    good = json.dumps(chat("user", "assistant"))
    path.write_bytes(("\ufeff" + good + "\n\n" + good.replace("text 0", "text 9") + "\n{bad\n").encode())
    result = validate_file(path, format="messages")
    assert result.records == 3
    (p,) = errors(result)
    assert (p.rule, p.line, p.record) == ("json-syntax", 4, 2)


def test_other_file_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "q", "input": "", "output": "a"}, {"instruction": "q2", "input": "i", "output": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    r = validate_file(tmp_path / "d.parquet")
    assert (r.records, r.invalid, errors(r)[0].path, errors(r)[0].record) == (2, 1, "$.output", 1)
    (tmp_path / "d.csv").write_text("instruction,input,output\nq,,a\nq2,i,\n", encoding="utf-8")
    r = validate_file(tmp_path / "d.csv")
    assert (r.records, r.invalid, errors(r)[0].line) == (2, 1, 3)
    (tmp_path / "d.txt").write_text("one line of text\n\nanother\n", encoding="utf-8")
    r = validate_file(tmp_path / "d.txt", cutoff_len=8)
    assert (r.records, r.stage, r.ok) == (3, "pt", True)
    assert [p.line for p in r.problems if p.rule == "empty-content"] == [2]


# ------------------------------------------------------------------------------------------------- rules

def _one(tmp_path, records, **kw):
    return validate_file(write(tmp_path / "d.json", records), max_errors=None, **kw)


def test_role_alternation_parity_and_system_position(tmp_path):
    records = [
        chat("system", "user", "assistant", "user", "assistant"),  # fine
        chat("user", "user", "assistant", "assistant"),  # alternation at [1]
        chat("system", "user", "assistant", "user"),  # odd count
        chat("user", "assistant", "system", "assistant"),  # system in the middle
        {"messages": []},
        chat("system"),
        chat("user", "tool"),  # unmapped role
    ]
    r = _one(tmp_path, records, format="messages")
    got = {(p.record, p.rule, p.path) for p in errors(r)}
    assert got == {(1, "role-alternation", "$.messages[1].role"), (2, "message-count", "$.messages"),
                   (3, "role-alternation", "$.messages[2].role"), (4, "schema:minItems", "$.messages"),
                   (5, "empty-messages", "$.messages"), (6, "role-alternation", "$.messages[1].role")}
    assert r.records == 7 and r.invalid == 6
    alt = next(p for p in errors(r) if p.record == 1)
    assert "'assistant'" in alt.expected and alt.hint
    assert "only allowed as the first message" in next(p for p in errors(r) if p.record == 3).hint


def test_observation_at_even_and_function_at_odd_positions_are_legal(tmp_path):
    call = json.dumps({"name": "f", "arguments": {}})
    rec = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": call},
                             {"from": "observation", "value": "1"}, {"from": "gpt", "value": "a"}]}
    assert _one(tmp_path, [rec]).ok
    rec["conversations"][1]["value"] = "not json"
    assert [p.rule for p in errors(_one(tmp_path, [rec]))] == ["function-json"]


def test_ranking_and_kto_rules(tmp_path):
    pair = {"chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    conv = {"conversations": [{"from": "human", "value": "q"}]}
    r = _one(tmp_path, [{**conv, **pair}, {**conv, **pair, "chosen": {"from": "human", "value": "x"}},
                        {**conv, "chosen": "good", "rejected": "bad"},
                        {"conversations": conv["conversations"] * 2, **pair}])
    assert r.stage == "dpo"
    assert {(p.record, p.rule) for p in errors(r)} == {(1, "chosen-rejected"), (2, "schema:type"),
                                                       (3, "role-alternation"), (3, "message-count")}
    kto = [{**chat("user", "assistant"), "label": True}, {**chat("user", "assistant"), "label": "false"},
           {**chat("user", "assistant"), "label": False}]
    r = _one(tmp_path, kto)
    assert r.stage == "kto"
    assert [(p.record, p.rule, p.path) for p in errors(r)] == [(1, "schema:type", "$.label")]


def test_alpaca_rules(tmp_path):
    records = [{"instruction": "q", "input": "", "output": "a"},
               {"instruction": "", "input": " ", "output": "a"},  # empty prompt: LLaMA-Factory keeps it
               {"instruction": "q", "input": "", "output": 5},
               {"instruction": "q", "input": "", "output": "a", "history": [["x"]]}]
    r = _one(tmp_path, records)
    assert {(p.record, p.rule) for p in errors(r)} == {(2, "schema:type"), (3, "schema:minItems")}
    assert [(p.record, p.rule) for p in r.problems if p.severity == "warning"] == [(1, "empty-content")]


def test_column_mapped_but_absent_everywhere_is_an_error(tmp_path):
    r = _one(tmp_path, [{"instruction": "q", "output": "a"}], format="alpaca")
    assert r.ok  # the detected entry maps only what the data has
    r = validate_file(write(tmp_path / "x.json", [{"instruction": "q", "output": "a"}]), entry={"file_name": "x.json"})
    (p,) = errors(r)
    assert (p.rule, p.record, p.path) == ("column-missing", None, "$.input")
    assert "KeyError" in p.hint


def test_duplicates_empty_content_and_cutoff_warnings(tmp_path):
    long = "word " * 400
    records = [chat("user", "assistant"), chat("user", "assistant"), chat("user", "assistant", content=long),
               {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}]
    r = _one(tmp_path, records, cutoff_len=256)
    assert r.ok and r.invalid == 0
    warnings = {(p.record, p.rule) for p in r.problems}
    assert warnings == {(1, "duplicate"), (2, "too-long"), (3, "empty-content")}
    assert "record 0" in next(p for p in r.problems if p.rule == "duplicate").message


def test_pretrain_too_few_tokens(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a short text\n" * 5, encoding="utf-8")
    (p,) = errors(validate_file(path))
    assert p.rule == "too-few-samples" and p.record is None
    assert validate_file(path, cutoff_len=16).ok


def test_entry_and_stage_mismatches(tmp_path):
    write(tmp_path / "d.json", [chat("user", "assistant")])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "mine": {"file_name": "d.json", **MESSAGES_ENTRY},
        "typo": {"file_name": "d.json", "formatting": "sharegpt", "colums": {"messages": "messages"}},
        "gone": {"file_name": "missing.json"},
        "hub": {"hf_hub_url": "org/data"},
    }))
    assert validate_dataset("mine", tmp_path).ok
    r = validate_dataset("mine", tmp_path, stage="dpo")
    assert {p.rule for p in errors(r)} == {"stage"}
    r = validate_dataset("typo", tmp_path)  # the typo loses the mapping: conversations/from/value defaults
    assert {p.rule for p in errors(r)} >= {"entry:additionalProperties", "schema:required"}
    assert errors(validate_dataset("gone", tmp_path))[0].rule == "file-missing"
    with pytest.raises(UserError, match="hf_hub_url"):
        validate_dataset("hub", tmp_path)
    with pytest.raises(UserError, match="did you mean 'mine'"):
        validate_dataset("mien", tmp_path)


def test_folder_dataset_with_mixed_file_types(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write(folder / "a.json", [chat("user", "assistant")])
    write(folder / "b.jsonl", [chat("user", "assistant", content="other")])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "parts", **MESSAGES_ENTRY}}))
    r = validate_dataset("d", tmp_path)
    assert r.ok and r.records == 2  # .json and .jsonl are both "json" to LLaMA-Factory
    (folder / "c.csv").write_text("a\n1\n")
    assert [p.rule for p in errors(validate_dataset("d", tmp_path))] == ["file-type"]


# --------------------------------------------------------------------------------- shape cache is exact

def _mutants(rng: random.Random, n: int) -> list:
    base = json.loads((MINICPM_DATA / "train.json").read_text(encoding="utf-8"))
    out = []
    for i in range(n):
        rec = json.loads(json.dumps(base[i % len(base)]))
        msgs = rec["messages"]
        c = rng.randrange(12)
        if c == 0:
            msgs[1]["role"] = "assistant"
        elif c == 1:
            msgs.pop()
        elif c == 2:
            msgs[2]["content"] = rng.choice(["", " ", "\\n", "\u3000\u3000" * 10, " " * 40])
        elif c == 3:
            msgs[2]["content"] = 7
        elif c == 4:
            msgs[1]["role"] = "u" * 30
        elif c == 5:
            rec["messages"] = msgs[:1]
        elif c == 6:
            msgs[2]["content"] = "quote \" and \\ backslash " * 3
        elif c == 7:
            rec["extra_key_that_is_rather_long"] = "x" * 40
        elif c == 8:
            msgs[1]["content"] = "x" * rng.choice([3, 15, 16, 17, 60])
        out.append(rec)
    return out


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_shape_cache_gives_the_same_result_as_checking_every_record(suffix, tmp_path):
    records = _mutants(random.Random(suffix), 400)
    path = write(tmp_path / f"m{suffix}", records)
    fast = validate_file(path, max_errors=None, fast=False)  # the shape cache of the precise path (fastpath.py off)
    slow = validate_file(path, max_errors=None, shapes=False, fast=False)
    assert fast.to_json() == slow.to_json()
    assert 0 < fast.invalid < fast.records
    assert fast.shape_hits > 100 and slow.shape_hits == 0  # the cache did settle most records
    path.write_bytes(path.read_bytes().replace(b"\\u3000", b"\\x"))  # an invalid escape
    assert (validate_file(path, max_errors=None, fast=False).to_json()
            == validate_file(path, max_errors=None, shapes=False, fast=False).to_json())


# ------------------------------------------------------------------------------------------------ report / CLI

def test_text_report_lines_and_summary(tmp_path):
    path = write(tmp_path / "d.json", [chat("user", "assistant"), chat("user", "user")])
    proc = run_cli("validate", str(path))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    m = LINE_RE.match(lines[0])
    assert m and m["file"] == str(path) and m["rec"] == "1" and m["path"] == "$.messages[1].role"
    text = path.read_text()
    assert int(m["line"]) == 1 + text.count("\n", 0, text.index("\n  {", 5) + 1)
    assert "expected 'assistant'" in lines[0] and "fix:" in lines[0] and lines[0].endswith("[role-alternation]")
    assert lines[-1].startswith("invalid: 2 records checked in 1 file") and "1 invalid" in lines[-1]
    assert "role-alternation 1" in lines[-1]


def test_json_report_exit_codes_and_max_errors(tmp_path):
    path = write(tmp_path / "d.jsonl", [chat("user", "user")] * 5 + [chat("user", "assistant")])
    proc = run_cli("validate", str(path), "--json", "--max-errors", "2", "--no-duplicates")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert (report["records"], report["invalid"], report["errors"]) == (6, 5, 5)
    assert len(report["problems"]) == 2 and report["truncated"] is True
    assert report["by_rule"] == {"role-alternation": 5}
    assert {"file", "line", "record", "path", "rule", "message", "expected", "hint", "severity"} <= set(
        report["problems"][0])
    ok = write(tmp_path / "ok.json", [chat("user", "assistant")])
    assert run_cli("validate", str(ok)).returncode == 0
    warn = write(tmp_path / "w.json", [chat("user", "assistant")] * 2)
    assert run_cli("validate", str(warn)).returncode == 0
    assert run_cli("validate", str(warn), "--strict").returncode == 1


def test_strict_verdict_says_invalid_and_merged_json_lists_every_entry(tmp_path):
    warn = write(tmp_path / "w.json", [chat("user", "assistant")] * 2)
    plain = run_cli("validate", str(warn))
    assert plain.stdout.splitlines()[-1].startswith("ok: ")
    strict = run_cli("validate", str(warn), "--strict")
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1].startswith("invalid (--strict: warnings fail): 2 records checked")
    report = json.loads(run_cli("validate", str(warn), "--strict", "--json").stdout)
    assert report["ok"] is False and report["strict"] is True and report["errors"] == 0
    assert json.loads(run_cli("validate", str(warn), "--json").stdout)["ok"] is True

    proc = run_cli("validate", "--dataset", "dpo_en_demo,kto_en_demo", "--dataset-dir", str(LF_DATA), "--json")
    report = json.loads(proc.stdout)
    assert report["entry"] is None
    assert [e["file_name"] for e in report["entries"]] == ["dpo_en_demo.json", "kto_en_demo.json"]
    assert report["entries"][0]["ranking"] is True


@pytest.mark.parametrize("args,needle", [
    (["nope.json"], "no such file"),
    ([], "nothing to check"),
    (["--dataset", "x", "--dataset-dir", "/nonexistent"], "dataset_info.json: not found"),
    (["README.md"], "LLaMA-Factory loads only"),
])
def test_usage_errors_exit_2_with_one_line(args, needle, tmp_path):
    proc = run_cli("validate", *args, cwd=REPO)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_validate_registered_llamafactory_dataset_via_cli():
    proc = run_cli("validate", "--dataset", "dpo_en_demo,kto_en_demo", "--dataset-dir", str(LF_DATA))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("ok: 600 records checked in 2 files")


def test_validate_starts_without_heavy_imports(tmp_path):
    path = write(tmp_path / "d.json", [chat("user", "assistant")])
    code = (f"import sys; from minicpm_recipes.cli import main; rc = main(['validate', {str(path)!r}]); "
            "bad = [m for m in ('torch', 'transformers', 'llamafactory', 'datasets', 'pyarrow') if m in sys.modules]; "
            "print(rc, bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_openai_tool_calls_are_detected_and_checked(tmp_path):
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    rec = {"messages": [{"role": "user", "content": "q"}, call, {"role": "tool", "content": "1"},
                        {"role": "tool", "content": "2"}, {"role": "assistant", "content": "a"}]}
    r = _one(tmp_path, [rec, {"messages": rec["messages"][:3]}])
    assert r.entry["formatting"] == "openai" and r.entry["tags"]["observation_tag"] == "tool"
    # LLaMA-Factory drops the unanswered tool message and keeps [user, function call]: a warning
    assert [(p.record, p.rule, p.severity) for p in r.problems] == [(1, "trailing-tool", "warning")]
    rec2 = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "1"}]}
    assert [(p.rule, p.severity) for p in _one(tmp_path, [rec, rec2]).problems] == [
        ("trailing-tool", "warning"), ("message-count", "error")]


@pytest.mark.slow
def test_bench_runs_in_quick_mode(tmp_path):
    env = {"BENCH_VALIDATE_RECORDS": "300", "BENCH_VALIDATE_BIG_MB": "2", "BENCH_VALIDATE_REPEAT": "1",
           "BENCH_VALIDATE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bench", "validate"], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, **env}, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed (tiny sizes say little about speed)
    out = proc.stdout
    for needle in ("generated 300 records", "bench.json: orjson parse", "x orjson", "check-jsonschema",
                   "faster", "peak RSS"):
        assert needle in out, out
    assert not list(tmp_path.glob("big.json"))  # the 2 GB-style file is removed after measuring


@pytest.mark.parametrize("content", ["", "[]", "\n\n"])
def test_empty_files_are_invalid(content, tmp_path):
    path = tmp_path / "e.json"
    path.write_text(content)
    r = validate_file(path, format="messages")
    assert not r.ok and [p.rule for p in r.problems] == ["no-records"]


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    import minicpm_recipes.data.validate as V

    path = write(tmp_path / "d.jsonl", [chat("user", "assistant", content=f"c{i}") for i in range(5000)])
    monkeypatch.setattr(V, "PROGRESS_MIN_BYTES", 0)
    assert validate_file(path, progress=True).ok
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert validate_file(path, progress=True).ok
    assert "d.jsonl" in capsys.readouterr().err  # tqdm's bar, on stderr


def test_dataset_info_schema_inlines_the_entry_schema_and_accepts_llamafactory_file():
    entry = load_schema("dataset-info-entry")
    whole = load_schema("dataset-info")
    assert whole["definitions"]["entry"] == {k: v for k, v in entry.items() if k not in ("$schema", "$id")}
    validator = jsonschema.Draft7Validator(whole)
    assert list(validator.iter_errors(json.loads((LF_DATA / "dataset_info.json").read_text()))) == []
    assert list(validator.iter_errors({"x": {"file_name": "a", "colums": {}}}))


def test_files_registered_in_dataset_dir_are_checked_through_their_entry(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    dialog = [{"dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}]},
              {"dialog": [{"speaker": "human", "text": "a"}, {"speaker": "human", "text": "b"}]}]
    write(data / "c.json", dialog)
    (data / "dataset_info.json").write_text(json.dumps({"c": {
        "file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "human", "assistant_tag": "bot"}}}))
    for arg in ("data/c.json", "c.json"):  # as seen from here, or inside the dataset folder
        proc = run_cli("validate", arg, "--dataset-dir", "data", cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "checked as dataset 'c' of data/dataset_info.json" in proc.stderr
        assert "record 1: $.dialog[1].speaker" in proc.stdout and "(dialog: speaker/text)" in proc.stdout
    alone = run_cli("validate", "data/c.json", cwd=tmp_path)  # no entry: the layout cannot be told
    assert alone.returncode == 2 and "--dataset" in alone.stderr


@pytest.mark.parametrize("content, syntax_errors", [(b'{"a":', 1), (b"\x00\x01binary", 1), (b'{"a":\n{"b":\n', 2),
                                                    (b"", 0), (b"[]", 0)])
def test_files_with_no_readable_record_are_invalid_data_not_usage_errors(tmp_path, content, syntax_errors):
    path = tmp_path / ("d.jsonl" if content.count(b"\n") > 1 else "d.json")
    path.write_bytes(content)
    proc = run_cli("validate", str(path), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["by_rule"] == ({"json-syntax": syntax_errors} if syntax_errors else {"no-records": 1})
    assert report["format"] is None and report["entry"] is None  # no layout is claimed for unreadable data


@pytest.mark.parametrize("args, message", [(["--max-errors", "-1"], "--max-errors -1: expected 0 (all) or more"),
                                           (["--cutoff-len", "0"], "--cutoff-len 0: expected a number of tokens")])
def test_bad_numbers_are_named_alone(tmp_path, args, message):
    path = write(tmp_path / "ok.json", [chat("user", "assistant")])
    proc = run_cli("validate", str(path), *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1
