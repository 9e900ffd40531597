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
(``--degset``/``--input``). ``--input`` photos are turned upright by their EXIF orientation tag;
benchmark images are read as stored, as the reference reads them. All the logic lives in
:mod:`utils.evaluation`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from net.presets import BACKBONES, PRESETS
from utils.checkpoints import newest_checkpoint
from utils.data.pairing import PairingError
from utils.eval.evaluation import (
    PAPER_TASKS,
    PROTOCOLS,
    Protocol,
    evaluate_sets,
    find_task_sets,
    format_report,
    input_files,
    load_model,
    paired_set,
    paper_layout,
    present_paper_tasks,
    restore_files,
    write_results,
)
from utils.eval.inference import PRECISIONS
from utils.eval.metrics import METRIC_SPACES, SSIM_KINDS
from utils.runtime import apply_gpus_flag, pick_device, tune_cpu_allocator

CHECKPOINT_DIR = "checkpoint"
# The reference tester's default --model (its 5D all-in-one checkpoint).
REFERENCE_MODEL = f"{CHECKPOINT_DIR}/model_allBaryNet__61_1.0_5D.pt"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="BaryIR evaluation and restoration", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to evaluate (one of --tasks, --degset/--tarset, --input; none: every "
                                     "paper task present under --data-root)")
    what.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                      help=f"benchmark tasks under --data-root: {' '.join(PAPER_TASKS)}, denoise_<sigma> for any "
                           f"integer sigma, any other folder NAME with NAME/{{input,target}}, or 'all' (every paper "
                           f"task present)")
    what.add_argument("--data-root", default="data/test", help="benchmark root (layout of docs/METHOD.md §4)")
    what.add_argument("--degset", default=None, help="folder of degraded images (paired by name with --tarset)")
    what.add_argument("--tarset", default=None, help="folder of target images")
    what.add_argument("--input", default=None, metavar="FILE|DIR",
                      help="restore these images (no targets, no metrics) into --save")
    what.add_argument("--skip-unpaired", action="store_true",
                      help="leave out (and count) degraded images without a same-name target or of another size, "
                           "instead of stopping with the list")
    what.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images of each set")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None,
                       help=f"checkpoint: the project's, a plain state dict, or a reference BaryIR checkpoint "
                            f"({{'BaryIR': module}}). Default: {REFERENCE_MODEL} (the reference's) if it exists, "
                            f"else the newest checkpoint under {CHECKPOINT_DIR}/")
    model.add_argument("--backbone", default=None, choices=sorted(BACKBONES),
                       help="network (default: the checkpoint's, else BaryNet)")
    model.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="configuration for checkpoints that do not carry one (default paper)")
    model.add_argument("--dim", type=int, default=None, help="override the width")
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
                       help="base of the per-image noise seeds of denoise tasks (0 = the published test inputs)")

    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = CUDA if available")
    run.add_argument("--cuda", action="store_true", help="reference flag: run on the GPU (same as --device cuda)")
    run.add_argument("--gpus", default=None, help="reference flag: GPU ids; the first is used")
    run.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (fp16: GPU only)")
    run.add_argument("--tile", type=int, default=None,
                     help="tiled inference with TxT tiles (multiple of 8): bounded memory for large images")
    run.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles (blended)")
    run.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass")

    out = parser.add_argument_group("outputs")
    out.add_argument("--save", default="results/test",
                     help="restored images (in <save>/<row>/ with --tasks) and results.{json,csv,md}")
    out.add_argument("--savetar", default=None, help="also save the targets as scored (cropped, 8-bit) here")
    out.add_argument("--no-images", action="store_true", help="do not write restored images")
    out.add_argument("--figs", action="store_true", help="write a degraded | restored | target figure per row")
    out.add_argument("--figs-dir", default="figs", help="where --figs writes")
    out.add_argument("--fig-images", type=int, default=3, help="images per figure")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _protocol(args) -> Protocol:
    return Protocol(protocol=args.protocol, metric_space=args.metric_space, ssim=args.ssim,
                    crop_border=args.crop_border, precision=args.precision, tile=args.tile,
                    tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, lpips=args.lpips, fid=args.fid,
                    noise_seed=args.noise_seed).validate()


