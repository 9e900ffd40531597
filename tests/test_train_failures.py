"""The trainer fails promptly and keeps what the user has: loader-worker errors end the run (no hang),
with one ``error:`` line naming the file, and the last good checkpoint untouched."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_data import make_train_tree, train_flags
from test_ddp import TORCHRUN, free_port

REPO = Path(__file__).resolve().parents[1]
HANG = 90  # seconds: far beyond the few seconds these runs take, short of a CI job's patience


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


def run_script(cmd: list[str], timeout: float = HANG) -> subprocess.CompletedProcess:
    """``cmd`` in its own session, killed with everything it started when it outlives ``timeout``
    (so a hang fails the test instead of leaving loader workers behind)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its ranks in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"still running after {timeout} s (hung):\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def truncate_rainy(data: dict[str, Path]) -> list[Path]:
    """Cut every rainy image after its header: the start-up check (which reads headers) passes and
    decoding fails inside a loader worker."""
    files = sorted((data["derain"] / "rainy").glob("*.png"))
    for f in files:
        f.write_bytes(f.read_bytes()[:60])
    return files


@pytest.fixture
def data(tmp_path):
    return make_train_tree(tmp_path / "data")


def test_a_failing_loader_worker_ends_the_run_and_keeps_the_last_checkpoint(data, tmp_path):
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3"]
    first = run_script([sys.executable, "trainer_bary.py", *flags, "--nEpochs", "1"])
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "ckpt" / "epoch_001.pth"
    kept, latest = ckpt.read_bytes(), (tmp_path / "ckpt" / "latest").read_bytes()

    bad = truncate_rainy(data)
    second = run_script([sys.executable, "trainer_bary.py", *flags, "--nEpochs", "2", "--resume", "auto",
                         "--workers", "2"])
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and any(str(f) in errors[0] for f in bad), second.stderr
    assert "Traceback" not in second.stderr and "DataLoader worker" not in second.stderr
    assert ckpt.read_bytes() == kept and (tmp_path / "ckpt" / "latest").read_bytes() == latest
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pth")) == ["epoch_001.pth"]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not available")
def test_a_failing_loader_worker_ends_a_ddp_run(data, tmp_path):
    truncate_rainy(data)
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3", "--nEpochs", "1", "--workers", "2"]
    done = run_script([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                       "trainer_bary_ddp.py", *flags])
    assert done.returncode != 0
    assert any(line.startswith("error: cannot decode image") and "rainy" in line
               for line in done.stderr.splitlines()), done.stderr
    assert not list((tmp_path / "ckpt").glob("*.pth"))


def test_a_second_trainer_in_a_busy_output_folder_is_refused_until_the_holder_dies(data, tmp_path):
    flags = train_flags(data, tmp_path) + ["--nEpochs", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "trainer_bary.py", *flags, "--iters-per-epoch", "100000"], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "ckpt" / "log.jsonl"
    try:
        deadline = time.monotonic() + HANG
        while not (log.is_file() and '"kind": "iter"' in log.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first trainer ended early"
            time.sleep(0.05)
        before = log.read_bytes()
        second = run_script([sys.executable, "trainer_bary.py", *flags, "--iters-per-epoch", "1"])
        assert second.returncode == 1
        assert f"error: --output-dir {tmp_path / 'ckpt'} is in use by another trainer (PID {first.pid} " \
            in second.stderr, second.stderr
        assert log.read_bytes().startswith(before)  # the first run's log is still its own
        assert not list((tmp_path / "ckpt").glob("log.before-*"))
    finally:
        first.kill()  # as kill -9: the lock file stays behind, the lock itself goes with the process
        first.wait()
    third = run_script([sys.executable, "trainer_bary.py", *flags, "--iters-per-epoch", "1"])
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "ckpt" / "epoch_001.pth").is_file()
