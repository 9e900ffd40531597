"""Checkpoints: format, rotation, --resume (ours, the reference's, missing), SIGTERM, NaN."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _processes import as_in_a_terminal
from _train_data import make_train_tree, make_val_tree, train_flags

import tester_bary
from net.presets import build_model
from utils.checkpoints import CheckpointError, list_checkpoints, read_checkpoint, read_latest
from utils.compiled import compile_cache_dir
from utils.errors import UserError
from utils.streams import PIPE_CLOSED_STATUS
from utils.train import engine, start
from utils.train.options import ConfigError, get_args_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
ITERS = 3  # per epoch




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_tree(tmp_path_factory.mktemp("resume_data"))


def run(data, out: Path, *extra: str, iters: int = ITERS) -> int:
    flags = train_flags(data, out) + ["--iters-per-epoch", str(iters), *extra]
    return engine.main(get_args_parser().parse_args(flags))


def final_state(out: Path) -> dict:
    return read_checkpoint(read_latest(out / "ckpt"))


def assert_same_training_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["iteration"], a["global_step"]) == (b["epoch"], b["iteration"], b["global_step"])
    for key in ("model", "potentials"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for key in ("optimizer", "potentials_optimizer"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            for field, v in sa[idx].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[idx][field])), f"{key}[{idx}].{field}"
        assert a[key]["param_groups"] == b[key]["param_groups"]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two uninterrupted epochs; validation on, to show it does not disturb training."""
    out = tmp_path_factory.mktemp("straight")
    deg, tar = make_val_tree(out)
    assert run(data, out, "--nEpochs", "2", "--degset", str(deg), "--tarset", str(tar)) == 0
    return out


