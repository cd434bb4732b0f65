"""`minicpm-recipes register` / `register_entry`: one entry spliced in, every other byte kept, atomic, locked,
backed up; names, conflicts and paths checked."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
from pathlib import Path

import pytest

from conftest import LF_DATA, MINICPM_DATA, run_cli
from minicpm_recipes.data import registry
from minicpm_recipes.data.registry import plan_registration, register_entry, scan_top_level, splice_entry
from minicpm_recipes.errors import UserError

MSG_ENTRY = {"file_name": "adgen.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                      "assistant_tag": "assistant", "system_tag": "system"}}


@pytest.fixture
def lf_dir(tmp_path) -> Path:
    """A copy of LLaMA-Factory's data/ folder (104-entry dataset_info.json) plus a MiniCPM messages file."""
    d = tmp_path / "data"
    shutil.copytree(LF_DATA, d)
    shutil.copy(MINICPM_DATA / "train.json", d / "adgen.json")
    return d


def spans(text: str) -> dict[str, str]:
    """name -> the exact text of `"name": value` in a dataset_info.json."""
    _, _, found = scan_top_level(text)
    return {s.key: text[s.key_start:s.value_end] for s in found}


def assert_only_member_added(old: str, new: str, name: str) -> None:
    """`new` is `old` with one member inserted after the last one: every byte of `old` is there, in order."""
    _, _, old_spans = scan_top_level(old)
    cut = old_spans[-1].value_end
    assert new[:cut] == old[:cut]
    assert new.endswith(old[cut:])
    inserted = new[cut:len(new) - len(old[cut:])]
    assert inserted.startswith(",") and json.dumps(name, ensure_ascii=False) in inserted


# ----------------------------------------------------------------------------------------- splicing


def test_add_to_llamafactory_dataset_info_keeps_every_byte(lf_dir):
    info = lf_dir / "dataset_info.json"
    old = info.read_text(encoding="utf-8")
    outcome = register_entry(info, "adgen", MSG_ENTRY)
    assert outcome.action == "added"
    new = info.read_text(encoding="utf-8")
    assert_only_member_added(old, new, "adgen")
    parsed = json.loads(new)
    assert list(parsed) == list(json.loads(old)) + ["adgen"]
    assert parsed["adgen"] == MSG_ENTRY
    assert outcome.backup_path.read_text(encoding="utf-8") == old
    # the new member is written in the file's own style (2-space indent, one key per line)
    assert '\n  "adgen": {\n    "file_name": "adgen.json",' in new


def test_update_in_the_middle_changes_only_that_value(lf_dir):
    info = lf_dir / "dataset_info.json"
    old = info.read_text(encoding="utf-8")
    old_spans = spans(old)
    entry = {"file_name": "alpaca_zh_demo.json", "columns": {"prompt": "instruction", "query": "input",
                                                             "response": "output"}}
    with pytest.raises(UserError, match="--force"):
        register_entry(info, "alpaca_zh_demo", entry)
    assert info.read_text(encoding="utf-8") == old
    outcome = register_entry(info, "alpaca_zh_demo", entry, force=True)
    assert outcome.action == "updated"
    new = info.read_text(encoding="utf-8")
    new_spans = spans(new)
    assert list(new_spans) == list(old_spans)
    for name in old_spans:
        if name != "alpaca_zh_demo":
            assert new_spans[name] == old_spans[name], name
    assert json.loads(new)["alpaca_zh_demo"] == entry
    # outside the changed value nothing moved: prefix up to it and suffix after it are identical
    start = old.index('"alpaca_zh_demo"')
    assert new[:start] == old[:start]
    tail = old[old.index('"alpaca_en_demo"', start) if '"alpaca_en_demo"' in old[start:] else len(old):]
    assert new.endswith(tail)


