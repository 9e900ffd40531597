"""What the study writes from its results: the markdown tables (:func:`tables`) and the figures
(:func:`figures`), with each comparison's parameter counts (:func:`capacity_note`)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.errors import counted
from utils.plotting import new_figure, save_figure
from utils.study.arms import (
    ARMS,
    CAPACITY_TOLERANCE,
    COMPARISONS,
    GROUPS,
    ID_TASKS,
    METHOD,
    OOD_TASKS,
    override_flags,
    parameter_counts,
)
from utils.study.probe import ID_VIEWS, OOD_VIEWS, PROBE_SETS, SPACES
from utils.study.stats import group_mean

# One colour per arm in the figures (the difference figure draws each comparison in its method's colour).
COLOURS = {"baryir": "tab:red", "restormer": "tab:grey", "no_orthogonality": "tab:blue",
           "no_contrastive": "tab:green", "no_potentials": "tab:orange", "restormer_matched": "tab:brown",
           "promptir": "tab:cyan", "barypromptir": "tab:purple"}


def _ms(v: Sequence[float] | list, digits: int = 2) -> str:
    mean, std = v
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _mean_sd(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f}" + (f" ± {a.std(ddof=1):.{digits}f}" if len(a) > 1 else "")


def spread(seeds: Sequence[int]) -> str:
    """What the tables' and figures' numbers are over ``seeds``: ``'mean ± std over 3 seeds'``, or ``'one seed: no
    std'``."""
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed: no std"


