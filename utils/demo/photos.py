"""The photographs the embedded demo is built from, and where they are resized and cropped.

They ship inside installed wheels (no download): scikit-image's ``skimage.data`` (bundled files only)
and matplotlib's sample data. :mod:`utils.demo.data` builds the demo's folders from them.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Source photographs. Order matters: ``max_photos`` keeps a prefix, so the first
# entries exercise every code path (disparity depth, colour, grey).
TRAIN_PHOTOS = (
    "motorcycle_left", "astronaut", "brick", "rocket", "motorcycle_right",
    "immunohistochemistry", "grass", "gravel", "moon",
)
TEST_PHOTOS = ("chelsea", "camera", "coffee", "grace_hopper", "coins")

SIZE_MULTIPLE = 16       # every demo image side is a multiple of this


# ----------------------------------------------------------------------------
# Source photographs
# ----------------------------------------------------------------------------

def _fix_hint(name: str) -> str:
    return (f"demo photo '{name}' could not be loaded from the installed wheels; "
            "it must ship with scikit-image (skimage.data, bundled files only) or "
            "matplotlib (sample_data). Fix: reinstall them, e.g. "
            "`.venv/bin/pip install --force-reinstall scikit-image matplotlib`.")


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Return ``img`` as uint8 (H, W, 3); grey (H, W) is copied to 3 channels,
    RGBA drops alpha."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"utils/demo/photos.py: expected uint8 photo, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"utils/demo/photos.py: expected (H, W[, 3|4]) photo, got {img.shape}")
    return np.ascontiguousarray(img[:, :, :3])


def load_photo(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a bundled photo by its demo name.

    Returns ``(rgb, disparity)``: rgb uint8 (H, W, 3); disparity float32 (H, W)
    (inf / <= 0 where invalid) for ``motorcycle_left``, else None.
    """
    try:
        if name == "grace_hopper":
            from matplotlib import cbook
            path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(path)
            return np.ascontiguousarray(bgr[:, :, ::-1]), None
        import skimage.data as skdata
        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, disp = skdata.stereo_motorcycle()
            if name == "motorcycle_left":
                return to_rgb(left), np.asarray(disp, dtype=np.float32)
            return to_rgb(right), None
        return to_rgb(getattr(skdata, name)()), None
    except Exception as exc:  # network fetch attempts, missing files, bad names
        raise RuntimeError(_fix_hint(name) + f" ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------

def round_to_multiple(x: float, m: int = SIZE_MULTIPLE) -> int:
    """Nearest multiple of ``m`` to ``x``, at least ``m``."""
    return max(m, int(round(x / m)) * m)


def resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize (H, W[, C]) uint8 or float32 to (h, w[, C]); area filter when
    shrinking, bicubic when enlarging (uint8 results are clipped by OpenCV)."""
    if arr.shape[:2] == (h, w):
        return arr.copy()
    shrink = h * w < arr.shape[0] * arr.shape[1]
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def scaled_shape(h: int, w: int, short: int) -> tuple[int, int]:
    """(h', w') with the short side equal to ``short`` and the aspect ratio kept."""
    f = short / min(h, w)
    return (short, max(short, int(round(w * f)))) if h <= w else (max(short, int(round(h * f))), short)


def window_starts(length: int, win: int, n: int) -> list[int]:
    """``n`` evenly spaced starts of windows of size ``win`` covering [0, length)."""
    if n <= 1 or length <= win:
        return [max(0, (length - win) // 2)]
    return [int(round(i * (length - win) / (n - 1))) for i in range(n)]


def plan_train_windows(h: int, w: int, side: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Resize a (h, w) photo to short side ``side`` and tile the long side with
    square ``side`` windows (one more window per extra ~3/4 side).

    Returns ``((rh, rw), [(y0, x0), ...])``.
    """
    rh, rw = scaled_shape(h, w, side)
    n = max(1, math.ceil(max(rh, rw) / side - 0.25))
    if rh <= rw:
        return (rh, rw), [(0, x) for x in window_starts(rw, side, n)]
    return (rh, rw), [(y, 0) for y in window_starts(rh, side, n)]


def plan_test_window(h: int, w: int, short: int, long_max: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resize to short side ``short`` and centre-crop the long side to at most
    ``long_max``, both multiples of SIZE_MULTIPLE.

    Returns ``((rh, rw), (y0, x0, ch, cw))``.
    """
    rh, rw = scaled_shape(h, w, short)
    ch = min(rh, long_max) // SIZE_MULTIPLE * SIZE_MULTIPLE
    cw = min(rw, long_max) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return (rh, rw), ((rh - ch) // 2, (rw - cw) // 2, ch, cw)
