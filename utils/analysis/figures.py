"""Figures of the WB and residual spaces, and the pipeline diagram of the README.

Each ``*_figure`` function takes plain arrays/tensors and returns a matplotlib figure whose
titles and caption say what its data shows (measured numbers, not the paper's prediction);
the function of the same name without ``_figure`` writes it to one PNG and returns its path.
Figures are built by :mod:`utils.plotting` (headless, the caller's backend left alone) and written whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from utils.analysis.embeddings import (
    explained_variance,
    nearest_neighbour_accuracy,
    nearest_neighbour_chance,
    pca_2d,
)
from utils.errors import counted
from utils.plotting import figure_png, new_figure, save_figure, wrapped_to_width

SAVED_AS = {"dpi": 110, "bbox_inches": "tight"}  # how these figures are written (and rendered: png_of)


def _save(fig, path: str | os.PathLike) -> Path:
    return save_figure(fig, path, **SAVED_AS)


def png_of(fig) -> bytes:
    """``fig`` rendered as :func:`_save` writes it, in memory."""
    return figure_png(fig, **SAVED_AS)


def _caption(fig, text: str) -> None:
    """``text`` under the figure (its ``supxlabel``), wrapped to the figure's width."""
    fig.supxlabel(wrapped_to_width(fig, text, 8), fontsize=8)


