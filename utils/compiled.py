"""``torch.compile`` for the trainers' fast path (``--compile``) and for ``restore()`` (the tester's ``--compile``).

Training compiles the iteration's loss computations (``utils.train.iteration.IterationLosses``):

- step 1's loss: the map's forward (``BaryNet`` or a baseline, DDP-wrapped or not) and the map loss,
  whose backward AOTAutograd compiles with it;
- steps 2-3's losses: the recomputed WB latents (encoder and barycenter path, no graph), the
  potentials loss and the congruence loss, each its own graph (each traces as one graph, no breaks);
- not the optimizers: on CUDA their default ``foreach`` kernels already update all tensors of a
  kind in a few launches, and the potentials' optimizer sees a different set of gradients whenever
  a domain is absent from a batch, which would recompile a compiled step for every pattern.

Under ``reduce-overhead`` the compiled graphs replay as CUDA graphs (static shapes: the batch and the
patch are fixed; an epoch's shorter last batch compiles once more). The losses of a compiled
iteration are read back to the host once, after its three updates (``utils.train.iteration.LossChecks``),
instead of before each update.

Inference compiles the network's forward (``utils.eval.inference.prepare_for_inference``): the first
size compiles static shapes, the second compiles again with sizes dynamo treats as dynamic, and that
graph then serves further sizes, so it pays off for many inputs: tiles, or a folder of images. One
exception, on the CPU in fp32 at batch 1: ATen picks oneDNN or its own convolution by the input's element
count (more than 20,480, ``ConvParams::use_mkldnn``), and each such test is a guard of the dynamic graph,
so a size on the other side of one compiles once more. For the paper network every padded image larger
than about 83x83 lies on one side of all of them (benchmark images compile twice in all); small images,
and the tiny preset's up to about 143x143, cross them (a compile per threshold crossed, at most).

Compiling takes minutes the first time; torch keeps the result in its on-disk caches (FX graph
and AOTAutograd caches, under :func:`compile_cache_dir`), so a second run with the same
configuration, torch version and device starts much faster. Not so for inference on the CPU
(:func:`inference_compile_note`): there the forward's weights are frozen and prepacked for oneDNN,
and inductor caches no graph holding prepacked weights, so each run compiles it again, reusing only
its C++ kernels.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from typing import Callable

import torch

from utils.errors import UserError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
BACKENDS = ("inductor", "aot_eager", "eager")  # eager/aot_eager: tracing only (tests, debugging)
# Not among them yet: torch's "cudagraphs" backend, which replays the traced forward's own ATen kernels (no inductor
# code, no fusion) as CUDA graphs, removing the launches for the cost of a trace instead of a compile. restore() takes
# it (prepare_for_inference's backend), for a GPU row of bench/bench_inference.py (--cudagraphs) to measure first; on
# the CPU it traces and runs the forward eagerly.


class CompileError(UserError, ValueError):
    """``--compile`` cannot run as asked here; the message says what to change."""


def check_compile(mode: str, device: torch.device, backend: str = "inductor") -> None:
    """Raise :class:`CompileError` with the fix when ``mode`` cannot run on ``device``.

    ``reduce-overhead`` needs CUDA (CUDA graphs); the inductor backend needs Triton on a GPU
    and a C++ compiler on the CPU.
    """
    if mode not in COMPILE_MODES:
        raise CompileError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if backend not in BACKENDS:
        raise CompileError(f"--compile-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mode == "off" or backend != "inductor":
        return
    if mode == "reduce-overhead" and device.type != "cuda":
        raise CompileError("--compile reduce-overhead replays CUDA graphs and needs --device cuda; on the CPU use "
                           "--compile default (or leave --compile off: on the CPU it was not faster)")
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            raise CompileError("--compile on CUDA needs Triton, which this torch install lacks: pip install triton "
                               "(the version your torch names), or leave --compile off")
    elif shutil.which("c++") is None and shutil.which("g++") is None:
        raise CompileError("--compile on the CPU needs a C++ compiler (inductor builds its kernels with it): "
                           "install g++ (apt install g++), or leave --compile off")


def compile_fn(fn: Callable, mode: str, backend: str = "inductor", dynamic: bool | None = False) -> Callable:
    """``fn`` compiled for ``mode`` (``"off"``: ``fn`` itself); static shapes unless ``dynamic`` is None
    (dynamo's default: static first, dynamic once a second shape is seen)."""
    if mode == "off":
        return fn
    _import_cpp_extension_quietly()
    return torch.compile(fn, mode=None if mode == "default" else mode, backend=backend, dynamic=dynamic)


def _import_cpp_extension_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor does, to build CPU kernels) with its logger at ERROR: on a
    machine without a CUDA runtime its import logs "No CUDA runtime is found, using CUDA_HOME=...", a line that
    says nothing about a CPU compile and landed among the tester's output."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)


