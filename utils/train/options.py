"""Command-line options of ``trainer_bary.py`` and ``trainer_bary_ddp.py`` (one parser for both).

The reference's flags keep their names and meanings, so its README commands run unchanged; the rest are
this project's additions. Four defaults differ on purpose, none of which the authors' commands rely on
(they pass ``--backbone=BaryNet`` and their GPUs):

- ``--backbone`` is ``BaryNet`` (the reference's ``RCNet``, which it builds as PromptIR with a decoder);
- ``--gpus`` leaves ``CUDA_VISIBLE_DEVICES`` alone (the reference always set it to ``0``);
- ``--cuda`` is off, and ``--device auto`` picks the GPU when there is one (the reference's was on);
- ``--num_sources`` follows from ``--de_type`` (the reference's was 3 whatever it trained).
"""
from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from net.presets import BACKBONES, PRESETS
from utils.cli import add_network_size_flags, backbone_name, network_size_overrides, one_spelling
from utils.compiled import BACKENDS, COMPILE_MODES
from utils.dataset_utils import ALL_IN_ONE_3D, DatasetError
from utils.errors import OneLineArgumentParser, UsageError, add_debug_flag
from utils.runtime import DEVICE_HELP, DEVICES
from utils.train.losses import ABLATABLE, L1_WEIGHT, OBJECTIVES, Objective

# The authors' id lists ship in the repository's data_dir/; the flag's default names it as the
# reference does (relative), and falls back to the repository's copy from any other directory.
DEFAULT_DATA_FILE_DIR = "data_dir/"
SHIPPED_DATA_FILE_DIR = Path(__file__).resolve().parents[2] / "data_dir"  # <repo>/utils/train/options.py
DEFAULT_DE_TYPE = list(ALL_IN_ONE_3D)
# Reference validation defaults: used when they exist, skipped (with a note) when they do not.
DEFAULT_DEGSET = "./data/test/derain/Rain100L/input/"
DEFAULT_TARSET = "./data/test/derain/Rain100L/target/"


class ConfigError(UsageError, ValueError):
    """The command line asks for something inconsistent; the message names the flag (exit status 2)."""


# The objective's settings (--objective and the three it sets): the L1-only backbones use none of them.
OBJECTIVE_SETTINGS = ("objective", "reg_weight", "contrastive_eps", "potentials_steps")