def _panel_axes(ax) -> None:
    """An image axis with no ticks or spines, but whose y label (a row's name) still shows."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _titled(fig, title: str, source: str | None) -> None:
    """``title`` as the figure's, with ``source`` (which network and which data) on lines of their own under it,
    each wrapped to the figure's width (the title's 12 points: a long checkpoint path ran past both sides)."""
    lines = [title] if source is None else [title, source]
    fig.suptitle("\n".join(wrapped_to_width(fig, line, 12) for line in lines), fontsize=12)


def takeaway_maps_figure(images: Sequence[np.ndarray], names: Sequence[str], wb_maps: Sequence[np.ndarray],
                         res_maps: Sequence[np.ndarray],
                         scale_label: str = "L2 distance of embeddings / their mean norm",
                         photo: str | None = None, source: str | None = None):
    """The paper's takeaway figure: how far each embedding moves between degradations of one photo.

    ``images``: ``n`` views ``(H, W, 3)`` in [0, 1], the first the reference; ``wb_maps[i]`` and
    ``res_maps[i]``: ``(H, W)`` distance of the WB / residual embedding of view ``i + 1`` from the
    reference's (so ``n - 1`` of each). Row 1 shows the views; rows 2 and 3 the WB and residual map
    of each view under it, laid over the reference photo on one colour scale shared by both rows
    (clipped at the 99th percentile of all map values). The title and caption give the measured
    means, and name ``photo`` (the photo the views are of) and ``source`` (a line saying which network and data)
    when given. Returns the matplotlib figure (``1 + 2 (n - 1)`` image axes and a colour bar).
    """
    n = len(images)
    if n < 2 or len(names) != n or len(wb_maps) != n - 1 or len(res_maps) != n - 1:
        raise ValueError(f"takeaway maps need n >= 2 images and names and n - 1 maps of each kind, got "
                         f"{n} images, {len(names)} names, {len(wb_maps)} WB and {len(res_maps)} residual maps")
    values = np.concatenate([np.ravel(m) for m in list(wb_maps) + list(res_maps)])
    vmax = float(np.percentile(values, 99)) or float(values.max()) or 1.0
    fig = new_figure(figsize=(2.1 * n + 1.2, 6.4), layout="constrained")
    grid = fig.add_gridspec(3, n + 1, width_ratios=[1.0] * n + [0.06])  # the last column: the colour bar
    base = np.clip(images[0], 0, 1).mean(axis=2)
    im = None
    for i, (img, name) in enumerate(zip(images, names)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(f"{name} (reference)" if i == 0 else name, fontsize=9)
        _panel_axes(ax)
        if i == 0:
            continue
        for row, m, kind in ((1, wb_maps[i - 1], "WB"), (2, res_maps[i - 1], "residual")):
            ax = fig.add_subplot(grid[row, i])
            ax.imshow(base, cmap="gray")
            im = ax.imshow(m, cmap="inferno", vmin=0, vmax=vmax, alpha=0.75)
            ax.set_title(f"mean {float(np.mean(m)):.3f}", fontsize=8)
            _panel_axes(ax)
            if i == 1:
                ax.set_ylabel(f"{kind} embedding:\ndistance from\n{names[0]}", fontsize=9)
    fig.colorbar(im, cax=fig.add_subplot(grid[1:, n]), extend="max", label=scale_label)
    wb_mean = float(np.mean([np.mean(m) for m in wb_maps]))
    res_mean = float(np.mean([np.mean(m) for m in res_maps]))
    ratio = f"{res_mean / wb_mean:.1f}x" if wb_mean > 0 else "undefined"
    whose = f"the embeddings of {photo}'s views move from its {names[0]} view" if photo else \
        f"each embedding moves from {names[0]}"
    _titled(fig, f"How far {whose}: mean WB {wb_mean:.3f}, mean residual {res_mean:.3f} (residual / WB {ratio})",
            source)
    _caption(fig, f"Maps: per-position distance between the embedding of the view above and that of {names[0]}, "
             f"laid over {names[0]}; one colour scale for both rows, clipped at the 99th percentile "
             f"({vmax:.3f}) of all map values. Means over the {n - 1} views.")
    return fig


def takeaway_maps(images: Sequence[np.ndarray], names: Sequence[str], wb_maps: Sequence[np.ndarray],
                  res_maps: Sequence[np.ndarray], path: str | os.PathLike,
                  scale_label: str = "L2 distance of embeddings / their mean norm",
                  photo: str | None = None, source: str | None = None) -> Path:
    """:func:`takeaway_maps_figure` written to ``path`` (PNG); returns the path."""
    return _save(takeaway_maps_figure(images, names, wb_maps, res_maps, scale_label, photo, source), path)


def _rms_radius(points: np.ndarray) -> float:
    """Root-mean-square distance of ``(N, 2)`` points from their mean (1 when they all coincide)."""
    centred = points - points.mean(axis=0, keepdims=True)
    return float(np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))) or 1.0


def _percent(x: float) -> str:
    return f"{100 * x:.0f} %"


def embedding_projection_figure(wb_feats, res_feats, labels: Sequence[str], photos: Sequence[str] | None = None,
                                source: str | None = None):
    """2-D PCA of pooled WB and residual embeddings, coloured by degradation, titled with what separates them.

    ``wb_feats``, ``res_feats``: ``(N, D)`` arrays or tensors (one row per degraded view);
    ``labels``: the ``N`` degradations; ``photos``: the ``N`` source photos (optional; drawn as
    marker shapes and scored too). Each panel's title gives the leave-one-out 1-nearest-neighbour
    accuracy of the degradation (and the photo) in the full ``D``-dimensional space, beside its
    chance level (:func:`~utils.analysis.embeddings.nearest_neighbour_chance`). Each panel's PCA
    coordinates are divided by their RMS radius so both panels share one axis range (the caption
    gives the radii). ``source``: a line under the title saying which network and data (optional). Returns the
    matplotlib figure (two panel axes).
    """
    labels = [str(x) for x in labels]
    kinds = list(dict.fromkeys(labels))
    photo_kinds = list(dict.fromkeys(photos)) if photos is not None else []
    markers = "osD^vP*Xph"
    n = len(np.asarray(wb_feats))
    for what, values in (("res_feats", res_feats), ("labels", labels), ("photos", photos)):
        if values is not None and len(values) != n:
            raise ValueError(f"embedding_projection_figure: {what} has {len(values)} rows, wb_feats {n}: give one "
                             f"per view")
    if len(kinds) > 20 or len(photo_kinds) > len(markers):  # beyond that, colours (or marker shapes) repeat
        raise ValueError(f"embedding_projection_figure tells at most 20 degradations and {len(markers)} photos apart "
                         f"(got {len(kinds)} and {len(photo_kinds)}): draw fewer at a time")
    colours = matplotlib.colormaps["tab10" if len(kinds) <= 10 else "tab20"]
    fig = new_figure(figsize=(11.5, 5.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    radii = []
    for ax, feats, space in ((axes[0], wb_feats, "WB"), (axes[1], res_feats, "residual")):
        feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        pts = pca_2d(feats).numpy().astype(np.float64)
        radius = _rms_radius(pts)
        radii.append(radius)
        pts = (pts - pts.mean(axis=0, keepdims=True)) / radius
        for i, (x, y) in enumerate(pts):
            marker = markers[photo_kinds.index(photos[i])] if photos is not None else "o"
            ax.scatter(x, y, s=34, marker=marker, color=colours(kinds.index(labels[i])), alpha=0.85,
                       edgecolors="none")
        var = explained_variance(feats).numpy()
        ax.set_xlabel(f"PC 1 ({_percent(var[0])} of variance)")
        ax.set_ylabel(f"PC 2 ({_percent(var[1])} of variance)")
        ax.yaxis.set_tick_params(labelleft=True)
        title = (f"{space} codes: degradation 1-NN {_percent(nearest_neighbour_accuracy(feats, labels))} "
                 f"(chance {_percent(nearest_neighbour_chance(labels))})")
        if photos is not None:
            title += (f"\nphoto 1-NN {_percent(nearest_neighbour_accuracy(feats, photos))} "
                      f"(chance {_percent(nearest_neighbour_chance(photos))})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=colours(c), label=k) for c, k in enumerate(kinds)]
    handles += [Line2D([], [], ls="", marker=markers[c], color="0.4", label=f"photo {p}")
                for c, p in enumerate(photo_kinds)]
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    what = counted(len(labels), "view") + (f" ({counted(len(photo_kinds), 'photo')} x "
                                           f"{counted(len(kinds), 'degradation')})" if photo_kinds else "")
    _titled(fig, f"PCA of pooled embeddings of {what}, coloured by degradation", source)
    dim = int(np.asarray(wb_feats).shape[1])
    _caption(fig, f"1-NN: each view labelled as its nearest other view in the full {dim}-D pooled space "
             f"(leave one out); chance: the score of a random neighbour. Coordinates: each panel's PCA "
             f"projection divided by its RMS radius (WB {radii[0]:.3g}, residual {radii[1]:.3g}), so both "
             f"panels share one axis range.")
    return fig


def embedding_projection(wb_feats, res_feats, labels: Sequence[str], path: str | os.PathLike,
                         photos: Sequence[str] | None = None, source: str | None = None) -> Path:
    """:func:`embedding_projection_figure` written to ``path`` (PNG); returns the path."""
    return _save(embedding_projection_figure(wb_feats, res_feats, labels, photos, source), path)


def pipeline_diagram(path: str | os.PathLike) -> Path:
    """The BaryIR pipeline, drawn from scratch for the README."""
    fig = new_figure(figsize=(12, 5.0))
    ax = fig.subplots()
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 5.0)
    ax.axis("off")

    def box(x, y, w, h, text, colour):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=colour, ec="#333", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    def arrow(x0, y0, x1, y1, text="", style="-|>", rad=0.0):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=12, lw=1.1,
                                     color="#333", connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=7.5)

    box(0.1, 1.7, 1.2, 0.8, "degraded x\n(noise, rain,\nhaze, ...)", "#f3e5d8")
    box(1.7, 1.6, 1.6, 1.0, "encoder\n3 Restormer levels\n+ latent blocks", "#d8e6f3")
    box(3.8, 1.7, 0.9, 0.8, "source\nlatent z", "#eeeeee")
    box(5.1, 2.7, 1.5, 0.8, "barylatent + LN\nWB latent b", "#cfe8cf")
    box(5.1, 0.7, 1.5, 0.8, "residual\nr = z - b", "#f3d8d8")
    box(7.3, 2.7, 1.8, 0.8, "main decoder\n(from cat[b, r])", "#d8e6f3")
    box(7.3, 0.7, 1.8, 0.8, "residual decoder\n(from r)", "#f3d8d8")
    box(9.8, 2.7, 1.3, 0.8, "restored\ny = dec + x", "#f3e5d8")
    box(4.6, 4.0, 2.5, 0.7, "potentials f_1..f_K, one per\nsource domain (training only)", "#fff6c8")
    arrow(1.3, 2.1, 1.7, 2.1)
    arrow(3.3, 2.1, 3.8, 2.1)
    arrow(4.7, 2.2, 5.1, 3.0)
    arrow(4.7, 2.0, 5.1, 1.1)
    arrow(6.6, 3.1, 7.3, 3.1)
    arrow(6.6, 1.1, 7.3, 1.1)
    arrow(6.6, 1.3, 7.3, 2.9)
    arrow(5.6, 2.7, 5.6, 1.5)  # r is z minus b: b enters the residual too
    ax.text(5.38, 2.05, "b", fontsize=7.5)
    arrow(8.2, 1.5, 8.2, 2.7, "skips + 0.8 q")
    arrow(2.5, 2.6, 7.6, 3.5, rad=-0.25)
    ax.text(2.2, 3.2, "encoder skips e1..e3", fontsize=7.5)
    arrow(9.1, 3.1, 9.8, 3.1)
    arrow(5.85, 3.5, 5.85, 4.0, style="<|-|>")
    ax.text(5.95, 3.68, "f_k(b)", fontsize=7.5)
    ax.text(0.1, 0.15, "map loss  =  mean_i lambda_k (transport c(z,b) + w (orthogonality <b,r> + contrastive on r)"
            " - f_k(b))  +  Sigma * L1(y, target), w = 0.05 (DDP trainer: 0.02);   potentials: max over f, "
            "congruence sum_k lambda_k f_k = 0", fontsize=7.6)
    ax.text(0.1, 4.6, "BaryIR", fontsize=13, weight="bold")
    return _save(fig, path)
