"""Reading and writing images, with one documented rule for every kind of file.

Reading (:func:`read_image`) always yields an RGB ``(H, W, 3)`` array:

- 8-bit files give ``uint8``, 16-bit files (PNG/TIFF) give ``uint16`` (but a 16-bit grey-with-alpha TIFF,
  which OpenCV decodes at 8 bits only and Pillow not at all, gives ``uint8``). A floating-point TIFF is read
  on the scale 0 to 1, as ``uint16`` (:func:`quantise`; the overshoot bicubic or Lanczos resampling leaves
  clamped); one with a sample beyond [-0.5, 1.5] (:data:`FLOAT_SLACK`; 0-255 values, linear light with bright
  highlights) or NaN is refused, as is any other sample type;
- grayscale is replicated to three channels; palette images are expanded to RGB; a CMYK JPEG (a print
  workflow's) is converted by OpenCV, within one level of Pillow's conversion on nearly every pixel (measured
  on a Pillow-written file; the common YCbCr JPEGs decode identically);
- an alpha channel is dropped (restoration works on the colour planes). Unassociated alpha (PNG, WebP, BMP;
  TIFF ExtraSamples=2, as Pillow and GIMP write it) leaves the colour as stored, transparent pixels
  included: an 8-bit RGB TIFF with alpha is decoded by Pillow (the reference's reader), as OpenCV's decoder
  multiplies its colour by the alpha. ASSOCIATED (premultiplied, TIFF ExtraSamples=1) alpha is divided out of
  an RGB TIFF's colour, as the reference's Pillow does at 8 bits and by the same rule at 16:
  ``min(floor(c * peak / alpha), peak)``, the pixel's own colour rather than its darker product with the
  alpha; a pixel of alpha 0 is black (no colour is stored for it). Grey with associated alpha is read as
  stored (OpenCV drops its alpha, Pillow does not read it);
- an animated WebP/PNG or a multi-page TIFF gives its first frame (:func:`lost_on_restoring` says what a
  restoration loses);
- the EXIF orientation tag is IGNORED by default, as the reference reads every image (PIL
  ``Image.open(p).convert('RGB')`` does not rotate): the array is the pixel grid as stored. A
  degraded image and its target are thus always read alike, in every protocol, and training
  crops are taken from the same grid. ``exif=True`` applies the tag instead (the array is then
  upright as a viewer shows it); the tester uses it only for ``--input`` photos, which have no
  target. A TIFF is the exception: its own orientation tag is applied either way, as both OpenCV's
  decoder and the reference's Pillow apply it when they decode;
- an unreadable or corrupt file (truncated included) raises :class:`ImageReadError` naming the file,
  and so does any OpenCV failure while decoding (with libpng's words when it said why); a JPEG that
  libjpeg decodes over damage (grey where the data is lost) is read, as the reference's Pillow reads
  it, with one warning naming the file and libjpeg's words (:mod:`utils.data.decoder_messages`, which
  also keeps those libraries' own lines off stderr);
- an image of more than :func:`max_pixels` pixels (default :data:`MAX_PIXELS`, 100 Mpx: an 8K photo
  is 33 Mpx, a 108 Mpx phone photo needs the limit raised) is refused BEFORE it is decoded, from the
  width and height in its header: a 1 MB PNG of 20000x20000 would otherwise take gigabytes. The
  limit applies everywhere (tester, trainer data); :func:`pixel_limit` changes it for a block of
  code (``tester_bary.py --max-pixels``).

Writing (:func:`write_image`) keeps the array's bit depth: ``uint16`` arrays become 16-bit PNGs.
A file is written as every file of the project is (:func:`utils.files.atomic_write`): next to its
destination under a hidden temporary name, then renamed over it. A failed write (a full disk) leaves
no half-written image, and a symbolic link at the destination is replaced, never written through (its
target is left alone).
Float images are quantised by :func:`quantise` as ``torchvision.utils.save_image`` does (the
reference's): clamp to [0, 1], scale, add 0.5, truncate, i.e. ties round half up.
"""
from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from utils.data.decoder_messages import decoder_messages
from utils.data.image_files import IMAGE_EXTENSIONS
from utils.data.image_headers import (
    ASSOCIATED_ALPHA,
    exif_orientation,
    header_size,
    is_tiff,
    pillow_unbounded,
    tiff_alpha,
)
from utils.errors import UserError, human_bytes
from utils.files import replace_file

