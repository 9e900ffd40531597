"""Evaluate a BaryIR (or Restormer) checkpoint, or restore your own images.

Three modes, and defaults for running it with no arguments at all:

    # as the reference's `python tester_bary.py`: the authors' checkpoint
    # (checkpoint/model_allBaryNet__61_1.0_5D.pt) if present, else the newest under checkpoint/,
    # on every paper task present under data/test; each choice is printed
    python tester_bary.py

    # the benchmark (docs/METHOD.md §4 layout under --data-root), one table for all tasks
    python tester_bary.py --model checkpoint/model.pth --data-root data/test \\
        --tasks denoise_15 denoise_25 denoise_50 derain dehaze deblur lowlight

    # one folder of degraded images against their targets (the reference's flags)
    python tester_bary.py --model ckpt.pth --degset data/test/derain/Rain100L/input/ \\
        --tarset data/test/derain/Rain100L/target/ --save results/derain/OUT --savetar results/derain/TAR

    # restore images without targets (no metrics)
    python tester_bary.py --model ckpt.pth --input photos/ --save restored/

Results (the protocol, a row per task or set, per-image numbers) go to
``<save>/results.{json,csv,md}``; restored PNGs to ``<save>/<row>/`` (``--tasks``) or ``<save>/``
(``--degset``/``--input``), named ``NAME.png`` after the input ``NAME.EXT`` (inputs sharing a name:
``a.png`` -> ``a.png``, ``a.jpg`` -> ``a_jpg.png``). ``--input`` photos are turned upright by their
EXIF orientation tag; benchmark images are read as stored, as the reference reads them. The logic
lives in :mod:`utils.eval` (tasks, protocol, evaluation, report, outputs).

Safety: the output folders are checked before the model is loaded (writable; not equal to or inside
a folder the run reads, unless ``--overwrite``); files are written whole then renamed into place,
so a symbolic link at an output path is replaced, never written through. An unreadable image stops
the run after writing the results so far (marked partial), or with ``--skip-bad-files`` is left out
and listed. Every failure the user can fix is one ``error:`` line and a non-zero exit status (2 for
flags that cannot work); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from net.presets import BACKBONES, PRESETS
from utils.checkpoints import CHECKPOINT_DIR, REFERENCE_MODEL_NAME, default_model
from utils.cli import one_spelling
from utils.compiled import COMPILE_MODES, CompileError, check_compile
from utils.data.doctor import tester_check
from utils.data.image_io import CV2_MAX_PIXELS, MAX_PIXELS, ImageReadError, pixel_limit
from utils.data.pairing import PairingError
from utils.errors import OneLineArgumentParser, UsageError, UserError, run_main
from utils.eval.evaluation import EvaluationStopped, ImageTooSmall, evaluate_sets, restore_files
from utils.eval.inference import PRECISIONS, check_precision
from utils.eval.metrics import METRIC_SPACES, SSIM_KINDS
from utils.eval.outputs import check_outputs_apart, check_outputs_outside_inputs, check_writable_folder, write_text
from utils.eval.paper import SETTINGS
from utils.eval.protocol import PROTOCOLS, Protocol, load_model
from utils.eval.report import format_report, write_results
from utils.eval.tasks import (
    PAPER_TASKS,
    EvalSet,
    find_task_sets,
    input_files,
    paired_set,
    paper_layout,
    present_paper_tasks,
    task_layout,
)
from utils.files import json_text, keep_aside
from utils.output_lock import OutputLock
from utils.runtime import apply_gpus_flag, pick_device, tune_cpu_allocator

REFERENCE_MODEL = f"{CHECKPOINT_DIR}/{REFERENCE_MODEL_NAME}"


class RunStopped(UserError):
    """The run stopped at an image after writing the results so far; the exit status is the failure's."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def _at_least(low: int, meaning: str = ""):
    """An argparse type: an integer >= ``low`` (``meaning`` explains the special values in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{meaning}, got {value}")
        return value
    return parse


def _path(text: str) -> str:
    """An argparse type for the folders written into or read as a whole: a non-empty path (``--save "$UNSET"``
    would otherwise write into the current folder). Flags whose empty value means "not given" keep it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file or folder (or leave the flag out for its "
                                         "default)")
    return text


