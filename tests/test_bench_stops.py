"""A bench script stopped (Ctrl-C, SIGTERM) while one of its measuring processes runs stops that process and what it
started, and says so in one line: bench_inference's path, bench_train's variant, memory_coefficients' case and
gpu_guarantees' trainer run went on alone (for minutes) after the script had died."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from _bench_scripts import load_bench_script
from _processes import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# What stands for the measuring process: it starts a grandchild (a loader worker, say), writes both pids, waits.
CHILD = """import os, subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
path = os.environ["BENCH_TEST_PIDS"]
open(path + ".tmp", "w").write(f"{os.getpid()} {kid.pid}")
os.replace(path + ".tmp", path)
time.sleep(120)
"""


def _as_child(name: str, child: Path, monkeypatch) -> tuple[object, list[str]]:
    """The script ``name`` with ``child`` for its measuring process, and flags that reach it at once."""
    bench = load_bench_script(name, monkeypatch)
    if name == "gpu_guarantees":
        monkeypatch.setattr(bench.Runs, "command", lambda self, *a: [sys.executable, str(child)])
        monkeypatch.setattr(bench, "build_demo_data", lambda *a, **kw: {})
        return bench, ["--device", "cpu", "--checks", "resume-eager"]
    monkeypatch.setattr(bench, "__file__", str(child))  # the script runs itself: [python, __file__, ...]
    flags = {"bench_inference": ["--size", "8", "--repeats", "1", "--rounds", "1", "--paths", "plain"],
             "bench_train": ["--variants", "engine", "--tiny-iters", "0"],
             "memory_coefficients": ["--kinds", "restore"]}
    return bench, flags[name]


@pytest.mark.parametrize("name", ["bench_inference", "bench_train", "memory_coefficients", "gpu_guarantees"])
def test_a_stop_while_a_measuring_process_runs_stops_it_and_what_it_started(name, tmp_path, monkeypatch, capsys):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    pids = tmp_path / "pids"
    monkeypatch.setenv("BENCH_TEST_PIDS", str(pids))
    bench, flags = _as_child(name, child, monkeypatch)
    kept = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)}

    def stop_once_started(signum, frame):
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, stop_once_started)
    signal.alarm(1)
    try:
        status = bench.main(flags)
    finally:
        signal.alarm(0)
        for s, handler in kept.items():  # the scripts take SIGTERM and SIGHUP for the process
            signal.signal(s, handler)
    ran, grandchild = map(int, pids.read_text().split())
    deadline = time.monotonic() + 30
    while (alive(ran) or alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in (ran, grandchild) if alive(p)]
    for p in left:  # not left behind by a failing test either
        os.kill(p, signal.SIGKILL)
    assert left == [] and status == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: interrupted"


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_loader_bench_stopped_removes_its_synthetic_layout(signum, status, tmp_path, monkeypatch, capsys):
    """SIGTERM killed bench_loader without its cleanup: the synthetic layout (MBs of images in /tmp) stayed."""
    bench = load_bench_script("bench_loader", monkeypatch)
    made = []

    def mkdtemp(prefix):
        made.append(tmp_path / f"{prefix}x")
        made[-1].mkdir()
        return str(made[-1])

    def stopped(*a, **kw):
        os.kill(os.getpid(), signum)  # delivered here, in the main thread, as the timing runs
        time.sleep(5)
    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(bench, "build_layout", lambda root, *a: {})
    monkeypatch.setattr(bench, "time_loader", stopped)
    kept = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def unhandled(signum, frame):  # SIGTERM's default, killing the process, would kill the tests too
        raise SystemExit("SIGTERM not taken by the script: it would have been killed without its cleanup")
    signal.signal(signal.SIGTERM, unhandled)
    try:
        assert bench.main(["--files", "1", "--workers", "0", "--device", "cpu"]) == status
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
    assert len(made) == 1 and not made[0].exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("error: stopped by SIGTERM" if signum == signal.SIGTERM else "error: interrupted"), last
