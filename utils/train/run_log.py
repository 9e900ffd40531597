"""What a training run leaves behind besides checkpoints: a JSON-lines log, a loss-curve
figure, progress bars and console messages. Only rank 0 writes (``enabled=False`` elsewhere)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm


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
    """Appends one JSON object per line to ``path`` (flushed each time, so a crash loses nothing).

    Records have ``"kind": "run"`` (one per start: objective, lambdas, where it starts), ``"kind": "iter"``
    (losses, lr, seconds per iteration) or ``"kind": "epoch"``
    (mean losses, validation PSNR, seconds). Non-finite floats are written as null.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


def rewind_log(path: str | os.PathLike, global_step: int) -> int:
    """Move the ``iter`` and ``epoch`` records past ``global_step`` out of the log at ``path``, into
    ``<stem>.discarded.jsonl`` beside it; returns how many moved.

    A run killed after its last checkpoint logged iterations whose training is lost; the resumed run
    trains (and logs) them again. Rewinding keeps one record per iteration in the log, and the moved
    records are kept, not deleted. The discarded file is appended first and the log then replaced
    atomically, so a crash in between can duplicate a record but never lose one.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)  # a line torn by a crash: left for read_log to skip
            continue
        past = (isinstance(record, dict) and record.get("kind") in ("iter", "epoch")
                and isinstance(record.get("global_step"), int) and record["global_step"] > global_step)
        (moved if past else kept).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    with open(path.with_name(f"{path.stem}.discarded.jsonl"), "a") as fh:
        fh.writelines(moved)
        fh.flush()
        os.fsync(fh.fileno())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return len(moved)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
    return out


def plot_loss_curves(log_path: str | os.PathLike, fig_path: str | os.PathLike) -> Path | None:
    """Draw the map/potential/congruence losses per logged iteration and the validation PSNR per
    epoch from the JSON-lines log into ``fig_path`` (PNG). Returns the path, None if nothing to draw."""
    records = read_log(log_path)
    iters = [r for r in records if r.get("kind") == "iter"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not iters and not epochs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("map", "l1", "potentials", "congruence") if any(r.get(k) is not None for r in iters)]
    psnr = [(r["epoch"], r["val_psnr"]) for r in epochs if r.get("val_psnr") is not None]
    ncols = len(keys) + (1 if psnr else 0)
    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(4 * max(ncols, 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["global_step"], r[key]) for r in iters if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        ax.set_title(f"{key} loss")
        ax.set_xlabel("iteration")
        if key in ("map", "l1") and all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
    if psnr:
        ax = axes[0][len(keys)]
        ax.plot([p[0] for p in psnr], [p[1] for p in psnr], "o-")
        ax.set_title("validation PSNR (dB)")
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig_path = Path(fig_path)
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fig_path.with_name(f".{fig_path.stem}.tmp{fig_path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, fig_path)
    return fig_path


def progress(iterable: Iterable, total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on rank 0 when stderr is a terminal (``bar.disable`` tells the caller to print
    plain lines instead). It shows it/s itself; the trainer puts the losses and lr in its postfix."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not show, dynamic_ncols=True,
                leave=True, file=sys.stderr, mininterval=0.5)
