"""Checkpoints, all in one place: reading every format without running code, the training
checkpoint's format, saving (atomic, rotated, with a ``latest`` pointer), and resuming.

Reading. Three formats are accepted wherever weights are loaded:

- a plain state dict (``{name: tensor}``), optionally under ``state_dict``/``params`` (PyTorch-Lightning
  files, as PromptIR's released weights: ``state_dict`` with every key under ``net.``, which is stripped);
- the project's own checkpoint (a dict of state dicts, the network under ``model``);
- a reference BaryIR checkpoint: a whole pickled module under the key ``BaryIR``.

Plain and project files are read with ``torch.load(weights_only=True)``. A reference
file needs its pickled classes, which ``weights_only`` refuses; it is read by
:class:`_InertUnpickler`, which honours only an allow-list of tensor-rebuilding and
container globals and turns every other class into an inert placeholder. Nothing named
in the file is imported or called; calling anything that is not allow-listed (the way a
malicious pickle runs code) is refused. Python's unrestricted unpickler is never used.

Writing. The training checkpoint (what the trainers write and resume from) is a dict of state
dicts (loadable with ``torch.load(weights_only=True)``):

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
``epoch_losses``       mid-epoch: ``{"count": n, "sums": {loss: sum}}`` over the epoch's iterations so far
                       (the epoch record's means continue from them on resume); None at an epoch's end
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

Limits. A checkpoint is untrusted input: before ``torch.load`` sees a file,
:func:`utils.checkpoint_guard.inspect_checkpoint` refuses archives that unpack hugely, pickles
that import or build too much or nest too deeply, and tensors whose shape does not fit their
storage; after loading, every tensor is checked again, a project checkpoint's ``model_config``
must describe its weights, a training checkpoint's RNG and optimizer states must have their
expected shapes, and :func:`load_weights` refuses non-finite weights. Saving serializes in
memory first, so a full disk is refused (or reported) with the bytes needed, and stale
temporaries of killed writers are removed.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import re
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.checkpoint_guard import MAX_NESTING, CheckpointError, check_loaded, inspect_checkpoint
from utils.errors import LIST_LIMIT, listing
from utils.files import atomic_write

# Tensors that reference checkpoints carry but no forward pass uses
# (tests/conformance/legacy_unused_keys.txt).
LEGACY_UNUSED_KEYS = frozenset({
    "chnl_reduce1.weight", "chnl_reduce2.weight", "chnl_reduce3.weight",
    "reduce_noise_channel_1.weight", "reduce_noise_channel_2.weight", "reduce_noise_channel_3.weight",
})
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers


__all__ = ["CheckpointError"]  # defined in utils.checkpoint_guard, imported from here everywhere


# --------------------------------------------------------------------------- restricted unpickling

class _RefusedCall(pickle.UnpicklingError):
    pass


class _InertMeta(type):
    """Metaclass of placeholders: creating one by *calling* it is how pickles run code, so refuse."""

    def __call__(cls, *args, **kwargs):
        raise _RefusedCall(f"the file asks to call {cls._pickled_name}(...), which a checkpoint never needs")


class _Inert(metaclass=_InertMeta):
    """Stands in for any class named in a pickle; keeps the pickled state and nothing else."""
    _pickled_name = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ: how pickle re-creates objects, no __init__ run
        return object.__new__(cls)

    def __setstate__(self, state):
        object.__setattr__(self, "_pickled_state", state)

    def __reduce__(self):
        raise TypeError(f"inert placeholder for {self._pickled_name} cannot be pickled again")


def _placeholder(module: str, name: str) -> type:
    return _InertMeta(name, (_Inert,), {"_pickled_name": f"{module}.{name}", "__module__": "inert." + module})


def _safe_reconstructor(cls, base, state):
    """Protocol 0/1's ``copyreg._reconstructor``, limited to placeholders over ``object``."""
    if isinstance(cls, _InertMeta) and base is object and state is None:
        return cls.__new__(cls)
    raise _RefusedCall(f"the file asks copyreg._reconstructor to build {cls!r} on {base!r}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        allowed[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


# Names one pickle may import (inspect_checkpoint's dry run enforces the same limit before loading).
MAX_PICKLE_GLOBALS = 10_000


class _InertUnpickler(pickle.Unpickler):
    """Allow-listed globals as themselves, every other name as one cached placeholder class per name;
    past :data:`MAX_PICKLE_GLOBALS` imports the file is refused (each import used to make a new class)."""
    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        self._imports = getattr(self, "_imports", 0) + 1
        if self._imports > MAX_PICKLE_GLOBALS:
            raise _TooLarge(f"its pickle imports more than {MAX_PICKLE_GLOBALS:,} names")
        if module == "__builtin__":  # Python 2 spelling that protocol-2 pickles use
            module = "builtins"
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        cache = self.__dict__.setdefault("_placeholders", {})
        if (module, name) not in cache:
            cache[(module, name)] = _placeholder(module, name)
        return cache[(module, name)]


class _TooLarge(pickle.UnpicklingError):
    pass


def _inert_pickle_module() -> types.ModuleType:
    """A stand-in for the ``pickle`` module that torch.load drives (Unpickler and load)."""
    mod = types.ModuleType("inert_pickle")
    mod.Unpickler = _InertUnpickler
    mod.load = lambda f, **kw: _InertUnpickler(f, **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def read_checkpoint(path: str | os.PathLike, *, max_unpacked_bytes: int | None = None) -> Any:
    """Load a checkpoint file onto the CPU without executing anything it contains.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, tries to run
    code, or would cost more to read than the limits of :mod:`utils.checkpoint_guard` allow
    (``max_unpacked_bytes`` overrides its cap on a zip archive's uncompressed size). What was
    loaded is checked too: tensors against their storages, a project checkpoint's
    ``model_config`` against its weights, a training checkpoint's RNG states.
    """
    path = Path(path)
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


def _load(path: Path) -> Any:
    """``torch.load`` with ``weights_only``, else (a reference checkpoint) with :class:`_InertUnpickler`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # names classes that weights_only refuses: maybe a reference checkpoint
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise _unreadable(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert_pickle_module())
    except _RefusedCall as exc:
        raise CheckpointError(f"refusing to load {path}: {exc}. Only tensors, containers and pickled "
                              f"modules are read from checkpoints; this file tries to run code.") from exc
    except _TooLarge as exc:
        raise CheckpointError(f"refusing to read checkpoint {path}: {exc}; the file is damaged or crafted, "
                              f"use another checkpoint") from exc
    except RecursionError:
        raise CheckpointError(f"refusing to read checkpoint {path}: it nests objects too deeply to read; the "
                              f"file is damaged or crafted, use another checkpoint") from None
    except Exception as exc:  # not a pickle at all (a text file), a torn one, ...
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a file ``torch.load`` could not read, with what to do about it."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    why = "the file is empty" if empty else f"{type(exc).__name__}: {exc}".rstrip(": .")
    return CheckpointError(f"cannot read checkpoint {path}: {why}. The file is damaged or not a PyTorch checkpoint: "
                           f"copy or download it again, or use another checkpoint")


def check_config_matches_weights(obj: Mapping[str, Any], source: str) -> None:
    """Refuse a project checkpoint whose ``model_config`` is not a sane configuration, or whose network
    would have a parameter count far from the weights the file holds, before anything is built from it.

    The network is laid out on the ``meta`` device (no memory) to count its parameters exactly.
    """
    from net.presets import BACKBONES, ModelConfigError, check_model_config, model_config

    stored = obj["model_config"]
    backbone = obj.get("backbone") if obj.get("backbone") in BACKBONES else "BaryNet"
    where = f"checkpoint {source}: its model_config"
    try:
        cfg = model_config("paper", source=where, backbone=backbone, **check_model_config(stored, where, backbone))
    except ModelConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        weights = model_state_from(obj, source)
    except CheckpointError:
        return  # no weights to compare with; loading them reports it
    with torch.device("meta"):
        implied = sum(p.numel() for p in BACKBONES[backbone](**cfg).state_dict().values())
    present = sum(t.numel() for t in weights.values())
    if implied > 1.1 * present + 1000 or present > 1.1 * implied + 1000:
        raise CheckpointError(f"refusing to use checkpoint {source}: its model_config describes a {backbone} of "
                              f"{implied:,} weights but the file holds {present:,}; the file is damaged, or pass "
                              f"--preset and the model flags that describe it")


# --------------------------------------------------------------------------- state dicts

def _walk_module(obj: Any, prefix: str, out: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Collect parameters and persistent buffers of a placeholder module, as ``state_dict()`` would.

    Iterative, in ``state_dict()`` order; a chain of modules deeper than :data:`MAX_NESTING` is a
    :class:`CheckpointError` (no real network nests more than a dozen levels).
    """
    stack = [(obj, prefix, 0)]
    while stack:
        module, where, depth = stack.pop()
        state = getattr(module, "_pickled_state", None)
        if not isinstance(state, dict):
            continue
        if depth > MAX_NESTING:
            raise CheckpointError(f"refusing to use checkpoint {source}: its modules nest more than {MAX_NESTING} "
                                  f"levels deep; the file is damaged or crafted, use another checkpoint")
        parameters, buffers, modules = (_mapping(state.get(key) or {}, where + key, source)
                                        for key in ("_parameters", "_buffers", "_modules"))
        skip = state.get("_non_persistent_buffers_set") or set()
        skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else set()
        for name, tensor in [*parameters.items(), *((n, t) for n, t in buffers.items() if n not in skip)]:
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"refusing to use checkpoint {source}: its module entry {where}{name} is a "
                                      f"{type(tensor).__name__}, not a tensor; the file is damaged or crafted, use "
                                      f"another checkpoint")
            out[where + name] = tensor.detach()
        children = [(c, f"{where}{n}.", depth + 1) for n, c in modules.items() if c is not None]
        stack.extend(reversed(children))


def _mapping(value: Any, where: str, source: str) -> Mapping:
    """A pickled module's ``_parameters``/``_buffers``/``_modules``, which must be a mapping."""
    if not isinstance(value, Mapping):
        raise CheckpointError(f"refusing to use checkpoint {source}: {where} of a pickled module is a "
                              f"{type(value).__name__}, not a mapping; the file is damaged or crafted, use another "
                              f"checkpoint")
    return value


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def model_state_from(obj: Any, source: str = "checkpoint", key: str = "model") -> dict[str, torch.Tensor]:
    """The network's state dict inside any accepted checkpoint format (prefixes stripped, legacy keys dropped).

    ``key`` picks the network in a project checkpoint (``model``, or ``potentials``).
    """
    if isinstance(obj, _Inert):
        sd: dict[str, torch.Tensor] = {}
        _walk_module(obj, "", sd, source)
    elif isinstance(obj, Mapping) and "BaryIR" in obj:
        return model_state_from(obj["BaryIR"], source, key)
    elif isinstance(obj, Mapping) and isinstance(obj.get(key), _Inert):
        return model_state_from(obj[key], source, key)  # reference --pretrained files: {'model': module}
    elif isinstance(obj, Mapping) and key in obj and _is_state_dict(obj[key]):
        sd = dict(obj[key])
    elif isinstance(obj, Mapping) and any(_is_state_dict(obj.get(k)) for k in ("state_dict", "params")):
        sd = dict(next(obj[k] for k in ("state_dict", "params") if _is_state_dict(obj.get(k))))
    elif _is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, torch.nn.Module):
        sd = obj.state_dict()
    else:
        keys = list(obj)[:LIST_LIMIT] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source} holds no network weights under '{key}', 'BaryIR', 'state_dict' "
                              f"or as a plain state dict (found: {keys})")
    if not sd:
        raise CheckpointError(f"{source} contains a module with no parameters")
    return normalise_state_dict(sd)


