"""What a training run leaves behind besides checkpoints: a JSON-lines log, a loss-curve
figure, progress bars and console messages. Only rank 0 writes (``enabled=False`` elsewhere)."""
from __future__ import annotations

import array
import collections
import hashlib
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from utils.errors import UserError
from utils.files import DiskFullError, disk_full, finite_or_null, is_disk_full, keep_aside, replace_file


class Console:
    """Prints on rank 0 only; ``warn`` frames the message so it is not missed in a long log."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg, file=sys.stdout)

    def warn(self, msg: str) -> None:
        if self.enabled:
            bar = "!" * 78
            tqdm.write(f"{bar}\n!! WARNING: {msg}\n{bar}", file=sys.stderr)


class JsonlLog:
    """Appends one JSON object per line to ``path``, each record one unbuffered write (a crash of the process
    loses nothing written before it).

    Records have ``"kind": "run"`` (one per start: objective, lambdas, where it starts), ``"kind": "iter"``
    (losses, lr, seconds per iteration) or ``"kind": "epoch"``
    (mean losses, validation PSNR, seconds). Non-finite floats are written as null.

    A write that fails part-way (a full disk, a quota) is cut back off, so the log still ends at its last
    complete record, and a full disk is a :class:`~utils.files.DiskFullError` naming the log and its folder.
    Only a kill or a power cut in the middle of a write can leave part of a record behind: a resumed run
    removes it first (:func:`mend_log`).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._line_checked = False
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (json.dumps(finite_or_null(record), allow_nan=False) + "\n").encode()
        end_open_line = not self._line_checked  # a line not ended (not mended first): end it, or this record joins it
        self._line_checked = True
        append_lines(self.path, line, end_open_line, "record", ", which --resume removes")


def append_lines(path: Path, data: bytes, end_open_line: bool = False, unit: str = "line",
                 left_torn: str = "", durable: bool = False) -> None:
    """Append ``data`` (whole lines) to ``path`` in unbuffered writes; a write that fails part-way is cut back off,
    so the file still ends at its last complete line, and a full disk (or quota) is a
    :class:`~utils.files.DiskFullError` naming the file and its folder. ``end_open_line``: first end a last line
    that has no newline. ``unit``: what the file's lines are, in the error; ``left_torn``: what the error adds
    when not even the cut-back worked. ``durable``: on the disk (fsync) before it returns."""
    try:  # not through a link: one planted in a run's folder (log.discarded.jsonl -> ~/.bashrc) had records appended
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # to the file it names
    except OSError as exc:
        if not os.path.islink(path):
            raise
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}): its {unit}s are not appended through "
                        f"it to a file elsewhere; remove the link (or put the file it names in its place) and run "
                        f"again") from exc
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end_open_line and end > 0 and os.pread(fd, 1, end - 1) != b"\n":
            data = b"\n" + data
        try:
            left = memoryview(data)
            while left:  # a regular file takes it in one write; a short one is followed by the error
                left = left[os.write(fd, left):]
        except BaseException as exc:
            try:
                os.ftruncate(fd, end)  # no part of what was being written stays behind
                mended = True
            except OSError:
                mended = False
            if is_disk_full(exc):
                kept = (f"{path.name} ends at its last complete {unit}" if mended else
                        f"{path.name} ends in part of a {unit}{left_torn}")
                raise disk_full(path, len(data), kept) from exc
            raise
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def mend_log(path: str | os.PathLike) -> tuple[int, int]:
    """Remove from the log at ``path`` its lines that are not JSON, records cut short when a run stopped while
    writing them, and return how many lines and bytes went; a resumed run calls it before it writes.

    Such a line is the log's last (a kill or a power cut in the middle of a write; a full disk under versions
    that left the part written), or one that such a version ended with a newline on resume and wrote after. It
    is removed, not kept aside: it holds no complete value, and what it began to record comes back, since
    iteration records are written before the checkpoint of their step (a cut one's iteration, past the
    checkpoint resumed, is trained and logged again), an epoch's record after its checkpoint (a cut one is
    written again from that checkpoint: :func:`record_lost`), and a run's record at each start. So the log
    stays valid JSON lines, which ``jq`` and ``pandas.read_json(lines=True)`` refuse to read past one bad line.
    A last record without its newline keeps it. The log is replaced atomically: a crash meanwhile leaves it as
    it was.
    """
    path = Path(path)
    if not path.is_file():
        return 0, 0
    data = path.read_bytes()
    kept, torn = [], []
    for line in data.splitlines(keepends=True):
        (kept if _is_json(line) else torn).append(line)
    if not torn and (not data or data.endswith(b"\n")):
        return 0, 0
    text = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept)
    replace_file(path, text)
    return len(torn), sum(len(line) for line in torn)


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # also a byte that is not UTF-8
        return False
    return True


