"""Embedded default data set: a small, deterministic 3D all-in-one benchmark.

Builds training and test folders (docs/METHOD.md §3-4 layout) from photographs that
ship inside installed wheels (:mod:`utils.demo.photos`), so the project trains and tests
with no download:

* scikit-image (``skimage.data``, bundled in the wheel, no pooch fetch):
  ``astronaut``, ``rocket``, ``stereo_motorcycle`` (left and right views and the
  disparity map), ``immunohistochemistry``, ``chelsea``, ``coffee`` (colour);
  ``brick``, ``grass``, ``gravel``, ``moon``, ``camera``, ``coins`` (grey, copied to
  3 channels).
* matplotlib sample data: ``grace_hopper.jpg`` (colour).

Train and test use different photographs (``TRAIN_PHOTOS`` / ``TEST_PHOTOS``).
Degradations (:mod:`utils.demo.degrade`) are synthesised deterministically from ``seed``:
every image draws from its own ``numpy.random.Generator`` seeded by (seed, degradation
tag, image index, variant); the global RNG is never used.

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
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
from tqdm import tqdm

from utils.data.image_files import list_images
from utils.data.noise import noisy_version
from utils.demo.degrade import (
    BLUR_LENGTH,
    DEPTH_FAR,
    DEPTH_NEAR,
    HAZE_AIRLIGHT,
    HAZE_BETA,
    JPEG_QUALITY,
    LOWLIGHT_GAIN,
    LOWLIGHT_GAMMA,
    LOWLIGHT_NOISE,
    RAIN_ANGLE_DEG,
    RAIN_BRIGHTNESS,
    RAIN_DENSITY,
    RAIN_LENGTH,
    RAIN_WIDTH_SIGMA,
    add_haze,
    add_rain,
    darken,
    depth_from_disparity,
    depth_proxy,
    haze_pairs,
    image_rng,
    jpeg_degrade,
    motion_blur,
    normalise01,
)
from utils.demo.photos import (
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    load_photo,
    plan_test_window,
    plan_train_windows,
    resize,
    round_to_multiple,
)
from utils.errors import OneLineArgumentParser, UserError, add_debug_flag, counted, listing, run_main
from utils.files import replace_file

VERSION = 1
BUILDING_MARK = ".demo-building"  # lists a build's files as it writes them, removed with its manifest's writing
DEFAULT_ROOT = "data/demo"
MANIFEST_NAME = "manifest.json"


class DemoDataError(UserError, ValueError):
    """The demo's data folder cannot be built where or as asked; the message says why and what to do."""


# Sizes at scale 1 (pixels; all become multiples of 16).
TRAIN_SIDE = 384          # train crops are TRAIN_SIDE x TRAIN_SIDE windows
TEST_SHORT = 224          # test images: short side ...
TEST_LONG_MAX = 288       # ... and long side at most this

RAIN_VARIANTS_TRAIN = 2   # rainy versions per training crop
HAZE_VARIANTS_TRAIN = 3   # (A, beta) pairs per training crop
PNG_COMPRESSION = 3

# Tags that separate the random streams of the different degradations.
_TAG_RAIN, _TAG_HAZE, _TAG_LOWLIGHT, _TAG_BLUR = 1, 2, 3, 4


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
    replace_file(path, data)  # a full disk: one line naming the file, and no part-written temporary left
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


def check_no_foreign_images(root: Path) -> None:
    """Refuse a demo folder holding images its builds did not write (a user's photo dropped into
    ``Train/Derain/rainy/``): the trainer and the tester read every image of the demo's folders, so the demo would
    train and score on them. They are not the demo's to delete, and a rebuild would keep them: the user moves them."""
    manifest = read_manifest(root) if root.is_dir() else None
    if manifest is None:  # none yet, or a first build interrupted: check_root has looked
        return
    ours = set(manifest["files"]) | interrupted_files(root)
    foreign = [p.relative_to(root).as_posix() for p in list_images(root, recursive=True)]
    foreign = [rel for rel in foreign if rel not in ours]
    if foreign:
        n = len(foreign)
        raise DemoDataError(f"--root {root} holds {n} image{'s' if n > 1 else ''} its manifest does not list "
                            f"({listing(foreign, 3, ', ', '')}): the demo's trainer and tester read every image in "
                            f"its folders, so its scores would not be the demo's — move {'them' if n > 1 else 'it'} "
                            f"out of {root} or build the demo into another --root (leftovers of a build by an older "
                            f"version: make clean-demo starts the default folders afresh)")


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
        return f"{counted(len(missing), 'file')} missing, e.g. {missing[0]}"
    changed = [rel for rel, info in man["files"].items()
               if not isinstance(info, dict)
               or hashlib.sha256((root / rel).read_bytes()).hexdigest() != info.get("sha256")]
    if changed:  # a file edited or replaced since the build: its scores would not be the demo's
        return f"{counted(len(changed), 'file')} changed since the build, e.g. {changed[0]}"
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


