"""Reading a checkpoint file: the guard's limits, the restricted load, then the checks of what was loaded
(tensors, a project checkpoint's ``model_config`` against its weights, a training checkpoint's RNG states);
and telling the formats apart."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.checkpoints.guard import CheckpointError, check_loaded, inspect_checkpoint
from utils.checkpoints.unpickling import _load
from utils.checkpoints.weights import check_config_matches_weights, is_training_checkpoint, load_network


def read_checkpoint(path: str | os.PathLike, *, max_unpacked_bytes: int | None = None) -> Any:
    """Load a checkpoint file onto the CPU without executing anything it contains.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, tries to run
    code, or would cost more to read than the limits of :mod:`utils.checkpoints.guard` allow
    (``max_unpacked_bytes`` overrides its cap on a zip archive's uncompressed size). What was
    loaded is checked too: tensors against their storages, a project checkpoint's
    ``model_config`` against its weights, a training checkpoint's RNG states.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a pipe or a device): pass a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path; --resume auto finds the "
                              f"newest checkpoint in --output-dir)")
    inspect_checkpoint(path, max_unpacked_bytes)
    obj = _load(path)
    check_loaded(obj, str(path))
    if isinstance(obj, Mapping) and obj.get("model_config") is not None:
        check_config_matches_weights(obj, str(path))
    if is_training_checkpoint(obj) and obj.get("rng"):
        check_rng_state(obj["rng"], str(path))
    return obj


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, key: str = "model") -> Any:
    """Read ``path`` (any accepted format) into ``model``; returns the raw checkpoint object."""
    obj = read_checkpoint(path)
    load_network(model, obj, str(path), key)
    return obj


def _rng_problem(state: Any) -> str | None:
    """Why ``state`` is not an RNG state as :func:`utils.checkpoints.training.rng_state` writes it (None when it is)."""
    def vector(t: Any, dtype: torch.dtype, n: int | None, what: str) -> str | None:
        if not (isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype == dtype and (n is None or t.numel() == n)
                and t.numel() <= 2**16 and t.is_contiguous()):
            found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            return f"{what} must be a 1-D {dtype} tensor" + (f" of {n} elements" if n else "") + f", found {found}"
        return None

    if not isinstance(state, Mapping):
        return f"it is a {type(state).__name__}, not a dict"
    py, npy = state.get("python"), state.get("numpy")
    if not (isinstance(py, Mapping) and isinstance(npy, Mapping)):
        return "its python or numpy state is missing"
    problem = (vector(py.get("state"), torch.int64, 625, "the python state")
               or vector(npy.get("keys"), torch.int64, 624, "the numpy keys")
               or vector(state.get("torch"), torch.uint8, torch.get_rng_state().numel(), "the torch state"))
    if problem:
        return problem
    if not (isinstance(npy.get("pos"), int) and 0 <= npy["pos"] <= 624 and npy.get("name") == "MT19937"):
        return f"the numpy state's name/pos ({npy.get('name')!r}, {npy.get('pos')!r}) are not MT19937's"
    cuda = state.get("cuda") or []
    if not isinstance(cuda, (list, tuple)) or len(cuda) > 1024:
        return "the CUDA states are not a list of at most 1024 tensors"
    n = torch.cuda.get_rng_state(0).numel() if cuda and torch.cuda.is_available() else None
    return next((p for i, t in enumerate(cuda) if (p := vector(t, torch.uint8, n, f"CUDA state {i}"))), None)


def check_rng_state(state: Any, source: str = "the checkpoint") -> None:
    """Refuse an RNG state of the wrong shape or size before any of it is converted or set (a crafted
    stride-0 tensor would otherwise expand into billions of list elements)."""
    problem = _rng_problem(state)
    if problem:
        raise CheckpointError(f"refusing to restore the random state of {source}: {problem}; the file is "
                              f"damaged, resume from another checkpoint")