def normalise_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``/``_orig_mod.`` prefixes and drop the reference's unused legacy tensors.

    A PyTorch-Lightning state dict (PromptIR's released ``.ckpt`` files: the network is the Lightning
    module's ``net``) has every key under ``net.``; that prefix goes first.
    """
    if sd and all(name.startswith("net.") for name in sd):
        sd = {name[len("net."):]: tensor for name, tensor in sd.items()}
    out = {}
    for name, tensor in sd.items():
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name not in LEGACY_UNUSED_KEYS:
            out[name] = tensor
    return out




def load_weights(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``sd`` into ``model``; a mismatch is a :class:`CheckpointError` listing the keys."""
    expected = model.state_dict()
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected.keys() & sd.keys() if sd[k].shape != expected[k].shape]
    problems = [f"{what} ({len(keys)}): " + listing(sorted(keys), limit=5, sep=sep, lead="")
                for what, keys, sep in (("missing from the file", missing, ", "),
                                        ("not in the model", unexpected, ", "), ("shape mismatches", shapes, "; "))
                if keys]
    if problems:
        cfg = getattr(model, "config", None)
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}"
            + (f" (dim={cfg['dim']}, num_blocks={cfg['num_blocks']})" if cfg else "") + ": "
            + " — ".join(problems)
            + ". Pick the matching --backbone and --preset (or model flags) for this checkpoint.")
    bad = [k for k, v in sd.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to load {source}: {len(bad)} weight tensor(s) hold NaN or Inf ("
                              + listing(bad, sep=", ", lead="") + "); the training that wrote it diverged, "
                              "use an earlier checkpoint")
    model.load_state_dict(sd, strict=True)


def load_network(model: torch.nn.Module, obj: Any, source: str, key: str = "model") -> None:
    """Load the network weights found in ``obj`` (a checkpoint object of any accepted format,
    read by :func:`read_checkpoint` from ``source``) into ``model``; mismatches are one error."""
    load_weights(model, model_state_from(obj, str(source), key), str(source))


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, key: str = "model") -> Any:
    """Read ``path`` (any accepted format) into ``model``; returns the raw checkpoint object."""
    obj = read_checkpoint(path)
    load_network(model, obj, str(path), key)
    return obj