_DDP_RECORD_FUNCTION_NOTE = "Profiler record function %s will be ignored"  # dynamo's words (its ctx_manager)


class _WithoutDDPRecordFunctionNote(logging.Filter):
    """Drops dynamo's one note that it leaves a ``record_function`` out of a compiled graph."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _DDP_RECORD_FUNCTION_NOTE


def quiet_ddp_record_function_note() -> None:
    """Leave out dynamo's "Profiler record function <class 'torch.autograd.profiler.record_function'> will be
    ignored", logged once per process (so once per rank under torchrun) when a compiled function calls a
    ``DistributedDataParallel`` model. Its source is torch's own ``DistributedDataParallel.forward``, which opens
    ``record_function("DistributedDataParallel.forward")``: dynamo traces through it and leaves the profiler range
    out of the graph, which changes nothing the run computes (only a profiler's trace lacks that one label). The
    source is not ours to change, and capturing the range instead (dynamo's ``capture_profiler_record_function``)
    is a process-wide setting that puts profiler operations into the compiled graphs; so this exact message is
    filtered, on the logger that writes it, and nothing else of dynamo's. Idempotent."""
    log = logging.getLogger("torch._dynamo.variables.ctx_manager")
    if not any(isinstance(f, _WithoutDDPRecordFunctionNote) for f in log.filters):
        log.addFilter(_WithoutDDPRecordFunctionNote())


def frozen_weights(mode: str, backend: str = "inductor"):
    """Context for the calls of an inference-only compiled forward: inductor's freezing (weights as constants,
    pre-packed for oneDNN on the CPU) while it compiles; a no-op for ``off`` and the tracing backends.

    Measured on the AVX2 CPU (BaryNet paper, 256x256, fp32): the frozen compiled forward 4.56 s against
    7.40 s without freezing and 5.5-6.2 s for the eager fast path. Passing ``options={"freezing": True}``
    to ``torch.compile`` instead did not freeze here (7.40 s); the config patch does. Weights changed after
    the first call are not seen by the compiled code.
    """
    if mode == "off" or backend != "inductor":
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


def inference_compile_note(device: torch.device) -> str:
    """What compiling the inference forward costs, for the line that says it starts.

    On the CPU inductor bypasses its FX graph cache for a frozen graph ("mkldnn tensors unpickleable": the
    prepacked oneDNN weights), and AOTAutograd's cache for any frozen one, so every run compiles again. Measured
    on the AVX-512 BF16 EPYC, 2 threads: the tiny preset's 64x64 forward compiled in 65.5 s, and in 44.7 s in a
    second run with the same cache (its C++ kernels reused). Turning prepacking off
    (``TORCHINDUCTOR_CPP_WEIGHT_PREPACK=0``) made the graph cacheable (17.8 s the second time) but the paper
    network's 256x256 forward ran at 7.16 s against 3.66 s prepacked, slower than eager: not worth it. On a GPU
    the weights are not prepacked and the FX graph cache takes a frozen graph (torch's code; not yet timed here).
    """
    if device.type == "cpu":
        return (f"minutes, again in every run: on the CPU inductor does not cache a forward whose weights it froze "
                f"and prepacked for oneDNN; it reuses only its C++ kernels, from {compile_cache_dir()}")
    return f"minutes; cached under {compile_cache_dir()} for later runs"


def replays_cuda_graphs(mode: str, backend: str = "inductor") -> bool:
    """Whether a function compiled with ``mode`` and ``backend`` replays CUDA graphs on a GPU (CUDA-graph trees,
    whose outputs the next replay overwrites): ``reduce-overhead``, or the ``cudagraphs`` backend in any mode."""
    return mode != "off" and (mode == "reduce-overhead" or backend == "cudagraphs")


def begin_iteration(mode: str, backend: str = "inductor") -> None:
    """Tell the CUDA-graph trees a new iteration (or forward) starts: the last one's outputs may be reused."""
    if replays_cuda_graphs(mode, backend):
        torch.compiler.cudagraph_mark_step_begin()


def compile_cache_dir() -> str:
    """Where inductor keeps compiled kernels between runs (``TORCHINDUCTOR_CACHE_DIR`` moves it)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return cache_dir()
    except (ImportError, AttributeError):  # a torch that keeps it elsewhere
        return "torch's inductor cache folder"