def test_checkpoint_format_and_records(straight):
    ckpt_dir = straight / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_001.pth", "epoch_002.pth"]
    latest = json.loads((ckpt_dir / "latest").read_text())
    assert (latest["checkpoint"], latest["at"], latest["epochs_done"]) == ("epoch_002.pth", "end of epoch 2", 2)
    ck = torch.load(ckpt_dir / "epoch_002.pth", weights_only=True)
    assert {"format_version", "model", "potentials", "optimizer", "potentials_optimizer", "scaler", "epoch",
            "iteration", "global_step", "rng", "model_config", "backbone", "args", "lambdas"} <= set(ck)
    assert (ck["epoch"], ck["iteration"], ck["global_step"]) == (2, 0, 2 * ITERS)
    assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert ck["args"]["seed"] == 0 and ck["backbone"] == "BaryNet"
    build_model("BaryNet", "tiny").load_state_dict(ck["model"])  # the tester's path: weights by key 'model'
    records = [json.loads(line) for line in (ckpt_dir / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    iters = [r for r in records if r["kind"] == "iter"]
    assert [r["epoch"] for r in epochs] == [1, 2] and len(iters) == 2 * ITERS
    assert all(r["val_psnr"] > 5 for r in epochs)
    assert {"map", "l1", "potentials", "congruence", "lr", "sec"} <= set(iters[0])
    runs = [r for r in records if r["kind"] == "run"]  # one per start, with the objective it trains
    assert len(runs) == 1 and (runs[0]["reg_weight"], runs[0]["potentials_steps"]) == (0.05, 2)
    assert (ck["args"]["objective"], ck["args"]["reg_weight"], ck["args"]["potentials_steps"]) == ("single", 0.05, 2)
    assert (straight / "figs" / "train_losses.png").stat().st_size > 1000


def test_logged_validation_psnr_is_what_the_tester_prints(straight, tmp_path):
    """One evaluation protocol: the trainer validates through the tester's own scoring."""
    records = [json.loads(line) for line in (straight / "ckpt" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["kind"] == "epoch"][-1]["val_psnr"]
    args = tester_bary.get_args_parser().parse_args([
        "--model", str(straight / "ckpt" / "epoch_002.pth"), "--degset", str(straight / "val" / "input"),
        "--tarset", str(straight / "val" / "target"), "--save", str(tmp_path / "test"), "--device", "cpu",
        "--no-progress"])
    results = tester_bary.main(args)
    (row,) = results["tasks"].values()
    assert row["count"] == 2
    assert row["psnr"] == pytest.approx(logged, rel=0, abs=1e-9)


def test_resume_between_epochs_is_exact(data, straight, tmp_path):
    assert run(data, tmp_path, "--nEpochs", "1") == 0
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto") == 0
    assert_same_training_state(final_state(tmp_path), final_state(straight))


def wait_for_iterations(proc: subprocess.Popen, log: Path, count: int = 2, timeout: float = 120) -> None:
    """Wait until the trainer ``proc`` has logged ``count`` iterations in ``log`` (which also holds a "run" record
    per start), it has ended, or ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count('"kind": "iter"') >= count:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_exact(data, tmp_path):
    iters = 24
    ref = tmp_path / "ref"
    assert run(data, ref, "--nEpochs", "1", iters=iters) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "trainer_bary.py"), *train_flags(data, out), "--nEpochs", "1",
           "--iters-per-epoch", str(iters)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "ckpt" / "log.jsonl"
    try:
        wait_for_iterations(proc, log)
        assert proc.poll() is None, "the run ended before it could be signalled:\n" + proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:  # a failed wait must not leave the trainer running into the next tests
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "=> stopped by SIGTERM at epoch 1, iteration " in output
    saved = list_checkpoints(out / "ckpt")
    assert len(saved) == 1 and saved[0].name.startswith("iter_e001_i"), output
    done = read_checkpoint(saved[0])["iteration"]
    assert 2 <= done < iters

    assert run(data, out, "--nEpochs", "1", "--resume", "auto", iters=iters) == 0
    assert_same_training_state(final_state(out), final_state(ref))
    steps = [json.loads(line)["global_step"] for line in log.read_text().splitlines()
             if json.loads(line)["kind"] == "iter"]
    assert steps == list(range(1, iters + 1))  # every iteration once, none repeated after the resume


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX's")
def test_a_closed_terminal_stops_the_run_with_a_checkpoint(data, tmp_path):
    """An ssh session that dropped (SIGHUP to the trainer and its loader workers, and a terminal that fails every
    write) ended the run at once: the iterations since the last checkpoint were lost."""
    import pty
    import threading
    out = tmp_path / "hup"
    cmd = [sys.executable, str(REPO / "trainer_bary.py"), *train_flags(data, out), "--nEpochs", "1",
           "--iters-per-epoch", "400", "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    terminal, its_end = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=its_end, stderr=its_end,
                            start_new_session=True, preexec_fn=as_in_a_terminal)
    os.close(its_end)

    def drain():  # what a terminal shows; it stops when the terminal closes
        try:
            while os.read(terminal, 4096):
                pass
        except OSError:
            pass
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    log = out / "ckpt" / "log.jsonl"
    try:
        wait_for_iterations(proc, log)
        assert proc.poll() is None, "the run ended before its terminal closed"
        os.close(terminal)  # the terminal hangs up: writes to it fail from now on
        os.killpg(proc.pid, signal.SIGHUP)  # what the kernel sends the session's processes then
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    [saved] = list_checkpoints(out / "ckpt")
    assert saved.name.startswith("iter_e001_i") and read_checkpoint(saved)["iteration"] >= 2


@pytest.mark.slow
def test_an_output_pipe_whose_reader_went_stops_the_run_with_a_checkpoint(data, tmp_path):
    """``trainer_bary.py ... | tee run.txt`` and Ctrl-C: tee ends at once, the trainer finishes its iteration, and
    its next line to the pipe raised BrokenPipeError: a traceback, and no checkpoint of the iterations done."""
    out = tmp_path / "piped"
    # Without a terminal the trainer prints a progress line at most every 30 s (plain_line_due), so its next
    # line to the pipe came half a minute after tee went: the run prints one at every logged iteration here.
    every_iteration = ("import runpy, sys, utils.train.progress as p; p.plain_line_due.__defaults__ = (0.0,); "
                       "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", every_iteration, str(REPO / "trainer_bary.py"), *train_flags(data, out),
           "--nEpochs", "1", "--iters-per-epoch", "400"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=stderr)
    log = out / "ckpt" / "log.jsonl"
    try:
        wait_for_iterations(proc, log)
        assert proc.poll() is None, "the run ended before its reader went"
        proc.stdout.close()  # tee is gone: the trainer's next flush to the pipe fails
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == PIPE_CLOSED_STATUS, errors.read_text()  # the shell's status for a closed pipe
    assert errors.read_text() == ""  # no traceback, and nothing about the pipe on a terminal that may be gone
    [saved] = list_checkpoints(out / "ckpt")
    assert saved.name.startswith("iter_e001_i") and read_checkpoint(saved)["iteration"] >= 2


FAST = ("--compile", "default", "--compile-backend", "eager")  # the fast path's wiring, traced without kernels


def test_the_fast_path_resumes_and_trains_what_the_eager_engine_trains(data, straight, tmp_path, capsys):
    said = r"=> the first compiled iteration took \d+\.\d s, compiling included"
    assert run(data, tmp_path, "--nEpochs", "1", *FAST) == 0
    assert len(re.findall(said, capsys.readouterr().out)) == 1  # compiling time is reported, once per process
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", *FAST) == 0
    assert len(re.findall(said, capsys.readouterr().out)) == 1
    assert_same_training_state(final_state(tmp_path), final_state(straight))


def test_a_nan_on_the_fast_path_keeps_the_last_checkpoint(data, tmp_path):
    with pytest.raises(engine.NonFiniteLossError, match=r"global step 3\).*map=nan.*checked once per iteration"):
        run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--debug-nan-at", "3", *FAST, iters=4)
    saved = list_checkpoints(tmp_path / "ckpt")
    assert [p.name for p in saved] == ["iter_e001_i000002.pth"]
    ck = torch.load(saved[0], weights_only=True)
    assert ck["global_step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_a_stop_while_the_first_iteration_compiles_ends_it_at_once_and_later_ones_after_their_iteration(
        data, tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM while --compile compiled the first iteration (14 minutes of a tiny run on this busy CPU)
    was silent and waited for the compile to end: a scheduler's grace period ran out first. With nothing trained
    yet, the stop now ends the run at once; once compiled, it stops after the iteration, with a checkpoint."""
    real_step, calls = engine.train_step, []

    def signalled_at(n):
        def step(*a, **k):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)  # lands while the step runs, as when it comes mid-compile
            return real_step(*a, **k)
        return step

    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3", "--nEpochs", "1", *FAST]
    monkeypatch.setattr(engine, "train_step", signalled_at(1))
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 128 + signal.SIGTERM
    out, err = capsys.readouterr()
    assert "=> stopped while the first iteration compiled, before it trained anything: no checkpoint was written" \
        in out and err.strip().splitlines()[-1] == "error: stopped by SIGTERM", err
    assert len(calls) == 1 and list_checkpoints(tmp_path / "ckpt") == []

    calls.clear()
    monkeypatch.setattr(engine, "train_step", signalled_at(2))  # compiled already: the polite stop
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 0
    assert "stopped by SIGTERM at epoch 1, iteration 2" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["iter_e001_i000002.pth"]

    calls.clear()
    monkeypatch.setattr(engine, "train_step", signalled_at(1))  # a resumed run compiles again
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--resume", "auto"])) == 128 + signal.SIGTERM
    assert "anything: the checkpoints are as they were; continue with --resume auto" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["iter_e001_i000002.pth"]


def test_the_compile_time_is_said_by_compiled_runs_alone_and_the_cache_by_inductor_alone(data, tmp_path, capsys):
    """An eager run has nothing compiled: no "first compiled iteration" line (it would time an ordinary
    iteration as if it compiled); a compiled run on a backend that caches nothing (eager, aot_eager) says
    nothing of a cache a later run loads from."""
    assert run(data, tmp_path / "eager", "--nEpochs", "1", iters=2) == 0
    assert "compiled iteration" not in capsys.readouterr().out
    assert run(data, tmp_path / "fast", "--nEpochs", "1", *FAST, iters=2) == 0
    out = capsys.readouterr().out.splitlines()
    [line] = [x for x in out if "first compiled iteration" in x]
    assert re.fullmatch(r"=> the first compiled iteration took \d+\.\d s, compiling included", line), line
    # the start-up line named inductor's cache folder, where the eager backend writes nothing
    [start_line] = [x for x in out if x.startswith("=> --compile")]
    assert start_line == ("=> --compile default: the first iteration traces the losses' graphs (--compile-backend "
                          "eager builds no kernels and caches nothing); losses are checked once per iteration")
    inductor = engine.compile_start_line("default", "inductor")
    assert f"compiles the losses' graphs (minutes; cached under {compile_cache_dir()} for later runs" in inductor


def test_nan_stops_and_keeps_the_last_checkpoint(data, tmp_path, capsys):
    with pytest.raises(engine.NonFiniteLossError, match=r"epoch 1, iteration 3 \(global step 3\).*map=nan"):
        run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--debug-nan-at", "3", iters=5)
    saved = list_checkpoints(tmp_path / "ckpt")
    assert [p.name for p in saved] == ["iter_e001_i000002.pth"]
    ck = torch.load(saved[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", "auto", iters=5) == 0  # and it resumes
    args = get_args_parser().parse_args(train_flags(data, tmp_path / "cli") + [
        "--iters-per-epoch", "2", "--debug-nan-at", "1"])
    assert engine.run_cli(args) == 1
    assert "non-finite map loss" in capsys.readouterr().err


def test_rotation_keeps_a_bound(data, tmp_path):
    assert run(data, tmp_path, "--nEpochs", "2", "--save-every", "1", "--keep", "2", iters=3) == 0
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["iter_e002_i000002.pth", "epoch_002.pth"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_fresh_run_moves_an_earlier_runs_files_aside_and_overwrites_none(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261129-120000")  # three runs within one second
    ckpt, runs = tmp_path / "ckpt", []
    for seed in (1, 2, 3):
        assert run(data, tmp_path, "--nEpochs", "1", "--seed", str(seed), iters=1) == 0
        runs.append({name: data for name, data in snapshot(ckpt).items() if not name.startswith(".")})  # no lock
    assert {"epoch_001.pth", "latest", "log.jsonl"} <= runs[0].keys()
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["run.before-20261129-120000",
                                                                    "run.before-20261129-120000-2"]
    assert snapshot(ckpt / "run.before-20261129-120000") == runs[0]  # every file of run 1, none overwritten
    assert snapshot(ckpt / "run.before-20261129-120000-2") == runs[1]
    said = capsys.readouterr().out
    assert "(1 checkpoint, newest epoch_001.pth) were moved to run.before-20261129-120000-2/" in said


def test_an_earlier_run_without_a_checkpoint_is_not_offered_for_resuming(tmp_path):
    """A run that stopped before its first checkpoint left a log; the next fresh run moved it aside and said "to
    continue that run instead, pass --resume <that folder>", which then failed: the folder holds no checkpoint."""
    from utils.train.run_folder import start_fresh_outputs
    (tmp_path / "log.jsonl").write_text('{"kind": "run"}\n')
    said = []
    kept = start_fresh_outputs(tmp_path, said.append)
    assert (kept / "log.jsonl").is_file()
    assert said == [f"=> a fresh run: the earlier run's files in {tmp_path} (no checkpoint) were moved to {kept.name}/"]


def test_resuming_another_folders_checkpoint_moves_this_folders_run_aside(data, straight, tmp_path, capsys):
    """Resuming run A's checkpoint into run B's folder used to write A's continuation over B's checkpoints
    and rewind B's log; B's files are moved aside now, as a fresh run moves them, and A's log comes along."""
    assert run(data, tmp_path / "a", "--nEpochs", "1") == 0
    assert run(data, tmp_path / "b", "--nEpochs", "3", "--seed", "2", "--keep", "0") == 0
    b_before = {n: d for n, d in snapshot(tmp_path / "b" / "ckpt").items() if not n.startswith(".")}
    capsys.readouterr()
    assert run(data, tmp_path / "b", "--nEpochs", "2", "--resume", str(tmp_path / "a" / "ckpt" / "epoch_001.pth")) == 0
    assert "resuming" in capsys.readouterr().out
    [kept] = [p for p in (tmp_path / "b" / "ckpt").iterdir() if p.is_dir() and p.name.startswith("run.before-")]
    assert snapshot(kept) == b_before  # every file of run B, byte for byte
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "ckpt")] == ["epoch_002.pth"]
    assert_same_training_state(final_state(tmp_path / "b"), final_state(straight))
    records = [json.loads(line) for line in (tmp_path / "b" / "ckpt" / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["kind"] == "iter"] == list(range(1, 2 * ITERS + 1))


def test_resuming_an_older_checkpoint_moves_the_later_ones_aside(data, straight, tmp_path):
    """Resuming epoch_001 of a 3-epoch run used to leave the abandoned epoch_003 outranking the new
    checkpoints, and rotation then deleted epoch_001, the checkpoint resumed; the later ones move aside now."""
    assert run(data, tmp_path, "--nEpochs", "3", "--keep", "0") == 0
    ckpt = tmp_path / "ckpt"
    later = {n: (ckpt / n).read_bytes() for n in ("epoch_002.pth", "epoch_003.pth")}
    assert run(data, tmp_path, "--nEpochs", "2", "--keep", "2", "--resume", str(ckpt / "epoch_001.pth")) == 0
    assert [p.name for p in list_checkpoints(ckpt)] == ["epoch_001.pth", "epoch_002.pth"]
    assert read_latest(ckpt).name == "epoch_002.pth"
    [kept] = [p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("abandoned.before-")]
    assert {n: d for n, d in snapshot(kept).items() if n.endswith(".pth")} == later
    assert_same_training_state(final_state(tmp_path), final_state(straight))


def test_resuming_a_checkpoint_set_aside_as_abandoned_brings_its_log(data, tmp_path, capsys):
    """Resuming epoch_001 sets epoch_002 and epoch_003 aside in abandoned.before-*; resuming epoch_003 from there
    (the user changed their mind) used to start a log without that timeline's iterations, which the folder set
    aside did not hold: the log of the run as it was when its checkpoints were set aside is kept beside them."""
    assert run(data, tmp_path, "--nEpochs", "3", "--keep", "0") == 0
    ckpt = tmp_path / "ckpt"
    first = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert run(data, tmp_path, "--nEpochs", "2", "--keep", "0", "--resume", str(ckpt / "epoch_001.pth")) == 0
    [kept] = [p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("abandoned.before-")]
    said = capsys.readouterr().out
    assert run(data, tmp_path, "--nEpochs", "4", "--keep", "0", "--resume", str(kept / "epoch_003.pth")) == 0
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["kind"] == "iter"]
    assert steps == list(range(1, 4 * ITERS + 1))
    assert ([r for r in records if r["kind"] == "iter"][:3 * ITERS]
            == [r for r in first if r["kind"] == "iter"])  # the abandoned timeline's own records
    assert f"{kept.name}/log.jsonl" in said, said


def test_a_mistyped_resume_path_is_an_error_and_writes_nothing(data, tmp_path):
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    before = snapshot(tmp_path / "ckpt")
    for wrong in ("checkpoint/model_allBaryNet128__58_1.0.pt", str(tmp_path / "ckpt" / "epoch_01.pth")):
        with pytest.raises(CheckpointError, match="no such file or folder; nothing was written"):
            run(data, tmp_path, "--nEpochs", "2", "--resume", wrong, iters=1)
        assert snapshot(tmp_path / "ckpt") == before
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="that folder holds no checkpoint"):
        run(data, tmp_path, "--nEpochs", "2", "--resume", str(tmp_path / "empty"), iters=1)
    assert snapshot(tmp_path / "ckpt") == before
    # into a new folder: the failed start leaves no folder behind (it used to leave one holding its lock)
    with pytest.raises(CheckpointError, match="no such file or folder; nothing was written"):
        run(data, tmp_path / "new", "--nEpochs", "2", "--resume", str(tmp_path / "nope.pth"), iters=1)
    assert not (tmp_path / "new" / "ckpt").exists()


def test_a_missing_pretrained_file_is_an_error(data, tmp_path):
    with pytest.raises(ConfigError, match="--pretrained .*no such file"):
        run(data, tmp_path, "--nEpochs", "1", "--pretrained", str(tmp_path / "nope.pth"), iters=1)
    assert not (tmp_path / "ckpt" / "log.jsonl").exists()


def test_pretrained_takes_a_runs_folder_or_its_latest_as_model_and_resume_do(data, tmp_path, capsys):
    """--pretrained's help says "a checkpoint of any accepted format", yet a run's output folder (what --model and
    --resume take) was refused as "no such file; check the path"."""
    assert run(data, tmp_path / "a", "--nEpochs", "1", iters=1) == 0
    capsys.readouterr()
    folder = tmp_path / "a" / "ckpt"
    newest = folder / "epoch_001.pth"
    for given, said in ((folder, f"=> --pretrained {folder} is a folder: using its newest checkpoint, {newest}"),
                        (folder / "latest", f"=> --pretrained {folder / 'latest'} points to {newest}")):
        out = tmp_path / given.name
        assert run(data, out, "--nEpochs", "1", "--pretrained", str(given), iters=1) == 0
        lines = capsys.readouterr().out.splitlines()
        assert said in lines and f"=> --pretrained {newest}: network and potentials weights loaded" in lines, lines


def test_a_pretrained_file_of_another_backbone_is_named_as_such(data, tmp_path):
    """A PromptIR run's checkpoint given to a BaryNet run as --pretrained listed 54 missing keys and 33 shape
    mismatches before the file's own backbone."""
    from net.presets import build_model, model_config
    path = tmp_path / "prompt.pth"
    torch.save({"model": build_model("PromptIR", "tiny").state_dict(), "backbone": "PromptIR",
                "model_config": model_config("tiny", backbone="PromptIR")}, path)
    with pytest.raises(ConfigError) as refused:
        run(data, tmp_path, "--nEpochs", "1", "--pretrained", str(path), iters=1)
    assert str(refused.value) == (f"--pretrained {path}: the file holds a PromptIR network, and this run builds "
                                  f"BaryNet (--backbone BaryNet): pass --backbone PromptIR with its configuration, or "
                                  f"another checkpoint. The file records its network: --backbone PromptIR --preset "
                                  f"tiny")


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
def test_a_plain_state_dict_of_another_backbone_is_named_with_the_flags_that_load_it(data, tmp_path, flag):
    """A PromptIR state dict (no recorded backbone) given to a BaryNet run listed five of 54 missing keys, five of 12
    unexpected and five of 33 reshaped ones; it is named as the tester and the app name it (one message for all)."""
    path = tmp_path / "prompt.pth"
    torch.save(build_model("PromptIR", "tiny").state_dict(), path)
    with pytest.raises(CheckpointError) as refused:
        run(data, tmp_path / "out", "--nEpochs", "1", flag, str(path), iters=1)
    assert str(refused.value) == (f"{path} holds the weights of a PromptIR (dim=16, num_blocks=[1, 1, 1, 2]), not of "
                                  f"the BaryNet (dim=16, num_blocks=[1, 1, 1, 2]) these flags build: pass --backbone "
                                  f"PromptIR --preset tiny")


def test_a_pretrained_file_of_another_network_names_the_flags_it_records(data, tmp_path):
    """A paper-size checkpoint given to a tiny run said "Pick the matching --preset", though the file records it."""
    from net.presets import build_model, flags_for, model_config
    path = tmp_path / "wide.pth"
    torch.save({"model": build_model("BaryNet", "tiny", dim=24).state_dict(), "backbone": "BaryNet",
                "model_config": model_config("tiny", dim=24)}, path)
    with pytest.raises(CheckpointError, match=r"does not fit BaryNet .* for this checkpoint\. The file records its "
                                              r"network: --backbone BaryNet --preset tiny --dim 24$"):
        run(data, tmp_path, "--nEpochs", "1", "--pretrained", str(path), iters=1)
    assert flags_for(model_config("paper"), "BaryNet") == "--backbone BaryNet --preset paper"
    assert flags_for(model_config("tiny", backbone="PromptIR", dim=24), "PromptIR") == \
        "--backbone PromptIR --preset tiny --dim 24"  # not --preset paper with a --prompt-dims flag there is none of
    assert flags_for(model_config("tiny", ffn_expansion_factor=2.0), "BaryNet") is None  # no flag sets it


def test_resume_from_a_folder_continues_its_newest_checkpoint(data, straight, tmp_path, capsys):
    assert run(data, tmp_path / "a", "--nEpochs", "1") == 0
    capsys.readouterr()
    # the folder of run "a", trained on into its own folder by a second command
    assert run(data, tmp_path / "a", "--nEpochs", "2", "--resume", str(tmp_path / "a" / "ckpt")) == 0
    assert "is a folder: continuing its newest checkpoint, epoch_001.pth" in capsys.readouterr().out
    assert_same_training_state(final_state(tmp_path / "a"), final_state(straight))


def test_resume_auto_passes_over_a_damaged_newest_checkpoint(data, straight, tmp_path, capsys):
    assert run(data, tmp_path, "--nEpochs", "2", "--keep", "0") == 0
    newest = tmp_path / "ckpt" / "epoch_002.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn, as by a disk that filled up outside our writer
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", "--keep", "0") == 0
    err = capsys.readouterr().err
    assert "epoch_002.pth" in err and "Falling back to the checkpoint before it, epoch_001.pth" in err
    assert_same_training_state(final_state(tmp_path), final_state(straight))
    newest.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="epoch_002.pth"):  # named explicitly: no fallback
        run(data, tmp_path, "--nEpochs", "3", "--resume", str(newest))


def test_log_has_each_iteration_once_after_a_resume_past_lost_work(data, tmp_path):
    """As after kill -9: the log holds iterations 1-5, the newest checkpoint is from iteration 2."""
    assert run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--keep", "0", iters=5) == 0
    ckpt = tmp_path / "ckpt"
    for name in ("epoch_001.pth", "iter_e001_i000004.pth", "latest"):
        (ckpt / name).unlink()
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", "auto", iters=5) == 0
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["kind"] == "iter"]
    assert steps == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    discarded = [json.loads(line) for line in (ckpt / "log.discarded.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in discarded if r["kind"] == "iter"] == [3, 4, 5]  # kept, not deleted


def test_a_resumed_epochs_means_cover_the_whole_epoch_and_a_lost_start_is_set_aside(data, tmp_path):
    """The epoch record after a mid-epoch resume equals the uninterrupted run's; the run record of a start
    from a checkpoint past the one resumed goes aside with the training it began."""
    assert run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--keep", "0", iters=5) == 0
    ckpt = tmp_path / "ckpt"
    records = lambda name: [json.loads(line) for line in (ckpt / name).read_text().splitlines()]  # noqa: E731
    whole = next(r for r in records("log.jsonl") if r["kind"] == "epoch")
    (ckpt / "epoch_001.pth").unlink()
    (ckpt / "latest").unlink()
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", str(ckpt / "iter_e001_i000004.pth"), iters=5) == 0
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", str(ckpt / "iter_e001_i000002.pth"), iters=5) == 0
    log = records("log.jsonl")
    assert [(r["start_iteration"], r["global_step"]) for r in log if r["kind"] == "run"] == [(0, 0), (2, 2)]
    assert [r["global_step"] for r in log if r["kind"] == "iter"] == [1, 2, 3, 4, 5]
    (resumed,) = [r for r in log if r["kind"] == "epoch"]
    for key in ("l1", "transport", "potentials"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    assert [r["start_iteration"] for r in records("log.discarded.jsonl") if r["kind"] == "run"] == [4]


def test_a_mid_epoch_resume_leaves_the_global_generators_as_an_uninterrupted_run(data, tmp_path):
    """Each epoch's loader drew its workers' base seed from torch's global generator: a resumed epoch drew it again
    after the checkpoint's generator states were put back, so from there on torch's generator was one draw ahead of
    the uninterrupted run's, and so were the checkpoints' "rng"."""
    whole = tmp_path / "whole"
    assert run(data, whole, "--nEpochs", "2", "--save-every", "2", "--keep", "0") == 0
    resumed = tmp_path / "resumed"
    assert run(data, resumed, "--nEpochs", "2", "--resume", str(whole / "ckpt" / "iter_e001_i000002.pth")) == 0
    a, b = final_state(whole)["rng"], final_state(resumed)["rng"]
    assert torch.equal(a["torch"], b["torch"])
    assert torch.equal(a["python"]["state"], b["python"]["state"])
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"]) and a["numpy"]["pos"] == b["numpy"]["pos"]


@pytest.mark.parametrize("flag, value, message", [("--start-epoch", "0", "--start-epoch counts from 1"),
                                                   ("--seed", "-1", "--seed must be in")])
def test_out_of_range_start_epoch_and_seed_are_refused(data, tmp_path, flag, value, message):
    with pytest.raises(ConfigError, match=message):
        run(data, tmp_path, "--nEpochs", "1", flag, value, iters=1)


def test_reference_checkpoint_resumes_weights_and_epoch(data, tmp_path, capsys):
    torch.manual_seed(3)
    module = build_model("BaryNet", "tiny")
    ref_path = tmp_path / "model_allBaryNet32__2_1.0.pth"
    torch.save({"epoch": 4, "BaryIR": module}, ref_path)  # the reference pickles whole modules
    assert run(data, tmp_path, "--nEpochs", "5", "--resume", str(ref_path), iters=1) == 0
    out = capsys.readouterr().out
    assert "resumed reference checkpoint" in out and "continuing at epoch 5" in out
    ck = final_state(tmp_path)
    assert (ck["epoch"], ck["global_step"]) == (5, 1)
    loaded = module.state_dict()
    assert any(not torch.equal(v, ck["model"][k]) for k, v in loaded.items())
    # one RMSprop step of lr 1e-4 from the loaded weights (a fresh init would be far away)
    assert max((v - ck["model"][k]).abs().max().item() for k, v in loaded.items()) < 2e-3


def test_resume_auto_refuses_a_run_of_other_settings_and_names_them(data, tmp_path):
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    before = snapshot(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match=r"--de-type denoise_15 denoise_25 denoise_50 derain dehaze there, "
                                          r"derain dehaze here.*--patch-size 32 there, 48 here.*own --output-dir"):
        flags = train_flags(data, tmp_path, de_type=("derain", "dehaze")) + ["--iters-per-epoch", "1"]
        flags[flags.index("--patch_size") + 1] = "48"
        engine.main(get_args_parser().parse_args([*flags, "--nEpochs", "2", "--resume", "auto"]))
    assert snapshot(tmp_path / "ckpt") == before
    # the file named outright: the way on is its weights in a run of these settings, not another --output-dir (the
    # run already has one of its own)
    ckpt = tmp_path / "ckpt" / "epoch_001.pth"
    with pytest.raises(ConfigError, match=rf"Resume it with its own settings, or start a run of these settings from "
                                          rf"its weights alone: --pretrained {re.escape(str(ckpt))} instead of "
                                          rf"--resume$"):
        flags = train_flags(data, tmp_path / "new", de_type=("derain", "dehaze")) + ["--iters-per-epoch", "1"]
        engine.main(get_args_parser().parse_args([*flags, "--nEpochs", "2", "--resume", str(ckpt)]))
    # ...unless the network differs too: its weights would not fit (--pretrained then failed on 183 shapes)
    with pytest.raises(ConfigError, match=r"--dim 16 there, 24 here.*Resume it with its own settings, or leave "
                                          r"--resume out to train this network from scratch"):
        flags = train_flags(data, tmp_path / "new", de_type=("derain", "dehaze")) + ["--iters-per-epoch", "1"]
        engine.main(get_args_parser().parse_args([*flags, "--nEpochs", "2", "--dim", "24", "--resume", str(ckpt)]))
    # the order of --de_type is not a setting (domains follow a fixed family order)
    flags = train_flags(data, tmp_path, de_type=("dehaze", "derain", "denoise_50", "denoise_25", "denoise_15"))
    assert engine.main(get_args_parser().parse_args([*flags, "--iters-per-epoch", "1", "--nEpochs", "2", "--resume",
                                                     "auto"])) == 0


def test_resume_refuses_another_objective_optimizer_or_data_mix(data, tmp_path):
    """Resuming with the other trainer script silently switched the objective mid-run (its settings came from
    the script's defaults), another --optimizer crashed at the first step (KeyError 'betas'), and another
    --repeat silently changed lambda; each is refused now, naming the difference, with nothing written."""
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    before = snapshot(tmp_path / "ckpt")
    for flags, message in (
            (["--objective", "ddp"], r"--objective single there, ddp here; --reg-weight 0.05 there, 0.02 here.*"
                                     r"--potentials-steps 2 there, 1 here.*trained by trainer_bary.py"),
            (["--optimizer", "Adam"], r"--optimizer RMSprop there, Adam here"),
            (["--reg_weight", "0.1"], r"--reg-weight 0.05 there, 0.1 here"),
            (["--repeat", "derain=2"], r"--repeat derain=360 there, derain=2 here"),
            (["--Sigma", "5"], r"--Sigma 10000 there, 5.0 here"),
            (["--ablate", "potentials"], r"--ablate \(none\) there, potentials here")):
        with pytest.raises(ConfigError, match=message):
            run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", *flags, iters=1)
        assert snapshot(tmp_path / "ckpt") == before
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", "--objective", "single", iters=1) == 0


def test_resume_takes_a_setting_typed_out_as_the_value_it_had(data, tmp_path):
    """A --preset tiny run started with the defaults refused --resume auto with --dim 16 (the preset's width),
    --num-blocks 1 1 1 2 (its depths) or --repeat derain=360 (the paper's factor): '--dim (default) there, 16
    here'. The settings the flags give are compared now, not the flags as typed, and a real difference is
    still refused, named by the values the two runs train with (and the preset by itself when it differs);
    a checkpoint whose args lack a setting (an older version's) still resumes."""
    from utils.train.resuming import check_same_run
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    for epochs, flags in enumerate((["--dim", "16"], ["--num-blocks", "1", "1", "1", "2"],
                                    ["--num-refinement-blocks", "1", "--heads", "1", "2", "4", "8"],
                                    ["--repeat", "derain=360", "dehaze=1"]), start=2):
        assert run(data, tmp_path, "--nEpochs", str(epochs), "--resume", "auto", *flags, iters=1) == 0
    ckpt = final_state(tmp_path)
    assert ckpt["epoch"] == 5
    before = snapshot(tmp_path / "ckpt")
    for flags, message in ((["--dim", "24"], r"\(--dim 16 there, 24 here\)"),
                           (["--num-blocks", "1", "1", "2", "2"], r"\(--num-blocks 1 1 1 2 there, 1 1 2 2 here\)"),
                           (["--repeat", "derain=360", "dehaze=2"], r"\(--repeat dehaze=1 there, dehaze=2 here\)"),
                           (["--preset", "paper", "--dim", "16"], r"\(--preset tiny there, paper here\)")):
        with pytest.raises(ConfigError, match=message):
            run(data, tmp_path, "--nEpochs", "6", "--resume", "auto", *flags, iters=1)
        assert snapshot(tmp_path / "ckpt") == before
    older = {k: v for k, v in ckpt["args"].items() if k not in ("dim", "num_blocks", "repeat")}
    args = get_args_parser().parse_args([*train_flags(data, tmp_path), "--dim", "16", "--repeat", "derain=360"])
    check_same_run(args, {"args": older}, tmp_path / "epoch_005.pth")


def test_runs_of_other_settings_get_their_own_folder_by_default(data, tmp_path):
    from utils.train.options import run_dir
    flags = [f for f in train_flags(data, tmp_path)]
    i = flags.index("--output-dir")
    del flags[i:i + 2]
    args = get_args_parser().parse_args(flags)
    assert run_dir(args, 3) == str(Path("checkpoint") / "BaryNet_tiny_3D_p32")
    assert run_dir(get_args_parser().parse_args([*flags, "--name", "mine"]), 3) == str(Path("checkpoint") / "mine")
    assert run_dir(get_args_parser().parse_args([*flags, "--output-dir", "elsewhere"]), 3) == "elsewhere"
    # a flag that types out the preset's own value is the same network, in the same folder: README promises that
    # such a command resumes the run that left it out (--dim 16 on tiny went to BaryNet_tiny_d16_3D_p32)
    assert run_dir(get_args_parser().parse_args([*flags, "--dim", "16", "--heads", "1", "2", "4", "8"]), 3) == \
        str(Path("checkpoint") / "BaryNet_tiny_3D_p32")
    assert run_dir(get_args_parser().parse_args([*flags, "--dim", "24"]), 3) == \
        str(Path("checkpoint") / "BaryNet_tiny_d24_3D_p32")
    # the DDP trainer's objective: a folder of its own (a trainer_bary.py run there refused its --resume auto)
    ddp = get_args_parser(threads_default=4, objective="ddp").parse_args(flags)
    assert run_dir(ddp, 3) == str(Path("checkpoint") / "BaryNet_tiny_3D_p32_ddp")
    # --name with --output-dir named no folder and was passed over in silence
    with pytest.raises(ValueError, match="--name mine names the run's folder under checkpoint/ when --output-dir is "
                                         "not given, and --output-dir elsewhere is: drop one of them"):
        run_dir(get_args_parser().parse_args([*flags, "--output-dir", "elsewhere", "--name", "mine"]), 3)
    named = get_args_parser().parse_args([*flags, "--name", "mine"])
    named.output_dir = run_dir(named, 3)  # as check_run sets it: a second start with these args agrees
    assert run_dir(named, 3) == str(Path("checkpoint") / "mine")
    with pytest.raises(ConfigError, match="--name '../up' must be a plain folder name"):
        engine.main(get_args_parser().parse_args([*flags, "--name", "../up", "--iters-per-epoch", "1"]))


def test_bad_lr_data_file_dir_and_output_dir_are_one_line_errors(data, tmp_path):
    """A negative or NaN --lr ended in torch's traceback after the data was scanned; a mistyped
    --data_file_dir silently trained on every image found by scanning (another lambda, another epoch
    length); an --output-dir that is a file ended in FileExistsError. Each is one error now."""
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "1"]
    for flag, value in (("--Sigma", "nan"), ("--Sigma", "-100"), ("--iters-per-epoch", "-1"), ("--keep", "-1"),
                        ("--save-every", "-5"), ("--log-every", "-1"), ("--reg-weight", "nan"),
                        ("--contrastive-eps", "nan")):
        with pytest.raises(ConfigError, match=f"{flag}.*(must be|finite)"):
            engine.main(get_args_parser().parse_args([*flags, flag, value]))
    for lr in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"--lr must be a finite number >= 0, got {lr}"):
            engine.main(get_args_parser().parse_args([*flags, "--lr", lr]))
    lists = tmp_path / "no_such_lists"
    with pytest.raises(UserError, match=f"--data-file-dir {lists}: no such folder.*--data-file-dir ''"):
        engine.main(get_args_parser().parse_args([*flags, "--data_file_dir", str(lists)]))
    (tmp_path / "afile").write_text("not a folder")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        for dry in ([], ["--dry-run"]):  # --dry-run said the run "checks out" and would train into the file
            with pytest.raises(UserError, match=f"--output-dir {out}: a file, not a folder, is in the way"):
                engine.main(get_args_parser().parse_args([*flags, "--output-dir", str(out), *dry]))
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("was, now, iteration, expected", [((4, 1), (8, 1), 100, 50), ((3, 1), (8, 1), 100, 37),
                                                           ((4, 2), (4, 1), 100, 200), ((8, 1), (8, 1), 7, 7)])
def test_a_mid_epoch_resume_with_another_batch_continues_after_the_samples_used(was, now, iteration, expected):
    """The sampler skipped ``iteration x new batch`` samples (800 where 400 were used, 400 never seen that
    epoch); the iteration is now counted in the new batch from the samples used, rounded down."""
    from types import SimpleNamespace

    from utils.checkpoints import LoopState
    from utils.train.run_log import Console
    resumed = {"iteration": iteration, "args": {"batchSize": was[0]}, "world_size": was[1]}
    args, info = SimpleNamespace(batchSize=now[0]), SimpleNamespace(world_size=now[1])
    state = start.continue_with_batch(resumed, args, info, LoopState(3, iteration, 999), Console(False))
    assert state == LoopState(3, expected, 999)
    assert state.iteration * now[0] * now[1] <= iteration * was[0] * was[1] < (state.iteration + 1) * now[0] * now[1]


def test_a_mid_epoch_resume_with_another_batch_replaces_no_checkpoint(data, tmp_path, capsys):
    """Resumed from iter_e001_i000004.pth (batch 3) with --batchSize 6, the run continued at iteration 3 of
    the new batch, and its save at iteration 4 replaced the very checkpoint it had resumed from."""
    assert run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--keep", "0", iters=6) == 0
    ckpt = tmp_path / "ckpt"
    before = {p.name: p.read_bytes() for p in list_checkpoints(ckpt)}
    assert {"iter_e001_i000002.pth", "iter_e001_i000004.pth", "epoch_001.pth"} <= set(before)
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "1", "--save-every", "1", "--keep", "0", "--batchSize", "6", "--resume",
               str(ckpt / "iter_e001_i000004.pth"), iters=6) == 0
    out = capsys.readouterr().out
    assert "with another batch" in out and "abandoned.before-" in out, out
    kept = {p.name: p.read_bytes() for p in ckpt.glob("abandoned.before-*/*.pth")}
    assert kept == before  # every checkpoint of the batch-3 timeline, byte for byte
    assert [p.name for p in list_checkpoints(ckpt)] == ["iter_e001_i000003.pth", "iter_e001_i000004.pth",
                                                        "iter_e001_i000005.pth", "epoch_001.pth"]
    assert read_checkpoint(ckpt / "iter_e001_i000004.pth")["args"]["batchSize"] == 6
    # a run with another batch that fails before its first save leaves the checkpoint it resumed where it was
    again = tmp_path / "again"
    assert run(data, again, "--nEpochs", "1", "--save-every", "2", "--keep", "0", iters=6) == 0
    resumed = again / "ckpt" / "iter_e001_i000004.pth"
    mine = resumed.read_bytes()
    with pytest.raises(engine.NonFiniteLossError):
        run(data, again, "--nEpochs", "1", "--batchSize", "6", "--resume", str(resumed), "--debug-nan-at", "5",
            iters=6)
    assert resumed.read_bytes() == mine and read_latest(again / "ckpt") == resumed


@pytest.mark.parametrize("epochs_after", [2, 1])
def test_an_epoch_record_lost_between_its_checkpoint_and_the_log_is_written_on_resume(data, tmp_path, capsys,
                                                                                     epochs_after):
    """A run killed between epoch_001.pth and its log record (during validation, minutes at the paper's scale)
    lost the record for good: the resumed run never wrote epoch 1's means and validation PSNR, and after the
    last epoch a resume had 'nothing to do'."""
    deg, tar = make_val_tree(tmp_path)
    val = ["--degset", str(deg), "--tarset", str(tar)]
    assert run(data, tmp_path, "--nEpochs", "1", *val) == 0
    log = tmp_path / "ckpt" / "log.jsonl"
    lines = log.read_text().splitlines()
    lost = json.loads(lines[-1])
    assert lost["kind"] == "epoch" and lost["val_psnr"] is not None
    log.write_text("\n".join(lines[:-1]) + "\n")  # as a kill during validation leaves it
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", str(epochs_after), "--resume", "auto", *val) == 0
    assert "the log has no record of epoch 1" in capsys.readouterr().out
    epochs = [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, epochs_after + 1))
    assert epochs[0] == {**lost, "sec": None}  # the same means and scores, bit for bit
    # a checkpoint whose folder has no log (kept aside, copied) has lost no record: nothing to do, nothing written
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "epoch_001.pth").write_bytes((tmp_path / "ckpt" / "epoch_001.pth").read_bytes())
    fresh = tmp_path / "fresh"
    assert run(data, fresh, "--nEpochs", "1", "--resume", str(elsewhere / "epoch_001.pth"), *val) == 0
    assert "nothing to do" in capsys.readouterr().out and not (fresh / "ckpt").exists()


