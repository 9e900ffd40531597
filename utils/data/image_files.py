"""Finding the images in a folder: which files count as images, listing them, and the hint for a set unpacked
one folder too deep. A symbolic link whose target is gone (a disk not mounted, a folder moved), or an image name
that is no file (a named pipe), is an error here, not a file or folder left out without a word
(:class:`UnreadableEntryError`)."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from utils.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


class UnreadableEntryError(UserError):
    """An entry among the images or sets read that can be neither: a symbolic link whose target does not exist, or
    an image name that is no regular file or folder (a named pipe, a socket, a device)."""


def list_images(folder: str | os.PathLike, recursive: bool = False, unreadable_ok: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by name (hidden files skipped). ``recursive`` also goes into subfolders,
    symbolic links to folders included (a data set split over disks, ``part2 -> /bigdisk/OTS/part2``), each real
    folder once. A link to an image that is gone, or in ``recursive`` any link that is gone (it may have been a
    folder), and an image name that is a named pipe, socket or device, raise :class:`UnreadableEntryError`: they
    were left out silently, and a benchmark's mean or a training set quietly shrank. ``unreadable_ok``: they are
    left out instead, for a caller that names them itself (the tester's ``--input``, whose photos are restored, not
    scored, says what it leaves out)."""
    folder = Path(folder)
    found = []
    for p in (_walk_files(folder) if recursive else folder.iterdir()):
        if p.name.startswith("."):
            continue
        kind = entry_kind(p)
        if kind == "file" and is_image(p):
            found.append(p)
        elif not unreadable_ok and ((kind == "dangling" and (recursive or is_image(p)))
                                    or (kind == "special" and is_image(p))):
            raise UnreadableEntryError(unreadable_message(p, kind))
    return sorted(found)


def visible_subfolders(folder: str | os.PathLike) -> list[Path]:
    """The subfolders of ``folder`` sorted by name, hidden ones skipped (``.ipynb_checkpoints``, ``.cache``: not
    sets); ``[]`` when ``folder`` is not a folder. A link whose target is gone (a set linked from another disk)
    raises :class:`UnreadableEntryError` rather than the set being left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for d in folder.iterdir():
        if d.name.startswith("."):
            continue
        kind = entry_kind(d)
        if kind == "dir":
            found.append(d)
        elif kind == "dangling" and not is_image(d):
            raise UnreadableEntryError(unreadable_message(d, kind))
    return sorted(found)


def entry_kind(path: Path) -> str:
    """What a folder's entry ``path`` is, from one ``stat`` (a listing of 72,000 training images makes one call
    each): ``"file"`` (a regular file, also through a link), ``"dir"``, ``"dangling"`` (a symbolic link to
    nothing, or in a loop), ``"special"`` (a named pipe, a socket, a device) or ``"gone"`` (removed since it was
    listed)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "dangling" if path.is_symlink() else "gone"
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "special"


def unreadable_message(path: Path, kind: str) -> str:
    """The error for an entry :func:`entry_kind` calls ``"dangling"`` or ``"special"``, with the fix."""
    if kind == "dangling":
        return (f"{path} is a symbolic link to {os.readlink(path)}, which does not exist (a disk not mounted, a "
                f"folder moved or deleted), so what it points to would be left out: mount or restore it, or remove "
                f"the link")
    return (f"{path} is not a regular file (a named pipe, a socket or a device), so no image can be read from it and "
            f"it would be left out: put the image file there, or remove it")


def nested_images_hint(folder: str | os.PathLike, what: str = "images", shown: int = 3) -> str:
    """A sentence for a folder read without its subfolders that holds no ``what`` itself but has them in its
    subfolders (WED and BSD400 unpacked into ``Denoise/WED/`` and ``Denoise/BSD400/``), else ``""``:

    ``"Denoise has 3,000 images in its subfolders (WED/ 2,800, BSD400/ 200), and only those directly in it
    are read: move them up into Denoise (renaming any that repeat)."``"""
    folder = Path(folder)
    try:
        subfolders = visible_subfolders(folder)
    except OSError:
        return ""
    counts = [(d.name, n) for d in subfolders if (n := len(list_images(d, recursive=True)))]
    if not counts:
        return ""
    listed = ", ".join(f"{name}/ {n:,}" for name, n in counts[:shown]) + (", ..." if len(counts) > shown else "")
    total = sum(n for _, n in counts)
    return (f"{folder} has {total:,} {what.removesuffix('s') if total == 1 else what} in its subfolders ({listed}), "
            f"and only those directly in it are read: move them up into {folder} (renaming any that repeat).")


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, following links to folders; a folder reached twice (a link cycle) once."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield from (Path(root) / f for f in files)
