"""The process's runtime, set up once by each command-line entry point: the CPU allocator, which
GPUs are visible (``--gpus``) and which device runs (``--device``, the reference's ``--cuda``)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch

from utils.errors import StopSignal, UsageError
from utils.streams import leave_the_hung_up_terminal


class DeviceError(UsageError, ValueError):
    """``--device``/``--cuda``/``--gpus`` ask for a device this machine does not have; exit status 2."""


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse; returns whether it applied.

    A training iteration or a full-size forward allocates and frees gigabytes of activations.
    With glibc's defaults every large block is a fresh mmap that the kernel zero-fills page by
    page on first touch, a large share of a CPU iteration (``BENCHMARKS.md`` has the numbers).
    With the mmap and trim thresholds raised, the heap keeps those pages and reuses them; the
    process's RSS stays at its peak. Process-wide, so command-line entry points apply it
    (``trainer_bary.py``, ``tester_bary.py``, ``make demo``), never library functions.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


@contextlib.contextmanager
def lean_shutdown() -> Iterator[None]:
    """Around an entry point's ``sys.exit(main(...))``: however the block ends (its status, an error, ``--help``),
    the garbage there is then is collected as always, and every object still alive is frozen (``gc.freeze``)
    before the interpreter shuts down. Python's shutdown takes the modules down with full garbage collections
    over every object they hold (torch and its compiler stack: millions), which took about a second after the run
    had ended; frozen, they are left to the process's exit. atexit handlers run as before, and an object freed by its
    reference count is freed as before; one left in a reference cycle is not, so a file still open in a cycle at
    the exit would lose its unflushed writes: the entry points write every file in a ``with`` block, closed before
    this. For entry points only: a process that went on would never collect them."""
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()


def under_torchrun() -> bool:
    """True in a process torchrun started as one of several ranks."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


# What CUDA_VISIBLE_DEVICES understands: indices or GPU/MIG UUIDs, separated by commas.
_ONE_GPU = r"(\d+|GPU-[0-9A-Fa-f-]+|MIG-[\w/-]+)"
_GPU_LIST = re.compile(rf"\s*{_ONE_GPU}(\s*,\s*{_ONE_GPU})*\s*")


def apply_gpus_flag(gpus: str | None) -> str | None:
    """The reference's ``--gpus 0,1``: make only those GPUs visible (before CUDA starts).

    Under torchrun it is ignored, as the reference DDP trainer does (every rank would see the
    same list and take GPU LOCAL_RANK of it); returns the warning to show then, else None.
    """
    if not gpus:
        return None
    if not _GPU_LIST.fullmatch(str(gpus)):  # CUDA would see no GPU at all, and auto would train on the CPU
        raise DeviceError(f"--gpus {gpus!r}: give GPU indices separated by commas, e.g. --gpus 0 or --gpus 0,1 "
                          f"(or GPU UUIDs, as CUDA_VISIBLE_DEVICES takes them)")
    if under_torchrun():
        return (f"--gpus {gpus} is ignored under torchrun (each rank uses the GPU of its LOCAL_RANK); "
                f"to choose GPUs, run CUDA_VISIBLE_DEVICES={gpus} torchrun ...")
    if torch.cuda.is_initialized():
        return f"--gpus {gpus} came after CUDA started and is ignored; set CUDA_VISIBLE_DEVICES={gpus} instead"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus)
    return None


def gpus_on_cpu_note(gpus: str | None, device: str) -> str | None:
    """The warning for ``--gpus`` given with ``--device cpu``: the GPUs it makes visible are never used. None
    otherwise."""
    if not gpus or device != "cpu":
        return None
    return f"--gpus {gpus} has no effect: --device cpu runs on the CPU (drop --gpus, or pass --device cuda)"


