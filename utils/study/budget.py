"""The study's budget: iterations and seeds per setting (:data:`FULL`, :data:`QUICK`), the measured
cost of a run of each arm, and the plan printed before the runs (:func:`plan`)."""
from __future__ import annotations

import argparse
from typing import Collection

from utils.errors import counted
from utils.runtime import busy_cores
from utils.study.arms import ARMS, MATCHED_DIM

FULL = dict(iters=400, epochs=4, seeds=[0, 1, 2])
QUICK = dict(iters=60, epochs=2, seeds=[0])  # evaluation dominates: one seed keeps it near 10 minutes

# Measured on this project's 2-core CPU with one torch thread while another process used the other
# core (so on the safe side): seconds per training iteration of the tiny preset at batch 4, patch 64
# (scaled by batch x patch^2), and seconds to evaluate one model on the nine tasks at demo scale 1
# (about 0.9 s per 224x288 image for BaryNet) plus, for the WB backbones, the probe's 136 embeddings.
# With both cores free (two threads) BaryNet trains at about 0.35 s per iteration (the demo's log).
# Keyed by Arm.cost_key (the backbone, and its width overrides). The entries in UNMEASURED are guesses
# from the networks' sizes: the full study has run all 24 runs since, but STUDY.md records only their
# total (86.1 minutes of training and evaluation), not each arm's, so these stay guesses; the estimate of
# that setting is above that total (tests/test_study.py reads it from STUDY.md). Replace them (and drop
# them from UNMEASURED) with an arm's recorded train_seconds and eval_seconds (its runs' eval.json).
MATCHED = f"Restormer dim={MATCHED_DIM}"
SEC_PER_ITER = {"BaryNet": 0.6, "Restormer": 0.35, MATCHED: 0.75, "PromptIR": 0.6, "BaryPromptIR": 0.8}
EVAL_SECONDS = {"BaryNet": 60.0, "Restormer": 30.0, MATCHED: 45.0, "PromptIR": 40.0, "BaryPromptIR": 70.0}
UNMEASURED = frozenset({MATCHED, "PromptIR", "BaryPromptIR"})
FREE_CORES_FACTOR = 0.6
# Seconds a run costs beside its iterations and its images' evaluation: the trainer's start-up (network, potentials,
# data scan, loader), its checkpoint, log and loss figure, loading the finished checkpoint, the evaluation's and the
# probe's overhead. Measured roughly at tiny settings, where it is nearly all a run costs (--iters 2 --epochs 1
# --batch-size 2 --patch-size 32 --scale 0.25 --max-photos 2), on this project's 2-core CPU while other processes
# used the cores (load average 3 to 4): train_seconds + eval_seconds (eval.json) less what the rates above give
# came to 5 to 22 s per run (BaryIR 7, 13, 14 s; Restormer 5, 16 s; BaryPromptIR 12, 22 s; the new-user trial had
# BaryIR 26 s and Restormer 7 s in all), and to next to nothing on a quiet moment (a BaryIR ablation: 2 s in all).
# 20 s keeps the estimate's "up to" for the loaded machine. At the study's own setting the rates above, measured
# on whole runs, already hold part of it: there the estimate errs on the safe side.
FIXED_SECONDS = 20.0


def estimated_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Planned seconds of one run of each arm on this project's CPU: its iterations, its evaluation at the data's
    scale and the fixed cost of a run (:data:`FIXED_SECONDS`)."""
    scale = args.batch_size * args.patch_size ** 2 / (4 * 64 ** 2)
    return {a: args.iters * SEC_PER_ITER[ARMS[a].cost_key] * scale + EVAL_SECONDS[ARMS[a].cost_key] * args.scale ** 2
            + FIXED_SECONDS for a in args.arms}


def busy_cores_note(threads: int, load: float, cores: int) -> str | None:
    """The study's note when other processes keep the cores busy (:func:`utils.runtime.busy_cores`), else None."""
    busy = busy_cores(threads, load, cores)
    return f"note: {busy}: --torch-threads 1 can be several times faster here" if busy else None


def minutes(seconds: float) -> str:
    """``seconds`` as the plan prints them: ``"12 min"`` from a minute on, ``"45 s"`` below."""
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plan(args: argparse.Namespace, repeats: dict[str, int], finished: Collection[tuple[str, int]] = ()) -> str:
    """The lines printed before the runs: arms, seeds, the budget per run, the data, the time estimate
    (:func:`estimated_seconds`; ``*``: an arm whose cost is in :data:`UNMEASURED`), the output folders.
    ``finished``: the (arm, seed) runs already evaluated in ``--out``, read from their caches: left out of the
    estimate."""
    per_run = estimated_seconds(args)
    runs = [(a, s) for s in args.seeds for a in args.arms]
    left = [(a, s) for a, s in runs if (a, s) not in set(finished)]
    total = sum(per_run[a] for a, _ in left)
    guessed = {a for a in per_run if ARMS[a].cost_key in UNMEASURED}
    per_run = {(f"{a}*" if a in guessed else a): s for a, s in per_run.items()}
    decay = ", the last at lr/10" if args.epochs > 1 else ""
    quick = (f" (QUICK: {counted(len(args.seeds), 'seed')} x {args.iters} iterations, not the study's "
             f"{len(FULL['seeds'])} x "
             f"{FULL['iters']}; it checks the pipeline, not the claims)") if args.quick else ""
    if not left:
        estimate = (f"all {counted(len(runs), 'run')} already finished in {args.out} (read from their caches): only "
                    f"the tables and figures are left")
    else:
        done = len(runs) - len(left)
        estimate = ((f"{done} of {counted(len(runs), 'run')} already finished in {args.out} (read from their "
                     f"caches); the other {len(left)}: " if done else "")
                    + f"up to {minutes(total)} on this project's 2-core CPU when another process holds a core, "
                    f"about {minutes(FREE_CORES_FACTOR * total)} with both free "
                    f"({', '.join(f'{a} {minutes(s)}' for a, s in per_run.items())} per seed, on the safe side"
                    + ("; * guessed from the network's size: the recorded study gives only its runs' total" if guessed
                       else "")
                    + "); finished runs are skipped")
    lines = [f"BaryIR study{quick}",
             f"  arms:   {', '.join(args.arms)}",
             f"  seeds:  {' '.join(map(str, args.seeds))}   ({counted(len(args.arms) * len(args.seeds), 'training')})",
             f"  per run: {args.iters} iterations ({counted(args.epochs, 'epoch')} of {args.iters // args.epochs}"
             f"{decay}), "
             f"batch {args.batch_size}, patch {args.patch_size}, tiny preset, lr {args.lr:g}",
             f"  data:   {args.root} (scale {args.scale:g}), --repeat "
             + " ".join(f"{k}={v}" for k, v in repeats.items()),
             f"  estimate: {estimate}",
             f"  out:    {args.out}   figures: {args.figs_dir}"]
    return "\n".join(lines)
