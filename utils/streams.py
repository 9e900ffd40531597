"""Standard output and error, whose reader may go away: a pipe's (``| head``; ``| tee run.txt``, whose ``tee``
Ctrl-C ends at once) or a terminal's (an ssh session that dropped). What cannot be said any more goes to
/dev/null, and the script ends or stops as its caller decides (:func:`utils.errors.run_main`,
:class:`utils.train.signals.StopRequest`) instead of with a ``BrokenPipeError`` traceback. Standard library only.
"""
from __future__ import annotations

import os
from typing import Any, Callable, TextIO

PIPE_CLOSED_STATUS = 141  # the shell's status for a process ended by writing to a pipe nobody reads (128 + SIGPIPE)


class OutputClosed(BrokenPipeError):
    """Standard output or error went to a pipe whose reader has gone: nothing more can be said, and the script
    ends quietly with :data:`PIPE_CLOSED_STATUS`, as a program that writes to a closed pipe does."""


def point_at_devnull(fd: int) -> None:
    """Make ``fd`` write to /dev/null from now on; a descriptor already closed is left so."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


class OutputGuard:
    """``stream`` (``sys.stdout``, ``sys.stderr``), whose reader may go away (``| head``; ``| tee run.txt``,
    whose ``tee`` Ctrl-C ends at once while a trainer finishes its iteration). On a broken pipe the stream's
    descriptor is pointed at /dev/null (the text still buffered goes there too) and ``gone()`` is called, once:
    :func:`utils.errors.run_main`'s raises :class:`OutputClosed`, a trainer's asks for a stop with a checkpoint
    (:class:`utils.train.signals.StopRequest`). Every other attribute is the stream's."""

    def __init__(self, stream: TextIO, gone: Callable[[], None]):
        self.stream = stream
        self._gone = gone
        self.broken = False  # the reader went: what was written since went to /dev/null

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._lost()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._lost()

    def _lost(self) -> None:
        try:
            point_at_devnull(self.stream.fileno())
        except (OSError, ValueError):  # no descriptor (a stream in memory): nothing to point elsewhere
            pass
        if not self.broken:
            self.broken = True
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def leave_the_hung_up_terminal() -> None:
    """Point standard output and error, where they are a terminal, at /dev/null: after a hang-up every write to
    the terminal fails (EIO), and the first progress line would end the run before its checkpoint."""
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                point_at_devnull(fd)
        except OSError:  # a descriptor already closed: nothing to write to either
            continue