def use_deterministic_kernels() -> None:
    """``--deterministic``: kernels chosen for reproducibility, for the whole process (call before CUDA starts).

    cuBLAS gets the fixed workspace its deterministic mode needs (``CUBLAS_WORKSPACE_CONFIG``, unless the user
    set one), cuDNN neither autotunes nor picks non-deterministic algorithms, and torch's deterministic
    implementations are used where they exist; an op that has none warns (once per place) instead of failing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def kernel_setup() -> dict[str, object]:
    """What picks the CPU's floating-point kernels besides the machine: torch's version and its intra-op thread
    count (``torch.get_num_threads()``: ``OMP_NUM_THREADS``, else the cores torch sees). Another value of either
    splits the reductions otherwise, so a CPU run's numbers change in the last bits; a checkpoint records it
    (:func:`utils.train.start.run_meta`), and a resume under another says so."""
    return {"torch": str(torch.__version__), "torch_threads": torch.get_num_threads()}


def kernel_setup_changes(saved: object, device: torch.device) -> list[str]:
    """How this process's :func:`kernel_setup` differs from ``saved`` (a checkpoint's), as ``name: old -> new``
    phrases; empty when they match or nothing was recorded. The thread count counts on the CPU only: on a GPU
    the CPU's threads compute none of the training."""
    if not isinstance(saved, dict):
        return []
    now = kernel_setup()
    keys = ("torch", "torch_threads") if device.type == "cpu" else ("torch",)
    names = {"torch": "torch", "torch_threads": "torch threads"}
    return [f"{names[k]} {saved[k]} there, {now[k]} now" for k in keys if k in saved and saved[k] != now[k]]


def busy_cores(threads: int, load: float, cores: int) -> str | None:
    """Why this process may run many times slower than it should: torch runs ``threads`` threads on ``cores`` cores
    that other processes keep busy (``load``: the 1-minute load average, read before the work starts), else None.
    There each of torch's threads waits for the others at every operation: evaluating one tiny Restormer run at demo
    scale 0.25 took 23 to 30 s with 2 threads and 2 to 3 s with 1, back to back on this project's 2-core CPU at a
    load average of 6 to 9. The caller adds its own way to fewer threads."""
    if threads <= 1 or load < cores:
        return None
    return (f"this machine's {cores} cores are busy (load average {load:.1f}) and torch runs {threads} threads, "
            f"which then wait on each other")


def load_average() -> float:
    """The 1-minute load average; 0.0 where the system keeps none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


REPO = Path(__file__).resolve().parents[1]


def source_commit() -> str:
    """The project's git commit (short), marked when the checkout has uncommitted changes to tracked files; empty
    outside a git checkout (or without git)."""
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                     capture_output=True, text=True, timeout=10).stdout.strip():
            commit += " (with uncommitted changes)"
    return commit


def provenance() -> dict[str, object]:
    """What a record of results keeps, beside :func:`kernel_setup`, so that a user can run them again: the command
    as typed (quoted for a shell), the commit and Python's version."""
    return {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "commit": source_commit(),
            "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``'s "model name", e.g. "AMD EPYC 9R14 96-Core
    Processor"); elsewhere what :mod:`platform` knows (``x86_64`` at worst)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity (``taskset``, a container's cpuset) where the system says
    it, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def machine_info(device: torch.device | str | None = None) -> dict[str, object]:
    """What ran a measurement, for a benchmark's table and the study's ``study.json`` (which adds
    :func:`provenance`): :func:`kernel_setup`, the CPU's model, the cores the system has, the GPU's name when
    ``device`` is a CUDA one (else None: a GPU the run did not use is no part of its numbers), the platform."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {**kernel_setup(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform()}


def machine_line(info: dict[str, object]) -> str:
    """:func:`machine_info` in one line, the one every benchmark prints above its table: "machine: AMD EPYC 9R14,
    2 cores, 2 torch threads, torch 2.5.1" (", GPU NVIDIA H200" after the threads when a GPU ran)."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"machine: {info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads{gpu}, "
            f"torch {info['torch']}")


DEVICES = ("auto", "cpu", "cuda")  # the --device choices of every command (a GPU by index: --gpus)
DEVICE_HELP = "auto: CUDA when a GPU is visible, else the CPU"  # their --device help, alike


