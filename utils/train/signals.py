"""Stopping a training run politely: SIGTERM/SIGINT set a flag the loop reads after each iteration
(:class:`StopRequest`; a second signal aborts), loader workers leave both signals to the main process, and
their processes are ended when a run fails.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from typing import Any


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop reads after each iteration; a second signal aborts."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # asked twice: stop now, without a checkpoint
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process, which finishes the iteration
    (it may still need their batch), saves, and shuts them down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