def test_a_run_with_nothing_to_do_moves_and_writes_nothing(data, tmp_path, capsys):
    """Resuming epoch 1 of a 3-epoch run with --nEpochs 1 moved epochs 2 and 3 aside and rewound the log,
    then said 'nothing to do'."""
    assert run(data, tmp_path, "--nEpochs", "3", iters=1) == 0
    before = snapshot(tmp_path / "ckpt")
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", str(tmp_path / "ckpt" / "epoch_001.pth"), iters=1) == 0
    assert "nothing to do: epoch 2 is past --epochs 1; nothing was written" in capsys.readouterr().out
    assert snapshot(tmp_path / "ckpt") == before
    # --resume <run>/latest continues that run (it was called a damaged checkpoint)
    assert run(data, tmp_path, "--nEpochs", "4", "--resume", str(tmp_path / "ckpt" / "latest"), iters=1) == 0
    assert "is a run's pointer: continuing its newest checkpoint, epoch_003.pth" in capsys.readouterr().out
    assert read_checkpoint(read_latest(tmp_path / "ckpt"))["epoch"] == 4


def test_a_mid_epoch_checkpoint_past_a_smaller_cap_ends_its_epoch(data, tmp_path, capsys):
    """Resumed at iteration 2 of 4 with --iters-per-epoch 2, epoch 1 was skipped: no epoch_001.pth, no epoch
    record, no validation; now the epoch ends there, with its checkpoint and its record."""
    assert run(data, tmp_path, "--nEpochs", "1", "--save-every", "2", "--keep", "0", iters=4) == 0
    ckpt = tmp_path / "ckpt"
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    first_two = [r for r in records if r["kind"] == "iter" and r["global_step"] <= 2]
    for name in ("epoch_001.pth", "latest"):
        (ckpt / name).unlink()
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "1", "--resume", str(ckpt / "iter_e001_i000002.pth"), iters=2) == 0
    assert "epoch 1 ends there, without more training" in capsys.readouterr().err
    done = read_checkpoint(ckpt / "epoch_001.pth")
    assert (done["epoch"], done["iteration"], done["global_step"]) == (1, 0, 2)
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    assert epoch["global_step"] == 2 and epoch["l1"] == pytest.approx(sum(r["l1"] for r in first_two) / 2)


