"""Figures of the WB and residual spaces, and the pipeline diagram of the README.

All functions take plain arrays/tensors, write one PNG and return its path; matplotlib
runs headless (Agg).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def takeaway_maps(images: Sequence[np.ndarray], names: Sequence[str], wb_maps: Sequence[np.ndarray],
                  res_maps: Sequence[np.ndarray], pair_names: Sequence[str], path: str | os.PathLike) -> Path:
    """The paper's takeaway figure: how much each embedding changes between degradations.

    Row 1: the degraded versions of one photo. Row 2: per-position distance of WB
    embeddings between pairs of them; row 3: the same for residual embeddings; both rows
    share one colour scale and are laid over the photo, so "WB barely changes, the residual
    does" reads at a glance.

    images: ``(H, W, 3)`` floats in [0, 1]; wb_maps/res_maps: ``(H, W)``, one per pair.
    """
    n = max(len(images), len(wb_maps))
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 7.8), squeeze=False)
    vmax = float(max(np.max(m) for m in list(wb_maps) + list(res_maps))) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, name) in enumerate(zip(images, names)):
        axes[0, i].imshow(np.clip(img, 0, 1))
        axes[0, i].set_title(name, fontsize=9)
    base = np.clip(images[0], 0, 1).mean(axis=2)
    im = None
    for j, (wb, res, label) in enumerate(zip(wb_maps, res_maps, pair_names)):
        for row, m, kind in ((1, wb, "WB"), (2, res, "residual")):
            axes[row, j].imshow(base, cmap="gray")
            im = axes[row, j].imshow(m, cmap="inferno", vmin=0, vmax=vmax, alpha=0.75)
            axes[row, j].set_title(f"{kind}: {label}\nmean {float(np.mean(m)):.2f}", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.8,
                     label="L2 distance of embeddings / their mean norm")
    fig.suptitle("Difference maps between degradations of one image: WB embeddings vs residual embeddings")
    return _save(fig, path)


def embedding_projection(wb_2d: np.ndarray, res_2d: np.ndarray, labels: Sequence[str],
                         path: str | os.PathLike) -> Path:
    """Side-by-side 2-D projections (``(N, 2)`` each) of pooled WB and residual embeddings by degradation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    kinds = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    labels = np.asarray(labels)
    for ax, pts, title in ((axes[0], wb_2d, "WB embeddings"), (axes[1], res_2d, "residual embeddings")):
        for c, kind in enumerate(kinds):
            sel = labels == kind
            ax.scatter(pts[sel, 0], pts[sel, 1], s=28, color=colours(c % 10), label=kind, alpha=0.85)
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("PCA of pooled embeddings, coloured by degradation (WB should mix, residuals separate)")
    return _save(fig, path)


def pipeline_diagram(path: str | os.PathLike) -> Path:
    """The BaryIR pipeline, drawn from scratch for the README."""
    fig, ax = plt.subplots(figsize=(12, 5.0))
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
    arrow(8.2, 1.5, 8.2, 2.7, "skips + 0.8 q")
    arrow(2.5, 2.6, 7.6, 3.5, rad=-0.25)
    ax.text(2.2, 3.2, "encoder skips e1..e3", fontsize=7.5)
    arrow(9.1, 3.1, 9.8, 3.1)
    arrow(5.85, 3.5, 5.85, 4.0, style="<|-|>")
    ax.text(5.95, 3.68, "f_k(b)", fontsize=7.5)
    ax.text(0.1, 0.15, "map loss  =  mean_i lambda_k (transport c(z,b) + 0.05 (orthogonality <b,r> + contrastive on r)"
            " - f_k(b))  +  Sigma * L1(y, target);   potentials: max over f, congruence sum_k lambda_k f_k = 0",
            fontsize=8.2)
    ax.text(0.1, 4.6, "BaryIR", fontsize=13, weight="bold")
    return _save(fig, path)