def discarded_log(path: Path) -> Path:
    """Where :func:`rewind_log` keeps the records it moves out of the log ``path``: ``<stem>.discarded.jsonl``."""
    return path.with_name(f"{path.stem}.discarded.jsonl")


def rewind_log(path: str | os.PathLike, global_step: int) -> int:
    """Move the ``iter`` and ``epoch`` records past ``global_step`` out of the log at ``path``, into
    ``<stem>.discarded.jsonl`` beside it, with the ``run`` records of starts past it; returns how many moved.

    A run killed after its last checkpoint logged iterations whose training is lost; the resumed run
    trains (and logs) them again. Rewinding keeps one record per iteration in the log, and one ``run``
    record per start of the timeline the log now tells (a start from a later checkpoint, resumed past
    now, belongs to the lost one), and the moved records are kept, not deleted. The discarded file is
    appended first and the log then replaced atomically, so a crash in between can duplicate a record but
    never lose one.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line if line.endswith("\n") else line + "\n")  # torn: a resume runs mend_log first
            continue
        past = (isinstance(record, dict) and record.get("kind") in ("iter", "epoch", "run")
                and isinstance(record.get("global_step"), int) and record["global_step"] > global_step)
        (moved if past else kept).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    append_lines(discarded_log(path), "".join(moved).encode(), end_open_line=True, durable=True)
    replace_file(path, "".join(kept).encode())
    return len(moved)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():  # a stray byte must not hide the whole log
        line = line.strip()
        if line:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(record, dict):  # every record is an object: anything else is not this log's
                out.append(record)
    return out


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (the start is not pulled to 0)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i))
    return out


# The loss figure's smoothing: a moving average over about this fraction of the logged points, never wider than
# TensorBoard's default weight of 0.9 (about 19 points).
SMOOTHING_FRACTION, MOST_SMOOTHING = 0.05, 0.9


def smoothing_span(n: int) -> float:
    """How many logged values the loss figure's smoothing averages over for a curve of ``n`` (a twentieth of
    them, between 1 and the 19 of a weight of 0.9): a fixed weight of 0.9 over a short run's 30 points drew the
    curve of its first half's values at its end."""
    return min(max(1.0, SMOOTHING_FRACTION * n), (1 + MOST_SMOOTHING) / (1 - MOST_SMOOTHING))


def smoothing_weight(n: int) -> float:
    """The moving average's weight for a span of :func:`smoothing_span` values (``1 - 2 / (span + 1)``, the
    usual equivalence of an exponential average's weight and a window's length); 0 draws the values as they are."""
    return 1 - 2 / (smoothing_span(n) + 1)


def record_lost(path: str | os.PathLike, epoch: int, epoch_start: int) -> bool:
    """Whether the log at ``path`` tells a run up to epoch ``epoch`` (a record at or past ``epoch_start``, the
    global step the epoch began after) but holds no record of that epoch."""
    records = [r for r in read_log(path) if isinstance(r, dict)]
    told = any(isinstance(r.get("global_step"), int) and r["global_step"] >= epoch_start for r in records)
    return told and not any(r.get("kind") == "epoch" and r.get("epoch") == epoch for r in records)


