"""Overhead of `minicpm-recipes train CONFIG` over `llamafactory-cli train CONFIG`: time to first optimizer step.

Both run the same rendered config (the bundled tiny model, the demo SFT data, CPU, logging_steps=1), side by
side in one run, alternating which goes first. The clock starts when the process is started and stops when
LLaMA-Factory's trainer_log.jsonl in the output folder gets its first line (written by its LogCallback after
the first optimizer step); then the run is stopped. The preflight alone (`minicpm-recipes train --dry-run`,
which is the validation: LLaMA-Factory's parser, dataset registration and validation, cross-field rules) is
timed the same way.

Target: minicpm-recipes <= llamafactory-cli * 1.05 + validation time, i.e. the only overhead is the validation
plus at most 5%. Prints the ratio minicpm-recipes / llamafactory-cli.

Environment: BENCH_TRAIN_REPEAT (3: runs of each; medians are compared), BENCH_TRAIN_TIMEOUT (600 s per run),
BENCH_TRAIN_DIR (work folder; default a temporary folder, removed afterwards).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_EXTRA = 0.05  # allowed overhead beyond validation, as a fraction of llamafactory-cli's time
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DISABLE_VERSION_CHECK="1")
    return env


def _render(work: Path) -> Path:
    model = work / "tiny"
    subprocess.run([str(BIN / "minicpm-recipes"), "tiny-model", str(model)], check=True, capture_output=True,
                   env=_env())
    sets = ["bf16=false", "use_cpu=true", "max_steps=1000", "logging_steps=1", "save_steps=1000", "max_samples=40",
            "cutoff_len=512", "preprocessing_num_workers=null", "dataloader_num_workers=0",
            "gradient_accumulation_steps=1", "val_size=null", "eval_strategy=null", "eval_steps=null",
            "per_device_eval_batch_size=null"]
    args = [str(BIN / "minicpm-recipes"), "render", "sft", "--model", str(model), "--template", "cpm4",
            "--dataset-dir", str(REPO / "datasets" / "demo"), "--output-dir", str(work / "unused"), "-o",
            str(work / "configs")]
    for s in sets:
        args += ["--set", s]
    subprocess.run(args, check=True, capture_output=True, env=_env())
    return work / "configs" / "tiny_lora_sft.yaml"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def time_to_first_step(argv: list[str], output_dir: Path, timeout: float) -> float:
    """Seconds from start until output_dir/trainer_log.jsonl has a line; the run is stopped then."""
    log = output_dir / "trainer_log.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            start_new_session=True)
    try:
        while True:
            if log.is_file() and log.stat().st_size > 0:
                return time.perf_counter() - start
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode} before the first step:\n{err}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{' '.join(argv)}: no optimizer step within {timeout:.0f} s")
            time.sleep(0.02)
    finally:
        _stop(proc)
        proc.stderr.close()


def time_validation(config: Path, timeout: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "minicpm-recipes"), "train", str(config), "--dry-run"], capture_output=True,
                          text=True, env=_env(), timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"preflight failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    repeat = int(os.environ.get("BENCH_TRAIN_REPEAT", "3"))
    timeout = float(os.environ.get("BENCH_TRAIN_TIMEOUT", "600"))
    given = os.environ.get("BENCH_TRAIN_DIR")
    work = Path(given) if given else Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        config = _render(work)
        lf, mr, val = [], [], []
        for i in range(repeat):
            runs = [("lf", [str(BIN / "llamafactory-cli"), "train", str(config)]),
                    ("mr", [str(BIN / "minicpm-recipes"), "train", str(config)])]
            if i % 2:
                runs.reverse()
            for name, argv in runs:
                out = work / f"out-{name}-{i}"
                seconds = time_to_first_step(argv + [f"output_dir={out}"], out, timeout)
                (lf if name == "lf" else mr).append(seconds)
                print(f"  run {i + 1}: {'llamafactory-cli' if name == 'lf' else 'minicpm-recipes '} train: "
                      f"first step after {seconds:6.2f} s", flush=True)
            val.append(time_validation(config, timeout))
            print(f"  run {i + 1}: minicpm-recipes train --dry-run (validation): {val[-1]:6.2f} s", flush=True)
    finally:
        if not given:
            shutil.rmtree(work, ignore_errors=True)
    t_lf, t_mr, t_val = statistics.median(lf), statistics.median(mr), statistics.median(val)
    # paired: each repetition ran both back to back, so their difference is less exposed to machine load drift
    overhead = statistics.median(m - f for m, f in zip(mr, lf, strict=True))
    budget = t_val + t_lf * MAX_EXTRA
    ratio = t_mr / t_lf
    ok = overhead <= budget
    print(f"time to first optimizer step (median of {repeat}): llamafactory-cli {t_lf:.2f} s, "
          f"minicpm-recipes {t_mr:.2f} s; validation alone {t_val:.2f} s")
    print(f"ratio minicpm-recipes / llamafactory-cli: {ratio:.3f}; overhead (median of paired differences) "
          f"{overhead:+.2f} s (target <= validation {t_val:.2f} s + 5% {t_lf * MAX_EXTRA:.2f} s = {budget:.2f} s): "
          f"{'ok' if ok else 'OVER TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
