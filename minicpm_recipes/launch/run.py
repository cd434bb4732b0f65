"""Run a launch plan: the only part of `minicpm_recipes.launch` that starts processes.

The child starts in its own process group (its own session), so that a signal reaches every process it
spawns (torchrun workers, accelerate's processes, dataloader workers). SIGINT (Ctrl-C), SIGTERM and SIGHUP
sent to minicpm-recipes are forwarded to that whole group; if the group has not exited `grace_s` seconds
later, or a second signal arrives, it is killed with SIGKILL. Processes of the group still alive once the
child has exited are killed too, so nothing outlives the command. On Linux the child also dies with
minicpm-recipes itself (PR_SET_PDEATHSIG), so a SIGKILL of minicpm-recipes (which cannot be forwarded) does not
leave the training running. A signal ignored when minicpm-recipes starts (SIGHUP under `nohup`) stays ignored.

Exit status: the child's own exit code; 128+N when the child died of signal N or when minicpm-recipes
forwarded signal N (130 for Ctrl-C, 143 for SIGTERM), as a shell reports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from ..errors import UserError
from .engines import Plan

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when minicpm-recipes dies, even of a SIGKILL that cannot be forwarded."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: nothing to do
        pass


def child_env(plan: Plan, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(plan.env)
    return env


def launch(plan: Plan, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
           grace_s: float = 30.0) -> int:
    """Run `plan.argv` with `plan.env` on top of `env` (default: this process's environment); return its status."""
    return run_process(list(plan.argv), child_env(plan, env), cwd=cwd, grace_s=grace_s)


def run_process(argv: list[str], env: Mapping[str, str], *, cwd: str | None = None, grace_s: float = 30.0) -> int:
    """Run `argv` as described in this module's docstring (own process group, signals forwarded, dies with
    us); return its exit status. `train` and `serve` run their child this way."""
    sys.stdout.flush()
    sys.stderr.flush()
    received: list[int] = []
    deadline: list[float] = []
    started: list[int] = []  # the child's process group, once it exists

    def forward(signum, _frame):  # runs in the main thread between waits
        received.append(signum)
        if not started:  # before the child exists: it is stopped as soon as it does
            return
        if len(received) == 1:
            deadline.append(time.monotonic() + grace_s)
            _killpg(started[0], signum)
        else:  # a second signal: stop now
            _killpg(started[0], signal.SIGKILL)

    # the handlers go in before the child starts, so that no signal falls between the two; a signal this
    # process ignores (`nohup` ignores SIGHUP, a shell's background job SIGINT) stays ignored, as the child
    # inherits it ignored too
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, forward)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    try:
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    except FileNotFoundError:
        restore()
        raise UserError(f"cannot run {argv[0]!r}: not found; install LLaMA-Factory's training extras "
                        "(pip install 'minicpm-recipes[train]') in this environment") from None
    except PermissionError:
        restore()
        raise UserError(f"cannot run {argv[0]!r}: permission denied") from None
    except BaseException:
        restore()
        raise
    pgid = proc.pid
    started.append(pgid)
    if received:  # a signal came while the child was starting
        deadline.append(time.monotonic() + grace_s)
        _killpg(pgid, received[0] if len(received) == 1 else signal.SIGKILL)
    try:
        while True:
            try:
                returncode = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    _killpg(pgid, signal.SIGKILL)
                    deadline.clear()
    finally:
        restore()
        # nothing of the child's group may outlive the command
        if _killpg(pgid, 0):
            _killpg(pgid, signal.SIGTERM)
            end = time.monotonic() + 5
            while time.monotonic() < end and _killpg(pgid, 0):
                time.sleep(0.1)
            _killpg(pgid, signal.SIGKILL)
    if received:
        return 128 + int(received[0])
    if returncode < 0:
        return 128 + (-returncode)
    return returncode
