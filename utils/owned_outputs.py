"""A rerun replaces the files a script wrote itself, and nothing else: the one home of that rule for the scripts
whose outputs have fixed names (the demo, the study).

The script keeps a record of what it wrote (a JSON file: each file's path, relative to the record's folder, and
SHA-256) beside its outputs; a folder of outputs moved or copied with its record stays the script's own.
Before it writes again, every file at a name it is about to write that the record lacks, or whose content differs
from the record's (a user's own file, or one of the script's changed by hand since), or a symbolic link there, is
moved aside into a new ``<name>.before-<time>`` folder (:func:`utils.files.keep_aside_together`), never replaced.

* :func:`folders_in_the_way`: which planned names hold a folder (a script checks them before its work: it can
  neither move such a folder aside as a file nor write there);
* :func:`foreign_outputs`: which of the planned files the script did not write as they are;
* :func:`keep_aside_foreign_outputs`: move those aside, folder by folder, and say so;
* :func:`record_outputs`: update the record once the outputs are written (earlier runs' entries are kept);
  :func:`recording_outputs`: around the writing, so that it is updated when the script stops part-way too.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from utils.errors import UserError, counted
from utils.files import json_text, keep_aside_together, write_text


def file_digest(path: Path) -> str:
    """The SHA-256 of ``path``'s content, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def as_written(path: Path, digest: str) -> bool:
    """Whether ``path`` is a file (not a symbolic link) whose SHA-256 is ``digest``: as the run that recorded that
    digest wrote it. False when it cannot be read."""
    try:
        return not path.is_symlink() and path.is_file() and file_digest(path) == digest
    except OSError:
        return False


def _record_key(path: Path, record: Path) -> str:
    """How the record at ``record`` names ``path``: relative to the record's folder (``../figs/a.png`` for a file
    beside it), so that the pair can be moved or copied together."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(Path(record).parent))


def _recorded_digest(written: dict[str, str], path: Path, record: Path) -> str | None:
    """The SHA-256 the record's entries ``written`` hold for ``path``: under its relative key, or under its absolute
    path (records written before the keys were relative)."""
    return written.get(_record_key(path, record), written.get(os.path.abspath(path)))


def read_record(record: Path) -> dict[str, str]:
    """The record at ``record``: ``{path: SHA-256}``; empty when it is missing or unreadable (then every
    file found at a planned name counts as foreign, and is kept aside rather than replaced)."""
    try:
        found = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def folders_in_the_way(planned: Sequence[Path]) -> list[Path]:
    """The ``planned`` paths at which a folder (not a link to one) stands, in the order of ``planned``."""
    return [p for p in planned if p.is_dir() and not p.is_symlink()]


def foreign_outputs(planned: Sequence[Path], record: Path) -> list[Path]:
    """The files at ``planned`` paths that are not there as the record at ``record`` says the script wrote them:
    absent from it, of another content, or a symbolic link. Returns them in the order of ``planned``."""
    written = read_record(record)
    return [p for p in planned
            if p.is_symlink() or (p.is_file() and _recorded_digest(written, p, record) != file_digest(p))]


def keep_aside_foreign_outputs(planned: Sequence[Path], record: Path, folders: Sequence[tuple[Path, str]],
                               who: str) -> list[Path]:
    """Move the :func:`foreign_outputs` of ``planned`` aside: those in (or below) the first folder of ``folders``
    (``(folder, name)`` pairs) into ``<folder>/<name>.before-<time>/``, the rest in the next folder likewise, all or
    none (:func:`utils.files.keep_aside_together`); print one line per folder naming ``who`` ("the demo") and where
    the files went. Returns the foreign files that lie in none of ``folders`` (left where they are)."""
    foreign = foreign_outputs(planned, record)
    groups = []
    for folder, name in folders:
        here = [p for p in foreign if Path(folder).absolute() in p.absolute().parents]
        foreign = [p for p in foreign if p not in here]
        if here:
            groups.append((here, Path(folder), Path(folder) / name))
    kept = keep_aside_together([(here, name) for here, _, name in groups])
    for (here, folder, _), to in zip(groups, kept):
        one = len(here) == 1
        print(f"=> {counted(len(here), 'file')} of the names {who} writes {'was' if one else 'were'} in {folder}, and "
              f"not as {who} wrote {'it' if one else 'them'} (yours, or changed since): moved to {to}/")
    return foreign


def record_outputs(planned: Sequence[Path], record: Path) -> None:
    """Update the record at ``record``: the SHA-256 of each ``planned`` file that is there (and not a link); a planned
    name with no such file leaves it. The record's entries for files not planned this time (written by an earlier run
    to another folder, e.g. another ``--figs-dir``) are kept: those files stay the script's own while unchanged."""
    digests = {k: v for k, v in read_record(record).items() if isinstance(k, str) and isinstance(v, str)}
    for p in planned:
        digests.pop(os.path.abspath(p), None)
        digests.pop(_record_key(p, record), None)
    digests.update({_record_key(p, record): file_digest(p) for p in planned if p.is_file() and not p.is_symlink()})
    write_text(record, json_text(digests))


@contextlib.contextmanager
def recording_outputs(planned: Sequence[Path], record: Path) -> Iterator[None]:
    """Around the writing of ``planned``: :func:`record_outputs` at its end, and also when it stops part-way (a full
    disk, Ctrl-C), so that the files written before the stop (each whole: written by a rename) stay the script's own
    and its next run replaces them, instead of moving them aside as a user's. A record that cannot be written then
    (the disk still full) leaves the failure as it was: those files are only kept aside by the next run."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError, UserError):
            record_outputs(planned, record)
        raise
    record_outputs(planned, record)
