"""What the tester's tests share: a tiny benchmark in the documented layout and a checkpoint of a BaryNet whose
output convolution is zero.

Such a network returns its input exactly (global residual), so every number the tester prints must equal the
metrics of the degraded images against their targets, computed directly (:func:`direct_metrics`). The fixtures are
imported by the test modules that use them (``from _tester_case import bench, checkpoint``).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import tester_bary
from net.presets import build_model, model_config
from utils.data.image_io import read_image, write_image
from utils.data.pairing import match_pairs
from utils.eval import protocol as protocol_module
from utils.eval.metrics import image_metrics

REPO = Path(__file__).resolve().parents[1]
H, W = 44, 61  # not multiples of 8: the two protocols differ


def clean_images():
    return {"astro": data.astronaut()[60:60 + H, 200:200 + W], "cat": data.chelsea()[80:80 + H, 150:150 + W],
            "coffee": data.coffee()[150:150 + H, 250:250 + W]}


def degrade(img, k):
    rng = np.random.default_rng(k)
    return np.clip(img * 0.85 + 20 + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A benchmark root in the docs/METHOD.md §4 layout, plus the degraded/target arrays by folder."""
    root = tmp_path_factory.mktemp("bench")
    clean = clean_images()
    for k, (name, img) in enumerate(clean.items()):
        write_image(root / "denoise" / "setA" / f"{name}.png", img)
        write_image(root / "dehaze" / "input" / f"{name}_0.8_0.1.png", degrade(img, k))
        write_image(root / "dehaze" / "target" / f"{name}.png", img)
        write_image(root / "derain" / "Rain100L" / "input" / f"rain-{k + 1}.png", degrade(img, 10 + k))
        write_image(root / "derain" / "Rain100L" / "target" / f"norain-{k + 1}.png", img)
        write_image(root / "jpeg" / "input" / f"{name}.png", degrade(img, 20 + k))
        write_image(root / "jpeg" / "target" / f"{name}.png", img)
    write_image(root / "denoise" / "setB" / "cat.png", clean["cat"][:32, :40])
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A project checkpoint of the zero-output tiny BaryNet."""
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    torch.nn.init.zeros_(model.output.weight)
    path = tmp_path_factory.mktemp("ckpt") / "zero.pth"
    torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                "epoch": 1}, path)
    return path


def run(*argv):
    args = tester_bary.get_args_parser().parse_args([*map(str, argv), "--no-progress"])
    return tester_bary.main(args)


def direct_metrics(deg_dir, tar_dir, protocol, space, ssim="skimage"):
    """Metrics of each degraded image against its target, prepared as the protocol says."""
    pairs, _ = match_pairs(deg_dir, tar_dir)
    out = {}
    for d, t in pairs:
        a, b = read_image(d), read_image(t)
        if protocol == "reference":
            a, b = a[: a.shape[0] // 8 * 8, : a.shape[1] // 8 * 8], b[: b.shape[0] // 8 * 8, : b.shape[1] // 8 * 8]
        out[d.name] = image_metrics(a, b, space, ssim)
    return out


def pair_dirs(tmp_path, names_deg, names_tar, size_of=lambda n: (H, W)):
    """Folders ``tmp_path/deg`` and ``tmp_path/tar`` of crops of one photo named ``names_deg`` and ``names_tar``
    (a degraded image ``n`` cut to ``size_of(n)``); returns the two folders."""
    deg, tar = tmp_path / "deg", tmp_path / "tar"
    img = clean_images()["cat"]
    for n in names_deg:
        h, w = size_of(n)
        write_image(deg / n, img[:h, :w])
    for n in names_tar:
        write_image(tar / n, img)
    return deg, tar


def run_tester_in(cwd, *argv):
    """``python tester_bary.py ARGV`` run from ``cwd`` (relative defaults resolve there)."""
    # a library's deprecation warning on stderr is not the tester's output, which these tests read line by line
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "tester_bary.py"), *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_photos(folder, names):
    """Images ``names`` in ``folder``, each a different crop; returns every file's bytes by name."""
    img = data.astronaut()
    for k, n in enumerate(names):
        Image.fromarray(img[8 * k: 8 * k + H, 0:W]).save(folder / n, quality=95)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def interrupt_restoring_at(n: int, monkeypatch) -> list:
    """Make the tester's n-th restoration raise KeyboardInterrupt, as Ctrl-C there would; the others restore as
    usual. Returns the list that counts the restorations: clear it to stop at the n-th of a next run."""
    from utils.eval import evaluation
    real, calls = protocol_module.restore_array, []

    def restore(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "restore_array", restore)
    return calls
