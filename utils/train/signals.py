"""Stopping a training run politely: SIGTERM/SIGINT/SIGHUP set a flag the loop reads after each iteration
(:class:`StopRequest`; a second Ctrl-C aborts), and so do an output pipe whose reader has gone
(:class:`utils.streams.OutputGuard`) and the death of the torchrun that started the process
(:func:`stop_with_the_launcher`); loader workers leave the signals to the main process, and their
processes are ended when a run fails. Standard library only: the scripts call
:func:`stop_with_the_launcher` before they import torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from typing import Any, TextIO

from utils.errors import StopSignal
from utils.streams import OutputGuard, leave_the_hung_up_terminal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The signal the kernel sends a rank when its torchrun dies (Linux); its default action ends the process
# as SIGTERM's does. A real-time signal of its own rather than SIGTERM: see stop_with_the_launcher.
LAUNCHER_DIED: int | None = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else None


HANGUP: int | None = getattr(signal, "SIGHUP", None)  # a closed terminal (POSIX)


class StopRequest:
    """SIGTERM/SIGINT/SIGHUP set a flag the loop reads after each iteration; a second Ctrl-C (SIGINT) aborts.
    SIGHUP (the terminal closed) first points output that went to the terminal at /dev/null; standard output
    and error whose pipe breaks (:class:`utils.streams.OutputGuard`) go there too, and ask as ``SIGPIPE``.
    SIGTERM, SIGHUP, a pipe and the death of torchrun (:data:`LAUNCHER_DIED`) set it however often they come
    and never abort: a scheduler that signals every process of a job (Slurm's scancel, systemd's cgroup stop)
    reaches a rank twice, directly and through torchrun, which passes its own on, and that must not lose the
    checkpoint. A signal the process was started to ignore (``nohup``'s SIGHUP, a background job's SIGINT) stays
    ignored."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._streams: dict[str, TextIO] = {}
        self._at_once = False

    @contextlib.contextmanager
    def at_once(self):
        """Inside, a stop signal, or one asked before, ends the work at once: it raises
        ``KeyboardInterrupt`` (Ctrl-C) or :class:`utils.errors.StopSignal` where the process is, instead of
        setting the flag read after the iteration. For minutes of work that nothing is lost by cutting short:
        the first compiled iteration, which compiles (nothing of this process's training is done yet). A
        torchrun that died (:data:`LAUNCHER_DIED`) ends it as SIGTERM does; a closed pipe still only asks.

        The warnings given inside are held and given as it ends, less autograd's anomaly traces when a stop cut
        it short: compiling traces the backward in anomaly mode, whose "Error detected in ...Backward0" and the
        forward's stack (15 lines) were printed for the stop, as if something had gone wrong."""
        if self.requested and self.signum is not None and self.signum != getattr(signal, "SIGPIPE", None):
            raise self._interrupt(self.signum)
        self._at_once, stopped = True, False
        try:
            with warnings.catch_warnings(record=True) as held:  # the filters in force still apply
                yield
        except KeyboardInterrupt:
            stopped = True
            raise
        finally:
            self._at_once = False
            for w in held:
                if not (stopped and str(w.message).startswith("Error detected in ")):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)

    @staticmethod
    def _interrupt(signum: int) -> KeyboardInterrupt:
        if signum == signal.SIGINT:
            return KeyboardInterrupt()
        return StopSignal(signal.SIGTERM if signum == LAUNCHER_DIED else signum)

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT, HANGUP, LAUNCHER_DIED):
                # one the process was started to ignore stays ignored: `nohup` keeps a run going after a hang-up
                if s is not None and signal.getsignal(s) is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None:
                self._streams[name] = stream
                setattr(sys, name, OutputGuard(stream, self._pipe_broke))  # over run_main's, which would end the run
        return self

    def _pipe_broke(self) -> None:
        if not self.requested:
            self.requested = True
            self.signum = getattr(signal, "SIGPIPE", None)

    def _handle(self, signum, frame) -> None:
        if signum == HANGUP:  # the terminal is gone (an ssh session dropped): writing to it would now fail
            leave_the_hung_up_terminal()
        if self.requested and signum == signal.SIGINT:  # Ctrl-C again: stop now, without a checkpoint
            self.restore()
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.signum = signum
            if self._at_once:
                self._at_once = False  # once: the exception's own unwinding must not be cut by a repeat
                raise self._interrupt(signum)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        for name, stream in self._streams.items():
            if isinstance(getattr(sys, name), OutputGuard):  # the guard this installed, unless replaced since
                setattr(sys, name, stream)
        self._streams.clear()