def pick_device(flag: str = "auto", cuda: bool = False, local_rank: int = 0,
                log: Callable[[str], None] | None = None, gpus_flag: bool = False) -> torch.device:
    """``--device auto|cpu|cuda|cuda:N`` (plus the reference's ``--cuda``) -> a device.

    ``auto`` takes CUDA when a GPU is visible (and says which when ``log`` is given); a CUDA
    device without an index is GPU ``local_rank`` of the visible ones (torchrun's rank on its node).
    ``gpus_flag``: the command has the reference's ``--gpus`` (the trainers and the tester), so the
    error for a missing GPU may name it; other commands name only the flag they were given.
    """
    if flag not in DEVICES and not flag.startswith("cuda:"):
        raise DeviceError(f"--device must be auto, cpu or cuda, got {flag!r}")
    if cuda:
        if flag == "cpu":
            raise DeviceError("--cuda asks for the GPU but --device cpu for the CPU; pass one of them")
        flag = "cuda" if flag == "auto" else flag
    use_cuda = flag.startswith("cuda") or (flag == "auto" and torch.cuda.is_available())
    if flag == "auto" and log is not None:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")  # --gpus 5 on a machine with 2 GPUs hides both
        why = f"no CUDA GPU visible with CUDA_VISIBLE_DEVICES={hidden}" if hidden is not None else "no CUDA GPU visible"
        log(f"=> --device auto: using {'CUDA' if use_cuda else f'the CPU ({why})'}")
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        asked = "--cuda" if cuda else f"--device {flag}"
        check = "--gpus / CUDA_VISIBLE_DEVICES" if gpus_flag else "CUDA_VISIBLE_DEVICES"
        raise DeviceError(f"{asked} asks for a CUDA GPU, but none is visible (check {check}, or use --device cpu)")
    count = torch.cuda.device_count()
    try:
        index = int(flag.split(":")[1]) if ":" in flag else local_rank % max(1, count)
    except ValueError:
        raise DeviceError(f"--device {flag}: the GPU index must be a number, e.g. --device cuda:0") from None
    if not 0 <= index < count:
        raise DeviceError(f"--device {flag}: {count} CUDA device{'' if count == 1 else 's'} visible, numbered "
                          f"from cuda:0")
    try:
        torch.cuda.set_device(index)
    except RuntimeError as exc:  # busy (exclusive-process mode, held by another process), or a driver problem
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceError(f"--device {flag}: CUDA GPU {index} cannot be used ({detail}); wait for the process "
                          f"holding it (nvidia-smi lists it), pick another GPU, or use --device cpu") from exc
    return torch.device("cuda", index)


def to_channels_last(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """Move ``model`` to ``device`` (when given) with its 4-D weights in ``channels_last``, in place; returns it.

    ``Module.to(memory_format=...)`` refuses a model with parameters of other ranks (PromptIR's 5-D
    prompts); those keep their layout here. Values are unchanged, only their memory layout.
    """
    if device is not None:
        model.to(device)
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def stop_signals_as_interrupt() -> None:
    """SIGTERM (``kill``, ``timeout``, a job scheduler) and SIGHUP (the terminal closed: an ssh session that
    dropped) stop the process as Ctrl-C does: they raise :class:`utils.errors.StopSignal`, a ``KeyboardInterrupt``,
    so what handles Ctrl-C (the tester's partial results, the app's clean exit) handles them too, and the closing
    line names the signal ("stopped by SIGTERM", status 143). After a hang-up, output that went to the terminal
    goes to /dev/null first (every write to it would fail). A signal the process was started to ignore stays
    ignored (``nohup``'s SIGHUP), and a repeat of either asks nothing more. For entry points only: the handlers
    are process-wide. The trainers install their own (:class:`utils.train.signals.StopRequest`)."""
    hangup = getattr(signal, "SIGHUP", None)  # POSIX
    asked = []

    def interrupt(signum, frame):
        if signum == hangup:
            leave_the_hung_up_terminal()
        if not asked:  # once: a scheduler that signals every process of a job may reach this one twice, and the
            asked.append(signum)  # second would cut short the results being written (a second Ctrl-C still does)
            raise StopSignal(signum)
    for s in (signal.SIGTERM, hangup):
        if s is not None and signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, interrupt)
