"""Hostile checkpoints: each file here is small and crafted at test time, and must be refused with one
clear CheckpointError instead of exhausting memory, time or the stack (one test per failure the audit
found). A load that could exhaust the machine if the guard regressed runs in a subprocess whose address
space is capped (resource.RLIMIT_AS) at what it already uses plus 1.5 GiB."""
import collections
import contextlib
import errno
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from _disks import FileWrapper

from net.presets import build_model, model_config
from utils.checkpoints import (
    CheckpointError,
    load_model_weights,
    read_checkpoint,
    restore_training_state,
    save_atomic,
    save_training_checkpoint,
    set_rng_state,
)
from utils.files import DiskFullError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
HEADROOM = 3 * 2**29  # 1.5 GiB above what the subprocess uses once torch is imported

# With the address space capped at its size after the imports plus `argv[1]` bytes, loads each file named
# after it (then restores its RNG state when the next argument is 'rng'); prints one line per file: REFUSED
# and the message on a CheckpointError, ACCEPTED when everything was taken.
_CAPPED = r"""
import resource, sys
import torch
torch.set_num_threads(1)
from utils.checkpoints import CheckpointError, read_checkpoint, set_rng_state
import net.presets
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]), size + int(sys.argv[1])))
for path, then in zip(sys.argv[2::2], sys.argv[3::2]):
    try:
        obj = read_checkpoint(path)
        if then == "rng":
            set_rng_state(obj["rng"])
    except CheckpointError as exc:
        print("REFUSED", exc)
    else:
        print("ACCEPTED")
"""


def _capped_loads(*loads: tuple[Path, str]) -> list[str]:
    """Run :data:`_CAPPED` on ``(path, then)`` pairs in one subprocess (importing torch takes seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(x) for path, then in loads for x in (path, then or "-")]
    run = subprocess.run([sys.executable, "-c", _CAPPED, str(HEADROOM), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    out = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(out) == len(loads), f"the capped load failed: {run.stderr[-2000:]}"
    return out


# --------------------------------------------------------------------------- crafting files

def _zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive written by hand, so an entry's payload can be raw deflate data of any declared size:
    each entry is ``(name, payload, uncompressed size, crc32, method)`` (0 stored, 8 deflated)."""
    local, central = bytearray(), bytearray()
    for name, payload, usize, crc, method in entries:
        raw = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload), usize,
                               len(raw), 0, 0, 0, 0, 0, len(local)) + raw
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), usize,
                             len(raw), 0) + raw + payload
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, len(data), zlib.crc32(data), 0


def _torch_zip(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None, extra=()) -> None:
    """A torch.save-style archive holding ``pickled`` as its data.pkl and ``storages`` as data/<key>."""
    entries = [_stored("archive/data.pkl", pickled), _stored("archive/byteorder", b"little"),
               *[_stored(f"archive/data/{k}", v) for k, v in (storages or {}).items()], *extra,
               _stored("archive/version", b"3\n")]
    _zip(path, entries)


class _Storage:
    def __init__(self, key: str, numel: int, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class _View:
    """Pickles as torch pickles a tensor, with whatever size and stride it is given."""

    def __init__(self, storage: _Storage, size: tuple, stride: tuple):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, self.stride, False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    legacy = False  # the pre-1.6 format's storage ids carry view metadata

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel) + ((None,) if self.legacy else ())
        return None


