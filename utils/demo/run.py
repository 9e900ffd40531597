"""``make demo``: BaryIR end to end on the embedded demo data.

1. build ``data/demo`` from photos that installed packages ship (:mod:`utils.demo.data`);
2. train the ``tiny`` preset with the real ``trainer_bary.py`` engine for a fixed budget
   (``--resume auto``: a second run continues, a finished run is not repeated);
3. evaluate with the real tester engine on in-distribution tasks (the training
   degradations) and out-of-distribution ones (an unseen noise level, unseen types);
4. print one table (degraded input vs restoration, per task) and draw the figures:
   loss curves, degraded | restored | target grids, WB/residual takeaway maps, and a
   2-D projection of WB and residual embeddings titled with how well each predicts the
   degradation and the photo.

    python -m utils.demo [--iters-per-epoch 150 --epochs 6] [--quick]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch.nn as nn

from utils.analysis.report import embedding_report
from utils.checkpoints import LOG_NAME, load_model
from utils.cli import one_spelling
from utils.data.image_io import read_image
from utils.data.noise import noisy_version
from utils.dataset_utils import ALL_IN_ONE_3D
from utils.demo.data import build_demo_data
from utils.errors import (
    INTERRUPTED_STATUS,
    STOPPED_STATUSES,
    OneLineArgumentParser,
    UsageError,
    UserError,
    add_debug_flag,
    run_main,
)
from utils.eval.evaluation import InputAsOutput, evaluate_tasks
from utils.eval.outputs import RESULT_NAMES, check_writable_folder, figure_names, output_names
from utils.eval.protocol import Protocol
from utils.eval.report import write_results
from utils.eval.tasks import find_task_sets
from utils.files import json_text, write_text
from utils.owned_outputs import folders_in_the_way, keep_aside_foreign_outputs, recording_outputs
from utils.runtime import DEVICE_HELP, DEVICES, pick_device, tune_cpu_allocator
from utils.train.loss_figure import draw_loss_figure
from utils.train.run_folder import FIG_NAME
from utils.train.run_log import Console

IN_DISTRIBUTION = ALL_IN_ONE_3D  # the training degradations
OUT_OF_DISTRIBUTION = ("denoise_75", "jpeg", "lowlight")


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m utils.demo", description="BaryIR end to end on the embedded demo data",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default=None,
                   help="demo data folder, built when missing or stale (default data/demo; data/demo-quick with "
                        "--quick)")
    p.add_argument("--output-dir", default=None,
                   help="training checkpoints and log (default checkpoint/demo; checkpoint/demo-quick with --quick)")
    p.add_argument("--results", default=None,
                   help="restored images and results tables (default results/demo; results/demo-quick with --quick)")
    p.add_argument("--figs-dir", default=None,
                   help="where the figures go (default <results>/figs, ignored by git; the README's pictures in "
                        "figs/demo/ are copies refreshed by hand)")
    p.add_argument("--epochs", "--nEpochs", type=int, default=None, help="training epochs (default 6; 1 with --quick)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="at most this many iterations an epoch (default 150; 2 with --quick)")
    p.add_argument("--batch-size", "--batchSize", type=int, default=None,
                   help="training batch (default 4; 2 with --quick)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="training patch side, a multiple of 8 (default 64; 32 with --quick)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="base lr (the schedule halves it); above the paper's 2e-4 so the short demo budget suffices")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed; another than 0 trains into folders of its own (*/demo-seedN)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--quick", action="store_true",
                   help="smallest setting (tiny images, a few iterations): checks the pipeline, not the quality; "
                        "in its own folders, so that it never meets the full demo's run")
    add_debug_flag(p)
    return one_spelling(p)


def _trainer_argv(args, root: Path) -> list[str]:
    train = root / "Train"
    return ["--preset", "tiny", "--de-type", *ALL_IN_ONE_3D,
            "--denoise-dir", str(train / "Denoise"), "--derain-dir", str(train / "Derain"),
            "--dehaze-dir", str(train / "Dehaze"),
            "--data-file-dir", "",  # the demo's own images: scan the folders, not the authors' id lists
            # the demo's 12 clean / 24 rainy / 36 hazy images: about 180 samples per family and epoch
            "--repeat", "derain=8", "dehaze=5",
            "--batch-size", str(args.batch_size), "--patch-size", str(args.patch_size),
            "--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters_per_epoch),
            "--step", str(max(1, args.epochs - 1)),  # the last epoch runs at lr / 10
            "--lr", str(args.lr), "--seed", str(args.seed),
            "--device", args.device, "--threads", "0", "--output-dir", str(args.output_dir),
            "--figs-dir", str(args.figs_dir), "--save-every", "0", "--resume", "auto",
            "--degset", str(root / "test" / "derain" / "demo" / "input"),
            "--tarset", str(root / "test" / "derain" / "demo" / "target")]


class DemoStopped(UserError):
    """The training stopped by a signal, saved: the demo stops with the shell's status for that signal (130 for
    Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), and says how to go on (the trainer's own line names --resume
    auto, a flag the demo does not have: it always resumes)."""
    exit_status = INTERRUPTED_STATUS


def train(args, root: Path) -> Path:
    """Run the real trainer (its failure is its own one error line, and its exit status the demo's); returns
    the checkpoint of the last epoch. Stopped by a signal, the trainer saves and returns 128 + the signal (asked by
    ``status_on_stop``): the demo stops too (:class:`DemoStopped`), and the next run continues the training."""
    from utils.checkpoints import progress_of, read_latest
    from utils.train.engine import run_cli  # what trainer_bary.py runs; the script is not in the package
    from utils.train.options import get_args_parser as trainer_parser
    targs = trainer_parser().parse_args(_trainer_argv(args, root) + (["--debug"] if args.debug else []))
    targs.status_on_stop = True  # a signal's stop returns 128 + it: the demo names SIGTERM, not "interrupted"
    stopped = DemoStopped(f"the demo stopped; its training so far is saved in {args.output_dir}: run the same "
                          f"command again (make demo, or python -m utils.demo with the same flags) to continue it")
    rc = run_cli(targs)
    if rc in STOPPED_STATUSES:  # Ctrl-C, SIGTERM or SIGHUP, while it started or trained (it said which)
        stopped.exit_status = rc
        raise stopped
    if rc:
        raise SystemExit(rc)  # the trainer has printed why
    latest = read_latest(args.output_dir)
    if latest is None or (progress_of(latest.name) or (0, 0)) < (args.epochs, 0):  # its name says how far
        raise stopped  # stopped by a signal mid-run: the trainer saved where it was
    return latest


def views_of_one_photo(root: Path, manifest: dict, photo: str) -> dict[str, np.ndarray]:
    """Every test degradation of ``photo``: ``{kind: (H, W, 3) uint8}`` (noise synthesised as the tester does);
    :func:`utils.demo.data.embedding_views` makes the same from a clean image in memory (``python -m
    utils.analysis`` on a user's photos)."""
    kinds = {"test/derain/demo/input/": "rain", "test/dehaze/input/": "haze", "test/jpeg/input/": "jpeg q10",
             "test/lowlight/low/": "low light"}
    clean_rel = f"test/denoise/demo/{photo}.png"
    clean = read_image(root / clean_rel)
    views = {f"noise {s}": noisy_version(clean, Path(clean_rel).name, s) for s in (15, 25, 50)}
    for rel, info in manifest["files"].items():
        for prefix, kind in kinds.items():
            if rel.startswith(prefix) and info["source"] == photo and kind not in views:
                views[kind] = read_image(root / rel)
    return views


def embedding_figures(model: nn.Module, root: Path, manifest: dict, figs_dir: Path, device,
                      checkpoint: Path | None = None) -> dict:
    """Takeaway maps for the first test photo, and a PCA of pooled embeddings of every test photo; both figures
    name ``checkpoint`` (the model's file) and the photos, as ``python -m utils.analysis`` names its own.

    Returns the figures' paths and what they measured (:func:`utils.analysis.report.embedding_report`): the mean
    relative WB / residual distance from the first view (the takeaway maps), and the leave-one-out 1-NN accuracy
    of the degradation and of the photo from the pooled WB and residual embeddings, with chance levels.
    """
    views = {photo: views_of_one_photo(root, manifest, photo) for photo in manifest["sources"]["test"]}
    takeaway, projection = EMBEDDING_FIGURES
    said = (f"{type(model).__name__} checkpoint {checkpoint}, " if checkpoint is not None else "") \
        + "on the demo's test photos"
    return embedding_report(model, views, figs_dir / takeaway, figs_dir / projection, device, source=said)


def demo_table(restored: dict, degraded: dict) -> str:
    """Markdown table: per task, PSNR/SSIM of the degraded input and of the restoration."""
    lines = ["| task | split | degraded PSNR / SSIM | restored PSNR / SSIM | gain (dB) |", "|---|---|---|---|---|"]
    for name, row in restored["tasks"].items():
        task = name.split("/")[0]
        split = "in-distribution" if task in IN_DISTRIBUTION else "out-of-distribution"
        d = degraded["tasks"][name]
        lines.append(f"| {name} | {split} | {d['psnr']:.2f} / {d['ssim']:.4f} | {row['psnr']:.2f} / {row['ssim']:.4f} "
                     f"| {row['psnr'] - d['psnr']:+.2f} |")
    return "\n".join(lines)


FULL = {"epochs": 6, "iters_per_epoch": 150, "batch_size": 4, "patch_size": 64}
QUICK = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "patch_size": 32}


def resolve_budget(args) -> None:
    """Fill the training flags left unset (``--quick``'s or the full demo's values) and check them all, by the
    demo's own flag names: a bad one fails before anything is built."""
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.iters_per_epoch < 0:
        raise UsageError(f"--iters-per-epoch must be >= 0 (0: the whole demo data set), got {args.iters_per_epoch}")
    if args.patch_size < 16 or args.patch_size % 8:
        raise UsageError(f"--patch-size must be a multiple of 8 and at least 16, got {args.patch_size}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")


def resolve_folders(args) -> None:
    """Fill the folder flags left unset: ``data/demo``, ``checkpoint/demo``, ``results/demo`` (``demo-quick``
    with ``--quick``: its patch size would make the full demo's ``--resume auto`` refuse a shared run;
    ``-seed<N>`` added for a seed other than 0: another seed's finished run would otherwise be taken for this
    one's, and its data rebuilt under it), and the figures under the results."""
    name = ("demo-quick" if args.quick else "demo") + (f"-seed{args.seed}" if args.seed else "")
    args.root = args.root or f"data/{name}"
    args.output_dir = args.output_dir or f"checkpoint/{name}"
    args.results = args.results or f"results/{name}"
    args.figs_dir = args.figs_dir or str(Path(args.results) / "figs")


# What the demo wrote, by path, with each file's SHA-256, in its --results folder: a file of a name the demo writes
# that is not there as written (a user's own, or one changed since) is moved aside, not replaced
# (utils.owned_outputs).
OUTPUTS_RECORD = ".demo-outputs.json"
EMBEDDING_FIGURES = ("demo_takeaway_maps.png", "demo_embedding_projection.png")


def planned_outputs(tasks: list[str], test_root: Path, results_dir: Path, figs_dir: Path) -> list[Path]:
    """Every file the demo's evaluation and figures write (the loss figure keeps its own rule): each task's
    restorations (``<results>/<row>/<name>.png``), ``results.*``, ``demo_summary.json``, ``demo_table.md``, and in
    ``figs_dir`` each row's grid and the two embedding figures."""
    sets = find_task_sets(tasks, test_root)
    images = [results_dir / s.name / n for s in sets for n in output_names([i.name for i in s.items])]
    grids = [figs_dir / n for n in figure_names([s.name for s in sets])]
    return images + grids + fixed_outputs(results_dir, figs_dir)


def fixed_outputs(results_dir: Path, figs_dir: Path) -> list[Path]:
    """The demo's outputs whose names do not depend on its data: ``results.*``, ``demo_summary.json``,
    ``demo_table.md`` and the two embedding figures."""
    return ([results_dir / n for n in (*RESULT_NAMES, "demo_summary.json", "demo_table.md")]
            + [figs_dir / n for n in EMBEDDING_FIGURES])


def main(args) -> dict:
    """The whole demo as ``args`` say; returns its summary (also written to ``<results>/demo_summary.json``)."""
    t0 = time.time()
    device = pick_device(args.device)  # a --device this machine lacks fails before anything is built
    resolve_budget(args)
    resolve_folders(args)
    for flag in ("--output-dir", "--results", "--figs-dir"):  # by the demo's own flags (the trainer's name others)
        check_writable_folder(getattr(args, flag[2:].replace("-", "_")), flag, create=False)
    root, figs_dir, results_dir = Path(args.root), Path(args.figs_dir), Path(args.results)
    for path in folders_in_the_way(fixed_outputs(results_dir, figs_dir))[:1]:  # met after the training, before
        flag = "--figs-dir" if figs_dir in path.parents else "--results"
        raise UsageError(f"{path}: a folder is where the demo writes its file {path.name} — move or rename that "
                         f"folder, or choose another {flag}")
    print(f"[1/4] demo data in {root}")
    manifest = build_demo_data(root, seed=args.seed, scale=0.25 if args.quick else 1.0,
                               max_photos=2 if args.quick else None)
    print(f"      {manifest['status']}")
    each = (f"of at most {args.iters_per_epoch} iterations (fewer when the demo's data is exhausted first" if
            args.iters_per_epoch else "over the whole demo data set (")
    print(f"[2/4] training the tiny preset: {args.epochs} epochs {each}; the trainer prints each epoch's count)")
    t_data = time.time()
    ckpt = train(args, root)
    draw_loss_figure(Path(args.output_dir) / LOG_NAME, figs_dir / FIG_NAME, Console())  # also when nothing trained
    t_train = time.time()
    print(f"[3/4] evaluating {ckpt}")
    model, info = load_model(ckpt)
    model.to(device)
    protocol = Protocol()
    tasks = list(IN_DISTRIBUTION + OUT_OF_DISTRIBUTION)
    planned = planned_outputs(tasks, root / "test", results_dir, figs_dir)
    keep_aside_foreign_outputs(planned, results_dir / OUTPUTS_RECORD, [(results_dir, "results"), (figs_dir, "figures")],
                               "the demo")
    with recording_outputs(planned, results_dir / OUTPUTS_RECORD):  # a stopped run's files stay the demo's
        restored = evaluate_tasks(model, tasks, root / "test", protocol, device, save_dir=results_dir,
                                  figs_dir=figs_dir, model_info=info, progress=False)
        degraded = evaluate_tasks(InputAsOutput(), tasks, root / "test", protocol, device, progress=False)
        write_results(restored, results_dir)
        print("[4/4] embedding figures")
        emb = embedding_figures(model, root, manifest, figs_dir, device, ckpt)
        table = demo_table(restored, degraded)
        summary = {"table": table, "embeddings": emb, "checkpoint": str(ckpt), "seconds": time.time() - t0,
                   "train_seconds": t_train - t_data, "restored": restored["tasks"], "degraded": degraded["tasks"]}
        results_dir.mkdir(parents=True, exist_ok=True)
        write_text(results_dir / "demo_summary.json", json_text(summary))  # strict JSON: a NaN score is null
        write_text(results_dir / "demo_table.md", table + "\n")
    print("\n" + table + "\n")
    print(f"WB vs residual embeddings on {emb['photo']}: mean relative distance from its {emb['reference']} view "
          f"{emb['mean_wb_difference']:.3f} (WB) vs {emb['mean_residual_difference']:.3f} (residual); "
          f"mean cosine(WB, residual) over every test photo's views {emb['mean_cosine_wb_residual']:+.3f}")
    print(f"degradation read from the nearest other view (1-NN, leave one out): WB {emb['wb_degradation_1nn']:.0%}, "
          f"residual {emb['residual_degradation_1nn']:.0%} (chance {emb['degradation_1nn_chance']:.0%}); "
          f"photo: WB {emb['wb_photo_1nn']:.0%}, residual {emb['residual_photo_1nn']:.0%} "
          f"(chance {emb['photo_1nn_chance']:.0%})")
    print(f"figures in {figs_dir}/: loss curves, demo grids, demo_takeaway_maps.png, demo_embedding_projection.png")
    print(f"tables in {results_dir}/ (results.md, demo_table.md); total {time.time() - t0:.0f} s")
    return summary


def cli(argv: list[str] | None = None) -> int:
    """``python -m utils.demo`` (``make demo``): its exit status; a failure the user can act on is one
    ``error:`` line (:func:`utils.errors.run_main`), its traceback only with ``--debug``."""
    tune_cpu_allocator()  # as trainer_bary.py and tester_bary.py do
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(cli())
