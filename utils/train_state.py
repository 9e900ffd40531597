"""Training checkpoints: what they hold, where they go, how a run resumes from one.

A checkpoint is a dict of state dicts (loadable with ``torch.load(weights_only=True)``):

=====================  ==========================================================
``format_version``     :data:`FORMAT_VERSION`
``model``              BaryNet (or Restormer) state dict, no ``module.`` prefixes
``potentials``         Potentials state dict (None for the Restormer baseline)
``optimizer``          the map's optimizer state dict
``potentials_optimizer``  the potentials' optimizer state dict (None for Restormer)
``scaler``             GradScaler state dict ({} unless ``--precision fp16``)
``epoch``              epochs completed (the reference's meaning: resume at epoch+1)
``iteration``          iterations completed in epoch ``epoch+1`` (0 at an epoch's end)
``global_step``        iterations since the run began
``rng``                rank 0's python, numpy, torch and CUDA generator states (tensors, plain types)
``model_config``       the network's constructor arguments
``backbone``           ``BaryNet`` or ``Restormer``; ``preset`` the ``--preset`` it was built from
``lambdas``            the barycenter weights; ``domains`` their family names, ``domain_counts``
``world_size``         processes that trained it (the data order of a resumed epoch depends on it)
``args``               the command-line arguments as a plain dict
=====================  ==========================================================

Files in ``--output-dir``: ``epoch_003.pth`` after epoch 3, ``iter_e004_i000500.pth`` after
500 iterations of epoch 4, and ``latest`` (JSON, written atomically after the checkpoint)
naming the newest. Only the newest ``keep`` checkpoints are kept (0 keeps all); the one
``latest`` names is never removed.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .checkpoint import CheckpointError, atomic_write, model_state_from, save_atomic

FORMAT_VERSION = 1
LATEST = "latest"
LOG_NAME = "log.jsonl"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")
_ITER_RE = re.compile(r"^iter_e(\d+)_i(\d+)\.pth$")


@dataclass
class LoopState:
    """Where training is: the epoch being trained (1-based), iterations done in it, and in all."""
    epoch: int = 1
    iteration: int = 0
    global_step: int = 0


# --------------------------------------------------------------------------- names and order

def checkpoint_name(epoch: int, iteration: int) -> str:
    """File name for ``epoch`` completed epochs and ``iteration`` iterations into the next."""
    if iteration == 0:
        return f"epoch_{epoch:03d}.pth"
    return f"iter_e{epoch + 1:03d}_i{iteration:06d}.pth"


def progress_of(name: str) -> tuple[int, int] | None:
    """``(epochs completed, iterations into the next)`` of a checkpoint file name, None if not ours."""
    m = _EPOCH_RE.match(name)
    if m:
        return int(m.group(1)), 0
    m = _ITER_RE.match(name)
    if m:
        return int(m.group(1)) - 1, int(m.group(2))
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The trainer's checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(progress_of(p.name), p) for p in folder.iterdir() if p.is_file()]
    return [p for prog, p in sorted((x for x in found if x[0] is not None), key=lambda x: x[0])]


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def read_latest(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, else the newest by file name, else None."""
    folder = Path(output_dir)
    pointer = folder / LATEST
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
            if (folder / name).is_file():
                return folder / name
        except (ValueError, KeyError, TypeError):
            pass
    found = list_checkpoints(folder)
    return found[-1] if found else None


CHECKPOINT_SUFFIXES = (".pth", ".pt")


def newest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint anywhere under ``root`` (by modification time), None if there is none.

    A folder the trainer wrote stands for the checkpoint its ``latest`` names (:func:`read_latest`),
    not for every ``epoch_NNN.pth`` in it; any other ``*.pth``/``*.pt`` file (a reference or
    plain checkpoint) counts as itself. Hidden files and folders (temporary files) are skipped.
    """
    base = Path(root)
    if not base.is_dir():
        return None
    found: list[Path] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        latest = read_latest(folder)
        if latest is not None:
            found.append(latest)
        found += [Path(folder) / f for f in sorted(files) if not f.startswith(".") and progress_of(f) is None
                  and Path(f).suffix.lower() in CHECKPOINT_SUFFIXES]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def rotate(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names); returns the removed."""
    if keep <= 0:
        return []
    found = list_checkpoints(output_dir)
    latest = read_latest(output_dir)
    removed = []
    for p in found[:-keep]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# --------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """Every generator's state, as tensors and plain types (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- saving

def plain_args(args: Any) -> dict[str, Any]:
    """``argparse.Namespace`` -> a dict of str/int/float/bool/None/list only."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def all_finite(*modules: torch.nn.Module | None) -> bool:
    """True when every parameter of every module is finite."""
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if not torch.isfinite(p).all():
                return False
    return True


def save_training_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike, keep: int = 3) -> Path:
    """Write ``state`` atomically under its canonical name, point ``latest`` at it, rotate old files."""
    folder = Path(output_dir)
    path = save_atomic(state, folder / checkpoint_name(state["epoch"], state["iteration"]))
    _write_text_atomic(folder / LATEST, json.dumps({
        "checkpoint": path.name, "epoch": state["epoch"], "iteration": state["iteration"],
        "global_step": state["global_step"]}) + "\n")
    rotate(folder, keep)
    return path


# --------------------------------------------------------------------------- resuming

def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "format_version" in obj and "model" in obj


def is_reference_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "BaryIR" in obj


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """``--resume`` -> ``(path or None, message)``.

    ``auto`` is the checkpoint ``latest`` names in ``output_dir`` (None with a note when there is
    none); a path that does not exist gives None and a warning, as the reference starts afresh.
    """
    if not resume:
        return None, None
    if resume == "auto":
        path = read_latest(output_dir)
        if path is None:
            return None, f"--resume auto: no checkpoint in {output_dir}; starting a fresh run"
        return path, None
    path = Path(resume)
    if not path.is_file():
        return None, (f"--resume {resume}: no checkpoint found at that path. STARTING A FRESH RUN from "
                      f"epoch 1 (as the reference does). Use --resume auto to continue the newest "
                      f"checkpoint in --output-dir.")
    return path, None


def potentials_state_from(obj: Any, source: str) -> dict[str, torch.Tensor] | None:
    """The Potentials' weights in a project or reference checkpoint, or None when it has none."""
    if is_training_checkpoint(obj):
        sd = obj.get("potentials")
        return dict(sd) if sd else None
    if isinstance(obj, Mapping):
        for key in ("Pots", "discr", "potentials"):
            if obj.get(key) is not None:
                try:
                    return model_state_from(obj[key], f"{source} ['{key}']")
                except CheckpointError:
                    return None
    return None


def network_state_from(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The network's weights in any accepted format (see :func:`utils.checkpoint.model_state_from`)."""
    return model_state_from(obj, source)