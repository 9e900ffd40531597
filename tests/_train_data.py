"""Synthetic training folders in the reference layout, made in a test's tmp_path (no download).

Images are smooth random colour fields (a few blurred noise octaves), so crops differ from each
other and from their flips; degraded versions are simple deterministic functions of the clean
image (streaks, haze, blur, darkening) so degraded and clean share their geometry.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def smooth_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float64)
    for cells, weight in ((4, 1.0), (8, 0.5), (16, 0.25)):
        small = rng.random((cells, cells, 3))
        img += weight * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    img -= img.min()
    img /= max(img.max(), 1e-9)
    return (img * 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def make_train_tree(root: Path, five_d: bool = False, n: int = 3, size: int = 64, seed: int = 0,
                    id_lists: bool = False) -> dict[str, Path]:
    """Build ``root/Train/...`` with ``n`` images per family; returns the ``--*_dir`` folders.

    With ``id_lists`` also writes the reference's id lists under ``root/data_dir`` (key ``data_file_dir``).
    """
    rng = np.random.default_rng(seed)
    train = root / "Train"
    dirs = {"denoise": train / "Denoise", "derain": train / "Derain", "dehaze": train / "Dehaze",
            "deblur": train / "Deblur", "lowlight": train / "lowlight", "single": train / "single"}
    for i in range(n):
        _write(dirs["denoise"] / f"clean_{i}.png", smooth_image(rng, size))
    for i in range(1, n + 1):
        clean = smooth_image(rng, size)
        rain = clean.copy()
        rain[:, ::7] = 255
        _write(dirs["derain"] / "rainy" / f"rain-{i}.png", rain)
        _write(dirs["derain"] / "gt" / f"norain-{i}.png", clean)
    for i in range(n):
        clean = smooth_image(rng, size)
        _write(dirs["dehaze"] / "original" / f"{i:04d}.png", clean)
        for a in ("0.8", "0.9"):
            hazy = (0.6 * clean + 0.4 * 255 * float(a)).astype(np.uint8)
            _write(dirs["dehaze"] / "synthetic" / "part1" / f"{i:04d}_{a}_0.2.png", hazy)
    if five_d:
        for i in range(n):
            clean = smooth_image(rng, size)
            _write(dirs["deblur"] / "sharp" / f"img_{i}.png", clean)
            _write(dirs["deblur"] / "blur" / f"img_{i}.png", cv2.blur(clean, (5, 5)))
            _write(dirs["lowlight"] / "high" / f"{i}.png", clean)
            _write(dirs["lowlight"] / "low" / f"{i}.png", (clean // 4).astype(np.uint8))
    out = {k: v for k, v in dirs.items()}
    if id_lists:
        dfd = root / "data_dir"
        (dfd / "noisy").mkdir(parents=True)
        (dfd / "rainy").mkdir(parents=True)
        (dfd / "hazy").mkdir(parents=True)
        (dfd / "noisy" / "denoise.txt").write_text("".join(f"clean_{i}.png\n" for i in range(n)))
        (dfd / "rainy" / "rainTrain.txt").write_text("".join(f"rainy/rain-{i}.png\n" for i in range(1, n + 1)))
        (dfd / "hazy" / "hazy_outside.txt").write_text(
            "".join(f"synthetic/part1/{i:04d}_0.8_0.2.png\n" for i in range(n)))
        out["data_file_dir"] = dfd
    return out


ID_LIST_FILES = {"denoise": "noisy/denoise.txt", "derain": "rainy/rainTrain.txt", "dehaze": "hazy/hazy_outside.txt"}


def add_listed_ids(tree: dict[str, Path], fam: str, ids) -> Path:
    """Append ``ids`` to ``fam``'s id list of a tree made with ``id_lists=True`` (e.g. ids with no file)."""
    path = tree["data_file_dir"] / ID_LIST_FILES[fam]
    with path.open("a") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return path


def unpack_flat(root: Path, subfolders=("rainy", "gt")) -> Path:
    """Move the images of ``root``'s ``subfolders`` into ``root`` itself and remove the folders, as a download
    unpacks them (Rain100L's ``rain-N.png`` beside ``norain-N.png``); returns ``root``."""
    for sub in subfolders:
        for f in (root / sub).iterdir():
            f.rename(root / f.name)
        (root / sub).rmdir()
    return root


def make_val_tree(root: Path, n: int = 2, size: int = 48, seed: int = 1) -> tuple[Path, Path]:
    """Validation pairs named so that sorted position and name disagree (rain-N / norain-N)."""
    rng = np.random.default_rng(seed)
    deg, tar = root / "val" / "input", root / "val" / "target"
    for i in range(1, n + 1):
        clean = smooth_image(rng, size)
        rain = clean.copy()
        rain[:, ::5] = 255
        _write(deg / f"rain-{i}.png", rain)
        _write(tar / f"norain-{i}.png", clean)
    return deg, tar


def damage_middle(path: Path, n: int = 200) -> Path:
    """Flip ``n`` bytes in the middle of ``path``, keeping its length, header and ending: a PNG so damaged passes
    the header-and-ending check and does not decode (libpng: "bad adaptive filter value")."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid - n // 2:mid + n // 2] = bytes(b ^ 0xFF for b in data[mid - n // 2:mid + n // 2])
    path.write_bytes(bytes(data))
    return path


def train_flags(dirs: dict[str, Path], out: Path, de_type=("denoise_15", "denoise_25", "denoise_50", "derain",
                                                           "dehaze")) -> list[str]:
    """Command-line flags for a tiny CPU run on these folders (outputs under ``out``). Only the folders of the
    families ``de_type`` trains are passed: the trainer warns about the others."""
    trained = {"denoise" if d.startswith("denoise_") else d for d in de_type}
    folders = [flag for fam in ("denoise", "derain", "dehaze", "deblur", "lowlight") if fam in trained
               for flag in (f"--{fam}_dir", str(dirs[fam]) + "/")]
    flags = ["--de_type", *de_type, *folders, "--data_file_dir", "",
             "--preset", "tiny", "--device", "cpu", "--patch_size", "32", "--batchSize", "3",
             "--workers", "0", "--degset", "", "--tarset", "", "--output-dir", str(out / "ckpt"),
             "--figs-dir", str(out / "figs"), "--log-every", "1", "--save-every", "0"]
    return flags


def make_test_tree(root: Path, n: int = 3, size: int = 40) -> Path:
    """A benchmark root in the README's layout with ``n`` images per set (names as the real sets have them)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        clean = smooth_image(rng, size)
        dim = (clean // 2).astype(np.uint8)
        _write(root / "denoise" / "bsd68" / f"test{i:03d}.png", clean)
        _write(root / "derain" / "Rain100L" / "input" / f"rain-{i + 1}.png", dim)
        _write(root / "derain" / "Rain100L" / "target" / f"norain-{i + 1}.png", clean)
        _write(root / "dehaze" / "input" / f"{i:04d}_0.8_0.2.png", dim)
        _write(root / "dehaze" / "target" / f"{i:04d}.png", clean)
        _write(root / "deblur" / "input" / f"GOPR{i}.png", dim)
        _write(root / "deblur" / "target" / f"GOPR{i}.png", clean)
        _write(root / "lowlight" / "low" / f"{i}.png", dim)
        _write(root / "lowlight" / "high" / f"{i}.png", clean)
    return root