def _pixel_count(text: str) -> int:
    value = _at_least(1)(text)
    if value > CV2_MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"at most {CV2_MAX_PIXELS} (OpenCV's own limit), got {value}")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description="BaryIR evaluation and restoration", add_help=add_help,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to evaluate (one of --tasks, --degset/--tarset, --input; none: every "
                                     "paper task present under --data-root)")
    what.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                      help=f"benchmark tasks under --data-root: {' '.join(PAPER_TASKS)}, denoise_<sigma> for any "
                           f"integer sigma, any other folder NAME with NAME/{{input,target}}, or 'all' (every paper "
                           f"task present)")
    what.add_argument("--data-root", type=_path, default="data/test",
                      help="benchmark root (layout of docs/METHOD.md §4)")
    what.add_argument("--degset", default=None,
                      help="folder of degraded images (paired by name with --tarset)")
    what.add_argument("--tarset", default=None, help="folder of target images")
    what.add_argument("--input", default=None, metavar="FILE|DIR",
                      help="restore these images (no targets, no metrics) into --save")
    what.add_argument("--skip-unpaired", action="store_true",
                      help="leave out (and count) degraded images without a same-name target or of another size, "
                           "instead of stopping with the list")
    what.add_argument("--max-images", type=_at_least(0, " (0 = all images)"), default=0, metavar="N",
                      help="evaluate only the first N (>= 1) images of each set; 0 = all")
    what.add_argument("--compare-paper", choices=sorted(SETTINGS), default=None,
                      help="under the table, each of the paper's 3D or 5D columns beside the published BaryIR "
                           "PSNR/SSIM and the difference")
    what.add_argument("--skip-bad-files", action="store_true",
                      help="leave out (count, and name under the table) images that cannot be read: corrupt, "
                           "larger than --max-pixels or smaller than 8x8; without it the first such image stops "
                           "the run after writing the results so far, marked partial")
    what.add_argument("--max-pixels", type=_pixel_count, default=MAX_PIXELS, metavar="N",
                      help="refuse images of more than N pixels (height x width, read from the file's header "
                           f"before decoding; at most {CV2_MAX_PIXELS})")
    what.add_argument("--check-data", action="store_true",
                      help="only check the images the other flags would read (counts against the paper's sets, "
                           "pairs, sizes, truncated files), print the report and exit: 0 when all is well, else 1; "
                           "no model is needed or loaded")
    what.add_argument("--dry-run", action="store_true",
                      help="find the images, check the outputs and load the model, then stop: nothing is restored "
                           "or written")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None,
                       help=f"checkpoint: the project's, a plain state dict, or a reference BaryIR checkpoint "
                            f"({{'BaryIR': module}}); also a run's output folder or its 'latest' pointer (the "
                            f"newest checkpoint). Default: {REFERENCE_MODEL} (the reference's) if it exists, "
                            f"else the newest checkpoint under {CHECKPOINT_DIR}/")
    model.add_argument("--backbone", default=None, choices=sorted(BACKBONES),
                       help="network (default: the checkpoint's, else BaryNet)")
    model.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="configuration for checkpoints that do not carry one (default paper); ignored, with a "
                            "note, for the trainer's checkpoints, which carry their own")
    model.add_argument("--dim", type=_at_least(1), default=None, help="override the width")
    model.add_argument("--num-blocks", type=int, nargs=4, default=None, help="override blocks per level")
    model.add_argument("--num-refinement-blocks", type=int, default=None, help="override refinement blocks")
    model.add_argument("--heads", type=int, nargs=4, default=None, help="override attention heads per level")

    proto = parser.add_argument_group("protocol")
    proto.add_argument("--protocol", default="reference", choices=PROTOCOLS,
                       help="reference: crop to multiples of 8 as the paper; pad: reflect-pad, crop back, score "
                            "every pixel")
    proto.add_argument("--metric-space", default="rgb", choices=METRIC_SPACES,
                       help="rgb (reference) or y (BT.601 luma with offset, BasicSR)")
    proto.add_argument("--ssim", default="skimage", choices=SSIM_KINDS,
                       help="skimage (7x7 uniform, reference) or gaussian (11x11 sigma 1.5, BasicSR/MATLAB)")
    proto.add_argument("--crop-border", type=int, default=0, help="pixels dropped on each side before scoring")
    proto.add_argument("--lpips", action="store_true",
                       help="also LPIPS (AlexNet; its ImageNet weights must be in $TORCH_HOME/hub/checkpoints)")
    proto.add_argument("--fid", action="store_true",
                       help="also FID per set (needs the optional pytorch-fid package and its weights)")
    proto.add_argument("--noise-seed", type=int, default=0,
                       help="base of the per-image noise seeds of denoise tasks (0 = this project's fixed inputs; "
                            "the reference draws unseeded noise, so no published noisy inputs exist)")

    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = CUDA if available")
    run.add_argument("--cuda", action="store_true", help="reference flag: run on the GPU (same as --device cuda)")
    run.add_argument("--gpus", default=None, help="reference flag: GPU ids; the first is used")
    run.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (fp16: GPU only)")
    run.add_argument("--tile", type=int, default=None,
                     help="tiled inference with TxT tiles (multiple of 8): bounded memory for large images; by "
                          "default an image that would not fit the free memory is tiled automatically (said on "
                          "one line); 0: never tile")
    run.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles (blended)")
    run.add_argument("--tile-batch", type=_at_least(1), default=4, help="tiles per forward pass")
    run.add_argument("--compile", default="off", choices=COMPILE_MODES,
                     help="torch.compile the network's forward with this mode (reduce-overhead: CUDA graphs, GPU "
                          "only). Each new input size compiles again (minutes the first time, cached for later "
                          "runs): worth it for tiles or many same-sized images; see BENCHMARKS.md")
    run.add_argument("--debug", action="store_true",
                     help="show the full traceback of a failure instead of one error: line")

    out = parser.add_argument_group("outputs")
    out.add_argument("--save", type=_path, default="results/test",
                     help="restored images (in <save>/<row>/ with --tasks) and results.{json,csv,md}; an input "
                          "NAME.EXT gives NAME.png, and inputs sharing a NAME give NAME.png (the .png one) and "
                          "NAME_EXT.png (a.jpg -> a_jpg.png); results of an earlier run there are replaced")
    out.add_argument("--savetar", default=None,
                     help="also save the targets as scored (cropped, 8-bit) here")
    out.add_argument("--overwrite", action="store_true",
                     help="allow --save/--savetar to be, or be inside, a folder the images are read from (the "
                          "files there with the output names are replaced); refused otherwise")
    out.add_argument("--no-images", action="store_true", help="do not write restored images")
    out.add_argument("--figs", action="store_true", help="write a degraded | restored | target figure per row")
    out.add_argument("--figs-dir", type=_path, default="results/figs",
                     help="where --figs writes (default results/figs; the repository's figs/ holds its documentation)")
    out.add_argument("--fig-images", type=_at_least(1), default=3, help="images per figure")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return one_spelling(parser)


