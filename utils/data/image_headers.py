"""What an image file's header says, read without decoding it.

The size (:func:`header_size`: PNG and JPEG parsed here, TIFF's first directory when Pillow cannot open it,
other formats through Pillow's header reader), a TIFF's alpha kind (:func:`tiff_alpha`), the EXIF orientation,
and what a restoration cannot keep of a file (:func:`lost_on_restoring`). :mod:`utils.data.image_io` uses these
to refuse an image over the pixel limit before decoding it, and the data checks use them to compare sizes
without decoding whole data sets.
"""
from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # little-, big-endian; classic, BigTIFF
# JPEG start-of-frame markers (they carry the height and width): C0-CF but DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM and RST0-7 (SOI and EOI are handled apart).
_JPEG_BARE = frozenset([0x01, *range(0xD0, 0xD8)])
_JPEG_MAX_STRAY = 1 << 16  # bytes passed over looking for the next marker before the file is called corrupt


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """``(height, width)`` from the first start-of-frame segment, ``fh`` just after the SOI marker.

    Stray bytes before a marker are passed over, as libjpeg and Pillow do ("extraneous bytes before
    marker"), up to :data:`_JPEG_MAX_STRAY` of them."""
    while True:
        byte, stray = fh.read(1), 0
        while byte and byte != b"\xff" and stray < _JPEG_MAX_STRAY:
            byte, stray = fh.read(1), stray + 1
        if byte != b"\xff":
            return None  # no marker where one must be: corrupt
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        m = marker[0]
        if m in _JPEG_BARE:
            continue
        if m in (0xD9, 0xDA):  # end of image, or image data before any frame header
            return None
        length = fh.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            return None
        seg_len = struct.unpack(">H", length)[0]
        if m in _JPEG_SOF:
            head = fh.read(5)
            if len(head) < 5:
                return None
            _, h, w = struct.unpack(">BHH", head)
            return (h, w) if h and w else None  # height 0: given later by a DNL marker; unknown here
        fh.seek(seg_len - 2, io.SEEK_CUR)


_PIL_WARNINGS = threading.Lock()  # held while Pillow reads a header with its warnings silenced


@contextmanager
def pillow_unbounded() -> Iterator[None]:
    """Pillow with its own size limit lifted and its warnings silenced, for one header read or decode.

    Pillow refuses an image over ``2 * Image.MAX_IMAGE_PIXELS`` (about 179 Mpx) as a decompression bomb,
    whatever ``--max-pixels`` says: a BMP, TIFF or WebP the user's raised limit admits was refused, where a
    PNG or JPEG of the same size was read. This project's own limit (:func:`utils.data.image_io.max_pixels`) is
    checked from the header before anything is decoded, so Pillow's is not needed. The limit and the warning
    filters are the process's: threads (the start-up check's pool) take turns, so that each restores what it found."""
    with _PIL_WARNINGS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def header_size(fh: BinaryIO) -> tuple[int, int] | None:
    """``(height, width)`` as stored, read from the header only; ``None`` when it cannot be told.

    PNG and JPEG are parsed here (no decoding library involved, so no library limit or warning
    gets in the way); other formats ask Pillow, which also reads only the header (its own size limit lifted:
    :func:`pillow_unbounded`).
    """
    head = fh.read(24)
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    if head.startswith(b"\xff\xd8"):
        fh.seek(2)
        return _jpeg_size(fh)
    fh.seek(0)
    try:
        with pillow_unbounded(), Image.open(fh) as im:  # a size over the limit is refused by its number
            w, h = im.size
            return h, w
    except Exception:  # noqa: BLE001 - a format Pillow does not know: the decoder will tell
        return _tiff_size(fh) if is_tiff(head) else None


def _tiff_size(fh: BinaryIO) -> tuple[int, int] | None:
    """``(height, width)`` from a TIFF's first directory (tags 256 and 257), for the TIFFs Pillow does not
    open (3-channel float32, as OpenCV writes them; OpenCV decodes them). None when it cannot be told."""
    tags = _tiff_tags(fh)
    return (tags[257][0], tags[256][0]) if tags.get(256) and tags.get(257) else None


# TIFF tags read from the first directory: ImageWidth, ImageLength, BitsPerSample, PhotometricInterpretation,
# ExtraSamples (what the samples after the colour ones are: 0 unspecified, 1 associated alpha, 2 unassociated).
_TIFF_TAGS = (256, 257, 258, 262, 338)
_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8: the types these tags are written with
_PHOTOMETRIC_RGB, ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 2, 1, 2


