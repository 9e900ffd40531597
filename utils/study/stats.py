"""The study's statistics: paired differences of PSNR between arms over (seed, image) and over seeds,
their tests and plain verdicts, and the per-arm summary over seeds.

``evals`` everywhere: ``{(arm, seed): {task: {"psnr", "ssim", "images": {name: [psnr, ssim]}}}}``, as
:func:`utils.study.runs.evaluate_model` returns per run.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import numpy as np

from utils.study.arms import ARMS, COMPARISONS, GROUPS, ID_TASKS, METHOD, OOD_TASKS


def paired_stats(d: Sequence[float]) -> dict[str, Any]:
    """Mean of paired differences with a 95% t interval, the paired t-test and Wilcoxon signed-rank p."""
    from scipy import stats
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean": float(d.mean()) if n else float("nan"),
                           "sd": float(d.std(ddof=1)) if n > 1 else None, "ci95": None, "p_t": None,
                           "p_wilcoxon": None}
    if n > 1:
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        out["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
        if d.std() > 0:
            out["p_t"] = float(stats.ttest_1samp(d, 0.0).pvalue)
        if np.any(d != 0):
            with contextlib.suppress(ValueError):
                out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return out


def excludes_zero(s: dict[str, Any]) -> bool:
    """Whether a :func:`paired_stats` result's 95% interval excludes 0 (False without one: a single value)."""
    return s["ci95"] is not None and (s["ci95"][0] > 0 or s["ci95"][1] < 0)


NEGLIGIBLE_DB = 0.05  # PSNR differences below this are not worth a claim (tables print two decimals)


def verdict(images: dict[str, Any], seeds: dict[str, Any], better: str, worse: str) -> str:
    """One plain sentence from the image-level and seed-level tests (differences ``a - b``, positive: ``better``).

    "Larger than the seed-to-seed noise" needs the seed-level 95% interval to exclude 0; the
    image-level test alone treats the same image under different seeds as independent pairs, so
    it can only say the difference is consistent over images.
    """
    small = f"; negligible (under {NEGLIGIBLE_DB} dB)" if abs(images["mean"]) < NEGLIGIBLE_DB else ""
    if excludes_zero(seeds):
        return f"larger than the seed-to-seed noise: {better if seeds['mean'] > 0 else worse}{small}"
    if excludes_zero(images):
        who = better if images["mean"] > 0 else worse
        tail = (f" but not larger than the seed-to-seed noise ({seeds['n']} seeds)" if seeds["n"] > 1
                else "; one seed, so the seed-to-seed noise is not measured")
        return f"consistent over images ({who}){tail}{small}"
    return "not distinguishable from noise"


def psnr_matrix(evals: dict, arm: str, seeds: Sequence[int], tasks: Sequence[str]) -> dict[int, np.ndarray]:
    """Per seed, the PSNR of every (task, image) in a fixed order (the pairing key)."""
    out = {}
    for s in seeds:
        e = evals[(arm, s)]
        out[s] = np.array([e[t]["images"][name][0] for t in tasks for name in sorted(e[t]["images"])])
    return out


def group_mean(e: dict, tasks: Sequence[str], metric: int) -> float:
    """Mean over tasks of the task's mean over images (the paper's average)."""
    return float(np.mean([np.mean([v[metric] for v in e[t]["images"].values()]) for t in tasks]))


def compare(evals: dict, a: str, b: str, seeds: Sequence[int], tasks: Sequence[str]) -> dict[str, Any]:
    """PSNR of arm ``a`` minus arm ``b``: paired over (seed, image), and over seeds (group means)."""
    ma, mb = psnr_matrix(evals, a, seeds, tasks), psnr_matrix(evals, b, seeds, tasks)
    images = paired_stats(np.concatenate([ma[s] - mb[s] for s in seeds]))
    per_seed = [group_mean(evals[(a, s)], tasks, 0) - group_mean(evals[(b, s)], tasks, 0) for s in seeds]
    seed_level = paired_stats(per_seed)
    seed_level["values"] = per_seed
    return {"images": images, "seeds": seed_level}


def comparison_key(method: str, baseline: str) -> str:
    """A comparison's key in ``summary["comparisons"]`` (and ``study.json``): ``"baryir_vs_restormer"``."""
    return f"{method}_vs_{baseline}"


def summarise(evals: dict, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean +- std over seeds of PSNR/SSIM per arm and task (and per group), and the comparisons."""
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = {}
        for name in list(ID_TASKS + OOD_TASKS) + list(GROUPS):
            tasks = GROUPS.get(name, (name,))
            vals = np.array([[group_mean(evals[(arm, s)], tasks, m) for m in (0, 1)] for s in seeds])
            rows[name] = {"psnr": [float(vals[:, 0].mean()), float(vals[:, 0].std(ddof=1)) if len(seeds) > 1 else None],
                          "ssim": [float(vals[:, 1].mean()), float(vals[:, 1].std(ddof=1)) if len(seeds) > 1 else None],
                          "per_seed_psnr": vals[:, 0].tolist()}
        table[arm] = rows
    out: dict[str, Any] = {"table": table, "comparisons": {}, "ablations": {}}
    for method, baseline in COMPARISONS:
        if method in arms and baseline in arms:
            rows = {}
            for name in list(ID_TASKS + OOD_TASKS) + list(GROUPS):
                c = compare(evals, method, baseline, seeds, GROUPS.get(name, (name,)))
                c["verdict"] = verdict(c["images"], c["seeds"], f"{ARMS[method].label} better", "baseline better")
                rows[name] = c
            out["comparisons"][comparison_key(method, baseline)] = {"method": method, "baseline": baseline,
                                                                     "tasks": rows}
    if METHOD in arms:
        for arm in arms:
            if ARMS[arm].ablate:
                out["ablations"][arm] = {}
                for g, tasks in GROUPS.items():
                    c = compare(evals, arm, METHOD, seeds, tasks)
                    c["verdict"] = verdict(c["images"], c["seeds"], "the ablation better",
                                           "full BaryIR better")
                    out["ablations"][arm][g] = c
    return out