def _protocol(args) -> Protocol:
    try:
        return Protocol(protocol=args.protocol, metric_space=args.metric_space, ssim=args.ssim,
                        crop_border=args.crop_border, precision=args.precision, tile=args.tile,
                        tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, lpips=args.lpips, fid=args.fid,
                        noise_seed=args.noise_seed, compile=args.compile).validate()
    except ValueError as exc:  # the message names the flag and the fix
        raise UsageError(str(exc)) from exc


def _fail(message: str) -> None:
    """A usage error the user fixes: raised as :class:`UsageError`, which ``run_main`` prints as one
    ``error:`` line with exit status 2 (no traceback without --debug)."""
    raise UsageError(message)


def apply_defaults(args) -> bool:
    """Fill in ``--model`` and the tasks when not given, printing each choice and why (as the reference's
    tester, which needs no arguments); a missing checkpoint or benchmark is a one-line error, exit 2.
    Returns whether the tasks were chosen here."""
    if not args.model:
        path, why = default_model()
        if path is None:
            _fail(f"no checkpoint given and none found under {CHECKPOINT_DIR}/ — put the authors' "
                  f"{REFERENCE_MODEL_NAME} there, train one with trainer_bary.py, or pass --model PATH")
        args.model = str(path)
        print(f"=> no --model given: using {path.as_posix()} ({why})")
    if not (args.tasks or args.degset or args.tarset or args.input):
        present = present_paper_tasks(args.data_root)
        if not present:
            _fail(f"no test data found under {Path(args.data_root).as_posix()}/ (none of the paper tasks' folders) "
                  f"— put the benchmarks there as {', '.join(paper_layout(args.data_root))}; or pass --data-root "
                  f"DIR, --degset/--tarset or --input")
        args.tasks = present
        print(f"=> no --tasks given: evaluating the paper tasks present under {Path(args.data_root).as_posix()}: "
              f"{', '.join(present)}")
        return True
    return False