def test_resuming_after_the_data_changed_says_so(tmp_path, capsys):
    """Images added since the checkpoint changed lambda and the resumed epoch's order without a word."""
    import shutil
    mine = make_train_tree(tmp_path / "data")
    assert run(mine, tmp_path, "--nEpochs", "1", iters=1) == 0
    shutil.copy(mine["derain"] / "rainy" / "rain-1.png", mine["derain"] / "rainy" / "rain-99.png")
    shutil.copy(mine["derain"] / "gt" / "norain-1.png", mine["derain"] / "gt" / "norain-99.png")
    capsys.readouterr()
    assert run(mine, tmp_path, "--nEpochs", "2", "--resume", "auto", iters=1) == 0
    assert "the training data changed since the checkpoint" in capsys.readouterr().err


def test_a_record_cut_short_is_removed_from_the_log_on_resume(data, tmp_path, capsys):
    """A run killed (or out of disk) while writing a record left part of it at the log's end; the resumed run
    ended that line and wrote after it, so the log kept an invalid JSON line that jq and pandas refuse."""
    assert run(data, tmp_path, "--nEpochs", "1") == 0
    log = tmp_path / "ckpt" / "log.jsonl"
    cut = '{"kind": "iter", "epoch": 2, "iteration": 1, "global_step": 4, "lr": 0.0001, "l1": 0.1'
    with open(log, "a") as fh:
        fh.write(cut)
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto") == 0
    strict = lambda line: json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # noqa: E731
    records = [strict(line) for line in log.read_text().splitlines()]
    assert [r["global_step"] for r in records if r["kind"] == "iter"] == list(range(1, 2 * ITERS + 1))
    out = capsys.readouterr().out
    assert (f"=> removed 1 line, {len(cut)} bytes, from {log}: records cut short when a run stopped while "
            f"writing them (a full disk, or a kill); every complete record stays") in out, out
    assert [r["kind"] for r in records].count("run") == 2 and cut not in log.read_text()


