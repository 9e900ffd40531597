"""Standard output and error, whose reader may go away: a pipe's (``| head``; ``| tee run.txt``, whose ``tee``
Ctrl-C ends at once) or a terminal's (an ssh session that dropped). What cannot be said any more goes to
/dev/null, and the script ends or stops as its caller decides (:func:`utils.errors.run_main`,
:class:`utils.train.signals.StopRequest`) instead of with a ``BrokenPipeError`` traceback.

And file descriptor 2, where C libraries write lines of their own (libpng, libjpeg, torch.profiler's kineto):
:data:`descriptor_2` sends it to a scratch file around a call and sorts what arrived there. Standard library only.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

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


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` whole; a stderr nobody reads any more (a closed pipe) is not an error here."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _flush_python_stderr() -> None:
    """Python's own text still buffered for stderr, written out (none to write, or nobody to read it: nothing)."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


class Descriptor2Capture:
    """File descriptor 2, where C libraries write (libpng, libjpeg, kineto), sent to a scratch file of this process
    for the length of a block, ``with descriptor_2(sort):``. Afterwards the real stderr is back on descriptor 2,
    everything that arrived meanwhile (the library's lines, another thread's, Python's own) is handed to
    ``sort(text)``, and the text it returns is written on to the real stderr, as it came: nothing but what ``sort``
    leaves out is lost.

    Blocks take turns under ``lock`` (one descriptor 2 per process; not nested); hold it to print on stderr where
    no block may capture the line. A process forked while another thread's block captures starts with its real
    stderr, the turn free and a scratch file of its own. Without a temporary folder or a descriptor 2 to take over,
    the block runs as it is.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: int | None = None  # the process the scratch file belongs to
        self.scratch: int | None = None  # kept open: one per process, emptied for each block
        self.saved: int | None = None  # the real stderr, while a block captures
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a child forked while another thread's block captured: the real stderr back on descriptor 2, the
        parent's scratch file (and its offset) left to the parent, and the turn free."""
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        if self.scratch is not None:
            os.close(self.scratch)
        self.lock = threading.Lock()
        self.owner = self.scratch = self.saved = None

    def _scratch(self) -> int:
        if self.owner != os.getpid():
            fd, name = tempfile.mkstemp(prefix="stderr-")
            os.unlink(name)
            self.owner, self.scratch = os.getpid(), fd
        return self.scratch

    def _start(self) -> int | None:
        """Descriptor 2 to the emptied scratch file; returns the real stderr's copy (None: not captured)."""
        try:
            scratch = self._scratch()
            os.ftruncate(scratch, 0)
            os.lseek(scratch, 0, os.SEEK_SET)
            saved = os.dup(2)
        except OSError:
            return None
        try:
            os.dup2(scratch, 2)
        except OSError:
            os.close(saved)
            return None
        return saved

    def _finish(self, saved: int, sort: Callable[[str], str]) -> None:
        """The real stderr back on descriptor 2; what arrived meanwhile sorted, the rest passed on."""
        os.dup2(saved, 2)
        os.close(saved)
        scratch = self.scratch
        written = os.lseek(scratch, 0, os.SEEK_CUR)
        if not written:
            return
        os.lseek(scratch, 0, os.SEEK_SET)
        chunks, left = [], written
        while left > 0 and (chunk := os.read(scratch, left)):
            chunks.append(chunk)
            left -= len(chunk)
        other = sort(b"".join(chunks).decode("utf-8", "surrogateescape"))
        if other:
            _write_all(2, other.encode("utf-8", "surrogateescape"))

    @contextmanager
    def __call__(self, sort: Callable[[str], str]) -> Iterator[None]:
        _flush_python_stderr()  # what Python had to say before the block is not the block's
        with self.lock:
            self.saved = self._start()
            try:
                yield
            finally:
                saved, self.saved = self.saved, None
                if saved is not None:
                    _flush_python_stderr()  # Python's lines of the block, sorted with the rest
                    self._finish(saved, sort)


descriptor_2 = Descriptor2Capture()
"""This process's one :class:`Descriptor2Capture` (descriptor 2 is one per process, so every capture takes its turn
here): ``with descriptor_2(sort):`` around a call whose C library's lines ``sort`` takes out."""