def _p(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def _ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:+.2f}" + (f" [{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]" if s["ci95"] else "")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def capacity_note(method: str, baseline: str, params: dict[str, dict[str, int]]) -> str:
    """One sentence: the two networks' parameter counts and whether capacity confounds their difference."""
    a, b = params[method]["network"], params[baseline]["network"]
    ratio = a / b
    counts = (f"{ARMS[method].label} has {_millions(a)} parameters, {ARMS[baseline].label} {_millions(b)} "
              f"(ratio {ratio:.2f})")
    if abs(ratio - 1) <= CAPACITY_TOLERANCE:
        return (f"Capacity: {counts}, within {CAPACITY_TOLERANCE:.0%}: matched in parameter count (not in "
                f"shape: where the parameters sit differs), so the number of parameters does not explain a "
                f"difference.")
    return (f"Capacity: {counts}: NOT capacity-matched; a difference may come from the "
            f"{'extra' if ratio > 1 else 'missing'} capacity as well as from the method.")


def arms_table(arms: Sequence[str], params: dict[str, dict[str, int]]) -> list[str]:
    """What each arm trains: flags, objective, parameter counts (network; potentials, training only)."""
    ref = params[METHOD]["network"]
    md = ["### Arms", "",
          f"All with --preset tiny, the same data, iterations and seeds. Parameters: the restoration network "
          f"(trained and tested), its ratio to tiny BaryNet's {ref:,}, and the potentials the WB backbones "
          f"train beside it (not used at test time).", "",
          "| arm | trainer flags | objective | parameters | / BaryNet | potentials (training only) |",
          "|---|---|---|---|---|---|"]
    for name in arms:
        arm, n = ARMS[name], params[name]
        flags = " ".join(["--backbone", arm.backbone, *override_flags(arm),
                          *(["--ablate", *arm.ablate] if arm.ablate else [])])
        objective = ("BaryIR" + (f" w/o {', '.join(arm.ablate)}" if arm.ablate else "")) if arm.wb else "L1 only"
        pots = "–" if not n["potentials"] else (f"{n['potentials']:,} (not updated)" if "potentials" in arm.ablate
                                                else f"{n['potentials']:,}")
        md.append(f"| {arm.label} | `{flags}` | {objective} | {n['network']:,} | {n['network'] / ref:.2f} | "
                  f"{pots} |")
    return md + [""]


def tables(summary: dict, probe: dict, degraded: dict, arms: Sequence[str], seeds: Sequence[int],
           n_probe: dict[str, int], params: dict[str, dict[str, int]] | None = None) -> str:
    """The markdown tables. ``params``: :func:`parameter_counts` of ``arms`` and METHOD (default: at patch 64)."""
    if params is None:
        params = parameter_counts(list(dict.fromkeys([*arms, METHOD])), 64)
    names = list(ID_TASKS + OOD_TASKS) + list(GROUPS)
    split = {**{t: "ID" for t in ID_TASKS}, **{t: "OOD" for t in OOD_TASKS}, "ID": "ID avg", "OOD": "OOD avg"}
    md = arms_table(arms, params)
    for metric, digits in (("psnr", 2), ("ssim", 4)):
        md += [f"### {metric.upper()} ({spread(seeds)})", "",
               "| task | split | degraded input | "
               + " | ".join(f"{ARMS[a].label} ({_millions(params[a]['network'])})" for a in arms) + " |",
               "|---|---|---|" + "---|" * len(arms)]
        for name in names:
            tasks = GROUPS.get(name, (name,))
            deg = group_mean(degraded, tasks, 0 if metric == "psnr" else 1)
            cells = [_ms(summary["table"][a][name][metric], digits) for a in arms]
            md.append(f"| {name if name not in GROUPS else '**average**'} | {split[name]} | {deg:.{digits}f} | "
                      + " | ".join(cells) + " |")
        md.append("")
    for k, comparison in enumerate(summary["comparisons"].values()):
        method, baseline = comparison["method"], comparison["baseline"]
        md += [f"### {ARMS[method].label} − {ARMS[baseline].label}, PSNR (dB)", ""]
        if k == 0:
            md += ["Image level: the differences of every (seed, image) pair; seed level: one difference per seed "
                   "(the task's, or the group's, mean). 95% t intervals; p from the paired t-test and the Wilcoxon "
                   "signed-rank test.", ""]
        md += [capacity_note(method, baseline, params), "",
               "| task | image level: mean [95% CI] | p (t) | p (Wilcoxon) | pairs | seed level: mean [95% CI] "
               "| p (t) | seeds | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for name in names:
            c = comparison["tasks"][name]
            i, s = c["images"], c["seeds"]
            md.append(f"| {name if name not in GROUPS else f'**{name}**'} | {_ci(i)} | {_p(i['p_t'])} | "
                      f"{_p(i['p_wilcoxon'])} | {i['n']} | {_ci(s)} | {_p(s['p_t'])} | {s['n']} | {c['verdict']} |")
        md.append("")
    if summary["ablations"]:
        md += ["### Ablations: arm − full BaryIR, PSNR (dB; negative: the term helps)", "",
               "| arm | split | image level: mean [95% CI] | p (t) | seed level: mean [95% CI] | p (t) | verdict |",
               "|---|---|---|---|---|---|---|"]
        for arm, groups in summary["ablations"].items():
            for g, c in groups.items():
                md.append(f"| {ARMS[arm].label} | {g} | {_ci(c['images'])} | {_p(c['images']['p_t'])} | "
                          f"{_ci(c['seeds'])} | {_p(c['seeds']['p_t'])} | {c['verdict']} |")
        md.append("")
    if probe:
        md += [f"### Linear probe of degradation type (accuracy %, {spread(seeds)})", "",
               f"Held-out photos: {counted(n_probe['test_photos'], 'test photo')}, leave one out; probe training "
               f"data: {counted(n_probe['train_crops'], 'training crop')}"
               f"{' plus the other test photos' if n_probe['test_photos'] > 1 else ''}. Classes: ID = "
               f"{', '.join(ID_VIEWS)} (chance {100 / len(ID_VIEWS):.0f}%); all = ID + {', '.join(OOD_VIEWS)} "
               f"(chance {100 / len(PROBE_SETS['all']):.1f}%). cos: mean cosine of the flattened WB and residual "
               f"latents of the held-out views.", "",
               "| arm | WB (ID) | residual (ID) | source z (ID) | WB (all) | residual (all) | source z (all) "
               "| cos(WB, residual) | mean abs cos |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, per in probe.items():
            cells = [_mean_sd(per[f"{c}/{s}"], 1, 100) for c in PROBE_SETS for s in SPACES]
            md.append(f"| {ARMS[arm].label} | " + " | ".join(cells)
                      + f" | {_mean_sd(per['cos'], 3)} | {_mean_sd(per['abs_cos'], 3)} |")
        md += ["", f"Chance: {100 / len(ID_VIEWS):.0f}% (ID), {100 / len(PROBE_SETS['all']):.1f}% (all).", ""]
    return "\n".join(md)


PSNR_FIGURE, DIFFERENCE_FIGURE, PROBE_FIGURE = "psnr_by_arm.png", "baryir_minus_baseline.png", "probe_accuracy.png"


def _figure_list(compared: bool, probed: bool) -> list[str]:
    """The files :func:`figures` writes, in its order: the PSNR figure, the difference figure (``compared``: arms
    of a comparison ran), the probe's (``probed``: a WB arm's embeddings were probed)."""
    return [PSNR_FIGURE, *([DIFFERENCE_FIGURE] if compared else []), *([PROBE_FIGURE] if probed else [])]


def figure_names(summary: dict, probe: dict) -> list[str]:
    """The names of the files :func:`figures` writes for ``summary`` and ``probe``."""
    return _figure_list(bool(summary["comparisons"]), bool(probe))


def planned_figure_names(arms: Sequence[str]) -> list[str]:
    """The names :func:`figure_names` gives once ``arms`` have run (known before any run): the difference figure
    with a pair of :data:`COMPARISONS` among them, the probe's with a WB arm."""
    return _figure_list(any(m in arms and b in arms for m, b in COMPARISONS), any(ARMS[a].wb for a in arms))


def figures(summary: dict, probe: dict, degraded: dict, arms: Sequence[str], seeds: Sequence[int],
            figs_dir: Path, params: dict[str, dict[str, int]] | None = None) -> list[Path]:
    """``psnr_by_arm.png``, ``baryir_minus_baseline.png`` (with any comparison) and ``probe_accuracy.png`` (with a
    probe) in ``figs_dir``; returns their paths. ``summary``: :func:`utils.study.stats.summarise`; ``probe``:
    :func:`utils.study.probe.probe_summary`; ``degraded``: the degraded inputs' evaluation, as a run's."""
    figs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = COLOURS

    # A dot plot: each arm's mean as a point (with its std over seeds as a bar, when there are several seeds).
    # PSNR's scale has no meaningful zero here; bars drawn from a cut axis (they started at the lowest mean
    # - 3 dB) made their lengths, and so the arms' ratios, mislead. Points are read by position alone.
    several = len(seeds) > 1
    fig = new_figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(ID_TASKS), len(OOD_TASKS)]})
    step = 0.8 / len(arms)
    for ax, (g, tasks) in zip(axes, GROUPS.items()):
        x = np.arange(len(tasks))
        for k, arm in enumerate(arms):
            rows = [summary["table"][arm][t]["psnr"] for t in tasks]
            ax.errorbar(x + (k - (len(arms) - 1) / 2) * step, [r[0] for r in rows],
                        yerr=[r[1] or 0.0 for r in rows] if several else None, fmt="o", ms=4, capsize=2,
                        color=colours[arm], label=ARMS[arm].label)
        inputs = [group_mean(degraded, (t,), 0) for t in tasks]
        ax.hlines(inputs, x - 0.45, x + 0.45, colors="k", lw=2, label="degraded input")
        for edge in x[:-1] + 0.5:
            ax.axvline(edge, color="grey", lw=0.5, alpha=0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(x, tasks)
        ax.set_title(f"{'in' if g == 'ID' else 'out of'} distribution")
        ax.set_ylabel("PSNR (dB)")
    handles, names = axes[0].get_legend_handles_labels()
    ncol = min(len(names), 5)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"PSNR by arm, mean ± std over {len(seeds)} seeds" if several else
                 "PSNR by arm, one seed (no error bars: one training per arm)")
    fig.tight_layout(rect=(0, 0.02 + 0.045 * math.ceil(len(names) / ncol), 1, 1))
    paths.append(figs_dir / PSNR_FIGURE)
    save_figure(fig, paths[-1], dpi=110)

    if summary["comparisons"]:
        names = list(ID_TASKS + OOD_TASKS) + list(GROUPS)
        comparisons = list(summary["comparisons"].values())
        fig = new_figure(figsize=(10, 0.6 + 3.2 * len(comparisons)))
        axs = fig.subplots(len(comparisons), 1, squeeze=False)
        for ax, comparison in zip(axs[:, 0], comparisons):
            method, baseline = comparison["method"], comparison["baseline"]
            for k, name in enumerate(names):
                c = comparison["tasks"][name]
                i = c["images"]
                err = None if i["ci95"] is None else [[i["mean"] - i["ci95"][0]], [i["ci95"][1] - i["mean"]]]
                ax.errorbar(k, i["mean"], yerr=err, fmt="o", color=colours[method], capsize=3,
                            label="(seed, image) pairs, 95% CI" if k == 0 else None)
                ax.plot([k + 0.15] * len(seeds), c["seeds"]["values"], "x", color="k",
                        label="per-seed difference" if k == 0 else None)
            ax.axhline(0, color="grey", lw=0.8)
            ax.axvline(len(ID_TASKS) - 0.5, color="grey", ls=":")
            ax.axvline(len(ID_TASKS + OOD_TASKS) - 0.5, color="grey", ls=":")
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set_ylabel("PSNR difference (dB)")
            counts = ""
            if params is not None:
                counts = (f"; {_millions(params[method]['network'])} vs "
                          f"{_millions(params[baseline]['network'])} parameters")
            ax.set_title(f"{ARMS[method].label} − {ARMS[baseline].label} (positive: {ARMS[method].label} "
                         f"better{counts})", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(figs_dir / DIFFERENCE_FIGURE)  # the name of the figure when it had one comparison
        save_figure(fig, paths[-1], dpi=110)
    if probe:
        fig = new_figure(figsize=(12, 4.6))
        axes = fig.subplots(1, 2, sharey=True)
        space_colours = {"wb": "tab:blue", "residual": "tab:orange", "source": "tab:grey"}
        for ax, (set_name, classes) in zip(axes, PROBE_SETS.items()):
            x = np.arange(len(probe))
            for k, space in enumerate(SPACES):
                vals = [np.asarray(per[f"{set_name}/{space}"]) * 100 for per in probe.values()]
                ax.bar(x + (k - 1) * 0.27, [v.mean() for v in vals], 0.27,
                       yerr=[v.std(ddof=1) for v in vals] if several else None, capsize=2,
                       color=space_colours[space], label={"wb": "WB", "source": "source z"}.get(space, space))
            ax.axhline(100 / len(classes), color="k", ls="--", lw=1, label="chance")
            ax.set_xticks(x, [textwrap.fill(ARMS[a].label, 16) for a in probe], fontsize=7)
            ax.set_title(f"{len(classes)} classes ({set_name})")
            ax.set_ylim(0, 105)
        axes[0].set_ylabel("probe accuracy on held-out photos (%)")
        axes[1].legend(fontsize=8)
        fig.suptitle("Linear probe of degradation type")
        fig.tight_layout()
        paths.append(figs_dir / PROBE_FIGURE)
        save_figure(fig, paths[-1], dpi=110)
    return paths
