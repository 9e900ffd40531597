"""Loading a checkpoint file's Python objects without running any code it names (see :mod:`utils.checkpoints`).

Plain and project files load with ``torch.load(weights_only=True)``. A reference BaryIR file is a whole pickled
module, which ``weights_only`` refuses: :class:`_InertUnpickler` honours only an allow-list of tensor-rebuilding
and container globals and turns every other class into an inert placeholder. Nothing named in the file is
imported or called; calling anything not allow-listed (the way a malicious pickle runs code) is refused.
"""
from __future__ import annotations

import collections
import pickle
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.checkpoints.guard import CheckpointError, is_zip_checkpoint


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


class _Function:
    """An allow-listed function as a pickle gets it: calling it calls the function, and nothing can be set on it.

    The function itself would take any attribute a pickle's BUILD gives it, for the whole process: a new
    ``__name__`` or ``__defaults__``, or ``dump_patches``, with which torch's legacy reader writes a file named
    after the function (``<__name__>.patch``, anywhere) when the file's 'module' record names it.
    """
    __slots__ = ("_function", "_pickled_name")

    def __init__(self, pickled_name: str, function):
        object.__setattr__(self, "_function", function)
        object.__setattr__(self, "_pickled_name", pickled_name)

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)

    def __setstate__(self, state):  # BUILD
        raise _RefusedCall(f"the file asks to set attributes of {self._pickled_name}, which a checkpoint never needs")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    functions = {
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        functions[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        **{key: _Function(".".join(key), function) for key, function in functions.items()},
    }
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


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), which ``torch.load`` hands to ``torch.jit.load``
    as it does: a zip archive (by its first bytes) holding a ``constants.pkl``."""
    try:
        if not is_zip_checkpoint(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load(path: Path) -> Any:
    """``torch.load`` with ``weights_only``, else (a reference checkpoint) with :class:`_InertUnpickler`. A
    TorchScript archive is refused first: it holds a program, which ``torch.load`` would run through
    ``torch.jit.load`` rather than any unpickler of ours."""
    if _is_torchscript(path):
        raise CheckpointError(f"refusing to load {path}: it is a TorchScript archive (torch.jit.save), a program, "
                              f"not a checkpoint of weights. Where you trust it, save its weights instead: "
                              f"torch.save(torch.jit.load(FILE).state_dict(), 'weights.pth')")
    try:
        with warnings.catch_warnings():  # its note on a pickle's protocol would land above our one error line
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
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


# The first bytes of files people pass as a checkpoint by mistake (an image of the run, its log)
_NOT_CHECKPOINTS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"\x1f\x8b", "a gzip archive"))


def _kind_of(head: bytes) -> str | None:
    """What a file starting with ``head`` is, when it is plainly not a checkpoint (an image, an archive, text);
    None when it may be a damaged one."""
    for magic, kind in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a character cut at the end of ``head`` is text
    if text and all((c.isprintable() or c.isspace()) and c != "\ufffd" for c in text):
        return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file"
    return None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a file ``torch.load`` could not read, with what to do about it: a file that is plainly
    something else (an image, a log) is named as such; a damaged one says so, and which other checkpoints its
    run's folder holds."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = None
    kind = _kind_of(head) if head else None
    if kind is not None:
        return CheckpointError(f"cannot read checkpoint {path}: it is {kind}, not a checkpoint. Pass a checkpoint "
                               f"file (the trainer's epoch_NNN.pth, a .pth/.pt of weights) or a run's output folder")
    detail = str(exc).split(". This is an internal miniz error")[0]  # torch's advice repeats ours, at length
    why = "the file is empty" if head == b"" else f"{type(exc).__name__}: {detail}".rstrip(": .")
    from utils.checkpoints.folder import list_checkpoints
    others = [p.name for p in reversed(list_checkpoints(path.parent)) if p.name != path.name]
    also = f" ({path.parent} holds others: {', '.join(others[:3])})" if others else ""
    return CheckpointError(f"cannot read checkpoint {path}: {why}. The file is damaged (a save or a copy that did "
                           f"not finish?) or not a PyTorch checkpoint: copy or download it again, or use another "
                           f"checkpoint{also}")
