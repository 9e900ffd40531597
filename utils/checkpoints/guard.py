"""Limits on what reading a checkpoint may cost, checked before PyTorch allocates anything.

A checkpoint is untrusted input. :mod:`utils.checkpoints` never runs code from one, but a small
file can still ask for a lot of memory or time. :func:`inspect_checkpoint` looks at the file first:

- the zip archive (the format of ``torch.save`` since PyTorch 1.6): entry count, the uncompressed
  size in all (PyTorch stores entries uncompressed, so a compressed entry that inflates a hundredfold
  is a zip bomb) and the size of the pickle;
- a *dry run* of the pickle with :class:`_DryUnpickler`, which builds inert stand-ins instead of
  tensors: it counts imported names and calls, checks that every storage declares no more bytes than
  the file holds for it, that every tensor's shape and strides stay inside its storage and do not
  expand a few bytes into billions of elements, and that nothing nests deeper than
  :data:`MAX_NESTING` (a 5000-deep chain of modules would otherwise end in ``RecursionError``).

:func:`check_loaded` repeats the tensor checks on what ``torch.load`` returned (cheap; it catches
anything the dry run could not see). Every refusal is a :class:`CheckpointError`: one sentence naming
the file, what is wrong and what to do.
"""
from __future__ import annotations

import io
import numbers
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from utils.errors import UserError, human_bytes

