"""Reading and writing images, with one documented rule for every kind of file.

Reading (:func:`read_image`) always yields an RGB ``(H, W, 3)`` array:

- 8-bit files give ``uint8``, 16-bit files (PNG/TIFF) give ``uint16``;
- grayscale is replicated to three channels; palette images are expanded to RGB;
- an alpha channel is dropped (restoration works on the colour planes);
- the EXIF orientation tag is IGNORED by default, as the reference reads every image (PIL
  ``Image.open(p).convert('RGB')`` does not rotate): the array is the pixel grid as stored. A
  degraded image and its target are thus always read alike, in every protocol, and training
  crops are taken from the same grid. ``exif=True`` applies the tag instead (the array is then
  upright as a viewer shows it); the tester uses it only for ``--input`` photos, which have no
  target;
- an unreadable or corrupt file (truncated included) raises :class:`ImageReadError` naming the file.

Writing (:func:`write_image`) keeps the array's bit depth: ``uint16`` arrays become 16-bit PNGs.
Float images are quantised by :func:`quantise` as ``torchvision.utils.save_image`` does (the
reference's): clamp to [0, 1], scale, add 0.5, truncate, i.e. ties round half up.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# EXIF orientation -> (rotations by 90 deg counter-clockwise, flip left-right after)
_EXIF_ORIENT = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}


class ImageReadError(UserError, OSError):
    """An image file could not be read; the message names it."""


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by name (hidden files skipped)."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image(p) and not p.name.startswith("."))


def _exif_orientation(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def read_image(path: str | os.PathLike, exif: bool = False) -> np.ndarray:
    """RGB ``(H, W, 3)`` ``uint8`` or ``uint16`` array of ``path`` (see the module rule).

    ``exif``: apply the EXIF orientation tag (user photos); the default ignores it, as the
    reference's PIL ``convert('RGB')`` does (benchmark pairs, training data).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # UNCHANGED: no EXIF rotation
    if img is None:
        raise ImageReadError(f"cannot decode image {path}: the file is corrupt, empty or not an image "
                             f"(supported: {', '.join(IMAGE_EXTENSIONS)}). Replace or remove it.")
    if img.dtype not in (np.uint8, np.uint16):
        if img.dtype == np.float32 or img.dtype == np.float64:
            img = quantise(img, 16)
        else:
            raise ImageReadError(f"unsupported sample type {img.dtype} in {path}; save it as 8- or 16-bit")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    rot, flip = _EXIF_ORIENT.get(_exif_orientation(path), (0, False)) if exif else (0, False)
    if rot:
        img = np.rot90(img, rot)
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def image_size(path: str | os.PathLike, exif: bool = False) -> tuple[int, int]:
    """``(height, width)`` of ``path`` as ``read_image(path, exif)`` returns it.

    Reads only the header when Pillow knows the format; raises :class:`ImageReadError` for a
    missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # a format Pillow does not parse: decode it fully (raises if corrupt)
        return read_image(path, exif).shape[:2]
    rot, _ = _EXIF_ORIENT.get(orientation, (0, False)) if exif else (0, False)
    return (w, h) if rot % 2 else (h, w)


def to_float(img: np.ndarray) -> np.ndarray:
    """``uint8``/``uint16`` image -> ``float32`` in [0, 1]."""
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def quantise(img: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Float image -> ``uint8`` (8) or ``uint16`` (16): ``floor(clip(x, 0, 1) * peak + 0.5)``.

    The rule of ``torchvision.utils.save_image`` (``x.mul(255).add_(0.5).clamp_(0, 255)``, then a
    truncating cast), which the reference saves and scores with: exact ties round half UP
    (``np.round`` would round them to even). Computed in the input's float precision (float32
    at least), as torch does. NaN becomes 0.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    peak = 65535.0 if bit_depth == 16 else 255.0
    x = np.asarray(img)
    if not np.issubdtype(x.dtype, np.floating) or x.dtype.itemsize < 4:  # float16 cannot hold 65535
        x = x.astype(np.float32)
    out = np.floor(np.clip(x, 0.0, 1.0) * x.dtype.type(peak) + x.dtype.type(0.5))
    out = np.nan_to_num(out, nan=0.0)
    return out.astype(np.uint16 if bit_depth == 16 else np.uint8)


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an RGB ``(H, W, 3)`` ``uint8``/``uint16`` array; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image expects (H, W, 3) uint8/uint16, got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode image for {path}; use a .png name")
    buf.tofile(str(path))
    return path