def _fail(message: str) -> None:
    """A usage error the user fixes: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def default_model(checkpoint_dir: str | os.PathLike = CHECKPOINT_DIR) -> tuple[Path | None, str]:
    """``(checkpoint, why)`` for a run without ``--model``; ``(None, "")`` when there is none.

    The reference's default (:data:`REFERENCE_MODEL`, when ``checkpoint_dir`` is the default one),
    else the newest checkpoint under ``checkpoint_dir`` (:func:`utils.checkpoints.newest_checkpoint`).
    """
    reference = Path(checkpoint_dir) / Path(REFERENCE_MODEL).name
    if reference.is_file():
        return reference, "the authors' checkpoint, the reference tester's default"
    newest = newest_checkpoint(checkpoint_dir)
    if newest is None:
        return None, ""
    return newest, f"newest under {Path(checkpoint_dir).as_posix()}/"


def apply_defaults(args) -> bool:
    """Fill in ``--model`` and the tasks when not given, printing each choice and why (as the reference's
    tester, which needs no arguments); a missing checkpoint or benchmark is a one-line error, exit 2.
    Returns whether the tasks were chosen here."""
    if not args.model:
        path, why = default_model()
        if path is None:
            _fail(f"no checkpoint given and none found under {CHECKPOINT_DIR}/ — put the authors' "
                  f"{Path(REFERENCE_MODEL).name} there, train one with trainer_bary.py, or pass --model PATH")
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


def main(args) -> dict:
    modes = [m for m, on in (("--tasks", args.tasks), ("--degset/--tarset", args.degset or args.tarset),
                             ("--input", args.input)) if on]
    if len(modes) > 1:
        raise SystemExit(f"tester_bary.py: choose one of --tasks, --degset/--tarset or --input "
                         f"(got {', '.join(modes)})")
    if bool(args.degset) != bool(args.tarset):
        raise SystemExit("tester_bary.py: --degset and --tarset go together")
    tasks_defaulted = apply_defaults(args)
    gpus_note = apply_gpus_flag(args.gpus)  # the reference's meaning of --gpus
    if gpus_note:
        print(f"warning: {gpus_note}", file=sys.stderr)
    device = pick_device(args.device, args.cuda)
    protocol = _protocol(args)
    model, info = load_model(args.model, args.backbone, args.preset, dim=args.dim, num_blocks=args.num_blocks,
                             num_refinement_blocks=args.num_refinement_blocks, heads=args.heads)
    save = Path(args.save)
    progress = not args.no_progress

    if args.input:
        restored = restore_files(model, input_files(args.input), save, protocol, device, progress)
        results = {"protocol": {**protocol.describe(), "device": str(device), **info}, "tasks": {},
                   "restored": restored}
        save.mkdir(parents=True, exist_ok=True)
        (save / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"restored {len(restored)} image(s) into {save}")
        return results

    if args.degset:
        sets = [paired_set(Path(args.degset).name, args.degset, args.tarset, skip_unpaired=args.skip_unpaired)]
    else:
        try:
            sets = find_task_sets(args.tasks, args.data_root, args.skip_unpaired)
        except PairingError as exc:
            if not tasks_defaulted:
                raise
            _fail(f"{exc} (found while evaluating every paper task present under {args.data_root}; pass --tasks "
                  f"to choose)")
    if args.max_images:
        for s in sets:
            s.items = s.items[:args.max_images]
    results = evaluate_sets(model, sets, protocol, device, save_dir=None if args.no_images else save,
                            savetar_dir=args.savetar, figs_dir=args.figs_dir if args.figs else None,
                            fig_images=args.fig_images, subfolders=not args.degset, progress=progress,
                            model_info=info)
    print(format_report(results))
    paths = write_results(results, save)
    print(f"\nresults: {paths['json']}, {paths['csv']}, {paths['md']}")
    return results


if __name__ == "__main__":
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it in again
    main(get_args_parser().parse_args())
