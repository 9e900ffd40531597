"""Child processes a script starts and must not leave behind: each runs in a session of its own
(:func:`run_in_session`), and stopping it stops everything it started (:func:`stop_session`: its data-loader
workers, torch.compile's workers, a browser's renderers). Standard library only."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Sequence


def stop_session(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``proc``'s whole session (it was started with ``start_new_session=True``), then SIGKILL it if
    it has not exited within ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def run_in_session(cmd: Sequence[str], grace: float = 10.0, timeout: float | None = None,
                   **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, ...)`` in a session of its own: when the caller is stopped while it runs (Ctrl-C,
    or SIGTERM raised as :class:`utils.errors.StopSignal`), the child and every process it started are stopped
    (:func:`stop_session`) before the exception goes on; ``subprocess.run`` killed the child alone, and its own
    children (a trainer's loader and compile workers) went on. A Ctrl-C at the terminal reaches this process
    only: the child is in another process group. Past ``timeout`` seconds the session is stopped the same way and
    ``subprocess.TimeoutExpired`` raised (``subprocess.run``'s timeout, too, killed the child alone)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop_session(proc, grace)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
