"""The evaluation engine: which images a task means, how they are restored and scored, and
the tables and result files.

``tester_bary.py`` is a thin command line over this module; the demo and study scripts call
:func:`evaluate_tasks` (or :func:`find_task_sets` + :func:`evaluate_sets`) directly.

Tasks (docs/METHOD.md §4 layout under a benchmark root, see :data:`PAIRED_TASKS`):

- ``denoise_<sigma>`` for any integer sigma: every subfolder of ``denoise/`` holding images is
  a set of clean images (``bsd68``, ``kodak24``, ...); the noisy inputs are synthesised with
  seeds from (file name, sigma) (:mod:`utils.noise`), rows ``denoise_25/bsd68``;
- ``derain``, ``dehaze``, ``deblur``, ``lowlight`` and any other NAME: ``NAME/{input,target}``
  (``lowlight/{low,high}``), or one level deeper, ``NAME/<set>/{input,target}``, one row per set
  (``derain/Rain100L``).

Protocols (:class:`Protocol`):

- ``reference``: crop degraded and target to multiples of 8 by dropping bottom rows and right
  columns, restore, quantise output and target to 8 bits (clamp to [0, 1], x255, +0.5, truncate:
  ``torchvision.utils.save_image``'s rule, ties round up), score;
- ``pad``: reflect-pad the input to multiples of 8, restore, crop back; every pixel is scored.

Benchmark images (pairs and the clean images of denoising sets) are read as the reference reads
them, ignoring any EXIF orientation tag, in every protocol; only ``--input`` photos
(:func:`restore_files`) are turned upright by their tag (:mod:`utils.image_io`).

Metrics are always computed on 8-bit images: 16-bit targets are rounded to 8 bits for scoring,
while the saved restorations of 16-bit inputs stay 16-bit.

Outputs are named by :func:`utils.eval.outputs.output_names`: ``NAME.png`` for an input ``NAME.EXT``;
inputs of one set sharing a name (``a.png``, ``a.jpg``) give ``a.png`` and ``a_jpg.png``.

A file that cannot be read (corrupt, too large, too small) stops the evaluation with
:class:`EvaluationStopped`, which carries the results so far marked ``partial``; with
``skip_bad_files`` it is left out instead, counted in the row's ``skipped`` and listed with why.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from net.presets import BACKBONES, model_config
from utils.checkpoints import CheckpointError, load_network, read_checkpoint
from utils.data.image_io import (
    ImageReadError,
    image_size,
    is_image,
    list_images,
    quantise,
    read_image,
    replace_file,
    to_float,
    write_image,
)
from utils.data.noise import SEED_RULE, noisy_version
from utils.data.pairing import PairingError, match_pairs
from utils.errors import UserError, listing
from utils.eval.inference import (
    PRECISIONS,
    check_tiling,
    is_out_of_memory,
    prepare_for_inference,
    restore,
    restore_tiled,
)
from utils.eval.metrics import FID, LPIPS, METRIC_SPACES, SSIM_KINDS, image_metrics
from utils.eval.outputs import output_names, write_text

PROTOCOLS = ("reference", "pad")
SIZE_MULTIPLE = 8
PAPER_TASKS = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze", "deblur", "lowlight")
_PROTOCOL_TEXT = {
    "reference": "crop degraded and target to multiples of 8 (bottom rows and right columns dropped), restore, "
                 "quantise output and target to 8 bits (clamp [0,1], x255, +0.5, truncate: round half up as "
                 "torchvision save_image); EXIF orientation ignored",
    "pad": "reflect-pad the input to multiples of 8, restore, crop back to the full size, quantise output and "
           "target to 8 bits (clamp [0,1], x255, +0.5, truncate: round half up as torchvision save_image); "
           "EXIF orientation ignored; every pixel is scored",
}
_SSIM_TEXT = {"skimage": "scikit-image default (7x7 uniform window, per channel, data range 255)",
              "gaussian": "BasicSR/MATLAB (11x11 Gaussian window sigma 1.5, valid region, per channel, data range 255)"}
_SPACE_TEXT = {"rgb": "8-bit RGB", "y": "BT.601 Y with offset, 16 + (65.481 R + 128.553 G + 24.966 B)/255"}


# --------------------------------------------------------------------------- task registry

@dataclass(frozen=True)
class PairedLayout:
    """A task whose degraded and target images are both on disk: ``<root>/<folder>/{degraded,target}``."""
    folder: str
    degraded: str = "input"
    target: str = "target"


@dataclass(frozen=True)
class DenoiseLayout:
    """A task whose inputs are synthesised from clean images: ``<root>/<folder>/<set>/*``."""
    sigma: int
    folder: str = "denoise"


# The paper's tasks. Any other ``denoise_<sigma>`` is a DenoiseLayout and any other name a
# PairedLayout(name) (see task_layout), so new benchmarks need no code.
PAIRED_TASKS: dict[str, PairedLayout] = {
    "derain": PairedLayout("derain"),
    "dehaze": PairedLayout("dehaze"),
    "deblur": PairedLayout("deblur"),
    "lowlight": PairedLayout("lowlight", "low", "high"),
}
_DENOISE = re.compile(r"^denoise_(\d+)$")
# The paper's set names inside a task folder, for messages that say where to put the data.
EXAMPLE_SETS = {"denoise": "bsd68", "derain": "Rain100L"}


def task_layout(task: str) -> PairedLayout | DenoiseLayout:
    """How to find the images of ``task`` under a benchmark root."""
    m = _DENOISE.match(task)
    if m:
        return DenoiseLayout(int(m.group(1)))
    if task in PAIRED_TASKS:
        return PAIRED_TASKS[task]
    if not re.match(r"^[A-Za-z0-9][\w.-]*$", task):
        raise ValueError(f"--tasks: {task!r} is not a task name (e.g. denoise_25, derain, dehaze, deblur, lowlight, "
                         f"or a folder name under --data-root)")
    return PairedLayout(task)


def present_paper_tasks(data_root: str | Path) -> list[str]:
    """The paper tasks (:data:`PAPER_TASKS` order) whose folder exists under ``data_root``."""
    root = Path(data_root)
    return [t for t in PAPER_TASKS if (root / task_layout(t).folder).is_dir()]


def paper_layout(data_root: str | Path) -> list[str]:
    """Where the paper tasks' images go under ``data_root``, one entry per task folder (for messages).

    E.g. ``data/test/denoise/bsd68 (clean images)``, ``data/test/derain/Rain100L/{input,target}``,
    ``data/test/lowlight/{low,high}``.
    """
    entries: list[str] = []
    for task in PAPER_TASKS:
        layout = task_layout(task)
        base = (Path(data_root) / layout.folder).as_posix()
        example = EXAMPLE_SETS.get(layout.folder)
        if isinstance(layout, DenoiseLayout):
            entry = f"{base}/{example or '<set>'} (clean images)"
        else:
            entry = f"{base}/{example + '/' if example else ''}{{{layout.degraded},{layout.target}}}"
        if entry not in entries:
            entries.append(entry)
    return entries


@dataclass
class EvalItem:
    """One image to restore and score. ``degraded`` is None when it is synthesised (``sigma``)."""
    name: str
    target: Path
    degraded: Path | None = None
    sigma: int | None = None


@dataclass
class EvalSet:
    """One row of the table: a named list of items, and what was left out: ``skipped`` (``--skip-unpaired``,
    ``"NAME (why)"``) and ``bad_files`` (``--skip-bad-files``, ``{"name", "error"}``: unreadable when paired)."""
    name: str
    task: str
    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)
    bad_files: list[dict[str, str]] = field(default_factory=list)


def _validate_sizes(pairs: Sequence[tuple[Path, Path]], skip: bool, where: str,
                    skip_bad: bool = False) -> tuple[list, list[str], list[dict[str, str]]]:
    """Keep pairs whose degraded and target sizes agree; mismatches are an error unless ``skip``.
    A file whose size cannot be read is an :class:`ImageReadError` unless ``skip_bad`` (then listed)."""
    good, bad, unreadable = [], [], []
    for deg, tar in pairs:
        try:
            sd, st = image_size(deg), image_size(tar)
        except ImageReadError as exc:
            if not skip_bad:
                raise
            unreadable.append({"name": deg.name, "error": str(exc)})
            continue
        if sd == st:
            good.append((deg, tar))
        else:
            bad.append(f"{deg.name} {sd[0]}x{sd[1]} vs target {tar.name} {st[0]}x{st[1]}")
    if bad and not skip:
        shown = listing(bad, lead="")
        raise PairingError(f"{len(bad)} pair(s) in {where} differ in size (height x width):\n    {shown}\n"
                           f"Fix or remove them, or pass --skip-unpaired to leave them out.")
    return good, [f"{b} (size mismatch)" for b in bad], unreadable


def paired_set(name: str, degraded_dir: str | Path, target_dir: str | Path, task: str | None = None,
               skip_unpaired: bool = False, skip_bad_files: bool = False) -> EvalSet:
    """An :class:`EvalSet` of the images of ``degraded_dir`` matched by name with ``target_dir``.

    Unpaired files and size mismatches raise :class:`PairingError` listing them, or are left
    out and listed in ``skipped`` when ``skip_unpaired``. A file whose header cannot be read
    raises :class:`ImageReadError`, or is left out into ``bad_files`` when ``skip_bad_files``.
    """
    pairs, unpaired = match_pairs(degraded_dir, target_dir, skip_unpaired=skip_unpaired)
    pairs, mismatched, unreadable = _validate_sizes(pairs, skip_unpaired, f"{degraded_dir} / {target_dir}",
                                                    skip_bad_files)
    items = [EvalItem(name=d.name, target=t, degraded=d) for d, t in pairs]
    skipped = [f"{p.name} (no target)" for p in unpaired] + mismatched
    if not items:
        left_out = skipped + [f"{b['name']} (unreadable)" for b in unreadable]
        raise PairingError(f"nothing left to evaluate in {degraded_dir}: every image was skipped "
                           f"({len(left_out)}: {', '.join(left_out[:5])})")
    return EvalSet(name=name, task=task or name, items=items, skipped=skipped, bad_files=unreadable)


def _paired_sets(task: str, layout: PairedLayout, root: Path, skip: bool, skip_bad: bool = False) -> list[EvalSet]:
    base = root / layout.folder
    if (base / layout.degraded).is_dir() or (base / layout.target).is_dir():
        return [paired_set(task, base / layout.degraded, base / layout.target, task, skip, skip_bad)]
    subsets = sorted(d for d in base.iterdir() if d.is_dir() and (d / layout.degraded).is_dir()) \
        if base.is_dir() else []
    if not subsets:
        raise PairingError(f"task {task!r}: expected {base / layout.degraded} and {base / layout.target}, or "
                           f"{base}/<set>/{{{layout.degraded},{layout.target}}}; found neither. Check --data-root "
                           f"({root}) and the layout in docs/METHOD.md §4.")
    return [paired_set(f"{task}/{d.name}", d / layout.degraded, d / layout.target, task, skip, skip_bad)
            for d in subsets]


def _denoise_sets(task: str, layout: DenoiseLayout, root: Path) -> list[EvalSet]:
    base = root / layout.folder
    if not base.is_dir():
        raise PairingError(f"task {task!r}: clean images expected in {base}/<set>/ (e.g. bsd68, kodak24); "
                           f"the folder does not exist. Check --data-root ({root}).")
    folders = [d for d in sorted(base.iterdir()) if d.is_dir()]
    if list_images(base):  # clean images directly in denoise/: one unnamed set
        folders = [base] + folders
    sets = []
    for d in folders:
        images = list_images(d)
        if not images:
            continue
        name = task if d == base else f"{task}/{d.name}"
        sets.append(EvalSet(name=name, task=task,
                            items=[EvalItem(name=p.name, target=p, sigma=layout.sigma) for p in images]))
    if not sets:
        raise PairingError(f"task {task!r}: no clean images in {base} or its subfolders")
    return sets


def find_task_sets(tasks: Iterable[str], data_root: str | Path, skip_unpaired: bool = False,
                   skip_bad_files: bool = False) -> list[EvalSet]:
    """The sets (table rows) of ``tasks`` under ``data_root``; ``"all"`` means every paper task present.
    ``skip_unpaired``, ``skip_bad_files``: as in :func:`paired_set`."""
    root = Path(data_root)
    if not root.is_dir():
        raise PairingError(f"--data-root {root} does not exist (it should hold denoise/, derain/, dehaze/, ...)")
    expanded: list[str] = []
    for task in tasks:
        if task == "all":  # in place, so `--tasks all denoise_75` keeps the paper's order first
            present = present_paper_tasks(root)
            if not present:
                raise PairingError(f"--tasks all: none of {', '.join(PAPER_TASKS)} is under {root}")
            expanded += present
        else:
            expanded.append(task)
    sets: list[EvalSet] = []
    for task in dict.fromkeys(expanded):  # de-duplicated, order kept
        layout = task_layout(task)
        if isinstance(layout, DenoiseLayout):
            sets += _denoise_sets(task, layout, root)
        else:
            sets += _paired_sets(task, layout, root, skip_unpaired, skip_bad_files)
    return sets


# --------------------------------------------------------------------------- protocol

@dataclass
class Protocol:
    """How images are prepared, restored and scored (printed with the table and saved with the results)."""
    protocol: str = "reference"
    metric_space: str = "rgb"
    ssim: str = "skimage"
    crop_border: int = 0
    precision: str = "fp32"
    tile: int | None = None
    tile_overlap: int = 32
    tile_batch: int = 4
    lpips: bool = False
    lpips_net: str = "alex"
    fid: bool = False
    noise_seed: int = 0

    def validate(self) -> "Protocol":
        for value, allowed, flag in ((self.protocol, PROTOCOLS, "--protocol"), (self.metric_space, METRIC_SPACES,
                                     "--metric-space"), (self.ssim, SSIM_KINDS, "--ssim"),
                                     (self.precision, PRECISIONS, "--precision")):
            if value not in allowed:
                raise ValueError(f"{flag} must be one of {allowed}, got {value!r}")
        if self.crop_border < 0:
            raise ValueError(f"--crop-border must be >= 0, got {self.crop_border}")
        if self.tile is not None:
            check_tiling(self.tile, self.tile_overlap, SIZE_MULTIPLE)
        return self

    def describe(self) -> dict[str, Any]:
        """The protocol as written to results.json (values plus what they mean)."""
        d = asdict(self)
        d["protocol_rule"] = _PROTOCOL_TEXT[self.protocol]
        d["metric_space_rule"] = _SPACE_TEXT[self.metric_space]
        d["ssim_rule"] = _SSIM_TEXT[self.ssim]
        d["bit_depth"] = ("metrics on 8-bit images: outputs and 16-bit targets are rounded to 8 bits for "
                          "scoring; saved restorations of 16-bit inputs are 16-bit PNGs")
        d["noise"] = SEED_RULE.replace("<noise_seed>", str(self.noise_seed))
        d["lpips_input"] = "[-1, 1]" if self.lpips else None
        d["average"] = "mean of the rows' mean PSNR/SSIM (each row averages its images)"
        return d


def crop_to_multiple(img: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """Drop bottom rows and right columns so H and W are multiples of ``multiple`` (the reference's crop)."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def to_8bit(img: np.ndarray) -> np.ndarray:
    """``uint8`` unchanged; ``uint16`` rounded to 8 bits (x / 65535 x 255)."""
    return img if img.dtype == np.uint8 else quantise(to_float(img), 8)


# --------------------------------------------------------------------------- model, device

def load_model(path: str | Path, backbone: str | None = None, preset: str | None = None,
               **overrides) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint needs and load it; returns ``(model, info)``.

    A project checkpoint names its ``backbone`` and ``model_config``: they are used, and
    ``backbone``/``preset``/``overrides`` replace them only when given. A plain state dict or
    a reference checkpoint (``{'BaryIR': module}``) carries no configuration: ``backbone``
    (default BaryNet) and ``preset`` (default paper) plus ``overrides`` describe it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--model {path}: checkpoint not found. Pass the .pth written by the trainer "
                              f"(checkpoint/...), a plain state dict, or a reference BaryIR checkpoint.")
    obj = read_checkpoint(path)
    stored_cfg = obj.get("model_config") if isinstance(obj, Mapping) else None
    stored_backbone = obj.get("backbone") if isinstance(obj, Mapping) else None
    backbone = backbone or (stored_backbone if isinstance(stored_backbone, str) else None) or "BaryNet"
    if backbone not in BACKBONES:
        raise CheckpointError(f"{path} names backbone {backbone!r}, which is none of {sorted(BACKBONES)}; pass "
                              f"--backbone to say which network the weights are for")
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(stored_cfg, Mapping) and preset is None:
        cfg = model_config("paper", source=f"{path}'s model_config", **{**dict(stored_cfg), **given})
        source = "checkpoint"
    else:
        cfg = model_config(preset or "paper", **given)
        source = f"preset {preset or 'paper'}"
    model = BACKBONES[backbone](**cfg)
    load_network(model, obj, str(path))
    info = {"model": str(path), "backbone": backbone, "model_config": cfg, "config_from": source}
    return model, info


# --------------------------------------------------------------------------- restoring

class RestoreOutOfMemory(UserError, RuntimeError):
    """Restoring one image ran out of memory; the message says how to bound it."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def restore_array(model: nn.Module, img: np.ndarray, protocol: Protocol, device: torch.device,
                  name: str = "image") -> tuple[np.ndarray, float]:
    """Restore one ``(H, W, 3)`` uint8/uint16 image: ``(float32 (H, W, 3) unclamped, seconds)``.

    Pads to multiples of 8 when needed (the reference protocol crops beforehand); tiles when
    ``protocol.tile``. Out-of-memory becomes :class:`RestoreOutOfMemory` naming the fix.
    """
    x = torch.from_numpy(to_float(img)).permute(2, 0, 1)[None]
    _sync(device)
    start = time.perf_counter()
    try:
        if protocol.tile:
            out = restore_tiled(model, x, protocol.tile, protocol.tile_overlap, protocol.precision,
                                tile_batch=protocol.tile_batch, multiple=SIZE_MULTIPLE)
        else:
            out = restore(model, x.to(device), protocol.precision, pad=True, multiple=SIZE_MULTIPLE).cpu()
        _sync(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        h, w = img.shape[:2]
        hint = (f"use a smaller --tile or --tile-batch 1 (now --tile {protocol.tile}, --tile-batch "
                f"{protocol.tile_batch})" if protocol.tile else
                "use tiled inference: --tile 512 --tile-overlap 32 (memory then depends on the tile size, "
                "not the image's)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise RestoreOutOfMemory(f"out of memory restoring {name} ({h}x{w}) on {device}: {hint}") from exc
    seconds = time.perf_counter() - start
    return out[0].permute(1, 2, 0).numpy(), seconds


def _load_item(item: EvalItem, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, target) arrays as the protocol restores and scores them.

    Read as stored, EXIF orientation ignored (``exif=False``), as the reference's PIL reads them.
    """
    if item.sigma is not None:
        clean = to_8bit(read_image(item.target, exif=False))
        if protocol.protocol == "reference":
            clean = crop_to_multiple(clean)
        return noisy_version(clean, item.target.name, item.sigma, protocol.noise_seed), clean
    deg, tar = read_image(item.degraded, exif=False), read_image(item.target, exif=False)
    if deg.shape != tar.shape:
        raise PairingError(f"{item.degraded} is {deg.shape[0]}x{deg.shape[1]} but its target {item.target} is "
                           f"{tar.shape[0]}x{tar.shape[1]}")
    if protocol.protocol == "reference":
        deg, tar = crop_to_multiple(deg), crop_to_multiple(tar)
    return deg, tar


class ImageTooSmall(ImageReadError, ValueError):
    """An image smaller than the network's size step: a bad file for evaluation, like a corrupt one."""


class EvaluationStopped(UserError):
    """An image stopped the evaluation; the message is its failure (naming the file).

    ``file``: the image; ``set_name``: its row; ``row``: that row's entry of ``results["tasks"]`` for
    the images scored before it; ``results``: the whole results so far (filled in by
    :func:`evaluate_sets`, marked ``partial``), ready for :func:`write_results`. The exit status is
    the failure's own.
    """

    def __init__(self, message: str, file: str, set_name: str, row: dict[str, Any] | None, exit_status: int = 1):
        super().__init__(message)
        self.file, self.set_name, self.row, self.exit_status = file, set_name, row, exit_status
        self.results: dict[str, Any] | None = None


def _check_size(img: np.ndarray, item: EvalItem) -> None:
    if min(img.shape[:2]) < SIZE_MULTIPLE:
        raise ImageTooSmall(f"{item.degraded or item.target}: {img.shape[0]}x{img.shape[1]} is too small to evaluate "
                            f"(at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE} after the protocol's crop)")


def _summary(images: list[dict], has_lpips: bool) -> dict[str, Any]:
    """A row's numbers; a row without any scored image (all skipped, or stopped at its first) has
    ``count`` 0 and ``None`` for the rest."""
    if not images:
        return {"psnr": None, "ssim": None, **({"lpips": None} if has_lpips else {}), "count": 0,
                "best_psnr": None, "worst_psnr": None, "best_ssim": None, "worst_ssim": None,
                "seconds_per_image": None}
    p = np.array([r["psnr"] for r in images])
    s = np.array([r["ssim"] for r in images])
    out: dict[str, Any] = {"psnr": float(p.mean()), "ssim": float(s.mean())}
    if has_lpips:
        out["lpips"] = float(np.mean([r["lpips"] for r in images]))
    out.update({
        "count": len(images),
        "best_psnr": {"name": images[int(p.argmax())]["name"], "psnr": float(p.max())},
        "worst_psnr": {"name": images[int(p.argmin())]["name"], "psnr": float(p.min())},
        "best_ssim": {"name": images[int(s.argmax())]["name"], "ssim": float(s.max())},
        "worst_ssim": {"name": images[int(s.argmin())]["name"], "ssim": float(s.min())},
        "seconds_per_image": float(np.mean([r["seconds"] for r in images])),
    })
    return out


def evaluate_set(model: nn.Module, eval_set: EvalSet, protocol: Protocol, device: torch.device,
                 save_dir: Path | None = None, savetar_dir: Path | None = None, lpips_metric: LPIPS | None = None,
                 fid_metric: FID | None = None, figs_dir: Path | None = None, fig_images: int = 3,
                 progress: bool = True, skip_bad_files: bool = False) -> dict[str, Any]:
    """Restore and score every image of one set; returns its entry of ``results["tasks"]``.

    An image that cannot be read (:class:`ImageReadError`: corrupt, too large, too small) is left
    out when ``skip_bad_files`` (counted in ``skipped``, listed in ``skipped_files`` and
    ``bad_files``); otherwise it, like any other failure the user fixes, raises
    :class:`EvaluationStopped` carrying the row so far.
    """
    images, fig_rows, feats_out, feats_tar = [], [], [], []
    bad = list(eval_set.bad_files)  # unreadable already when paired (skip_bad_files)
    names = output_names([item.name for item in eval_set.items])

    def row_so_far() -> dict[str, Any]:
        result = _summary(images, lpips_metric is not None)
        if fid_metric is not None:
            enough = len(feats_out) > 1
            result["fid"] = FID.distance(np.concatenate(feats_out), np.concatenate(feats_tar)) if enough else None
        result["skipped"] = len(eval_set.skipped) + len(bad)
        skipped_files = list(eval_set.skipped) + [f"{b['name']} (unreadable: {b['error']})" for b in bad]
        if skipped_files:
            result["skipped_files"] = skipped_files
        if bad:
            result["bad_files"] = bad
        result["images"] = images
        return result

    for item, out_name in tqdm(list(zip(eval_set.items, names)), desc=eval_set.name, unit="img",
                               disable=not progress, leave=True):
        try:
            deg, tar = _load_item(item, protocol)
            _check_size(deg, item)
            out, seconds = restore_array(model, deg, protocol, device, name=str(item.degraded or item.target))
        except UserError as exc:
            if skip_bad_files and isinstance(exc, ImageReadError):
                bad.append({"name": item.name, "error": str(exc)})
                continue
            raise EvaluationStopped(str(exc), str(item.degraded or item.target), eval_set.name, row_so_far(),
                                    exc.exit_status) from exc
        out8, tar8 = quantise(out, 8), to_8bit(tar)
        try:
            p, s = image_metrics(out8, tar8, protocol.metric_space, protocol.ssim, protocol.crop_border)
        except ValueError as exc:
            raise ValueError(f"{eval_set.name}: {item.name}: {exc}") from exc
        row: dict[str, Any] = {"name": item.name, "psnr": p, "ssim": s}
        if lpips_metric is not None:
            row["lpips"] = lpips_metric(out8, tar8)
        row["seconds"] = seconds
        images.append(row)
        if save_dir is not None:
            write_image(save_dir / out_name, quantise(out, 16 if deg.dtype == np.uint16 else 8))
        if savetar_dir is not None:
            write_image(savetar_dir / out_name, tar8)
        if fid_metric is not None:
            feats_out.append(fid_metric.features([out8]))
            feats_tar.append(fid_metric.features([tar8]))
        if figs_dir is not None and len(fig_rows) < fig_images:
            fig_rows.append((item.name, to_8bit(deg), out8, tar8, p, s))
    result = row_so_far()
    if figs_dir is not None and fig_rows:
        result["figure"] = str(save_comparison_figure(fig_rows, figs_dir / f"{eval_set.name.replace('/', '_')}.png",
                                                      eval_set.name))
    return result


def evaluate_sets(model: nn.Module, sets: Sequence[EvalSet], protocol: Protocol | None = None,
                  device: torch.device | str | None = None, save_dir: str | Path | None = None,
                  savetar_dir: str | Path | None = None, figs_dir: str | Path | None = None,
                  fig_images: int = 3, subfolders: bool = True, progress: bool = True,
                  model_info: Mapping[str, Any] | None = None, skip_bad_files: bool = False) -> dict[str, Any]:
    """Evaluate every set; returns ``{"protocol": {...}, "tasks": {row: {...}}, "average": {...}}``.

    Restorations go to ``save_dir/<row>/`` (``save_dir`` itself when ``subfolders`` is False),
    the targets as scored to ``savetar_dir`` likewise, figures to ``figs_dir/<row>.png``.
    An image that stops the run raises :class:`EvaluationStopped` whose ``results`` hold the rows
    done, the stopped row so far, and ``"partial": {"row", "file", "error"}``; ``skip_bad_files``
    as in :func:`evaluate_set`.
    """
    protocol = (protocol or Protocol()).validate()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = prepare_for_inference(model.to(device))
    # Perceptual metrics are built first: a missing weights file fails before anything runs.
    lpips_metric = LPIPS(protocol.lpips_net, device) if protocol.lpips else None
    fid_metric = FID(device) if protocol.fid else None
    desc = protocol.describe()
    desc["device"] = str(device)
    desc.update(dict(model_info or {}))
    results: dict[str, Any] = {"protocol": desc, "tasks": {}}

    def where(base, name):
        if base is None:
            return None
        return Path(base) / name if subfolders else Path(base)

    for k, s in enumerate(sets):
        try:
            results["tasks"][s.name] = evaluate_set(
                model, s, protocol, device, where(save_dir, s.name), where(savetar_dir, s.name), lpips_metric,
                fid_metric, Path(figs_dir) if figs_dir is not None else None, fig_images, progress, skip_bad_files)
        except EvaluationStopped as stop:
            results["tasks"][s.name] = {**(stop.row or _summary([], protocol.lpips)), "partial": True}
            results["average"] = average_row(results["tasks"])
            results["partial"] = {"row": s.name, "file": stop.file, "error": str(stop),
                                  "rows_not_evaluated": [t.name for t in sets[k + 1:]]}
            stop.results = results
            raise
    results["average"] = average_row(results["tasks"])
    return results


def evaluate_tasks(model: nn.Module, tasks: Iterable[str], data_root: str | Path,
                   protocol: Protocol | None = None, device: torch.device | str | None = None,
                   skip_unpaired: bool = False, **kwargs) -> dict[str, Any]:
    """Find ``tasks`` under ``data_root`` and evaluate them (see :func:`evaluate_sets` for ``kwargs``)."""
    return evaluate_sets(model, find_task_sets(tasks, data_root, skip_unpaired), protocol, device, **kwargs)


def average_row(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean over the rows (as the paper's 'Average' column)."""
    rows = [r for r in tasks.values() if r.get("count")]  # rows with no scored image have no numbers
    if not rows:
        return {}
    avg = {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows]))}
    if all("lpips" in r for r in rows):
        avg["lpips"] = float(np.mean([r["lpips"] for r in rows]))
    avg["rows"] = len(rows)
    return avg


def restore_files(model: nn.Module, inputs: Sequence[Path], save_dir: str | Path, protocol: Protocol | None = None,
                  device: torch.device | str | None = None, progress: bool = True,
                  skip_bad_files: bool = False) -> list[dict[str, Any]]:
    """Restore user images (no targets, no metrics) at their full size into ``save_dir``.

    Every image is reflect-padded to multiples of 8 and cropped back; 16-bit inputs give 16-bit PNGs,
    named by :func:`utils.eval.outputs.output_names`. Unlike benchmark images, these are user photos:
    their EXIF orientation tag is applied, so the restoration is saved upright (a PNG has no tag to
    rotate it later). Returns ``{"name", "output", "seconds"}`` per image; an unreadable image gets
    ``{"name", "skipped": why}`` with ``skip_bad_files``, else raises :class:`EvaluationStopped`
    whose ``row`` is ``{"restored": [the entries so far]}``.
    """
    protocol = (protocol or Protocol()).validate()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = prepare_for_inference(model.to(device))
    done = []
    for path, out_name in tqdm(list(zip(inputs, output_names([p.name for p in inputs]))), desc="restore",
                               unit="img", disable=not progress):
        try:
            img = read_image(path, exif=True)
            out, seconds = restore_array(model, img, protocol, device, name=str(path))
        except UserError as exc:
            if skip_bad_files and isinstance(exc, ImageReadError):
                done.append({"name": path.name, "skipped": str(exc)})
                continue
            raise EvaluationStopped(str(exc), str(path), "input", {"restored": done}, exc.exit_status) from exc
        dest = write_image(Path(save_dir) / out_name, quantise(out, 16 if img.dtype == np.uint16 else 8))
        done.append({"name": path.name, "output": str(dest), "seconds": seconds})
    return done


def input_files(path: str | Path) -> list[Path]:
    """``--input``: one image file, or the images of a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        if not is_image(path):
            raise ImageReadError(f"--input {path} is not an image file")
        return [path]
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise ImageReadError(f"--input {path}: the folder holds no images")
        return files
    raise ImageReadError(f"--input {path} does not exist")


# --------------------------------------------------------------------------- tables and files

def _fmt(v: Any, digits: int) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary_table(results: Mapping[str, Any]) -> str:
    """The per-row table (markdown) with the average, plus the paper's one-line PSNR/SSIM layout."""
    tasks = results.get("tasks", {})
    has_lpips = any("lpips" in r for r in tasks.values())
    head = ["Task", "Images", "PSNR", "SSIM"] + (["LPIPS"] if has_lpips else []) + \
        ["Best PSNR", "Worst PSNR", "Best SSIM", "Worst SSIM", "s/image", "Skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in tasks.items():
        cells = [name + (" (partial)" if r.get("partial") else ""), str(r["count"]), _fmt(r["psnr"], 2),
                 _fmt(r["ssim"], 4)]
        cells += [_fmt(r.get("lpips"), 4)] if has_lpips else []
        cells += [_fmt(_extreme(r, "best_psnr"), 2), _fmt(_extreme(r, "worst_psnr"), 2),
                  _fmt(_extreme(r, "best_ssim"), 4), _fmt(_extreme(r, "worst_ssim"), 4),
                  _fmt(r["seconds_per_image"], 3), str(r.get("skipped", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    avg = results.get("average") or {}
    if avg:
        cells = ["Average", "", _fmt(avg["psnr"], 2), _fmt(avg["ssim"], 4)]
        cells += [_fmt(avg.get("lpips"), 4)] if has_lpips else []
        lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
        paper = "  ".join(f"{n} {r['psnr']:.2f}/{r['ssim']:.3f}" for n, r in tasks.items() if r.get("count"))
        lines += ["", f"PSNR/SSIM: {paper}  Average {avg['psnr']:.2f}/{avg['ssim']:.3f}"]
    return "\n".join(lines + _notes(results))


def _extreme(row: Mapping[str, Any], key: str) -> float | None:
    """The value of ``row[key]`` (``best_psnr`` ... ``worst_ssim``), ``None`` for a row without images."""
    entry = row.get(key)
    return entry[key.split("_")[1]] if entry else None


def _notes(results: Mapping[str, Any]) -> list[str]:
    """Lines under the table: images left out as unreadable, and where a stopped run stopped."""
    lines = []
    for name, r in results.get("tasks", {}).items():
        for b in r.get("bad_files", []):
            lines.append(f"Skipped unreadable image ({name}): {b['name']}: {b['error']}")
    stop = results.get("partial")
    if stop:
        lines.append(f"PARTIAL RESULTS: stopped in {stop['row']} at {stop['file']}: {stop['error']}")
        if stop.get("rows_not_evaluated"):
            lines.append(f"Not evaluated: {', '.join(stop['rows_not_evaluated'])}")
    return [""] + lines if lines else []


def protocol_lines(protocol: Mapping[str, Any]) -> list[str]:
    keys = ("protocol", "protocol_rule", "metric_space", "metric_space_rule", "ssim", "ssim_rule", "crop_border",
            "bit_depth", "precision", "tile", "tile_overlap", "tile_batch", "lpips", "fid", "noise", "device",
            "model", "backbone", "config_from", "model_config", "average")
    return [f"- {k}: {protocol[k]}" for k in keys if k in protocol] + \
        [f"- {k}: {v}" for k, v in protocol.items() if k not in keys and k != "lpips_input"]


def format_report(results: Mapping[str, Any]) -> str:
    """What the tester prints: the protocol, then the table."""
    return "Protocol:\n" + "\n".join(protocol_lines(results["protocol"])) + "\n\n" + summary_table(results)


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``; returns their paths.

    CSV columns: ``kind,task,name,psnr,ssim,lpips,seconds,count,best_psnr,worst_psnr,best_ssim,
    worst_ssim``; ``kind`` is ``protocol`` (``task`` holds the key, ``name`` the value),
    ``image``, ``skipped`` (``name``: the file and why), ``task``, ``average`` or ``partial`` (the
    run stopped: ``task`` is the row, ``name`` the file and its error). Results marked partial
    (``results["partial"]``, see :func:`evaluate_sets`) say so in all three files. Each file is
    written whole then renamed into place (:func:`utils.eval.outputs.write_text`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "md": out_dir / "results.md"}
    write_text(paths["json"], json.dumps(results, indent=2, default=str) + "\n")

    cols = ["kind", "task", "name", "psnr", "ssim", "lpips", "seconds", "count", "best_psnr", "worst_psnr",
            "best_ssim", "worst_ssim"]
    fh = io.StringIO(newline="")
    w = csv.DictWriter(fh, fieldnames=cols)
    w.writeheader()
    for k, v in results["protocol"].items():
        w.writerow({"kind": "protocol", "task": k, "name": json.dumps(v, default=str) if not isinstance(v, str)
                    else v})
    for task, r in results.get("tasks", {}).items():
        for im in r["images"]:
            w.writerow({"kind": "image", "task": task, **{c: im.get(c) for c in
                                                          ("name", "psnr", "ssim", "lpips", "seconds")}})
        for name in r.get("skipped_files", []):
            w.writerow({"kind": "skipped", "task": task, "name": name})
        w.writerow({"kind": "task", "task": task, "psnr": r["psnr"], "ssim": r["ssim"], "lpips": r.get("lpips"),
                    "seconds": r["seconds_per_image"], "count": r["count"],
                    **{k: _extreme(r, k) for k in ("best_psnr", "worst_psnr", "best_ssim", "worst_ssim")}})
    avg = results.get("average") or {}
    if avg:
        w.writerow({"kind": "average", "task": "Average", "psnr": avg["psnr"], "ssim": avg["ssim"],
                    "lpips": avg.get("lpips"), "count": avg.get("rows")})
    stop = results.get("partial")
    if stop:
        w.writerow({"kind": "partial", "task": stop["row"], "name": f"{stop['file']}: {stop['error']}"})
    write_text(paths["csv"], fh.getvalue())

    title = "# Evaluation results" + (" (PARTIAL: the run stopped, see the end of the summary)" if stop else "")
    md = [title, "", "## Protocol", "", *protocol_lines(results["protocol"]), "",
          "## Summary", "", summary_table(results), ""]
    for task, r in results.get("tasks", {}).items():
        has_lpips = "lpips" in r
        md += [f"## {task}", ""]
        if r.get("count"):
            md += [f"Best PSNR {r['best_psnr']['psnr']:.2f} ({r['best_psnr']['name']}), worst "
                   f"{r['worst_psnr']['psnr']:.2f} ({r['worst_psnr']['name']}); best SSIM "
                   f"{r['best_ssim']['ssim']:.4f} ({r['best_ssim']['name']}), worst {r['worst_ssim']['ssim']:.4f} "
                   f"({r['worst_ssim']['name']}).", ""]
        if r.get("skipped_files"):
            md += [f"Skipped ({len(r['skipped_files'])}): " + "; ".join(r["skipped_files"]), ""]
        md += ["| Image | PSNR | SSIM |" + (" LPIPS |" if has_lpips else "") + " s |",
               "|---|---|---|" + ("---|" if has_lpips else "") + "---|"]
        for im in r["images"]:
            md.append(f"| {im['name']} | {im['psnr']:.2f} | {im['ssim']:.4f} |"
                      + (f" {im['lpips']:.4f} |" if has_lpips else "") + f" {im['seconds']:.3f} |")
        md.append("")
    write_text(paths["md"], "\n".join(md))
    return paths


def save_comparison_figure(rows: Sequence[tuple], path: str | Path, title: str) -> Path:
    """degraded | restored | target, one line per image; ``rows`` of (name, deg, out, tar, psnr, ssim)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (name, deg, out, tar, p, s) in enumerate(rows):
        for c, (img, label) in enumerate(((deg, f"degraded: {name}"), (out, f"restored {p:.2f} dB / {s:.3f}"),
                                          (tar, "target"))):
            axes[r, c].imshow(img)
            axes[r, c].set_title(label, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return replace_file(path, buf.getvalue())  # a link at ``path`` is replaced, not written through
