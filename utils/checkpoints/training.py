"""The training checkpoint (its format is in :mod:`utils.checkpoints`): the state a run saves and resumes
from, the RNG states, and choosing the checkpoint to resume."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from utils.checkpoints.folder import (
    LATEST,
    checkpoint_name,
    list_checkpoints,
    pointer_note,
    read_latest,
    remove_stale_temporaries,
    rotate,
    save_atomic,
)
from utils.checkpoints.guard import CheckpointError
from utils.checkpoints.reading import check_rng_state
from utils.errors import UserError, counted, listing, one_or_many
from utils.files import write_text

FORMAT_VERSION = 1


@dataclass
class LoopState:
    """Where training is: the epoch being trained (1-based), iterations done in it, and in all; and the
    losses summed over the epoch's iterations so far (``loss_count`` of them), whose means the epoch's
    record gives: a mid-epoch checkpoint keeps them, so a resumed epoch's means cover the whole epoch."""
    epoch: int = 1
    iteration: int = 0
    global_step: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_count: int = 0


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


def set_rng_state(state: Mapping[str, Any], source: str = "the checkpoint") -> None:
    """Put back every generator's state saved by :func:`rng_state`, checked first (:func:`check_rng_state`)."""
    check_rng_state(state, source)
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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


def latest_record(name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """What ``latest`` says of checkpoint ``name``, in the console's words: ``at`` is "end of epoch 3" or
    "epoch 4, iteration 500" (epochs count from 1), ``epochs_done`` the completed epochs."""
    done, it = state["epoch"], state["iteration"]
    at = f"end of epoch {done}" if it == 0 else f"epoch {done + 1}, iteration {it}"
    return {"checkpoint": name, "at": at, "epochs_done": done, "global_step": state["global_step"]}


def save_training_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike, keep: int = 3,
                             warn: Callable[[str], None] | None = None) -> Path:
    """Write ``state`` atomically under its canonical name, point ``latest`` at it, rotate old files.

    Temporaries of earlier saves that were killed are removed first (:func:`remove_stale_temporaries`).
    A ``latest`` that cannot be written once the checkpoint is is :class:`LatestNotUpdated` (raised from the
    cause): the checkpoint is saved, and the old checkpoints are left unrotated. ``warn``: where a checkpoint that
    rotation cannot remove is said (:func:`~utils.checkpoints.folder.rotate`).
    """
    folder = Path(output_dir)
    remove_stale_temporaries(folder)
    path = save_atomic(state, folder / checkpoint_name(state["epoch"], state["iteration"]))
    try:
        write_text(folder / LATEST, json.dumps(latest_record(path.name, state)) + "\n")
    except (OSError, UserError) as exc:
        raise LatestNotUpdated(path) from exc
    rotate(folder, keep, warn)
    return path


class LatestNotUpdated(Exception):
    """:func:`save_training_checkpoint` wrote ``checkpoint`` whole but not the ``latest`` pointer to it (its cause
    says why); ``latest`` names what it named before, and :func:`~utils.checkpoints.folder.read_latest` finds
    ``checkpoint`` as the newer save."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"{checkpoint} was saved, but {LATEST} beside it was not updated")
        self.checkpoint = checkpoint


def training_checkpoint(model: torch.nn.Module, potentials: torch.nn.Module | None, optimizer, potentials_optimizer,
                        scaler, state: LoopState, epoch_done: bool, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The training checkpoint (its format is in :mod:`utils.checkpoints`) of a run at ``state``.

    ``epoch_done``: ``state`` is the end of epoch ``state.epoch`` (else mid-epoch, after
    ``state.iteration`` iterations). ``meta`` holds ``model_config``, ``backbone``, ``preset``,
    ``lambdas``, ``domains``, ``domain_counts``, ``world_size``, ``kernels`` and ``args``.
    """
    return {"format_version": FORMAT_VERSION, "model": model.state_dict(),
            "potentials": potentials.state_dict() if potentials is not None else None,
            "optimizer": optimizer.state_dict(),
            "potentials_optimizer": potentials_optimizer.state_dict() if potentials_optimizer is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": state.epoch if epoch_done else state.epoch - 1, "iteration": 0 if epoch_done else state.iteration,
            "global_step": state.global_step, "rng": rng_state(),
            "epoch_losses": {"count": state.loss_count, "sums": dict(state.loss_sums)},
            **meta}


def epoch_losses_from(obj: Mapping[str, Any]) -> tuple[dict[str, float], int] | None:
    """A checkpoint's ``epoch_losses`` as ``(sums, count)``; None when absent (a checkpoint written before
    they were kept: mid-epoch ones before session 10, epoch ends before session 13) or not of that shape."""
    saved = obj.get("epoch_losses")
    if not isinstance(saved, Mapping):
        return None
    count, sums = saved.get("count"), saved.get("sums")
    if (type(count) is not int or count < 0 or not isinstance(sums, Mapping)
            or not all(isinstance(k, str) and type(v) in (int, float) for k, v in sums.items())):
        return None
    return {k: float(v) for k, v in sums.items()}, count