@pytest.mark.parametrize("kind", ["training", "reference", "weights"])
def test_pretrained_and_start_epoch_a_resume_does_not_use_are_said(tmp_path, capsys, kind):
    """--resume auto (or a file) with --pretrained FILE --start-epoch 59, as the README's requeue command has them,
    resumed the checkpoint and said nothing of the two flags it passed over."""
    from utils.train.resuming import load_start
    from utils.train.run_log import Console
    model = build_model("Restormer", "tiny")
    if kind == "training":
        obj = {"format_version": 1, "model": model.state_dict(), "epoch": 2, "iteration": 0,
               "args": {"backbone": "Restormer"}}
    elif kind == "reference":
        obj = {"epoch": 2, "BaryIR": model.state_dict()}
    else:
        obj = model.state_dict()
    args = get_args_parser().parse_args(["--backbone", "Restormer", "--preset", "tiny", "--pretrained",
                                         str(tmp_path / "authors.pt"), "--start-epoch", "59"])
    state, _ = load_start(args, tmp_path / "epoch_002.pth", obj, model, None, Console())
    out = capsys.readouterr().out
    if kind == "weights":  # weights only: the run starts at --start-epoch, and --pretrained is passed over
        assert state.epoch == 59
        assert f"--pretrained {tmp_path / 'authors.pt'} not used: the run resumes" in out, out
    else:
        assert state.epoch == 3
        assert f"--pretrained {tmp_path / 'authors.pt'} and --start-epoch 59 not used: the run resumes" in out, out
    args = get_args_parser().parse_args(["--backbone", "Restormer", "--preset", "tiny"])
    load_start(args, tmp_path / "epoch_002.pth", obj, model, None, Console())
    assert "not used" not in capsys.readouterr().out