def plotted_parts(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(key, label)`` of each part of the objective the records (``iter`` or ``epoch``) hold, in
    :data:`LOSS_LABELS` order (not ``map``, the weighted total of the same parts)."""
    return [(k, label) for k, label in LOSS_LABELS if any(r.get(k) is not None for r in records)]


# Points per curve the loss figure draws at most (its panels are some 360 pixels wide): a longer curve, the logged
# values and their moving average, is drawn as the lowest and highest value of each stretch of consecutive values
# (:func:`envelope`). The paper's 120 epochs log some 861,000 iterations at --log-every 10.
MOST_POINTS = 2000


@dataclass
class LossHistory:
    """What the loss figure draws from a log, read as a stream (:func:`read_loss_history`) into arrays.

    ``steps``: (N,) int64, the global step of each ``iter`` record that has one (an integer), in the log's order;
    ``values``: a part's key (:data:`LOSS_LABELS`) -> (N,) float64, its value at each of those records (NaN where
    the record has none, or not a number); ``iterations``: how many ``iter`` records the log holds (with a global
    step or not); ``held``: the parts some ``iter`` record holds; ``logged_epochs``: the ``epoch`` of each ``iter``
    record; ``epochs``: the ``epoch`` records, each with its ``epoch``, ``global_step``, ``val_psnr`` and parts
    only."""
    steps: np.ndarray
    values: dict[str, np.ndarray]
    iterations: int = 0
    held: set[str] = field(default_factory=set)
    logged_epochs: set[Any] = field(default_factory=set)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def points(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(global steps (M,), values (M,))`` of the ``iter`` records that hold ``key``."""
        if key not in self.values:
            return self.steps[:0], np.zeros(0)
        ys = self.values[key]
        held = ~np.isnan(ys)
        return self.steps[held], ys[held]

    def means(self) -> list[dict[str, Any]]:
        """The ``epoch`` records standing in for iterations: those of the epochs no ``iter`` record is of
        (``--log-every 0``, in every start or some) that hold a part, whose values are the means over the epoch."""
        return [r for r in self.epochs if r.get("epoch") not in self.logged_epochs and plotted_parts([r])]


def read_loss_history(path: str | os.PathLike) -> LossHistory:
    """The :class:`LossHistory` of the log at ``path`` (empty if there is none), read a line at a time: a log of
    the paper's 120 epochs (some 300 MB) is never whole in memory, only the numbers drawn. Lines that are not a
    JSON object (torn by a crash, a stray byte) and records of other kinds are passed over, as :func:`read_log`
    does."""
    keys = [k for k, _ in LOSS_LABELS]
    kept = ("epoch", "global_step", "val_psnr", *keys)  # of an epoch record
    steps, columns = array.array("q"), {}
    history = LossHistory(np.zeros(0, dtype=np.int64), {})
    if not Path(path).is_file():
        return history
    with open(path, encoding="utf-8", errors="replace") as fh:  # a stray byte must not hide the whole log
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash, or blank
            if not isinstance(record, dict):  # every record is an object: anything else is not this log's
                continue
            kind = record.get("kind")
            if kind == "epoch":
                history.epochs.append({k: record[k] for k in kept if _scalar(record.get(k))})
                continue
            if kind != "iter":
                continue
            history.iterations += 1
            history.logged_epochs.add(record.get("epoch") if _scalar(record.get("epoch")) else None)
            history.held.update(k for k in keys if record.get(k) is not None)
            step = record.get("global_step")
            if not isinstance(step, int) or not -2 ** 63 <= step < 2 ** 63:
                continue
            for k in keys:
                value = record.get(k)
                if value is not None and k not in columns:  # a part first held here: NaN at the records before
                    columns[k] = array.array("d", [math.nan]) * len(steps)
                if k in columns:
                    columns[k].append(float(value) if isinstance(value, (int, float)) else math.nan)
            steps.append(step)
    history.steps = np.frombuffer(steps, dtype=np.int64) if steps else history.steps
    history.values = {k: np.frombuffer(column, dtype=np.float64) for k, column in columns.items()}
    return history


