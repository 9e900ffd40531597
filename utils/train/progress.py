"""Training progress on the console: a tqdm bar on a terminal, else a plain line now and then
(:func:`plain_line_due`), with the losses, the learning rate and the rate (:class:`Rate`)."""
from __future__ import annotations

import collections
import statistics
import sys
from typing import Iterable

from tqdm import tqdm

from utils.train.run_log import LOSS_LABELS


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
