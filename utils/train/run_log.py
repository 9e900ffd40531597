"""The run's JSON-lines log (``log.jsonl``): its records written, mended after a crash, rewound on a resume
and read; and the console's messages. Only rank 0 writes (``enabled=False`` elsewhere)."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from utils.errors import UserError
from utils.files import disk_full, finite_or_null, is_disk_full, replace_file

# The logged parts of an iteration, in the order of the objective, with readable names. The map loss
# itself (``map``, the total the network minimises: L1 x --Sigma plus the barycenter terms) stays in
# the log; the console shows its parts. ``potential`` is the potential term inside the map loss,
# ``potentials`` the potentials' own (adversarial) loss.
LOSS_LABELS = (("l1", "l1"), ("transport", "transport"), ("orthogonality", "orthogonality"),
               ("contrastive", "contrastive"), ("potential", "potential term"), ("potentials", "potentials step"),
               ("congruence", "congruence"))



class Console:
    """Prints on rank 0 only; ``warn`` frames the message so it is not missed in a long log."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg, file=sys.stdout)

    def warn(self, msg: str) -> None:
        if self.enabled:
            bar = "!" * 78
            tqdm.write(f"{bar}\n!! WARNING: {msg}\n{bar}", file=sys.stderr)


class JsonlLog:
    """Appends one JSON object per line to ``path``, each record one unbuffered write (a crash of the process
    loses nothing written before it).

    Records have ``"kind": "run"`` (one per start: objective, lambdas, where it starts), ``"kind": "iter"``
    (losses, lr, seconds per iteration) or ``"kind": "epoch"``
    (mean losses, validation PSNR, seconds). Non-finite floats are written as null.

    A write that fails part-way (a full disk, a quota) is cut back off, so the log still ends at its last
    complete record, and a full disk is a :class:`~utils.files.DiskFullError` naming the log and its folder.
    Only a kill or a power cut in the middle of a write can leave part of a record behind: a resumed run
    removes it first (:func:`mend_log`).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._line_checked = False
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (json.dumps(finite_or_null(record), allow_nan=False) + "\n").encode()
        end_open_line = not self._line_checked  # a line not ended (not mended first): end it, or this record joins it
        self._line_checked = True
        append_lines(self.path, line, end_open_line, "record", ", which --resume removes")


def append_lines(path: Path, data: bytes, end_open_line: bool = False, unit: str = "line",
                 left_torn: str = "", durable: bool = False) -> None:
    """Append ``data`` (whole lines) to ``path`` in unbuffered writes; a write that fails part-way is cut back off,
    so the file still ends at its last complete line, and a full disk (or quota) is a
    :class:`~utils.files.DiskFullError` naming the file and its folder. ``end_open_line``: first end a last line
    that has no newline. ``unit``: what the file's lines are, in the error; ``left_torn``: what the error adds
    when not even the cut-back worked. ``durable``: on the disk (fsync) before it returns."""
    try:  # not through a link: one planted in a run's folder (log.discarded.jsonl -> ~/.bashrc) had records appended
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # to the file it names
    except OSError as exc:
        if not os.path.islink(path):
            raise
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}): its {unit}s are not appended through "
                        f"it to a file elsewhere; remove the link (or put the file it names in its place) and run "
                        f"again") from exc
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end_open_line and end > 0 and os.pread(fd, 1, end - 1) != b"\n":
            data = b"\n" + data
        try:
            left = memoryview(data)
            while left:  # a regular file takes it in one write; a short one is followed by the error
                left = left[os.write(fd, left):]
        except BaseException as exc:
            try:
                os.ftruncate(fd, end)  # no part of what was being written stays behind
                mended = True
            except OSError:
                mended = False
            if is_disk_full(exc):
                kept = (f"{path.name} ends at its last complete {unit}" if mended else
                        f"{path.name} ends in part of a {unit}{left_torn}")
                raise disk_full(path, len(data), kept) from exc
            raise
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def mend_log(path: str | os.PathLike) -> tuple[int, int]:
    """Remove from the log at ``path`` its lines that are not JSON, records cut short when a run stopped while
    writing them, and return how many lines and bytes went; a resumed run calls it before it writes.

    Such a line is the log's last (a kill or a power cut in the middle of a write; a full disk under versions
    that left the part written), or one that such a version ended with a newline on resume and wrote after. It
    is removed, not kept aside: it holds no complete value, and what it began to record comes back, since
    iteration records are written before the checkpoint of their step (a cut one's iteration, past the
    checkpoint resumed, is trained and logged again), an epoch's record after its checkpoint (a cut one is
    written again from that checkpoint: :func:`record_lost`), and a run's record at each start. So the log
    stays valid JSON lines, which ``jq`` and ``pandas.read_json(lines=True)`` refuse to read past one bad line.
    A last record without its newline keeps it. The log is replaced atomically: a crash meanwhile leaves it as
    it was.

    It reads the log from its end, back to :data:`MENDED_SPAN` bytes of whole records in a row (:func:`_mend_start`):
    each resume mends the log before it writes, so what a stop left is in its last lines, where reading the whole
    log (some 861,000 records at the paper's scale) took seconds. A line torn deeper (a version that did not mend
    on resume, and wrote on) stays; :func:`read_log` passes over it.
    """
    path = Path(path)
    if not path.is_file():
        return 0, 0
    start = _mend_start(path, MENDED_SPAN)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    kept, torn = [], []
    for line in data.splitlines(keepends=True):
        (kept if _is_json(line) else torn).append(line)
    if not torn and (not data or data.endswith(b"\n")):
        return 0, 0
    text = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept)
    replace_file(path, _head(path, start) + text)
    return len(torn), sum(len(line) for line in torn)


# How far back from its end :func:`mend_log` reads a log: to where this many bytes of whole records in a row (some
# 11,000 at --log-every 10, hours of training) precede what a stop may have left at its end.
MENDED_SPAN = 1 << 22


def _mend_start(path: Path, span: int = MENDED_SPAN) -> int:
    """The offset of the line of the log at ``path`` from which on :func:`mend_log` reads it: the first of the last
    ``span`` bytes of lines in a row that are each one JSON value ended by a newline (0: the whole log)."""
    whole, size = 0, path.stat().st_size
    for start, line in lines_from_end(path):
        if line and b"\r" not in line and _is_json(line) and start + len(line) < size:  # and its newline
            whole += len(line) + 1
            if whole >= span:
                return start
        else:
            whole = 0
    return 0


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file at ``path``."""
    with open(path, "rb") as fh:
        return fh.read(size)


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # also a byte that is not UTF-8
        return False
    return True