def _check_flags(args) -> None:
    """Flags that cannot work together: :class:`UsageError` (exit status 2) before anything runs."""
    modes = [m for m, on in (("--tasks", args.tasks), ("--degset/--tarset", args.degset or args.tarset),
                             ("--input", args.input)) if on]
    if len(modes) > 1:
        _fail(f"choose one of --tasks, --degset/--tarset or --input (got {', '.join(modes)})")
    if bool(args.degset) != bool(args.tarset):
        _fail("--degset and --tarset go together: pass both (degraded images and their targets)")
    if args.max_images is not None and args.max_images < 0:
        _fail(f"--max-images must be >= 1 (or 0 for all images), got {args.max_images}")
    if args.input and args.savetar:
        _fail("--savetar saves targets, and --input has none: drop --savetar")
    if args.input and args.max_images:
        _fail("--max-images cuts benchmark sets, and --input restores every image given: drop --max-images, or "
              "pass fewer images")


def _find_sets(args, tasks_defaulted: bool) -> list[EvalSet]:
    """The sets to evaluate (``--degset``/``--tarset`` or ``--tasks``), cut to ``--max-images``."""
    if args.degset:
        row = Path(os.path.abspath(args.degset)).name  # the folder's own name, even for --degset .
        sets = [paired_set(row, args.degset, args.tarset, skip_unpaired=args.skip_unpaired,
                           skip_bad_files=args.skip_bad_files)]
    else:
        notes: list[str] = []
        try:
            sets = find_task_sets(args.tasks, args.data_root, args.skip_unpaired, args.skip_bad_files, notes)
        except ValueError as exc:
            if not isinstance(exc, PairingError):  # a --tasks name that cannot be a folder
                raise UsageError(str(exc)) from exc
            if not tasks_defaulted:
                raise
            _fail(f"{exc} (found while evaluating every paper task present under {args.data_root}; pass --tasks "
                  f"to choose)")
        for note in dict.fromkeys(notes):  # once per folder, not once per noise level
            print(f"warning: {note}", file=sys.stderr)
    if args.max_images:
        for s in sets:
            s.items = s.items[:args.max_images]
    return sets


def _input_folders(args, sets: list[EvalSet]) -> list[Path]:
    """Every folder the run reads images from; with ``--tasks``, the task folders under --data-root too."""
    folders = [Path(args.input)] if args.input and Path(args.input).is_dir() else []
    for s in sets:
        for item in s.items:
            folders += [item.target.parent] + ([item.degraded.parent] if item.degraded is not None else [])
        if not args.degset:
            folders.append(Path(args.data_root) / task_layout(s.task).folder)
    return list(dict.fromkeys(folders))


def _check_outputs(args, sets: list[EvalSet], create: bool = True) -> None:
    """Before the model is loaded: no output folder inside an input folder (unless --overwrite), none
    reached through a symbolic link out of its base, and every one creatable and writable (created and
    probed, or with ``create=False`` judged from the nearest existing folder, writing nothing)."""
    rows = [s.name for s in sets] if not args.degset else []

    def written(base: str) -> list[Path]:
        return [Path(base)] + [Path(base) / r for r in rows]

    def image_folders(base: str) -> list[Path]:  # where the image files go: <base>/<row>, or <base> itself
        return [Path(base) / r for r in rows] or [Path(base)]

    outputs = {"--save": (Path(args.save), written(args.save) if not args.no_images else [Path(args.save)])}
    images = {"--save": image_folders(args.save) if not args.no_images else []}
    if args.savetar:
        outputs["--savetar"] = (Path(args.savetar), written(args.savetar))
        images["--savetar"] = image_folders(args.savetar)
    if args.figs:
        outputs["--figs-dir"] = (Path(args.figs_dir), [Path(args.figs_dir)])
        images["--figs-dir"] = [Path(args.figs_dir)]
    single = [Path(args.input).parent] if args.input and not Path(args.input).is_dir() else []
    check_outputs_outside_inputs(outputs, _input_folders(args, sets), overwrite=args.overwrite, file_folders=single)
    check_outputs_apart(images)
    for flag, (base, _) in outputs.items():
        check_writable_folder(base, flag, create=create)