def test_same_registration_twice_changes_nothing(lf_dir):
    info = lf_dir / "dataset_info.json"
    assert register_entry(info, "identity", {"file_name": "identity.json"}).action == "unchanged"
    assert sorted(p.name for p in lf_dir.iterdir() if p.name.startswith("dataset_info")) == ["dataset_info.json"]
    register_entry(info, "adgen", MSG_ENTRY)
    before = info.read_bytes()
    stat = info.stat()
    backup = (lf_dir / "dataset_info.json.bak").read_bytes()
    outcome = register_entry(info, "adgen", json.loads(json.dumps(MSG_ENTRY)))
    assert outcome.action == "unchanged" and outcome.backup_path is None
    assert info.read_bytes() == before
    assert (info.stat().st_ino, info.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert (lf_dir / "dataset_info.json.bak").read_bytes() == backup
    # an existing LLaMA-Factory entry registered as it is: nothing changes either
    lf_entry = json.loads(info.read_text())["kto_en_demo"]
    assert register_entry(info, "kto_en_demo", lf_entry).action == "unchanged"
    assert info.read_bytes() == before


@pytest.mark.parametrize("style", ["indent4", "crlf", "minified", "empty", "empty-pretty", "missing", "tabs"])
def test_splice_keeps_hand_written_styles(tmp_path, style):
    existing = {"b_set": {"file_name": "b.json"}, "中文": {"file_name": "中文.json", "formatting": "sharegpt"}}
    texts = {
        "indent4": json.dumps(existing, ensure_ascii=False, indent=4) + "\n",
        "crlf": json.dumps(existing, ensure_ascii=False, indent=2).replace("\n", "\r\n") + "\r\n",
        "minified": json.dumps(existing, ensure_ascii=False),
        "empty": "{}",
        "empty-pretty": "{\n}\n",
        "missing": None,
        "tabs": json.dumps(existing, ensure_ascii=False, indent="\t") + "\n",
    }
    old = texts[style]
    new = splice_entry(old, "新的", MSG_ENTRY)
    registry.verify_splice(old, new, "新的", MSG_ENTRY)
    assert "\\u" not in new
    if old and json.loads(old):
        assert_only_member_added(old, new, "新的")
    if style == "crlf":
        assert "\n" not in new.replace("\r\n", "")
    if style == "indent4":
        assert '\n    "新的": {\n        "file_name"' in new
    if style == "minified":
        assert "\n" not in new


def test_splice_random_documents():
    rng = random.Random(1)

    def value(depth=0):
        kind = rng.choice(["str", "int", "list", "obj", "bool", "null"] if depth < 3 else ["str", "int"])
        if kind == "str":
            return rng.choice(["", "x", "中文", 'quote " and \\ back', "\n"])
        if kind == "int":
            return rng.randint(-5, 5)
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "null":
            return None
        if kind == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 3))}

    for _ in range(300):
        doc = {f"name{i}": value() for i in range(rng.randint(0, 5))}
        indent = rng.choice([None, 2, 4, "\t"])
        old = json.dumps(doc, ensure_ascii=rng.random() < 0.5, indent=indent)
        name = rng.choice(list(doc) + ["fresh", "新"]) if doc else "fresh"
        entry = {"file_name": "f.json", "extra": value()}
        new = splice_entry(old, name, entry)
        registry.verify_splice(old, new, name, entry)
        if name not in doc and doc:
            assert_only_member_added(old, new, name)


def test_duplicate_name_in_file_is_refused(tmp_path):
    info = tmp_path / "dataset_info.json"
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    info.write_text('{"a": {"file_name": "a.json"}, "a": {"file_name": "b.json"}}')
    with pytest.raises(UserError, match="2 times"):
        register_entry(info, "a", {"file_name": "a.json", "columns": {"prompt": "instruction"}}, force=True,
                       validate=False)