# --- limits (module defaults; read_checkpoint takes the archive cap as a keyword argument) -------------
# The uncompressed size of an archive may be at most max(MAX_UNPACKED_BYTES, UNPACKED_SIZE_FACTOR x its
# size on disk): 4 GiB is ten times a paper training checkpoint (~400 MB); a larger legitimate file is
# stored uncompressed, so it stays within the factor.
MAX_UNPACKED_BYTES = 4 * 2**30
UNPACKED_SIZE_FACTOR = 4
MAX_ARCHIVE_ENTRIES = 100_000  # one entry per storage: a paper training checkpoint has ~2,000
MAX_COMPRESSION_RATIO = 100  # torch.save never compresses; an entry inflating more than this is a bomb
MIN_RATIO_CHECKED_BYTES = 2**20  # small entries may compress well (a zero-filled buffer) and cost nothing
MAX_PICKLE_BYTES = 32 * 2**20  # a paper training checkpoint's pickle is well under 1 MB
MAX_GLOBALS = 10_000  # names a pickle imports; pickles memoise them, a reference file names ~100
MAX_CALLS = 500_000  # objects a pickle builds by calling something; ~10 per tensor or module
MAX_NESTING = 200  # containers within containers; a reference module tree is ~25 deep
MAX_MODULE_VISITS = 100_000  # modules a pickled network's walk visits, a shared one once per path to it; the
# paper's networks have under 1,000 (a crafted chain of modules each naming the next twice doubles per level)
MAX_VIEW_ELEMENTS = 2**24  # elements a tensor may address beyond its storage's (expanded views)
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (PyTorch < 1.6) file


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says why and what to do."""


class _Refused(Exception):
    """A limit was crossed inside the dry run; :func:`inspect_checkpoint` words it with the file name."""


# --------------------------------------------------------------------------- tensor geometry

def view_problem(storage_elements: int, offset: Any, size: Any, stride: Any) -> str | None:
    """Why a tensor of ``size``/``stride`` at ``offset`` cannot be a view of a storage of
    ``storage_elements`` elements (None when it can): bad types, negative values, addressing past the
    storage's end, or more than :data:`MAX_VIEW_ELEMENTS` elements beyond the storage's own count."""
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)):
        return f"size {size!r} and stride {stride!r} are not two tuples of one length"
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0
               for v in (offset, *size, *stride)):
        return f"offset {offset!r}, size {tuple(size)} or stride {tuple(stride)} is not all non-negative integers"
    numel = 1
    for n in size:
        numel *= int(n)
    if numel == 0:
        return None
    last = int(offset) + sum((int(n) - 1) * int(s) for n, s in zip(size, stride))
    if last >= storage_elements:
        return (f"shape {tuple(size)} with strides {tuple(stride)} at offset {offset} addresses element {last:,} "
                f"of a storage holding {storage_elements:,}")
    if numel > max(storage_elements, MAX_VIEW_ELEMENTS):
        return (f"shape {tuple(size)} with strides {tuple(stride)} expands {storage_elements:,} stored elements "
                f"into {numel:,}")
    return None


def tensor_problem(t: torch.Tensor) -> str | None:
    """:func:`view_problem` of a loaded tensor (None for sparse and other layouts without a storage)."""
    if t.layout != torch.strided or t.device.type == "meta":
        return None
    try:
        elements = t.untyped_storage().nbytes() // max(t.element_size(), 1)
    except (RuntimeError, NotImplementedError):
        return None
    return view_problem(elements, t.storage_offset(), tuple(t.shape), tuple(t.stride()))


# --------------------------------------------------------------------------- walking nested objects

def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, _DryObject):
        yield from obj.children
    else:
        state = getattr(obj, "_pickled_state", None)  # a placeholder of utils.checkpoints (reference modules)
        if state is not None:
            yield state


def walk(obj: Any, max_depth: int = MAX_NESTING) -> Iterator[tuple[str, Any]]:
    """Every object inside ``obj`` with a path naming it (``model/encoder.weight``), depth first,
    iteratively; each shared object once. Raises :class:`_Refused` past ``max_depth`` levels."""
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield where, item
        if isinstance(item, (str, bytes, numbers.Number, torch.Tensor)) or item is None:
            continue
        if depth >= max_depth:
            inside = "/".join(where.split("/")[:3]) or "the top"
            raise _Refused(f"it nests objects more than {max_depth} levels deep (under {inside})")
        if isinstance(item, dict):
            stack.extend((v, f"{where}/{k}" if where else str(k), depth + 1) for k, v in item.items())
            stack.extend((k, where, depth + 1) for k in item.keys() if not isinstance(k, str))
        else:
            stack.extend((c, where, depth + 1) for c in _children(item))


# --------------------------------------------------------------------------- the dry run

class _DryMeta(type):
    def __call__(cls, *args, **kwargs):  # REDUCE / OBJ on a stand-in: record, never run
        obj = object.__new__(cls)
        obj.children = [args, kwargs]
        return obj


class _DryObject(metaclass=_DryMeta):
    """Stands in for every class and function a pickle names during the dry run; keeps what it was given."""

    def __new__(cls, *args, **kwargs):  # NEWOBJ
        obj = object.__new__(cls)
        obj.children = [args]
        return obj

    def __setstate__(self, state):  # BUILD
        self.children.append(state)

    def append(self, item):  # APPEND
        self.children.append(item)

    def extend(self, items):  # APPENDS
        self.children.append(list(items))

    def add(self, item):  # ADDITEMS (a set built by calling builtins.set; else the dry run stopped there and passed)
        self.children.append(item)

    def __setitem__(self, key, value):  # SETITEM(S)
        self.children.append((key, value))


class _DryStorage:
    """A storage the pickle declared: its element count and bytes per element."""

    def __init__(self, elements: int, itemsize: int):
        self.elements, self.itemsize = elements, itemsize


class _StorageKind:
    def __init__(self, name: str, itemsize: int):
        self.name, self.itemsize = name, itemsize


def _storage_kind(name: str) -> _StorageKind | None:
    """``FloatStorage`` -> its element size, as torch.load resolves storage names (None if unknown)."""
    if name == "UntypedStorage":
        return _StorageKind(name, 1)
    try:
        dtype = torch.serialization.StorageType(name).dtype
    except (KeyError, AttributeError, TypeError):
        return None
    return _StorageKind(name, torch.empty(0, dtype=dtype).element_size())


def _dry_stand_in(unpickler: "_DryUnpickler") -> type:
    """The stand-in class for every name the dry run does not check itself; each construction (REDUCE,
    NEWOBJ) counts against :data:`MAX_CALLS` and records its arguments."""
    class Meta(_DryMeta):
        def __call__(cls, *args, **kwargs):
            unpickler.count_call()
            return _DryMeta.__call__(_DryObject, *args, **kwargs)

    class StandIn(_DryObject, metaclass=Meta):
        def __new__(cls, *args, **kwargs):
            unpickler.count_call()
            return _DryObject.__new__(_DryObject, *args)

    return StandIn


class _DryUnpickler(pickle.Unpickler):
    """Reads a checkpoint's pickle without building anything real; raises :class:`_Refused` at a limit.

    ``records`` maps a zip archive's storage keys to the bytes stored for them (None for a legacy file,
    whose declared storages are collected in ``declared`` instead and compared with the file's size).
    """

    def __init__(self, file, records: dict[str, int] | None = None):
        super().__init__(file)
        self.records = records
        self.declared: dict[Any, int] = {}
        self.globals = 0
        self.calls = 0
        self.stand_in = _dry_stand_in(self)

    def count_call(self) -> None:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise _Refused(f"its pickle builds more than {MAX_CALLS:,} objects by calls")

    def find_class(self, module: str, name: str):
        self.globals += 1
        if self.globals > MAX_GLOBALS:
            raise _Refused(f"its pickle imports more than {MAX_GLOBALS:,} names (a checkpoint needs a few hundred)")
        if isinstance(name, str) and "Storage" in name and (kind := _storage_kind(name)) is not None:
            return kind
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return self.rebuild_tensor
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return self.rebuild_from_type
        return self.stand_in

    def rebuild_tensor(self, storage, offset, size, stride, *rest):
        self.count_call()
        if isinstance(storage, _DryStorage):
            problem = view_problem(storage.elements, offset, size, stride)
            if problem:
                raise _Refused(f"a tensor's {problem}")
        return _DryObject(size, rest)

    def rebuild_from_type(self, func, new_type, args, state):
        """A tensor subclass: check the tensor inside it when it is rebuilt the usual way."""
        self.count_call()
        if func == self.rebuild_tensor and isinstance(args, tuple):
            return func(*args)
        return _DryObject(args, state)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            return _DryObject(pid)
        # zip: ('storage', kind, key, location, numel); legacy: (..., root_key, location, numel, view_metadata)
        if len(pid) != (5 if self.records is not None else 6):
            return _DryObject(pid)
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageKind) or not isinstance(numel, int) or numel < 0:
            return _DryObject(pid)
        nbytes = numel * kind.itemsize
        if self.records is not None:
            stored = self.records.get(str(key), 0)
            if nbytes > stored:
                raise _Refused(f"its storage {key} declares {human_bytes(nbytes)} but the archive holds "
                               f"{human_bytes(stored)} for it")
        else:
            self.declared[key] = nbytes
        return _DryStorage(numel, kind.itemsize)


def _dry_load(unpickler: _DryUnpickler) -> Any:
    """One pickle through the dry run, its nesting checked; a malformed pickle returns None (the real
    load reports it better)."""
    try:
        obj = unpickler.load()
    except _Refused:
        raise
    except RecursionError:
        raise _Refused(f"it nests objects more than {MAX_NESTING} levels deep") from None
    except Exception:
        return None
    for _ in walk(obj):
        pass
    return obj


# --------------------------------------------------------------------------- the checks

def _check_archive(path: Path, size: int, max_unpacked_bytes: int | None) -> None:
    """Entries, sizes and compression of a zip checkpoint, then the dry run of its pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ARCHIVE_ENTRIES:
                raise _Refused(f"its archive has {len(entries):,} entries (at most {MAX_ARCHIVE_ENTRIES:,})")
            cap = max_unpacked_bytes if max_unpacked_bytes is not None else max(MAX_UNPACKED_BYTES,
                                                                                UNPACKED_SIZE_FACTOR * size)
            total = sum(e.file_size for e in entries)
            if total > cap:
                raise _Refused(f"its archive unpacks to {human_bytes(total)}, above the limit of "
                               f"{human_bytes(cap)}")
            for e in entries:
                if e.file_size > MIN_RATIO_CHECKED_BYTES and e.file_size > MAX_COMPRESSION_RATIO * e.compress_size:
                    raise _Refused(f"its entry {e.filename} inflates {e.compress_size:,} bytes to "
                                   f"{human_bytes(e.file_size)} (torch.save never compresses: a zip bomb?)")
            if len({e.filename for e in entries}) != len(entries):  # torch.load reads the last of equal names,
                raise _Refused("its archive holds two entries of one name (torch.save never writes such a file)")
            pickles = [e for e in entries if e.filename.endswith("data.pkl") and e.filename.count("/") == 1]
            if len(pickles) > 1:  # ... and this check would otherwise look at another pickle than torch.load reads
                raise _Refused(f"its archive holds {len(pickles)} pickles (torch.save writes one)")
            if not pickles:
                return  # not a torch archive: torch.load says so
            prefix = pickles[0].filename[: -len("data.pkl")]
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise _Refused(f"its pickle is {human_bytes(pickles[0].file_size)} (at most "
                               f"{human_bytes(MAX_PICKLE_BYTES)})")
            records = {e.filename[len(prefix) + 5:]: e.file_size for e in entries
                       if e.filename.startswith(prefix + "data/")}
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # damaged: torch.load reports it
    _dry_load(_DryUnpickler(io.BytesIO(data), records))


