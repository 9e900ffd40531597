"""``python -m utils.analysis``: the demo's two embedding figures for any WB checkpoint, on your own photos.

    python -m utils.analysis --model checkpoint/BaryNet_paper_3D_p128 --photos my_photos/ [--photo NAME]

Each clean photo gets the views the demo's figures show (:func:`utils.demo.data.embedding_views`: the tester's
seeded noise at 15, 25 and 50, and the demo's synthetic haze, rain, JPEG quality 10 and low light); the network's
WB and residual latents of every view give the takeaway maps of one photo and the PCA projection of all, drawn and
measured by :mod:`utils.analysis.report` as the demo draws them, every figure rendered before any file is written
(a stop leaves ``--figs-dir`` as it was). Without ``--photos``: the demo's five test photos, made in memory from
the installed wheels as the demo builds them (the same views, the same numbers as the demo's for the same
checkpoint).

A photo's long side is capped at ``--max-side`` (default 288, the demo's test images', so that its photos are
unchanged) by area resizing, then cropped to multiples of 8: the network runs on 7 views of each photo, about a
minute a photo for the paper's network on 2 busy CPU cores (15 s at 144), a second for the tiny preset. At most 10
photos are drawn (the projection tells 10 apart by marker shape: the first by name, and ``--photo`` wherever it
comes), and at least 2 (its 1-NN scores compare
photos). Outputs: ``takeaway_maps.png``, ``embedding_projection.png`` and ``embeddings.json`` in ``--figs-dir``; a
file of the user's at one of those names is moved aside (:mod:`utils.owned_outputs`), never replaced; the folder is
held (:mod:`utils.output_lock`), a second analysis into it refused while the first runs. Every failure
the user fixes is one ``error:`` line.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from net.presets import WB_BACKBONES
from utils.analysis.report import measured_views, rendered_report
from utils.checkpoints import (
    CheckpointError,
    load_model,
    model_or_default,
    model_state_from,
    normalise_state_dict,
    read_checkpoint,
    resolve_checkpoint,
)
from utils.checkpoints.identify import identify
from utils.cli import add_network_size_flags, at_least, network_size_overrides, one_spelling
from utils.data.image_files import IMAGE_EXTENSIONS, list_images, nested_images_hint
from utils.data.image_io import read_image
from utils.demo.data import TEST_LONG_MAX, TEST_SHORT, embedding_views, make_test_image
from utils.demo.degrade import depth_proxy
from utils.demo.photos import TEST_PHOTOS, resize
from utils.errors import OneLineArgumentParser, UsageError, UserError, add_debug_flag, counted, listing, run_main
from utils.eval.options import add_checkpoint_flags, non_empty_path
from utils.eval.outputs import check_writable_folder
from utils.eval.protocol import SIZE_MULTIPLE, crop_to_multiple, to_8bit
from utils.files import json_text, replace_file, write_text
from utils.output_lock import OutputLock
from utils.owned_outputs import folders_in_the_way, keep_aside_foreign_outputs, recording_outputs
from utils.runtime import DEVICE_HELP, DEVICES, pick_device, tune_cpu_allocator

DEFAULT_FIGS_DIR = "results/analysis"  # under results/, which git ignores
FIGURES = ("takeaway_maps.png", "embedding_projection.png")
NUMBERS = "embeddings.json"
OUTPUTS_RECORD = ".analysis-outputs.json"  # what this command wrote in --figs-dir (utils.owned_outputs)
MAX_SIDE = TEST_LONG_MAX  # the demo's test images' long side
MIN_SIDE = 32  # a 4 x 4 latent: the smallest the maps mean anything at
# --max-side's least: a photo twice as long as high keeps MIN_SIDE on its short side (below 42 a 4:3 photo came out
# too small, below 56 a 16:9 one; 32 was taken)
LEAST_MAX_SIDE = 2 * MIN_SIDE
MAX_PHOTOS = 10  # the projection tells photos apart by marker shape, and has 10
WHO = "python -m utils.analysis"


class AnalysisError(UserError):
    """A photo or folder the analysis cannot use; the message names it and the fix."""


@dataclass
class Photo:
    """One clean photo as the views are made of it: ``name`` (its label in the figures), ``file`` (the name its
    test noise is seeded by), ``image`` uint8 ``(H, W, 3)`` (sides multiples of 8), ``depth`` for haze, and the
    size it was read at."""
    name: str
    file: str
    image: np.ndarray
    depth: np.ndarray
    read_size: tuple[int, int]


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=f"{WHO}", description="The WB / residual embedding figures of a BaryNet or "
                              "BaryPromptIR checkpoint on your own clean photos (or the demo's)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_flags(p)  # --model, --backbone, --preset: as the tester takes them
    add_network_size_flags(p, " (for checkpoints that do not carry their configuration)")
    p.add_argument("--photos", type=non_empty_path, default=None,
                   help="folder of clean photos, at least two (its images, not its subfolders; the first 10 by "
                        "name, --photo among them); default: "
                        "the demo's test photos (chelsea, camera, coffee, grace_hopper, coins), made from the "
                        "installed wheels as the demo makes them")
    p.add_argument("--photo", default=None,
                   help="the photo of the takeaway maps, by name (with or without its extension) or by its path; "
                        "default the first")
    p.add_argument("--figs-dir", type=non_empty_path, default=DEFAULT_FIGS_DIR,
                   help="where the two figures and embeddings.json go (a file of yours at their names is moved "
                        "aside)")
    p.add_argument("--max-side", type=at_least(LEAST_MAX_SIDE), default=MAX_SIDE,
                   help=f"a photo's long side is resized down to at most this (area filter) before its views are "
                        f"made; at least {LEAST_MAX_SIDE}, where a photo up to twice as long as high keeps the "
                        f"{MIN_SIDE} pixels the network needs on its short side; the time goes with the pixels (the "
                        f"paper's network: about a minute a photo at 288 on 2 CPU cores, 15 s at 144)")
    p.add_argument("--seed", type=at_least(0), default=0,
                   help="seed of the synthetic rain, haze and low light (the demo data's --seed); the noise is the "
                        "tester's, seeded by each photo's file name")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_debug_flag(p)
    return one_spelling(p)


# --------------------------------------------------------------------------- photos

def _capped_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """An ``h`` x ``w`` photo's size once its long side is resized down to at most ``max_side``."""
    if max(h, w) <= max_side:
        return h, w
    f = max_side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def fitted_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """The ``(H, W)`` :func:`fitted` makes of an ``h`` x ``w`` photo with ``max_side``."""
    h, w = _capped_size(h, w, max_side)
    return h - h % SIZE_MULTIPLE, w - w % SIZE_MULTIPLE