def get_args_parser(add_help: bool = True, threads_default: int = 16,
                    objective: str = "single") -> argparse.ArgumentParser:
    """The trainers' parser. ``objective`` is the default ``--objective``: ``single`` for
    ``trainer_bary.py``, ``ddp`` for ``trainer_bary_ddp.py`` (each trains what the authors' script of
    the same name trained); ``threads_default`` the reference script's loader workers."""
    p = OneLineArgumentParser(description="BaryIR training (all-in-one restoration with a Wasserstein "
                                            "barycenter latent)", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ref = p.add_argument_group("reference flags")
    ref.add_argument("--batchSize", "--batch_size", "--batch-size", dest="batchSize", type=int, default=4,
                     help="training batch size (per process)")
    ref.add_argument("--nEpochs", "--n_epochs", "--epochs", dest="nEpochs", type=int, default=200,
                     help="number of epochs to train for")
    ref.add_argument("--lr", type=float, default=2e-4,
                     help="base learning rate; epoch e uses lr * 0.1**((e-1)//step) / 2 for both networks")
    ref.add_argument("--step", type=int, default=20, help="decay the learning rate by 10x every STEP epochs")
    ref.add_argument("--resume", type=str, default=None,
                     help="checkpoint to continue from (project or reference format), a run's folder (its newest "
                          "checkpoint), or 'auto' for the newest in --output-dir (none there: a fresh run; a "
                          "damaged newest: the one before). A path that does not exist is an error")
    ref.add_argument("--start-epoch", dest="start_epoch", type=int, default=1,
                     help="first epoch number of a fresh run (a resumed run continues where it stopped)")
    ref.add_argument("--threads", "--workers", dest="threads", type=int,
                     default=min(threads_default, os.cpu_count() or 1),
                     help=f"DataLoader worker processes; default "
                          f"{threads_default} as in the reference, capped at this machine's CPU count")
    ref.add_argument("--pretrained", type=str, default="",
                     help="initialise the network (and the potentials when the file has them) from a "
                          "checkpoint of any accepted format, a run's output folder or its 'latest' pointer (its "
                          "newest checkpoint); training starts at --start-epoch")
    ref.add_argument("--gpus", type=str, default=None,
                     help="GPU ids made visible, CUDA_VISIBLE_DEVICES style (e.g. '0,1'); default: leave "
                          "the environment as it is. Ignored under torchrun (with a warning), as the reference "
                          "DDP trainer does: each rank uses the GPU of its LOCAL_RANK")
    ref.add_argument("--cuda", action="store_true",
                     help="accepted for the reference's commands: the same as --device cuda")
    ref.add_argument("--pairnum", type=int, default=10000000,
                     help="accepted for the reference's commands; its trainer does not use it, nor does this one")
    ref.add_argument("--num_sources", "--num_source", dest="num_sources", type=int, default=None,
                     help="number of source domains K; derived from --de-type (a different value is an error)")
    ref.add_argument("--de_type", nargs="+", default=list(DEFAULT_DE_TYPE),
                     help="degradations to train: denoise_15 denoise_25 denoise_50 derain dehaze deblur "
                          "lowlight single")
    ref.add_argument("--denoise_dir", type=str, default="data/Train/Denoise/", help="clean images for denoising")
    ref.add_argument("--derain_dir", type=str, default="data/Train/Derain/", help="holds rainy/ and gt/")
    ref.add_argument("--dehaze_dir", type=str, default="data/Train/Dehaze/", help="holds synthetic/ and original/")
    ref.add_argument("--deblur_dir", type=str, default="data/Train/Deblur/", help="holds blur/ and sharp/")
    ref.add_argument("--lowlight_dir", type=str, default="data/Train/lowlight/", help="holds low/ and high/")
    ref.add_argument("--single_dir", type=str, default="data/Train/single/", help="holds degraded/ and target/")
    ref.add_argument("--degset", type=str, default=None,
                     help=f"validation inputs (paired with --tarset by file name); default {DEFAULT_DEGSET} "
                          f"when it exists; '' turns validation off")
    ref.add_argument("--tarset", type=str, default=None, help=f"validation targets; default {DEFAULT_TARSET}")
    ref.add_argument("--Sigma", type=float, default=L1_WEIGHT, help="weight of the L1 restoration loss")
    ref.add_argument("--sigma", type=float, default=1, help="a run label only (the reference put it in file names)")
    ref.add_argument("--optimizer", type=str, default="RMSprop", choices=["RMSprop", "Adam"],
                     help="optimizer of both networks")
    ref.add_argument("--backbone", type=backbone_name, default="BaryNet", choices=sorted(BACKBONES),
                     help="BaryNet (the method; the reference's default was RCNet, its PromptIR), BaryPromptIR (the "
                          "method on PromptIR's decoder; this project's reconstruction), or the L1-only baselines "
                          "Restormer and PromptIR (no potentials)")
    ref.add_argument("--type", type=str, default="Deraining",
                     help="a run label only (the reference put it in file names)")
    ref.add_argument("--patch_size", type=int, default=128, help="training patch side (a multiple of 8, >= 16)")
    ref.add_argument("--data_file_dir", type=str, default=DEFAULT_DATA_FILE_DIR,
                     help="folder of the authors' id lists (noisy/denoise.txt, rainy/rainTrain.txt, "
                          "hazy/hazy_outside.txt; shipped in data_dir/). Listed ids missing on disk are left out "
                          "with a warning (the reference does so silently for the noise list); a family without a "
                          "list file is scanned (a warning names a missing list); '' scans every folder")
    ref.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                     help=argparse.SUPPRESS)  # torch.distributed.launch passes it; LOCAL_RANK is used instead

    obj = p.add_argument_group(
        "objective", "the authors' two trainers optimise slightly different objectives; each of ours defaults "
                     "to its namesake's (--objective), and the three settings can be changed one by one")
    obj.add_argument("--objective", choices=sorted(OBJECTIVES), default=objective,
                     help="single: the reference trainer_bary.py (regulariser 0.05, exact contrastive ratio, two "
                          "potentials steps); ddp: the reference trainer_bary_ddp.py (0.02, contrastive with "
                          "+1e-6, one accumulated potentials step)")
    obj.add_argument("--reg-weight", "--reg_weight", dest="reg_weight", type=float, default=None,
                     help="weight of orthogonality + contrastive in the map loss (default: the --objective's)")
    obj.add_argument("--potentials-steps", "--potentials_steps", dest="potentials_steps", type=int, default=None,
                     choices=[1, 2], help="2: step the potentials on their loss, then on the congruence loss; "
                                          "1: one step on both gradients (default: the --objective's)")
    obj.add_argument("--contrastive-eps", "--contrastive_eps", dest="contrastive_eps", type=float, default=None,
                     help="eps of -log((pos + eps) / (pos + neg + eps)) (default: the --objective's)")

    new = p.add_argument_group("project flags")
    new.add_argument("--seed", type=int, default=0,
                     help="seeds initialisation, data order and augmentation (a resumed run keeps its seed)")
    new.add_argument("--device", type=str, default="auto", choices=DEVICES, help=DEVICE_HELP)
    new.add_argument("--deterministic", action="store_true",
                     help="GPU kernels chosen for reproducibility, not speed: no cuDNN autotuning, deterministic "
                          "algorithms where torch has them (two runs from one seed then match bit for bit; "
                          "slower)")
    new.add_argument("--precision", type=str, default="fp32", choices=["fp32", "bf16", "fp16"],
                     help="autocast precision; fp16 adds a gradient scaler (CUDA only)")
    new.add_argument("--preset", type=str, default="paper", choices=sorted(PRESETS),
                     help="network size: paper (the published BaryNet) or tiny (narrow, for CPU runs)")
    add_network_size_flags(new, " (e.g. a capacity-matched baseline); every size is recorded in checkpoints")
    new.add_argument("--save-every", dest="save_every", type=int, default=2000,
                     help="also save a checkpoint every N iterations (0: only at epoch ends)")
    new.add_argument("--keep", type=int, default=3,
                     help="keep the newest N checkpoints (0 keeps all); a save holds N + 1 until the new one is "
                          "whole, and the start refuses a disk without room for them")
    new.add_argument("--output-dir", dest="output_dir", type=str, default=None,
                     help="checkpoints, the 'latest' pointer and log.jsonl go here (default: a folder of the "
                          "run's own under checkpoint/, named by --name or by the run's settings, e.g. "
                          "checkpoint/BaryNet_paper_3D_p128)")
    new.add_argument("--name", type=str, default=None,
                     help="the run's folder name under checkpoint/ when --output-dir is not given")
    new.add_argument("--figs-dir", dest="figs_dir", type=str, default=None,
                     help="the loss-curve figure is redrawn here at each epoch end (default: --output-dir, "
                          "beside the run's log)")
    new.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard event files into <output-dir>/tensorboard/ (rank 0; open them with "
                          "tensorboard --logdir <output-dir>/tensorboard): every loss part, the lr and the "
                          "barycenter weights lambda at each --log-every iteration; the epoch's mean losses and "
                          "validation PSNR/SSIM at each epoch end; and once per epoch a degraded | restored | "
                          "target grid, with the WB and residual latent maps for BaryNet/BaryPromptIR, of one fixed "
                          "image: the first validation pair, or without validation the first training sample as "
                          "epoch 1 crops it (a centre crop of at most 256x256). A resumed run continues the same "
                          "curves; a fresh one moves an earlier run's folder aside. Needs pip install tensorboard")
    new.add_argument("--compile", choices=list(COMPILE_MODES), default="off",
                     help="the fast path: torch.compile the iteration's loss computations (forward and backward) with "
                          "this mode; reduce-overhead also replays them as CUDA graphs (GPU only). The losses are "
                          "then checked once per iteration instead of before each update (a NaN still stops the run "
                          "before anything is saved). The first iteration compiles (minutes, cached for later runs); "
                          "off: the eager engine. See BENCHMARKS.md for when it is faster")
    new.add_argument("--compile-backend", dest="compile_backend", choices=list(BACKENDS), default="inductor",
                     help=argparse.SUPPRESS)  # tests and debugging: eager/aot_eager trace without inductor
    new.add_argument("--iters-per-epoch", dest="iters_per_epoch", type=int, default=0,
                     help="cap an epoch at N iterations (demos, tests); 0: the full repeated data set")
    new.add_argument("--log-every", dest="log_every", type=int, default=10,
                     help="log (and show) the losses every N iterations (and each epoch's first); 0: no iteration "
                          "records, the epochs' means only. Without a terminal (output redirected) a plain line shows "
                          "them at most every 30 s, and at each epoch's first and last")
    new.add_argument("--repeat", nargs="+", default=None, metavar="NAME=N",
                     help="per-epoch repetition of each image of a degradation type, replacing the paper's "
                          "factors (each noise level x5, but denoise_25 x15 when trained without both denoise_15 "
                          "and denoise_50, as in 5D; derain x360, dehaze x1, deblur x35, lowlight x150, single "
                          "x5) for data sets of other sizes, e.g. --repeat derain=8 dehaze=5")
    new.add_argument("--skip-bad-files", dest="skip_bad_files", action="store_true",
                     help="leave out unpaired, unreadable or too-small training images, and unpaired or "
                          "unreadable validation pairs (--degset/--tarset), with a warning instead of stopping")
    new.add_argument("--strict-ids", dest="strict_ids", action="store_true",
                     help="stop when ids listed in --data-file-dir are missing on disk (default: leave them out "
                          "with a warning)")
    new.add_argument("--check-images", dest="check_images", action=argparse.BooleanOptionalAction, default=True,
                     help="read every training image header before training (sizes, readability)")
    new.add_argument("--check-data", dest="check_data", action="store_true",
                     help="only check the training sets of --de-type under the --*-dir flags and --data-file-dir "
                          "(and the validation set): counts, pairs, sizes, truncated files; print the report and "
                          "exit, 0 when all is well, else 1. Nothing is trained; no torchrun needed")
    new.add_argument("--dry-run", dest="dry_run", action="store_true",
                     help="do every start-up step (flags, memory, data, checkpoint, networks, optimizers) and stop "
                          "before the first iteration, writing nothing")
    new.add_argument("--no-memory-check", dest="no_memory_check", action="store_true",
                     help="start even when the memory estimate says the run cannot fit (the estimate and what "
                          "it compares with are printed at start)")
    add_debug_flag(new)
    new.add_argument("--debug-nan-at", dest="debug_nan_at", type=int, default=0,
                     help=argparse.SUPPRESS)  # tests: make the map loss NaN at this global iteration
    new.add_argument("--ablate", nargs="+", default=[], choices=list(ABLATABLE), metavar="TERM",
                     help="ablation studies only (bench/study.py): leave these terms out of the map loss; "
                          "'potentials' also skips the potentials and congruence updates (the barycenter term is then "
                          "the transport cost alone, without -f_k(b); L1 and the other terms stay)")
    return one_spelling(p)


