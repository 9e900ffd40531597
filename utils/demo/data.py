"""Embedded default data set: a small, deterministic 3D all-in-one benchmark.

Builds training and test folders (docs/METHOD.md §3-4 layout) from photographs that
ship inside installed wheels, so the project trains and tests with no download:

* scikit-image (``skimage.data``, bundled in the wheel, no pooch fetch):
  ``astronaut``, ``rocket``, ``stereo_motorcycle`` (left and right views and the
  disparity map), ``immunohistochemistry``, ``chelsea``, ``coffee`` (colour);
  ``brick``, ``grass``, ``gravel``, ``moon``, ``camera``, ``coins`` (grey, copied to
  3 channels).
* matplotlib sample data: ``grace_hopper.jpg`` (colour).

Train and test use different photographs (``TRAIN_PHOTOS`` / ``TEST_PHOTOS``).
Degradations are synthesised deterministically from ``seed``: every image draws
from its own ``numpy.random.Generator`` seeded by (seed, degradation tag, image
index, variant); the global RNG is never used.

Layout under ``root`` (default ``data/demo``)::

    Train/Denoise/<photo>_<k>.png                    clean (noise added by the loader)
    Train/Derain/rainy/rain-<N>.png                  synthetic rain streaks
    Train/Derain/gt/norain-<N>.png                   its clean target
    Train/Dehaze/synthetic/part1/<ID>_<A>_<B>.png    hazy, A = airlight, B = beta
    Train/Dehaze/original/<ID>.png                   clean
    test/denoise/demo/<photo>.png                    clean (noise added by the tester)
    test/derain/demo/{input/rain-<N>, target/norain-<N>}.png
    test/dehaze/{input/<ID>_<A>_<B>, target/<ID>}.png
    test/jpeg/{input,target}/<photo>.png             JPEG quality 10 (decoded)
    test/lowlight/{low,high}/<photo>.png             synthetic low light
    test/deblur/{input,target}/<photo>.png           linear motion blur
    manifest.json                                    what was built

Run ``python -m utils.demo.data --root data/demo --seed 0 [--force]``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import UserError

VERSION = 1
BUILDING_MARK = ".demo-building"  # lists a build's files as it writes them, removed with its manifest's writing
DEFAULT_ROOT = "data/demo"
MANIFEST_NAME = "manifest.json"


class DemoDataError(UserError, ValueError):
    """The demo's data folder cannot be built where or as asked; the message says why and what to do."""


# Source photographs. Order matters: ``max_photos`` keeps a prefix, so the first
# entries exercise every code path (disparity depth, colour, grey).
TRAIN_PHOTOS = (
    "motorcycle_left", "astronaut", "brick", "rocket", "motorcycle_right",
    "immunohistochemistry", "grass", "gravel", "moon",
)
TEST_PHOTOS = ("chelsea", "camera", "coffee", "grace_hopper", "coins")

# Sizes at scale 1 (pixels; all become multiples of 16).
TRAIN_SIDE = 384          # train crops are TRAIN_SIDE x TRAIN_SIDE windows
TEST_SHORT = 224          # test images: short side ...
TEST_LONG_MAX = 288       # ... and long side at most this
SIZE_MULTIPLE = 16

RAIN_VARIANTS_TRAIN = 2   # rainy versions per training crop
HAZE_VARIANTS_TRAIN = 3   # (A, beta) pairs per training crop
HAZE_AIRLIGHT = (0.8, 0.85, 0.9, 0.95, 1.0)          # RESIDE-like A
HAZE_BETA = (0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2)  # RESIDE-like beta
DEPTH_NEAR, DEPTH_FAR = 1.0, 12.0   # scene depth range the [0,1] proxy is mapped to

