"""A run's output folder: writing a checkpoint whole, the files' names and order, the ``latest`` pointer,
rotation, stale temporaries of killed writers, the newest checkpoint under a folder, and what a ``--model``
path names."""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from utils.checkpoints.guard import CheckpointError
from utils.errors import UsageError
from utils.files import DEAD_WRITER_GRACE_SECONDS, STALE_TEMP_SECONDS, atomic_write  # noqa: F401 (exported)
from utils.files import remove_stale_temporaries as remove_stale_files


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`utils.files.atomic_write`).

    The checkpoint is serialized in memory first (it is 100-400 MB for the paper's network), so its size
    is known before the disk is touched and a full disk is refused with the bytes needed.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    return atomic_write(path, lambda fh: fh.write(data), size=data.nbytes)


def remove_stale_temporaries(output_dir: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Delete temporaries :func:`~utils.files.atomic_write` left behind in ``output_dir`` when its writer was killed
    (``kill -9`` during a save); returns the removed files.

    :func:`utils.files.remove_stale_temporaries` for the temporaries of a checkpoint name or ``latest`` alone.
    """
    return remove_stale_files(output_dir, lambda name: progress_of(name) is not None or name == LATEST, now)


LATEST = "latest"


LOG_NAME = "log.jsonl"


CHECKPOINT_DIR = "checkpoint"  # where the trainers write by default, and the tester and the app look


# The reference tester's default --model, its 5D all-in-one checkpoint, in CHECKPOINT_DIR.
REFERENCE_MODEL_NAME = "model_allBaryNet__61_1.0_5D.pt"


_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")


_ITER_RE = re.compile(r"^iter_e(\d+)_i(\d+)\.pth$")


def checkpoint_name(epoch: int, iteration: int) -> str:
    """File name for ``epoch`` completed epochs and ``iteration`` iterations into the next."""
    if iteration == 0:
        return f"epoch_{epoch:03d}.pth"
    return f"iter_e{epoch + 1:03d}_i{iteration:06d}.pth"


def progress_of(name: str) -> tuple[int, int] | None:
    """``(epochs completed, iterations into the next)`` of a checkpoint file name, None if not ours."""
    m = _EPOCH_RE.match(name)
    if m:
        return int(m.group(1)), 0
    m = _ITER_RE.match(name)
    if m:
        return int(m.group(1)) - 1, int(m.group(2))
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The trainer's checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(progress_of(p.name), p) for p in folder.iterdir() if p.is_file()]
    return [p for prog, p in sorted((x for x in found if x[0] is not None), key=lambda x: x[0])]


def read_latest(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, else the newest by file name, else None.

    A save writes its checkpoint, then ``latest``: a checkpoint further on than the one ``latest`` names and
    written after it (by modification time) is a save whose pointer a kill cut off, and is the newest.
    ``latest`` is only followed to a checkpoint of this folder by its own name (``epoch_NNN.pth``,
    ``iter_eNNN_iNNNNNN.pth``): an edited pointer naming ``../other_run/epoch_002.pth`` or ``log.jsonl`` is
    passed over (:func:`pointer_note` says so), never followed out of the run.
    """
    folder = Path(output_dir)
    pointer = folder / LATEST
    name = _pointer_name(pointer)
    if name is not None and (folder / name).is_file():
        return _saved_after(folder / name, pointer) or folder / name
    found = list_checkpoints(folder)
    return found[-1] if found else None


def latest_names(output_dir: str | os.PathLike) -> str | None:
    """The name ``output_dir``'s ``latest`` pointer holds, as written (None: no pointer, or unreadable)."""
    return _pointer_text(Path(output_dir) / LATEST)


def _pointer_text(pointer: Path) -> str | None:
    """What the ``latest`` file ``pointer`` names, whatever it is; None when there is no pointer or it cannot be
    read as ``{"checkpoint": "<name>"}``."""
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return name if isinstance(name, str) else None


def _pointer_name(pointer: Path) -> str | None:
    """The checkpoint name the ``latest`` file ``pointer`` holds when it is one of its folder's own names (see
    :func:`read_latest`), else None (no pointer, unreadable, or naming something else)."""
    name = _pointer_text(pointer)
    return name if name is not None and progress_of(name) is not None else None


def _saved_after(named: Path, pointer: Path) -> Path | None:
    """The newest checkpoint beside ``named`` that is further on than it and newer than ``pointer``, else None."""
    past = progress_of(named.name)
    if past is None:
        return None
    since = pointer.stat().st_mtime
    later = [p for p in list_checkpoints(named.parent) if progress_of(p.name) > past and p.stat().st_mtime > since]
    return later[-1] if later else None


CHECKPOINT_SUFFIXES = (".pth", ".pt")


def newest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint anywhere under ``root`` (by modification time), None if there is none.

    A folder the trainer wrote stands for the checkpoint its ``latest`` names (:func:`read_latest`),
    not for every ``epoch_NNN.pth`` in it; any other ``*.pth``/``*.pt`` file (a reference or
    plain checkpoint) counts as itself. Hidden files and folders (temporary files) are skipped, and so are the
    folders the trainer keeps earlier files in (``run.before-*``, ``abandoned.before-*``): a run set aside is
    not the one to evaluate by default, even when its files are newer.
    """
    base = Path(root)
    if not base.is_dir():
        return None
    found: list[Path] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and ".before-" not in d)
        latest = read_latest(folder)
        if latest is not None:
            found.append(latest)
        found += [Path(folder) / f for f in sorted(files) if not f.startswith(".") and progress_of(f) is None
                  and Path(f).suffix.lower() in CHECKPOINT_SUFFIXES and (Path(folder) / f).is_file()]  # no dead link
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def default_model(checkpoint_dir: str | os.PathLike = CHECKPOINT_DIR) -> tuple[Path | None, str]:
    """The checkpoint the tester and the app use without ``--model``: ``(checkpoint, why)``, ``(None, "")``
    when there is none.

    The reference tester's default, :data:`REFERENCE_MODEL_NAME` in ``checkpoint_dir``, when it is there,
    else the newest checkpoint under ``checkpoint_dir`` (:func:`newest_checkpoint`).
    """
    reference = Path(checkpoint_dir) / REFERENCE_MODEL_NAME
    if reference.is_file():
        return reference, "the authors' checkpoint, the reference tester's default"
    newest = newest_checkpoint(checkpoint_dir)
    if newest is None:
        return None, ""
    return newest, f"newest under {Path(checkpoint_dir).as_posix()}/"


def model_or_default(model: str | None, fix: str, checkpoint_dir: str | os.PathLike = CHECKPOINT_DIR) -> str:
    """``--model`` as given, else the tester's default (:func:`default_model`), printed with why it was chosen. None
    there is a :class:`~utils.errors.UsageError` (exit status 2) ending with ``fix``, how to get one."""
    if model:
        return model
    path, why = default_model(checkpoint_dir)
    if path is None:
        raise UsageError(f"no --model given and no checkpoint under {Path(checkpoint_dir).as_posix()}/ — {fix}, or "
                         f"pass --model PATH (a checkpoint file or a run's output folder)")
    print(f"=> no --model given: using {path.as_posix()} ({why})")
    return str(path)


def resolve_checkpoint(path: str | os.PathLike, flag: str = "--model") -> tuple[Path, str | None]:
    """What a user may name as a checkpoint -> ``(the file, a note when it was not the file itself)``.

    A checkpoint file is itself; a run's ``latest`` pointer is the checkpoint it names; a folder is its
    run's newest checkpoint (``latest``, else by name), else the newest checkpoint anywhere under it
    (:func:`newest_checkpoint`). Nothing there is a :class:`CheckpointError` naming ``flag``.
    """
    path = Path(path)
    if path.is_dir():
        found = read_latest(path) or newest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{flag} {path}: that folder holds no checkpoint (.pth/.pt); pass a checkpoint "
                                  f"file or the output folder of a training run")
        return found, f"{flag} {path} is a folder: using its newest checkpoint, {found}" + pointer_note(path, found)
    if path.name == LATEST and path.is_file():
        found = read_latest(path.parent)
        if found is None:
            raise CheckpointError(f"{flag} {path}: the pointer names no checkpoint that exists in {path.parent}")
        if pointer_note(path.parent, found):
            return found, f"{flag} {path}: using {found}" + pointer_note(path.parent, found)
        return found, f"{flag} {path} points to {found}"
    if path.exists() and not path.is_file():  # a FIFO, a device: reading it would hang or read garbage
        raise CheckpointError(f"{flag} {path}: not a regular file (a pipe or a device). Pass a checkpoint file, a "
                              f"run's output folder, or its 'latest' pointer")
    if not path.is_file():
        raise CheckpointError(f"{flag} {path}: checkpoint not found (no such file or folder). Pass a checkpoint "
                              f"file (the trainer's epoch_NNN.pth, a plain state dict, or a reference BaryIR "
                              f"checkpoint), a run's output folder, or its 'latest' pointer")
    return path, None


def pointer_note(folder: str | os.PathLike, found: Path) -> str:
    """``""`` when ``folder`` has no ``latest`` or it names ``found``; else the sentence saying why ``found`` is
    used instead of what the pointer names (it is not there, it is not a checkpoint name of this folder, a later
    save outran the pointer, or the pointer cannot be read), so that evaluating or resuming another checkpoint
    than the one named is never silent."""
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.is_file():
        return ""
    named = _pointer_text(pointer)
    if named is None:
        return f" (its {LATEST} pointer cannot be read: the newest checkpoint by name is used)"
    if progress_of(named) is None:
        return (f" ({LATEST} names {named}, which is not a checkpoint name of this folder (epoch_NNN.pth or "
                f"iter_eNNN_iNNNNNN.pth): the newest checkpoint by name is used)")
    if (folder / named).resolve() == found.resolve():
        return ""
    if not (folder / named).is_file():
        return f" ({LATEST} names {named}, which is not there: the newest checkpoint by name is used)"
    return (f" ({found.name} was saved after the {named} that {LATEST} names, by a run stopped before it updated "
            f"{LATEST})")


def rotate(output_dir: str | os.PathLike, keep: int, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names); returns the removed.

    With ``warn``, a checkpoint that cannot be removed (made immutable, a folder turned read-only) is said there and
    stays, and the rest are still rotated: the save before the rotation is complete, and an extra checkpoint loses
    nothing. Without it the ``OSError`` is raised."""
    if keep <= 0:
        return []
    found = list_checkpoints(output_dir)
    latest = read_latest(output_dir)
    removed = []
    for p in found[:-keep]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            if warn is None:
                raise
            warn(f"could not remove {p}, older than the newest --keep {keep} ({exc.strerror or exc}): it stays; the "
                 f"checkpoint just saved and {LATEST} are complete")
            continue
        removed.append(p)
    return removed