# EXIF orientation -> (rotations by 90 deg counter-clockwise, flip left-right after)
_EXIF_ORIENT = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}


# Default most pixels (height x width) an image may have to be read (see the module rule).
MAX_PIXELS = 100_000_000
# OpenCV's own decoder limit (CV_IO_MAX_IMAGE_PIXELS, 2^30): no limit above it can be honoured.
CV2_MAX_PIXELS = 1 << 30
_max_pixels = MAX_PIXELS


class ImageReadError(UserError, OSError):
    """An image file could not be read; the message names it."""


def max_pixels() -> int:
    """The pixel limit :func:`read_image` applies now (:data:`MAX_PIXELS` unless :func:`pixel_limit` says)."""
    return _max_pixels


@contextmanager
def pixel_limit(limit: int | None) -> Iterator[int]:
    """Within the block, :func:`read_image` refuses images above ``limit`` pixels (``None``: the default).

    A process-wide setting (a context manager so a test or a caller cannot leak it): the tester
    reads images deep inside the evaluation, where threading a parameter through would touch
    every caller. DataLoader workers forked inside the block inherit it.
    """
    global _max_pixels
    limit = MAX_PIXELS if limit is None else int(limit)
    if not 1 <= limit <= CV2_MAX_PIXELS:
        raise ValueError(f"the pixel limit must be between 1 and {CV2_MAX_PIXELS} (OpenCV's own), got {limit}")
    previous, _max_pixels = _max_pixels, limit
    try:
        yield limit
    finally:
        _max_pixels = previous


REPLACE_IT = "Replace or remove it."  # how an unreadable image's error ends


def read_problem(message: str) -> str:
    """An image-reading error's message without its closing advice and full stop, for a list of problems that
    gives its own fix."""
    return message.removesuffix(REPLACE_IT).rstrip(" .")


def _check_pixels(path: Path, size: tuple[int, int] | None, limit: int) -> None:
    """Refuse an image whose header says it has more than ``limit`` pixels, before decoding it."""
    if size is None:
        return
    h, w = size
    if h * w > limit:
        need = human_bytes(h * w * 3 * 4)  # the float32 RGB copy restoring and scoring work on
        exact = f" ({limit:,} pixels)" if pixels_in_words(limit).endswith("Mpx") else ""
        raise ImageReadError(f"image {path} is {w}x{h} = {pixels_in_words(h * w)}, more than the limit of "
                             f"{pixels_in_words(limit)}{exact}: restoring it would need more than {need} of memory. "
                             f"Downscale or split it, or raise the limit (--max-pixels N of tester_bary.py or python "
                             f"-m utils.app, at most {CV2_MAX_PIXELS})")


def pixels_in_words(n: int) -> str:
    """``n`` pixels in words: '12.3 Mpx', or '600 pixels' below a tenth of a megapixel."""
    return f"{n / 1e6:.1f} Mpx" if n >= 100_000 else f"{n:,} pixels"


class _QuietOpenCV:
    """OpenCV's log level is one setting for the process: threads reading at once (the doctor's pool, the app's
    requests) share one silencing, and the level before the first is restored after the last."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.saved: int | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        log = getattr(getattr(cv2, "utils", None), "logging", None)
        if log is None:
            yield
            return
        with self.lock:
            if self.active == 0:
                self.saved = log.getLogLevel()
                log.setLogLevel(log.LOG_LEVEL_SILENT)
            self.active += 1
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1
                if self.active == 0:
                    log.setLogLevel(self.saved)


# OpenCV's own log lines off while images are read (a truncated file makes it warn on stderr beside the one
# error line this module raises about it).
quiet_opencv = _QuietOpenCV()


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Reading ``path``'s bytes: an ``OSError`` (no read permission, an I/O error) is an :class:`ImageReadError`
    naming the file, a bad file like a corrupt one (``--skip-bad-files`` leaves it out)."""
    try:
        yield
    except ImageReadError:
        raise
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ImageReadError(f"cannot read image {path}: {why} — fix its permissions, or replace or remove it") \
            from exc