def fitted(img: np.ndarray, max_side: int, where: str) -> np.ndarray:
    """``img`` with its long side resized down to ``max_side`` (area filter), cropped to multiples of 8 (bottom
    rows, right columns); an :class:`AnalysisError` naming ``where`` when it is then under :data:`MIN_SIDE` on a
    side: with the smallest ``--max-side`` that keeps it large enough when the cap made it too small, else asking
    for a larger photo."""
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        img = resize(img, *_capped_size(h, w, max_side))
    img = np.ascontiguousarray(crop_to_multiple(img))
    if min(img.shape[:2]) < MIN_SIDE:
        said = f"{where} is too small: {img.shape[1]}x{img.shape[0]} pixels"
        if min(fitted_size(h, w, max(h, w))) >= MIN_SIDE:  # whole, it is large enough: the cap made it too small
            least = next(m for m in range(max_side + 1, max(h, w) + 1) if min(fitted_size(h, w, m)) >= MIN_SIDE)
            raise AnalysisError(f"{said} after its long side is resized to {max_side} (it is {w}x{h}); the network "
                                f"needs at least {MIN_SIDE} on each side — pass --max-side {least} or more (the "
                                f"least that keeps this photo large enough)")
        raise AnalysisError(f"{said} (it is {w}x{h}); the network needs at least {MIN_SIDE} on each side — use a "
                            f"larger photo (remove this one from --photos)")
    return img


