"""Restormer building blocks, defined once for every network of the family.

All tensors are images in ``(B, C, H, W)`` layout (any memory format). Every
convolution is bias-free unless ``bias=True`` is passed, as in the reference.

LayerNorm has two numerically equivalent implementations, chosen per module by
its ``impl`` attribute (see :func:`set_layernorm_impl`):

- ``"fused"`` (default): ``torch.nn.functional.layer_norm`` on a channels-last
  view; one pass, no copies when the activations are ``channels_last``.
- ``"reference"``: mean and variance computed by hand on an NCHW tensor, as
  the reference code does. Kept as the baseline of ``bench/bench_inference.py``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERNORM_IMPLS = ("fused", "reference")
_EPS = 1e-5


class LayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels: ``(B, C, H, W) -> (B, C, H, W)``.

    ``WithBias``: ``(x - mean) / sqrt(var + 1e-5) * g + b``;
    ``BiasFree``: ``x / sqrt(var + 1e-5) * g`` (variance still about the mean).
    Parameters live in ``self.body`` so state-dict keys are ``<name>.body.weight``
    (and ``.body.bias``) as in reference checkpoints.
    """

    def __init__(self, dim: int, layernorm_type: str = "WithBias"):
        super().__init__()
        if layernorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {layernorm_type!r}")
        self.body = _NormParams(dim, with_bias=layernorm_type == "WithBias")
        self.normalized_shape = (dim,)  # a constant, not read off the input: traced exports keep it static
        self.impl = "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.body.weight, self.body.bias
        if self.impl == "reference":
            return _layernorm_reference(x, weight, bias)
        # (B, C, H, W) -> (B, H, W, C): a free view when x is channels_last.
        y = x.permute(0, 2, 3, 1)
        if bias is not None:
            y = F.layer_norm(y, self.normalized_shape, weight, bias, _EPS)
        else:
            var = y.var(dim=-1, keepdim=True, unbiased=False)
            y = y * torch.rsqrt(var + _EPS) * weight
        y = y.permute(0, 3, 1, 2)  # F.layer_norm's output is channels_last in memory, whatever x was
        if x.dtype == torch.float64 and x.device.type == "cpu" and x.is_contiguous():
            # oneDNN has no float64 kernels: torch's fallback convolution, which then runs every depthwise
            # convolution channel by channel, took about 3x as long on channels_last tensors (a float64 forward of
            # the paper network on 4x3x64x64: 28 s, 10 s with its activations kept NCHW), so they stay NCHW
            y = y.contiguous()
        return y


class _NormParams(nn.Module):
    """Holds the gain (and bias) under the reference's ``body`` submodule name."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


def _layernorm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm over dim 1 computed by hand, as the reference does: ``(B, C, H, W)``."""
    x = x.contiguous()
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    w = weight.view(1, -1, 1, 1)
    if bias is None:
        return x / torch.sqrt(var + _EPS) * w
    return (x - mu) / torch.sqrt(var + _EPS) * w + bias.view(1, -1, 1, 1)