def test_broken_dataset_info_is_refused_untouched(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    info = tmp_path / "dataset_info.json"
    for text in ('{"a": {"file_name": "a.json"},}', "[1, 2]", '{"a": 1} trailing'):
        info.write_text(text)
        with pytest.raises(UserError):
            register_entry(info, "b", {"file_name": "a.json"}, validate=False)
        assert info.read_text() == text


def test_plan_registration_writes_nothing(lf_dir):
    info = lf_dir / "dataset_info.json"
    before = info.read_bytes()
    plan = plan_registration(info, "adgen", MSG_ENTRY)
    assert plan.action == "added" and plan.changes
    assert json.loads(plan.new_text)["adgen"] == MSG_ENTRY
    assert info.read_bytes() == before
    assert not (lf_dir / "dataset_info.json.bak").exists()
    assert plan_registration(info, "identity", {"file_name": "identity.json"}).action == "unchanged"


def test_new_dataset_info_is_created(tmp_path):
    shutil.copy(MINICPM_DATA / "train.json", tmp_path / "adgen.json")
    outcome = register_entry(tmp_path / "dataset_info.json", "adgen", MSG_ENTRY)
    assert outcome.action == "added" and outcome.backup_path is None
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == {"adgen": MSG_ENTRY}


# ------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("file_name", ["../outside.json", "sub/../../outside.json", "ABS_OUTSIDE", "link.json"])
def test_file_name_must_stay_in_the_dataset_folder(tmp_path, file_name):
    d = tmp_path / "data"
    d.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    (d / "link.json").symlink_to(outside)
    (d / "sub").mkdir()
    file_name = str(outside) if file_name == "ABS_OUTSIDE" else file_name
    with pytest.raises(UserError, match="outside the dataset folder"):
        register_entry(d / "dataset_info.json", "x", {"file_name": file_name}, validate=False)
    assert not (d / "dataset_info.json").exists()


def test_file_name_inside_is_accepted(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    (d / "inner_link.json").symlink_to(d / "sub" / "a.json")
    assert register_entry(d / "dataset_info.json", "a", {"file_name": "sub/a.json"}, validate=False).action == "added"
    assert register_entry(d / "dataset_info.json", "l", {"file_name": "inner_link.json"},
                          validate=False).action == "added"
    with pytest.raises(UserError, match="does not exist"):
        register_entry(d / "dataset_info.json", "m", {"file_name": "missing.json"}, validate=False)


# ----------------------------------------------------------------------------------- concurrency


def _register_worker(args):
    info, name, file_name = args
    entry = {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                      "assistant_tag": "assistant", "system_tag": "system"}}
    return register_entry(info, name, entry, validate=False).action


def test_concurrent_registrations_lose_nothing(lf_dir):
    info = lf_dir / "dataset_info.json"
    old = json.loads(info.read_text())
    old_spans = spans(info.read_text())
    jobs = [(str(info), f"concurrent_{i}", "adgen.json") for i in range(12)]
    jobs += jobs[:4]  # the same registration twice, concurrently: added once, then unchanged
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        actions = pool.map(_register_worker, jobs)
    assert actions.count("added") == 12 and actions.count("unchanged") == 4
    text = info.read_text()
    new = json.loads(text)
    assert {k: v for k, v in new.items() if k in old} == old
    assert sorted(k for k in new if k not in old) == sorted(f"concurrent_{i}" for i in range(12))
    new_spans = spans(text)
    assert all(new_spans[k] == v for k, v in old_spans.items())
    assert not list(lf_dir.glob(".dataset_info.json.*.tmp"))


# -------------------------------------------------------------------------------------- validation


def _needs_validator():
    try:
        import minicpm_recipes.data.validate  # noqa: F401
    except ImportError:
        pytest.skip("minicpm_recipes.data.validate is not available yet")


def test_data_that_does_not_fit_the_entry_is_refused(lf_dir):
    _needs_validator()
    info = lf_dir / "dataset_info.json"
    before = info.read_bytes()
    wrong = dict(MSG_ENTRY, file_name="alpaca_zh_demo.json")  # alpaca records under a messages entry
    with pytest.raises(UserError, match="does not fit"):
        register_entry(info, "wrong", wrong)
    assert info.read_bytes() == before
    assert register_entry(info, "wrong", wrong, validate=False).action == "added"


def test_bad_entry_is_refused(lf_dir):
    _needs_validator()
    info = lf_dir / "dataset_info.json"
    with pytest.raises(UserError, match="not one LLaMA-Factory reads"):
        register_entry(info, "bad", {"file_name": "adgen.json", "formatting": "chatml"}, validate=False)


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("source, expected_name", [
    ("alpaca_zh_demo.json", "alpaca_zh_demo"),
    ("dpo_zh_demo.json", "dpo_zh_demo"),
    ("kto_en_demo.json", "kto_en_demo"),
    ("c4_demo.jsonl", "c4_demo"),
    ("glaive_toolcall_en_demo.json", None),
])
def test_cli_detects_the_entry_llamafactory_uses(lf_dir, tmp_path, source, expected_name):
    _needs_validator()
    d = tmp_path / "fresh"
    d.mkdir()
    shutil.copy(lf_dir / source, d / source)
    proc = run_cli("register", str(d / source), "--name", "mine", "--dataset-dir", str(d), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("added: mine")
    entry = json.loads((d / "dataset_info.json").read_text())["mine"]
    lf = json.loads((lf_dir / "dataset_info.json").read_text())
    if expected_name:  # same meaning as LLaMA-Factory's own entry (defaults may be spelled out)
        from minicpm_recipes.data.spec import DatasetSpec

        ours, theirs = DatasetSpec.from_entry(entry), DatasetSpec.from_entry(lf[expected_name])
        assert (ours.formatting, ours.stage, ours.ranking) == (theirs.formatting, theirs.stage, theirs.ranking)
        unused = {"messages"} if theirs.formatting == "alpaca" else {"prompt", "query", "response", "history"}
        for col, val in theirs.columns.items():
            if val is not None and col not in unused:
                assert ours.columns[col] == val, col
    else:
        assert entry["columns"]["tools"] == "tools"


def test_cli_file_relative_to_dataset_dir_and_into(lf_dir, tmp_path):
    proc = run_cli("register", "adgen.json", "--name", "adgen", "--into", str(lf_dir / "dataset_info.json"),
                   "--format", "messages", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((lf_dir / "dataset_info.json").read_text())["adgen"]["file_name"] == "adgen.json"
    again = run_cli("register", str(lf_dir / "adgen.json"), "--name", "adgen", "--dataset-dir", str(lf_dir),
                    "--format", "messages", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("unchanged")
    other = run_cli("register", "adgen.json", "--name", "adgen2", "--into", str(lf_dir / "mine.json"),
                    "--format", "messages", cwd=tmp_path)
    assert other.returncode == 2 and "LLaMA-Factory reads only the dataset_info.json" in other.stderr
    assert f"--into {lf_dir / 'dataset_info.json'}" in other.stderr and not (lf_dir / "mine.json").exists()


def test_cli_dry_run_shows_diff_and_writes_nothing(lf_dir, tmp_path):
    before = (lf_dir / "dataset_info.json").read_bytes()
    proc = run_cli("register", str(lf_dir / "adgen.json"), "--name", "adgen", "--dataset-dir", str(lf_dir),
                   "--format", "messages", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "would be added" in proc.stdout and '+  "adgen": {' in proc.stdout
    assert (lf_dir / "dataset_info.json").read_bytes() == before


@pytest.mark.parametrize("args, pattern", [
    (["OUTSIDE", "--name", "x"], "outside the dataset folder"),
    (["adgen.json", "--name", "identity", "--format", "messages"], "already registered.*--force"),
    (["adgen.json", "--name", "x", "--entry", "{oops"], "--entry: not valid JSON"),
    (["nope.json", "--name", "x"], "no such file"),
])
def test_cli_errors_exit_2(lf_dir, tmp_path, args, pattern):
    import re

    outside = tmp_path / "outside.json"
    outside.write_text("[]")
    args = [str(outside) if a == "OUTSIDE" else a for a in args]
    before = (lf_dir / "dataset_info.json").read_bytes()
    proc = run_cli("register", *args, "--dataset-dir", str(lf_dir), cwd=lf_dir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and re.search(pattern, proc.stderr), proc.stderr
    assert (lf_dir / "dataset_info.json").read_bytes() == before


def test_dataset_info_symlink_is_edited_through(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(MINICPM_DATA / "train.json", real / "adgen.json")
    (real / "dataset_info.json").write_text("{}\n")
    link_dir = tmp_path / "link"
    link_dir.mkdir()
    (link_dir / "dataset_info.json").symlink_to(real / "dataset_info.json")
    register_entry(link_dir / "dataset_info.json", "adgen", MSG_ENTRY, dataset_dir=real, validate=False)
    assert (link_dir / "dataset_info.json").is_symlink()
    assert json.loads((real / "dataset_info.json").read_text()) == {"adgen": MSG_ENTRY}
    assert os.path.exists(real / "dataset_info.json.bak")
    # without dataset_dir, file_name is relative to the folder holding the link, as LLaMA-Factory reads it
    shutil.copy(MINICPM_DATA / "train.json", link_dir / "only_here.json")
    entry = dict(MSG_ENTRY, file_name="only_here.json")
    assert register_entry(link_dir / "dataset_info.json", "here", entry, validate=False).action == "added"
    assert (link_dir / "dataset_info.json").is_symlink()


# ----------------------------------------------------------------------------------------- several at once


def test_register_entries_writes_once_and_backs_up_the_file_as_it_was(lf_dir):
    from minicpm_recipes.data.registry import register_entries

    info = lf_dir / "dataset_info.json"
    old = info.read_text(encoding="utf-8")
    shutil.copy(lf_dir / "adgen.json", lf_dir / "adgen_dev.json")
    dev = dict(MSG_ENTRY, file_name="adgen_dev.json")
    outcomes = register_entries(info, [("adgen", MSG_ENTRY), ("adgen_dev", dev)])
    assert [(o.name, o.action) for o in outcomes] == [("adgen", "added"), ("adgen_dev", "added")]
    assert (lf_dir / "dataset_info.json.bak").read_text(encoding="utf-8") == old
    parsed = json.loads(info.read_text(encoding="utf-8"))
    assert list(parsed)[-2:] == ["adgen", "adgen_dev"] and parsed["adgen_dev"] == dev
    again = register_entries(info, [("adgen", MSG_ENTRY), ("adgen_dev", dev)])
    assert [o.action for o in again] == ["unchanged", "unchanged"]


def test_register_entries_is_all_or_nothing(lf_dir):
    from minicpm_recipes.data.registry import register_entries

    info = lf_dir / "dataset_info.json"
    old = info.read_bytes()
    with pytest.raises(UserError, match="alpaca_zh_demo.*already registered"):  # the second one conflicts
        register_entries(info, [("adgen", MSG_ENTRY), ("alpaca_zh_demo", MSG_ENTRY)])
    with pytest.raises(UserError, match="given more than once"):
        register_entries(info, [("adgen", MSG_ENTRY), ("adgen", MSG_ENTRY)])
    assert info.read_bytes() == old and not (lf_dir / "dataset_info.json.bak").exists()
