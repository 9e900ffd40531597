"""One writer per output folder: an exclusive lock that the kernel releases when its holder dies.

Two trainers writing one ``--output-dir`` replace each other's checkpoints and log; two testers writing
one ``--save`` mix their restorations under one record. The first run takes an ``flock`` on
``<folder>/.lock`` (and writes its role, PID and host there); a second one is refused with the holder's
PID. The kernel drops the lock when the holding process exits in any way (even kill -9), so a lock file left
by a dead run never blocks the next one; a run that ends removes its lock file. On NFS, Linux maps ``flock``
to byte-range locks, which the server arbitrates across nodes.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from utils.errors import UserError
from utils.eval.outputs import OutputFolderError, check_writable_folder

LOCK_NAME = ".lock"


class OutputFolderBusy(UserError):
    """Another live run holds the output folder."""


class OutputLock:
    """``with OutputLock(folder):`` holds ``folder`` for this process (created if missing). ``flag`` names
    the folder in messages, ``role`` what holds it, ``fix`` what to do when a file is in the way."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--output-dir", role: str = "trainer",
                 fix: str = "choose another --output-dir (or --name)"):
        self.folder = Path(folder)
        self.flag, self.role, self.fix = flag, role, fix
        self._fd: int | None = None
        self._made = False  # this lock created the folder: a run that wrote nothing leaves no folder behind

    def acquire(self) -> "OutputLock":
        self._made = not self.folder.exists()
        check_writable_folder(self.folder, self.flag, fix=self.fix)
        path = self.folder / LOCK_NAME
        attempts_left = 5
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError as exc:
                if self.folder.is_dir():  # not a folder that went away: a dangling link at the lock's path
                    raise OutputFolderError(f"{self.flag} {self.folder}: cannot create its lock file {path} "
                                            f"({exc.strerror}; a link to a missing place?) — remove it, or "
                                            f"{self.fix}") from None
                self._made = True  # a holder that made the folder removed it on release, just now: make it again
                self.folder.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self._same_file(fd, path):
                    break
                os.close(fd)  # a holder that made the folder removed this lock file on release: take the new one
                self._made = not self.folder.exists()
                self.folder.mkdir(parents=True, exist_ok=True)
            except BlockingIOError:
                if attempts_left := attempts_left - 1:  # a --dry-run's look at the lock holds it an instant
                    os.close(fd)
                    time.sleep(0.05)
                    continue
                busy = self._busy(fd)
                os.close(fd)
                raise busy from None
            except BaseException:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.role}: PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def check_free(self) -> None:
        """Raise :class:`OutputFolderBusy` when another live run holds the folder now; creates and writes nothing
        (for ``--dry-run``, which must not say a run "would train" where the real one is refused)."""
        try:
            fd = os.open(self.folder / LOCK_NAME, os.O_RDONLY)
        except OSError:  # no lock file (or no folder): nobody holds it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise self._busy(fd) from None
        finally:
            os.close(fd)

    def _busy(self, fd: int) -> OutputFolderBusy:
        """The refusal naming the holder whose text the lock file ``fd`` holds."""
        role, holder = self._holder(os.pread(fd, 256, 0).decode(errors="replace"))
        who = f"another {role}" if role == self.role else f"a {role}" if role else "another run"
        after = ", resume it later with --resume auto," if self.role == "trainer" else ""
        return OutputFolderBusy(f"{self.flag} {self.folder} is in use by {who} ({holder}); "
                                f"wait for it to finish{after} or choose another {self.flag}")

    @staticmethod
    def _holder(text: str) -> tuple[str, str]:
        """``(role, "PID n on host")`` from a lock file's text (role ``""`` in files written without one)."""
        role, sep, where = text.strip().partition(": ")
        return (role, where) if sep and where.startswith("PID ") else ("", text.strip() or "unknown")

    @staticmethod
    def _same_file(fd: int, path: Path) -> bool:
        """The locked descriptor is still the file at ``path`` (not one unlinked by a releasing holder)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)

    def release(self) -> None:
        """Unlock, removing the lock file (still under the lock) so that a finished run leaves no ``.lock``
        in a user's folder; a folder this lock created and nothing else wrote into (a run that failed at its
        start) is removed too, so that "nothing was written" holds. A run that opened the old lock file in
        the meantime notices it was unlinked (:meth:`_same_file`) and locks a new one."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            path = self.folder / LOCK_NAME
            if self._same_file(self._fd, path):  # never another holder's file (ours removed by hand meanwhile)
                path.unlink()
            if self._made and not any(self.folder.iterdir()):
                self.folder.rmdir()
        except OSError:
            pass  # the folder went away, or something arrived in it meanwhile: nothing to tidy, or it stays
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
