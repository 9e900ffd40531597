"""The evaluation engine: sets of images restored and scored under a protocol, and user images
restored without targets.

``tester_bary.py`` is a thin command line over this package; the trainer's validation, the demo
and the study call :func:`evaluate_set`, :func:`evaluate_sets` or :func:`evaluate_tasks` directly.
What a task means is :mod:`utils.eval.tasks`; how one image is scored, :mod:`utils.eval.protocol`;
the tables and result files, :mod:`utils.eval.report`.

Benchmark images (pairs and the clean images of denoising sets) are read as the reference reads
them, ignoring any EXIF orientation tag, in every protocol; only ``--input`` photos
(:func:`restore_files`) are turned upright by their tag (:mod:`utils.data.image_io`).

Outputs are named by :func:`utils.eval.outputs.output_names`: ``NAME.png`` for an input ``NAME.EXT``;
inputs of one set sharing a name (``a.png``, ``a.jpg``) give ``a.png`` and ``a_jpg.png``.

A file that cannot be read (corrupt, too large, too small) stops the evaluation with
:class:`EvaluationStopped`, which carries the results so far marked ``partial``; with
``skip_bad_files`` it is left out instead, counted in the row's ``skipped`` and listed with why.
An output that cannot be written (a full disk, a file-size limit) stops it the same way.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.data.image_headers import NOT_KEPT_WHY, lost_on_restoring
from utils.data.image_io import ImageReadError, image_size, quantise, read_image, write_image
from utils.data.noise import noisy_version
from utils.data.pairing import PairingError
from utils.errors import UserError, counted, failure_message, interrupted_line, listing, one_or_many
from utils.eval.inference import compile_count, prepare_for_inference
from utils.eval.metrics import FID, LPIPS, image_metrics, smallest_scorable_side
from utils.eval.outputs import figure_names, output_names
from utils.eval.paper import paper_averages
from utils.eval.protocol import SIZE_MULTIPLE, Protocol, crop_to_multiple, restore_array, to_8bit
from utils.eval.report import save_comparison_figure
from utils.eval.resuming import EarlierImages, KeptImage, input_digests
from utils.eval.tasks import EvalItem, EvalSet, find_task_sets
from utils.owned_outputs import file_digest
from utils.streams import PIPE_CLOSED_STATUS, OutputClosed


def _load_item(item: EvalItem, protocol: Protocol, decoder_warnings: list[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, target) arrays as the protocol restores and scores them.

    Read as stored, EXIF orientation ignored (``exif=False``), as the reference's PIL reads them;
    ``decoder_warnings`` gets what libjpeg said of a file it decoded over damage, as ``"degraded NAME: ..."``
    or ``"target NAME: ..."``.
    """
    def read(path: Path, role: str) -> np.ndarray:  # the role says which file of the pair (they share a name)
        said: list[str] = []
        img = read_image(path, exif=False, decoder_warnings=said)
        if decoder_warnings is not None:
            decoder_warnings.extend(f"{role} {words}" for words in said)
        return img

    if item.sigma is not None:
        clean = to_8bit(read(item.target, "target"))
        if protocol.protocol == "reference":
            clean = crop_to_multiple(clean)
        return noisy_version(clean, item.target.name, item.sigma, protocol.noise_seed), clean
    deg, tar = read(item.degraded, "degraded"), read(item.target, "target")
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


def why_stopped(exc: KeyboardInterrupt | OutputClosed) -> tuple[str, int]:
    """The message and exit status of a run stopped from outside: Ctrl-C or SIGTERM, or output to a pipe whose
    reader has gone (``| head``), which ends the run as quietly as any program's write to a closed pipe."""
    if isinstance(exc, OutputClosed):
        return "the output's reader has gone (a closed pipe)", PIPE_CLOSED_STATUS
    return interrupted_line(exc)