def _scalar(value: Any) -> bool:
    """Whether a record's ``value`` is a number or a string (not null, a list, an object)."""
    return isinstance(value, (int, float, str))


def envelope(xs: np.ndarray, ys: np.ndarray, most: int = MOST_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``most`` of the points ``(xs (N,), ys (N,))``, in their order, that a line through keeps the look of
    all of them: all when N <= ``most``, else the first, the last, and the lowest and highest value of each of
    ``(most - 2) // 2`` stretches of consecutive points (of :func:`stretch` points each)."""
    n = len(ys)
    if n <= most:
        return xs, ys
    size = stretch(n, most)
    count = -(-n // size)
    padded = np.concatenate([ys, np.full(count * size - n, ys[-1])]).reshape(count, size)  # the last one repeated
    first = np.arange(count) * size
    lows = np.minimum(first + padded.argmin(axis=1), n - 1)
    highs = np.minimum(first + padded.argmax(axis=1), n - 1)
    keep = np.unique(np.concatenate([[0, n - 1], lows, highs]))
    return xs[keep], ys[keep]


def stretch(n: int, most: int = MOST_POINTS) -> int:
    """How many consecutive points of ``n`` :func:`envelope` draws as their lowest and highest (1: each drawn)."""
    return 1 if n <= most else -(-n // ((most - 2) // 2))


def plot_loss_curves(log_path: str | os.PathLike, fig_path: str | os.PathLike,
                     source: str | None = None) -> Path | None:
    """Draw every logged part of the objective (:data:`LOSS_LABELS`, one panel each: the raw curve faint,
    smoothed on top over a span that grows with the run, :func:`smoothing_span`; for epochs without iteration
    records, their means: :meth:`LossHistory.means`) against the global step, and the validation PSNR per epoch,
    from the JSON-lines log into ``fig_path`` (PNG; ``source``, when given, goes into its ``Source`` text chunk).
    A curve of more than :data:`MOST_POINTS` values is smoothed over all of them, and both curves are drawn in
    fewer points that keep their envelope (:func:`envelope`); the caption says how. Returns the path, None if
    nothing to draw."""
    history = read_loss_history(log_path)
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
        xs, ys = history.points(key)
        longest = max(longest, len(ys))
        if len(xs):
            few = {"marker": "o", "ms": 3} if len(xs) < 10 else {}  # a line of one point draws nothing
            if weight > 0:
                ax.plot(*envelope(xs, ys), lw=0.6, alpha=0.3, color="C0")
            ax.plot(*envelope(xs, np.asarray(smoothed(ys.tolist(), weight))), lw=1.2, color="C0", **few)
        mean_xs, mean_ys = _points(means, key)
        if mean_xs:  # a few means: drawn as they are, not smoothed
            ax.plot(mean_xs, mean_ys, "s-" if only_means else "s", ms=4, lw=1.2, color="C0")
        ax.set_title(label + (" (epoch means)" if only_means else ""), fontsize=10)
        ax.set_xlabel("iteration (each epoch's last)" if only_means else "iteration", fontsize=8)
        shown = np.concatenate([ys, np.asarray(mean_ys, dtype=np.float64)])
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


# The logged parts of an iteration, in the order of the objective, with readable names. The map loss
# itself (``map``, the total the network minimises: L1 x --Sigma plus the barycenter terms) stays in
# the log; the console shows its parts. ``potential`` is the potential term inside the map loss,
# ``potentials`` the potentials' own (adversarial) loss.
LOSS_LABELS = (("l1", "l1"), ("transport", "transport"), ("orthogonality", "orthogonality"),
               ("contrastive", "contrastive"), ("potential", "potential term"), ("potentials", "potentials step"),
               ("congruence", "congruence"))


class Rate:
    """Seconds per iteration as the median of the last ``window`` iterations (a slow batch or a page-in
    does not swing it, as it would a mean), as iterations per second and the time left."""

    def __init__(self, window: int = 50):
        self.times: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, seconds: float) -> None:
        self.times.append(seconds)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times) if self.times else 0.0

    @property
    def per_second(self) -> float:
        return 1.0 / self.seconds if self.seconds > 0 else 0.0

    def eta(self, remaining: int) -> str:
        """``H:MM:SS`` for ``remaining`` iterations at the median rate."""
        total = int(round(remaining * self.seconds))
        return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


_SOURCE = "BaryIR training run in {folder}, started {started}"  # a loss figure's PNG "Source" text


def short_count(n: float) -> str:
    """An axis' step count in a few characters: ``'950'``, ``'12k'``, ``'2.5M'`` (a paper run's 8.6 million steps
    written out, ``'0.00'`` to ``'1.00'`` and an offset ``1e6``, ran into each other under a panel)."""
    for size, unit in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def draw_loss_figure(log_path: Path, fig_path: Path, console: Console) -> Path:
    """The loss curves of the log so far, drawn at ``fig_path`` (or beside it, see below); returns where. A figure
    that cannot be written (the disk, its folder) or drawn (a log no figure can show, a plotting library's error)
    is a warning: the epoch is saved already, and training goes on.

    The figure names its run (the log's folder, and when its first start began) in its PNG metadata. Where
    ``fig_path`` holds the figure of a run in another folder (two runs sharing a ``--figs-dir``), this run
    draws beside it, ``<stem>_<its folder's name>.png``, and both keep theirs. Any other file there that is
    not this run's figure (a user's own image, an earlier run's figure) is moved into
    ``<its folder>/figure.before-<time>/`` first, and said, instead of being replaced. A run folder moved or
    copied whole (``mv``, ``rsync``) keeps its figure: see :func:`_drawn_by`."""
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
        plot_loss_curves(log_path, fig_path, source)
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


def progress_line(epoch: int, iteration: int, total: int, losses: dict[str, float], lr: float, rate: Rate) -> str:
    """One console line of training progress: the loss parts by name, the learning rate, the rate
    (median of recent iterations) and the time left in the epoch."""
    parts = ", ".join(f"{label} {losses[k]:.4g}" for k, label in LOSS_LABELS if k in losses)
    return (f"epoch {epoch} [{iteration}/{total}] {parts} | lr {lr:.3g} | {rate.per_second:.2f} it/s, "
            f"epoch ETA {rate.eta(total - iteration)}")


PLAIN_LINE_SECONDS = 30.0  # without a terminal, at most one progress line this often (the log has every one)


def plain_line_due(since_last: float | None, iteration: int, total: int,
                   min_seconds: float = PLAIN_LINE_SECONDS) -> bool:
    """Whether a logged iteration prints its plain progress line (no terminal: output redirected to a file, a
    scheduler's log): the first of a start (``since_last`` None: nothing printed yet), the epoch's last, and
    otherwise one at most every ``min_seconds``. At the paper's pace (about 4 iterations a second, a line every
    ``--log-every 10``) one per logged iteration came to some 860,000 lines over 120 epochs."""
    return since_last is None or iteration == total or since_last >= min_seconds


def progress(iterable: Iterable, total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on rank 0 when stderr is a terminal (``bar.disable`` tells the caller to print
    plain lines instead). It shows it/s itself; the trainer puts the losses and lr in its postfix."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not show, dynamic_ncols=True,
                leave=True, file=sys.stderr, mininterval=0.5)
