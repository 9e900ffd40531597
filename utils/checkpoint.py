"""Reading and writing checkpoints without ever running code from a file.

Three formats are accepted wherever weights are loaded:

- a plain state dict (``{name: tensor}``), optionally under ``state_dict``/``params``;
- the project's own checkpoint (a dict of state dicts, the network under ``model``);
- a reference BaryIR checkpoint: a whole pickled module under the key ``BaryIR``.

Plain and project files are read with ``torch.load(weights_only=True)``. A reference
file needs its pickled classes, which ``weights_only`` refuses; it is read by
:class:`_InertUnpickler`, which honours only an allow-list of tensor-rebuilding and
container globals and turns every other class into an inert placeholder. Nothing named
in the file is imported or called; calling anything that is not allow-listed (the way a
malicious pickle runs code) is refused. Python's unrestricted unpickler is never used.
"""
from __future__ import annotations

import collections
import os
import pickle
import tempfile
import types
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import torch

# Tensors that reference checkpoints carry but no forward pass uses
# (tests/conformance/legacy_unused_keys.txt).
LEGACY_UNUSED_KEYS = frozenset({
    "chnl_reduce1.weight", "chnl_reduce2.weight", "chnl_reduce3.weight",
    "reduce_noise_channel_1.weight", "reduce_noise_channel_2.weight", "reduce_noise_channel_3.weight",
})
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_LIST_LIMIT = 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says why and what to do."""


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


class _InertUnpickler(pickle.Unpickler):
    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        if module == "__builtin__":  # Python 2 spelling that protocol-2 pickles use
            module = "builtins"
        found = self._allowed.get((module, name))
        return found if found is not None else _placeholder(module, name)


def _inert_pickle_module() -> types.ModuleType:
    """A stand-in for the ``pickle`` module that torch.load drives (Unpickler and load)."""
    mod = types.ModuleType("inert_pickle")
    mod.Unpickler = _InertUnpickler
    mod.load = lambda f, **kw: _InertUnpickler(f, **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint file onto the CPU without executing anything it contains.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable or
    tries to run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path; --resume auto finds the "
                              f"newest checkpoint in --output-dir)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # names classes that weights_only refuses: maybe a reference checkpoint
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}. The file is "
                              f"damaged or not a PyTorch checkpoint.") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert_pickle_module())
    except _RefusedCall as exc:
        raise CheckpointError(f"refusing to load {path}: {exc}. Only tensors, containers and pickled "
                              f"modules are read from checkpoints; this file tries to run code.") from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- state dicts

def _walk_module(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Collect parameters and persistent buffers of a placeholder module, as ``state_dict()`` would."""
    state = getattr(obj, "_pickled_state", None)
    if not isinstance(state, dict):
        return
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _walk_module(child, f"{prefix}{name}.", out)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def model_state_from(obj: Any, source: str = "checkpoint", key: str = "model") -> dict[str, torch.Tensor]:
    """The network's state dict inside any accepted checkpoint format (prefixes stripped, legacy keys dropped).

    ``key`` picks the network in a project checkpoint (``model``, or ``potentials``).
    """
    if isinstance(obj, _Inert):
        sd: dict[str, torch.Tensor] = {}
        _walk_module(obj, "", sd)
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
        keys = list(obj)[:_LIST_LIMIT] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source} holds no network weights under '{key}', 'BaryIR', 'state_dict' "
                              f"or as a plain state dict (found: {keys})")
    if not sd:
        raise CheckpointError(f"{source} contains a module with no parameters")
    return normalise_state_dict(sd)


def normalise_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``/``_orig_mod.`` prefixes and drop the reference's unused legacy tensors."""
    out = {}
    for name, tensor in sd.items():
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name not in LEGACY_UNUSED_KEYS:
            out[name] = tensor
    return out


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


def load_weights(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``sd`` into ``model``; a mismatch is a :class:`CheckpointError` listing the keys."""
    expected = model.state_dict()
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected.keys() & sd.keys() if sd[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing from the file ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        more = f" ... and {len(shapes) - _LIST_LIMIT} more" if len(shapes) > _LIST_LIMIT else ""
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(sorted(shapes)[:_LIST_LIMIT]) + more)
    if problems:
        cfg = getattr(model, "config", None)
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}"
            + (f" (dim={cfg['dim']}, num_blocks={cfg['num_blocks']})" if cfg else "") + ":\n  "
            + "\n  ".join(problems)
            + "\nPick the matching --backbone and --preset (or model flags) for this checkpoint.")
    model.load_state_dict(sd, strict=True)


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, key: str = "model") -> Any:
    """Read ``path`` (any accepted format) into ``model``; returns the raw checkpoint object."""
    obj = read_checkpoint(path)
    load_weights(model, model_state_from(obj, str(path), key), str(path))
    return obj


# --------------------------------------------------------------------------- writing

def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync, then rename it over ``path``.

    A crash at any moment leaves either the old file or the complete new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))