def _pickled(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    pickler = _TorchPickler(buf, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buf.getvalue()


def _legacy_file(path: Path, obj, storages: list[str]) -> None:
    """The pre-1.6 torch.save format: magic number, protocol, system info, the object, storage keys."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    path.write_bytes(head + _pickled(obj, legacy=True) + pickle.dumps(storages, protocol=2))


def _many_imports(count: int = 20_000) -> bytes:
    """A pickle of a list of ``count`` imported names, none memoised."""
    ops = bytearray(b"\x80\x02]q\x00(")
    for i in range(count):
        ops += f"cmod{i % 7}\nName{i}\n".encode()
    return bytes(ops + b"e.")


def _deep_modules(depth: int) -> bytes:
    """A pickle of ``{'BaryIR': module}`` whose modules nest ``depth`` levels deep."""
    ops = bytearray(b"\x80\x02}q\x00U\x06BaryIR")  # {'BaryIR': module0}
    ops += b"ctorch.nn.modules.container\nSequential\nq\x010"  # memoised, then popped
    for _ in range(depth):  # module_i, its state dict, '_modules', {'c': module_i+1 ...
        ops += b"h\x01)\x81}U\x08_modules}U\x01c"
    ops += b"h\x01)\x81}b"  # the innermost module, built with an empty state
    ops += b"ssb" * depth  # close each level: modules['c'] = child, state['_modules'] = ..., BUILD
    return bytes(ops + b"s.")


def _tiny():
    torch.manual_seed(0)
    return build_model("BaryNet", "tiny")


class _TookTooLong(Exception):
    pass


@contextlib.contextmanager
def _within(seconds: float):
    """Raise :class:`_TookTooLong` in the block after ``seconds`` (a hang fails the test instead of the suite)."""
    def stop(signum, frame):
        raise _TookTooLong(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- 1. zip bomb

def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    # 2 GiB of zeros deflated to ~2 MB: 1 MiB blocks flushed independently, so one compressed block repeats.
    block = bytes(2**20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    n_blocks = 2048
    crc = 0
    for _ in range(n_blocks):
        crc = zlib.crc32(block, crc)
    payload = piece * n_blocks + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    path = tmp_path / "bomb.pth"
    _torch_zip(path, _pickled({"x": _View(_Storage("0", n_blocks * 2**18), (n_blocks * 2**18,), (1,))}),
               extra=[("archive/data/0", payload, n_blocks * 2**20, crc, 8)])
    assert path.stat().st_size < 5 * 2**20
    [out] = _capped_loads((path, ""))
    assert out.startswith("REFUSED") and "bomb.pth" in out and "zip bomb" in out, out
    # A legitimate checkpoint (stored, not compressed) passes the same checks.
    save_atomic({"model": _tiny().state_dict()}, tmp_path / "fine.pth")
    assert "model" in read_checkpoint(tmp_path / "fine.pth")


# --------------------------------------------------------------------------- 2. tensors larger than their storage

def test_tensor_views_beyond_their_storage_and_bad_rng_states_are_refused(tmp_path):
    # A 16-byte storage viewed as 3e9 floats: torch would grow the storage to 12 GB while loading.
    over = tmp_path / "overshoot.pth"
    _torch_zip(over, _pickled({"x": _View(_Storage("0", 4), (3_000_000_000,), (1,))}), {"0": bytes(16)})

    # A stride-0 RNG state: 8 stored bytes that tolist() would expand into 2e9 Python ints.
    rng = {"python": {"version": 3, "state": torch.zeros(1, dtype=torch.int64).expand(2_000_000_000),
                      "gauss": None},
           "numpy": {"name": "MT19937", "keys": torch.zeros(624, dtype=torch.int64), "pos": 0, "has_gauss": 0,
                     "cached": 0.0},
           "torch": torch.get_rng_state(), "cuda": []}
    expanded = tmp_path / "expanded_rng.pth"
    torch.save({"format_version": 1, "model": {"w": torch.ones(1)}, "rng": rng}, expanded)
    # The legacy format allocates every declared storage before reading it: 12 GB declared in 300 bytes.
    legacy = tmp_path / "legacy_declares_12GB.pth"
    _legacy_file(legacy, {"x": _View(_Storage("0", 3_000_000_000), (3_000_000_000,), (1,))}, ["0"])
    out, out_rng, out_legacy = _capped_loads((over, ""), (expanded, "rng"), (legacy, ""))
    assert out_legacy.startswith("REFUSED") and "declares 11.2 GiB of tensor storage" in out_legacy, out_legacy
    assert out.startswith("REFUSED") and "overshoot.pth" in out and "addresses element" in out, out
    assert out_rng.startswith("REFUSED") and "expanded_rng.pth" in out_rng and "2,000,000,000" in out_rng, out_rng

    # Small but malformed states are refused with their shapes, before torch or numpy see them.
    good = {"python": {"version": 3, "state": torch.zeros(625, dtype=torch.int64), "gauss": None},
            "numpy": rng["numpy"], "torch": torch.get_rng_state()[:100], "cuda": []}
    with pytest.raises(CheckpointError, match=r"random state of .*torch state must be a 1-D torch.uint8 tensor"):
        set_rng_state(good)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    saved = opt.state_dict()
    saved["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(7, 7), "exp_avg_sq": torch.zeros(2, 3)}}
    with pytest.raises(CheckpointError, match=r"optimizer state of run.pth: 1 saved tensor does not fit "
                                              r".*\(7, 7\) vs parameter \(2, 3\)"):
        restore_training_state({"optimizer": saved}, opt, None, None, source="run.pth")


# --------------------------------------------------------------------------- 3. model configurations

def test_model_config_is_checked_before_any_network_is_built(tmp_path):
    from net.presets import ModelConfigError
    from utils.checkpoints import load_model

    for bad, word in ((dict(dim=2048), "dim must be an integer from 2 to 1024"), (dict(heads=[0, 2, 4, 8]), "heads"),
                      (dict(heads=[1, 2, 5, 8]), "divide"), (dict(colour="red"), "unknown key"),
                      (dict(dim=512, num_blocks=[8, 8, 8, 8]), "parameters")):
        with pytest.raises(ModelConfigError, match=word):
            model_config("paper", **bad)
    sd = _tiny().state_dict()
    path = tmp_path / "heads0.pth"
    torch.save({"model": sd, "model_config": {**model_config("tiny"), "heads": [0, 2, 4, 8]}, "backbone": "BaryNet"},
               path)
    with pytest.raises(CheckpointError, match=r"heads0.pth: its model_config: heads\[0\] = 0"):
        load_model(path)
    # A sane configuration that does not describe the file's weights (paper, 53.5 M, over tiny's 2.6 M) is
    # refused from the weights' sizes, before the paper network is built.
    path = tmp_path / "paper_config_tiny_weights.pth"
    torch.save({"model": sd, "model_config": model_config("paper"), "backbone": "BaryNet"}, path)
    with pytest.raises(CheckpointError, match=r"describes a BaryNet of 53,549,774 weights but the file holds "
                                              r"2,573,617"):
        load_model(path)


# --------------------------------------------------------------------------- 4. GLOBAL opcodes

def test_pickle_importing_too_many_names_is_refused(tmp_path):
    # 20,000 imports (memoising nothing); the inert unpickler made one class per import.
    path = tmp_path / "globals.pth"
    _torch_zip(path, _many_imports())
    with pytest.raises(CheckpointError, match=r"globals.pth: its pickle imports more than 10,000 names"):
        read_checkpoint(path)
    # A reference checkpoint (a whole pickled module) needs far fewer.
    from utils.checkpoints.guard import _DryUnpickler
    ref = tmp_path / "reference.pth"
    torch.save({"epoch": 1, "BaryIR": _tiny()}, ref)
    import zipfile
    with zipfile.ZipFile(ref) as z:
        records = {e.filename.split("/data/", 1)[1]: e.file_size for e in z.infolist() if "/data/" in e.filename}
        unpickler = _DryUnpickler(z.open("reference/data.pkl"), records=records)
        unpickler.load()
    assert unpickler.globals < 100
    assert read_checkpoint(ref)["epoch"] == 1


# --------------------------------------------------------------------------- 5. deep module chains

def test_module_chain_too_deep_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.pth"
    _torch_zip(path, _deep_modules(5000))
    with pytest.raises(CheckpointError, match=r"deep.pth: it nests objects more than 200 levels deep"):
        load_model_weights(_tiny(), path)


def test_a_key_of_a_million_prefixes_is_stripped_in_bounded_time(tmp_path):
    """``module.`` prefixes were cut one at a time, copying the rest of the name each time: a 7 MB key of a
    million prefixes took hours to load (28 MB, still under the pickle's limit, far longer)."""
    from utils.checkpoints import model_state_from
    path = tmp_path / "prefixes.pth"
    torch.save({"module." * 1_000_000 + "output.weight": torch.zeros(1)}, path)
    with _within(60):
        assert list(model_state_from(read_checkpoint(path), str(path))) == ["output.weight"]


def test_a_module_listing_many_non_persistent_buffers_is_read_in_bounded_time(tmp_path):
    """A pickled module's ``_non_persistent_buffers_set`` was looked through as it came, a list: 300,000 buffers
    checked against a list of 300,000 names took minutes (a million each, from a 15 MB file, hours)."""
    module = torch.nn.Linear(2, 2)
    module._buffers = {f"b{i}": None for i in range(300_000)}
    module._non_persistent_buffers_set = ["other"] * 300_000
    path = tmp_path / "buffers.pth"
    torch.save({"epoch": 1, "BaryIR": module}, path)  # the reference's format
    with _within(60), pytest.raises(CheckpointError, match=r"buffers.pth does not fit BaryNet"):
        load_model_weights(_tiny(), path)


def test_a_module_shared_along_exponentially_many_paths_is_refused_in_bounded_time(tmp_path):
    """A pickled network's modules were walked once per path, as ``state_dict()`` does: 40 modules, each naming
    the next twice, are a 4 KB file whose walk visits 2**40 modules (a parameter at the end: memory, too)."""
    module = torch.nn.Module()
    for _ in range(40):
        parent = torch.nn.Module()
        parent.a = parent.b = module
        module = parent
    path = tmp_path / "shared.pth"
    torch.save({"epoch": 1, "BaryIR": module}, path)  # the reference's format
    with _within(60), pytest.raises(CheckpointError, match=r"shared.pth: its modules make a tree of more than 100,000"):
        load_model_weights(_tiny(), path)


# --------------------------------------------------------------------------- 6. non-finite weights

def test_non_finite_weights_are_refused_with_their_names(tmp_path):
    sd = _tiny().state_dict()
    sd["output.weight"][0, 0, 0, 0] = float("nan")
    sd["patch_embed.proj.weight"][0, 0, 0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"diverged.pth: 2 weight tensors hold NaN or Inf \("
                                              r"(output.weight, patch_embed.proj.weight|patch_embed.proj.weight, "
                                              r"output.weight)\)"):
        load_model_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- 7. disk full

def test_disk_full_is_one_clear_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "epoch_001.pth"
    save_atomic({"x": torch.ones(3)}, path)
    real_usage = shutil.disk_usage

    # Not enough free space: refused before anything is written.
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    where = re.escape(str(tmp_path))
    with pytest.raises(DiskFullError, match=rf"disk full: writing epoch_001.pth to {where} needs .*bytes\)"):
        save_atomic({"x": torch.zeros(1000)}, path)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    # The disk fills up during the write (the free space was already taken by someone else).
    real_fdopen = os.fdopen

    class Filling(FileWrapper):
        def write(self, data):
            self.fh.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Filling(real_fdopen(fd, *a, **k)))
    with pytest.raises(DiskFullError, match=rf"disk full: writing epoch_001.pth to {where} needs [\d.]+ KiB"):
        save_atomic({"x": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pth"]


# --------------------------------------------------------------------------- 8. orphaned temporaries

def test_stale_temporaries_of_killed_saves_are_removed_and_nothing_else(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    hour_ago, two_minutes_ago = time.time() - 3600, time.time() - 120
    files = {
        ".epoch_003.pth.k2j8x_0a.tmp": (hour_ago, False),  # old naming, an hour old: an orphan
        f".epoch_004.pth.{finished.pid}.ab12cd34.tmp": (two_minutes_ago, False),  # its writer is gone
        f".latest.{finished.pid}.zz99zz99.tmp": (two_minutes_ago, False),
        f".epoch_005.pth.{os.getpid()}.ab12cd34.tmp": (two_minutes_ago, True),  # being written
        f".epoch_006.pth.{finished.pid}.ab12cd34.tmp": (time.time(), True),  # too fresh to judge
        ".notes.txt.k2j8x_0a.tmp": (hour_ago, True),  # not a checkpoint's temporary
        ".epoch_003.pth.notes": (hour_ago, True),
        "scratch.tmp": (hour_ago, True),
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (mtime, mtime))
    save_training_checkpoint({"epoch": 7, "iteration": 0, "global_step": 70, "model": {}}, tmp_path, keep=0)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, (_, kept) in files.items() if kept} | {"epoch_007.pth", "latest"}


def test_a_temporary_of_a_process_in_use_is_removed_only_once_unchanged_for_15_minutes(tmp_path):
    """A temporary whose pid is running now (its writer, or another process that took the number after the
    writer died, or the writer on another machine sharing the folder is gone) is an orphan once unchanged for
    STALE_TEMP_SECONDS: left for good, each killed save's partial file stayed beside the checkpoints."""
    from utils.checkpoints import STALE_TEMP_SECONDS, remove_stale_temporaries
    now = time.time()
    old = tmp_path / f".epoch_003.pth.{os.getpid()}.ab12cd34.tmp"  # this process's number: alive
    recent = tmp_path / f".epoch_004.pth.{os.getpid()}.ab12cd34.tmp"
    for path, age in ((old, STALE_TEMP_SECONDS + 60), (recent, STALE_TEMP_SECONDS - 60)):
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
    assert remove_stale_temporaries(tmp_path, now=now) == [old]
    assert recent.exists()


def test_a_temporary_of_another_users_process_is_not_removed_as_orphaned(tmp_path, monkeypatch):
    """A writer this user may not signal (os.kill: PermissionError; another user's trainer writing into a shared
    folder) counts as alive: its temporary, two minutes old, was removed as if that process were gone, and the
    writer's rename then failed."""
    from utils import files
    from utils.checkpoints import remove_stale_temporaries

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(files.os, "kill", kill)
    assert files.writer_alive(4242)
    now = time.time()
    path = tmp_path / ".epoch_003.pth.4242.ab12cd34.tmp"
    path.write_bytes(b"partial")
    os.utime(path, (now - 120, now - 120))
    assert remove_stale_temporaries(tmp_path, now=now) == []
    assert path.exists()


# --------------------------------------------------------------------------- 8. malformed, not only large

def test_an_archive_with_two_pickles_of_one_name_is_refused(tmp_path):
    """torch.load reads the last of two archive/data.pkl entries; the size and dry-run checks looked at none
    (a 4 GiB pickle could hide behind a small decoy)."""
    path = tmp_path / "twice.pth"
    _torch_zip(path, _pickled({"epoch": 1}), extra=[_stored("archive/data.pkl", _pickled({"epoch": 2}))])
    with pytest.raises(CheckpointError, match=r"twice.pth: its archive holds two entries of one name"):
        read_checkpoint(path)


def test_tensors_with_attributes_and_malformed_modules_are_refused_not_tracebacks(tmp_path):
    """A saved tensor may carry instance attributes (torch.save keeps them) that shadow its methods:
    untyped_storage = 0 crashed the view check with a TypeError, is_floating_point = ... let NaN weights
    through; a pickled module whose _parameters is not a mapping crashed with an AttributeError."""
    weights = _tiny().state_dict()
    weights["output.weight"][0, 0, 0, 0] = float("nan")
    weights["output.weight"].is_floating_point = torch.Size  # () is falsy: "not a float tensor, skip the check"
    torch.save({"model": weights, "epoch": 1}, tmp_path / "attrs.pth")
    with pytest.raises(CheckpointError, match=r"attrs.pth.*tensor model/output.weight carries attributes "
                                              r"\(is_floating_point\)"):
        load_model_weights(_tiny(), tmp_path / "attrs.pth")
    for bad in ({"w": 5}, [1, 2], "text"):
        module = torch.nn.Linear(2, 2)
        module.__dict__["_parameters"] = bad
        torch.save({"epoch": 1, "BaryIR": module}, tmp_path / "module.pth")  # the reference's format
        with pytest.raises(CheckpointError, match=r"module.pth.*(not a tensor|not a mapping)"):
            load_model_weights(_tiny(), tmp_path / "module.pth")


def test_a_write_refused_to_keep_space_free_says_so(tmp_path, monkeypatch):
    """A 27 KiB image refused on a disk with 76 KiB free said "needs 27.2 KiB ... and 76.0 KiB are free", which
    reads as no reason at all: the 1 MiB a write leaves free beside its own size is said too."""
    import shutil

    from utils.files import replace_file
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=76 * 1024))
    with pytest.raises(DiskFullError, match=r"needs 4.9 KiB \(5,000 bytes\) plus 1.0 MiB left free and 76.0 KiB are "
                                            r"free"):
        replace_file(tmp_path / "a.png", b"x" * 5000)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 9. how a file is written

def test_a_write_is_synced_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    """The new file's bytes reach the disk before it is renamed over the old one, and the folder after: a power cut
    at any point leaves the old file or the whole new one."""
    import stat

    from utils import files
    real_fsync, real_replace, events = os.fsync, os.replace, []

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)
    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.replace_file(tmp_path / "run.log", b"new text")
    monkeypatch.undo()
    assert events == [("fsync", "file", (tmp_path / "run.log").stat().st_ino), ("replace", "run.log"),
                      ("fsync", "folder", tmp_path.stat().st_ino)]


def test_a_replaced_file_keeps_its_permissions_and_a_new_one_gets_the_umasks(tmp_path):
    """A new file gets what open() would give it (0666 less the umask), not the temporary's private 0600; a file
    replaced keeps the permissions its owner gave it."""
    from utils.files import replace_file
    old_mask = os.umask(0o022)
    try:
        new = replace_file(tmp_path / "new.json", b"{}")
        shared = tmp_path / "shared.json"
        shared.write_bytes(b"{}")
        shared.chmod(0o640)
        replace_file(shared, b'{"a": 1}')
    finally:
        os.umask(old_mask)
    assert new.stat().st_mode & 0o777 == 0o644
    assert shared.stat().st_mode & 0o777 == 0o640 and shared.read_bytes() == b'{"a": 1}'


def test_a_temporary_names_its_target_and_writer_and_a_look_alike_is_no_temporary(tmp_path):
    """What atomic_write leaves while it writes parses to its target and its process, so that the next run can
    tell an orphan from a live write; a user's file that only begins like one is neither parsed nor removed."""
    from utils.files import atomic_write, remove_stale_temporaries, temporary_target
    seen = []
    atomic_write(tmp_path / "epoch_001.pth", lambda fh: seen.extend(p.name for p in tmp_path.iterdir()))
    [name] = seen
    assert temporary_target(name) == ("epoch_001.pth", os.getpid())
    look_alike = tmp_path / ".epoch_002.pth.4242.ab12cd34.tmp.bak"
    look_alike.write_bytes(b"the user's copy")
    os.utime(look_alike, (time.time() - 3600, time.time() - 3600))
    assert temporary_target(look_alike.name) is None
    assert remove_stale_temporaries(tmp_path, targets=lambda n: True) == [] and look_alike.exists()


def test_the_temporary_of_a_long_name_keeps_its_extension_and_is_tidied_when_orphaned(tmp_path):
    """A target name over 100 bytes is cut in its temporary's name; the cut kept the first 100 bytes, so a long
    restoration's temporary lost its ``.png`` and the tester's tidying (which takes ``.png`` names only) never
    removed it when a killed tester left it behind."""
    from utils.eval.outputs import tester_writes
    from utils.files import atomic_write, remove_stale_temporaries, temporary_target
    target = tmp_path / ("é" * 90 + ".png")  # 184 bytes: fits the file system, not a temporary's prefix
    seen = []
    atomic_write(target, lambda fh: seen.extend(p.name for p in tmp_path.iterdir()))
    [name] = seen
    parsed, pid = temporary_target(name)
    assert pid == os.getpid() and parsed.endswith(".png") and len(os.fsencode(parsed)) <= 100
    assert target.name.startswith(parsed[:-len(".png")])
    orphan = tmp_path / name
    orphan.write_bytes(b"half an image")
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temporaries(tmp_path, targets=tester_writes) == [orphan] and not orphan.exists()
    assert target.exists()


# --------------------------------------------------------------------------- 10. each check on its own

def test_a_view_one_element_past_its_storage_is_refused():
    """The guard's bound is exact: the last element a view addresses must lie inside its storage."""
    from utils.checkpoints.guard import view_problem

    assert view_problem(4, 0, (4,), (1,)) is None and view_problem(6, 0, (2, 3), (3, 1)) is None
    assert "addresses element 4 of a storage holding 4" in view_problem(4, 1, (4,), (1,))
    assert "addresses element 6 of a storage holding 6" in view_problem(6, 1, (2, 3), (3, 1))


def test_a_view_with_a_negative_offset_size_or_stride_is_refused():
    """A negative offset, size or stride could address memory before its storage's start: each is refused."""
    from utils.checkpoints.guard import view_problem

    for offset, size, stride in ((-1, (2,), (1,)), (0, (-2,), (1,)), (2, (3,), (-1,))):
        assert "is not all non-negative integers" in view_problem(4, offset, size, stride), (offset, size, stride)


def test_a_loaded_tensor_expanded_far_past_its_storage_is_refused():
    """The check of what torch.load returned catches a tensor whose few stored elements are viewed as millions (a
    random state that tolist() would expand), naming where it sits."""
    from utils.checkpoints.guard import check_loaded

    check_loaded({"rng": {"state": torch.zeros(624, dtype=torch.int64)}}, "run.pth")
    with pytest.raises(CheckpointError, match=r"refusing to use checkpoint run.pth: tensor rng/state: shape "
                                              r"\(33554432,\) with strides \(0,\) .*expands 1 stored elements"):
        check_loaded({"rng": {"state": torch.zeros(1, dtype=torch.int64).expand(2**25)}}, "run.pth")


def test_the_unpacked_size_cap_is_exact(tmp_path):
    """``max_unpacked_bytes`` caps an archive's uncompressed size at that many bytes, not some multiple."""
    import zipfile

    path = tmp_path / "small.pth"
    torch.save({"x": torch.zeros(1000)}, path)
    with zipfile.ZipFile(path) as archive:
        total = sum(e.file_size for e in archive.infolist())
    assert torch.equal(read_checkpoint(path, max_unpacked_bytes=total)["x"], torch.zeros(1000))
    with pytest.raises(CheckpointError, match="small.pth: its archive unpacks to .*above the limit"):
        read_checkpoint(path, max_unpacked_bytes=total - 1)


class _SubclassView(_View):
    """Pickles as torch pickles a tensor subclass (rebuilt by _rebuild_from_type_v2) around a :class:`_View`."""

    def __reduce__(self):
        rebuild, args = super().__reduce__()
        return torch._tensor._rebuild_from_type_v2, (rebuild, torch.Tensor, args, {})


def test_the_check_before_loading_refuses_each_crafted_file_by_itself(tmp_path):
    """The dry run refuses each of these before torch.load reads anything, whatever later checks would say: a
    storage declaring more bytes than the archive holds, too many imports, nesting too deep, and a tensor subclass
    viewing past its storage."""
    from utils.checkpoints.guard import inspect_checkpoint
    crafted = {
        "declares.pth": (_pickled({"x": _View(_Storage("0", 1000), (1000,), (1,))}), {"0": bytes(16)},
                         r"its storage 0 declares 3.9 KiB but the archive holds 16 bytes"),
        "imports.pth": (_many_imports(), {}, r"its pickle imports more than 10,000 names"),
        "deep.pth": (_deep_modules(300), {}, r"it nests objects more than 200 levels deep"),
        "subclass.pth": (_pickled({"x": _SubclassView(_Storage("0", 4), (100,), (1,))}), {"0": bytes(16)},
                         r"a tensor's shape \(100,\) with strides \(1,\) at offset 0 addresses element 99"),
    }
    for name, (pickled, storages, why) in crafted.items():
        _torch_zip(tmp_path / name, pickled, storages)
        with pytest.raises(CheckpointError, match=rf"refusing to read checkpoint .*{name}: {why}"):
            inspect_checkpoint(tmp_path / name)


def test_a_legacy_file_ending_like_a_zip_archive_is_checked_as_the_legacy_file_torch_reads(tmp_path):
    """The check took a file for a zip archive by zipfile's test (an end record near the end) and torch.load by
    its first bytes: a legacy file declaring 3 GB of storage, an empty archive appended, was checked as an
    archive without a pickle and read as a legacy file, unchecked."""
    from utils.checkpoints.guard import inspect_checkpoint
    path = tmp_path / "legacy_ending_as_zip.pt"
    _legacy_file(path, {"x": _View(_Storage("0", 750_000_000), (750_000_000,), (1,))}, [])
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    path.write_bytes(path.read_bytes() + empty.getvalue())
    with pytest.raises(CheckpointError, match=r"legacy_ending_as_zip.pt: it declares 2.8 GiB of tensor storage"):
        inspect_checkpoint(path)


def test_a_set_filled_by_additems_does_not_end_the_check_before_the_storages(tmp_path):
    """The dry run's stand-in for ``builtins.set()`` had no ``add``: ADDITEMS on it ended the dry run, which passed
    the file, and a legacy file declaring 3 GB of storage after it was read (its storage allocated) unchecked."""
    from utils.checkpoints.guard import inspect_checkpoint
    pickled = _pickled({"x": _View(_Storage("0", 750_000_000), (750_000_000,), (1,))}, legacy=True)
    start = b"\x80\x02}q\x00"  # an empty dict, memoised; its items follow
    assert pickled.startswith(start)
    # the dict's first item: 's': set() filled by ADDITEMS (protocol 4's opcode)
    pickled = start + b"X\x01\x00\x00\x00scbuiltins\nset\n)R(K\x01\x90s" + pickled[len(start):]
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    path = tmp_path / "additems.pt"
    path.write_bytes(head + pickled + pickle.dumps(["0"], protocol=2))
    with pytest.raises(CheckpointError, match=r"additems.pt: it declares 2.8 GiB of tensor storage"):
        inspect_checkpoint(path)


def test_an_archive_with_a_second_pickle_under_another_folder_is_refused(tmp_path):
    """torch.load reads one of two data.pkl entries in two folders of the archive; the checks would look at the
    other (a huge pickle could hide behind a small decoy)."""
    path = tmp_path / "decoy.pth"
    _zip(path, [_stored("a/data.pkl", _pickled({"epoch": 1})), _stored("a/version", b"3\n"),
                _stored("b/data.pkl", _pickled({"epoch": 2})), _stored("b/version", b"3\n")])
    with pytest.raises(CheckpointError, match=r"decoy.pth: its archive holds 2 pickles \(torch.save writes one\)"):
        read_checkpoint(path)


def test_the_entry_count_and_pickle_size_limits_are_exact(tmp_path, monkeypatch):
    """An archive of as many entries as the limit, or a pickle of as many bytes, is read; one more is refused."""
    import zipfile

    from utils.checkpoints import guard
    path = tmp_path / "small.pth"
    torch.save({"x": torch.zeros(3)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = len(archive.infolist())
        pickle_bytes = archive.getinfo("small/data.pkl").file_size
    monkeypatch.setattr(guard, "MAX_ARCHIVE_ENTRIES", entries)
    monkeypatch.setattr(guard, "MAX_PICKLE_BYTES", pickle_bytes)
    assert torch.equal(read_checkpoint(path)["x"], torch.zeros(3))
    monkeypatch.setattr(guard, "MAX_ARCHIVE_ENTRIES", entries - 1)
    with pytest.raises(CheckpointError, match=rf"small.pth: its archive has {entries} entries \(at most {entries - 1}"):
        read_checkpoint(path)
    monkeypatch.setattr(guard, "MAX_ARCHIVE_ENTRIES", entries)
    monkeypatch.setattr(guard, "MAX_PICKLE_BYTES", pickle_bytes - 1)
    with pytest.raises(CheckpointError, match=r"small.pth: its pickle is .* \(at most "):
        read_checkpoint(path)


def test_a_pickle_building_more_objects_than_the_limit_is_refused(tmp_path, monkeypatch):
    """Every object a pickle builds by a call counts: past MAX_CALLS the file is refused before it is loaded."""
    import fractions

    from utils.checkpoints import guard
    path = tmp_path / "calls.pth"
    _torch_zip(path, _pickled([fractions.Fraction(i, 7) for i in range(1, 61)]))
    guard.inspect_checkpoint(path)
    monkeypatch.setattr(guard, "MAX_CALLS", 50)
    with pytest.raises(CheckpointError, match=r"calls.pth: its pickle builds more than 50 objects by calls"):
        guard.inspect_checkpoint(path)


def test_the_loader_refuses_a_pickle_importing_too_many_names_by_itself(tmp_path):
    """The loader of reference checkpoints counts imports too (each unknown name becomes a class), not relying on
    the check before it."""
    from utils.checkpoints.unpickling import _load
    path = tmp_path / "imports.pth"
    _torch_zip(path, _many_imports())
    with pytest.raises(CheckpointError, match=r"imports.pth: its pickle imports more than 10,000 names"):
        _load(path)


@pytest.mark.parametrize("module, name", [("builtins", "getattr"), ("__builtin__", "eval"), ("builtins", "exec"),
                                          ("builtins", "__import__"), ("os", "system"), ("subprocess", "Popen"),
                                          ("torch", "save"), ("torch", "load"), ("torch", "from_file"),
                                          ("torch.serialization", "load")])
def test_a_name_outside_the_allow_list_is_an_inert_placeholder_that_refuses_calls(module, name):
    """Only tensor-rebuilding and container names resolve to real objects; any other name a pickle imports
    (a builtin, a module's function, a torch function that reads or writes files) is a placeholder that refuses
    to be called."""
    from utils.checkpoints.unpickling import _InertMeta, _InertUnpickler
    unpickler = _InertUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("torch", "float32") is torch.float32
    found = unpickler.find_class(module, name)
    assert isinstance(found, _InertMeta)
    with pytest.raises(pickle.UnpicklingError, match=rf"asks to call .*{name}\(\.\.\.\)"):
        found("touch /tmp/x")


def test_a_torchscript_archive_is_refused_in_one_line_without_advice_to_drop_weights_only(tmp_path):
    """torch.load hands a TorchScript archive to torch.jit.load, past any unpickler of ours; refused, it printed
    torch's two-line warning and an error quoting torch's advice to re-run with weights_only=False."""
    import warnings
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit's own deprecation notes, of the test's making
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would land above the one error line
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"refusing to load {path}: it is a TorchScript archive (torch.jit.save)")
    assert "weights_only" not in message and "\n" not in message


def test_an_error_listing_a_huge_key_stays_a_readable_line(tmp_path):
    """A key of 30 MB (a crafted file) made the mismatch error one line of 31 MB."""
    from utils.errors import ITEM_LIMIT, listing
    line = listing(["k" * 5_000_000, "short"], lead="")
    assert len(line) < 2 * ITEM_LIMIT and line.endswith("... (5,000,000 characters); short")
    assert listing(iter(range(12)), limit=2) == " 0; 1; ... and 10 more"  # any iterable, counted whole