RAIN_DENSITY = (0.002, 0.008)       # fraction of pixels seeding a drop
RAIN_ANGLE_DEG = (-30.0, 30.0)      # streak direction from vertical
RAIN_LENGTH = (14.0, 40.0)          # streak length in pixels at scale 1
RAIN_WIDTH_SIGMA = (0.3, 0.8)       # drop thickness (Gaussian sigma, pixels)
RAIN_BRIGHTNESS = (0.55, 0.9)       # peak streak opacity for the screen blend

JPEG_QUALITY = 10
LOWLIGHT_GAMMA = (1.4, 2.2)
LOWLIGHT_GAIN = (0.15, 0.3)
LOWLIGHT_NOISE = (0.002, 0.006)     # read-noise std on [0,1] images (shot noise alike)
BLUR_LENGTH = (7.0, 17.0)           # motion-blur length in pixels at scale 1

PNG_COMPRESSION = 3

# Tags that separate the random streams of the different degradations.
_TAG_RAIN, _TAG_HAZE, _TAG_LOWLIGHT, _TAG_BLUR = 1, 2, 3, 4


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
        raise ValueError(f"utils/demo/data.py: expected uint8 photo, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"utils/demo/data.py: expected (H, W[, 3|4]) photo, got {img.shape}")
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


# ----------------------------------------------------------------------------
# Depth for haze
# ----------------------------------------------------------------------------

def normalise01(x: np.ndarray) -> np.ndarray:
    """Affine map of float array ``x`` to [0, 1] (zeros when constant); float32."""
    x = x.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def depth_from_disparity(disp: np.ndarray) -> np.ndarray:
    """Depth proxy in [0, 1] (0 near, 1 far) from a disparity map (H, W).

    depth = 1 / disparity on valid pixels (finite, > 0); invalid pixels are filled
    by normalised Gaussian convolution of the valid ones (far where no valid
    neighbour exists); the range is clipped to the 1st-99th percentiles.
    Returns float32 (H, W).
    """
    disp = np.asarray(disp, dtype=np.float32)
    valid = np.isfinite(disp) & (disp > 0)
    if not valid.any():
        raise ValueError("utils/demo/data.py: disparity map has no valid pixel; "
                         "reinstall scikit-image to restore motorcycle_disp.npz")
    depth = np.zeros_like(disp)
    depth[valid] = 1.0 / disp[valid]
    sigma = 0.02 * max(disp.shape)
    num = cv2.GaussianBlur(depth, (0, 0), sigma)
    den = cv2.GaussianBlur(valid.astype(np.float32), (0, 0), sigma)
    far = float(depth[valid].max())
    filled = np.where(valid, depth, np.where(den > 1e-3, num / np.maximum(den, 1e-3), far))
    lo, hi = np.percentile(depth[valid], [1, 99])
    filled = np.clip(filled, lo, hi)
    return normalise01(cv2.GaussianBlur(filled.astype(np.float32), (0, 0), 1.5))


def depth_proxy(img: np.ndarray) -> np.ndarray:
    """Smooth depth proxy in [0, 1] for a photo without depth, uint8 (H, W, 3).

    Mixes a vertical ramp (top far, bottom near) with heavily blurred luminance
    (bright regions, e.g. sky, far), as outdoor scenes tend to be.
    Returns float32 (H, W).
    """
    h, w = img.shape[:2]
    lum = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    lum = cv2.GaussianBlur(lum, (0, 0), 0.15 * max(h, w))
    ramp = np.repeat(np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None], w, axis=1)
    return normalise01(0.55 * ramp + 0.45 * normalise01(lum))


# ----------------------------------------------------------------------------
# Degradations (uint8 (H, W, 3) in, uint8 (H, W, 3) out)
# ----------------------------------------------------------------------------