def signal_names(signums: list[int]) -> str:
    """What stopped a run, from each rank's signal number in rank order (0: none): a signal every rank got
    by its name (one process; torchrun passing its own on), one some ranks got with their numbers
    ("SIGTERM to rank 1"), several joined ("SIGINT to rank 0 and SIGTERM to rank 1"); the death of torchrun,
    which every rank gets but not all at once, is "torchrun's death"."""
    parts = []
    for signum in sorted({s for s in signums if s}):
        ranks = [rank for rank, s in enumerate(signums) if s == signum]
        if signum == LAUNCHER_DIED:
            parts.append("torchrun's death")
            continue
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        parts.append(name if len(ranks) == len(signums) else
                     f"{name} to rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}")
    return " and ".join(parts) or "a signal"


def stop_with_the_launcher() -> bool:
    """Under torchrun, ask the kernel to signal this process when torchrun dies; returns whether it was
    set. Linux only: elsewhere, and outside torchrun, it does nothing and returns False.

    torchrun passes SIGTERM/SIGINT on to its ranks, but a torchrun killed outright (``kill -9``, the OOM
    killer, a job step torn down) left them training with no parent, holding the output folder's lock (a
    resume was refused as "in use by another trainer") and their GPUs. With the parent-death signal
    (``prctl(PR_SET_PDEATHSIG)``) each rank stops as SIGTERM stops it (:class:`StopRequest`: the ranks
    agree, rank 0 writes a checkpoint, exit 0, the lock is released); one still starting (importing,
    loading data, waiting in the rendezvous for a store that died with torchrun) ends at once, with
    nothing trained to lose.

    The kernel's signal rather than a check of ``os.getppid()`` in the loop: it comes wherever the rank is
    (starting, validating, saving), not only between iterations. It comes when the *thread* that started
    the process ends, not the process; torchrun's elastic agent starts, and restarts, its workers from
    the thread that runs it (``_invoke_run`` in torch/distributed/elastic/agent/server/api.py, torchrun's
    main thread), which waits on them until they end, so it comes only when torchrun is gone. The orphan
    then passes to another of torchrun's threads, and the kernel signals it again when that one ends (seen
    here: each rank's handler ran twice, up to a second apart): with SIGTERM as the signal,
    :class:`StopRequest` took the repeat for a second request and aborted without a checkpoint. Hence a
    signal of its own, :data:`LAUNCHER_DIED`, whose repeats ask once. The process sets it on itself
    (torchrun takes no ``preexec_fn``), so call this first thing in a script: a torchrun that dies during
    the call is seen by the parent having changed, and the process then stops as the signal would have
    stopped it. One that died earlier, while the interpreter started, goes unseen (the parent is then init
    or a subreaper, which a torchrun that is a container's first process also is): that rank fails when its
    rendezvous times out.
    """
    if LAUNCHER_DIED is None or "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False  # torchrun's agent names its run in every rank's environment
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(LAUNCHER_DIED), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            return False
    except (OSError, AttributeError):  # no prctl in this C library
        return False
    if os.getppid() != parent:  # torchrun died between the two looks (parent 1 alone proves nothing: torchrun
        os.kill(os.getpid(), LAUNCHER_DIED)  # may be a container's first process)
    return True


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT/SIGHUP to the main process, which finishes the iteration
    (it may still need their batch), saves, and shuts them down."""
    for s in (signal.SIGTERM, signal.SIGINT, HANGUP):
        if s is not None:
            signal.signal(s, signal.SIG_IGN)


def stop_loader_workers(timeout: float = 5.0) -> None:
    """Kill this process's loader workers (daemonic children).

    After a failure the loader that owns them may stay referenced by the traceback, and the exit
    handler's polite SIGTERM, which the workers ignore (:func:`ignore_stop_signals`), would leave the
    exit waiting for them forever. The loader's SIGCHLD handler, which raises when a worker dies, is
    set aside meanwhile so every worker is reached.
    """
    workers = [c for c in multiprocessing.active_children() if c.daemon]
    if not workers:
        return
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if main_thread else None
    try:
        for child in workers:
            child.kill()
        for child in workers:
            child.join(timeout)
    finally:
        if main_thread:
            signal.signal(signal.SIGCHLD, old)
