"""utils/train/signals.py: stop requests, and a rank's stop when the torchrun that started it dies."""
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from _processes import REPO, as_in_a_terminal, kill_tree

from utils.train import signals
from utils.train.signals import LAUNCHER_DIED, StopRequest, signal_names, stop_with_the_launcher

linux_only = pytest.mark.skipif(LAUNCHER_DIED is None or not sys.platform.startswith("linux"),
                                reason="the parent-death signal is Linux's")

# A "rank": asks for the launcher's death signal, then waits for a stop request and keeps handling
# signals a while (the kernel sends the death signal again as each of the launcher's threads ends).
# Each word is written whole under another name and renamed into place: the test reads a file as soon as it
# exists, and one written in place could be read empty by a test that ran between its creation and its write.
RANK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from utils.train.signals import StopRequest, stop_with_the_launcher
    said = Path(sys.argv[1])

    def tell(path, text):
        path.with_name(path.name + ".part").write_text(text)
        os.replace(path.with_name(path.name + ".part"), path)

    set_ = stop_with_the_launcher()
    stop = StopRequest().install()
    tell(said.with_suffix(".ready"), str(set_))
    try:
        while not stop.requested:
            time.sleep(0.01)
        time.sleep(1.0)
        tell(said, f"stopped by {stop.signum}")
    except KeyboardInterrupt:
        tell(said, "aborted")
""")

# A "torchrun": a few threads besides the main one, which starts the rank and sleeps until killed.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys, threading, time
    for _ in range(4):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    time.sleep(600)
""")


@linux_only
def test_a_rank_stops_once_when_its_launcher_is_killed(tmp_path):
    said = tmp_path / "rank.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHELASTIC_RUN_ID="test")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK, str(said)], cwd=REPO, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not said.with_suffix(".ready").exists():
            assert time.monotonic() < deadline and launcher.poll() is None, "the rank did not start"
            time.sleep(0.02)
        assert said.with_suffix(".ready").read_text() == "True"
        launcher.kill()
        launcher.wait()
        while not said.exists():
            assert time.monotonic() < deadline, "the rank outlived its launcher"
            time.sleep(0.02)
    finally:
        if launcher.poll() is None:
            kill_tree(launcher.pid)
    time.sleep(0.2)  # the rank writes its word once, then exits
    assert said.read_text() == f"stopped by {LAUNCHER_DIED}"  # the repeats asked once, and aborted nothing


