"""`validate` speed and memory against plain orjson parsing and check-jsonschema.

Generates N multi-turn `{"messages": [...]}` records (default 200,000, ~200 MB) as a JSON array (MiniCPM's
layout) and as JSON lines, then measures in one run:
  - orjson just parsing the file (array: orjson.loads of the file; lines: orjson.loads per line)
  - our validate (minicpm_recipes.data.validate.validate_file, layout auto-detected, all checks on)
  - check-jsonschema with the equivalent schema (datasets/schemas/messages-sft.schema.json as array items)
  - peak RSS of validate on a ~2 GB JSON array (in a fresh process)
Targets: validate <= 1.5x orjson on the JSON array, >= 20x faster than check-jsonschema, peak RSS < 300 MB on
2 GB. Times are CPU seconds of the process (children for check-jsonschema), so a shared machine skews less.

Sizes (environment): BENCH_VALIDATE_RECORDS (200000), BENCH_VALIDATE_BIG_MB (2048; 0 skips the RSS run),
BENCH_VALIDATE_CJS_RECORDS (records check-jsonschema gets, default all; its time is scaled to all records when
fewer), BENCH_VALIDATE_DIR (where files go; default a temporary folder, removed afterwards),
BENCH_VALIDATE_REPEAT (2: best of N for the orjson and validate timings).
Quick run: BENCH_VALIDATE_RECORDS=20000 BENCH_VALIDATE_BIG_MB=100 python -m bench validate
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

MAX_PARSE_RATIO = 1.5
MIN_CJS_SPEEDUP = 20.0
MAX_RSS_MB = 300.0

_WORDS = ("the model answers questions about data training fine tuning with care and detail while keeping "
          "each reply short clear and useful for the user who asked").split()
_ZH = "简约而不简单的牛仔外套白色的衣身十分百搭衣身多处有做旧破洞设计打破单调乏味增加一丝造型看点"
SYSTEM = "你是一个广告生成助手，你的任务是根据用户提供的产品信息和广告类型，生成相应的广告文案。"


def _text(rng: random.Random, n_words: int) -> str:
    if rng.random() < 0.3:
        start = rng.randrange(len(_ZH) - 10)
        return (_ZH[start:] + _ZH)[: max(8, n_words)]
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def make_record(rng: random.Random) -> dict:
    msgs = [{"role": "system", "content": SYSTEM}]
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": _text(rng, rng.randint(8, 40))})
        msgs.append({"role": "assistant", "content": _text(rng, rng.randint(20, 70))})
    return {"messages": msgs}


def write_files(dir_: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """The same n records as a pretty-printed JSON array (like MiniCPM's train.json) and as JSON lines."""
    rng = random.Random(seed)
    array_path, lines_path = dir_ / "bench.json", dir_ / "bench.jsonl"
    with open(array_path, "wb") as fa, open(lines_path, "wb") as fl:
        fa.write(b"[\n")
        for i in range(n):
            rec = make_record(rng)
            fl.write(orjson.dumps(rec) + b"\n")
            fa.write((b",\n" if i else b"") + orjson.dumps(rec, option=orjson.OPT_INDENT_2))
        fa.write(b"\n]\n")
    return array_path, lines_path


def write_big_array(path: Path, target_bytes: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    pool = [orjson.dumps(make_record(rng), option=orjson.OPT_INDENT_2) for _ in range(5000)]
    n = 0
    size = 0
    with open(path, "wb") as fh:
        fh.write(b"[\n")
        while size < target_bytes:
            chunk = b",\n".join(pool)
            fh.write((b",\n" if n else b"") + chunk)
            size += len(chunk)
            n += len(pool)
            pool = pool[1:] + pool[:1]  # vary record order
        fh.write(b"\n]\n")
    return n


def _cpu() -> float:
    return time.process_time()


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def orjson_parse(path: Path) -> float:
    start = _cpu()
    if path.suffix == ".jsonl":
        loads = orjson.loads
        with open(path, "rb") as fh:
            for line in fh:
                loads(line)
    else:
        data = orjson.loads(path.read_bytes())
        del data
    return _cpu() - start


def our_validate(path: Path) -> tuple[float, object]:
    from minicpm_recipes.data.validate import validate_file

    start = _cpu()
    result = validate_file(path, max_errors=100)
    return _cpu() - start, result


def best(fn, path: Path, repeat: int):
    times = []
    out = None
    for _ in range(repeat):
        r = fn(path)
        if isinstance(r, tuple):
            t, out = r
        else:
            t = r
        times.append(t)
    return min(times), out


def check_jsonschema(dir_: Path, array_path: Path, n_records: int, n_cjs: int) -> float:
    from minicpm_recipes.data.schemas import load_schema

    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": load_schema("messages-sft")}
    schema["items"].pop("$schema", None)
    schema["items"].pop("$id", None)
    schema_path = dir_ / "array.schema.json"
    schema_path.write_text(json.dumps(schema))
    target = array_path
    if n_cjs < n_records:
        target = dir_ / "bench_cjs.json"
        with open(array_path, "rb") as fh:
            data = orjson.loads(fh.read())
        target.write_bytes(orjson.dumps(data[:n_cjs], option=orjson.OPT_INDENT_2))
        del data
    exe = Path(sys.executable).with_name("check-jsonschema")
    cmd = [str(exe) if exe.exists() else "check-jsonschema", "--schemafile", str(schema_path), str(target)]
    start = _child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = _child_cpu() - start
    if proc.returncode != 0:
        raise RuntimeError(f"check-jsonschema failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return elapsed * (n_records / n_cjs)


# VmHWM is this process's own peak RSS (ru_maxrss would include the parent's at fork time)
_RSS_SCRIPT = """
import sys, time
from minicpm_recipes.data.validate import validate_file
t = time.process_time()
r = validate_file(sys.argv[1], max_errors=100)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(r.records, r.invalid, time.process_time() - t, hwm / 1024)
"""


def peak_rss(path: Path) -> tuple[int, int, float, float]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    records, invalid, seconds, rss_mb = out.stdout.split()
    return int(records), int(invalid), float(seconds), float(rss_mb)


def main() -> int:
    n = int(os.environ.get("BENCH_VALIDATE_RECORDS", "200000"))
    big_mb = int(os.environ.get("BENCH_VALIDATE_BIG_MB", "2048"))
    n_cjs = min(n, int(os.environ.get("BENCH_VALIDATE_CJS_RECORDS", str(n))))
    repeat = max(1, int(os.environ.get("BENCH_VALIDATE_REPEAT", "2")))
    keep = "BENCH_VALIDATE_DIR" in os.environ
    dir_ = Path(os.environ.get("BENCH_VALIDATE_DIR") or tempfile.mkdtemp(prefix="bench-validate-"))
    dir_.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        t = time.perf_counter()
        array_path, lines_path = write_files(dir_, n)
        size_mb = array_path.stat().st_size / 1e6
        print(f"generated {n} records: {array_path.name} {size_mb:.0f} MB, {lines_path.name} "
              f"{lines_path.stat().st_size / 1e6:.0f} MB ({time.perf_counter() - t:.1f} s)")
        ours_by_file = {}
        print("times are CPU seconds (the machine may be shared); ratio targets apply to the JSON array "
              "(MiniCPM's layout), JSON lines are shown for information")
        for path in (array_path, lines_path):
            t_parse, _ = best(orjson_parse, path, repeat)
            t_ours, result = best(our_validate, path, repeat)
            assert result.ok and result.records == n, (result.records, result.problems[:3])
            ratio = t_ours / t_parse
            ours_by_file[path] = t_ours
            if path is array_path:
                verdict = f"(target <= {MAX_PARSE_RATIO}x) " + ("ok" if ratio <= MAX_PARSE_RATIO else "TOO SLOW")
                ok &= ratio <= MAX_PARSE_RATIO
            else:
                verdict = "(info)"
            print(f"{path.name}: orjson parse {t_parse:.2f} s, validate {t_ours:.2f} s "
                  f"-> {ratio:.2f}x orjson {verdict}")
        t_cjs = check_jsonschema(dir_, array_path, n, n_cjs)
        speedup = t_cjs / ours_by_file[array_path]
        scaled = "" if n_cjs == n else f" (ran on {n_cjs} records, scaled)"
        print(f"check-jsonschema {t_cjs:.1f} s{scaled} -> validate is {speedup:.0f}x faster "
              f"(target >= {MIN_CJS_SPEEDUP:.0f}x) {'ok' if speedup >= MIN_CJS_SPEEDUP else 'TOO SLOW'}")
        ok &= speedup >= MIN_CJS_SPEEDUP
        if big_mb:
            big = dir_ / "big.json"
            t = time.perf_counter()
            n_big = write_big_array(big, big_mb << 20)
            print(f"generated {big.name}: {big.stat().st_size / 1e9:.2f} GB, {n_big} records "
                  f"({time.perf_counter() - t:.1f} s)")
            records, invalid, seconds, rss = peak_rss(big)
            assert records == n_big, (records, n_big)
            print(f"{big.name}: validate {seconds:.1f} s CPU, peak RSS {rss:.0f} MB (target < {MAX_RSS_MB:.0f} MB) "
                  f"{'ok' if rss < MAX_RSS_MB else 'TOO MUCH'}")
            ok &= rss < MAX_RSS_MB
            big.unlink()
    finally:
        if not keep:
            shutil.rmtree(dir_, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
