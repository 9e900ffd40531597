"""Seeded synthesis of the Gaussian-noise test inputs (denoising tasks).

The reference draws test noise from an unseeded global generator, so no two runs (or
machines) evaluate the same noisy images. Here every noisy image has its own
``numpy.random.Generator`` seeded by a stable hash of (file name, sigma, base seed):

    seed = crc32("<base_seed>:<file name>:<sigma>")

CRC-32 (``zlib.crc32``) is fixed by its definition, unlike Python's ``hash()`` (randomised
per process), so the noisy input of ``bsd68/test001.png`` at sigma 25 is the same on every
machine, in every run, whatever order the folder is listed in. The synthesis itself is the
reference's (docs/METHOD.md §3): ``uint8(clip(clean + sigma * N(0, 1), 0, 255))`` on the 8-bit
clean image, truncating (not rounding) to integers.
"""
from __future__ import annotations

import zlib

import numpy as np

SEED_RULE = ("numpy default_rng(crc32('<noise_seed>:<file name>:<sigma>')), "
             "noisy = uint8(clip(clean + sigma*N(0,1), 0, 255))")


def noise_seed(name: str, sigma: float, base_seed: int = 0) -> int:
    """The generator seed of the noisy version of the file called ``name`` (a base name, no folder); a name
    that is not UTF-8 counts by its bytes as stored."""
    return zlib.crc32(f"{base_seed}:{name}:{sigma:g}".encode("utf-8", "surrogateescape"))


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``uint8(clip(clean + sigma * N(0, 1), 0, 255))``, N drawn from ``rng`` (training and test noise).

    ``clean`` is an 8-bit image of any shape; the noise is drawn in float64, one value per sample.
    """
    if clean.dtype != np.uint8:
        raise ValueError(f"noise is synthesised on 8-bit images, got {clean.dtype}")
    noisy = clean.astype(np.float64) + sigma * rng.standard_normal(clean.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)  # astype truncates toward zero, as the reference


def noisy_version(clean: np.ndarray, name: str, sigma: float, base_seed: int = 0) -> np.ndarray:
    """The seeded noisy test input of the clean 8-bit image called ``name``."""
    return add_noise(clean, sigma, np.random.default_rng(noise_seed(name, sigma, base_seed)))
