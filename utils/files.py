"""Writing files so that nothing a user has is torn, overwritten or lost: the one home of that rule.

* :func:`atomic_write`: every file the project writes (checkpoints, ``latest``, the run log, result
  images and tables) is written to a hidden temporary beside its destination, synced to the disk,
  then renamed over it. A crash or a full disk at any moment leaves the old file or the complete new
  one, never half a file; a symbolic link at the destination is replaced, never written through.
* :class:`DiskFullError`: a full disk, named with the folder and the bytes needed.
* :class:`FileTooLargeError`: a file past its file system's or the process's size limit (EFBIG), named.
* :func:`keep_aside`: an earlier run's files that a fresh run would write over (its checkpoints, its log,
  its TensorBoard events) are moved together into a new ``<name>.before-<time>`` folder, never replaced;
  all or none of them (:class:`KeepAsideError` when one cannot be moved: those moved before it move back);
  :func:`keep_aside_together` does the same across several folders (the tester's outputs).
* :func:`check_output_file`: a flag naming one output file (a bench's ``--trace``, ``--json``) is checked before
  the work: not a folder, and in a folder that exists (a mistyped folder is an error, not made without a word),
  except below ``results/``, where the scripts' defaults write.
* :func:`remove_stale_temporaries`: the temporaries of :func:`atomic_write` that a killed writer (``kill -9``)
  left behind, removed by the next run into the folder; only files named exactly as :func:`atomic_write`
  names them (:func:`temporary_target`), once their writer has been gone a minute or the file has not
  changed for 15 minutes (:func:`is_stale_temporary`).
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from utils.errors import UsageError, UserError, exception_chain, file_too_large, human_bytes

FREE_SPACE_MARGIN = 2**20  # bytes left free beyond a write's own size before it is refused


class DiskFullError(UserError):
    """A write did not fit on its disk; the message names the file, its folder and the bytes needed."""


class FileTooLargeError(UserError):
    """A write passed the largest file its file system or this process allows (EFBIG); names the file and folder."""


class KeepAsideError(UserError, OSError):
    """Files could not be moved aside (:func:`keep_aside`). ``detail`` says which file and why, and where every
    file is now (all where they were, or some still in the kept folder); ``undo`` is what the user does first
    ("move them back from there, then ", or nothing). The message adds a fix, which a caller with a better one
    (the trainers: another --output-dir) replaces. An ``OSError`` too: callers that go on past a file they
    cannot move (the loss figure) still do."""

    def __init__(self, detail: str, fix: str, undo: str = ""):
        super().__init__(f"{detail} — {undo}{fix}")
        self.detail, self.fix, self.undo = detail, fix, undo


def disk_full(path: Path, needed: int | None, kept: str | None = None, margin: int = 0) -> DiskFullError:
    """The error for ``path`` not fitting its folder (``needed`` bytes, when known); ``kept`` says what became
    of the file there (by default: an existing one was left as it was). ``margin``: the bytes a write refused
    before it started must leave free beside its own (said, or "needs 27 KiB and 76 KiB are free" reads as
    no reason at all)."""
    free = shutil.disk_usage(path.parent).free
    if needed is None:
        need = "more space"
    else:
        need = human_bytes(needed) + (f" ({needed:,} bytes)" if needed >= 1024 else "")  # "312 bytes" once
        if margin:
            need += f" plus {human_bytes(margin)} left free"
    if kept is None:
        kept = f"the existing {path.name} was left as it was" if path.exists() else ""
    kept = f" ({kept})" if kept else ""
    return DiskFullError(f"disk full: writing {path.name} to {path.parent} needs {need} and "
                         f"{human_bytes(free)} are free; free space there or choose another folder{kept}")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from or during is ENOSPC/EDQUOT."""
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in exception_chain(exc))


def _short(name: str, limit: int = 100) -> str:
    """``name`` cut to at most ``limit`` bytes, its extension kept: a temporary's name adds about 30 to its
    target's, and a target near the file system's 255-byte limit would otherwise fail to get one. The extension
    stays so that the temporary of a long ``<...>.png`` still reads as one of a ``.png`` (what
    :func:`remove_stale_temporaries`' callers ask of a target's name)."""
    if len(os.fsencode(name)) <= limit:
        return name
    ext = os.path.splitext(name)[1]
    ext = ext if len(os.fsencode(ext)) <= limit // 4 else ""
    stem = name[:len(name) - len(ext)]
    while len(os.fsencode(stem + ext)) > limit:
        stem = stem[:-1]
    return stem + ext