def read_image(path: str | os.PathLike, exif: bool = False, max_pixels: int | None = None,
               decoder_warnings: list[str] | None = None) -> np.ndarray:
    """RGB ``(H, W, 3)`` ``uint8`` or ``uint16`` array of ``path`` (see the module rule).

    ``exif``: apply the EXIF orientation tag (user photos); the default ignores it, as the
    reference's PIL ``convert('RGB')`` does (benchmark pairs, training data). ``max_pixels``:
    refuse larger images (default: :func:`max_pixels`), checked from the header before decoding.
    ``decoder_warnings``: a list that gets libjpeg's words about a file it decoded over damage (the
    warning on stderr is printed either way, once per file), for a caller that records them.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    limit = max_pixels if max_pixels is not None else _max_pixels
    with _readable(path), open(path, "rb") as fh:  # the header first: a file too large is not read at all
        size = header_size(fh)
        if size is None:  # no PNG/JPEG/BMP/TIFF/WebP header: the decoder would not be bounded by the limit
            raise ImageReadError(_NOT_AN_IMAGE.format(path=path))  # (OpenCV reads HDR and others, of any size)
        _check_pixels(path, size, limit)
        fh.seek(0)
        raw = fh.read()
        alpha = tiff_alpha(fh) if is_tiff(raw) else None
    data = np.frombuffer(raw, dtype=np.uint8)
    if alpha is not None and alpha[0] == 8:  # OpenCV would multiply the colour by the alpha: Pillow reads it
        img = _read_with_pillow(path, raw)
        _check_pixels(path, img.shape[:2], limit)
        return img  # already turned by its orientation tag, as OpenCV turns a TIFF (see below)
    try:
        with quiet_opencv(), decoder_messages() as said:  # libpng's and libjpeg's own lines taken out of stderr
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # UNCHANGED: no EXIF rotation
        if said.errors or (img is None and said.warnings):
            raise ImageReadError(f"cannot decode image {path}: the file is damaged "
                                 f"({'; '.join(said.errors + said.warnings)}). {REPLACE_IT}")
        if said.warnings:
            words = "; ".join(said.warnings)
            if decoder_warnings is not None:
                decoder_warnings.append(f"{path.name}: the JPEG decoder says {words!r}")
            decoder_messages.warn_once(str(path), f"warning: {path}: the JPEG decoder says {words!r}; the image is "
                                       f"read as it decodes, as the reference's Pillow reads it, and damaged parts "
                                       f"come out grey or smeared: look at it, and replace the file if it is damaged")
        if img is not None:
            _check_pixels(path, img.shape[:2], limit)  # a header that under-stated the size
            if alpha == (16, ASSOCIATED_ALPHA) and img.ndim == 3 and img.shape[2] == 4:
                img = _unpremultiply(img)
            img = _to_rgb(img, path)
    except cv2.error as exc:  # e.g. over OpenCV's own 2^30-pixel limit, or a decoder failure
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ImageReadError(f"cannot decode image {path}: OpenCV failed ({detail}). {REPLACE_IT}") from exc
    if img is None:
        raise ImageReadError(_NOT_AN_IMAGE.format(path=path))
    # A TIFF comes out of OpenCV's decoder (as out of PIL's, which the reference reads with) already turned
    # by its orientation tag: turning it again would undo or double that.
    rot, flip = _EXIF_ORIENT.get(exif_orientation(path), (0, False)) if exif and not is_tiff(data) else (0, False)
    if rot:
        img = np.rot90(img, rot)
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def _read_with_pillow(path: Path, raw: bytes) -> np.ndarray:
    """An 8-bit RGB TIFF with an alpha channel as Pillow (the reference's reader) decodes it, RGB ``uint8``:
    its first page, turned by its orientation tag (as OpenCV's decoder turns every TIFF), colour as stored
    (unassociated alpha) or divided by the alpha (associated alpha, a pixel of alpha 0 black), alpha dropped.

    OpenCV's decoder reads such a file through libtiff's RGBA interface, which multiplies unassociated colour by
    its alpha: semi-transparent parts came out darker and transparent ones black."""
    try:
        with pillow_unbounded():  # the size was checked against the limit from the header
            im = Image.open(io.BytesIO(raw))
            im.load()
        with im:
            return np.array(im.convert("RGB"))  # a copy: writable, as OpenCV's arrays are (asarray's is not)
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, SyntaxError...
        raise ImageReadError(f"cannot decode image {path}: the file is damaged or of a kind Pillow (which reads "
                             f"TIFFs with an alpha channel here) does not read ({exc}). {REPLACE_IT}") from exc


def _unpremultiply(bgra: np.ndarray) -> np.ndarray:
    """A BGRA array with associated (premultiplied) alpha, its colour divided by the alpha in place as Pillow
    divides an 8-bit one: ``min(floor(c * peak / a), peak)``, 0 where ``a`` is 0."""
    peak = np.iinfo(bgra.dtype).max  # peak * peak < 2^32 for 16 bits
    alpha = bgra[..., 3].astype(np.uint32)
    divisor = np.maximum(alpha, 1)
    for ch in range(3):
        colour = bgra[..., ch].astype(np.uint32) * peak // divisor
        bgra[..., ch] = np.where(alpha > 0, np.minimum(colour, peak), 0)
    return bgra


_NOT_AN_IMAGE = ("cannot decode image {path}: the file is corrupt, empty or not an image (supported: "
                 + ", ".join(IMAGE_EXTENSIONS) + "). " + REPLACE_IT)


def _to_rgb(img: np.ndarray, path: Path) -> np.ndarray:
    """A decoded OpenCV array (BGR/BGRA/grey, any depth) as RGB ``uint8``/``uint16`` (the module rule)."""
    if img.dtype not in (np.uint8, np.uint16):
        if img.dtype == np.float32 or img.dtype == np.float64:
            img = quantise(_float_in_range(img, path), 16)
        else:
            raise ImageReadError(f"unsupported sample type {img.dtype} in {path}; save it as 8- or 16-bit")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# How far outside [0, 1] the samples of a floating-point image may reach and still be read (clamped): the overshoot
# resampling leaves at sharp edges (bicubic about 0.2, Lanczos about 0.3: cv2.resize of a 0/1 step edge reaches
# -0.15 and 1.28). Beyond it the values are on another scale (0-255, linear light with bright highlights).
FLOAT_SLACK = 0.5


def _float_in_range(img: np.ndarray, path: Path) -> np.ndarray:
    """``img`` if its floating-point samples are all finite and within [0, 1] give or take :data:`FLOAT_SLACK`;
    else an :class:`ImageReadError`: clamping 0-255 values to [0, 1] read nearly white, NaN read as black."""
    if not np.isfinite(img).all():
        found = "samples that are not numbers (NaN) or infinite"
    else:
        lo, hi = float(img.min()), float(img.max())
        if -FLOAT_SLACK <= lo and hi <= 1 + FLOAT_SLACK:
            return img
        found = f"samples from {lo:g} to {hi:g}"
    raise ImageReadError(f"cannot read image {path}: it holds floating-point {found}, and such images are read only "
                         f"on the scale 0 to 1 (16 bits). Save it as an 8- or 16-bit image, or with its values "
                         f"scaled to 0-1")


def image_size(path: str | os.PathLike, exif: bool = False) -> tuple[int, int]:
    """``(height, width)`` of ``path`` as ``read_image(path, exif)`` returns it.

    Reads only the header (PNG and JPEG parsed here, other formats by Pillow); a file whose header
    cannot be read is decoded by :func:`read_image` (so a corrupt or too large one raises
    :class:`ImageReadError`, as does a missing one). The pixel limit is not applied: sizes are
    only compared here, and reading the image applies it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    with _readable(path), open(path, "rb") as fh:
        size = header_size(fh)
        fh.seek(0)
        tiff = is_tiff(fh.read(4))
    if size is None:
        return read_image(path, exif).shape[:2]
    h, w = size
    rot, _ = _EXIF_ORIENT.get(exif_orientation(path), (0, False)) if exif and not tiff else (0, False)
    return (w, h) if rot % 2 else (h, w)


def to_float(img: np.ndarray) -> np.ndarray:
    """``uint8``/``uint16`` image -> ``float32`` in [0, 1], same shape (``(H, W)`` or ``(H, W, C)``)."""
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
    """Write an RGB ``(H, W, 3)`` ``uint8``/``uint16`` array; parent folders are created.

    Written to a hidden temporary file beside ``path``, then renamed over it (see the module rule):
    never half a file, never through a symbolic link.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image expects (H, W, 3) uint8/uint16, got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode image for {path}; use a .png name")
    replace_file(path, buf.tobytes())
    return path