def train_crop_count(params: dict) -> int:
    """How many training crops a build of ``params`` (:func:`requested_params`) cuts (:func:`make_train_crops`), from
    the photos' sizes alone: nothing is resized or written. Each crop is one clean image, with
    ``params["rain_variants_train"]`` rainy and ``params["haze_variants_train"]`` hazy versions."""
    return sum(len(plan_train_windows(*load_photo(name)[0].shape[:2], params["train_side"])[1])
               for name in params["train_photos"])


def make_test_image(name: str, short: int, long_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Test image of photo ``name``: (rgb uint8 (h, w, 3), depth01 float32 (h, w))."""
    img, disp = load_photo(name)
    (rh, rw), (y, x, ch, cw) = plan_test_window(img.shape[0], img.shape[1], short, long_max)
    crop = np.ascontiguousarray(resize(img, rh, rw)[y:y + ch, x:x + cw])
    if disp is not None:
        return crop, normalise01(resize(depth_from_disparity(disp), rh, rw)[y:y + ch, x:x + cw])
    return crop, depth_proxy(crop)


def degraded_test_views(clean: np.ndarray, depth: np.ndarray, seed: int, number: int,
                      scale: float = 1.0) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """The degraded versions of the ``number``-th test image (1-based) of a build of ``seed`` and ``scale``: the
    demo's test inputs, and the views ``python -m utils.analysis`` makes of a user's photo the same way.

    ``clean``: uint8 (H, W, 3); ``depth``: its depth in [0, 1], float (H, W), for haze. Returns
    ``({"rain", "jpeg q10", "low light", "blur", "haze": uint8 (H, W, 3)}, (airlight, beta) of the haze)``; each
    degradation draws from its own stream (:func:`~utils.demo.degrade.image_rng`, image index
    ``10_000 + number``: apart from the training images'), so the result does not depend on which are used.
    ``scale`` multiplies the rain streaks' and the blur's lengths, as it does the build's image sizes.
    """
    idx = 10_000 + number  # disjoint random streams from the training images
    (a, b), = haze_pairs(image_rng(seed, _TAG_HAZE, idx), 1)
    views = {"rain": add_rain(clean, image_rng(seed, _TAG_RAIN, idx), scale), "jpeg q10": jpeg_degrade(clean),
             "low light": darken(clean, image_rng(seed, _TAG_LOWLIGHT, idx)),
             "blur": motion_blur(clean, image_rng(seed, _TAG_BLUR, idx), scale), "haze": add_haze(clean, depth, a, b)}
    return views, (a, b)


# The views the demo's embedding figures show of each test photo, in the order :func:`utils.demo.run.views_of_one_photo`
# reads them from a build (the seeded test noise, then the manifest's order of the degraded test folders).
NOISE_VIEWS = (15, 25, 50)
DEGRADED_VIEWS = ("haze", "rain", "jpeg q10", "low light")


def embedding_views(clean: np.ndarray, depth: np.ndarray, file_name: str, number: int, seed: int = 0,
                    scale: float = 1.0) -> dict[str, np.ndarray]:
    """The views of a clean image the demo's embedding figures show, synthesised: ``{label: uint8 (H, W, 3)}``.

    ``noise 15``, ``noise 25``, ``noise 50`` (the tester's seeded noise of a clean image called ``file_name``),
    then ``haze``, ``rain``, ``jpeg q10``, ``low light`` of :func:`degraded_test_views` (``number``, ``seed``,
    ``scale``). For the demo's ``number``-th test image of a build of ``seed`` and ``scale`` they are the files
    ``views_of_one_photo`` reads (``file_name``: ``<photo>.png``).
    """
    views = {f"noise {s}": noisy_version(clean, file_name, s) for s in NOISE_VIEWS}
    degraded, _ = degraded_test_views(clean, depth, seed, number, scale)
    views.update((kind, degraded[kind]) for kind in DEGRADED_VIEWS)
    return views


def _emit(root: Path, mark: TextIO, files: dict, rel: str, img: np.ndarray, source: str, split: str,
          force: bool) -> int:
    """Write one image (if changed) and record it in ``files``, and first in the build's ``mark`` (a
    line-buffered file: the name is on disk before the image, so a build stopped before its manifest still
    knows the file as its own); returns 1 if written."""
    data = encode_png(img)
    files[rel] = {"source": source, "split": split, "size": [int(img.shape[0]), int(img.shape[1])],
                  "sha256": hashlib.sha256(data).hexdigest()}
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


def build_files(root: Path, mark: TextIO, params: dict, force: bool, progress: bool) -> tuple[dict, int]:
    """Synthesise and write every file, each listed in ``mark`` first. Returns (files record, number written)."""
    seed, scale = params["seed"], params["scale"]
    side, short, long_max = params["train_side"], params["test_short"], params["test_long_max"]
    files: dict = {}

    def emit(rel: str, img: np.ndarray, source: str, split: str) -> int:
        return _emit(root, mark, files, rel, img, source, split, force)

    written = 0
    jobs = [("train", n) for n in params["train_photos"]] + [("test", n) for n in params["test_photos"]]
    n_crop = n_rain = 0
    n_test = 0
    for split, name in tqdm(jobs, desc="demo data", unit="photo", disable=not progress):
        if split == "train":
            for k, (clean, depth) in enumerate(make_train_crops(name, side)):
                n_crop += 1
                written += emit(f"Train/Denoise/{name}_{k}.png", clean, name, split)
                for v in range(params["rain_variants_train"]):
                    n_rain += 1
                    rainy = add_rain(clean, image_rng(seed, _TAG_RAIN, n_crop, v), scale)
                    written += emit(f"Train/Derain/rainy/rain-{n_rain}.png", rainy, name, split)
                    written += emit(f"Train/Derain/gt/norain-{n_rain}.png", clean, name, split)
                image_id = f"{n_crop:04d}"
                written += emit(f"Train/Dehaze/original/{image_id}.png", clean, name, split)
                for a, b in haze_pairs(image_rng(seed, _TAG_HAZE, n_crop), params["haze_variants_train"]):
                    written += emit(f"Train/Dehaze/synthetic/part1/{haze_name(image_id, a, b)}",
                                    add_haze(clean, depth, a, b), name, split)
            continue
        n_test += 1
        clean, depth = make_test_image(name, short, long_max)
        views, (a, b) = degraded_test_views(clean, depth, seed, n_test, scale)
        image_id = f"{n_test:04d}"
        pairs = [
            (f"test/derain/demo/input/rain-{n_test}.png", f"test/derain/demo/target/norain-{n_test}.png",
             views["rain"]),
            (f"test/jpeg/input/{name}.png", f"test/jpeg/target/{name}.png", views["jpeg q10"]),
            (f"test/lowlight/low/{name}.png", f"test/lowlight/high/{name}.png", views["low light"]),
            (f"test/deblur/input/{name}.png", f"test/deblur/target/{name}.png", views["blur"]),
            (f"test/dehaze/input/{haze_name(image_id, a, b)}", f"test/dehaze/target/{image_id}.png", views["haze"]),
        ]
        written += emit(f"test/denoise/demo/{name}.png", clean, name, split)
        for rel_in, rel_gt, degraded in pairs:
            written += emit(rel_in, degraded, name, split)
            written += emit(rel_gt, clean, name, split)
    return files, written


def check_build_args(seed: int, scale: float, max_photos: int | None) -> None:
    """Raise :class:`DemoDataError` naming the flag (``--seed``, ``--scale``, ``--max-photos``) whose value
    :func:`build_demo_data` cannot build with; returns nothing."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"--seed must be a non-negative integer, got {seed!r}")
    if not (0.05 <= float(scale) <= 4.0):
        raise DemoDataError(f"--scale must lie in [0.05, 4], got {scale!r} (e.g. 0.2 for a tiny build, 1.0 for "
                            f"the default)")
    if max_photos is not None and (not isinstance(max_photos, int) or max_photos < 1):
        raise DemoDataError(f"--max-photos must be an integer >= 1 (or left out for all), got {max_photos!r}")


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
    check_build_args(seed, scale, max_photos)
    root = Path(root)
    check_root(root)
    params = requested_params(seed, scale, max_photos)
    check_no_foreign_images(root)
    reason = "forced" if force else stale_reason(root, params)
    if reason is None:
        return {**read_manifest(root), "status": "up to date"}
    root.mkdir(parents=True, exist_ok=True)
    earlier = set((read_manifest(root) or {}).get("files", {})) | interrupted_files(root)
    with open(root / BUILDING_MARK, "a", buffering=1) as mark:  # an interrupted build is still known as the demo's
        files, written = build_files(root, mark, params, force, progress)  # own (its list kept)
    remove_leftovers(root, files, earlier)
    manifest = {
        "version": VERSION, "seed": params["seed"], "scale": params["scale"], "params": params,
        "sources": {"train": params["train_photos"], "test": params["test_photos"]},
        "counts": folder_counts(files), "files": dict(sorted(files.items())),
        "content_hash": content_hash(files),
    }
    write_if_changed(root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode(), force=True)
    (root / BUILDING_MARK).unlink(missing_ok=True)
    return {**manifest, "status": f"built ({reason}; {counted(written, 'file')} written)"}


def main(argv: list[str] | None = None) -> int:
    """``python -m utils.demo.data``: build (or confirm) the demo data; a failure is one ``error:`` line."""
    p = OneLineArgumentParser(prog="python -m utils.demo.data",
                              description="Build the embedded demo data set (docs/METHOD.md §3-4 layout).")
    p.add_argument("--root", default=DEFAULT_ROOT, help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradations (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="image size factor, 0.05 to 4 (default: %(default)s)")
    p.add_argument("--max-photos", type=int, default=None, help="keep only the first N train and test photos")
    p.add_argument("--force", action="store_true", help="rebuild and rewrite every file")
    add_debug_flag(p)
    args = p.parse_args(argv)
    return run_main(_build_and_report, args, debug=args.debug)


def _build_and_report(args: argparse.Namespace) -> int:
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