def _umask() -> int:
    """This process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The permissions ``path`` gets when replaced: those of the file it replaces, else what ``open()``
    would give a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], size: int | None = None) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync, then rename it over ``path``.

    A crash at any moment leaves either the old file or the complete new one, never a torn file.
    With ``size`` (the bytes ``write`` will write) a folder without that much free space is refused
    before anything is written; a full disk during the write is a :class:`DiskFullError` naming the
    folder and the bytes needed. The temporary, ``.<name>.<pid>.<random>.tmp``, is hidden (image
    listings skip it) and names its writer's process, so that :func:`remove_stale_temporaries` can tell an
    orphan from a file being written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None and shutil.disk_usage(path.parent).free < size + FREE_SPACE_MARGIN:
        raise disk_full(path, size, margin=FREE_SPACE_MARGIN)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(path.name)}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a folder made read-only or immutable (chattr +i) meanwhile
        named = _named_for(exc, exc.filename, path)
        if named is exc:
            raise
        raise named from exc
    try:
        try:
            os.fchmod(fd, _new_file_mode(path))  # mkstemp's 0600 would hide the result from everyone else
        except OSError:
            pass  # a file system without permissions (vfat, some network mounts) keeps its own
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, size) from exc
        if any(isinstance(e, OSError) and e.errno == errno.EFBIG for e in exception_chain(exc)):
            raise FileTooLargeError(file_too_large(f"writing {path.name} to {path.parent}")) from exc
        named = _named_for(exc, tmp, path)
        if named is exc:
            raise
        raise named from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _named_for(exc: BaseException, tmp: str | None, path: Path) -> BaseException:
    """``exc`` as the user should read it: an ``OSError`` about :func:`atomic_write`'s hidden temporary ``tmp``
    ("permission denied: .../.epoch_003.pth.2626.d0g1.tmp") renamed after ``path``, the file being written;
    anything else as it is."""
    if isinstance(exc, OSError) and tmp is not None and exc.filename == tmp:
        return type(exc)(exc.errno, exc.strerror, str(path))
    return exc


# A temporary of atomic_write: '.<name>.<pid>.<8 random characters>.tmp' (older versions: no pid).
# The random characters are tempfile's (a-z, 0-9, _); <name> is the target's name, cut to 100 bytes
# with its extension kept (_short).
_TEMP_RE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")


# A temporary not modified for this long is an orphan even if its process id is in use (it may be
# another process now, or a writer on another machine that died): no write pauses for 15 minutes.
STALE_TEMP_SECONDS = 15 * 60


# A temporary whose writer is no longer running here is removed once it is this old (a live writer on
# another machine sharing the folder keeps its file fresh).
DEAD_WRITER_GRACE_SECONDS = 60


def temporary_target(name: str) -> tuple[str, int | None] | None:
    """``(target name, writer's pid)`` when the file name ``name`` is one :func:`atomic_write` gives its
    temporaries (the pid None in the older naming without one), else None.

    ``.a.png.4242.k2j8x_0a.tmp`` -> ``("a.png", 4242)``; ``a.png``, ``.a.png.tmp``, ``.a.png.4242.tmp`` -> None.
    """
    m = _TEMP_RE.match(name)
    if m is None:
        return None
    return m["name"], int(m["pid"]) if m["pid"] is not None else None


def writer_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs on this machine (this process always does; one this user may not
    signal, or a number that is no pid, counts as alive: nothing of it is removed)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def is_stale_temporary(pid: int | None, age: float, alive: Callable[[int], bool] = writer_alive) -> bool:
    """Whether a temporary of :func:`atomic_write` written by ``pid`` (None: not named), last modified ``age``
    seconds ago, is an orphan: its writer is gone (``alive(pid)`` false) and it is over
    :data:`DEAD_WRITER_GRACE_SECONDS` old, or it has not changed for :data:`STALE_TEMP_SECONDS`."""
    if age > STALE_TEMP_SECONDS:
        return True
    return pid is not None and age > DEAD_WRITER_GRACE_SECONDS and not alive(pid)


def remove_stale_temporaries(folder: str | os.PathLike, targets: Callable[[str], bool],
                             now: float | None = None, named_writer: bool = False) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` left in ``folder`` (not its subfolders) when their writer was
    killed (``kill -9`` during a write); returns the removed files.

    Only plain files named exactly as :func:`atomic_write` names its temporaries (:func:`temporary_target`)
    for a target name that ``targets`` accepts (the names the caller writes) are considered, and only orphans
    (:func:`is_stale_temporary`) are removed: a live writer's file, anything else and links stay. With
    ``named_writer`` only temporaries that name their writer's process count (the older naming without a pid,
    which a user's own hidden ``.<name>.<8 letters>.tmp`` could match, is left alone).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for p in folder.iterdir():
        parsed = temporary_target(p.name)
        if parsed is None or not targets(parsed[0]) or (named_writer and parsed[1] is None):
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not is_stale_temporary(parsed[1], now - st.st_mtime):
            continue
        try:
            p.unlink()
        except FileNotFoundError:  # removed meanwhile (another run tidying the same folder)
            continue
        removed.append(p)
    return removed


class OutputPathError(UsageError):
    """A flag's output file cannot be written where it points (a folder there, or its folder missing); exit
    status 2."""


def check_output_file(path: str | os.PathLike, flag: str, made_as_needed: Sequence[str | os.PathLike] = ("results",),
                      example: str = "out.json") -> Path:
    """Refuse, before any work, a file flag's ``path`` that is a folder (the write would fail at the end, or move
    the folder aside), or whose folder does not exist: a mistyped folder (``reslts/trace.json``) was made without a
    word and the file went there. Folders below one of ``made_as_needed`` (the current folder's ``results/``, where
    the scripts' defaults write; git ignores it) are made when the file is written. ``example``: a file name for
    the error's fix. Returns ``path``; :class:`OutputPathError` names the flag, the folder and the fix."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder: give a file's name, e.g. {flag} {path / example}")
    folder = path.parent
    if folder.is_dir():
        return path
    if folder.exists():
        raise OutputPathError(f"{flag} {path}: {folder} is a file, not a folder — choose another {flag}")
    made = [Path(m).absolute() for m in made_as_needed]
    if any(folder.absolute() == m or m in folder.absolute().parents for m in made):
        return path
    raise OutputPathError(f"{flag} {path}: the folder {folder} does not exist — check the path, or create the folder "
                          f"first (mkdir -p {folder}); below results/ folders are made as needed")


def replace_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write the bytes ``data`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda fh: fh.write(data), size=len(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` by renaming a finished temporary file over it. A file name that is
    not UTF-8 (held by Python as surrogates) is written with backslash escapes, as JSON writes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_file(path, text.encode("utf-8", "backslashreplace"))


def keep_aside(paths: Sequence[Path], name: Path) -> Path:
    """Move ``paths`` (files or folders in ``name``'s folder, or in folders below it) into a new folder
    ``<name>.before-<time>`` beside ``name``, each at its place relative to ``name``'s folder, and return
    that folder.

    ``-2``, ``-3``, ... follow the time when the name is taken (two runs in one second), so an earlier
    kept folder is never merged into or replaced. Renames within one file system: nothing is copied. A folder
    below ``name``'s folder that the move leaves empty (it held only what moved) is removed, and so is its
    parent when that is left empty in turn, up to ``name``'s folder (never removed).

    All or nothing: a file that cannot be moved (a folder without write permission, an immutable one) moves
    back what had moved before it, last first, and removes the new folder, so that no earlier run is left
    half in its folder and half aside (its record moved, its images not, or the reverse); then a
    :class:`KeepAsideError` names the file. Should a move back fail too, the error names the folder that holds
    what is still aside, so that no file is lost track of.
    """
    folder, _ = _move_aside(paths, name)
    _remove_emptied(paths, name.parent)
    return folder


def keep_aside_together(groups: Sequence[tuple[Sequence[Path], Path]]) -> list[Path]:
    """:func:`keep_aside` of each ``(paths, name)`` of ``groups`` (a run's files in several folders: the tester's
    ``--save``, ``--savetar`` and ``--figs-dir``), all or nothing across them: when a file of one folder cannot be
    moved, the files of the folders kept aside before it move back too, and the :class:`KeepAsideError` says so.
    Returns the kept folders, in the order of ``groups``."""
    done: list[tuple[Path, list[tuple[Path, Path]]]] = []
    try:
        for paths, name in groups:
            done.append(_move_aside(paths, name))
    except KeepAsideError as exc:
        if not done:
            raise
        stuck = [(folder, left) for folder, moved in reversed(done) if (left := _move_back(moved, folder))]
        if not stuck:
            raise KeepAsideError(f"{exc.detail}; the {sum(len(m) for _, m in done)} file(s) moved aside from "
                                 f"{len(done)} other folder(s) before it were moved back", exc.fix, exc.undo) from exc
        folders = ", ".join(f"{folder}/ ({len(left)})" for folder, left in stuck)
        raise KeepAsideError(f"{exc.detail}; and file(s) moved aside from other folders before it could not be "
                             f"moved back, for {stuck[0][1][0][0]} ({stuck[0][1][0][1]}): they are still in "
                             f"{folders}, each at the place it had beside that folder", exc.fix,
                             undo="move them back from there, then ") from exc
    except BaseException:  # Ctrl-C or a stop signal: the folders kept aside before it go back too
        for folder, moved in reversed(done):
            _move_back(moved, folder)
        raise
    for (paths, name), (folder, _) in zip(groups, done):
        _remove_emptied(paths, name.parent)
    return [folder for folder, _ in done]


def _move_aside(paths: Sequence[Path], name: Path) -> tuple[Path, list[tuple[Path, Path]]]:
    """The moves of :func:`keep_aside`, all or nothing: returns the new folder and the ``(source, dest)`` moved."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        folder = name.with_name(f"{name.name}.before-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            folder.mkdir()
            break
        except FileExistsError:
            n += 1
    moved: list[tuple[Path, Path]] = []
    try:
        for p in paths:
            dest = folder / Path(p).relative_to(name.parent)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _moved_back(moved, folder, Path(p), dest, exc) from exc
            moved.append((Path(p), dest))  # before the rename: a stop signal landing between the two is undone too
            try:
                os.rename(p, dest)
            except FileNotFoundError:  # moved away meanwhile (another run keeping the same shared folder's files)
                moved.pop()
            except OSError as exc:
                moved.pop()
                raise _moved_back(moved, folder, Path(p), dest, exc) from exc
    except KeepAsideError:
        raise
    except BaseException:  # Ctrl-C or a stop signal (SIGTERM) mid-move: what moved goes back before it is raised
        _move_back(moved, folder)
        raise
    return folder, moved


def _remove_emptied(paths: Sequence[Path], top: Path) -> None:
    """Remove the folders below ``top`` that held ``paths`` and are empty now, deepest first (``top`` stays)."""
    for emptied in sorted({q for p in paths for q in Path(p).parents if top in q.parents}, key=lambda q: -len(q.parts)):
        try:
            emptied.rmdir()  # fails unless empty: a folder holding anything else stays
        except OSError:
            continue


def _reason(exc: OSError) -> str:
    """``exc`` in a few words: its ``strerror`` ("Permission denied"), else its text."""
    return exc.strerror or str(exc)


def _moved_back(moved: list[tuple[Path, Path]], folder: Path, failed: Path, failed_dest: Path,
                exc: OSError) -> KeepAsideError:
    """Undo :func:`keep_aside` after ``failed`` could not be moved to ``failed_dest`` in ``folder``: move each
    ``(source, dest)`` of ``moved`` back, last first (a name taken again at its place meanwhile is not replaced:
    that file stays aside), then remove ``folder`` and the folders made in it, those left empty (only those:
    a folder that moved keeps its own empty subfolders). Returns the error to raise: nothing was moved, or
    which files are still in ``folder``."""
    stuck = _move_back(moved, folder, also_made=[failed_dest])
    head = f"{failed} could not be moved aside ({_reason(exc)})"
    fix = "make its folder writable (and not immutable: chattr -i), or choose another folder"
    if not stuck:
        undone = f": the {len(moved)} file(s) moved before it were moved back" if moved else ""
        return KeepAsideError(f"{head}, so nothing was moved{undone}", fix)
    first, why = stuck[0]
    more = f" (and {len(stuck) - 1} more)" if len(stuck) > 1 else ""
    return KeepAsideError(f"{head}, and moving back what had moved before it failed too, for {first} ({why}){more}: "
                          f"{len(stuck)} file(s) are still in {folder}/, each at the place it had in {folder.parent}",
                          fix, undo="move them back from there, then ")


def _move_back(moved: list[tuple[Path, Path]], folder: Path, also_made: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """Move each ``(source, dest)`` of ``moved`` back, last first (a name taken again at its place meanwhile is not
    replaced: that file stays aside; a source folder removed as emptied is made again), then remove ``folder`` and
    the folders made in it that are left empty (``also_made``: more paths whose folders were made there). Returns
    ``(source, why)`` of each file still in ``folder``."""
    stuck: list[tuple[Path, str]] = []
    for source, dest in reversed(moved):
        if not os.path.lexists(dest) and os.path.lexists(source):  # recorded, then stopped before its rename
            continue
        try:
            if os.path.lexists(source):
                raise FileExistsError(errno.EEXIST, "another file took its name meanwhile", str(source))
            source.parent.mkdir(parents=True, exist_ok=True)
            os.rename(dest, source)
        except OSError as back:
            stuck.append((source, _reason(back)))
    made = {q for dest in [*also_made, *(d for _, d in moved)] for q in dest.parents if folder in q.parents}
    for q in [*sorted(made, key=lambda q: -len(q.parts)), folder]:
        try:
            q.rmdir()  # fails unless empty: a folder holding a file still aside stays
        except OSError:
            continue
    return stuck


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float, however deeply nested, replaced by None: JSON has no NaN or
    Infinity, and strict parsers refuse Python's ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as strict, indented JSON text ending in a newline (non-finite floats as null, other objects
    as their ``str``)."""
    return json.dumps(finite_or_null(value), indent=2, default=str, allow_nan=False) + "\n"
