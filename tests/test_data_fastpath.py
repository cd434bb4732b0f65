"""validate's fast path (minicpm_recipes/data/fastpath.py) gives exactly the precise path's result.

Differential: many generated files, valid and mutated (record-level and byte-level), every layout and stage,
JSON arrays (pretty and compact) and JSON lines, each validated with the fast path on and off; the full reports
(problems with file/line/record/path/rule/message, counts) must be identical. Small chunks make every file span
many chunks, so chunk cuts, fallbacks and resumption are exercised.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from minicpm_recipes.data import fastpath
from minicpm_recipes.data.spec import MESSAGES_TAGS, DatasetSpec, entry_for_format
from minicpm_recipes.data.validate import validate_file

MESSAGES_ENTRY = {"file_name": "x", "formatting": "sharegpt", "columns": {"messages": "messages"},
                  "tags": dict(MESSAGES_TAGS)}
WORDS = "alpha beta gamma 你好 世界 delta {\"messages\": x } ] [ , \\n tab\t".split(" ")


@pytest.fixture(autouse=True, params=["1 process", "2 workers"])
def small_chunks(monkeypatch, request):
    """Small chunks; the fast path inline and with 2 worker processes (what large files get)."""
    monkeypatch.setattr(fastpath, "CHUNK", 2048)
    monkeypatch.setattr(fastpath, "LINES_BLOCK", 2048)
    monkeypatch.setattr(fastpath, "_MAX_BUF", 2048 << 3)
    monkeypatch.setenv("MINICPM_VALIDATE_WORKERS", "2" if request.param == "2 workers" else "0")


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def _conv(rng, roles=("user", "assistant"), key_role="role", key_content="content", system="system"):
    msgs = [{key_role: system, key_content: _text(rng)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        msgs += [{key_role: roles[0], key_content: _text(rng)}, {key_role: roles[1], key_content: _text(rng)}]
    return msgs


def _messages_record(rng):
    return {"messages": _conv(rng)}


def _sharegpt_record(rng):
    return {"conversations": _conv(rng, ("human", "gpt"), "from", "value")}


def _mutate_record(rng: random.Random, rec: dict, col: str, rk: str, ck: str) -> dict:
    rec = json.loads(json.dumps(rec))
    msgs = rec.get(col) if isinstance(rec, dict) else None
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        return rec  # mutated already beyond a message list
    c = rng.randrange(20)
    if c == 0:
        msgs[-1][rk] = msgs[0][rk]
    elif c == 1:
        msgs.pop()
    elif c == 2:
        msgs[-1][ck] = rng.choice(["", " ", "\n", "\u3000", "\u2028 \t"])
    elif c == 3:
        msgs[-1][ck] = rng.choice([7, None, True, ["a"], {"a": 1}])
    elif c == 4:
        msgs[-1][rk] = rng.choice(["function_call", "observation", "tool", "system", "x", 3, None])
    elif c == 5:
        rec[col] = []
    elif c == 6:
        rec[col] = rng.choice([None, "text", {"a": 1}, 12])
    elif c == 7:
        msgs[-1].pop(ck, None)
    elif c == 8:
        del rec[col]
    elif c == 9:
        rec["extra"] = rng.choice([123456789012345678901234567890, 1.5e300, "x", None, [1, {"b": []}]])
    elif c == 10:
        msgs.insert(0, {rk: "system", ck: ""})
    elif c == 11:
        msgs[-1]["function_call"] = 1
    elif c == 12:
        msgs[0][ck] = "x" * rng.randint(0, 50)
    elif c == 13:
        rec = rng.choice([[], "str", 5, None, [rec]])
    elif c == 14:
        msgs.insert(rng.randrange(len(msgs) + 1), {rk: "system", ck: "late system"})
    elif c == 15:
        rec["images"] = rng.choice([["a.png"], "a.png", None, 3])
    return rec


def _dump(records, kind: str, rng: random.Random) -> bytes:
    if kind == "jsonl":
        ascii_ = rng.random() < 0.3
        lines = [json.dumps(r, ensure_ascii=ascii_) for r in records]
        sep = rng.choice(["\n", "\n", "\r\n", "\n\n", "\n  \n"])
        return (sep.join(lines) + rng.choice(["", "\n"])).encode()
    if kind == "pretty":
        return json.dumps(records, ensure_ascii=False, indent=rng.choice([2, 4])).encode()
    return json.dumps(records, ensure_ascii=False, separators=rng.choice([(",", ":"), (", ", ": ")])).encode()


def _byte_mutation(rng: random.Random, data: bytes) -> bytes:
    c = rng.randrange(11)
    i = rng.randrange(len(data)) if data else 0
    if c == 0:
        return data[:i]  # truncated
    if c == 1:
        return data[:i] + rng.choice([b"{", b"}", b",", b"]", b"\"", b"\\", b"\xff", b"\n"]) + data[i:]
    if c == 2:
        return data[:i] + data[i + 1:]
    if c == 3:
        return b"\xef\xbb\xbf" + data
    if c == 4:
        return data + rng.choice([b" garbage", b"\n\n", b",", b"]"])
    if c == 5:
        return data.replace(b"alpha", b"\\ud800", 1)
    if c == 6:
        return data.replace(b"beta", b"\\u00e9\\\"", 1)
    if c == 7:
        return data.replace(b"},", b"} ,", 1)
    if c == 8:
        return data.replace(b"gamma", b"\x00", 1)
    if c == 9:  # two values on one line and a blank line: as many values as non-blank... lines
        return data.replace(b"\n", b" ", 1) + b"\n\n \n"
    return data


def _same(path: Path, **kw) -> tuple:
    fast = validate_file(path, max_errors=None, **kw)
    precise = validate_file(path, max_errors=None, fast=False, **kw)
    assert fast.to_json() == precise.to_json(), path.read_bytes()[:3000]
    assert fast.records == precise.records and fast.invalid == precise.invalid
    return fast, precise


KINDS = ["jsonl", "pretty", "compact"]
LAYOUTS = [("messages", _messages_record, "messages", "role", "content"),
           ("sharegpt", _sharegpt_record, "conversations", "from", "value")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_valid_files_take_the_fast_path_and_agree(kind, layout, tmp_path):
    name, make, *_ = layout
    rng = random.Random(f"{kind}{name}")
    for n in (1, 2, 50, 400):
        records = [make(rng) for _ in range(n)]
        records += records[: n // 10]  # duplicates (warnings) across chunks
        path = tmp_path / f"{name}-{n}.{'jsonl' if kind == 'jsonl' else 'json'}"
        path.write_bytes(_dump(records, kind, rng))
        fast, _ = _same(path)
        assert fast.ok and fast.records == len(records)
        if n >= 50:
            assert fast.fast_hits > fast.records // 2  # the fast path did settle most records
            # the duplicates were found (the last JSON line may lack the '\r' of its twin, so differ by a byte)
            assert n // 10 - 1 <= fast.warnings == fast.by_rule["duplicate"] <= n // 10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_mutated_records_agree(kind, layout, tmp_path):
    name, make, col, rk, ck = layout
    rng = random.Random(f"mut{kind}{name}")
    for trial in range(12):
        records = [make(rng) for _ in range(rng.choice([30, 200]))]
        for _ in range(rng.choice([1, 3, 20])):
            i = rng.randrange(len(records))
            records[i] = _mutate_record(rng, records[i], col, rk, ck)
        path = tmp_path / f"m{trial}.{'jsonl' if kind == 'jsonl' else 'json'}"
        path.write_bytes(_dump(records, kind, rng))
        _same(path)
        _same(path, entry=(MESSAGES_ENTRY if name == "messages" else {"file_name": "x", "formatting": "sharegpt"})
              | {"file_name": path.name})


@pytest.mark.parametrize("kind", KINDS)
def test_byte_mutations_agree(kind, tmp_path):
    rng = random.Random(f"bytes{kind}")
    for trial in range(60):
        records = [_messages_record(rng) for _ in range(rng.choice([5, 60]))]
        data = _byte_mutation(rng, _dump(records, kind, rng))
        path = tmp_path / f"b{trial}.{'jsonl' if kind == 'jsonl' else 'json'}"
        path.write_bytes(data)
        for entry in (MESSAGES_ENTRY | {"file_name": path.name}, None):
            try:
                _same(path, entry=entry)
            except Exception as exc:  # a file whose layout cannot be detected: both paths refuse it alike
                if entry is not None or "layout" not in str(exc):
                    raise


@pytest.mark.parametrize("fmt,stage", [("alpaca", "sft"), ("alpaca", "dpo"), ("alpaca", "kto"), ("text", "pt"),
                                       ("openai", "sft"), ("messages", "dpo"), ("messages", "kto"),
                                       ("sharegpt", "sft")])
def test_other_layouts_and_stages_agree(fmt, stage, tmp_path):
    rng = random.Random(f"{fmt}{stage}")
    for trial in range(4):
        recs = []
        for _ in range(80):
            r = {"messages": _conv(rng)}
            r["instruction"], r["input"], r["output"] = _text(rng), rng.choice(["", _text(rng)]), _text(rng)
            r["text"] = _text(rng)
            r["chosen"], r["rejected"] = (_text(rng), _text(rng)) if fmt == "alpaca" else (
                {"role": "assistant", "content": _text(rng)}, {"role": "assistant", "content": ""})
            r["label"] = rng.random() < 0.5
            if stage == "dpo" and fmt != "alpaca":
                r["messages"] = r["messages"][:-1]
            recs.append(_mutate_record(rng, r, "messages", "role", "content") if rng.random() < 0.1 else r)
        for kind in KINDS:
            path = tmp_path / f"o{trial}.{'jsonl' if kind == 'jsonl' else 'json'}"
            path.write_bytes(_dump(recs, kind, rng))
            entry = entry_for_format(fmt, path.name, stage, set(recs[0]) if isinstance(recs[0], dict) else set())
            _same(path, entry=entry)
            _same(path, entry=entry, cutoff_len=20)


def test_fast_path_exists_only_for_schemas_it_can_map():
    from minicpm_recipes.data.checker import make_checker

    def build(entry, stage=None, cutoff_len=None):
        spec = DatasetSpec.from_entry(entry, stage)
        return fastpath.build(spec, make_checker(spec), cutoff_len)

    assert build(MESSAGES_ENTRY) is not None
    assert build({"file_name": "x", "formatting": "sharegpt"}) is not None
    assert build(MESSAGES_ENTRY, cutoff_len=100) is None  # token estimates read contents: precise path
    assert build(MESSAGES_ENTRY | {"columns": {"messages": "messages", "tools": "tools"}}) is None
    assert build(MESSAGES_ENTRY | {"ranking": True}, "dpo") is None
    assert build({"file_name": "x"}) is None  # alpaca
    with pytest.raises(fastpath.Unmappable):
        fastpath._Types().node({"type": "string", "enum": ["a"]})
    with pytest.raises(fastpath.Unmappable):
        fastpath._Types().node({"anyOf": [{"type": "string"}]})


def test_lost_workers_are_given_up_and_the_result_stays_the_same(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICPM_VALIDATE_WORKERS", "2")
    monkeypatch.setattr(fastpath, "WORKER_TIMEOUT", 1e-9)  # no worker answers in time: chunks checked here
    rng = random.Random("timeout")
    for kind in KINDS:
        records = [_messages_record(rng) for _ in range(200)]
        records[50] = _mutate_record(rng, records[50], "messages", "role", "content")
        path = tmp_path / f"t.{'jsonl' if kind == 'jsonl' else 'json'}"
        path.write_bytes(_dump(records + records[:5], kind, rng))
        fast, _ = _same(path)
        assert fast.fast_hits > 100


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_line_blocks_give_whole_lines_and_their_file_offsets(chunk):
    import io

    from minicpm_recipes.data.loader import line_blocks

    raw = b'\xef\xbb\xbf{"a": 1}\n\n{"b": "a longer line than a chunk"}\r\n  \n{"c": 3}'
    blocks = list(line_blocks(io.BytesIO(raw), chunk))
    assert b"\n".join(data for _, data in blocks) == raw[3:]  # every byte but the BOM, lines never cut
    for start, data in blocks:
        assert raw[start:start + len(data)] == data
    assert blocks[0][0] == 3
    assert list(line_blocks(io.BytesIO(b""), chunk)) == []
    assert [d for _, d in line_blocks(io.BytesIO(b"x\n"), chunk)] == [b"x"]


def test_workers_given_up_with_jobs_in_flight_stop_at_once():
    """multiprocessing.Pool.terminate() with jobs in flight was seen hanging (CI); our workers are killed."""
    import time

    workers = fastpath._Workers(2)
    procs = list(workers.procs)
    assert workers.result(workers.submit(abs, -1024), 30) == 1024
    for _ in range(4):
        workers.submit(time.sleep, 60)
    started = time.monotonic()
    workers.close()
    assert time.monotonic() - started < 10
    assert all(not p.is_alive() for p in procs)


def test_a_dead_or_failing_worker_is_reported_lost():
    workers = fastpath._Workers(2)
    try:
        with pytest.raises(fastpath._WorkerLost, match="failed"):
            workers.result(workers.submit(int, "not a number"), 30)
        workers.procs[1].kill()
        workers.procs[1].join()
        with pytest.raises(fastpath._WorkerLost):
            workers.result(workers.submit(abs, -1), 30)
        assert workers.result(workers.submit(abs, -2), 30) == 2  # worker 0 still serves
    finally:
        workers.close()