def discarded_log(path: Path) -> Path:
    """Where :func:`rewind_log` keeps the records it moves out of the log ``path``: ``<stem>.discarded.jsonl``."""
    return path.with_name(f"{path.stem}.discarded.jsonl")


def rewind_log(path: str | os.PathLike, global_step: int) -> int:
    """Move the ``iter`` and ``epoch`` records past ``global_step`` out of the log at ``path``, into
    ``<stem>.discarded.jsonl`` beside it, with the ``run`` records of starts past it; returns how many moved.

    A run killed after its last checkpoint logged iterations whose training is lost; the resumed run
    trains (and logs) them again. Rewinding keeps one record per iteration in the log, and one ``run``
    record per start of the timeline the log now tells (a start from a later checkpoint, resumed past
    now, belongs to the lost one), and the moved records are kept, not deleted. The discarded file is
    appended first and the log then replaced atomically, so a crash in between can duplicate a record but
    never lose one.

    It reads the log from its end back to the last of those records at or before ``global_step``
    (:func:`_rewind_start`): each start rewinds the log before it writes, so their global steps never go back,
    and what a resume moves is in the log's last lines, where reading the whole log took seconds at the paper's
    scale. The lines before are kept byte for byte (carriage returns too, where reading the whole log made every
    line end in a newline alone; this project writes none).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    start = _rewind_start(path, global_step)
    with open(path, "rb") as fh:
        fh.seek(start)
        lines = io.TextIOWrapper(io.BytesIO(fh.read())).read().splitlines(keepends=True)  # as read_text reads
    kept, moved = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line if line.endswith("\n") else line + "\n")  # torn: a resume runs mend_log first
            continue
        (moved if _past(record, global_step) else kept).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    append_lines(discarded_log(path), "".join(moved).encode(), end_open_line=True, durable=True)
    replace_file(path, _head(path, start) + "".join(kept).encode())
    return len(moved)


def _past(record: Any, global_step: int) -> bool:
    """Whether ``record`` is one :func:`rewind_log` moves: an ``iter``, ``epoch`` or ``run`` record past
    ``global_step``."""
    return (isinstance(record, dict) and record.get("kind") in ("iter", "epoch", "run")
            and isinstance(record.get("global_step"), int) and record["global_step"] > global_step)


def _rewind_start(path: Path, global_step: int) -> int:
    """The offset in the log at ``path`` of the line after its last ``iter``, ``epoch`` or ``run`` record at or
    before ``global_step`` (0 if none): :func:`rewind_log` moves none before it."""
    for start, line in lines_from_end(path):
        try:
            record = json.loads(line) if b"\r" not in line else None  # read as rewind_log reads it: not one line
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("kind") in ("iter", "epoch", "run")
                and type(record.get("global_step")) is int and not _past(record, global_step)):  # not a bool
            return start + len(line) + 1
    return 0


def read_log(path: str | os.PathLike, start: int = 0) -> list[dict[str, Any]]:
    """The records (JSON objects) of the log at ``path``, from its byte ``start`` on (where a line begins); a line
    that is not one (torn by a crash, a stray byte, blank) is passed over."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, "rb") as fh:
        fh.seek(start)
        text = io.TextIOWrapper(io.BytesIO(fh.read()), errors="replace").read()
    for line in text.splitlines():  # a stray byte must not hide the whole log
        line = line.strip()
        if line:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(record, dict):  # every record is an object: anything else is not this log's
                out.append(record)
    return out


