"""Image quality metrics on 8-bit images.

The default is the reference protocol (SPEC section 4): PSNR with data range 255 and
scikit-image's default SSIM (7x7 uniform window, per RGB channel), on 8-bit RGB arrays.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

MAX_PSNR = 100.0  # reported for identical images instead of infinity


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of two same-shape arrays; identical images give :data:`MAX_PSNR`."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs equal shapes, got {a.shape} and {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return MAX_PSNR
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim_skimage(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """scikit-image's default SSIM over the channels of ``(H, W, C)`` (or ``(H, W)``) arrays."""
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=data_range,
                                       channel_axis=channel_axis))