def _stopped(stop: EvaluationStopped, written: str, kept: Path | None = None) -> RunStopped:
    """The one error line of a run stopped at an image: the failure, where the partial results are (and where
    the earlier complete ones went, ``kept``), the fix."""
    if isinstance(stop.__cause__, ImageTooSmall):
        hint = "; pass --skip-bad-files to leave images too small for these flags out, or score with other flags"
    elif isinstance(stop.__cause__, ImageReadError):
        hint = "; pass --skip-bad-files to leave unreadable images out"
    else:
        hint = ""
    earlier = f" (the earlier results there were moved to {kept})" if kept else ""
    return RunStopped(f"{stop} — the run stopped there; the results so far, marked partial, are in {written}"
                      f"{earlier}{hint}", stop.exit_status)


def _keep_earlier_results(save: Path) -> Path | None:
    """Before a stopped run writes its partial record: move the results.* an earlier run left in ``save`` into
    ``<save>/results.before-<time>/``, so a run that stopped after a few images (or none) does not replace the
    only record of the images an earlier run restored there. None when there were none."""
    earlier = [save / f"results.{ext}" for ext in ("json", "csv", "md") if (save / f"results.{ext}").is_file()]
    return keep_aside(earlier, save / "results") if earlier else None


def _nothing_scored(what: str, skipped: int, written: str) -> UserError:
    return UserError(f"{what}: none of the {skipped} image(s) could be used (each is listed with its reason in "
                     f"{written}); fix or replace them")


def main(args) -> dict:
    """Run the tester as ``args`` say; returns the results (also written to ``<save>/results.*``).

    Failures the user fixes raise :class:`utils.errors.UserError` subclasses (``__main__`` prints
    them as one ``error:`` line through :func:`utils.errors.run_main`).
    """
    _check_flags(args)
    if getattr(args, "check_data", False):  # the data doctor: no model, nothing written
        return tester_check(args)
    # the flags first (device, protocol, compile mode), then the files they name
    gpus_note = apply_gpus_flag(args.gpus)  # the reference's meaning of --gpus
    if gpus_note:
        print(f"warning: {gpus_note}", file=sys.stderr)
    try:
        device = pick_device(args.device, args.cuda)
    except (ValueError, RuntimeError) as exc:  # its messages name the flag and the fix
        raise UsageError(str(exc)) from exc
    try:
        check_precision(device, args.precision)
    except ValueError as exc:  # fp16 on the CPU: said before anything is written
        raise UsageError(str(exc)) from None
    protocol = _protocol(args)
    try:
        check_compile(protocol.compile, device)
    except CompileError as exc:
        raise UsageError(str(exc)) from exc
    tasks_defaulted = apply_defaults(args)
    save = Path(args.save)
    progress = not args.no_progress
    with pixel_limit(args.max_pixels):
        # What to read and where to write are settled before the model is loaded or anything restored.
        inputs = input_files(args.input) if args.input else []
        sets = [] if args.input else _find_sets(args, tasks_defaulted)
        _check_outputs(args, sets, create=not args.dry_run)
        model, info = load_model(args.model, args.backbone, args.preset, dim=args.dim, num_blocks=args.num_blocks,
                                 num_refinement_blocks=args.num_refinement_blocks, heads=args.heads)
        if "note" in info:
            print(f"=> {info.pop('note')}")
        if args.dry_run:
            count = len(inputs) if args.input else sum(len(s.items) for s in sets)
            rows = "" if args.input else f" in {len(sets)} row(s) ({', '.join(s.name for s in sets)})"
            print(f"=> dry run: {info['model']} ({info['backbone']}) loads and {count} image(s){rows} are found; "
                  f"outputs would go to {save}. Nothing was restored or written; drop --dry-run to run")
            return {"dry_run": True, "model": info, "images": count, "rows": [s.name for s in sets]}
        # one tester at a time writes a --save: two would mix their images under one record
        with OutputLock(save, "--save", "tester", fix="choose another --save"):
            if args.input:
                return _restore_inputs(args, model, info, inputs, protocol, device, save, progress)
            return _evaluate(args, model, info, sets, protocol, device, save, progress)