def demo_photos(max_side: int) -> list[Photo]:
    """The demo's test photos, made as its data builds them at scale 1 (short side 224, long side at most 288),
    then fitted to ``max_side``."""
    photos = []
    for name in TEST_PHOTOS:
        image, depth = make_test_image(name, TEST_SHORT, TEST_LONG_MAX)
        small = fitted(image, max_side, f"the demo's photo {name}")
        depth = depth if small.shape == image.shape else depth_proxy(small)
        photos.append(Photo(name, f"{name}.png", small, depth, image.shape[:2]))
    return photos


def photo_files(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted by name (:func:`utils.data.image_files.list_images`); a
    :class:`UsageError` naming the folder when it is missing, a file, or holds none."""
    if not folder.exists():
        raise UsageError(f"--photos {folder}: no such folder — pass the folder that holds your clean photos, or "
                         f"leave --photos out for the demo's test photos")
    if not folder.is_dir():
        raise UsageError(f"--photos {folder}: a file, not a folder — pass the folder that holds it")
    files = list_images(folder)
    if not files:
        hint = nested_images_hint(folder, "photos")
        raise UsageError(f"--photos {folder} holds no photos ({', '.join(IMAGE_EXTENSIONS)})"
                         + (f": {hint}" if hint else " — put your clean photos in it, or pass another folder"))
    return files


def first_photos(files: list[Path], keep: Path | None) -> list[Path]:
    """The first :data:`MAX_PHOTOS` of ``files`` (sorted by name), with ``keep`` (the ``--photo``'s file) among them:
    in place of the last when it comes later."""
    first = files[:MAX_PHOTOS]
    return first if keep is None or keep in first else first[:-1] + [keep]


def labels_of(files: list[Path]) -> list[str]:
    """Each file's label in the figures: its name without the extension, or with it where two share a stem."""
    stems = [f.stem for f in files]
    return [f.stem if stems.count(f.stem) == 1 else f.name for f in files]


def read_photo(path: Path, name: str, max_side: int) -> Photo:
    """``path`` read upright (its EXIF orientation, as the tester's ``--input``) at 8 bits and :func:`fitted`;
    unreadable, the reader's own error names the file."""
    img = to_8bit(read_image(path, exif=True))
    small = fitted(img, max_side, str(path))
    return Photo(name, path.name, small, depth_proxy(small), img.shape[:2])


def photo_views(photo: Photo, number: int, seed: int) -> dict[str, np.ndarray]:
    """The demo's views of ``photo``, the ``number``-th (from 1): the demo data's rain streaks scaled to its short
    side as on the demo's test images (224 pixels at scale 1)."""
    return embedding_views(photo.image, photo.depth, photo.file, number, seed, min(photo.image.shape[:2]) / TEST_SHORT)


def photo_by_path(asked: str | None, files: list[Path]) -> str | None:
    """``--photo`` as given, or the file name of the photo of ``files`` it is a path to (``--photo my_photos/cat.jpg``,
    as a shell completes it, for ``cat.jpg`` in ``--photos my_photos``)."""
    if asked is None or Path(asked).name == asked or not Path(asked).is_file():
        return asked
    return next((f.name for f in files if f.resolve() == Path(asked).resolve()), asked)


def chosen_photo(names: list[str], files: list[str], asked: str | None) -> str | None:
    """The label ``--photo`` names (a label or a file name), None without it; a :class:`UsageError` listing the
    photos when it names none, or the photos it matches when it is the stem of several (``a`` of a.png and a.jpg)."""
    if asked is None:
        return None
    for name, file in zip(names, files):
        if asked in (name, file):
            return name
    same = [file for file in files if Path(file).stem == asked]  # a.png and a.jpg: labelled by their file names
    if len(same) > 1:
        raise UsageError(f"--photo {asked}: the name matches {counted(len(same), 'photo')} ({', '.join(same)}) — "
                         f"pass the full file name, e.g. --photo {same[0]}")
    raise UsageError(f"--photo {asked}: none of the photos is called that; pass one of{listing(names, sep=', ')}")


# --------------------------------------------------------------------------- the run

def model_path(model: str | None) -> str:
    """``--model``, else the tester's default (the authors' checkpoint, else the newest under ``checkpoint/``)."""
    return model_or_default(model, "train a BaryNet or BaryPromptIR one (make demo trains one)")


def weights_backbone(path: str) -> str | None:
    """The backbone whose weights the checkpoint ``path`` (a file, a run's folder or its ``latest``) holds when they
    are exactly one of the project's networks (:func:`utils.checkpoints.identify.identify`), else None (unreadable
    too)."""
    try:
        obj = read_checkpoint(resolve_checkpoint(path)[0])
        found = identify(normalise_state_dict(model_state_from(obj, str(path))))
    except UserError:
        return None
    return found[0] if found is not None else None


def summary_lines(emb: dict) -> list[str]:
    """What the figures measured, as printed."""
    return [f"takeaway maps of {emb['photo']}: mean relative distance from its {emb['reference']} view "
            f"{emb['mean_wb_difference']:.3f} (WB) vs {emb['mean_residual_difference']:.3f} (residual); "
            f"mean cosine(WB, residual) over every view {emb['mean_cosine_wb_residual']:+.3f}",
            f"degradation read from the nearest other view (1-NN, leave one out): WB {emb['wb_degradation_1nn']:.0%}, "
            f"residual {emb['residual_degradation_1nn']:.0%} (chance {emb['degradation_1nn_chance']:.0%}); "
            f"photo: WB {emb['wb_photo_1nn']:.0%}, residual {emb['residual_photo_1nn']:.0%} "
            f"(chance {emb['photo_1nn_chance']:.0%})"]


def main(args) -> dict:
    """The figures and numbers ``args`` ask for; returns what was written to ``embeddings.json``."""
    t0 = time.time()
    device = pick_device(args.device)  # a --device this machine lacks fails before anything is read
    if args.backbone is not None and args.backbone not in WB_BACKBONES:  # refused once its checkpoint was loaded
        raise UsageError(f"--backbone {args.backbone}: a {args.backbone} has no WB / residual split of its latent to "
                         f"draw — pass a {' or '.join(sorted(WB_BACKBONES))} checkpoint")
    figs_dir = Path(args.figs_dir)
    files = photo_files(Path(args.photos)) if args.photos is not None else None
    if files is not None and figs_dir.resolve() == Path(args.photos).resolve():  # (its subfolders are not read)
        raise UsageError(f"--figs-dir {figs_dir} is the --photos folder: the figures would be read as photos the "
                         f"next time — choose another --figs-dir (a subfolder of it will do)")
    check_writable_folder(figs_dir, "--figs-dir", create=False)
    planned = [figs_dir / n for n in (*FIGURES, NUMBERS)]
    # a folder at one of those names was met at its write, after the network had run on every view
    for path in folders_in_the_way(planned)[:1]:
        raise UsageError(f"{path}: a folder is where {WHO} writes its file {path.name} — move or rename that "
                         f"folder, or choose another --figs-dir")
    if files is not None:
        args.photo = photo_by_path(args.photo, files)
        if len(files) > MAX_PHOTOS:
            names = labels_of(files)
            chosen = chosen_photo(names, [f.name for f in files], args.photo)  # looked for among all of them
            keep = files[names.index(chosen)] if chosen is not None else None
            drawn = first_photos(files, keep)
            extra = f", and --photo {keep.name}" if keep is not None and keep not in files[:MAX_PHOTOS] else ""
            first = len(drawn) - (1 if extra else 0)
            print(f"=> --photos {args.photos} holds {len(files)} photos: using the first {first} by name (the "
                  f"projection tells {MAX_PHOTOS} apart), {drawn[0].name} to {drawn[first - 1].name}{extra}")
            files = drawn
        if len(files) < 2:  # one photo's 1-NN scores meant nothing: "degradation 0% (chance 0%), photo 100%"
            raise UsageError(f"--photos {args.photos} holds one photo ({files[0].name}): the projection's 1-NN scores "
                             f"compare views across photos and need at least two — put another clean photo in it, or "
                             f"leave --photos out for the demo's {len(TEST_PHOTOS)} test photos")
        names = labels_of(files)
        chosen = chosen_photo(names, [f.name for f in files], args.photo)
    else:
        names, chosen = None, chosen_photo(list(TEST_PHOTOS), [f"{n}.png" for n in TEST_PHOTOS], args.photo)
    # one analysis at a time in --figs-dir: two at once (two checkpoints in two terminals, the default --figs-dir)
    # both said they wrote the figures, and the folder held one's takeaway maps beside the other's projection
    with OutputLock(figs_dir, flag="--figs-dir", role="analysis", fix="choose another --figs-dir"):
        return analyse(args, device, planned, files, names, chosen, t0)


def analyse(args, device, planned: list[Path], files: list[Path] | None, names: list[str] | None,
            chosen: str | None, t0: float) -> dict:
    """:func:`main`'s work once its flags are checked and ``--figs-dir`` is held: the model, the photos
    (``files`` labelled ``names``, or the demo's), their views, the figures and numbers at ``planned``; returns
    the numbers. ``t0``: when the command started."""
    figs_dir = Path(args.figs_dir)
    path = model_path(args.model)
    try:
        model, info = load_model(path, args.backbone, args.preset, **network_size_overrides(args))
    except CheckpointError:
        other = weights_backbone(path)  # the loader's fix, "pass --backbone Restormer", would be refused next
        if other is None or other in WB_BACKBONES:
            raise
        raise UsageError(f"--model {path} holds the weights of a {other}, which has no WB / residual split of its "
                         f"latent to draw — pass a {' or '.join(sorted(WB_BACKBONES))} checkpoint") from None
    if info["backbone"] not in WB_BACKBONES:
        raise UsageError(f"--model {info['model']} is a {info['backbone']}, which has no WB / residual split of its "
                         f"latent to draw — pass a {' or '.join(sorted(WB_BACKBONES))} checkpoint")
    model.to(device).eval()
    print(f"=> model {info['model']} ({info['backbone']}, configuration from the {info['config_from']})"
          + (f"; {info['note']}" if info.get("note") else ""))

    if files is None:
        photos = demo_photos(args.max_side)
        source = "the demo's test photos"
    else:
        photos = [read_photo(f, n, args.max_side) for f, n in zip(files, names)]
        source = str(args.photos)
    resized = [p.name for p in photos if max(p.read_size) > args.max_side]
    views = {p.name: photo_views(p, k, args.seed) for k, p in enumerate(photos, start=1)}
    kinds = list(next(iter(views.values())))
    print(f"=> {counted(len(photos), 'photo')} from {source}" + (f" ({len(resized)} resized to {args.max_side} "
          f"pixels on the long side)" if resized else "") + f"; {len(kinds)} views of each: {', '.join(kinds)}")

    # the network and the drawing first, the writing after: a stop while they run (minutes for the paper's
    # network) left a user's files moved aside and an empty record in a new --figs-dir, a stop between two
    # figures' writes a new takeaway figure beside the earlier run's projection and numbers
    measured = measured_views(model, views, device, takeaway_photo=chosen, progress=True)
    said = f"{info['backbone']} checkpoint {info['model']}, on {source if files is None else f'the photos in {source}'}"
    pngs, emb = rendered_report(measured, source=said)
    numbers = {"model": info["model"], "backbone": info["backbone"], "photos_from": source, "seed": args.seed,
               "max_side": args.max_side,
               "photos": [{"name": p.name, "file": p.file, "read_size": list(p.read_size),
                           "size": list(p.image.shape[:2])} for p in photos],
               "views": kinds, "takeaway": str(planned[0]), "projection": str(planned[1]), **emb}
    record = figs_dir / OUTPUTS_RECORD
    keep_aside_foreign_outputs(planned, record, [(figs_dir, "figures")], WHO)
    with recording_outputs(planned, record):  # a stopped run's files stay the analysis's own
        figs_dir.mkdir(parents=True, exist_ok=True)
        for path, png in zip(planned, pngs):
            replace_file(path, png)
        write_text(planned[2], json_text(numbers))
    for line in summary_lines(emb):
        print(line)
    print(f"figures in {figs_dir}/: {FIGURES[0]}, {FIGURES[1]}; the numbers in {NUMBERS} "
          f"({time.time() - t0:.0f} s)")
    return numbers


def cli(argv: list[str] | None = None) -> int:
    """``python -m utils.analysis``: its exit status; a failure the user can act on is one ``error:`` line
    (:func:`utils.errors.run_main`), its traceback only with ``--debug``."""
    tune_cpu_allocator()  # as the other scripts do
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, debug=args.debug)

