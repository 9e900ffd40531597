"""The demo's synthetic degradations: rain streaks, haze by the atmospheric scattering model, JPEG,
low light and linear motion blur, and the depth maps haze needs.

Each is a pure function of its image and a ``numpy.random.Generator`` (:func:`image_rng` gives every
image its own stream; the global RNG is never used), so the demo builds the same files on every machine.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

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


# ----------------------------------------------------------------------------
# Depth for haze
# ----------------------------------------------------------------------------

def normalise01(x: np.ndarray) -> np.ndarray:
    """Affine map of ``x`` (any shape) to [0, 1] (zeros when constant); float32, same shape."""
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
        raise ValueError("utils/demo/degrade.py: disparity map has no valid pixel; "
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
    """[0, 1] float -> uint8, same shape, rounded (half to even, ``np.round``) and clipped."""
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
        raise RuntimeError("utils/demo/degrade.py: OpenCV JPEG encoding failed; "
                           "reinstall opencv-python-headless")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def darken(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic low light in sRGB, ``(H, W, 3)`` uint8 -> same: gain * I^gamma plus mild read + shot noise."""
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