def image_rng(seed: int, tag: int, index: int, variant: int = 0) -> np.random.Generator:
    """Independent generator for one (degradation tag, image index, variant)."""
    return np.random.default_rng(np.random.SeedSequence([seed, tag, index, variant]))


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding and clipping."""
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Anti-aliased linear motion kernel, float32 (k, k), k odd, sum 1.

    ``angle_deg`` is measured from the vertical (0 = vertical, positive leans
    the top to the right).
    """
    length = max(1.0, float(length))
    k = int(math.ceil(length)) | 1
    c = (k - 1) / 2.0
    a = math.radians(angle_deg)
    t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, max(2, int(length * 4)))
    xs, ys = c + t * math.sin(a), c - t * math.cos(a)
    ker = np.zeros((k + 1, k + 1), np.float64)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(ker, (y0 + dy, x0 + dx), wgt)
    ker = ker[:k, :k]
    return (ker / ker.sum()).astype(np.float32)


def rain_layer(h: int, w: int, rng: np.random.Generator, size_scale: float) -> np.ndarray:
    """Rain-streak opacity map float32 (h, w) in [0, 1].

    Sparse random drops (random brightness, slight thickness) on a canvas padded
    by one streak length, smeared by a linear motion kernel with a random angle
    and length, normalised by their 99.9th percentile, scaled by a random peak.
    """
    density = rng.uniform(*RAIN_DENSITY)
    angle = rng.uniform(*RAIN_ANGLE_DEG)
    length = max(3.0, rng.uniform(*RAIN_LENGTH) * size_scale)
    sigma = rng.uniform(*RAIN_WIDTH_SIGMA)
    peak = rng.uniform(*RAIN_BRIGHTNESS)
    pad = int(math.ceil(length))
    ph, pw = h + 2 * pad, w + 2 * pad
    drops = (rng.random((ph, pw)) < density) * rng.uniform(0.4, 1.0, (ph, pw))
    drops = cv2.GaussianBlur(drops.astype(np.float32), (0, 0), sigma)
    streaks = cv2.filter2D(drops, -1, line_kernel(length, angle), borderType=cv2.BORDER_CONSTANT)
    streaks = streaks[pad:pad + h, pad:pad + w]
    ref = float(np.quantile(streaks, 0.999))
    if ref <= 1e-8:
        ref = max(float(streaks.max()), 1e-8)
    return np.clip(streaks / ref, 0.0, 1.0) * peak


def add_rain(img: np.ndarray, rng: np.random.Generator, size_scale: float = 1.0) -> np.ndarray:
    """Screen-blend synthetic rain streaks onto uint8 (H, W, 3): 1-(1-I)(1-R)."""
    r = rain_layer(img.shape[0], img.shape[1], rng, size_scale)[:, :, None]
    x = img.astype(np.float32) / 255.0
    return to_uint8(1.0 - (1.0 - x) * (1.0 - r))