def test_both_optimizers_follow_the_step_schedule(data, tmp_path):
    """Each epoch sets the learning rate of the map's *and* the potentials' optimizer (lr_at): a potentials
    optimizer left at its first rate trained on at 10x after --step epochs, and a run resumed there (whose
    optimizers are built at the epoch's rate) differed from the uninterrupted one."""
    from utils.train.optim import lr_at
    assert run(data, tmp_path, "--nEpochs", "2", "--step", "1", iters=1) == 0
    for epoch in (1, 2):
        ck = read_checkpoint(tmp_path / "ckpt" / f"epoch_{epoch:03d}.pth")
        for key in ("optimizer", "potentials_optimizer"):
            assert [g["lr"] for g in ck[key]["param_groups"]] == [pytest.approx(lr_at(2e-4, epoch, 1))], (key, epoch)


def test_resuming_without_the_runs_log_says_where_the_new_log_starts(data, tmp_path, capsys):
    """log.jsonl removed (or a checkpoint copied without it), then --resume auto: the new log began at the resumed
    epoch without a word, and the loss figure showed only the iterations after it."""
    assert run(data, tmp_path, "--nEpochs", "1", iters=2) == 0
    (tmp_path / "ckpt" / "log.jsonl").unlink()
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", iters=2) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"{tmp_path / 'ckpt' / 'log.jsonl'}, the log of the 2 iterations before epoch_001.pth, is not there: a "
            f"new log starts at global step 3") in err, err