@linux_only
def test_a_rank_whose_launcher_died_before_it_asked_stops_at_once(tmp_path):
    """torchrun gone between the rank's start and its prctl: the parent has changed, and the rank ends as the
    signal would have ended it."""
    code = textwrap.dedent("""
        import itertools, os, time
        parents = itertools.chain([os.getppid()], itertools.repeat(1))
        os.getppid = lambda: next(parents)  # the launcher dies between the two looks
        from utils.train.signals import stop_with_the_launcher
        stop_with_the_launcher()
        time.sleep(30)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHELASTIC_RUN_ID="test")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=60)
    assert done.returncode == -LAUNCHER_DIED


def test_outside_torchrun_or_linux_nothing_is_asked(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert stop_with_the_launcher() is False
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert stop_with_the_launcher() is False
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(signals, "LAUNCHER_DIED", None)  # no real-time signals
    assert stop_with_the_launcher() is False


def test_a_second_ctrl_c_aborts_but_repeated_sigterms_and_the_launchers_repeats_do_not():
    """A scheduler that signals every process of a job step (Slurm, systemd) reached each rank twice, directly and
    through torchrun: the second SIGTERM aborted the rank without a checkpoint (1 run in 2 lost its work)."""
    stop = StopRequest()
    for _ in range(3):
        stop._handle(signal.SIGTERM, None)
    assert (stop.requested, stop.signum) == (True, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    stop = StopRequest()
    stop._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)

    if LAUNCHER_DIED is not None:
        stop = StopRequest()
        for _ in range(3):  # once per thread of torchrun as they end
            stop._handle(LAUNCHER_DIED, None)
        assert (stop.requested, stop.signum) == (True, LAUNCHER_DIED)
        stop = StopRequest()
        stop._handle(signal.SIGTERM, None)
        stop._handle(LAUNCHER_DIED, None)  # torchrun killed after it passed SIGTERM on: no abort
        assert (stop.requested, stop.signum) == (True, signal.SIGTERM)


def test_inside_at_once_a_stop_raises_where_it_lands_and_a_closed_pipe_only_asks():
    """The first compiled iteration (minutes of compiling, nothing trained) ends at once on a stop signal."""
    from utils.errors import StopSignal
    for signum, raised in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, StopSignal),
                           (LAUNCHER_DIED, StopSignal)):
        if signum is None:
            continue
        stop = StopRequest()
        with pytest.warns(UserWarning, match="kept") as given:
            with pytest.raises(raised) as stopped, stop.at_once():
                warnings.warn("kept")
                warnings.warn("Error detected in NativeLayerNormBackward0. Traceback of forward call ...")
                stop._handle(signum, None)
        assert [str(w.message) for w in given] == ["kept"]  # not the anomaly trace of the backward it cut short
        assert stop.requested and getattr(stopped.value, "signum", signal.SIGINT) in (signum, signal.SIGTERM)
        with pytest.raises(raised):  # asked before: it raises as it enters
            with stop.at_once():
                pass
    stop = StopRequest()
    with pytest.warns(UserWarning, match="Error detected in"):  # not stopped: every warning is given
        with stop.at_once():
            stop._pipe_broke()
            warnings.warn("Error detected in AddmmBackward0")
    stop._handle(signal.SIGTERM, None)  # outside: the flag only
    assert stop.requested


def test_what_stopped_a_run_is_named_from_every_ranks_signal():
    term, intr = int(signal.SIGTERM), int(signal.SIGINT)
    assert signal_names([term]) == "SIGTERM"  # one process
    assert signal_names([term, term]) == "SIGTERM"  # torchrun passed its own on
    assert signal_names([0, term]) == "SIGTERM to rank 1"  # rank 0, which prints, got none
    assert signal_names([0, term, 0, term]) == "SIGTERM to ranks 1, 3"
    assert signal_names([intr, term]) == "SIGINT to rank 0 and SIGTERM to rank 1"
    if LAUNCHER_DIED is not None:  # every rank gets it, not all by the time they agree to stop
        assert signal_names([LAUNCHER_DIED, 0]) == signal_names([LAUNCHER_DIED] * 2) == "torchrun's death"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX's")
def test_a_signal_the_process_was_told_to_ignore_stays_ignored():
    """`nohup python trainer_bary.py ... &`: nohup starts the trainer with SIGHUP ignored so that it outlives the
    terminal, but the stop request took SIGHUP over and stopped the run when the user logged out."""
    if threading.current_thread() is not threading.main_thread():  # no handlers there: the SIGTERM would end pytest
        pytest.skip("signal handlers are the main thread's")
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = StopRequest().install()
    try:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)  # the signals it was not told to ignore still stop it
        deadline = time.monotonic() + 10
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
    finally:
        stop.restore()
        signal.signal(signal.SIGHUP, old)


def test_the_scripts_stop_signals_interrupt_once():
    """The tester, the app and the demo: SIGTERM is Ctrl-C; a scheduler that signals every process of a job reached
    the tester twice, and the second KeyboardInterrupt cut short the partial results the first was writing."""
    if threading.current_thread() is not threading.main_thread():  # no handlers there: the SIGTERM would end pytest
        pytest.skip("signal handlers are the main thread's")
    from utils.runtime import stop_signals_as_interrupt
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))}
    try:
        stop_signals_as_interrupt()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here
        os.kill(os.getpid(), signal.SIGTERM)  # the results so far are being written: not cut short
        time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


STOPS = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None), LAUNCHER_DIED) if s is not None]


def test_restore_gives_back_the_handlers_and_streams_also_after_a_second_ctrl_c():
    """engine.main returns (a notebook, a script training twice) or aborts: Ctrl-C must interrupt again, not set
    the flag of a run that has ended, and standard output must be the caller's again."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    before = {s: signal.getsignal(s) for s in STOPS}
    stdout, stderr = sys.stdout, sys.stderr
    stop = StopRequest().install()
    try:
        assert signal.getsignal(signal.SIGTERM) == stop._handle and sys.stdout is not stdout
        stop.restore()
        assert {s: signal.getsignal(s) for s in STOPS} == before and (sys.stdout, sys.stderr) == (stdout, stderr)
        stop = StopRequest().install()
        stop._handle(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)  # the second Ctrl-C: it aborts, restored
        assert {s: signal.getsignal(s) for s in STOPS} == before and (sys.stdout, sys.stderr) == (stdout, stderr)
    finally:
        stop.restore()
        for s, handler in before.items():
            signal.signal(s, handler)


def test_loader_workers_ignore_every_stop_signal():
    """Ctrl-C reaches the whole process group: a worker that took it died, and the run ended without its
    checkpoint instead of finishing the iteration and saving."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    worker_stops = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    before = {s: signal.getsignal(s) for s in worker_stops}
    try:
        signals.ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in worker_stops)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _sigchld_seen(signum, frame):
    pass


def _loader_worker(ready):
    signals.ignore_stop_signals(0)
    ready.set()
    time.sleep(60)


def test_stopping_loader_workers_kills_the_daemonic_children_alone_and_keeps_the_sigchld_handler():
    """After a failure the exit handler's SIGTERM, which workers ignore, would leave the exit waiting for them."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_loader_worker, args=(ready,), daemon=True)
    other = ctx.Process(target=time.sleep, args=(60,))
    before = signal.signal(signal.SIGCHLD, _sigchld_seen)  # the loader's own, which raises when a worker dies
    try:
        worker.start()
        other.start()
        assert ready.wait(10)  # the worker ignores SIGTERM now, as the loader's do
        signals.stop_loader_workers(timeout=5)
        assert worker.exitcode == -signal.SIGKILL and other.is_alive()
        assert signal.getsignal(signal.SIGCHLD) is _sigchld_seen
    finally:
        signal.signal(signal.SIGCHLD, before)
        for p in (worker, other):
            if p.is_alive():
                p.kill()
            p.join(10)


_TERM_AT_DATA = """import os, runpy, signal, sys, time
from utils.train import engine
def check_run(*args, **kwargs):  # SIGTERM while the trainer checks its flags and data, after its imports
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
engine.check_run = check_run
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script", ["trainer_bary.py", "trainer_bary_ddp.py"])
def test_sigterm_while_a_trainer_starts_is_one_line(script, tmp_path):
    """kill / timeout / a scheduler's SIGTERM in a trainer's start-up (its checks of the data take minutes on the
    real sets) ended it without a word (status -15); its own stop is installed only when training begins. It then
    said "interrupted" with Ctrl-C's status 130, where the same signal a second earlier gave 143 and its name."""
    argv = ["--preset", "tiny", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    code = _TERM_AT_DATA.format(script=script, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (143, "error: stopped by SIGTERM\n"), done.stderr
    assert not (tmp_path / "out").exists()


def test_sigterm_while_a_script_imports_is_held_then_one_line(tmp_path):
    """SIGTERM in the second or so a script imports torch ended it without a word (status 143 from the kernel);
    it is now held like Ctrl-C until the imports end, then said."""
    (tmp_path / "torch.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\n"
                                       "time.sleep(0.3)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    done = subprocess.run([sys.executable, "tester_bary.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (
        143, "error: stopped by SIGTERM while starting; nothing was written\n", ""), done.stderr


@pytest.mark.parametrize("rank, node, said", [("1", "0", False), ("0", "0", True), ("1", "1", True)])
def test_a_stop_while_torchruns_ranks_start_is_said_once_per_machine(rank, node, said, monkeypatch, capsys):
    """Ctrl-C (or a scheduler's SIGTERM) while a torchrun group started reached every rank (torchrun passes its
    own on), and each printed the same "error: interrupted" line, while importing and after: rank 0 now says
    it for its machine, the others stop with the same status and no word."""
    from utils.errors import StopSignal, run_main, said_by_this_rank
    from utils.train.engine import met_by_every_rank
    for name, value in (("TORCHELASTIC_RUN_ID", "test"), ("WORLD_SIZE", "2"), ("RANK", rank), ("GROUP_RANK", node)):
        monkeypatch.setenv(name, value)
    code = ("import os, signal\nfrom utils.errors import stopped_while_starting\n"
            "with stopped_while_starting():\n    os.kill(os.getpid(), signal.SIGTERM)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    line = "error: stopped by SIGTERM while starting; nothing was written\n"
    assert (done.returncode, done.stderr) == (143, line if said else ""), done.stderr

    def stopped(args):
        raise StopSignal(signal.SIGTERM)
    quiet = None if said_by_this_rank() else met_by_every_rank  # as the trainers' run_cli passes it
    assert run_main(stopped, None, quiet=quiet) == 143
    assert capsys.readouterr().err == ("error: stopped by SIGTERM\n" if said else "")


@pytest.mark.parametrize("script", ["tester_bary.py", "trainer_bary.py"])
def test_sighup_while_a_script_imports_is_held_then_one_line(script, tmp_path):
    """A terminal closed in the second or so a script imports torch (its output redirected to a file) ended it
    with status 129 and not a word, where SIGINT and SIGTERM there are one line: the README promises that line
    for SIGHUP before training starts too."""
    (tmp_path / "torch.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGHUP)\n"
                                       "time.sleep(0.3)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    done = subprocess.run([sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=as_in_a_terminal)  # under nohup the script rightly keeps SIGHUP ignored
    assert (done.returncode, done.stderr, done.stdout) == (
        129, "error: stopped by SIGHUP while starting; nothing was written\n", ""), done.stderr
