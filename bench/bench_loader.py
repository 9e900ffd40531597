"""How many training images per second the trainer's data loader delivers on its own.

The GPU must never wait for data: at the speed target of 50 ms per iteration (batch 3) a GPU
consumes 60 images/s, so the loader must deliver at least twice that. This script builds a
synthetic layout with the real benchmarks' file formats and sizes, wraps it in the trainer's own
dataset, sampler and ``DataLoader`` settings (:func:`utils.train.start.build_loader`), and times
whole batches with nothing else running:

=========  ========================  ====================  ==========
family     files                     format, size          as
=========  ========================  ====================  ==========
denoise    clean images              PNG 481x321           BSD400
derain     rainy / gt pairs          PNG 481x321           Rain100L
dehaze     synthetic / original      JPEG 550x413          RESIDE OTS
deblur     blur / sharp (``--5d``)   PNG 1280x720          GoPro
lowlight   low / high (``--5d``)     PNG 600x400           LOL
=========  ========================  ====================  ==========

Images are smooth colour fields plus pixel noise, so they compress (and decode) like photos
rather than like flat colour. ``--repeat`` gives every family the same share of an epoch (the
paper's repetition factors do the same for the real set sizes).

    .venv/bin/python bench/bench_loader.py                  # default workers (the trainer's --threads)
    .venv/bin/python bench/bench_loader.py --workers 0 4 16 --5d
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import cv2
    import numpy as np
    import torch

    from utils.cli import OneSpellingHelpFormatter, at_least, number_above
    from utils.dataset_utils import ALL_IN_ONE_3D, build_train_dataset, parse_repeats
    from utils.errors import OneLineArgumentParser, UsageError, add_debug_flag, run_main
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt
    from utils.train.distributed import DistInfo
    from utils.train.options import get_args_parser
    from utils.train.start import build_loader

SIZES = {"denoise": (481, 321), "derain": (481, 321), "dehaze": (550, 413), "deblur": (1280, 720),
         "lowlight": (600, 400)}


def max_patch(five_d: bool) -> int:
    """The largest ``--patch`` every synthetic image holds: the shortest side, as the trainer's dataset
    centre-crops it to a multiple of 16."""
    families = SIZES if five_d else {k: SIZES[k] for k in ("denoise", "derain", "dehaze")}
    return min(min(size) // 16 * 16 for size in families.values())


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 image: smooth colour octaves plus pixel noise (sigma 6)."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25)):
        small = rng.random((cells, max(2, cells * width // height), 3), dtype=np.float32)
        img += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = 255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path: Path, bgr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"could not write {path}")


def build_layout(root: Path, n: int, five_d: bool, seed: int = 0) -> dict[str, Path]:
    """``n`` files (pairs) per family under ``root`` in the trainer's layout; returns the ``--*_dir`` folders."""
    rng = np.random.default_rng(seed)
    dirs = {"denoise": root / "Denoise", "derain": root / "Derain", "dehaze": root / "Dehaze"}
    if five_d:
        dirs.update(deblur=root / "Deblur", lowlight=root / "lowlight")
    for i in range(n):
        _write(dirs["denoise"] / f"{i:04d}.png", photo_like(rng, *SIZES["denoise"]))
        clean = photo_like(rng, *SIZES["derain"])
        rain = clean.copy()
        rain[:, ::9] = 230
        _write(dirs["derain"] / "gt" / f"norain-{i + 1}.png", clean)
        _write(dirs["derain"] / "rainy" / f"rain-{i + 1}.png", rain)
        clean = photo_like(rng, *SIZES["dehaze"])
        _write(dirs["dehaze"] / "original" / f"{i:04d}.jpg", clean)
        _write(dirs["dehaze"] / "synthetic" / "part1" / f"{i:04d}_0.8_0.2.jpg",
               (0.6 * clean + 0.4 * 204).astype(np.uint8))
        if five_d:
            sharp = photo_like(rng, *SIZES["deblur"])
            _write(dirs["deblur"] / "sharp" / f"{i:04d}.png", sharp)
            _write(dirs["deblur"] / "blur" / f"{i:04d}.png", cv2.blur(sharp, (9, 1)))
            high = photo_like(rng, *SIZES["lowlight"])
            _write(dirs["lowlight"] / "high" / f"{i}.png", high)
            _write(dirs["lowlight"] / "low" / f"{i}.png", high // 8)
    return dirs


def time_loader(dirs: dict[str, Path], de_types: list[str], repeats: list[str], workers: int, batch: int,
                patch: int, batches: int, device: torch.device) -> dict[str, float]:
    """Seconds to the first batch and steady images/s over ``batches`` batches after it."""
    found_dirs = {fam: str(dirs.get(fam, "")) for fam in ("denoise", "derain", "dehaze", "deblur", "lowlight",
                                                          "single")}
    dataset = build_train_dataset(de_types, found_dirs, patch, seed=0, check=False, log=lambda msg: None,
                                  repeats=parse_repeats(repeats))
    args = argparse.Namespace(batchSize=batch, threads=workers)
    _, loader = build_loader(args, dataset, 0, DistInfo(device=device))
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    if device.type == "cuda":
        first[0].to(device, non_blocking=True)
        torch.cuda.synchronize()
    t_first = time.perf_counter() - start
    for _ in range(2 * workers):  # what the workers had ready while the first batch was awaited: not timed,
        next(it)                  # it would inflate the rate (each worker prefetches 2 batches)
    times = []
    images = 0
    for _ in range(batches):
        t0 = time.perf_counter()
        try:
            degraded, clean, *_ = next(it)
        except StopIteration:
            break
        if device.type == "cuda":
            degraded.to(device, non_blocking=True), clean.to(device, non_blocking=True)
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        images += degraded.shape[0]
    del it
    total = sum(times)
    return {"first_batch_s": t_first, "images_per_s": images / total if total else float("nan"),
            "median_batch_ms": 1000 * statistics.median(times) if times else float("nan"), "batches": len(times)}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=OneSpellingHelpFormatter)
    default_workers = get_args_parser().get_default("threads")
    p.add_argument("--workers", type=at_least(0), nargs="+", default=[default_workers],
                   help="DataLoader worker counts to time (the trainer's default --threads on this machine first)")
    p.add_argument("--files", type=at_least(1), default=24, help="files (pairs) per family")
    p.add_argument("--batch", type=at_least(1), default=3, help="images per batch (the trainer's --batchSize)")
    p.add_argument("--patch", type=at_least(16), default=128,
                   help="training patch side (the trainer's --patch_size; at most 320, the smallest image's side)")
    p.add_argument("--batches", type=at_least(1), default=200, help="batches timed after the first")
    p.add_argument("--5d", dest="five_d", action="store_true", help="add deblur (1280x720) and low light")
    p.add_argument("--consume-ms", type=number_above(0), default=50.0,
                   help="the GPU's time per iteration to compare with (the speed target)")
    p.add_argument("--device", default="auto", help="copy batches to this device as the trainer does")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    args = build_parser().parse_args(argv)
    return run_main(bench, args, debug=args.debug)


