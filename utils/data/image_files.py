"""Finding the images in a folder: which files count as images, listing them, and the hint for a set unpacked
one folder too deep."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by name (hidden files skipped). ``recursive`` also goes into subfolders,
    symbolic links to folders included (a data set split over disks, ``part2 -> /bigdisk/OTS/part2``), each real
    folder once."""
    folder = Path(folder)
    return sorted(p for p in (_walk_files(folder) if recursive else folder.iterdir())
                  if p.is_file() and is_image(p) and not p.name.startswith("."))


def visible_subfolders(folder: str | os.PathLike) -> list[Path]:
    """The subfolders of ``folder`` sorted by name, hidden ones skipped (``.ipynb_checkpoints``, ``.cache``: not
    sets); ``[]`` when ``folder`` is not a folder."""
    folder = Path(folder)
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []


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
