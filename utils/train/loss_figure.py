"""The loss figure of a run (``loss_curves.png``): drawn from the log's :class:`~utils.train.loss_history.
LossHistory`, and named after its run in its PNG metadata so that runs sharing a folder keep each their own."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from utils.files import DiskFullError, keep_aside
from utils.train.loss_history import (
    MOST_POINTS,
    LossCurve,
    LossLogReader,
    smoothing_span,
    smoothing_weight,
    stretch,
)
from utils.train.run_log import LOSS_LABELS, Console


def plot_loss_curves(log_path: str | os.PathLike, fig_path: str | os.PathLike,
                     source: str | None = None, reader: LossLogReader | None = None) -> Path | None:
    """Draw every logged part of the objective (:data:`~utils.train.run_log.LOSS_LABELS`, one panel each: the raw curve
    faint, smoothed on top over a span that grows with the run, :func:`~utils.train.loss_history.smoothing_span`; for
    epochs without iteration records, their means: :meth:`~utils.train.loss_history.LossHistory.means`) against the
    global step, and the validation PSNR per epoch, from the JSON-lines log into ``fig_path`` (PNG; ``source``, when
    given, goes into its ``Source`` text chunk). A curve of more than :data:`~utils.train.loss_history.MOST_POINTS`
    values is smoothed over all of them, and both curves are drawn in fewer points that keep their envelope
    (:func:`~utils.train.loss_history.envelope`); the caption says how. ``reader``: the
    :class:`~utils.train.loss_history.LossLogReader` of the log that drew the run's previous figure, which reads only
    the lines written since (a new one reads it all). Returns the path, None if nothing to draw."""
    history = (reader or LossLogReader(log_path)).read()
    means = history.means()
    if not history.iterations and not history.epochs:
        return None
    import matplotlib.ticker

    from utils.plotting import new_figure, save_figure, wrapped_to_width

    parts = [(k, label) for k, label in LOSS_LABELS if k in history.held or any(r.get(k) is not None for r in means)]
    only_means = bool(means) and not history.iterations
    weight = smoothing_weight(history.iterations)
    psnr = [(r["epoch"], r["val_psnr"]) for r in history.epochs
            if isinstance(r.get("val_psnr"), (int, float)) and isinstance(r.get("epoch"), int)]
    panels = len(parts) + (1 if psnr else 0)
    ncols = min(4, max(panels, 1))
    nrows = max(1, -(-panels // ncols))
    fig = new_figure(figsize=(3.6 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    longest = 0
    for ax, (key, label) in zip(flat, parts):
        curve = history.curves.get(key, LossCurve())
        longest = max(longest, curve.values.n)
        if curve.values.n:
            few = {"marker": "o", "ms": 3} if curve.values.n < 10 else {}  # a line of one point draws nothing
            if weight > 0:
                ax.plot(*curve.values.points(), lw=0.6, alpha=0.3, color="C0")
            ax.plot(*curve.averaged(weight), lw=1.2, color="C0", **few)
        mean_xs, mean_ys = _points(means, key)
        if mean_xs:  # a few means: drawn as they are, not smoothed
            ax.plot(mean_xs, mean_ys, "s-" if only_means else "s", ms=4, lw=1.2, color="C0")
        ax.set_title(label + (" (epoch means)" if only_means else ""), fontsize=10)
        ax.set_xlabel("iteration (each epoch's last)" if only_means else "iteration", fontsize=8)
        shown = np.concatenate([curve.values.extremes() or [], np.asarray(mean_ys, dtype=np.float64)])
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5, integer=True))  # no iteration 3.2
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: short_count(v)))
        if key == "l1" and shown.size and (shown > 0).all() and shown.min() < shown.max():  # one value: no range
            ax.set_yscale("log")  # for a log axis
    if psnr:
        ax = flat[len(parts)]
        ax.plot([p[0] for p in psnr], [p[1] for p in psnr], "o-")
        ax.set_title("validation PSNR (dB)", fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in flat[panels:]:
        ax.axis("off")
    span = smoothing_span(history.iterations)
    line = (f"faint: logged values; solid: their moving average over about {span:.0f}" if weight > 0 else
            "logged values")
    if longest > MOST_POINTS:  # so many values are smoothed (weight > 0)
        line = (f"faint: logged values; solid: their moving average over about {span:.0f}; each drawn as the "
                f"lowest and highest of every {stretch(longest):,} values in a row, of {longest:,}")
    how = ("its mean over each epoch (--log-every 0)" if only_means else line
           + ("; squares: the means of epochs no iteration of which was logged" if means else ""))
    fig.suptitle(wrapped_to_width(fig, f"training log: each part of the objective ({how})", 10), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, fig_path, dpi=100, metadata={"Source": source} if source else None)


def _points(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """The ``(global steps, values)`` of ``key`` in the records that hold it."""
    pts = [(r["global_step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and isinstance(r.get("global_step"), int)]
    return [p[0] for p in pts], [p[1] for p in pts]


_SOURCE = "BaryIR training run in {folder}, started {started}"  # a loss figure's PNG "Source" text


def short_count(n: float) -> str:
    """An axis' step count in a few characters: ``'950'``, ``'12k'``, ``'2.5M'`` (a paper run's 8.6 million steps
    written out, ``'0.00'`` to ``'1.00'`` and an offset ``1e6``, ran into each other under a panel)."""
    for size, unit in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def draw_loss_figure(log_path: Path, fig_path: Path, console: Console, reader: LossLogReader | None = None) -> Path:
    """The loss curves of the log so far, drawn at ``fig_path`` (or beside it, see below); returns where. A figure
    that cannot be written (the disk, its folder) or drawn (a log no figure can show, a plotting library's error)
    is a warning: the epoch is saved already, and training goes on.

    The figure names its run (the log's folder, and when its first start began) in its PNG metadata. Where
    ``fig_path`` holds the figure of a run in another folder (two runs sharing a ``--figs-dir``), this run draws beside
    it, ``<stem>_<its folder's name>.png``, and both keep theirs. Any other file there that is not this run's figure (a
    user's own image, an earlier run's figure) is moved into ``<its folder>/figure.before-<time>/`` first, and said,
    instead of being replaced. A run folder moved or copied whole (``mv``, ``rsync``) keeps its figure: see
    :func:`_drawn_by`. ``reader``: the log's :class:`~utils.train.loss_history.LossLogReader`, kept by a run from one
    figure to the next (:func:`plot_loss_curves`)."""
    folder = Path(log_path).resolve().parent
    started = _first_start(log_path)
    source = _SOURCE.format(folder=folder, started=started)
    try:
        other = _figure_source(fig_path) if fig_path.exists() or fig_path.is_symlink() else source
        other_folder = _source_folder(other)
        if not _drawn_by(other, fig_path, folder, started) and other_folder is not None and other_folder != folder:
            own = fig_path.with_name(f"{fig_path.stem}_{folder.name}{fig_path.suffix}")
            there = _source_folder(_figure_source(own))  # None: no file there, or none a run drew
            if there is not None and there != folder:  # run folders of one name (the default --name) elsewhere
                tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
                own = fig_path.with_name(f"{fig_path.stem}_{folder.name}_{tag}{fig_path.suffix}")
            if not own.exists() and not own.is_symlink():
                console(f"=> {fig_path} is the loss figure of the run in {other_folder}: this run's is {own}")
            fig_path = own
        found = _figure_source(fig_path) if fig_path.exists() or fig_path.is_symlink() else source
        if not _drawn_by(found, fig_path, folder, started):
            kept = keep_aside([fig_path], fig_path.parent / "figure")
            console(f"=> {fig_path} was not this run's loss figure: it was moved to {kept}/")
        plot_loss_curves(log_path, fig_path, source, reader)
    except (OSError, DiskFullError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        console.warn(f"the loss figure {fig_path} could not be written ({why}); training goes on")
    except Exception as exc:  # noqa: BLE001 - a figure is never worth the run: the epoch is saved, training goes on
        console.warn(f"the loss figure {fig_path} could not be drawn ({type(exc).__name__}: {exc}); training goes "
                     f"on, and {Path(log_path).name} keeps every value it would show")
    return fig_path


def _drawn_by(found: str | None, fig_path: Path, folder: Path, started: str | None) -> bool:
    """Whether the figure at ``fig_path``, whose ``Source`` text is ``found``, is the one of the run whose log is in
    ``folder`` and first started at ``started`` (its timeline: a fresh run in the folder begins another): its Source
    names them, or it names that start and another folder and lies in this run's own folder, where it came with the
    log when the folder was moved or copied (``mv``, ``rsync``). In a folder not the run's own (a shared
    ``--figs-dir``), a figure naming another folder is that folder's run's, of whatever start (a copy of this one)."""
    if found == _SOURCE.format(folder=folder, started=started):
        return True
    there = _source_folder(found)
    return (started is not None and there is not None and found == _SOURCE.format(folder=there, started=started)
            and fig_path.parent.resolve() == folder)


def _source_folder(source: str | None) -> Path | None:
    """The run folder a loss figure's ``Source`` text names (None for a file no run of this project drew)."""
    head, tail = _SOURCE.split("{folder}")
    tail = tail.split("{started}")[0]
    if not source or not source.startswith(head) or tail not in source:
        return None
    return Path(source[len(head):source.rindex(tail)])


def _first_start(log_path: Path) -> str | None:
    """When the run of the log at ``log_path`` first started: its first record's ``started`` (a resumed run
    keeps its log, a fresh one begins a new one)."""
    try:
        with open(log_path) as fh:
            return json.loads(fh.readline()).get("started")
    except (OSError, ValueError, AttributeError):
        return None


def _figure_source(path: Path) -> str | None:
    """The ``Source`` text of the PNG at ``path`` (:func:`plot_loss_curves` writes it); None for any other file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return getattr(img, "text", {}).get("Source")
    except Exception:  # not an image, unreadable, a folder, a dangling link: not this run's figure
        return None
