"""BaryIR's claims at small scale: eight arms x seeds on the embedded demo data, with the real
trainer (``trainer_bary.py``'s engine and parser) and the real tester engine (``utils.eval.evaluation``).

    .venv/bin/python bench/study.py            # the full study: 8 arms x 3 seeds (86 minutes recorded on 2 CPU cores)
    .venv/bin/python bench/study.py --quick    # one seed, 60 iterations: a pipeline check
    .venv/bin/python bench/study.py            # again: continues where it stopped; finished runs are skipped

The time estimates (``plan``, printed first) are measured for the first five arms and guessed from the
networks' sizes for the last three (``UNMEASURED``, :mod:`utils.study.budget`: STUDY.md records only the
full study's total), plus a fixed cost per run (start-up, checkpoint, evaluation's overhead).

What it does (``STUDY.md`` explains the setup and how to read the tables):

1. arms, all with the ``tiny`` preset, the same data, iterations, batch, patch and seeds: BaryIR
   (BaryNet); the ``Restormer`` baseline with the L1 loss only; BaryIR without the orthogonality
   term, without the contrastive term, and without the potentials (trainer ``--ablate``: the barycenter
   term is then its transport cost alone); a capacity-matched Restormer (L1 only; ``--dim 26``: within 10% of BaryNet's
   parameters); PromptIR (L1 only); BaryPromptIR (BaryIR on PromptIR's decoder, the full objective)
   (:mod:`utils.study.arms`);
2. each run is evaluated in distribution (sigma 15/25/50, rain, haze) and out of distribution
   (sigma 75, JPEG q10, low light, motion blur): mean +- std over seeds per arm and task, and the
   differences BaryIR - Restormer, BaryIR - capacity-matched Restormer and BaryPromptIR - PromptIR
   (``COMPARISONS``), paired over (seed, image) and over seeds, with a plain verdict and each pair's
   parameter counts (whether capacity confounds it) (:mod:`utils.study.runs`, :mod:`utils.study.stats`);
3. a linear probe of degradation type on pooled WB and residual embeddings (the WB backbones'
   arms), evaluated on held-out photos (leave one test photo out), against chance; the mean cosine
   between WB and residual (:mod:`utils.study.probe`);
4. tables to ``<out>/study.md`` (and the console), everything to ``<out>/study.json``, figures
   to ``--figs-dir`` (default ``<out>/figs``) (:mod:`utils.study.report`); a file at one of those names that the
   study did not write as it is there (yours, or edited since) is moved aside, not replaced
   (:mod:`utils.owned_outputs`, the record ``<out>/.study-outputs.json``).

Every (arm, seed) run trains into ``<out>/runs/<arm>/seed<k>/train`` with ``--resume auto``;
its evaluation and embeddings are cached next to it (``eval.json``, ``embeddings.npz``, with the
network it evaluated: a run of another configuration than its arm's is refused, not reused).

This script holds the flags (:func:`get_args_parser`, :func:`resolve_settings`) and :func:`main`, which runs
the parts in order; the parts are the modules of :mod:`utils.study`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

# The probe's small L-BFGS fits (scipy) run ~30x slower through OpenBLAS's thread pool when another
# process holds a core; numpy/scipy only (torch uses MKL and its own threads). Effective when this
# file is the entry point, before numpy loads (and only then: importing it changes nothing).
if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from utils.errors import stopped_while_starting  # noqa: E402

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import numpy as np
    import torch

    from utils.cli import OneSpellingHelpFormatter, at_least
    from utils.data.degradations import family
    from utils.demo.data import DemoDataError, build_demo_data, check_build_args, requested_params, train_crop_count
    from utils.errors import (
        OneLineArgumentParser,
        UserError,
        add_debug_flag,
        counted,
        human_bytes,
        interrupted_line,
        run_main,
    )
    from utils.eval.evaluation import EvaluationStopped, InputAsOutput
    from utils.eval.outputs import check_writable_folder, inside
    from utils.files import write_text
    from utils.output_lock import OutputLock
    from utils.owned_outputs import folders_in_the_way, keep_aside_foreign_outputs, recording_outputs
    from utils.runtime import (
        DEVICE_HELP,
        DEVICES,
        load_average,
        machine_info,
        machine_line,
        pick_device,
        provenance,
        stop_signals_as_interrupt,
        usable_cores,
    )
    from utils.study.arms import ARMS, ID_TASKS, METHOD, OOD_TASKS, arm_model_config, parameter_counts
    from utils.study.budget import FULL, QUICK, busy_cores_note, estimated_seconds, minutes, plan
    from utils.study.errors import StudyInterrupted, StudySettingError
    from utils.study.probe import probe_summary, probe_views
    from utils.study.report import figure_names, figures, planned_figure_names, tables
    from utils.study.runs import (
        balanced_repeats,
        check_out_dir,
        evaluate_model,
        memory_fits,
        read_eval,
        read_json,
        run_one,
    )
    from utils.study.stats import group_mean, summarise


# What the study wrote (its tables and figures), by path, with each file's SHA-256, in --out: a rerun replaces those
# and moves anything else at their names aside (utils.owned_outputs).
OUTPUTS_RECORD = ".study-outputs.json"
# The files the study writes in --out (besides the runs' folders): checked for a folder in the way before any run.
OUTPUT_FILES = ("study_config.json", "degraded_input.json", "study.md", "study.json", OUTPUTS_RECORD)


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="BaryIR vs L1 baselines (Restormer, a capacity-matched Restormer, "
                                          "PromptIR), three ablations and BaryPromptIR on the demo data: "
                                          "PSNR/SSIM over seeds, paired tests, a linear probe of the WB and "
                                          "residual spaces",
                              formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{len(QUICK['seeds'])} seed x {QUICK['iters']} iterations per arm (the plan printed first "
                        f"estimates the time): checks the pipeline; the study's setting is the default")
    p.add_argument("--out", default=None, help="runs, caches and tables (default results/study, "
                                               "results/study-quick with --quick)")
    p.add_argument("--figs-dir", dest="figs_dir", default=None,
                   help="figures (default <out>/figs; the committed ones in figs/study are copies made by hand)")
    p.add_argument("--root", default="data/demo", help="demo data folder (built when missing or stale)")
    p.add_argument("--scale", type=float, default=1.0, help="demo data size factor (tests use 0.25)")
    p.add_argument("--max-photos", dest="max_photos", type=int, default=None,
                   help="demo data: keep only the first N train and test photos (tests)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM",
                   help=f"arms to run, of {', '.join(ARMS)} (default: all; STUDY.md's table of arms says each)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help=f"training seeds (default {' '.join(map(str, FULL['seeds']))}, "
                        f"{' '.join(map(str, QUICK['seeds']))} with --quick)")
    p.add_argument("--iters", type=int, default=None,
                   help=f"training iterations per run (default {FULL['iters']}, {QUICK['iters']} with --quick)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"the iterations are split into this many epochs; the last one runs at lr/10 "
                        f"(default {FULL['epochs']}, {QUICK['epochs']} with --quick)")
    # the 96 and 12 below are check_batch_size's at --scale 1 (a test compares them): counting the crops decodes the
    # photos, half a second at every start for a help text
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4,
                   help="training batch of every run, at most the demo data's distinct training samples (96: 12 "
                        "crops, each with 3 noise levels, 2 rainy and 3 hazy versions; fewer with --max-photos); "
                        "a batch and patch too large for the memory are refused, naming ones that fit")
    p.add_argument("--patch-size", dest="patch_size", type=int, default=64,
                   help=f"training patch side of every run, a multiple of 8, at least 16 and at most the demo data's "
                        f"training crops ({requested_params(0, 1.0, None)['train_side']} at --scale 1)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="base lr (the trainer halves it), the demo's: the paper's 2e-4 is too slow for a short budget")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--torch-threads", dest="torch_threads", type=at_least(0, " (0: torch's default)"), default=0,
                   help="torch's CPU threads for training and evaluation (0: torch's default, one per core); not "
                        "the trainers' --threads, their data-loader workers (the study's runs load in the main "
                        "process)")
    # its name until now, shown in STUDY.md's list of flags: to a trainer's user --threads means loader workers
    p.add_argument("--threads", dest="threads", type=at_least(0, " (0: torch's default)"), default=None,
                   help="deprecated: the former name of --torch-threads (it sets torch's threads, not loader workers)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no training progress bars")
    add_debug_flag(p)
    return p


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on ``--quick``; checks the numbers."""
    base = QUICK if args.quick else FULL
    suffix = "study-quick" if args.quick else "study"
    args.out = args.out or f"results/{suffix}"
    # with the study's own results: a default of figs/study, where the committed figures live, had any run (one arm,
    # two iterations) replace them
    args.figs_dir = args.figs_dir or str(Path(args.out) / "figs")
    args.seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else base["seeds"]))
    args.arms = list(dict.fromkeys(args.arms))  # as the seeds: an arm named twice made two identical rows
    args.iters = args.iters if args.iters is not None else base["iters"]
    args.epochs = args.epochs if args.epochs is not None else base["epochs"]
    if args.epochs < 1 or args.iters < args.epochs:
        raise StudySettingError(f"--iters ({args.iters}) must be at least --epochs ({args.epochs}) >= 1")
    if args.iters % args.epochs:
        raise StudySettingError(f"--iters {args.iters} must be a multiple of --epochs {args.epochs} (equal epochs)")
    # the trainer's own rules, checked here: a bad value failed every run, each with "training failed", after the
    # settings were recorded in --out, which then refused the corrected command as "another setting"
    if args.batch_size < 1:
        raise StudySettingError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.patch_size < 16 or args.patch_size % 8:
        raise StudySettingError(f"--patch-size must be a multiple of 8 and at least 16, got {args.patch_size}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise StudySettingError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.threads is not None:  # the deprecated name: said once, on stderr; the value is --torch-threads'
        if args.torch_threads and args.torch_threads != args.threads:
            raise StudySettingError(f"--threads {args.threads} and --torch-threads {args.torch_threads} disagree: "
                                    f"pass --torch-threads only (--threads is its deprecated name)")
        print(f"note: --threads is deprecated here: it sets torch's CPU threads, now --torch-threads "
              f"{args.threads} (in trainer_bary.py --threads counts data-loader workers)", file=sys.stderr)
        args.torch_threads, args.threads = args.threads, None
    bad_seeds = [s for s in args.seeds if not 0 <= s < 2 ** 63]
    if bad_seeds:
        raise StudySettingError(f"--seeds must be in 0..2**63-1 (the trainer's --seed), got {bad_seeds[0]}")
    try:  # the data's rules: the builder said them with exit status 1, after the settings above were taken
        check_build_args(0, args.scale, args.max_photos)
    except DemoDataError as exc:
        raise StudySettingError(str(exc)) from None
    # the trainer refused such patches in every run ("training failed"), after --out had recorded the setting
    params = requested_params(0, args.scale, args.max_photos)
    side = params["train_side"]
    if args.patch_size > side:
        larger = next((k / 100 for k in range(math.ceil(args.scale * 100), 401)
                       if requested_params(0, k / 100, None)["train_side"] >= args.patch_size), None)
        raise StudySettingError(f"--patch-size {args.patch_size} is larger than the demo data's training images at "
                                f"--scale {args.scale:g} ({side}x{side}) — pass --patch-size {side} or less"
                                + (f", or --scale {larger:g} or more" if larger else ""))
    check_batch_size(args, params)
    return args


def check_batch_size(args: argparse.Namespace, params: dict) -> None:
    """Refuse a ``--batch-size`` larger than the distinct training samples of the demo data ``params``
    (:func:`requested_params`) builds: each training crop with a degradation, the three noise levels of ``ID_TASKS``,
    its rainy and its hazy versions. The runs' ``--repeat`` factors (:func:`balanced_repeats`) fill any batch, so
    such a batch drew a sample twice or more; --batch-size 100000 was taken and recorded in --out, and every run then
    failed on memory (2.3 TiB at patch 32)."""
    noise_levels = sum(family(t) == "denoise" for t in ID_TASKS)
    per_crop = noise_levels + params["rain_variants_train"] + params["haze_variants_train"]
    if args.batch_size <= per_crop * len(params["train_photos"]):  # every photo gives one crop at least
        return
    crops = train_crop_count(params)  # the photos' sizes: read only for a batch that large
    samples = per_crop * crops
    if args.batch_size > samples:
        more = ", or leave out --max-photos (more photos)" if args.max_photos else ""
        raise StudySettingError(f"--batch-size {args.batch_size} is more than the demo data's {samples} distinct "
                                f"training samples ({counted(crops, 'crop')}, each with {noise_levels} noise levels, "
                                f"{params['rain_variants_train']} rainy and {params['haze_variants_train']} hazy "
                                f"versions), so a batch would hold one of them twice or more — pass --batch-size "
                                f"{samples} or less{more}")


def check_memory(args: argparse.Namespace, root: Path, device: torch.device) -> None:
    """Refuse a ``--batch-size`` and ``--patch-size`` with which the study's largest run still to train does not fit
    the memory free on ``device``, by the trainer's own estimate and check (:func:`memory_fits`): every run was
    refused by it, each with "training failed", after --out had recorded the setting (--batch-size 96 --patch-size
    384: 424 GiB). Names the largest batch at this patch, and the largest patch at this batch, that those runs fit.
    An arm whose runs are all evaluated trains no more: its caches are read on any machine."""
    runs_dir = Path(args.out) / "runs"
    arms = [a for a in args.arms if any(not (runs_dir / a / f"seed{s}" / "eval.json").is_file() for s in args.seeds)]
    fits = memory_fits(args, arms, root, device) if arms else None
    if fits is None or all(f.fits for f in fits.values()):
        return
    largest = max(fits, key=lambda a: fits[a].need.total)
    need, free = fits[largest].need, fits[largest].free
    batches = [f.smaller_batch() for f in fits.values() if not f.fits]  # a run that fits does at a smaller batch
    batch = None if None in batches else min(batches)

    def all_fit(patch: int, batch: int) -> bool:
        at = memory_fits(argparse.Namespace(**{**vars(args), "patch_size": patch, "batch_size": batch}), arms, root,
                         device)
        return at is None or all(f.fits for f in at.values())
    low, high = 1, args.patch_size // 8  # patches 8 * n; 16 the least (resolve_settings)
    while high - low > 1:  # the largest n < high that fits: the need grows with the patch
        mid = (low + high) // 2
        low, high = (mid, high) if all_fit(8 * mid, args.batch_size) else (low, mid)
    patch = 8 * low if low >= 2 else None  # low moved only to a patch that fits
    fixes = [f"--batch-size {batch} or less" if batch else None, f"--patch-size {patch} or less" if patch else None]
    fix = ", or ".join(f for f in fixes if f) or (
        "both a smaller --batch-size and a smaller --patch-size" if all_fit(16, 1) else
        "free memory there: not even --batch-size 1 --patch-size 16 fits")
    where = "the GPU" if device.type == "cuda" else "this machine"
    raise StudySettingError(f"--batch-size {args.batch_size} --patch-size {args.patch_size}: the largest of the "
                            f"study's runs to train ({largest}) needs about {human_bytes(need.total)} by the "
                            f"trainer's estimate, but {human_bytes(free)} are free on {where}, so the trainer would "
                            f"refuse it — pass {fix}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) the study; returns everything written to ``<out>/study.json``."""
    args = resolve_settings(args)
    cores = usable_cores()
    if args.torch_threads > cores:  # not refused (torch allows it), but said: the whole study would run slower
        print(f"warning: --torch-threads {args.torch_threads} is more than the {cores} cores this process may use: "
              f"torch's threads will wait on each other at every operation, often several times slower; "
              f"--torch-threads {cores} or fewer (0: torch's default) is faster", file=sys.stderr, flush=True)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    t0 = time.time()
    out, figs_dir, root = Path(args.out), Path(args.figs_dir), Path(args.root)
    for flag, folder in (("--out", out), ("--figs-dir", figs_dir)):
        # the runs' loss curves and the figures went among the demo's images: every later study (or make demo) on
        # that --root was refused for images its manifest does not list
        where, data = folder.resolve(), root.resolve()
        if inside(where, data):
            raise StudySettingError(f"{flag} {folder} is {'the' if where == data else 'inside the'} --root "
                                    f"{root} (the demo data's folder), where its images would be read as the "
                                    f"demo's — choose an {flag} outside it")
    for flag, folder in (("--out", out), ("--figs-dir", figs_dir)):  # a file in the way was met by the first write
        check_writable_folder(folder, flag, create=False)  # there: --figs-dir's after every run (86 min in the study)
    # a folder at a name the study writes was met after every run, the earlier outputs already moved aside
    names = [*(figs_dir / n for n in planned_figure_names(args.arms)), *(out / n for n in OUTPUT_FILES)]
    for path in folders_in_the_way(names)[:1]:
        flag = "--figs-dir" if path.parent == figs_dir else "--out"
        raise StudySettingError(f"{path}: a folder is where the study writes its file {path.name} — move or rename "
                                f"that folder, or choose another {flag}")
    # --device cuda without a GPU was refused after the data was built and --out had recorded the setting
    device = pick_device(args.device)
    check_memory(args, root, device)  # the trainer's own check, of the runs' own arguments: refused before --out
    # one study at a time in --out: a second one (the same command in another terminal) evaluated a run the first had
    # just trained again, beside it, and both wrote the same tables, figures and record; a trainer of one meeting the
    # other's run lock ended that study with "training failed"
    # and in --figs-dir: two studies of two --out writing one --figs-dir replaced (or moved aside) each other's figures
    with ExitStack() as held:
        held.enter_context(OutputLock(out, flag="--out", role="study", fix="choose another --out"))
        if figs_dir.resolve() != out.resolve():  # --figs-dir = --out: held already
            held.enter_context(OutputLock(figs_dir, flag="--figs-dir", role="study", fix="choose another --figs-dir"))
        return run_study(args, out, figs_dir, root, device, t0)


def study_stopped(exc: KeyboardInterrupt, out: Path) -> StudyInterrupted:
    """The error for Ctrl-C, SIGTERM or SIGHUP (``exc``) during the runs into ``out``: which stopped it, what is
    kept and how to continue, with the shell's status for it."""
    how, status = interrupted_line(exc)
    stopped = StudyInterrupted(f"study {how}; the finished runs and the last checkpoint are kept in {out}/runs. "
                               f"Run the same command again to continue.")
    stopped.exit_status = status
    return stopped


def run_study(args: argparse.Namespace, out: Path, figs_dir: Path, root: Path, device: torch.device,
              t0: float) -> dict[str, Any]:
    """:func:`main`'s steps once its flags are checked and ``out`` is held: the data, the runs on ``device``, the
    tables and the figures; returns everything written to ``<out>/study.json``. ``t0``: when the study started."""
    manifest = build_demo_data(root, seed=0, scale=args.scale, max_photos=args.max_photos, progress=args.progress)
    iters_per_epoch = args.iters // args.epochs
    repeats = balanced_repeats(manifest, iters_per_epoch * args.batch_size)
    config = {"iters": args.iters, "epochs": args.epochs, "batch_size": args.batch_size,
              "patch_size": args.patch_size, "lr": args.lr, "repeats": repeats, "preset": "tiny",
              "data_hash": manifest["content_hash"]}
    check_out_dir(out, config)
    finished = [(a, s) for s in args.seeds for a in args.arms
                if (out / "runs" / a / f"seed{s}" / "eval.json").is_file()]  # read from their caches: not estimated
    print(plan(args, repeats, finished), flush=True)
    to_run = device.type == "cpu" and len(finished) < len(args.seeds) * len(args.arms)
    note = busy_cores_note(torch.get_num_threads(), load_average(), os.cpu_count() or 1) if to_run else None
    if note:
        print(note, file=sys.stderr, flush=True)
    views = probe_views(root, manifest)

    evals, embeddings, done = {}, {}, 0
    runs = [(arm, s) for s in args.seeds for arm in args.arms]  # seed-major: an early stop has every arm
    planned, measured = estimated_seconds(args), {}
    try:
        for k, (arm, seed) in enumerate(runs, 1):
            print(f"[{k}/{len(runs)}] {arm} seed {seed}: ", end="", flush=True)
            evals[(arm, seed)], emb, seconds = run_one(args, arm, seed, root, repeats, views, device)
            if emb is not None:
                embeddings[(arm, seed)] = emb
            e = evals[(arm, seed)]
            if seconds > 0:
                done += 1
                measured.setdefault(arm, []).append(seconds)
            left = sum(np.mean(measured[a]) if a in measured else planned[a] for a, s in runs[k:]
                       if not (out / "runs" / a / f"seed{s}" / "eval.json").is_file())
            print(("cached" if seconds == 0 else f"{seconds:.0f} s") + f"; PSNR ID {group_mean(e, ID_TASKS, 0):.2f}, "
                  f"OOD {group_mean(e, OOD_TASKS, 0):.2f} dB" + (f"; about {minutes(left)} left" if left else ""),
                  flush=True)
        # the tables' "degraded" rows, scored as a run is: Ctrl-C here said only "error: interrupted"
        degraded_path = out / "degraded_input.json"
        if not degraded_path.is_file():
            write_text(degraded_path, json.dumps(evaluate_model(InputAsOutput(), root, device), indent=1) + "\n")
    except UserError as exc:  # the study's, the tester's (EvaluationStopped), a damaged checkpoint's, ...
        # Ctrl-C while a run was evaluated came as the tester's EvaluationStopped: "error: interrupted", no more
        if not isinstance(exc, EvaluationStopped) or not isinstance(exc.__cause__, KeyboardInterrupt):
            print(flush=True)  # off the line the run's progress was on: the error: line starts its own
            raise
        print(file=sys.stderr)
        raise study_stopped(exc.__cause__, out) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (StopSignal): said as which
        print(file=sys.stderr)  # off the line the run's progress was on
        raise study_stopped(exc, out) from None
    degraded = read_json(degraded_path, "delete it to have the degraded inputs evaluated again (seconds)")

    summary = summarise(evals, args.arms, args.seeds)
    labels, photos = [v.label for v in views], [v.photo for v in views]
    test = np.array([v.test for v in views])
    probe = probe_summary(embeddings, labels, photos, test, args.arms, args.seeds) if embeddings else {}
    n_probe = {"test_photos": len({v.photo for v in views if v.test}),
               "train_crops": sum(1 for v in views if not v.test and v.label == "noise 15")}
    machine = {**provenance(), **machine_info(device), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    recorded = [read_eval(out / "runs" / a / f"seed{s}") for a, s in runs]
    compute = sum(r["train_seconds"] + r["eval_seconds"] for r in recorded)
    params = parameter_counts(list(dict.fromkeys([*args.arms, METHOD])), args.patch_size)
    md = tables(summary, probe, degraded, args.arms, args.seeds, n_probe, params)
    # a file at a name written below that this study did not write as it is (a user's, or one changed since) is
    # moved aside, not replaced: <figs-dir>/psnr_by_arm.png and <out>/study.md were replaced without a trace
    planned = [*(figs_dir / n for n in figure_names(summary, probe)), out / "study.md", out / "study.json"]
    keep_aside_foreign_outputs(planned, out / OUTPUTS_RECORD, [(out, "study"), (figs_dir, "figures")], "the study")
    with recording_outputs(planned, out / OUTPUTS_RECORD):  # a stopped run's files stay the study's own
        fig_paths = figures(summary, probe, degraded, args.arms, args.seeds, figs_dir, params)
        header = [f"# BaryIR study{' (QUICK setting: not the study)' if args.quick else ''}", "",
                  f"- command: `{machine['command']}`",
                  f"- {machine_line(machine)}, {machine['platform']}",
                  f"- code: {machine['commit']}; {machine['date']}; wall time {(time.time() - t0) / 60:.1f} min "
                  f"({counted(done, 'run')} trained or evaluated in this invocation); the "
                  f"{counted(len(runs), 'run')} took {compute / 60:.1f} min (training and evaluation, as recorded by "
                  f"the invocations that ran them)",
                  f"- setting: {counted(len(args.seeds), 'seed')} ({' '.join(map(str, args.seeds))}), "
                  f"{args.iters} iterations per run, batch {args.batch_size}, patch {args.patch_size}, tiny preset, "
                  f"lr {args.lr:g}, --repeat {' '.join(f'{k}={v}' for k, v in repeats.items())}",
                  f"- figures: {', '.join(str(p) for p in fig_paths)}", ""]
        text = "\n".join(header) + "\n" + md
        write_text(out / "study.md", text + "\n")
        result = {"settings": {**config, "seeds": args.seeds, "arms": args.arms, "quick": args.quick},
                  "machine": machine, "parameters": params,
                  "networks": {a: {"backbone": ARMS[a].backbone, "model_config": arm_model_config(ARMS[a])}
                               for a in args.arms},
                  "summary": summary, "probe": probe, "probe_counts": n_probe,
                  "degraded": {t: {"psnr": v["psnr"], "ssim": v["ssim"]} for t, v in degraded.items()},
                  "figures": [str(p) for p in fig_paths], "seconds": time.time() - t0, "run_seconds": compute}
        write_text(out / "study.json", json.dumps(result, indent=1, default=str) + "\n")
    print("\n" + text)
    print(f"tables: {out / 'study.md'}; everything: {out / 'study.json'}; total {(time.time() - t0) / 60:.1f} min")
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """``python bench/study.py``: a failure the user can fix (a flag, a folder, a failed run, Ctrl-C outside a
    run) is one ``error:`` line (:func:`utils.errors.run_main`), its traceback only with ``--debug``."""
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, debug=args.debug)


if __name__ == "__main__":
    stop_signals_as_interrupt()  # kill / timeout / a closed terminal stop it as Ctrl-C does: one line naming it
    sys.exit(cli())