def bench(args: argparse.Namespace) -> int:

    de_types = list(ALL_IN_ONE_3D)
    # one epoch long enough for the batches timed and those skipped (24 files: 792 samples, 264 batches of 3)
    repeats = ["denoise_15=3", "denoise_25=3", "denoise_50=3", "derain=12", "dehaze=12"]
    if args.five_d:
        de_types += ["deblur", "lowlight"]
        repeats += ["deblur=12", "lowlight=12"]
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, and its synthetic layout removed
    largest = max_patch(args.five_d)
    if args.patch > largest:  # found by the dataset after the layout was written, and named as the trainer's flag
        raise UsageError(f"--patch {args.patch} is larger than the smallest synthetic image ({largest} pixels a side "
                         f"after the trainer's centre-crop to multiples of 16): pass --patch {largest} or less")
    device = pick_device(args.device)
    root = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t0 = time.perf_counter()
        dirs = build_layout(root, args.files, args.five_d)
        print(f"layout: {args.files} files per family under {root} ({time.perf_counter() - t0:.0f} s to write); "
              f"{'5D' if args.five_d else '3D'}, batch {args.batch}, patch {args.patch}, device {device}; "
              f"{machine_line(machine_info(device))}")
        need = 2 * args.batch / (args.consume_ms / 1000)
        print(f"\n| workers | first batch (s) | batches timed | images/s | median batch (ms) | / {need:.0f} images/s "
              f"needed (2x what a GPU at {args.consume_ms:g} ms per iteration takes) |")
        print("|---:|---:|---:|---:|---:|---|")
        for workers in args.workers:
            r = time_loader(dirs, de_types, repeats, workers, args.batch, args.patch, args.batches, device)
            verdict = f"{r['images_per_s'] / need:.2f}x ({'enough' if r['images_per_s'] >= need else 'too slow'})"
            print(f"| {workers} | {r['first_batch_s']:.2f} | {r['batches']} | {r['images_per_s']:.0f} | "
                  f"{r['median_batch_ms']:.1f} | {verdict} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