def check_optimizer_state(optimizer, saved: Any, source: str = "the checkpoint", what: str = "optimizer") -> None:
    """Refuse a saved optimizer state that does not fit ``optimizer``: other parameter groups, or a
    per-parameter tensor (``exp_avg``, ...) whose shape is not its parameter's (a scalar, like ``step``,
    is fine). ``optimizer.load_state_dict`` checks neither shapes nor sizes before converting the tensors."""
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"refusing to restore the {what} state of {source}: {problem}; resume with the "
                               f"--backbone/--preset it was trained with, or from another checkpoint")

    if not (isinstance(saved, Mapping) and isinstance(saved.get("state"), Mapping)
            and isinstance(saved.get("param_groups"), (list, tuple))):
        raise refuse("it is not an optimizer state dict")
    groups = saved["param_groups"]
    sizes = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in groups]
    wanted = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != wanted:
        raise refuse(f"it has parameter groups of {sizes} parameters, this run's optimizer {wanted}")
    params = {}
    for g_saved, g_now in zip(groups, optimizer.param_groups):
        params.update(zip(g_saved["params"], g_now["params"]))
    bad = []
    for key, entry in saved["state"].items():
        if key not in params or not isinstance(entry, Mapping):
            bad.append(f"{key}: not a parameter of the saved groups")
            continue
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.numel() > 1 and v.shape != params[key].shape:
                bad.append(f"{key}.{name}: {tuple(v.shape)} vs parameter {tuple(params[key].shape)}")
    if bad:
        do = one_or_many(len(bad), "does", "do")
        raise refuse(f"{counted(len(bad), 'saved tensor')} {do} not fit this run's parameters ("
                     + listing(bad, sep="; ", lead="") + ")")


def restore_training_state(ckpt: Mapping[str, Any], optimizer, potentials_optimizer, scaler,
                           source: str = "the checkpoint") -> None:
    """Put a training checkpoint's optimizer, scaler and RNG states back (the weights are loaded
    before the networks move to their device, by ``utils.train.resuming.load_start``).

    Every state is checked first (:func:`check_optimizer_state`, :func:`check_rng_state`);
    ``source`` (the file) is named in the refusal."""
    check_optimizer_state(optimizer, ckpt["optimizer"], source)
    if potentials_optimizer is not None:
        check_optimizer_state(potentials_optimizer, ckpt["potentials_optimizer"], source, "potentials optimizer")
    if ckpt.get("rng"):
        check_rng_state(ckpt["rng"], source)
    optimizer.load_state_dict(ckpt["optimizer"])
    if potentials_optimizer is not None:
        potentials_optimizer.load_state_dict(ckpt["potentials_optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"], source)


def resume_candidates(resume: str | None, output_dir: str | os.PathLike) -> tuple[list[Path], str | None]:
    """``--resume`` -> ``(checkpoints to try, newest first; a note for the console)``.

    * ``auto``: the checkpoint ``latest`` names in ``output_dir``, then the others newest first (so a
      damaged newest file falls back to the one before); none at all is a fresh run, with a note.
    * a folder, or its ``latest`` pointer: that run's checkpoints the same way (the note says which folder
      was meant).
    * a file: that file alone.

    A path that does not exist, or a folder without checkpoints, raises :class:`CheckpointError`
    before anything is written: a mistyped path must not start a fresh run over the old one.
    """
    if not resume:
        return [], None
    if resume == "auto":
        found = _newest_first(output_dir)
        if not found:
            return [], f"--resume auto: no checkpoint in {output_dir}; starting a fresh run"
        note = pointer_note(output_dir, found[0])  # a latest edited or damaged: which checkpoint is used, and why
        return found, f"--resume auto: continuing {found[0].name}{note}" if note else None
    path = Path(resume)
    if path.name == LATEST and path.is_file():  # a run's pointer: that run, from the checkpoint it names
        path = path.parent
    if path.is_dir():
        found = _newest_first(path)
        if not found:
            raise CheckpointError(f"--resume {resume}: that folder holds no checkpoint (epoch_NNN.pth or "
                                  f"iter_eNNN_iNNNNNN.pth); pass a checkpoint file, or --resume auto to continue "
                                  f"the run in --output-dir")
        what = "a run's pointer" if Path(resume).name == LATEST else "a folder"
        return found, (f"--resume {resume} is {what}: continuing its newest checkpoint, {found[0].name}"
                       f"{pointer_note(path, found[0])}")
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such file or folder; nothing was written. Check the path, "
                              f"use --resume auto to continue the newest checkpoint in --output-dir, or leave "
                              f"--resume out to start a fresh run")
    return [path], None


def _newest_first(output_dir: str | os.PathLike) -> list[Path]:
    """The trainer's checkpoints in ``output_dir``: the one ``latest`` names, then the rest newest first."""
    found = list(reversed(list_checkpoints(output_dir)))
    latest = read_latest(output_dir)
    if latest is not None:
        found = [latest] + [p for p in found if p.resolve() != latest.resolve()]
    return found