@functools.cache
def _flags_by_dest() -> dict[str, str]:
    return {a.dest: a.option_strings[0] for a in get_args_parser()._actions if a.option_strings}


@functools.cache
def default_of(dest: str):
    """The trainers' default for the flag stored as ``dest``: a value that differs was given on the command
    line. (``--threads`` and ``--objective`` differ by script; the flags asked about do not.)"""
    return get_args_parser(add_help=False).get_default(dest)


def flag_of(dest: str) -> str:
    """The spelling ``--help`` shows for the trainer flag stored as ``dest`` (``batchSize`` -> ``--batch-size``,
    ``Sigma`` -> ``--Sigma``): the one messages name."""
    return _flags_by_dest()[dest]


def run_dir(args: argparse.Namespace, k: int) -> str:
    """``--output-dir``, else ``checkpoint/<--name>``, else ``checkpoint/<backbone>_<preset>_<K>D_p<patch>``, with
    ``_ddp`` for the DDP trainer's objective: runs of other settings never share a folder (nor each other's
    ``--resume auto``) by default, a ``trainer_bary.py`` run and a ``trainer_bary_ddp.py`` run included."""
    if args.output_dir:
        if getattr(args, "name", None) and Path(args.output_dir) != Path("checkpoint") / args.name:
            raise ValueError(f"--name {args.name} names the run's folder under checkpoint/ when --output-dir is not "
                             f"given, and --output-dir {args.output_dir} is: drop one of them")
        return args.output_dir
    preset = PRESETS.get(args.preset, {})  # a flag that types out the preset's own value names no other network
    tag = "".join(f"_{short}{'-'.join(map(str, v)) if isinstance(v, list) else v}"
                  for short, (name, v) in zip(("d", "b", "r", "h"), network_size_overrides(args).items())
                  if v is not None and _listed(v) != _listed(preset.get(name)))
    objective = "_ddp" if getattr(args, "objective", None) == "ddp" else ""  # the two trainers' objectives differ
    name = args.name or f"{args.backbone}_{args.preset}{tag}_{k}D_p{args.patch_size}{objective}"
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"--name {name!r} must be a plain folder name")
    return str(Path("checkpoint") / name)


