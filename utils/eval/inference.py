"""The one entry point for running a trained network on images: :func:`restore`.

The fast path computes the same function as training-time eager code:

- LayerNorm through ``F.layer_norm`` (fused, one pass) instead of hand-written mean/var;
- weights and activations in ``channels_last`` (depthwise and 1x1 convolutions run
  much faster in that layout on CPUs with oneDNN, and on tensor cores);
- ``torch.inference_mode`` (no autograd bookkeeping);
- optionally bf16 (CPU with AMX, or GPU) or fp16 (GPU) autocast;
- optionally ``torch.compile`` (``compile_mode``, :mod:`utils.compiled`).

The tester, the demo and the benchmarks all call :func:`restore`. :func:`restore_tiled`
runs it tile by tile, so the network's memory is bounded by the tile size, not the image's.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.blocks import check_input_size, set_layernorm_impl
from utils.compiled import begin_iteration, compile_fn, frozen_weights, replays_cuda_graphs
from utils.runtime import to_channels_last

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_for_inference(model: nn.Module, compile_mode: str = "off", backend: str = "inductor") -> nn.Module:
    """Put ``model`` on the fast path in place (fused LayerNorm, channels_last weights); returns it.

    Idempotent; parameter values are unchanged (only their memory layout). Eval mode is set by
    :func:`restore` for the call only, so a model that is training stays in training mode.
    ``compile_mode`` (:data:`utils.compiled.COMPILE_MODES`) also keeps a ``torch.compile``'d forward for
    :func:`restore` calls with that mode (built once per mode, with frozen weights: for trained models,
    as the tester and the app run them; ``backend``: eager/aot_eager for tests, ``"cudagraphs"`` for the GPU
    benchmark's row of CUDA graphs without inductor, see :data:`utils.compiled.BACKENDS`).
    """
    if not getattr(model, "_fast_inference_ready", False):
        set_layernorm_impl(model, "fused")
        to_channels_last(model)
        model._fast_inference_ready = True
    if compile_mode != "off":
        forwards = model.__dict__.setdefault("_compiled_forwards", {})
        if compile_mode not in forwards:
            forwards[compile_mode] = CompiledForward(compile_fn(model.forward, compile_mode, backend, dynamic=None),
                                                     backend)
    return model


@dataclass
class CompiledForward:
    """A model's ``torch.compile``'d forward for one mode (:func:`prepare_for_inference`); ``backend``:
    :func:`utils.compiled.frozen_weights` needs it at each call; ``compiles``: how many of its calls compiled
    (:func:`compile_count`)."""
    forward: Callable
    backend: str
    compiles: int = 0


def compile_count(model: nn.Module, compile_mode: str) -> int:
    """How many :func:`restore` calls with ``compile_mode`` have compiled ``model``'s forward so far (0 for
    ``"off"`` and before the first call). Read before and after an image, it tells whether that image's forward
    compiled: the first call does, and so does a later one that dynamo recompiles for (a new input size, a tiled
    image's other batch of tiles), which takes seconds to minutes against a fraction of a second."""
    if compile_mode == "off":
        return 0
    compiled = model.__dict__.get("_compiled_forwards", {}).get(compile_mode)
    return compiled.compiles if compiled is not None else 0


@contextlib.contextmanager
def _counting_compiles(compiled: CompiledForward):
    """Count the call run inside in ``compiled.compiles`` when dynamo started compiling a frame in this thread
    meanwhile: told by dynamo's compile-start callback (``torch._dynamo.callback_handler``, trigger ``DYNAMO``), not
    guessed from the input's shape, so a recompile for any reason counts and a size compiled before does not. A torch
    without that callback (a private API; the GPU machines' builds may differ from requirements.txt's) counts the
    first call only, as the tester did before it."""
    import torch._dynamo
    try:
        from torch._dynamo.callback import CallbackTrigger
        handler = torch._dynamo.callback_handler
        register, remove = handler.register_start_callback, handler.remove_start_callback
    except (ImportError, AttributeError):
        first = compiled.compiles == 0
        yield
        compiled.compiles += first
        return

    thread, started = threading.get_ident(), []

    def on_start(args) -> None:
        if args.callback_trigger == CallbackTrigger.DYNAMO and threading.get_ident() == thread:
            started.append(args.compile_id)

    register(on_start)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a torch._dynamo.reset() meanwhile has cleared it already
            remove(on_start)
        if started:
            compiled.compiles += 1


def check_precision(device: torch.device | str, precision: str) -> None:
    """``ValueError`` naming the fix unless ``precision`` is one of :data:`PRECISIONS` that ``device`` runs:
    fp16 (with its gradient scaler) needs a GPU. The trainers and the tester call it before anything is built."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16 "
                         "(fast on CPUs with AVX-512 BF16/AMX) or fp32")


def slow_precision_note(device: torch.device | str, precision: str) -> str | None:
    """What to tell the user when ``precision`` is bf16 on a CPU without bf16 arithmetic (no AVX-512 BF16,
    no AMX): oneDNN emulates it there, many times slower than fp32. None otherwise."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return (f"--precision bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, without AVX-512 BF16 or "
            f"AMX) is emulated and many times slower than fp32; pass --precision fp32 unless memory is the limit")


