"""The flags of ``tester_bary.py`` (and those the web app and the analysis command share with it).

The meaning of each flag is in its help; the tester's engine (:mod:`utils.eval.tester`) acts on them.
"""
from __future__ import annotations

import argparse

from net.presets import BACKBONES, PRESETS
from utils.checkpoints import CHECKPOINT_DIR, REFERENCE_MODEL_NAME
from utils.cli import add_network_size_flags, at_least, backbone_name, one_spelling
from utils.compiled import COMPILE_MODES
from utils.data.image_io import CV2_MAX_PIXELS, MAX_PIXELS
from utils.errors import OneLineArgumentParser, add_debug_flag
from utils.eval.inference import PRECISIONS
from utils.eval.metrics import METRIC_SPACES, SSIM_KINDS
from utils.eval.paper import SETTINGS
from utils.eval.protocol import PROTOCOLS
from utils.eval.tasks import PAPER_TASKS
from utils.runtime import DEVICE_HELP, DEVICES

REFERENCE_MODEL = f"{CHECKPOINT_DIR}/{REFERENCE_MODEL_NAME}"


def add_checkpoint_flags(group):
    """``--model``, ``--backbone`` and ``--preset``: which checkpoint to run, and how to build a network for one
    that does not say (the tester's flags, which the web app and ``python -m utils.analysis`` take too). Returns
    ``group``."""
    group.add_argument("--model", type=non_empty_path, default=None,  # --model "$UNSET": not the default's run
                       help=f"checkpoint: the project's, a plain state dict, or a reference BaryIR checkpoint "
                            f"({{'BaryIR': module}}); also a run's output folder or its 'latest' pointer (the "
                            f"newest checkpoint). Default: {REFERENCE_MODEL} (the reference's) if it exists, "
                            f"else the newest checkpoint under {CHECKPOINT_DIR}/ (make demo trains "
                            f"{CHECKPOINT_DIR}/demo/)")
    group.add_argument("--backbone", type=backbone_name, default=None, choices=sorted(BACKBONES),
                       help="network, for checkpoints that do not name one (default: the checkpoint's, else BaryNet)")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="configuration for checkpoints that do not carry one (default paper); ignored, with a "
                            "note, for the trainer's checkpoints, which carry their own")
    return group


