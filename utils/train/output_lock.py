"""One trainer per output folder: an exclusive lock that the kernel releases when its holder dies.

Two runs writing one ``--output-dir`` replace each other's checkpoints and log. The first trainer takes
an ``flock`` on ``<output-dir>/.lock`` (and writes its PID and host there); a second one is refused with
the holder's PID. The kernel drops the lock when the holding process exits in any way (even kill -9),
so a lock file left by a dead run never blocks the next one. On NFS, Linux maps ``flock`` to
byte-range locks, which the server arbitrates across nodes.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from utils.errors import UserError
from utils.eval.outputs import check_writable_folder

LOCK_NAME = ".lock"


class OutputFolderBusy(UserError):
    """Another live trainer holds the output folder."""


class OutputLock:
    """``with OutputLock(folder):`` holds ``folder`` for this process (created if missing)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        check_writable_folder(self.folder, "--output-dir", fix="choose another --output-dir (or --name)")
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderBusy(f"--output-dir {self.folder} is in use by another trainer ({holder}); wait for "
                                   f"it to finish, resume it later with --resume auto, or choose another "
                                   f"--output-dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