def autocast_context(device: torch.device | str, precision: str):
    """Autocast for ``precision`` on ``device`` (a no-op for fp32; :func:`check_precision` first)."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST_DTYPE[precision])


def _output_image(out) -> torch.Tensor:
    """The restored batch ``(B, 3, H, W)`` of a forward: BaryNet returns a BaryOutput, Restormer the tensor."""
    return out[0] if isinstance(out, tuple) else out


def restore(model: nn.Module, x: torch.Tensor, precision: str = "fp32", pad: bool = False,
            multiple: int = 8, compile_mode: str = "off") -> torch.Tensor:
    """Restore a batch: ``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, H, W)`` float32, not clamped.

    Args:
        model: a ``BaryNet`` or ``Restormer``; put on the fast path in place.
        x: the degraded batch, on the model's device: a float tensor (float64 is restored as float32); a
            numpy array, an integer (8-bit) batch or one image without its batch dimension is a clear error.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 on GPU only).
        pad: reflect-pad H and W up to multiples of ``multiple`` and crop the result back,
            so inputs of any size work; without it such inputs are an error.
        compile_mode: run the forward ``torch.compile``'d with this mode (:mod:`utils.compiled`: the first call
            compiles, the second size once more for dynamic shapes, small CPU images at times again);
            ``"off"``: eager.
    """
    check_input_size(x, multiple=1, channels=getattr(model, "config", {}).get("inp_channels", 3))
    prepare_for_inference(model, compile_mode)
    compiled = model._compiled_forwards[compile_mode] if compile_mode != "off" else None
    forward, backend = (compiled.forward, compiled.backend) if compiled is not None else (model, "inductor")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(x.device, precision):
            inp = x.float()
            if pad and (ph or pw):
                mode = "reflect" if ph < h and pw < w else "replicate"
                inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
            inp = inp.contiguous(memory_format=torch.channels_last)
            begin_iteration(compile_mode, backend)
            counting = _counting_compiles(compiled) if compiled is not None else contextlib.nullcontext()
            with frozen_weights(compile_mode, backend), counting:  # both no-ops for "off"
                out = _output_image(forward(inp))
    finally:
        model.train(was_training)
    out = out[..., :h, :w].float().contiguous()
    # a CUDA graph's output is overwritten by its next replay: hand back memory of our own
    return out.clone() if replays_cuda_graphs(compile_mode, backend) else out


# --------------------------------------------------------------------------- tiled inference

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared.

    Tiles step by ``tile - overlap``; the last one is aligned to the end (so it may overlap its
    neighbour by more). A length up to ``tile`` is one tile.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_ramp(overlap: int) -> torch.Tensor:
    """Raised-cosine ramp ``(overlap,)`` rising from ~0 to ~1 (float64).

    ``ramp[i] + ramp[overlap - 1 - i] == 1``: two tiles overlapping by exactly ``overlap``
    cross-fade with weights that already sum to one.
    """
    t = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
    return torch.sin(0.5 * math.pi * t) ** 2


def tile_window(start: int, size: int, length: int, overlap: int) -> torch.Tensor:
    """1-D blending weights ``(size,)`` (float64, all > 0) of a tile at ``start`` on an axis of ``length``.

    The weights fall towards the tile's edges that lie inside the image (where a neighbour
    takes over) and stay 1 at the image border.
    """
    w = torch.ones(size, dtype=torch.float64)
    n = min(overlap, size)
    if n > 0:
        ramp = blend_ramp(n)
        if start > 0:
            w[:n] *= ramp
        if start + size < length:
            w[size - n:] *= ramp.flip(0)
    return w


def check_tiling(tile: int, overlap: int, multiple: int = 8) -> None:
    """Raise ``ValueError`` with the fix unless ``tile``/``overlap`` are usable."""
    if tile <= 0 or tile % multiple:
        raise ValueError(f"--tile must be a positive multiple of {multiple} (the network's size step), got {tile}")
    if not 0 <= overlap < tile or (tile - overlap) < multiple:
        fits = max(0, min(overlap, tile // 4 // multiple * multiple))  # a quarter of this tile, or less
        raise ValueError(f"--tile-overlap must be >= 0 and leave a step of at least {multiple} pixels "
                         f"(tile - overlap), got tile {tile}, overlap {overlap}; e.g. --tile {tile} --tile-overlap "
                         f"{fits}, or --tile 512 --tile-overlap 32")


def restore_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int = 32, precision: str = "fp32",
                  tile_batch: int = 4, multiple: int = 8,
                  progress: Callable[[int, int], None] | None = None, compile_mode: str = "off") -> torch.Tensor:
    """Restore ``x`` tile by tile and blend the tiles: ``(B, 3, H, W)`` -> ``(B, 3, H, W)`` float32 on the CPU.

    Each ``tile`` x ``tile`` window (smaller only when the image is) runs through :func:`restore`
    on the model's device, ``tile_batch`` windows per forward pass. Overlapping windows are
    blended with separable raised-cosine weights normalised by their sum, so no seams show.
    The output is accumulated on the CPU in float64 (so a model that returns its input gives
    back ``x`` bit for bit); memory on the device is bounded by ``tile_batch`` tiles, on the
    host by a few copies of the image. ``progress(done, total)`` is called before the first batch of tiles
    and after every batch;
    ``compile_mode`` as in :func:`restore` (every tile has one size: one compile, plus one for a short last batch).
    """
    check_tiling(tile, overlap, multiple)
    device = next(model.parameters()).device
    b, c, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    win_y = {s: tile_window(s, th, h, overlap) for s in ys}
    win_x = {s: tile_window(s, tw, w, overlap) for s in xs}
    # The window is separable and the grid regular, so the summed weight is an outer product too.
    norm_y = torch.zeros(h, dtype=torch.float64)
    norm_x = torch.zeros(w, dtype=torch.float64)
    for s, wy in win_y.items():
        norm_y[s:s + th] += wy
    for s, wx in win_x.items():
        norm_x[s:s + tw] += wx
    acc = None
    positions = [(y0, x0) for y0 in ys for x0 in xs]
    if progress is not None:
        progress(0, len(positions))
    for i in range(0, len(positions), max(1, tile_batch)):
        chunk = positions[i:i + max(1, tile_batch)]
        batch = torch.cat([x[..., y0:y0 + th, x0:x0 + tw] for y0, x0 in chunk]).to(device)
        out = restore(model, batch, precision=precision, pad=True, multiple=multiple, compile_mode=compile_mode).cpu()
        del batch
        if acc is None:
            acc = torch.zeros((b, out.shape[1], h, w), dtype=torch.float64)
        for k, (y0, x0) in enumerate(chunk):
            weight = win_y[y0][:, None] * win_x[x0][None, :]
            acc[..., y0:y0 + th, x0:x0 + tw] += out[k * b:(k + 1) * b].double() * weight
        del out
        if progress is not None:
            progress(i + len(chunk), len(positions))
    acc /= norm_y[:, None] * norm_x[None, :]
    return acc.float()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device or host allocation failure (CUDA OOM, CPU allocator, MemoryError)."""
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
