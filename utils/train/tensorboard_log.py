"""TensorBoard event files of a training run (the trainers' ``--tensorboard``).

Rank 0 writes into ``<output-dir>/tensorboard/`` (:data:`TB_DIR`); the step of every event is the
global iteration, the one the JSON-lines log records. Tags:

- ``loss/<part>``, ``train/lr`` and, for WB backbones, ``lambda/<family>`` (the barycenter weights):
  at each iteration the JSON-lines log records (``--log-every``), the same values, already floats
  (no device synchronisation added);
- ``epoch/<part>`` (the epoch's mean losses), ``val/psnr``, ``val/ssim`` (the tester's scoring): at
  each epoch's last step;
- images ``preview/degraded_restored_target`` and, for WB backbones, ``preview/wb_residual_maps``
  (per-position norms of the WB and residual latents, each scaled to its own range), histograms
  ``preview/wb_pooled`` and ``preview/residual_pooled`` (their channel means): at each epoch's last
  step, for one fixed image.

The fixed image is the first validation pair, else the first training sample as epoch 1 crops it;
a centre crop of at most :data:`PREVIEW_SIDE` pixels a side keeps the event files small.

A resumed run opens its writer with ``purge_step`` one past the checkpoint's global step: TensorBoard
then hides the events the stopped run wrote after its checkpoint, as
:func:`~utils.train.run_log.rewind_log` moves those log records aside. Where starts without ``--tensorboard``
came in between (:func:`boarded_until`), it purges from the first of them on, and writes the scalars of the log's
records since then from ``log.jsonl``: the curves are the log's, not those of a timeline a resume abandoned. A
fresh run finds an earlier run's folder moved aside with the rest of that run (``run.before-<time>/tensorboard``).
Any failure to write warns once and turns TensorBoard off for the run; training goes on.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from net.presets import WB_BACKBONES
from utils.analysis.embeddings import channel_norm, latents, pooled, upsampled
from utils.checkpoints import LOG_NAME
from utils.data.image_io import read_image, to_float
from utils.eval.inference import autocast_context
from utils.eval.protocol import crop_to_multiple, to_8bit
from utils.train.options import ConfigError
from utils.train.run_folder import TB_DIR
from utils.train.run_log import LOSS_LABELS, Console, lines_from_end, read_log

PREVIEW_SIDE = 256  # largest side of the preview crop (a multiple of 8)
FLUSH_SECS = 30
# The loss parts of a log record: the map loss's total, then its parts in the objective's order.
LOSS_KEYS = ("map",) + tuple(k for k, _ in LOSS_LABELS)


def require_tensorboard() -> None:
    """Raise :class:`~utils.train.options.ConfigError` (one ``error:`` line, exit 2) when
    ``torch.utils.tensorboard`` cannot be imported (the ``tensorboard`` package is missing)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed here ({exc}): "
                          f"pip install tensorboard (or drop --tensorboard)") from None


# --------------------------------------------------------------------------- what is written

def iteration_scalars(record: dict[str, Any], lambdas: dict[str, float]) -> dict[str, float]:
    """Tag -> value of an ``iter`` record: ``loss/<part>``, ``train/lr``, ``lambda/<family>``."""
    out = {f"loss/{k}": float(record[k]) for k in LOSS_KEYS if record.get(k) is not None}
    if record.get("lr") is not None:
        out["train/lr"] = float(record["lr"])
    return out | {f"lambda/{fam}": float(v) for fam, v in lambdas.items()}


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Tag -> value of an ``epoch`` record: ``epoch/<part>`` (the epoch's means), ``val/psnr``, ``val/ssim``."""
    out = {f"epoch/{k}": float(record[k]) for k in LOSS_KEYS if record.get(k) is not None}
    for key, tag in (("val_psnr", "val/psnr"), ("val_ssim", "val/ssim")):
        if record.get(key) is not None:
            out[tag] = float(record[key])
    return out


def preview_crop(img: torch.Tensor, side: int = PREVIEW_SIDE, multiple: int = 8) -> torch.Tensor:
    """The centre of ``img``: ``(C, H, W) -> (C, h, w)``, ``h = min(H, side)`` rounded down to a multiple
    of ``multiple`` (likewise ``w``). ``H`` and ``W`` must be at least ``multiple``."""
    h, w = img.shape[-2:]
    ch, cw = min(h, side) // multiple * multiple, min(w, side) // multiple * multiple
    if ch == 0 or cw == 0:
        raise ValueError(f"an image of {h}x{w} is too small for a preview (at least {multiple}x{multiple})")
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top:top + ch, left:left + cw]