def _check_legacy(path: Path, size: int) -> None:
    """A file that is not a zip: a raw pickle or the legacy format (five pickles, then raw storages)."""
    if tarfile.is_tarfile(path):
        raise _Refused("it is in the pre-2018 tar format of PyTorch < 0.4, which is not read; load and save it "
                       "again with a PyTorch of that time")
    with open(path, "rb") as fh:
        first = _DryUnpickler(fh)
        if _dry_load(first) != _TORCH_MAGIC:
            return  # a plain pickle (checked) or not a pickle at all
        for _ in range(2):  # protocol version, system info
            _dry_load(_DryUnpickler(fh))
        main = _DryUnpickler(fh, records=None)
        _dry_load(main)
    declared = sum(main.declared.values())
    if declared > size:
        raise _Refused(f"it declares {human_bytes(declared)} of tensor storage in a file of {human_bytes(size)}")


def is_zip_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``torch.load`` reads ``path`` as a zip archive: by its first bytes, as torch tests the format, not
    by :func:`zipfile.is_zipfile` (which finds an end record anywhere near the end, which a legacy file may carry)."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def inspect_checkpoint(path: str | os.PathLike, max_unpacked_bytes: int | None = None) -> None:
    """Refuse a checkpoint whose reading would cost more than the limits above allow, before it is read.

    ``max_unpacked_bytes`` caps a zip archive's uncompressed size (default: the larger of
    :data:`MAX_UNPACKED_BYTES` and :data:`UNPACKED_SIZE_FACTOR` times the file's size). A file that is
    merely damaged passes: ``torch.load`` reports that with its own words.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        if is_zip_checkpoint(path):
            _check_archive(path, size, max_unpacked_bytes)
        else:
            _check_legacy(path, size)
    except _Refused as exc:
        raise CheckpointError(f"refusing to read checkpoint {path}: {exc}; the file is damaged or crafted, "
                              f"use another checkpoint") from None


def check_loaded(obj: Any, source: str) -> None:
    """Refuse a loaded checkpoint holding a tensor whose view does not fit its storage (or expands it
    hugely) or nesting deeper than :data:`MAX_NESTING`; the message names the first such tensor."""
    try:
        for where, item in walk(obj):
            if isinstance(item, torch.Tensor):
                if vars(item):  # torch.save never gives a tensor instance attributes: these would shadow its
                    raise _Refused(f"tensor {where or '(top)'} carries attributes ({', '.join(map(str, vars(item)))})"
                                   f" that override its methods")  # methods (untyped_storage, is_floating_point)
                problem = tensor_problem(item)
                if problem:
                    raise _Refused(f"tensor {where or '(top)'}: {problem}")
    except _Refused as exc:
        raise CheckpointError(f"refusing to use checkpoint {source}: {exc}; the file is damaged or crafted, "
                              f"use another checkpoint") from None