def test_a_dry_run_into_a_folder_holding_a_run_says_the_run_would_be_moved_aside(data, tmp_path, capsys):
    """--dry-run without --resume where a run already is said 'it would train epochs 1..1 into <dir>. Nothing was
    written'; the real run then moved the earlier one to run.before-*, which the dry run never mentioned."""
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "ckpt")
    assert run(data, tmp_path, "--nEpochs", "1", "--dry-run", iters=1) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"into {tmp_path / 'ckpt'}, first moving the earlier run's 3 files there (1 checkpoint) to "
            f"run.before-<time>/ (--resume auto would continue that run instead). Nothing was written") in out, out
    assert snapshot(tmp_path / "ckpt") == before


def test_a_caller_that_asks_gets_the_signals_status_after_a_polite_stop(data, tmp_path, monkeypatch):
    """SIGTERM during the demo's or the study's training ended them as "interrupted" with Ctrl-C's 130: the trainer
    returns 0 after its checkpoint, so they could not tell which signal it was. Asked (``status_on_stop``), it returns
    128 + the signal; the scripts still exit 0."""
    real = engine.train_one_epoch

    def signalled_first(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's StopRequest holds it: one iteration, then a checkpoint
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "train_one_epoch", signalled_first)
    for asked, status in ((True, 128 + signal.SIGTERM), (False, 0)):
        args = get_args_parser().parse_args(train_flags(data, tmp_path / str(asked)) + ["--iters-per-epoch", "4"])
        args.status_on_stop = asked
        assert engine.main(args) == status
        assert [p.name for p in list_checkpoints(tmp_path / str(asked) / "ckpt")] == ["iter_e001_i000001.pth"]


