"""Is an image file whole? Its size from its header, and whether it ends where its format says.

A file cut short (an interrupted download or copy) usually keeps a valid header: reading the header alone
calls it fine, and the loader then fails on it mid-epoch. :func:`check_file` also reads the file's last
bytes (PNG ends with IEND, JPEG with EOI; BMP and WebP state their length) and decodes only a file that ends
early, to tell a truncated file from one with extra bytes at its end. Used by the trainers' start-up check
(:func:`utils.data.training_files.check_images`) and by ``--check-data`` (:mod:`utils.data.doctor`).

Damage in the middle of a complete file (flipped bytes) shows only when the file is decoded: :func:`decode_files`
decodes every file of a small set in full (the trainers' validation pairs, read only after each epoch).
"""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from utils.data.image_headers import TIFF_SIGNATURES, header_size
from utils.data.image_io import ImageReadError, image_size, quiet_opencv, read_image

HEADER_THREADS = 8  # header reads in flight (hides disk latency; the page cache needs no threads)


@dataclass(frozen=True)
class FileCheck:
    """A file's ``(height, width)`` from its header, or why it cannot be used (``kind``: unreadable/truncated)."""
    size: tuple[int, int] | None
    kind: str = ""
    error: str = ""


def _complete(head: bytes, tail: bytes, file_size: int) -> bool | None:
    """Whether a file is as long as its format says, from its first bytes, its last 64 and its size: PNG ends
    with IEND, JPEG with EOI, BMP and WebP hold their sizes in the header. None for TIFF, whose end says
    nothing (its strips may lie anywhere): :func:`check_file` decodes it to tell."""
    if head.startswith(b"\x89PNG"):
        return b"IEND\xaeB`\x82" in tail
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in tail
    if head.startswith(b"BM") and len(head) >= 34:
        offset, = struct.unpack("<I", head[10:14])
        width, height = struct.unpack("<ii", head[18:26])
        bits, compression = struct.unpack("<HI", head[28:34])
        if compression in (0, 3):  # uncompressed rows, each padded to 4 bytes
            return file_size >= offset + ((width * bits + 31) // 32) * 4 * abs(height)
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        riff, = struct.unpack("<I", head[4:8])
        return file_size >= riff + 8
    return None if head.startswith(TIFF_SIGNATURES) else True


def _decode_error(path: Path, max_pixels: int | None = 1 << 30) -> str | None:
    """The loaders' reader on ``path``: None if it decodes, else its message. ``max_pixels``: its limit (None:
    the loaders' own, :func:`~utils.data.image_io.max_pixels`; the default lets any size through, for a check of
    the file's bytes alone)."""
    try:
        read_image(path, max_pixels=max_pixels)
        return None
    except ImageReadError as exc:
        return str(exc)


def check_file(path: str | os.PathLike) -> FileCheck:
    """The size of ``path`` from its header and whether it ends where its format says, in one open: the header
    is read by :func:`utils.data.image_io.image_size`'s own reader (a file it cannot tell is handed to
    ``image_size``, which decodes it); a file that ends early is decoded by
    :func:`~utils.data.image_io.read_image`, to tell a truncated file from one with extra bytes at its end."""
    try:
        with open(path, "rb") as fh:
            size = header_size(fh)
            fh.seek(0)
            head = fh.read(34)
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - 64))
            complete = _complete(head, fh.read(), end)
        if size is None:
            size = image_size(path)
    except ImageReadError as exc:
        return FileCheck(None, "unreadable", str(exc))
    except OSError as exc:
        return FileCheck(None, "unreadable", f"cannot read {path}: {exc.strerror or exc}")
    if complete is None:  # a TIFF: only decoding tells, and the decoder says why in its words
        error = _decode_error(path)
        return FileCheck(None, "unreadable", error) if error else FileCheck(size)
    if not complete and _decode_error(path) is not None:
        return FileCheck(None, "truncated", f"{path} is cut short: it ends before its image data, and does not "
                                            f"decode")
    return FileCheck(size)


def check_files(paths: Iterable[Path], threads: int = HEADER_THREADS,
                progress: Callable[[Iterable, int], Iterable] | None = None) -> dict[Path, FileCheck]:
    """:func:`check_file` of each distinct path, in order (several threads for many files: the reads' latency
    on a network file system overlaps); ``progress(results, total)`` wraps the results as they come."""
    unique = list(dict.fromkeys(paths))
    with quiet_opencv(), ThreadPoolExecutor(threads if len(unique) > 64 else 1) as pool:
        results = pool.map(check_file, unique, chunksize=32)
        return dict(zip(unique, progress(results, len(unique)) if progress else results))


def decode_files(paths: Iterable[Path], threads: int = HEADER_THREADS) -> dict[Path, str]:
    """The distinct ``paths`` that the loaders' reader (:func:`~utils.data.image_io.read_image`, at the loaders'
    pixel limit) cannot read, each with its message; {} when all decode. Every file is decoded in full, so this
    is for a few files (a validation set), not a training set."""
    unique = list(dict.fromkeys(paths))
    with quiet_opencv(), ThreadPoolExecutor(threads if len(unique) > 64 else 1) as pool:
        found = dict(zip(unique, pool.map(lambda p: _decode_error(p, None), unique, chunksize=8)))
    return {p: why for p, why in found.items() if why is not None}