def set_layernorm_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every :class:`LayerNorm` in ``model`` to ``impl``; returns ``model``."""
    if impl not in LAYERNORM_IMPLS:
        raise ValueError(f"LayerNorm impl must be one of {LAYERNORM_IMPLS}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m.impl = impl
    return model


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _split_forms_apply(x):
            return self._forward_split(x)
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(_gelu_gate(x1, x2))

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """The same function for channels_last activations: each half of the gate is computed by its
        own slice of the 1x1 and depthwise weights (both act on channels independently), so the
        halves come out contiguous instead of as strided channel slices; the gate then runs on
        contiguous memory and the intermediate tensors are half as wide (faster per block on the CPU,
        most in bf16: BENCHMARKS.md, bench/bench_blocks.py)."""
        gate, value = (_depthwise(_pointwise(x, self.project_in, part, 2), self.dwconv, part, 2) for part in (0, 1))
        return self.project_out(_gelu_gate(gate, value))


def _gelu_gate(gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``gelu(gate) * value``; without autograd the product is taken in place (one fewer full-size buffer).
    A trace always records the plain product: ``torch.jit.trace`` checks its graph again under ``no_grad``,
    and a graph that changed with the grad mode failed that check."""
    if torch.is_grad_enabled() or torch.jit.is_tracing():
        return F.gelu(gate) * value
    return F.gelu(gate).mul_(value)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA), attention across channels.

    ``(B, C, H, W) -> (B, C, H, W)``; each head attends over its ``C/heads``
    channels with an ``(C/heads) x (C/heads)`` map and a learnable temperature.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels ({dim}) must be divisible by heads ({num_heads})")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _split_forms_apply(x):
            return self._forward_split(x)
        b, c, h, w = x.shape
        heads = self.num_heads
        # channel index = head * (C/heads) + c, as einops' '(head c)' split.
        qkv = self.qkv_dwconv(self.qkv(x)).reshape(b, 3, heads, c // heads, h * w)
        q, k, v = qkv.unbind(dim=1)
        # <q/|q|, k/|k|> computed as <q, k> / (|q| |k|): the same value as normalising q and k
        # first (norms floored at 1e-12 as F.normalize does) without two extra passes over them.
        q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
        k_norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(1e-12)
        attn = (q @ k.transpose(-2, -1)) / (q_norm * k_norm.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        out = out.reshape(b, c, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return self.project_out(out)

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """The same function for channels_last activations, without materialising the 3C-channel qkv.

        q, k and v each come from their own slice of the 1x1 and depthwise weights, as contiguous
        channels_last tensors ``(B, H, W, C)`` in memory; the products then run on per-head row views
        ``(B, heads, HW, C/heads)`` with no copy: the Gram matrix is ``q_rows^T k_rows`` and the output
        ``v_rows attn^T``, which lands directly in channels_last order.
        """
        b, c, h, w = x.shape
        heads = self.num_heads

        def rows(part: int) -> tuple[torch.Tensor, torch.Tensor]:
            """``(per-head rows (B, heads, HW, C/heads), their norms over HW (B, heads, C/heads))``."""
            y = _depthwise(_pointwise(x, self.qkv, part, 3), self.qkv_dwconv, part, 3)
            flat = y.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: (B, HW, C), contiguous
            norms = _column_norms(flat).reshape(b, heads, c // heads) if part < 2 else None
            return flat.reshape(b, h * w, heads, c // heads).transpose(1, 2), norms

        (q, q_norm), (k, k_norm), (v, _) = rows(0), rows(1), rows(2)
        attn = (q.transpose(-2, -1) @ k) / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)) * self.temperature
        out = v @ attn.softmax(dim=-1).transpose(-2, -1)  # (B, heads, HW, C/heads)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # channels_last (B, C, H, W)
        return self.project_out(out)


def _column_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each column of a contiguous ``(B, N, C)`` over its ``N`` rows, floored at 1e-12 as
    ``F.normalize`` floors it: ``-> (B, C)``, in ``x``'s dtype (bf16/fp16 summed in float32).

    A sum of squares down the rows (the floor taken before the square root, so a zero column has a
    zero gradient, not a NaN): on the CPU 2.7-10x faster than ``torch.linalg.vector_norm`` over the
    strided per-head view at the four levels' sizes (BENCHMARKS.md).
    """
    squares = torch.sum(x * x, dim=1, dtype=torch.promote_types(x.dtype, torch.float32))
    return squares.clamp_min(1e-24).sqrt().to(x.dtype)


def _split_forms_apply(x: torch.Tensor) -> bool:
    """Whether the split forms apply: channels_last activations on the CPU (the inference fast path
    and the trainer's channels_last engine). NCHW activations, as in the reference, and GPU tensors
    take the plain forms: on an H100 the split forms were slower, in inference and in training
    (BENCHMARKS.md has the A/B)."""
    return x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def _channel_slice(conv: nn.Conv2d, part: int, parts: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(weight, bias, n)`` of ``conv``'s output channels ``[part * n, (part + 1) * n)``, ``n = out / parts``."""
    n = conv.out_channels // parts
    rows = slice(part * n, (part + 1) * n)
    return conv.weight[rows], (conv.bias[rows] if conv.bias is not None else None), n


def _pointwise(x: torch.Tensor, conv: nn.Conv2d, part: int, parts: int) -> torch.Tensor:
    """The 1x1 ``conv`` restricted to one of its ``parts`` equal blocks of output channels."""
    weight, bias, _ = _channel_slice(conv, part, parts)
    return F.conv2d(x, weight, bias)


def _depthwise(x: torch.Tensor, conv: nn.Conv2d, part: int, parts: int) -> torch.Tensor:
    """The depthwise 3x3 ``conv`` restricted to one of its ``parts`` equal blocks of channels."""
    weight, bias, n = _channel_slice(conv, part, parts)
    return F.conv2d(x, weight, bias, padding=1, groups=n)


class TransformerBlock(nn.Module):
    """``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool = False,
                 layernorm_type: str = "WithBias"):
        super().__init__()
        self.norm1 = LayerNorm(dim, layernorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, layernorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(dim: int, depth: int, heads: int, ffn_expansion_factor: float, bias: bool,
                      layernorm_type: str) -> nn.Sequential:
    """``depth`` TransformerBlocks in sequence (state-dict keys ``<stage>.<i>.*``)."""
    return nn.Sequential(*[TransformerBlock(dim, heads, ffn_expansion_factor, bias, layernorm_type)
                           for _ in range(depth)])


class OverlapPatchEmbed(nn.Module):
    """3x3 conv ``(B, in_c, H, W) -> (B, dim, H, W)``."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv n -> n/2, PixelUnshuffle(2): ``(B, n, H, W) -> (B, 2n, H/2, W/2)``."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False),
                                  nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv n -> 2n, PixelShuffle(2): ``(B, n, H, W) -> (B, n/2, 2H, 2W)``."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False),
                                  nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)


def check_input_size(x: torch.Tensor, multiple: int = 8, channels: int = 3,
                     weight: torch.Tensor | None = None) -> None:
    """Raise a clear error unless ``x`` is a float ``(B, channels, H, W)`` batch with H, W multiples of
    ``multiple``, in the dtype of ``weight`` (a network's first weight; under autocast float32 or its dtype too)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image batch (B, {channels}, H, W), got {type(x).__name__}; "
                        f"a numpy (H, W, {channels}) image is torch.from_numpy(img).permute(2, 0, 1)[None]")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected an image batch of shape (B, {channels}, H, W), got {tuple(x.shape)}"
                         f"{_shape_hint(tuple(x.shape), channels)}")
    _check_input_dtype(x, weight)
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"input height and width must be multiples of {multiple}, got {h}x{w}. Crop or pad the image "
            f"first: tester_bary.py does this with --protocol reference (crop) or --protocol pad "
            f"(reflect-pad and crop back), and utils.eval.inference.restore(..., pad=True) pads for you.")


def _shape_hint(shape: tuple[int, ...], channels: int) -> str:
    """The likely fix of an input of ``shape`` that is not ``(B, channels, H, W)``, or ``""``."""
    if len(shape) == 3 and shape[0] == channels:
        return "; one image (C, H, W) is a batch of one as x[None]"
    if len(shape) == 3 and shape[-1] == channels:
        return "; an (H, W, C) image is a batch of one as x.permute(2, 0, 1)[None]"
    if len(shape) == 4 and shape[-1] == channels:
        return "; a (B, H, W, C) batch is x.permute(0, 3, 1, 2)"
    if len(shape) == 4 and shape[1] == 1 and channels == 3:
        return "; a grey batch is x.expand(-1, 3, -1, -1) (this network was built for 3 channels)"
    return ""


def _check_input_dtype(x: torch.Tensor, weight: torch.Tensor | None) -> None:
    """Raise a clear error unless ``x`` is floating point, in ``weight``'s dtype when autocast is off."""
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point image batch with values in [0, 1], got {x.dtype}; "
                         f"an 8-bit batch is x.float() / 255")
    if weight is not None and x.dtype not in _input_dtypes(x.device.type, weight.dtype):
        raise ValueError(f"the input is {x.dtype} but the network's weights are {weight.dtype}: pass "
                         f"x.to({weight.dtype}), or convert the network with model.to({x.dtype})")


def _input_dtypes(device_type: str, weight_dtype: torch.dtype) -> set[torch.dtype]:
    """The input dtypes a network with ``weight_dtype`` weights runs: that one, and under autocast also
    float32 and the autocast dtype (which autocast casts to; it leaves float64 alone)."""
    if not torch.is_autocast_enabled(device_type):
        return {weight_dtype}
    return {weight_dtype, torch.float32, torch.get_autocast_dtype(device_type)}