def record_lost(path: str | os.PathLike, epoch: int, epoch_start: int) -> bool:
    """Whether the log at ``path`` tells a run up to epoch ``epoch`` (a record at or past ``epoch_start``, the
    global step the epoch began after) but holds no record of that epoch.

    It reads the log from its end, the records of :func:`read_log`, and stops at the epoch's record: a resume
    from the end of an epoch finds it within the log's last lines, where reading the whole log took seconds at the
    paper's scale. A line is parsed only while no record has told the run yet, or when it can be the epoch's record
    (it holds ``"epoch"`` twice, as key and as kind, or an escape that could spell them)."""
    if not Path(path).is_file():
        return False
    told = False
    for _, line in lines_from_end(Path(path)):
        if told and line.count(b'"epoch"') < 2 and b"\\" not in line:
            continue
        for text in line.decode("utf-8", "replace").splitlines():  # read_log's lines, a stray byte replaced
            try:
                record = json.loads(text) if text.strip() else None
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("kind") == "epoch" and record.get("epoch") == epoch:
                return False
            told = told or isinstance(record.get("global_step"), int) and record["global_step"] >= epoch_start
    return told


def lines_from_end(path: Path, block: int = 1 << 20) -> Iterable[tuple[int, bytes]]:
    """The lines of the file at ``path`` (split at newlines, without them), each with its offset in the file:
    ``(offset, line)``, its last first, read a block at a time from its end."""
    with open(path, "rb") as fh:
        end, rest = fh.seek(0, os.SEEK_END), b""
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            lines = (fh.read(end - start) + rest).split(b"\n")
            at = end + len(rest) + 1  # one past the last line read: it ends where the block's data and rest end
            for line in reversed(lines[1:]):
                at -= len(line) + 1
                yield at, line
            end, rest = start, lines[0]  # the first may begin in the block before
        yield 0, rest