# --------------------------------------------------------------------------- writing

def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`utils.files.atomic_write`).

    The checkpoint is serialized in memory first (it is 100-400 MB for the paper's network), so its size
    is known before the disk is touched and a full disk is refused with the bytes needed.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    return atomic_write(path, lambda fh: fh.write(data), size=data.nbytes)


# A temporary of utils.files.atomic_write: '.<name>.<pid>.<8 random characters>.tmp' (older versions: no pid).
_TEMP_RE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
# A temporary not modified for this long is an orphan even if its process id is in use (it may be
# another process now, or a writer on another machine that died): no write pauses for 15 minutes.
STALE_TEMP_SECONDS = 15 * 60
# A temporary whose writer is no longer running here is removed once it is this old (a live writer on
# another machine sharing the folder keeps its file fresh).
DEAD_WRITER_GRACE_SECONDS = 60


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can ask about: assume alive
    return True


def remove_stale_temporaries(output_dir: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Delete temporaries :func:`~utils.files.atomic_write` left behind in ``output_dir`` when its writer was killed
    (``kill -9`` during a save); returns the removed files.

    Only files named exactly as :func:`~utils.files.atomic_write` names them, for a checkpoint name or ``latest``,
    are considered; one is removed when its writing process is gone and it is over
    :data:`DEAD_WRITER_GRACE_SECONDS` old, or when it has not changed for :data:`STALE_TEMP_SECONDS`.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m is None or not (progress_of(m["name"]) is not None or m["name"] == LATEST):
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if not p.is_file() or p.is_symlink():
            continue
        age = now - st.st_mtime
        dead = m["pid"] is not None and not _process_alive(int(m["pid"]))
        if age > STALE_TEMP_SECONDS or (dead and age > DEAD_WRITER_GRACE_SECONDS):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- training checkpoints
# (what the trainers write and resume from; the format is in the module docstring)

FORMAT_VERSION = 1
LATEST = "latest"
LOG_NAME = "log.jsonl"
CHECKPOINT_DIR = "checkpoint"  # where the trainers write by default, and the tester and the app look
# The reference tester's default --model, its 5D all-in-one checkpoint, in CHECKPOINT_DIR.
REFERENCE_MODEL_NAME = "model_allBaryNet__61_1.0_5D.pt"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")
_ITER_RE = re.compile(r"^iter_e(\d+)_i(\d+)\.pth$")


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
                  and Path(f).suffix.lower() in CHECKPOINT_SUFFIXES and (Path(folder) / f).is_file()]  # no dead link
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def default_model(checkpoint_dir: str | os.PathLike = CHECKPOINT_DIR) -> tuple[Path | None, str]:
    """The checkpoint the tester and the app use without ``--model``: ``(checkpoint, why)``, ``(None, "")``
    when there is none.

    The reference tester's default, :data:`REFERENCE_MODEL_NAME` in ``checkpoint_dir``, when it is there,
    else the newest checkpoint under ``checkpoint_dir`` (:func:`newest_checkpoint`).
    """
    reference = Path(checkpoint_dir) / REFERENCE_MODEL_NAME
    if reference.is_file():
        return reference, "the authors' checkpoint, the reference tester's default"
    newest = newest_checkpoint(checkpoint_dir)
    if newest is None:
        return None, ""
    return newest, f"newest under {Path(checkpoint_dir).as_posix()}/"


def resolve_checkpoint(path: str | os.PathLike, flag: str = "--model") -> tuple[Path, str | None]:
    """What a user may name as a checkpoint -> ``(the file, a note when it was not the file itself)``.

    A checkpoint file is itself; a run's ``latest`` pointer is the checkpoint it names; a folder is its
    run's newest checkpoint (``latest``, else by name), else the newest checkpoint anywhere under it
    (:func:`newest_checkpoint`). Nothing there is a :class:`CheckpointError` naming ``flag``.
    """
    path = Path(path)
    if path.is_dir():
        found = read_latest(path) or newest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{flag} {path}: that folder holds no checkpoint (.pth/.pt); pass a checkpoint "
                                  f"file or the output folder of a training run")
        return found, f"{flag} {path} is a folder: using its newest checkpoint, {found}"
    if path.name == LATEST and path.is_file():
        found = read_latest(path.parent)
        if found is None:
            raise CheckpointError(f"{flag} {path}: the pointer names no checkpoint that exists in {path.parent}")
        return found, f"{flag} {path} points to {found}"
    if not path.is_file():
        raise CheckpointError(f"{flag} {path}: checkpoint not found (no such file or folder). Pass a checkpoint "
                              f"file (the trainer's epoch_NNN.pth, a plain state dict, or a reference BaryIR "
                              f"checkpoint), a run's output folder, or its 'latest' pointer")
    return path, None


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