def _listed(v):
    """``v`` with tuples as lists, to compare a flag's value with a preset's."""
    return list(v) if isinstance(v, (list, tuple)) else v


def resolve_objective(args: argparse.Namespace) -> Objective:
    """The :class:`~utils.train.losses.Objective` ``args`` ask for; fills ``args.reg_weight``,
    ``args.potentials_steps`` and ``args.contrastive_eps`` so checkpoints and the log record them."""
    base = OBJECTIVES[getattr(args, "objective", None) or "single"]
    for name in ("reg_weight", "potentials_steps", "contrastive_eps"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(base, name))
    return Objective(float(args.reg_weight), float(args.contrastive_eps), int(args.potentials_steps))


def resolve_data_file_dir(value: str) -> str:
    """``--data_file_dir`` as given, except the default, which means the shipped lists when the
    current directory has no ``data_dir/`` of its own. A folder given explicitly must exist: a mistyped
    one would otherwise find the images by scanning, other ones than the lists name (a different
    lambda and epoch length), where the reference stops."""
    if value == DEFAULT_DATA_FILE_DIR and not Path(value).is_dir():
        return str(SHIPPED_DATA_FILE_DIR)
    if value and not Path(value).is_dir():
        raise DatasetError(f"--data-file-dir {value}: no such folder. Pass the folder that holds the id lists "
                           f"(noisy/denoise.txt, rainy/rainTrain.txt, hazy/hazy_outside.txt), leave the flag out for "
                           f"the shipped lists, or pass --data-file-dir '' to train on every image found by scanning")
    return value