def add_haze(img: np.ndarray, depth01: np.ndarray, airlight: float, beta: float) -> np.ndarray:
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta d).

    ``depth01`` float (H, W) in [0, 1] is mapped to d in [DEPTH_NEAR, DEPTH_FAR].
    """
    d = DEPTH_NEAR + (DEPTH_FAR - DEPTH_NEAR) * depth01.astype(np.float32)
    t = np.exp(-beta * d)[:, :, None]
    j = img.astype(np.float32) / 255.0
    return to_uint8(j * t + airlight * (1.0 - t))


def jpeg_degrade(img: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode uint8 RGB (H, W, 3) as JPEG at ``quality`` and decode it again."""
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("utils/demo/data.py: OpenCV JPEG encoding failed; "
                           "reinstall opencv-python-headless")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def darken(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic low light in sRGB: gain * I^gamma plus mild read + shot noise."""
    gamma = rng.uniform(*LOWLIGHT_GAMMA)
    gain = rng.uniform(*LOWLIGHT_GAIN)
    read = rng.uniform(*LOWLIGHT_NOISE)
    shot = rng.uniform(*LOWLIGHT_NOISE)
    y = gain * (img.astype(np.float32) / 255.0) ** gamma
    std = read + shot * np.sqrt(y)
    return to_uint8(y + std * rng.standard_normal(y.shape).astype(np.float32))


def motion_blur(img: np.ndarray, rng: np.random.Generator, size_scale: float = 1.0) -> np.ndarray:
    """Blur uint8 RGB (H, W, 3) with a random linear motion kernel (reflect border)."""
    length = max(3.0, rng.uniform(*BLUR_LENGTH) * size_scale)
    ker = line_kernel(length, rng.uniform(0.0, 180.0))
    out = cv2.filter2D(img.astype(np.float32), -1, ker, borderType=cv2.BORDER_REFLECT)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def haze_pairs(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """``n`` distinct (A, beta) pairs from HAZE_AIRLIGHT x HAZE_BETA."""
    grid = [(a, b) for a in HAZE_AIRLIGHT for b in HAZE_BETA]
    idx = rng.choice(len(grid), size=min(n, len(grid)), replace=False)
    return [grid[i] for i in sorted(idx)]


def haze_name(image_id: str, airlight: float, beta: float) -> str:
    """RESIDE/SOTS file name ``ID_A_B.png`` (e.g. ``0001_0.8_0.1.png``)."""
    return f"{image_id}_{airlight:g}_{beta:g}.png"


# ----------------------------------------------------------------------------
# Files and manifest
# ----------------------------------------------------------------------------

def encode_png(img: np.ndarray) -> bytes:
    """Deterministic PNG bytes of uint8 RGB (H, W, 3)."""
    ok, buf = cv2.imencode(".png", img[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("utils/demo/data.py: OpenCV PNG encoding failed; "
                           "reinstall opencv-python-headless")
    return buf.tobytes()


def write_if_changed(path: Path, data: bytes, force: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly
    ``data`` (and not ``force``). Returns True when written."""
    if not force and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def requested_params(seed: int, scale: float, max_photos: int | None) -> dict:
    """Everything that determines the build's content, as JSON-compatible data."""
    train = list(TRAIN_PHOTOS[:max_photos] if max_photos else TRAIN_PHOTOS)
    test = list(TEST_PHOTOS[:max_photos] if max_photos else TEST_PHOTOS)
    params = {
        "version": VERSION, "seed": int(seed), "scale": float(scale),
        "max_photos": max_photos, "train_photos": train, "test_photos": test,
        "train_side": round_to_multiple(TRAIN_SIDE * scale),
        "test_short": round_to_multiple(TEST_SHORT * scale),
        "test_long_max": round_to_multiple(TEST_LONG_MAX * scale),
        "rain_variants_train": RAIN_VARIANTS_TRAIN, "haze_variants_train": HAZE_VARIANTS_TRAIN,
        "haze_airlight": HAZE_AIRLIGHT, "haze_beta": HAZE_BETA,
        "depth_near_far": (DEPTH_NEAR, DEPTH_FAR),
        "rain": {"density": RAIN_DENSITY, "angle_deg": RAIN_ANGLE_DEG, "length": RAIN_LENGTH,
                 "width_sigma": RAIN_WIDTH_SIGMA, "brightness": RAIN_BRIGHTNESS},
        "jpeg_quality": JPEG_QUALITY,
        "lowlight": {"gamma": LOWLIGHT_GAMMA, "gain": LOWLIGHT_GAIN, "noise": LOWLIGHT_NOISE},
        "blur_length": BLUR_LENGTH, "png_compression": PNG_COMPRESSION,
    }
    return json.loads(json.dumps(params))  # tuples -> lists, as read back from disk


def read_manifest(root: Path) -> dict | None:
    """The demo's manifest under ``root`` (of any version: an older build is rebuilt, not refused) or None
    when missing, unreadable or not the demo's."""
    try:
        man = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(man, dict) and type(man.get("version")) is int and isinstance(man.get("params"), dict) \
        and isinstance(man.get("files"), dict)
    return man if ours else None


def check_root(root: Path) -> None:
    """Refuse to build into ``root`` when it is a file, or a folder holding files that are not the demo's (no
    manifest of its own, no mark of a build of it that was interrupted): the demo's file names are the
    benchmarks' (``Train/Derain/rainy/rain-1.png``, ...), so a user's data folder would be overwritten."""
    if root.exists() and not root.is_dir():
        raise DemoDataError(f"--root {root}: a file, not a folder — choose a new folder for the demo's data")
    if not root.is_dir() or read_manifest(root) is not None or (root / BUILDING_MARK).exists():
        return
    if any(root.iterdir()):
        raise DemoDataError(f"--root {root} holds files that are not the demo's (no demo manifest.json there): "
                            f"the demo would write over them — choose a new or empty folder for its data (an "
                            f"interrupted demo build there can be deleted: make clean-demo for the default folders)")


def stale_reason(root: Path, params: dict) -> str | None:
    """Why the build under ``root`` does not match ``params`` (None: up to date)."""
    man = read_manifest(root)
    if man is None:
        return "no manifest"
    if man["version"] != VERSION:
        return f"built by version {man['version']} of the demo's data, this is {VERSION}"
    if man.get("params") != params:
        changed = sorted(k for k in set(params) | set(man.get("params") or {})
                         if (man.get("params") or {}).get(k) != params.get(k))
        return "parameters changed: " + ", ".join(changed)
    missing = [rel for rel in man.get("files", {}) if not (root / rel).is_file()]
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    changed = [rel for rel, info in man["files"].items()
               if not isinstance(info, dict)
               or hashlib.sha256((root / rel).read_bytes()).hexdigest() != info.get("sha256")]
    if changed:  # a file edited or replaced since the build: its scores would not be the demo's
        return f"{len(changed)} file(s) changed since the build, e.g. {changed[0]}"
    return None


def folder_counts(files: dict) -> dict[str, int]:
    """Number of files per folder, keyed by folder relative path."""
    counts: dict[str, int] = {}
    for rel in files:
        folder = rel.rsplit("/", 1)[0]
        counts[folder] = counts.get(folder, 0) + 1
    return dict(sorted(counts.items()))


def content_hash(files: dict) -> str:
    """sha256 over the sorted (relative path, file sha256) list."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------

def make_train_crops(name: str, side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training crops of photo ``name``: list of (rgb uint8 (side, side, 3),
    depth01 float32 (side, side))."""
    img, disp = load_photo(name)
    (rh, rw), starts = plan_train_windows(img.shape[0], img.shape[1], side)
    big = resize(img, rh, rw)
    dbig = resize(depth_from_disparity(disp), rh, rw) if disp is not None else None
    out = []
    for y, x in starts:
        crop = big[y:y + side, x:x + side]
        depth = normalise01(dbig[y:y + side, x:x + side]) if dbig is not None else depth_proxy(crop)
        out.append((np.ascontiguousarray(crop), depth))
    return out


def make_test_image(name: str, short: int, long_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Test image of photo ``name``: (rgb uint8 (h, w, 3), depth01 float32 (h, w))."""
    img, disp = load_photo(name)
    (rh, rw), (y, x, ch, cw) = plan_test_window(img.shape[0], img.shape[1], short, long_max)
    crop = np.ascontiguousarray(resize(img, rh, rw)[y:y + ch, x:x + cw])
    if disp is not None:
        return crop, normalise01(resize(depth_from_disparity(disp), rh, rw)[y:y + ch, x:x + cw])
    return crop, depth_proxy(crop)


def _emit(root: Path, files: dict, rel: str, img: np.ndarray, source: str, split: str,
          force: bool) -> int:
    """Write one image (if changed) and record it in ``files``, and first in the build's mark (so that a build
    stopped before its manifest still knows the file as its own); returns 1 if written."""
    data = encode_png(img)
    files[rel] = {"source": source, "split": split, "size": [int(img.shape[0]), int(img.shape[1])],
                  "sha256": hashlib.sha256(data).hexdigest()}
    with open(root / BUILDING_MARK, "a") as mark:
        mark.write(rel + "\n")
    return int(write_if_changed(root / rel, data, force))


def interrupted_files(root: Path) -> set[str]:
    """The files an interrupted build under ``root`` had begun to write (listed in its mark)."""
    try:
        return {rel for rel in (root / BUILDING_MARK).read_text().splitlines() if rel}
    except OSError:
        return set()


def remove_leftovers(root: Path, files: dict, earlier: set[str]) -> None:
    """Remove what an earlier build wrote that this one did not produce (``earlier``: the previous manifest's
    files and an interrupted build's), and the temporaries an interrupted write left beside any of them:
    otherwise the training folders, which are scanned, hold images the manifest does not list."""
    for rel in earlier - set(files):
        if (root / rel).is_file():
            (root / rel).unlink()
    for rel in earlier | set(files):
        path = root / rel
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)


def build_files(root: Path, params: dict, force: bool, progress: bool) -> tuple[dict, int]:
    """Synthesise and write every file. Returns (files record, number written)."""
    seed, scale = params["seed"], params["scale"]
    side, short, long_max = params["train_side"], params["test_short"], params["test_long_max"]
    files: dict = {}
    written = 0
    jobs = [("train", n) for n in params["train_photos"]] + [("test", n) for n in params["test_photos"]]
    n_crop = n_rain = 0
    n_test = 0
    for split, name in tqdm(jobs, desc="demo data", unit="photo", disable=not progress):
        if split == "train":
            for k, (clean, depth) in enumerate(make_train_crops(name, side)):
                n_crop += 1
                written += _emit(root, files, f"Train/Denoise/{name}_{k}.png", clean, name, split, force)
                for v in range(params["rain_variants_train"]):
                    n_rain += 1
                    rainy = add_rain(clean, image_rng(seed, _TAG_RAIN, n_crop, v), scale)
                    written += _emit(root, files, f"Train/Derain/rainy/rain-{n_rain}.png", rainy, name, split, force)
                    written += _emit(root, files, f"Train/Derain/gt/norain-{n_rain}.png", clean, name, split, force)
                image_id = f"{n_crop:04d}"
                written += _emit(root, files, f"Train/Dehaze/original/{image_id}.png", clean, name, split, force)
                for a, b in haze_pairs(image_rng(seed, _TAG_HAZE, n_crop), params["haze_variants_train"]):
                    written += _emit(root, files, f"Train/Dehaze/synthetic/part1/{haze_name(image_id, a, b)}",
                                     add_haze(clean, depth, a, b), name, split, force)
            continue
        n_test += 1
        idx = 10_000 + n_test  # disjoint random streams from the training images
        clean, depth = make_test_image(name, short, long_max)
        pairs = [
            (f"test/derain/demo/input/rain-{n_test}.png", f"test/derain/demo/target/norain-{n_test}.png",
             add_rain(clean, image_rng(seed, _TAG_RAIN, idx), scale)),
            (f"test/jpeg/input/{name}.png", f"test/jpeg/target/{name}.png", jpeg_degrade(clean)),
            (f"test/lowlight/low/{name}.png", f"test/lowlight/high/{name}.png",
             darken(clean, image_rng(seed, _TAG_LOWLIGHT, idx))),
            (f"test/deblur/input/{name}.png", f"test/deblur/target/{name}.png",
             motion_blur(clean, image_rng(seed, _TAG_BLUR, idx), scale)),
        ]
        (a, b), = haze_pairs(image_rng(seed, _TAG_HAZE, idx), 1)
        image_id = f"{n_test:04d}"
        pairs.append((f"test/dehaze/input/{haze_name(image_id, a, b)}", f"test/dehaze/target/{image_id}.png",
                      add_haze(clean, depth, a, b)))
        written += _emit(root, files, f"test/denoise/demo/{name}.png", clean, name, split, force)
        for rel_in, rel_gt, degraded in pairs:
            written += _emit(root, files, rel_in, degraded, name, split, force)
            written += _emit(root, files, rel_gt, clean, name, split, force)
    return files, written


def _check_args(seed: int, scale: float, max_photos: int | None) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"utils/demo/data.py: seed must be a non-negative int, got {seed!r}")
    if not (0.05 <= float(scale) <= 4.0):
        raise DemoDataError(f"utils/demo/data.py: scale must lie in [0.05, 4], got {scale!r} "
                         "(use e.g. 0.2 for a tiny test build, 1.0 for the default)")
    if max_photos is not None and (not isinstance(max_photos, int) or max_photos < 1):
        raise DemoDataError(f"utils/demo/data.py: max_photos must be None or an int >= 1, got {max_photos!r}")


def build_demo_data(root: str | os.PathLike = DEFAULT_ROOT, seed: int = 0, scale: float = 1.0,
                    force: bool = False, max_photos: int | None = None,
                    progress: bool = True) -> dict:
    """Build (or confirm) the demo data set under ``root`` and return its manifest.

    Rebuilt only when stale (no manifest, different version / seed / scale /
    parameters, or a listed file missing) or when ``force``. A rebuild rewrites
    only files whose bytes change (all of them when ``force``) and removes files
    listed by the previous manifest that are no longer produced.

    ``scale`` multiplies all image sizes (and streak / blur lengths);
    ``max_photos`` keeps only the first N train and N test photos (tiny builds).

    The returned dict is the manifest (as saved in ``root/manifest.json``) plus a
    ``"status"`` entry that is not saved: ``"up to date"`` or ``"built (<reason>)"``.
    """
    _check_args(seed, scale, max_photos)
    root = Path(root)
    check_root(root)
    params = requested_params(seed, scale, max_photos)
    reason = "forced" if force else stale_reason(root, params)
    if reason is None:
        return {**read_manifest(root), "status": "up to date"}
    root.mkdir(parents=True, exist_ok=True)
    earlier = set((read_manifest(root) or {}).get("files", {})) | interrupted_files(root)
    (root / BUILDING_MARK).touch()  # an interrupted build is still known as the demo's own (its list kept)
    files, written = build_files(root, params, force, progress)
    remove_leftovers(root, files, earlier)
    manifest = {
        "version": VERSION, "seed": params["seed"], "scale": params["scale"], "params": params,
        "sources": {"train": params["train_photos"], "test": params["test_photos"]},
        "counts": folder_counts(files), "files": dict(sorted(files.items())),
        "content_hash": content_hash(files),
    }
    write_if_changed(root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode(), force=True)
    (root / BUILDING_MARK).unlink(missing_ok=True)
    return {**manifest, "status": f"built ({reason}; {written} file(s) written)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the embedded demo data set (docs/METHOD.md §3-4 layout).")
    p.add_argument("--root", default=DEFAULT_ROOT, help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="image size factor (default: %(default)s)")
    p.add_argument("--max-photos", type=int, default=None, help="keep only the first N train and test photos")
    p.add_argument("--force", action="store_true", help="rebuild and rewrite every file")
    args = p.parse_args(argv)
    t0 = time.time()
    man = build_demo_data(args.root, args.seed, args.scale, args.force, args.max_photos)
    print(f"{args.root}: {man['status']} in {time.time() - t0:.1f}s "
          f"(seed {man['seed']}, scale {man['scale']}, {len(man['files'])} files, "
          f"hash {man['content_hash'][:12]})")
    for folder, n in man["counts"].items():
        print(f"  {n:4d}  {folder}/")
    print(f"  train photos: {', '.join(man['sources']['train'])}")
    print(f"  test photos:  {', '.join(man['sources']['test'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