def _rng_problem(state: Any) -> str | None:
    """Why ``state`` is not an RNG state as :func:`rng_state` writes it (None when it is)."""
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


def latest_record(name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """What ``latest`` says of checkpoint ``name``, in the console's words: ``at`` is "end of epoch 3" or
    "epoch 4, iteration 500" (epochs count from 1), ``epochs_done`` the completed epochs."""
    done, it = state["epoch"], state["iteration"]
    at = f"end of epoch {done}" if it == 0 else f"epoch {done + 1}, iteration {it}"
    return {"checkpoint": name, "at": at, "epochs_done": done, "global_step": state["global_step"]}


def save_training_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike, keep: int = 3) -> Path:
    """Write ``state`` atomically under its canonical name, point ``latest`` at it, rotate old files.

    Temporaries of earlier saves that were killed are removed first (:func:`remove_stale_temporaries`).
    """
    folder = Path(output_dir)
    remove_stale_temporaries(folder)
    path = save_atomic(state, folder / checkpoint_name(state["epoch"], state["iteration"]))
    _write_text_atomic(folder / LATEST, json.dumps(latest_record(path.name, state)) + "\n")
    rotate(folder, keep)
    return path


def training_checkpoint(model: torch.nn.Module, potentials: torch.nn.Module | None, optimizer, potentials_optimizer,
                        scaler, state: LoopState, epoch_done: bool, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The training checkpoint (the format in the module docstring) of a run at ``state``.

    ``epoch_done``: ``state`` is the end of epoch ``state.epoch`` (else mid-epoch, after
    ``state.iteration`` iterations). ``meta`` holds ``model_config``, ``backbone``, ``preset``,
    ``lambdas``, ``domains``, ``domain_counts``, ``world_size`` and ``args``.
    """
    return {"format_version": FORMAT_VERSION, "model": model.state_dict(),
            "potentials": potentials.state_dict() if potentials is not None else None,
            "optimizer": optimizer.state_dict(),
            "potentials_optimizer": potentials_optimizer.state_dict() if potentials_optimizer is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": state.epoch if epoch_done else state.epoch - 1, "iteration": 0 if epoch_done else state.iteration,
            "global_step": state.global_step, "rng": rng_state(),
            "epoch_losses": None if epoch_done else {"count": state.loss_count, "sums": dict(state.loss_sums)},
            **meta}


def epoch_losses_from(obj: Mapping[str, Any]) -> tuple[dict[str, float], int] | None:
    """A mid-epoch checkpoint's ``epoch_losses`` as ``(sums, count)``; None when absent (a checkpoint of an
    epoch's end, or one written before they were kept) or not of that shape."""
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
        raise refuse(f"{len(bad)} saved tensor(s) do not fit this run's parameters ("
                     + listing(bad, sep="; ", lead="") + ")")


def restore_training_state(ckpt: Mapping[str, Any], optimizer, potentials_optimizer, scaler,
                           source: str = "the checkpoint") -> None:
    """Put a training checkpoint's optimizer, scaler and RNG states back (the weights are loaded
    before the networks move to their device, by ``utils.train.setup.load_start``).

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


# --------------------------------------------------------------------------- resuming

def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "format_version" in obj and "model" in obj


def is_reference_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "BaryIR" in obj


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
        return found, None
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
        return found, f"--resume {resume} is {what}: continuing its newest checkpoint, {found[0].name}"
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
