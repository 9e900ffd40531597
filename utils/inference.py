"""The one entry point for running a trained network on images: :func:`restore`.

The fast path computes the same function as training-time eager code:

- LayerNorm through ``F.layer_norm`` (fused, one pass) instead of hand-written mean/var;
- weights and activations in ``channels_last`` (depthwise and 1x1 convolutions run
  much faster in that layout on CPUs with oneDNN, and on tensor cores);
- ``torch.inference_mode`` (no autograd bookkeeping);
- optionally bf16 (CPU with AMX, or GPU) or fp16 (GPU) autocast.

The tester, the demo and the benchmarks all call :func:`restore`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.blocks import set_layernorm_impl

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Put ``model`` on the fast path in place (eval, fused LayerNorm, channels_last); returns it.

    Idempotent; parameter values are unchanged (only their memory layout).
    """
    if not getattr(model, "_fast_inference_ready", False):
        model.eval()
        set_layernorm_impl(model, "fused")
        model.to(memory_format=torch.channels_last)
        model._fast_inference_ready = True
    return model


def autocast_context(device: torch.device | str, precision: str):
    """Autocast for ``precision`` on ``device`` (a no-op for fp32); fp16 needs a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16 "
                         "(fast on CPUs with AVX-512 BF16/AMX) or fp32")
    return torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPE[precision])


def _output_image(out) -> torch.Tensor:
    """BaryNet returns a BaryOutput, Restormer a tensor: the restored batch either way."""
    return out[0] if isinstance(out, tuple) else out


def restore(model: nn.Module, x: torch.Tensor, precision: str = "fp32", pad: bool = False,
            multiple: int = 8) -> torch.Tensor:
    """Restore a batch: ``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, H, W)`` float32, not clamped.

    Args:
        model: a ``BaryNet`` or ``Restormer``; put on the fast path in place.
        x: the degraded batch, on the model's device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 on GPU only).
        pad: reflect-pad H and W up to multiples of ``multiple`` and crop the result back,
            so inputs of any size work; without it such inputs are an error.
    """
    prepare_for_inference(model)
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    with torch.inference_mode(), autocast_context(x.device, precision):
        inp = x.float()
        if pad and (ph or pw):
            mode = "reflect" if ph < h and pw < w else "replicate"
            inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
        inp = inp.contiguous(memory_format=torch.channels_last)
        out = _output_image(model(inp))
    return out[..., :h, :w].float().contiguous()
