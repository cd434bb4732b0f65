"""`launch(plan)`: exit codes pass through, signals reach every process of the run, nothing outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest

from minicpm_recipes.launch.engines import Plan, Topology
from minicpm_recipes.launch.run import launch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

# a fake training job: starts a grandchild (like torchrun's workers), records both pids, then waits
FAKE_JOB = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    pidfile, mode = sys.argv[1], sys.argv[2]
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"])
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {worker.pid} {os.environ.get('PLAN_VAR', '')}")
    os.replace(pidfile + ".tmp", pidfile)
    if mode.startswith("exit"):
        sys.exit(int(mode[4:]))  # leaves the worker behind on purpose
    while True:
        time.sleep(0.1)
""")

DRIVER = textwrap.dedent("""
    import sys
    from minicpm_recipes.launch.engines import Plan, Topology
    from minicpm_recipes.launch.run import launch
    topo = Topology(nnodes=1, node_rank=0, nproc_per_node=1, master_addr="127.0.0.1", master_port=None)
    plan = Plan(engine="llamafactory", argv=tuple(sys.argv[2:]), env={"PLAN_VAR": "from-plan"}, topology=topo,
                config="x.yaml")
    sys.exit(launch(plan, grace_s=float(sys.argv[1])))
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def dispositions(ignored: tuple[int, ...]) -> None:
    """In the driver before exec: the forwarded signals at their defaults (as from a terminal, whatever
    ran these tests: a shell's background job inherits SIGINT ignored), `ignored` ones ignored (as nohup does)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)


@pytest.fixture()
def job(tmp_path):
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    started = []

    def start(mode: str, grace: float = 30.0, ignore: tuple[int, ...] = ()):
        pidfile = tmp_path / f"pids-{mode}"
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(grace), sys.executable, str(script),
                                   str(pidfile), mode], cwd=tmp_path, preexec_fn=partial(dispositions, ignore))
        started.append(driver)
        assert wait_for(pidfile.exists), "the fake job did not start"
        child, worker, var = pidfile.read_text().split()
        return driver, int(child), int(worker), var

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_stops_every_process(job, sig, status):
    driver, child, worker, var = job("wait")
    assert var == "from-plan"  # the plan's environment reaches the child
    assert os.getpgid(child) == child != os.getpgid(driver.pid)  # its own process group
    assert os.getpgid(worker) == child
    driver.send_signal(sig)
    assert driver.wait(timeout=30) == status
    assert wait_for(lambda: not alive(child) and not alive(worker), 10)


def test_a_signal_ignored_at_start_stays_ignored_like_under_nohup(job):
    driver, child, worker, _ = job("wait", ignore=(signal.SIGHUP,))
    driver.send_signal(signal.SIGHUP)  # the terminal closing under `nohup minicpm-recipes train ...`
    time.sleep(1.0)
    assert driver.poll() is None and alive(child) and alive(worker)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) == 143
    assert wait_for(lambda: not alive(child) and not alive(worker), 10)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(job):
    driver, child, worker, _ = job("ignore-term", grace=1.0)
    start = time.monotonic()
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) == 143
    assert time.monotonic() - start >= 0.9
    assert wait_for(lambda: not alive(child) and not alive(worker), 10)


def test_second_signal_kills_at_once(job):
    driver, child, worker, _ = job("ignore-term", grace=60.0)
    driver.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert driver.poll() is None  # still in its grace period
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=10) == 143
    assert wait_for(lambda: not alive(child) and not alive(worker), 10)


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_passes_through_and_leftovers_are_reaped(job, code):
    driver, child, worker, _ = job(f"exit{code}")
    assert driver.wait(timeout=30) == code
    assert wait_for(lambda: not alive(worker), 10)  # the worker the job left behind is gone too


def test_sigkill_of_minicpm_recipes_takes_the_child_along(job):
    driver, child, worker, _ = job("wait")
    driver.kill()
    driver.wait(timeout=10)
    assert wait_for(lambda: not alive(child), 10)


def test_child_killed_by_a_signal_reports_128_plus_n(tmp_path):
    topo = Topology(nnodes=1, node_rank=0, nproc_per_node=1, master_addr="127.0.0.1", master_port=None)
    plan = Plan(engine="llamafactory", topology=topo, config="x.yaml", env={},
                argv=(sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert launch(plan) == 137
    plan = Plan(engine="llamafactory", topology=topo, config="x.yaml", env={},
                argv=(sys.executable, "-c", "import sys; sys.exit(5)"))
    assert launch(plan) == 5


def test_missing_launcher_is_a_user_error():
    from minicpm_recipes.errors import UserError

    topo = Topology(nnodes=1, node_rank=0, nproc_per_node=1, master_addr="127.0.0.1", master_port=None)
    plan = Plan(engine="llamafactory", topology=topo, config="x.yaml", env={},
                argv=("definitely-not-a-command-xyz", "train"))
    with pytest.raises(UserError, match="not found"):
        launch(plan)
