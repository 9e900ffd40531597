"""utils/processes.py: a child run by a script that is stopped is stopped with everything it started."""
import signal
import subprocess
import sys
import time

import pytest
from _processes import alive

from utils.processes import run_in_session

# A child that starts a grandchild (a trainer's loader worker, say), writes both pids, then waits.
_PARENT = """import subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(f"{__import__('os').getpid()} {kid.pid}")
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_caller_stops_the_child_and_what_it_started(tmp_path):
    """bench_fast_path.py stopped by SIGTERM left its trainer run (and that run's own processes) training:
    subprocess.run kills the child alone on an interrupt."""
    pids = tmp_path / "pids"

    def interrupt_once_started(signum, frame):
        while not pids.exists() or not pids.read_text():
            time.sleep(0.05)  # the child has not written its pids yet: the test needs them
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt_once_started)
    signal.alarm(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_session([sys.executable, "-c", _PARENT, str(pids)], grace=5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    child, grandchild = map(int, pids.read_text().split())
    deadline = time.monotonic() + 30
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # the grandchild's SIGTERM is delivered, not yet acted on
    assert not alive(child) and not alive(grandchild)


def test_a_run_to_its_end_gives_what_subprocess_run_gives():
    done = run_in_session([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], stdout=subprocess.PIPE,
                          text=True)
    assert (done.returncode, done.stdout) == (3, "out\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    """bench_train's --variant-timeout and gpu_guarantees' --run-timeout (subprocess.run's timeout) killed the child
    alone: a trainer's loader workers went on."""
    pids = tmp_path / "pids"
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_session([sys.executable, "-c", _PARENT, str(pids)], grace=5, timeout=3)
    child, grandchild = map(int, pids.read_text().split())
    deadline = time.monotonic() + 30
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child) and not alive(grandchild)