def non_empty_path(text: str) -> str:
    """An argparse type for the folders written into or read as a whole: a non-empty path (``--save "$UNSET"``
    would otherwise write into the current folder). Flags whose empty value means "not given" keep it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file or folder (or leave the flag out for its "
                                         "default)")
    return text


def pixel_count(text: str) -> int:
    value = at_least(1)(text)
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
    what.add_argument("--data-root", type=non_empty_path, default="data/test",
                      help="benchmark root (layout of docs/METHOD.md §4)")
    what.add_argument("--degset", default=None,
                      help="folder of degraded images (paired by name with --tarset)")
    what.add_argument("--tarset", default=None, help="folder of target images")
    what.add_argument("--input", nargs="+", default=None, metavar="FILE|DIR",
                      help="restore these images (no targets, no metrics) into --save: image files and folders of "
                           "them (a shell glob such as photos/*.jpg works)")
    what.add_argument("--skip-unpaired", action="store_true",
                      help="leave out (and count) degraded images without a same-name target or of another size, "
                           "instead of stopping with the list")
    what.add_argument("--max-images", type=at_least(0, " (0 = all images)"), default=0, metavar="N",
                      help="evaluate only the first N (>= 1) images of each set; 0 = all")
    what.add_argument("--compare-paper", choices=sorted(SETTINGS), default=None,
                      help="under the table, each of the paper's 3D or 5D columns beside the published BaryIR "
                           "PSNR/SSIM and the difference")
    what.add_argument("--skip-bad-files", action="store_true",
                      help="leave out (count, and name under the table) images that cannot be read: corrupt, "
                           "larger than --max-pixels or too small to score (8x8 by default; more with --ssim "
                           "gaussian, --crop-border or --lpips); without it the first such image stops "
                           "the run after writing the results so far, marked partial")
    what.add_argument("--max-pixels", type=pixel_count, default=MAX_PIXELS, metavar="N",
                      help="refuse images of more than N pixels (height x width, read from the file's header "
                           f"before decoding; at most {CV2_MAX_PIXELS})")
    what.add_argument("--check-data", action="store_true",
                      help="only check the images the other flags would read (counts against the paper's sets, "
                           "pairs, sizes, truncated files), print the report and exit: 0 when all is well, else 1; "
                           "no model is needed or loaded")
    what.add_argument("--dry-run", action="store_true",
                      help="find the images, check the outputs and load the model, then stop: nothing is restored "
                           "or written")

    model = add_checkpoint_flags(parser.add_argument_group("model"))
    add_network_size_flags(model, " (for checkpoints that do not carry their configuration)")

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
    run.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    run.add_argument("--cuda", action="store_true", help="reference flag: run on the GPU (same as --device cuda)")
    run.add_argument("--gpus", default=None, help="reference flag: GPU ids; the first is used")
    run.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (fp16: GPU only)")
    run.add_argument("--tile", type=int, default=None,
                     help="tiled inference with TxT tiles (multiple of 8): bounded memory for large images; by "
                          "default an image that would not fit the free memory is tiled automatically (said on "
                          "one line); 0: never tile")
    run.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles (blended)")
    run.add_argument("--tile-batch", type=at_least(1), default=4, help="tiles per forward pass")
    run.add_argument("--compile", default="off", choices=COMPILE_MODES,
                     help="torch.compile the network's forward with this mode (reduce-overhead: CUDA graphs, GPU "
                          "only). The first input size compiles, the second once more for sizes then taken as dynamic "
                          "(minutes; cached for later runs on a GPU, compiled again in every run on the CPU): worth "
                          "it for tiles or many images; see BENCHMARKS.md")
    add_debug_flag(run)

    out = parser.add_argument_group("outputs")
    out.add_argument("--save", type=non_empty_path, default="results/test",
                     help="restored images (in <save>/<row>/ with --tasks) and results.{json,csv,md}; an input "
                          "NAME.EXT gives NAME.png, and inputs sharing a NAME give NAME.png (the .png one) and "
                          "NAME_EXT.png (a.jpg -> a_jpg.png); files of those names already there (an earlier "
                          "run's) are first moved to <save>/results.before-<time>/ (with --overwrite: replaced; "
                          "never an image the run reads)")
    out.add_argument("--savetar", default=None,
                     help="also save the targets as scored (cropped, 8-bit) here; an earlier run's targets there, of "
                          "this run's names or recorded by the earlier results.json in --save, go to "
                          "<savetar>/results.before-<time>/ first")
    out.add_argument("--overwrite", action="store_true",
                     help="allow --save/--savetar to be a folder the images are read from, or to be inside a "
                          "--tasks task folder (the files there with the output names are replaced, not kept "
                          "aside; never an image the run reads); refused otherwise (a folder below --input DIR or "
                          "--degset is fine: those are read without their subfolders)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run whose results.json is in --save (stopped, or run with a smaller "
                          "--max-images): the images it scored whose restorations are still there keep their "
                          "scores, the others are evaluated; refused if it scored with another protocol, device or "
                          "model. Its results.*, figures and saved targets, as it wrote them, are replaced in place; "
                          "any edited since goes to results.before-<time>/")
    out.add_argument("--no-images", action="store_true", help="do not write restored images")
    out.add_argument("--figs", action="store_true", help="write a degraded | restored | target figure per row")
    out.add_argument("--figs-dir", type=non_empty_path, default="results/figs",
                     help="where --figs writes (default results/figs; the repository's figs/ holds its documentation)")
    out.add_argument("--fig-images", type=at_least(1), default=3, help="images per figure")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return one_spelling(parser)