def test_a_full_disk_while_keeping_the_abandoned_history_leaves_no_part_of_it(tmp_path, capsys, monkeypatch):
    """Resuming an earlier checkpoint keeps a copy of the log (and events) beside the checkpoints it sets aside. A
    copy that met a full disk was warned about ("will not carry its history over") but left half a log there, which
    resuming one of those checkpoints later carried over as that timeline's history, cut short without a word."""
    import errno
    import shutil

    from utils.train.run_folder import resume_outputs
    from utils.train.run_log import Console
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x" * 100)
    for name in ("epoch_001.pth", "epoch_002.pth"):
        (run / name).write_bytes(b"checkpoint")
    (run / "log.jsonl").write_text("".join(json.dumps({"kind": "iter", "global_step": s}) + "\n" for s in range(9)))

    def half_then_full(src, dst, *a, **k):
        Path(dst).write_bytes(Path(src).read_bytes()[:20])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "copyfile", half_then_full)
    monkeypatch.setattr(shutil, "copy2", half_then_full)  # copytree's copy of each event file
    resume_outputs(run, run / "epoch_001.pth", (1, 0), Console())
    [kept] = run.glob("abandoned.before-*")
    assert sorted(p.name for p in kept.iterdir()) == ["epoch_002.pth"], sorted(kept.rglob("*"))
    assert capsys.readouterr().err.count("could not keep a copy of") == 2
    # resuming it into another folder carries the log over: a copy cut short there is not left as that folder's log
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match="could not carry the log"):
        resume_outputs(other, run / "epoch_001.pth", (1, 0), Console())
    assert not (other / "log.jsonl").exists()


def test_a_resume_under_another_torch_thread_count_says_it_is_not_bit_exact(data, tmp_path, capsys):
    """On the CPU the thread count splits the reductions otherwise (weights differ in the last bits): the checkpoint
    records it, and a resume with another count warned nothing while README promised a bit-exact resume."""
    assert run(data, tmp_path, "--nEpochs", "1", iters=1) == 0
    saved = read_checkpoint(tmp_path / "ckpt" / "epoch_001.pth")["kernels"]
    assert saved == {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    capsys.readouterr()
    assert run(data, tmp_path, "--nEpochs", "2", "--resume", "auto", iters=1) == 0  # same count: nothing said
    assert "other kernels" not in capsys.readouterr().err
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert run(data, tmp_path, "--nEpochs", "3", "--resume", "auto", iters=1) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert f"torch threads {threads} there, {threads + 1} now" in err and "bit for bit" in err, err
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "log.jsonl").read_text().splitlines()]
    assert [r["kernels"]["torch_threads"] for r in records if r["kind"] == "run"] == [threads, threads, threads + 1]


def test_the_log_records_the_seed_and_the_commit_of_each_start(data, tmp_path, monkeypatch):
    """The log's run record kept the objective but not the seed, the command or the commit of the code that ran."""
    monkeypatch.setattr(sys, "argv", ["trainer_bary.py", "--seed", "7"])
    assert run(data, tmp_path, "--nEpochs", "1", "--seed", "7", iters=1) == 0
    record = json.loads((tmp_path / "ckpt" / "log.jsonl").read_text().splitlines()[0])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert record["kind"] == "run" and record["seed"] == 7 and record["commit"].split()[0] == head.strip() != ""
    assert record["command"].endswith("trainer_bary.py --seed 7")


def test_a_fresh_run_moves_the_earlier_runs_abandoned_timelines_aside_with_it(tmp_path, capsys):
    """A fresh run moved the earlier run's checkpoints, log and latest into run.before-*, but left that run's
    abandoned.before-* folders (the timelines it set aside when it resumed an earlier checkpoint) in --output-dir,
    where they read as the new run's own abandoned timelines. They now go into run.before-* with the rest of it."""
    from utils.train.run_folder import earlier_run_files, start_fresh_outputs
    from utils.train.run_log import Console
    run = tmp_path / "run"
    abandoned = run / "abandoned.before-20261130-101010"
    abandoned.mkdir(parents=True)
    (abandoned / "epoch_002.pth").write_bytes(b"abandoned checkpoint")
    (abandoned / "log.jsonl").write_text('{"kind": "iter", "global_step": 2}\n')
    (run / "epoch_001.pth").write_bytes(b"checkpoint")
    (run / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    (run / "notes.txt").write_text("mine")  # not the trainer's: stays
    assert abandoned in earlier_run_files(run)[1]
    kept = start_fresh_outputs(run, Console())
    assert sorted(p.name for p in run.iterdir()) == sorted([kept.name, "notes.txt"])
    assert (kept / abandoned.name / "epoch_002.pth").read_bytes() == b"abandoned checkpoint"
    assert (kept / "epoch_001.pth").read_bytes() == b"checkpoint"
    said = capsys.readouterr().out
    assert f"1 folder of timelines it abandoned (abandoned.before-*)) were moved to {kept.name}/" in said