class InputAsOutput(nn.Module):
    """``(B, 3, H, W) -> (B, 3, H, W)``, its input: evaluated as a model, it gives the degraded inputs' scores under
    the same protocol as the restorations' (the demo's and the study's "degraded" rows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path`` (not followed through a link), None when nothing is there. A
    file an atomic write renames into place (:func:`utils.files.atomic_write`) has another identity than the one it
    replaced, so comparing the identities before and after tells whether a write that was stopped had put its
    file in place."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_kept(path: Path) -> np.ndarray:
    """The restoration at ``path`` that ``--resume`` keeps, read again for its figure; a :class:`UserError` that names
    it as such, with the fix (its image is restored again once it is gone), when it cannot be read (not an
    :class:`ImageReadError`: ``--skip-bad-files`` leaves out inputs, not a kept output)."""
    try:
        return read_image(path, exif=False)
    except ImageReadError as exc:
        raise UserError(f"the restoration {path} that --resume keeps cannot be read ({exc}): delete it, and "
                             f"--resume restores its image again") from exc


def _write_stopped(exc: BaseException, file: str, set_name: str, row: dict[str, Any] | None) -> EvaluationStopped:
    """An output that could not be written (a full disk, a file too large, a folder made read-only meanwhile)
    stops the run as a bad image does: the results so far are written and shown, not lost with a traceback."""
    said = failure_message(exc)
    message, status = said if said is not None else (f"cannot write {file}: {exc}", 1)
    return EvaluationStopped(message, file, set_name, row, status)


def _least_side(protocol: Protocol) -> int:
    """The least height and width an image can be restored at (the network's size step) and scored at under
    ``protocol`` (the SSIM window after ``crop_border``, LPIPS's trunk)."""
    return max(SIZE_MULTIPLE, smallest_scorable_side(protocol.ssim, protocol.crop_border,
                                                     protocol.lpips_net if protocol.lpips else None))


def smallest_file_side(protocol: Protocol) -> int:
    """The least height and width an image FILE needs under ``protocol`` (:func:`_check_size`'s rule, from the
    header's size): :func:`_least_side`, rounded up to a multiple of 8 by the reference protocol's crop."""
    side = _least_side(protocol)
    return -(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE if protocol.protocol == "reference" else side


def _check_size(img: np.ndarray, item: EvalItem, protocol: Protocol) -> None:
    """Refuse an image too small to restore (the network's size step) or to score under ``protocol`` (the
    SSIM window after ``crop_border``, LPIPS's trunk): :class:`ImageTooSmall`, a bad file like a corrupt one."""
    side = _least_side(protocol)
    if min(img.shape[:2]) < side:
        why = "after the protocol's crop" if side == SIZE_MULTIPLE else \
            f"to score with --ssim {protocol.ssim}, --crop-border {protocol.crop_border}" + \
            (f" and LPIPS ({protocol.lpips_net})" if protocol.lpips else "")
        if protocol.protocol == "reference":  # ``img`` is cropped to multiples of 8: say what the file needs
            file_side = smallest_file_side(protocol)
            shape = f"{img.shape[0]}x{img.shape[1]} after the crop to multiples of {SIZE_MULTIPLE}"
            need = f"at least {side}x{side} {why}, so a file of at least {file_side}x{file_side}"
        else:
            shape, need = f"{img.shape[0]}x{img.shape[1]}", f"at least {side}x{side} {why}"
        raise ImageTooSmall(f"{item.degraded or item.target}: {shape} is too small to evaluate ({need})")


def _summary(images: list[dict], has_lpips: bool) -> dict[str, Any]:
    """A row's numbers; a row without any scored image (all skipped, or stopped at its first) has
    ``count`` 0 and ``None`` for the rest."""
    if not images:
        return {"psnr": None, "ssim": None, "input_psnr": None, "input_ssim": None,
                **({"lpips": None} if has_lpips else {}), "count": 0,
                "best_psnr": None, "worst_psnr": None, "best_ssim": None, "worst_ssim": None,
                "seconds_per_image": None}
    p = np.array([r["psnr"] for r in images])
    s = np.array([r["ssim"] for r in images])
    out: dict[str, Any] = {"psnr": float(p.mean()), "ssim": float(s.mean()),
                           "input_psnr": float(np.mean([r["input_psnr"] for r in images])),
                           "input_ssim": float(np.mean([r["input_ssim"] for r in images]))}
    if has_lpips:
        out["lpips"] = float(np.mean([r["lpips"] for r in images]))
    out.update({
        "count": len(images),
        "best_psnr": {"name": images[int(p.argmax())]["name"], "psnr": float(p.max())},
        "worst_psnr": {"name": images[int(p.argmin())]["name"], "psnr": float(p.min())},
        "best_ssim": {"name": images[int(s.argmax())]["name"], "ssim": float(s.max())},
        "worst_ssim": {"name": images[int(s.argmin())]["name"], "ssim": float(s.min())},
        "seconds_per_image": seconds_per_image(images),
    })
    return out


def seconds_per_image(images: list[dict]) -> float:
    """The mean of the images' ``seconds``, leaving out an image whose time includes compiling the forward
    (``"compiling": true``, ``--compile``'s first and any that compiled again, e.g. for a new size: minutes against
    a fraction of a second, which made a 68-image row's s/img several times the real pace), unless no other image
    was timed."""
    timed = [r["seconds"] for r in images if not r.get("compiling")]
    return float(np.mean(timed or [r["seconds"] for r in images]))


class TileBar:
    """A progress bar (with ETA) over one image's tiles, below the images' bar: a large image restored in tiles
    takes minutes. Pass it as ``tile_progress``; :meth:`close` after the image. Nothing when not ``enabled``.
    ``also(done, total)`` is told every step too, bar or not (the app's page shows its own)."""

    def __init__(self, enabled: bool = True, also: Callable[[int, int], None] | None = None):
        self.enabled = enabled
        self.also = also
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.also is not None and total >= 2:
            self.also(done, total)
        if not self.enabled or total < 2:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc="tiles", unit="tile", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def compiled_image_line(seconds: float, shape: tuple[int, ...], name: str, first: bool) -> str:
    """What ``--compile`` says after an image (``shape`` ``(H, W, 3)``) whose forward compiled, once per image
    however many of its tiles compiled: the run's first,
    ``=> the first image (321x481) took 93.4 s, compiling the network's forward included``; a later one that
    compiled again (``first`` False: a new size), ``=> 12.png (480x320) took 41.2 s, compiling the network's
    forward again included``."""
    if first:
        return (f"=> the first image ({shape[0]}x{shape[1]}) took {seconds:.1f} s, compiling the network's forward "
                f"included")
    return f"=> {name} ({shape[0]}x{shape[1]}) took {seconds:.1f} s, compiling the network's forward again included"


def evaluate_set(model: nn.Module, eval_set: EvalSet, protocol: Protocol, device: torch.device,
                 save_dir: Path | None = None, savetar_dir: Path | None = None, lpips_metric: LPIPS | None = None,
                 fid_metric: FID | None = None, figs_dir: Path | None = None, fig_images: int = 3,
                 progress: bool = True, skip_bad_files: bool = False, output_prefix: str = "",
                 figure_name: str = "", done: Mapping[str, KeptImage] | None = None, bar_label: str = ""
                 ) -> dict[str, Any]:
    """Restore and score every image of one set; returns its entry of ``results["tasks"]``.

    ``bar_label``: the progress bar's label (default: the set's name).
    ``done``: the entries and notes, by image name, of images an earlier run scored (``--resume``,
    :func:`utils.eval.resuming.earlier_images`): kept as they are, not restored again (the target is saved into
    ``savetar_dir`` and the figure drawn from the saved restoration, as for the others).

    Each image saved into ``save_dir`` records where as ``"output"``: ``output_prefix`` (``save_dir``'s place
    under the results' folder, ``"<row>/"`` or ``""``) and its file name, so that a later run into the folder
    knows the files this one wrote.

    An image that cannot be read (:class:`ImageReadError`: corrupt, too large, too small) is left
    out when ``skip_bad_files`` (counted in ``skipped``, listed in ``skipped_files`` and
    ``bad_files``); otherwise it, like any other failure the user fixes, raises
    :class:`EvaluationStopped` carrying the row so far.
    """
    images, fig_rows, feats_out, feats_tar = [], [], [], []
    notes: list[str] = []  # automatic tiling, said once per image (console and results)
    bad = list(eval_set.bad_files)  # unreadable already when paired (skip_bad_files)
    names = output_names([item.name for item in eval_set.items])

    def row_so_far(fid: bool = True) -> dict[str, Any]:
        """The row of the images scored so far; ``fid`` False leaves its FID out (None)."""
        result = _summary(images, lpips_metric is not None)
        if fid_metric is not None:
            enough = fid and len(feats_out) > 1
            result["fid"] = FID.distance(np.concatenate(feats_out), np.concatenate(feats_tar)) if enough else None
        result["skipped"] = len(eval_set.skipped) + len(bad)
        skipped_files = list(eval_set.skipped) + [f"{b['name']} (unreadable: {b['error']})" for b in bad]
        if skipped_files:
            result["skipped_files"] = skipped_files
        if bad:
            result["bad_files"] = bad
        result["images"] = images
        if notes:
            result["notes"] = list(notes)
        return result

    def evaluate_item(item: EvalItem, out_name: str) -> None:
        """Restore, score and save one image (or note it as bad); its row is added once all is written."""
        tiles, warned = TileBar(progress), []
        compiles = compile_count(model, protocol.compile)
        try:
            try:  # before reading: a file replaced meanwhile leaves a digest --resume finds changed, never stale
                digests = input_digests(item)
            except OSError:  # said by the reading, naming the file
                digests = {}
            deg, tar = _load_item(item, protocol, warned)
            _check_size(deg, item, protocol)
            out, seconds = restore_array(model, deg, protocol, device, name=str(item.degraded or item.target),
                                         note=lambda msg: (notes.append(msg), tqdm.write(msg)), tile_progress=tiles)
        except UserError as exc:
            if skip_bad_files and isinstance(exc, ImageReadError):
                bad.append({"name": item.name, "error": str(exc)})
                return
            raise EvaluationStopped(str(exc), str(item.degraded or item.target), eval_set.name, row_so_far(),
                                    exc.exit_status) from exc
        finally:
            tiles.close()
        compiling = compile_count(model, protocol.compile) > compiles  # the first image, or one of a new size
        out8, tar8, deg8 = quantise(out, 8), to_8bit(tar), to_8bit(deg)
        try:
            p, s = image_metrics(out8, tar8, protocol.metric_space, protocol.ssim, protocol.crop_border)
            p_in, s_in = image_metrics(deg8, tar8, protocol.metric_space, protocol.ssim, protocol.crop_border)
        except ValueError as exc:
            raise ValueError(f"{eval_set.name}: {item.name}: {exc}") from exc
        row: dict[str, Any] = {"name": item.name, "psnr": p, "ssim": s, "input_psnr": p_in, "input_ssim": s_in}
        row.update(digests)  # --resume: still the files scored
        if lpips_metric is not None:
            row["lpips"] = lpips_metric(out8, tar8)
        row["seconds"] = seconds
        if compiling:  # its time includes compiling: kept out of the row's s/img (seconds_per_image)
            row["compiling"] = True
        if warned:  # scored as decoded, as the reference's Pillow reads it; the results say so
            row["decoder_warnings"] = warned
        if fid_metric is not None:  # before the files: once the restoration is written, only its record is left
            out_feats, tar_feats = fid_metric.features([out8]), fid_metric.features([tar8])

        def record() -> None:
            if images and images[-1] is row:
                return
            if fid_metric is not None:
                feats_out.append(out_feats)
                feats_tar.append(tar_feats)
            images.append(row)
            if figs_dir is not None and len(fig_rows) < fig_images:
                fig_rows.append((item.name, deg8, out8, tar8, p, s, p_in, s_in))

        saved = save_dir / out_name if save_dir is not None else None
        before = file_identity(saved) if saved is not None else None
        try:
            if saved is not None:
                write_image(saved, quantise(out, 16 if deg.dtype == np.uint16 else 8))
                row["output"] = output_prefix + out_name
            if savetar_dir is not None:
                write_image(savetar_dir / out_name, tar8)
                row["target_sha256"] = file_digest(savetar_dir / out_name)  # --resume: still the tester's own
            record()
        except BaseException as exc:  # Ctrl-C, a full disk: the scores so far are kept, not lost with a traceback
            if saved is not None and file_identity(saved) not in (None, before):  # the restoration is in --save
                row["output"] = output_prefix + out_name  # (a stop in the folder's fsync): recorded with its file
                record()
            if isinstance(exc, (UserError, OSError)):
                raise _write_stopped(exc, str(item.degraded or item.target), eval_set.name, row_so_far()) from exc
            raise
        if compiling:  # said once the image is recorded: a stdout that closed meanwhile loses nothing
            tqdm.write(compiled_image_line(seconds, deg.shape, item.name, first=compiles == 0))

    def keep_item(item: EvalItem, out_name: str, kept: KeptImage) -> None:
        """An image the earlier run scored: its entry and notes kept, its target saved and its figure row drawn as
        for the others (read again: the restoration from its file)."""
        image = kept.image
        try:
            if (savetar_dir is not None and not (savetar_dir / out_name).is_file()) or \
                    (figs_dir is not None and len(fig_rows) < fig_images and save_dir is not None):
                deg, tar = _load_item(item, protocol)
                if savetar_dir is not None:
                    write_image(savetar_dir / out_name, to_8bit(tar))
                    image = {**image, "target_sha256": file_digest(savetar_dir / out_name)}
                if figs_dir is not None and len(fig_rows) < fig_images and save_dir is not None:
                    out8 = to_8bit(_read_kept(save_dir / out_name))
                    fig_rows.append((item.name, to_8bit(deg), out8, to_8bit(tar), image["psnr"], image["ssim"],
                                     image["input_psnr"], image["input_ssim"]))
        except UserError as exc:  # as at an image evaluated now: the scores so far are written, not lost
            raise EvaluationStopped(str(exc), str(item.degraded or item.target), eval_set.name, row_so_far(),
                                    exc.exit_status) from exc
        except OSError as exc:
            raise _write_stopped(exc, str(item.degraded or item.target), eval_set.name, row_so_far()) from exc
        images.append(image)
        notes.extend(kept.notes)

    done = done or {}
    work = list(zip(eval_set.items, names))
    current = eval_set.items[0] if eval_set.items else None  # the image at work (the progress bar writes too)
    try:
        # kept images count as done from the start: the bar's rate and ETA are the images restored now
        with tqdm(total=len(work), initial=sum(item.name in done for item, _ in work), desc=bar_label or eval_set.name,
                  unit="img", disable=not progress, leave=True) as bar:
            for current, out_name in work:
                if current.name in done:
                    keep_item(current, out_name, done[current.name])
                    continue
                evaluate_item(current, out_name)
                bar.update(1)
    except (KeyboardInterrupt, OutputClosed) as exc:  # Ctrl-C, | head: the images finished so far are kept
        message, status = why_stopped(exc)
        where = str(current.degraded or current.target) if current is not None else eval_set.name
        raise EvaluationStopped(message, where, eval_set.name, row_so_far(), status) from exc
    try:
        result = row_so_far()
    except (KeyboardInterrupt, OutputClosed) as exc:  # Ctrl-C while FID is computed: the row's scores are kept
        message, status = why_stopped(exc)
        raise EvaluationStopped(message, eval_set.name, eval_set.name, row_so_far(fid=False), status) from exc
    if figs_dir is not None and fig_rows:
        figure = figs_dir / (figure_name or figure_names([eval_set.name])[0])
        try:
            result["figure"] = str(save_comparison_figure(fig_rows, figure, eval_set.name,
                                                                protocol.scores_caption()))
            result["figure_sha256"] = file_digest(Path(result["figure"]))  # --resume: still the tester's own
        except (UserError, OSError) as exc:  # the row's scores are kept though its figure is not
            raise _write_stopped(exc, str(figure), eval_set.name, result) from exc
        except (KeyboardInterrupt, OutputClosed) as exc:  # Ctrl-C while drawing: so are they
            message, status = why_stopped(exc)
            raise EvaluationStopped(message, str(figure), eval_set.name, result, status) from exc
    return result


class OverallClock:
    """How far a run of several sets has got and about how long the rest will take: the time per pixel of the
    sets done so far times the pixels of the sets to come (from the files' headers; sets of other image sizes,
    BSD68's 481x321 and GoPro's 1280x720, take other times per image). Images kept by ``--resume`` count in
    neither."""

    def __init__(self, sets: Sequence[EvalSet], earlier: EarlierImages):
        self.pixels = [sum(_pixels(item) for item in s.items if item.name not in earlier.get(s.name, {}))
                       for s in sets]
        self.images = [sum(item.name not in earlier.get(s.name, {}) for item in s.items) for s in sets]
        self.start = time.perf_counter()

    def line(self, sets_done: int) -> str:
        """``=> 2 of 5 rows done in 0:03:10; about 1:02:00 left for 1,226 images in 3 rows ...``."""
        elapsed = time.perf_counter() - self.start
        done, left = sum(self.pixels[:sets_done]), sum(self.pixels[sets_done:])
        eta = f"about {tqdm.format_interval(elapsed * left / done)} left" if done else "time left unknown"
        return (f"=> {sets_done} of {len(self.pixels)} rows done in {tqdm.format_interval(elapsed)}; {eta} for "
                f"{counted(sum(self.images[sets_done:]), 'image')} in {counted(len(self.pixels) - sets_done, 'row')} "
                f"(at the time per pixel so far)")


def _pixels(item: EvalItem) -> int:
    """The pixels of an item's degraded image (its target's for a denoise item), from the header; 0 when it
    cannot be read (the evaluation says why)."""
    try:
        h, w = image_size(item.degraded or item.target)
    except (UserError, OSError):
        return 0
    return h * w


def perceptual_metrics(protocol: Protocol, device: torch.device) -> tuple[LPIPS | None, FID | None]:
    """``(LPIPS, FID)`` as ``protocol`` asks (None for each not asked); a missing weights file is
    :class:`utils.eval.metrics.MetricUnavailable`, before anything runs."""
    return (LPIPS(protocol.lpips_net, device) if protocol.lpips else None,
            FID(device) if protocol.fid else None)


def evaluate_sets(model: nn.Module, sets: Sequence[EvalSet], protocol: Protocol | None = None,
                  device: torch.device | str | None = None, save_dir: str | Path | None = None,
                  savetar_dir: str | Path | None = None, figs_dir: str | Path | None = None,
                  fig_images: int = 3, subfolders: bool = True, progress: bool = True,
                  model_info: Mapping[str, Any] | None = None, skip_bad_files: bool = False,
                  metrics: tuple[LPIPS | None, FID | None] | None = None,
                  earlier: EarlierImages | None = None) -> dict[str, Any]:
    """Evaluate every set; returns ``{"protocol": {...}, "tasks": {row: {...}}, "average": {...}}``.

    Restorations go to ``save_dir/<row>/`` (``save_dir`` itself when ``subfolders`` is False), each image's
    ``"output"`` saying which file under ``save_dir`` (``<row>/<name>.png``),
    the targets as scored to ``savetar_dir`` likewise, figures to ``figs_dir/<row>.png``.
    An image that stops the run raises :class:`EvaluationStopped` whose ``results`` hold the rows
    done, the stopped row so far, and ``"partial": {"row", "file", "error"}``; ``skip_bad_files``
    as in :func:`evaluate_set`. ``metrics``: the LPIPS and FID :func:`perceptual_metrics` built already.
    ``earlier``: per row, the images an earlier run scored that are kept (``--resume``; ``results["resumed"]``
    counts them), each row's ``done``.
    """
    protocol = (protocol or Protocol()).validate()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = prepare_for_inference(model.to(device))
    protocol = protocol.with_budget(device)  # automatic tiling measures free memory once, with the model loaded
    # Perceptual metrics are built first: a missing weights file fails before anything runs.
    lpips_metric, fid_metric = metrics if metrics is not None else perceptual_metrics(protocol, device)
    results: dict[str, Any] = {"protocol": run_description(protocol, device, model_info), "tasks": {}}
    earlier = earlier or {}
    if earlier:
        results["resumed"] = {"images_kept": sum(len(row) for row in earlier.values())}

    def where(base, name):
        if base is None:
            return None
        return Path(base) / name if subfolders else Path(base)

    figures = figure_names([s.name for s in sets])
    clock = OverallClock(sets, earlier) if progress and len(sets) > 1 else None
    for k, s in enumerate(sets):
        try:
            try:
                if clock and k:  # how far the rows before got: a stop while it is said is a stop at this row
                    tqdm.write(clock.line(k))
            except (KeyboardInterrupt, OutputClosed) as exc:
                message, status = why_stopped(exc)
                raise EvaluationStopped(message, s.name, s.name, None, status) from exc
            results["tasks"][s.name] = evaluate_set(
                model, s, protocol, device, where(save_dir, s.name), where(savetar_dir, s.name), lpips_metric,
                fid_metric, Path(figs_dir) if figs_dir is not None else None, fig_images, progress, skip_bad_files,
                output_prefix=f"{s.name}/" if subfolders else "", figure_name=figures[k], done=earlier.get(s.name),
                bar_label=f"[{k + 1}/{len(sets)}] {s.name}" if clock else "")
        except EvaluationStopped as stop:
            results["tasks"][s.name] = {**(stop.row or {**_summary([], protocol.lpips), "images": []}),
                                        "partial": True}
            results["average"] = average_row(results["tasks"])
            results["partial"] = {"row": s.name, "file": stop.file, "error": str(stop),
                                  "rows_not_evaluated": [t.name for t in sets[k + 1:]]}
            stop.results = results
            raise
    results["average"] = average_row(results["tasks"])
    results["paper_average"] = paper_averages(results["tasks"], results["protocol"])
    return results


def run_description(protocol: Protocol, device: torch.device | str, model_info: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """How a run scores (``results["protocol"]``): the protocol, the device and the model."""
    desc = protocol.describe()
    desc["device"] = str(device)
    desc.update(dict(model_info or {}))
    return desc


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
    for key in ("input_psnr", "input_ssim", "lpips"):
        if all(r.get(key) is not None for r in rows):
            avg[key] = float(np.mean([r[key] for r in rows]))
    avg["rows"] = len(rows)
    return avg


def restore_files(model: nn.Module, inputs: Sequence[Path], save_dir: str | Path, protocol: Protocol | None = None,
                  device: torch.device | str | None = None, progress: bool = True,
                  skip_bad_files: bool = False,
                  tile_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Restore user images (no targets, no metrics) at their full size into ``save_dir``.

    Every image is reflect-padded to multiples of 8 and cropped back; 16-bit inputs give 16-bit PNGs,
    named by :func:`utils.eval.outputs.output_names`. Unlike benchmark images, these are user photos:
    their EXIF orientation tag is applied, so the restoration is saved upright (a PNG has no tag to
    rotate it later). Returns ``{"name", "input", "output", "seconds"}`` per image (``input``: the path as given,
    which tells apart two inputs of one name from two folders; ``"compiling": true`` when its ``seconds`` include
    compiling the forward); an unreadable image gets
    ``{"name", "input", "skipped": why}`` with ``skip_bad_files``, else raises :class:`EvaluationStopped`
    whose ``row`` is ``{"restored": [the entries so far]}``. ``tile_progress(done, total)``: told each tile of
    an image restored in tiles (:class:`TileBar`'s ``also``).
    """
    protocol = (protocol or Protocol()).validate()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = prepare_for_inference(model.to(device))
    protocol = protocol.with_budget(device)  # automatic tiling measures free memory once, with the model loaded
    done = []

    def restore_one(path: Path, out_name: str) -> None:
        """Restore and save one image (or note it as unreadable); its entry is added once the file is written."""
        said: list[str] = []
        tiles, warned = TileBar(progress, also=tile_progress), []
        compiles = compile_count(model, protocol.compile)
        try:
            img = read_image(path, exif=True, decoder_warnings=warned)
            out, seconds = restore_array(model, img, protocol, device, name=str(path),
                                         note=lambda msg: (said.append(msg), tqdm.write(msg)), tile_progress=tiles)
        except UserError as exc:
            if skip_bad_files and isinstance(exc, ImageReadError):
                done.append({"name": path.name, "input": str(path), "skipped": str(exc)})
                return
            raise EvaluationStopped(str(exc), str(path), "input", {"restored": done}, exc.exit_status) from exc
        finally:
            tiles.close()
        compiling = compile_count(model, protocol.compile) > compiles  # the first image, or one of a new size
        lost = lost_on_restoring(path)
        dest = Path(save_dir) / out_name
        entry = {"name": path.name, "input": str(path), "output": str(dest), "seconds": seconds,
                 **({"compiling": True} if compiling else {}), **({"note": said[0]} if said else {}),
                 **({"not_kept": lost} if lost else {}),
                 **({"decoder_warnings": warned} if warned else {})}
        before = file_identity(dest)
        try:
            write_image(dest, quantise(out, 16 if img.dtype == np.uint16 else 8))
            done.append(entry)
        except BaseException as exc:  # Ctrl-C, a full disk: the record of the images restored so far is kept
            if file_identity(dest) not in (None, before) and not (done and done[-1] is entry):
                done.append(entry)  # written, stopped in the folder's fsync: recorded with its file
            if isinstance(exc, (UserError, OSError)):
                raise _write_stopped(exc, str(path), "input", {"restored": done}) from exc
            raise
        if compiling:  # said once the image is recorded: a stdout that closed meanwhile loses nothing
            tqdm.write(compiled_image_line(seconds, img.shape, path.name, first=compiles == 0))

    current = inputs[0] if inputs else None  # the image at work (the progress bar writes too)
    try:
        for current, out_name in tqdm(list(zip(inputs, output_names([p.name for p in inputs]))), desc="restore",
                                      unit="img", disable=not progress):
            restore_one(current, out_name)
    except (KeyboardInterrupt, OutputClosed) as exc:  # Ctrl-C, | head: the record so far is kept
        message, status = why_stopped(exc)
        raise EvaluationStopped(message, str(current), "input", {"restored": done}, status) from exc
    for what, why in NOT_KEPT_WHY.items():
        names = [e["name"] for e in done if what in e.get("not_kept", ())]
        if names:
            try:
                are = one_or_many(len(names), "is", "are")
                tqdm.write(f"note: the {what} of {counted(len(names), 'image')} {are} not kept in the restored PNG "
                           f"({why}):{listing(names)}")
            except OutputClosed:  # nobody reads on: the caller still records every image restored
                break
    return done