def side_by_side(images: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """``n`` images ``(3, H, W_i)`` in [0, 1] -> one ``(3, H, sum W_i + gap (n - 1))``, white between them."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = images[0].shape[-2]
    if any(im.shape[-2] != h or im.shape[0] != 3 for im in images):
        raise ValueError(f"side_by_side needs (3, H, W) images of one height, got {[tuple(i.shape) for i in images]}")
    white = torch.ones(3, h, gap)
    parts = [p for im in images for p in (white, im.float().cpu())][1:]
    return torch.cat(parts, dim=2)


def norm_map(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-position L2 norm of a latent over channels, scaled to [0, 1] by its own range, upsampled
    (bilinear) to ``size`` and coloured with viridis: ``(C, h, w) -> (3, H, W)``."""
    import matplotlib

    norm = channel_norm(latent)
    lo, hi = norm.min(), norm.max()
    up = upsampled((norm - lo) / (hi - lo).clamp_min(1e-12), size).clamp(0, 1)
    rgb = matplotlib.colormaps["viridis"](up.cpu().numpy())[..., :3]  # (H, W, 4) RGBA -> RGB
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)


def preview_sample(val_pairs: Sequence[tuple[Path, Path]], dataset: Any,
                   side: int = PREVIEW_SIDE) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The fixed image of the previews: ``(degraded (3, h, w), target (3, h, w), what it is)``, float in [0, 1].

    The first validation pair (read as validation reads it, cropped to multiples of 8), else
    ``dataset[0]`` as epoch 1 draws it (its crop, flip and noise are fixed by the seed and the epoch);
    then the centre crop of at most ``side`` pixels a side (:func:`preview_crop`).
    """
    if val_pairs:
        deg_path, tar_path = val_pairs[0]
        deg, tar = (crop_to_multiple(to_8bit(read_image(p, exif=False))) for p in (deg_path, tar_path))
        if deg.shape != tar.shape:
            raise ValueError(f"{deg_path} is {deg.shape[:2]} but its target {tar_path} is {tar.shape[:2]}")
        degraded, target = (torch.from_numpy(to_float(a)).permute(2, 0, 1) for a in (deg, tar))
        what = f"validation pair {deg_path.name}"
    else:
        first = copy.copy(dataset)  # its own epoch: the run's dataset is left as it is
        first.set_epoch(1)
        degraded, target = first[0][:2]
        what = "training sample 0 (epoch 1's crop)"
    return preview_crop(degraded, side), preview_crop(target, side), what


def preview_images(model: nn.Module, degraded: torch.Tensor, target: torch.Tensor, device: torch.device,
                   precision: str, wb: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Restore ``degraded`` ``(3, h, w)`` once (eval mode, no gradients; the model is left in the mode
    it was in) and return ``(images, histograms)``: images ``(3, H, W)`` in [0, 1] by tag, the
    degraded | restored | target grid and, when ``wb``, the WB | residual norm maps
    (:func:`~utils.analysis.embeddings.latents`); histograms the pooled latents ``(C,)``
    (:func:`~utils.analysis.embeddings.pooled`). ``h``, ``w`` multiples of 8.

    The forward is the model's own, not :func:`utils.eval.inference.restore`, which would switch the
    training model's LayerNorms to the inference kernel.
    """
    x = degraded[None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(device, precision):
            out = model(x.contiguous(memory_format=torch.channels_last))
        restored = (out[0] if isinstance(out, tuple) else out)[0].float().clamp(0, 1).cpu()
        images = {"preview/degraded_restored_target": side_by_side([degraded, restored, target])}
        hists: dict[str, torch.Tensor] = {}
        if wb:
            bary, residual = latents(model, x)
            size = tuple(degraded.shape[-2:])
            images["preview/wb_residual_maps"] = side_by_side([norm_map(bary[0], size), norm_map(residual[0], size)])
            hists = {"preview/wb_pooled": pooled(bary)[0].cpu(), "preview/residual_pooled": pooled(residual)[0].cpu()}
    finally:
        model.train(was_training)
    return images, hists


# --------------------------------------------------------------------------- the writer

class TensorBoardLog:
    """Rank 0's TensorBoard writer; a no-op when not ``enabled`` (other ranks, no ``--tensorboard``).

    ``write(record)`` takes the JSON-lines log's records (``iter``, ``epoch``; others are ignored);
    :meth:`preview` writes the epoch's images. Every call is guarded: the first failure warns once on
    ``console`` and turns the writer off (a failed preview turns off the previews only).

    Args:
        folder: where the event files go (created).
        purge_step: first global step this run writes; TensorBoard hides older files' events from
            it on (None: a fresh run).
        lambdas: ``{family: lambda}`` logged with each iteration ({} for the L1-only backbones).
        sample: ``(degraded, target, what)`` of :func:`preview_sample`, or None for no previews.
        wb: whether the model has the WB/residual latents (:data:`net.presets.WB_BACKBONES`).
        writer_factory: builds the writer from ``(folder, purge_step)``; default
            ``torch.utils.tensorboard.SummaryWriter``.
    """

    def __init__(self, folder: Path | None, console: Console, *, enabled: bool = True, purge_step: int | None = None,
                 lambdas: dict[str, float] | None = None,
                 sample: tuple[torch.Tensor, torch.Tensor, str] | None = None, wb: bool = False,
                 writer_factory: Callable[[Path, int | None], Any] | None = None):
        self.folder, self.console = folder, console
        self.lambdas = dict(lambdas or {})
        self.sample, self.wb = sample, wb
        self.writer = None
        self.enabled = bool(enabled and folder is not None)
        if self.enabled:
            factory = writer_factory or _summary_writer
            self._guard("open the event file", lambda: setattr(self, "writer", factory(Path(folder), purge_step)))

    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        try:
            call()
        except Exception as exc:  # training goes on without TensorBoard
            self.enabled = False
            self.console.warn(f"--tensorboard: could not {what} in {self.folder} ({type(exc).__name__}: {exc}); "
                              f"TensorBoard logging is off for the rest of this run, training goes on")
            writer, self.writer = self.writer, None
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    pass

    def write(self, record: dict[str, Any], lambdas: dict[str, float] | None = None) -> None:
        """Write a JSON-lines log record's scalars at its ``global_step`` (see the module's table); ``lambdas``:
        those of the start that trained it, when not this run's (a record written again from the log)."""
        if not self.enabled or not isinstance(record.get("global_step"), int):
            return
        kind = record.get("kind")
        scalars = (iteration_scalars(record, self.lambdas if lambdas is None else lambdas) if kind == "iter"
                   else epoch_scalars(record) if kind == "epoch" else {})
        if not scalars:
            return
        step = record["global_step"]

        def add():
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        self._guard("write scalars", add)
        if kind == "epoch":
            self.flush()

    def preview(self, model: nn.Module, step: int, device: torch.device, precision: str) -> None:
        """The fixed image restored by ``model`` now, and its latent maps, at global ``step``."""
        if not self.enabled or self.sample is None:
            return
        degraded, target, what = self.sample
        try:
            images, hists = preview_images(model, degraded, target, device, precision, self.wb)
        except Exception as exc:  # e.g. out of memory: the previews stop, the scalars go on
            self.sample = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.console.warn(f"--tensorboard: the preview of {what} failed ({type(exc).__name__}: {exc}); "
                              f"no more previews this run, the scalars and training go on")
            return

        def add():
            for tag, img in images.items():
                self.writer.add_image(tag, img, step, dataformats="CHW")
            for tag, values in hists.items():
                self.writer.add_histogram(tag, values, step)
        self._guard("write the preview images", add)

    def flush(self) -> None:
        """Put what is written on disk (at epoch ends and before each checkpoint)."""
        self._guard("flush the event file", lambda: self.writer.flush())

    def close(self) -> None:
        self._guard("close the event file", lambda: self.writer.close())
        self.enabled, self.writer = False, None


def _summary_writer(folder: Path, purge_step: int | None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=purge_step, flush_secs=FLUSH_SECS)


class RecordLogs:
    """Several logs as one: ``write(record)`` goes to each (the JSON-lines log and TensorBoard)."""

    def __init__(self, *logs):
        self.logs = logs

    def write(self, record: dict[str, Any]) -> None:
        for log in self.logs:
            log.write(record)


def boarded_until(records: Sequence[dict[str, Any]], global_step: int) -> int:
    """The last global step up to which the event files of the run whose log holds ``records`` (this start's
    ``run`` record last) agree with its log: ``global_step``, where this run resumes, unless starts without
    ``--tensorboard`` came after the last start with it: then the step the first of those started at (past it,
    the files may hold a timeline that start abandoned, and miss what it trained). A ``run`` record without
    ``tensorboard`` (written before it was recorded) counts as a start with it."""
    starts = [r for r in records if r.get("kind") == "run" and isinstance(r.get("global_step"), int)][:-1]
    until = global_step
    for start in reversed(starts):
        if start.get("tensorboard", True):
            break
        until = min(until, start["global_step"])
    return until


def replay_start(path: Path) -> int | None:
    """Where in the log at ``path`` (a byte offset) the records begin that :func:`boarded_until` and
    :func:`records_to_replay` need of it, None where they need none (a resume after a start with ``--tensorboard``):
    at the first of the starts without ``--tensorboard`` since the last one with it, before the log's last start
    (this one). Its ``run`` record gives the records after it their lambdas, and the log's global steps never go
    back (each resume rewinds it), so no record before it is one to write again.

    It reads the log from its end, parsing only lines that can be a ``run`` record (they hold ``"run"``, or an
    escape that could spell it): a resume that read the whole log into records took some 15 s at the paper's 300 MB.
    """
    if not path.is_file():
        return None
    last, found = True, None  # the log's last start (this one); the earliest start without --tensorboard after it
    for start, line in lines_from_end(path):
        if b'"run"' not in line and b"\\" not in line:
            continue
        for text in reversed(line.decode("utf-8", "replace").splitlines()):  # read_log's lines, the last first
            try:
                record = json.loads(text) if text.strip() else None
            except ValueError:
                continue
            if not (isinstance(record, dict) and record.get("kind") == "run"
                    and isinstance(record.get("global_step"), int)):
                continue
            if not last and record.get("tensorboard", True):
                return found
            if not last:
                found = start
            last = False
    return found


def records_to_replay(records: Sequence[dict[str, Any]], after: int, until: int,
                      families: Sequence[str]) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """The log's ``iter`` and ``epoch`` records of global steps ``after + 1`` to ``until``, each with the barycenter
    weights of the start that trained it (its ``run`` record's ``lambdas``, by ``families``; {} without them: the
    L1-only backbones, or a start of another number of families)."""
    out, lambdas = [], {}
    for record in records:
        if record.get("kind") == "run":
            values = record.get("lambdas")
            fits = isinstance(values, list) and len(values) == len(families)
            lambdas = dict(zip(families, map(float, values))) if fits else {}
        elif (record.get("kind") in ("iter", "epoch") and isinstance(record.get("global_step"), int)
              and after < record["global_step"] <= until):
            out.append((record, lambdas))
    return out


def open_tensorboard(args: argparse.Namespace, output_dir: Path, resumed: bool, global_step: int, dataset: Any,
                     val_pairs: Sequence[tuple[Path, Path]], is_main: bool, console: Console) -> TensorBoardLog:
    """The run's :class:`TensorBoardLog` in ``output_dir/tensorboard``: enabled on rank 0 with
    ``--tensorboard``. A resumed run (at ``global_step``) continues its curves, first written from its log where
    starts without ``--tensorboard`` left them behind (:func:`boarded_until`); a fresh one starts an empty folder
    (:func:`~utils.train.run_folder.start_fresh_outputs` has moved an earlier run's aside).
    ``dataset`` gives the lambdas (``.families``, ``.lambdas``) and, without ``val_pairs``, the preview's
    training sample."""
    if not (getattr(args, "tensorboard", False) and is_main):
        return TensorBoardLog(None, console, enabled=False)
    folder = output_dir / TB_DIR
    wb = args.backbone in WB_BACKBONES
    try:
        sample = preview_sample(val_pairs, dataset)
    except Exception as exc:
        sample = None
        console.warn(f"--tensorboard: no preview images this run: the fixed image could not be read ({exc})")
    lambdas = dict(zip(dataset.families, map(float, dataset.lambdas))) if wb else {}
    start = replay_start(output_dir / LOG_NAME) if resumed else None
    records = read_log(output_dir / LOG_NAME, start) if start is not None else []
    until = boarded_until(records, global_step)
    board = TensorBoardLog(folder, console, purge_step=until + 1 if resumed else None, lambdas=lambdas,
                           sample=sample, wb=wb)
    for record, trained_with in records_to_replay(records, until, global_step, dataset.families if wb else ()):
        board.write(record, trained_with)  # trained without --tensorboard: the log's values (no previews)
    if board.enabled:
        from_log = (f"; steps {until + 1} to {global_step}, trained without --tensorboard, written from "
                    f"{LOG_NAME}" if until < global_step else "")
        console(f"=> TensorBoard: {folder}" + (f" (continuing after global step {global_step}{from_log})"
                                               if resumed else "")
                + (f"; previews of {sample[2]}" if sample else "") + f"; tensorboard --logdir {folder}")
    return board
