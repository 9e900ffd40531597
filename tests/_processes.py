"""Child processes for the tests: run a script under a deadline, kill whole process trees, free ports.

torchrun starts its ranks in sessions of their own, so a test that gives up on a hung run must find
and kill them itself, or they outlive the test (and hold its pipes open).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
HANG = 90  # seconds: far beyond the few seconds the tests' runs take, short of a CI job's patience


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children before grandchildren."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parent_of.items() if pp in frontier]
        found += children
        frontier = children
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its ranks in sessions of their own)."""
    for p in [*reversed(descendants(pid)), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that stands for a script started in a terminal: the signals a terminal's
    process starts with at their defaults. A suite run under ``nohup`` (SIGHUP ignored) or as a background job
    of a non-interactive shell (SIGINT ignored) passes those on to every child, and the scripts rightly keep a
    signal they were started to ignore: a test of what SIGHUP or Ctrl-C does would then test nothing of it."""
    for name in ("SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def run_script(cmd: list[str], timeout: float = HANG) -> subprocess.CompletedProcess:
    """``cmd`` in its own session, killed with everything it started when it outlives ``timeout``
    (so a hang fails the test instead of leaving loader workers behind)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"still running after {timeout} s (hung):\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its parent is gone as a process; Linux, reads /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