def _evaluate(args, model, info, sets: list[EvalSet], protocol: Protocol, device, save: Path, progress: bool) -> dict:
    """``--tasks``/``--degset``: restore and score every set, print the table and write ``results.*`` into
    ``--save`` (also when stopped, marked partial)."""
    try:
        results = evaluate_sets(model, sets, protocol, device, save_dir=None if args.no_images else save,
                                savetar_dir=args.savetar, figs_dir=args.figs_dir if args.figs else None,
                                fig_images=args.fig_images, subfolders=not args.degset, progress=progress,
                                model_info=info, skip_bad_files=args.skip_bad_files)
        _record_flags(results, args)
    except EvaluationStopped as stop:
        _record_flags(stop.results, args)
        print(format_report(stop.results))
        kept = _keep_earlier_results(save)
        paths = write_results(stop.results, save)
        raise _stopped(stop, f"{paths['json']} (.csv, .md)", kept) from stop
    print(format_report(results))
    paths = write_results(results, save)
    print(f"\nresults: {paths['json']}, {paths['csv']}, {paths['md']}")
    if not any(r["count"] for r in results["tasks"].values()):
        raise _nothing_scored(", ".join(results["tasks"]), sum(r.get("skipped", 0) for r in results["tasks"].values()),
                              str(paths["md"]))
    return results


def _record_flags(results: dict, args) -> None:
    """What the results must say beside the protocol: the paper table asked for, and a cut to --max-images
    (each set's first N images: its numbers are not the whole set's)."""
    if args.compare_paper:
        results["compare_paper"] = args.compare_paper
    if args.max_images:
        results["protocol"]["max_images"] = args.max_images


def _restore_inputs(args, model, info, inputs, protocol, device, save: Path, progress: bool) -> dict:
    """``--input``: restore the images into ``--save`` and write ``results.json`` (also when stopped).

    Nothing is scored, so the record says only what was done: the model, how it ran, and each
    image's output file and time (no metrics protocol, no tasks).
    """
    how = {"device": str(device), "precision": protocol.precision, "tile": protocol.tile}
    if protocol.tile:
        how.update(tile_overlap=protocol.tile_overlap, tile_batch=protocol.tile_batch)
    results = {"model": {k: info[k] for k in ("model", "backbone", "config_from") if k in info}, "run": how}

    def record(entries: list[dict]) -> list[str]:
        results["restored"] = [e for e in entries if "output" in e]
        skipped = [f"{e['name']} (unreadable: {e['skipped']})" for e in entries if "skipped" in e]
        if skipped:
            results["skipped_files"] = skipped
        return skipped

    try:
        skipped = record(restore_files(model, inputs, save, protocol, device, progress,
                                       skip_bad_files=args.skip_bad_files))
    except EvaluationStopped as stop:
        record(stop.row["restored"])
        results["partial"] = {"row": "input", "file": stop.file, "error": str(stop)}
        kept = _keep_earlier_results(save)
        path = write_text(save / "results.json", json_text(results))
        raise _stopped(stop, str(path), kept) from stop
    path = write_text(save / "results.json", json_text(results))
    print(f"restored {len(results['restored'])} image(s) into {save}")
    for line in skipped:
        print(f"skipped: {line}")
    if not results["restored"]:
        raise _nothing_scored(f"--input {args.input}", len(skipped), str(path))
    return results


if __name__ == "__main__":
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it in again
    cli_args = get_args_parser().parse_args()
    sys.exit(run_main(main, cli_args, debug=cli_args.debug))
