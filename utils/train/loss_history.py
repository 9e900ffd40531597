"""What the loss figure draws of a run's log, kept as the log grows: each part's curve as its envelope
(:class:`RunningEnvelope`, at most :data:`MOST_POINTS` points) and moving average (:func:`smoothed`), read a part
at a time (:class:`LossLogReader`, the lines written since its last read)."""
from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from utils.train.run_log import LOSS_LABELS


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (the start is not pulled to 0)."""
    return _average(values, weight, 0.0, 0)[0]


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


def plotted_parts(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(key, label)`` of each part of the objective the records (``iter`` or ``epoch``) hold, in
    :data:`~utils.train.run_log.LOSS_LABELS` order (not ``map``, the weighted total of the same parts)."""
    return [(k, label) for k, label in LOSS_LABELS if any(r.get(k) is not None for r in records)]


# Points per curve the loss figure draws at most (its panels are some 360 pixels wide): a longer curve, the logged
# values and their moving average, is drawn as the lowest and highest value of each stretch of consecutive values
# (:func:`envelope`). The paper's 120 epochs log some 861,000 iterations at --log-every 10.
MOST_POINTS = 2000


def envelope(xs: np.ndarray, ys: np.ndarray, most: int = MOST_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``most`` of the points ``(xs (N,), ys (N,))``, in their order, that a line through keeps the look of
    all of them: all when N <= ``most``, else the first, the last, and the lowest and highest value of each stretch
    of :func:`stretch` consecutive points (at most ``(most - 2) // 2`` of them). :class:`RunningEnvelope` gives the
    same points from the values fed a part at a time."""
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
    """How many consecutive points of ``n`` :func:`envelope` draws as their lowest and highest (1: each drawn): the
    least power of two that makes at most ``(most - 2) // 2`` stretches. A power of two, so that a growing curve's
    stretches, when they widen, are each two or more of the narrower ones (:class:`RunningEnvelope`)."""
    if n <= most:
        return 1
    size = 2
    while -(-n // size) > (most - 2) // 2:
        size *= 2
    return size


class RunningEnvelope:
    """The :func:`envelope` of a curve whose points come a part at a time (:meth:`extend`), kept in memory that does
    not grow with the curve: the lowest and highest point of each stretch, and of the stretch being filled. When the
    curve outgrows its stretches' width (:func:`stretch`), each stretch of the new width is the lowest and highest of
    the narrower ones it is made of, the earlier of equal ones, as ``argmin`` and ``argmax`` take them."""

    def __init__(self, most: int = MOST_POINTS):
        self.most, self.n, self.size = most, 0, 1
        self.first: tuple[int, float] | None = None  # the curve's first point (step, value); its last:
        self.last: tuple[int, float] | None = None
        # each full stretch, in order: the index, step and value of its lowest point (lows) and of its highest (highs)
        self.lows = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        self.highs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        self.open: tuple[tuple[int, int, float], tuple[int, int, float], int] | None = None  # (low, high, points)

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Add the points ``(xs (M,) int64, ys (M,) float64)`` after those already given (none NaN)."""
        m = len(ys)
        if not m:
            return
        if self.first is None:
            self.first = (int(xs[0]), float(ys[0]))
        self.last = (int(xs[-1]), float(ys[-1]))
        size = stretch(self.n + m, self.most)
        if size != self.size:
            self._widen(size)
        index = np.arange(self.n, self.n + m, dtype=np.int64)
        taken = 0
        if self.open is not None:
            taken = min(size - self.open[2], m)
            self.open = _merged(self.open, _extremes(index[:taken], xs[:taken], ys[:taken]))
            if self.open[2] == size:
                self._close([self.open[0]], [self.open[1]])
                self.open = None
        full = (m - taken) // size
        if full:
            cut = slice(taken, taken + full * size)
            rows = ys[cut].reshape(full, size)
            at = np.arange(full) * size + taken
            lo, hi = at + rows.argmin(axis=1), at + rows.argmax(axis=1)
            self._close(list(zip(index[lo], xs[lo], ys[lo])), list(zip(index[hi], xs[hi], ys[hi])))
        rest = slice(taken + full * size, m)
        if rest.start < m:
            self.open = _extremes(index[rest], xs[rest], ys[rest])
        self.n += m

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (K,), values (K,))``, K <= ``most``: what :func:`envelope` draws of all the points given."""
        if self.first is None or self.last is None:
            return np.zeros(0, np.int64), np.zeros(0)
        ends = [(0, *self.first), (self.n - 1, *self.last)] + ([self.open[0], self.open[1]] if self.open else [])
        index, steps, values = (np.concatenate([np.asarray([p[i] for p in ends], dtype), self.lows[i], self.highs[i]])
                                for i, dtype in enumerate((np.int64, np.int64, np.float64)))
        _, keep = np.unique(index, return_index=True)
        return steps[keep], values[keep]

    def extremes(self) -> tuple[float, float] | None:
        """The lowest and highest value of all the points given (None before any)."""
        if self.first is None:
            return None
        lows = [self.lows[2].min()] if len(self.lows[2]) else []
        highs = [self.highs[2].max()] if len(self.highs[2]) else []
        if self.open is not None:
            lows.append(self.open[0][2])
            highs.append(self.open[1][2])
        return float(min(lows)), float(max(highs))

    def _close(self, lows: list[tuple[int, int, float]], highs: list[tuple[int, int, float]]) -> None:
        self.lows = _appended(self.lows, lows)
        self.highs = _appended(self.highs, highs)

    def _widen(self, size: int) -> None:
        """Make the stretches ``size`` points wide (a multiple of their width): groups of full ones become one, and
        those left over, with the open one, the new open one."""
        group, count = size // self.size, len(self.lows[0])
        whole = count // group * group
        rows = np.arange(count // group) * group
        lo = rows + self.lows[2][:whole].reshape(-1, group).argmin(axis=1)  # the earliest of equal lows: argmin's
        hi = rows + self.highs[2][:whole].reshape(-1, group).argmax(axis=1)
        left = [((int(self.lows[0][i]), int(self.lows[1][i]), float(self.lows[2][i])),
                 (int(self.highs[0][i]), int(self.highs[1][i]), float(self.highs[2][i])), self.size)
                for i in range(whole, count)]
        opened = None
        for part in left + ([self.open] if self.open is not None else []):
            opened = part if opened is None else _merged(opened, part)
        self.lows = tuple(a[lo] for a in self.lows)
        self.highs = tuple(a[hi] for a in self.highs)
        self.open, self.size = opened, size


def _extremes(index: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[tuple[int, int, float],
                                                                           tuple[int, int, float], int]:
    """The lowest and highest of the points (the earliest of equal ones) as ``(index, step, value)``, and how many."""
    lo, hi = int(ys.argmin()), int(ys.argmax())
    return ((int(index[lo]), int(xs[lo]), float(ys[lo])), (int(index[hi]), int(xs[hi]), float(ys[hi])), len(ys))


def _merged(a: tuple, b: tuple) -> tuple:
    """The :func:`_extremes` of the points of ``a`` and then those of ``b``."""
    return (a[0] if a[0][2] <= b[0][2] else b[0], a[1] if a[1][2] >= b[1][2] else b[1], a[2] + b[2])


def _appended(columns: tuple[np.ndarray, ...], points: list[tuple[int, int, float]]) -> tuple[np.ndarray, ...]:
    if not points:
        return columns
    index, steps, values = zip(*points)
    return (np.concatenate([columns[0], np.asarray(index, np.int64)]),
            np.concatenate([columns[1], np.asarray(steps, np.int64)]),
            np.concatenate([columns[2], np.asarray(values, np.float64)]))


@dataclass
class LossCurve:
    """One part's curve as the loss figure draws it: its logged values (``values``) and their moving average over
    all of them (``average``, with the state it goes on from: ``sum``, ``count``), each as a
    :class:`RunningEnvelope`. Until the average's weight settles (:func:`smoothing_weight`, a run's first 380
    iterations), the values themselves are kept too (``early``, steps and values) and averaged at each draw."""
    values: RunningEnvelope = field(default_factory=RunningEnvelope)
    average: RunningEnvelope = field(default_factory=RunningEnvelope)
    early: tuple[list[int], list[float]] | None = field(default_factory=lambda: ([], []))
    sum: float = 0.0
    count: int = 0

    def add(self, steps: list[int], values: list[float], settled: bool) -> None:
        """Add the values ``values`` at global steps ``steps``; ``settled``: the average's weight is its last."""
        self.values.extend(np.asarray(steps, np.int64), np.asarray(values, np.float64))
        if self.early is not None:
            self.early[0].extend(steps)
            self.early[1].extend(values)
            if not settled:
                return
            steps, values = self.early
            self.early = None
        weight = smoothing_weight(sys.maxsize)
        out, self.sum, self.count = _average(values, weight, self.sum, self.count)
        self.average.extend(np.asarray(steps, np.int64), np.asarray(out, np.float64))

    def averaged(self, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (K,), values (K,))`` of the moving average drawn (``weight``: the run's, :func:`smoothing_weight`
        of its iterations)."""
        if self.early is None:
            return self.average.points()
        xs = np.asarray(self.early[0], np.int64)
        return envelope(xs, np.asarray(smoothed(self.early[1], weight), np.float64))


@dataclass
class LossHistory:
    """What the loss figure draws from a log (:class:`LossLogReader`), in memory that does not grow with the log.

    ``curves``: a part's key (:data:`~utils.train.run_log.LOSS_LABELS`) -> its :class:`LossCurve`, of the ``iter``
    records with an integer global step that hold a finite number for it; ``iterations``: how many ``iter`` records the
    log holds (with a global step or not); ``held``: the parts some ``iter`` record holds; ``logged_epochs``: the
    ``epoch`` of each ``iter`` record; ``epochs``: the ``epoch`` records, each with its ``epoch``, ``global_step``,
    ``val_psnr`` and parts only."""
    curves: dict[str, LossCurve] = field(default_factory=dict)
    iterations: int = 0
    held: set[str] = field(default_factory=set)
    logged_epochs: set[Any] = field(default_factory=set)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def means(self) -> list[dict[str, Any]]:
        """The ``epoch`` records standing in for iterations: those of the epochs no ``iter`` record is of
        (``--log-every 0``, in every start or some) that hold a part, whose values are the means over the epoch."""
        return [r for r in self.epochs if r.get("epoch") not in self.logged_epochs and plotted_parts([r])]

    def add(self, lines: Iterable[bytes]) -> None:
        """Add the log's ``lines`` that follow those already added. Lines that are not a JSON object (torn by a crash, a
        stray byte) and records of other kinds are passed over, as :func:`~utils.train.run_log.read_log` does."""
        keys = [k for k, _ in LOSS_LABELS]
        kept = ("epoch", "global_step", "val_psnr", *keys)  # of an epoch record
        new: dict[str, tuple[list[int], list[float]]] = {}
        for line in lines:
            try:
                record = json.loads(line.decode("utf-8", "replace"))  # a stray byte must not hide the whole log
            except ValueError:
                continue  # a line torn by a crash, or blank
            if not isinstance(record, dict):  # every record is an object: anything else is not this log's
                continue
            kind = record.get("kind")
            if kind == "epoch":
                self.epochs.append({k: record[k] for k in kept if _scalar(record.get(k))})
                continue
            if kind != "iter":
                continue
            self.iterations += 1
            self.logged_epochs.add(record.get("epoch") if _scalar(record.get("epoch")) else None)
            self.held.update(k for k in keys if record.get(k) is not None)
            step = record.get("global_step")
            if not isinstance(step, int) or not -2 ** 63 <= step < 2 ** 63:
                continue
            for k in keys:
                value = _finite(record.get(k))
                if value is not None:
                    steps, values = new.setdefault(k, ([], []))
                    steps.append(step)
                    values.append(value)
        settled = smoothing_span(self.iterations) == smoothing_span(sys.maxsize)
        for k in set(new) | set(self.curves):
            self.curves.setdefault(k, LossCurve()).add(*new.get(k, ([], [])), settled)


def _finite(value: Any) -> float | None:
    """A record's ``value`` as a float where it is a finite number (not null, a string, 1e999 or an integer past any
    float), else None."""
    if not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _average(values: list[float], weight: float, acc: float, count: int) -> tuple[list[float], float, int]:
    """:func:`smoothed` of ``values`` going on after ``count`` values that left the sum ``acc``; returns the
    averages, and the sum and count to go on from."""
    out = []
    for v in values:
        count += 1
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** count))
    return out, acc, count


class LossLogReader:
    """Reads the log at ``path`` into a :class:`LossHistory` (:meth:`read`), the lines written since its last read
    only: the whole log once (a run's first figure, a resumed one's), then at each epoch's end its new lines. At the
    paper's scale (some 861,000 lines, 300 MB) a figure that read the whole log spent seconds more at every epoch.

    The lines read are those it still finds: a log replaced (rewound, mended: a resume from an earlier checkpoint),
    moved aside by a fresh run, cut shorter, or changed in its first bytes or in those up to where it read, is read
    again from its start (a file changed in place only in between is not this project's log's way). A
    last line without its newline is read when it is a whole record and otherwise left for the next read (a write
    under way, or a record torn by a crash, which a later line then follows)."""

    CHECKED = 256  # bytes of the log's start, and of the end of what was read, that must be there still

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._start()

    def _start(self) -> None:
        self.history, self.offset, self.file = LossHistory(), 0, None
        self.head, self.tail, self.open_end = b"", b"", False

    def read(self) -> LossHistory:
        """The :class:`LossHistory` of the whole log as it is now (empty if there is none)."""
        try:  # not blocking on a FIFO planted there: it is no log
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            self._start()
            return self.history
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._start()
                return self.history
            if not self._same(fd, info):
                self._start()
            self._read_from(fd, info)
        except BaseException:
            self._start()  # lines added in part: the next read reads the whole log again
            raise
        finally:
            os.close(fd)
        return self.history

    def _same(self, fd: int, info: os.stat_result) -> bool:
        """Whether the open log ``fd`` (``info``: its ``fstat``) still holds, unchanged, what was read of it."""
        if self.file is None:
            return self.offset == 0
        if (info.st_dev, info.st_ino) != self.file or info.st_size < self.offset:
            return False
        if os.pread(fd, len(self.head), 0) != self.head:
            return False
        if os.pread(fd, len(self.tail), self.offset - len(self.tail)) != self.tail:
            return False
        return not self.open_end or info.st_size == self.offset or os.pread(fd, 1, self.offset) == b"\n"

    def _read_from(self, fd: int, info: os.stat_result) -> None:
        """Add the complete lines from where the last read stopped to the end of the open log ``fd``."""
        self.file = (info.st_dev, info.st_ino)
        pending, at = b"", self.offset
        while chunk := os.pread(fd, 1 << 24, at):
            at += len(chunk)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            if cut:
                self.history.add(data[:cut].split(b"\n")[:-1])
                self.offset += cut
                self.open_end = False
            pending = data[cut:]
        if pending:
            try:
                whole = isinstance(json.loads(pending.decode("utf-8", "replace")), dict)
            except ValueError:
                whole = False
            if whole:
                self.history.add([pending])
                self.offset += len(pending)
                self.open_end = True
        checked = min(self.CHECKED, self.offset)
        self.head = os.pread(fd, checked, 0)
        self.tail = os.pread(fd, checked, self.offset - checked)


def read_loss_history(path: str | os.PathLike) -> LossHistory:
    """The :class:`LossHistory` of the log at ``path`` (empty if there is none), read once."""
    return LossLogReader(path).read()


def _scalar(value: Any) -> bool:
    """Whether a record's ``value`` is a number or a string (not null, a list, an object)."""
    return isinstance(value, (int, float, str))