def _tiff_tags(fh: BinaryIO) -> dict[int, tuple[int, ...]]:
    """The values of :data:`_TIFF_TAGS` in a TIFF's first directory (classic or BigTIFF), as far as they can be
    read (a tag missing or unreadable is left out)."""
    tags: dict[int, tuple[int, ...]] = {}
    try:
        fh.seek(0)
        head = fh.read(4)
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        offset_fmt, slot = (order + "Q", 8) if big else (order + "I", 4)
        fh.seek(8 if big else 4)
        offset, = struct.unpack(offset_fmt, fh.read(slot))
        fh.seek(offset)
        count, = struct.unpack(order + ("Q" if big else "H"), fh.read(slot if big else 2))
        entry = order + ("HHQ8s" if big else "HHI4s")
        entries = [struct.unpack(entry, fh.read(struct.calcsize(entry))) for _ in range(min(count, 4096))]
        for tag, kind, n, value in entries:
            if tag not in _TIFF_TAGS or kind not in _TIFF_TYPES or not 1 <= n <= 64:
                continue
            fmt = order + _TIFF_TYPES[kind] * n
            raw = value[:struct.calcsize(fmt)]
            if struct.calcsize(fmt) > slot:  # the values lie elsewhere, at the offset the entry holds
                fh.seek(struct.unpack(offset_fmt, value)[0])
                raw = fh.read(struct.calcsize(fmt))
            try:
                tags[tag] = struct.unpack(fmt, raw)
            except struct.error:  # values past the end of the file: this tag is left out
                continue
    except (struct.error, OSError):
        pass
    return tags


def tiff_alpha(fh: BinaryIO) -> tuple[int, int] | None:
    """``(bits per sample, alpha kind)`` of an RGB TIFF whose first extra sample is alpha (kind
    :data:`ASSOCIATED_ALPHA` or :data:`_UNASSOCIATED_ALPHA`, tag 338), from its first directory; None for any
    other file."""
    tags = _tiff_tags(fh)
    extra, bits = tags.get(338, ()), tags.get(258, (1,))
    if tags.get(262) != (_PHOTOMETRIC_RGB,) or not extra or extra[0] not in (ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA):
        return None
    return max(bits), extra[0]


def exif_orientation(path: Path) -> int:
    try:
        with pillow_unbounded(), Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _first_bytes(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def turned_pair_note(degraded: Path, target: Path, degraded_size: tuple[int, int],
                     target_size: tuple[int, int]) -> str:
    """For a pair whose sizes are each other's transpose because one file's EXIF orientation tag turns it by 90
    degrees in viewers (a phone's photo): the clause saying so, else ``""``. Benchmark pairs are read without the
    tag, as the reference reads them, so the two do not line up."""
    if degraded_size != tuple(reversed(target_size)) or degraded_size == target_size:
        return ""
    turned = [p.name for p in (degraded, target) if exif_orientation(p) >= 5 and not is_tiff(_first_bytes(p, 4))]
    if not turned:
        return ""
    return (f" ({turned[0]}'s EXIF orientation tag turns it in viewers; pairs are read without the tag, as the "
            f"reference reads them: save it upright without the tag)")


# What the restored RGB PNG may not keep of an input (:func:`lost_on_restoring`), and why, as the tester says it.
NOT_KEPT_WHY = {"transparency": "the network restores RGB", "colour profile": "the network restores RGB",
                "animation": "only the first frame or page is read and restored"}


def lost_on_restoring(path: str | os.PathLike) -> list[str]:
    """What of ``path`` its restoration (an RGB PNG) does not keep, from the header: ``"transparency"`` (an
    alpha channel, or a palette's transparent colour), ``"colour profile"`` (an embedded ICC profile other than
    sRGB, e.g. a phone's Display P3: the restored pixels are read as sRGB), ``"animation"`` (an animated WebP or
    PNG, a multi-page TIFF: :func:`~utils.data.image_io.read_image` reads the first frame only). Empty when
    nothing is lost or it cannot tell."""
    try:
        with pillow_unbounded(), Image.open(path) as im:
            lost = ["transparency"] if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info \
                else []
            icc = im.info.get("icc_profile")
            lost += ["colour profile"] if icc and not _is_srgb(icc) else []
            return lost + (["animation"] if getattr(im, "n_frames", 1) > 1 else [])
    except Exception:
        return []


_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def is_greyscale(path: str | os.PathLike) -> bool:
    """Whether ``path`` is stored as a greyscale image, from its header (Pillow's mode; nothing is decoded).
    :func:`~utils.data.image_io.read_image` reads it as RGB, the grey value in each channel, as the reference
    does. False when it cannot tell."""
    try:
        with pillow_unbounded(), Image.open(path) as im:
            return im.mode in _GREY_MODES
    except Exception:
        return False


def _is_srgb(icc: bytes) -> bool:
    """Whether an embedded ICC profile is sRGB's (what the restored PNG's pixels are read as anyway)."""
    try:
        from PIL import ImageCms
        return "srgb" in ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.profile_description.lower()
    except Exception:  # no colour management in this Pillow, or a profile it cannot read: not known to be sRGB
        return False


def is_tiff(data: bytes | np.ndarray) -> bool:
    """Whether the file's bytes (its first 4 at least) start as a TIFF does (little- or big-endian, classic or
    BigTIFF)."""
    return bytes(data[:4]).startswith(TIFF_SIGNATURES)


