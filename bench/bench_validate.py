"""`validate` speed and memory against plain orjson parsing and check-jsonschema.

Generates N multi-turn `{"messages": [...]}` records (default 200,000, ~200 MB) as a JSON array (MiniCPM's
layout) and as JSON lines, then measures in one run:
  - orjson just parsing the file (array: orjson.loads of the file; lines: orjson.loads per line)
  - our validate (minicpm_recipes.data.validate.validate_file, layout auto-detected, all checks on)
  - check-jsonschema with the equivalent schema (datasets/schemas/messages-sft.schema.json as array items)
  - peak RSS of validate on a ~2 GB JSON array (in a fresh process)
Targets: validate <= 1.5x orjson on the JSON array and on the JSON lines, >= 20x faster than check-jsonschema
(on the JSON array), peak RSS < 300 MB on 2 GB. The targets apply to wall-clock seconds (what the user waits),
measured side by side in this run on the same files, read once beforehand so every tool finds them in the page
cache; CPU seconds (the process and its children: validate's worker processes, check-jsonschema) are printed
beside them. Peak RSS adds validate's worker processes to its own.

Sizes (environment): BENCH_VALIDATE_RECORDS (200000), BENCH_VALIDATE_BIG_MB (2048; 0 skips the RSS run),
BENCH_VALIDATE_CJS_RECORDS (records check-jsonschema gets, default all; its time is scaled to all records when
fewer), BENCH_VALIDATE_DIR (where files go; default a temporary folder, removed afterwards),
BENCH_VALIDATE_REPEAT (3: best of N for the orjson and validate timings, taken alternately),
MINICPM_VALIDATE_WORKERS (validate's worker processes; default: the usable CPUs, for files >= 48 MB).
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


class Timer:
    """Wall-clock and CPU seconds (this process and its reaped children) of a block."""

    def __enter__(self):
        self.w0, self.c0, self.k0 = time.perf_counter(), _cpu(), _child_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = _cpu() - self.c0 + _child_cpu() - self.k0


def warm(path: Path) -> None:
    """Read the file once so that every measurement finds it in the page cache."""
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def orjson_parse(path: Path) -> tuple[Timer, None]:
    with Timer() as t:
        if path.suffix == ".jsonl":
            loads = orjson.loads
            with open(path, "rb") as fh:
                for line in fh:
                    loads(line)
        else:
            data = orjson.loads(path.read_bytes())
            del data
    return t, None


def our_validate(path: Path) -> tuple[Timer, object]:
    from minicpm_recipes.data.validate import validate_file

    with Timer() as t:
        result = validate_file(path, max_errors=100)
    return t, result


def best_of(fns, path: Path, repeat: int) -> list[tuple[float, float, object]]:
    """For each fn: (best wall, best CPU, last output) over `repeat` rounds, the fns taking turns in each round."""
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    outs = [None for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t, outs[i] = fn(path)
            walls[i].append(t.wall)
            cpus[i].append(t.cpu)
    return [(min(w), min(c), o) for w, c, o in zip(walls, cpus, outs, strict=True)]


def check_jsonschema(dir_: Path, array_path: Path, n_records: int, n_cjs: int) -> tuple[float, float]:
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
    warm(target)
    with Timer() as t:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"check-jsonschema failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    scale = n_records / n_cjs
    return t.wall * scale, t.cpu * scale


# VmHWM is this process's own peak RSS (ru_maxrss would include the parent's at fork time); validate's worker
# processes are its reaped children: RUSAGE_CHILDREN's ru_maxrss is the largest one's peak, counted once per
# worker (an upper bound: forked workers share pages with the parent)
_RSS_SCRIPT = """
import os, resource, sys, time
from minicpm_recipes.data import fastpath
from minicpm_recipes.data.validate import validate_file
workers = fastpath.worker_count(os.path.getsize(sys.argv[1]))
w, t = time.perf_counter(), time.process_time()
r = validate_file(sys.argv[1], max_errors=100)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = time.process_time() - t + kids.ru_utime + kids.ru_stime
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(r.records, r.invalid, time.perf_counter() - w, cpu, hwm / 1024, workers * kids.ru_maxrss / 1024, workers)
"""


def peak_rss(path: Path) -> tuple[int, int, float, float, float, float, int]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    records, invalid, wall, cpu, rss_mb, workers_mb, workers = out.stdout.split()
    return int(records), int(invalid), float(wall), float(cpu), float(rss_mb), float(workers_mb), int(workers)


def main() -> int:
    n = int(os.environ.get("BENCH_VALIDATE_RECORDS", "200000"))
    big_mb = int(os.environ.get("BENCH_VALIDATE_BIG_MB", "2048"))
    n_cjs = min(n, int(os.environ.get("BENCH_VALIDATE_CJS_RECORDS", str(n))))
    repeat = max(1, int(os.environ.get("BENCH_VALIDATE_REPEAT", "3")))
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
        from minicpm_recipes.data import fastpath

        workers = fastpath.worker_count(lines_path.stat().st_size)
        ours_by_file = {}
        print(f"targets apply to wall-clock seconds, best of {repeat} (orjson and validate alternately); CPU seconds "
              f"(process + children) in brackets; {os.cpu_count()} CPUs, validate uses "
              f"{workers or 'no'} worker processes; the machine may be shared")
        for path in (array_path, lines_path):
            warm(path)
            (w_parse, c_parse, _), (w_ours, c_ours, result) = best_of([orjson_parse, our_validate], path, repeat)
            assert result.ok and result.records == n, (result.records, result.problems[:3])
            ratio = w_ours / w_parse
            ours_by_file[path] = (w_ours, c_ours)
            ok &= ratio <= MAX_PARSE_RATIO
            print(f"{path.name}: orjson parse {w_parse:.2f} s [{c_parse:.2f} s CPU], validate {w_ours:.2f} s "
                  f"[{c_ours:.2f} s CPU] -> {ratio:.2f}x orjson (CPU {c_ours / c_parse:.2f}x) "
                  f"(target <= {MAX_PARSE_RATIO}x) {'ok' if ratio <= MAX_PARSE_RATIO else 'TOO SLOW'}")
        w_cjs, c_cjs = check_jsonschema(dir_, array_path, n, n_cjs)
        w_ours, c_ours = ours_by_file[array_path]
        speedup = w_cjs / w_ours
        scaled = "" if n_cjs == n else f" (ran on {n_cjs} records, scaled)"
        print(f"check-jsonschema on {array_path.name}: {w_cjs:.1f} s [{c_cjs:.1f} s CPU]{scaled} -> validate is "
              f"{speedup:.1f}x faster (CPU {c_cjs / c_ours:.1f}x) (target >= {MIN_CJS_SPEEDUP:.0f}x) "
              f"{'ok' if speedup >= MIN_CJS_SPEEDUP else 'TOO SLOW'}")
        ok &= speedup >= MIN_CJS_SPEEDUP
        if big_mb:
            big = dir_ / "big.json"
            t = time.perf_counter()
            n_big = write_big_array(big, big_mb << 20)
            print(f"generated {big.name}: {big.stat().st_size / 1e9:.2f} GB, {n_big} records "
                  f"({time.perf_counter() - t:.1f} s)")
            warm(big)
            records, invalid, wall, cpu, rss_main, rss_workers, n_workers = peak_rss(big)
            assert records == n_big and invalid == 0, (records, n_big, invalid)
            rss = rss_main + rss_workers
            print(f"{big.name}: validate {wall:.1f} s [{cpu:.1f} s CPU], peak RSS {rss:.0f} MB = {rss_main:.0f} MB "
                  f"+ {n_workers} workers {rss_workers:.0f} MB (target < {MAX_RSS_MB:.0f} MB) "
                  f"{'ok' if rss < MAX_RSS_MB else 'TOO MUCH'}")
            ok &= rss < MAX_RSS_MB
            big.unlink()
    finally:
        if not keep:
            shutil.rmtree(dir_, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
