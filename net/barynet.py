"""BaryNet: a Restormer U-net whose bottleneck splits into a Wasserstein-barycenter
(WB) embedding and a residual embedding, each driving its own decoder path.

The graph and the module names follow the reference implementation exactly, so
reference checkpoints load into it (see ``docs/METHOD.md`` §1); the
reference's hard-coded widths are derived from ``dim`` here.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from .blocks import (
    Downsample,
    LayerNorm,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
    check_input_size,
    conv1x1,
    transformer_stage,
)


class BaryOutput(NamedTuple):
    """What :meth:`BaryNet.forward` returns; unpacks as a 4-tuple.

    restored: ``(B, 3, H, W)``; source_latent, bary_latent, residual: ``(B, 8*dim, H/8, W/8)``.
    """
    restored: torch.Tensor
    source_latent: torch.Tensor
    bary_latent: torch.Tensor
    residual: torch.Tensor


def _config(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads, ffn_expansion_factor, bias,
            LayerNorm_type) -> dict:
    """The constructor arguments of BaryNet and Restormer, checked, as the ``config`` checkpoints record."""
    if len(num_blocks) != 4 or len(heads) != 4:
        raise ValueError(f"num_blocks and heads need 4 entries each, got {list(num_blocks)} and {list(heads)}")
    if inp_channels != out_channels:
        raise ValueError(f"out_channels ({out_channels}) must equal inp_channels ({inp_channels}): the network adds "
                         f"its input to its output (the global residual)")
    return dict(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=list(num_blocks),
                num_refinement_blocks=num_refinement_blocks, heads=list(heads),
                ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type)


def check_network_input(net: nn.Module, x: torch.Tensor) -> None:
    """:func:`~net.blocks.check_input_size` for ``net``'s channels (``config["inp_channels"]``) and weights' dtype."""
    check_input_size(x, channels=net.config["inp_channels"], weight=net.patch_embed.proj.weight)


def _add_encoder(net: nn.Module, stage, inp_channels: int, d: int, num_blocks: Sequence[int],
                 heads: Sequence[int]) -> None:
    """Register the encoder BaryNet and Restormer share, in the reference's key order: patch
    embedding, three levels with their downsamplings, and the latent stage (8d channels at 1/8)."""
    net.patch_embed = OverlapPatchEmbed(inp_channels, d)
    net.encoder_level1 = stage(d, num_blocks[0], heads[0])
    net.down1_2 = Downsample(d)
    net.encoder_level2 = stage(2 * d, num_blocks[1], heads[1])
    net.down2_3 = Downsample(2 * d)
    net.encoder_level3 = stage(4 * d, num_blocks[2], heads[2])
    net.down3_4 = Downsample(4 * d)
    net.latent = stage(8 * d, num_blocks[3], heads[3])


def _run_encoder(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W) -> (e1, e2, e3, latent)``: the skips at 1, 1/2, 1/4 and the latent stage's output at 1/8."""
    e1 = net.encoder_level1(net.patch_embed(x))
    e2 = net.encoder_level2(net.down1_2(e1))
    e3 = net.encoder_level3(net.down2_3(e2))
    return e1, e2, e3, net.latent(net.down3_4(e3))


class BaryNet(nn.Module):
    """All-in-one restoration network of BaryIR.

    Args:
        dim: width of the first level; levels are dim, 2dim, 4dim, 8dim.
        num_blocks: TransformerBlocks per encoder level 1..3 and in each latent stage.
        num_refinement_blocks: blocks of the final refinement stage.
        heads: attention heads per level; the three ``noise_level*`` blocks use ``heads[2]``.
        ffn_expansion_factor: GDFN hidden width factor.
        bias: bias on the convolutions inside the transformer blocks.
        LayerNorm_type: ``'WithBias'`` or ``'BiasFree'`` (the reference's spelling).
        inp_channels, out_channels: image channels (3; 1 for a grey network), equal: the output adds the
            input. The shapes below say 3 for ``inp_channels``.
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias"):
        super().__init__()
        d = dim
        self.config = _config(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
                              ffn_expansion_factor, bias, LayerNorm_type)

        def stage(width, depth, n_heads):
            return transformer_stage(width, depth, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        def block(width, n_heads):
            return TransformerBlock(width, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        # Registration order follows the reference so state_dict() lists keys in its order.
        _add_encoder(self, stage, inp_channels, d, num_blocks, heads)
        self.barylatent = stage(8 * d, num_blocks[3], heads[3])
        self.LN = LayerNorm(8 * d, "WithBias")

        self.up4_3 = Upsample(4 * d)
        self.reduce_chan_level3 = conv1x1(6 * d, 4 * d, bias)
        self.noise_level3 = block(16 * d, heads[2])
        self.reduce_noise_level3 = conv1x1(16 * d, 4 * d, bias)
        self.decoder_level3 = stage(4 * d, num_blocks[2], heads[2])
        self.resup4_3 = Upsample(8 * d)
        self.resreduce_chan_level3 = conv1x1(4 * d, 4 * d, bias)
        self.resreduce_noise_level3 = conv1x1(8 * d, 8 * d, bias)
        self.resdecoder_level3 = stage(4 * d, num_blocks[2], heads[2])

        self.up3_2 = Upsample(4 * d)
        self.reduce_chan_level2 = conv1x1(4 * d, 2 * d, bias)
        self.noise_level2 = block(4 * d, heads[2])
        self.reduce_noise_level2 = conv1x1(4 * d, 4 * d, bias)
        self.decoder_level2 = stage(2 * d, num_blocks[1], heads[1])
        self.resup3_2 = Upsample(4 * d)
        self.resreduce_chan_level2 = conv1x1(2 * d, 2 * d, bias)
        self.resreduce_noise_level2 = conv1x1(4 * d, 4 * d, bias)
        self.resdecoder_level2 = stage(2 * d, num_blocks[1], heads[1])

        self.up2_1 = Upsample(2 * d)
        self.resup2_1 = Upsample(2 * d)
        self.noise_level1 = block(2 * d, heads[2])
        self.reduce_noise_level1 = conv1x1(2 * d, 2 * d, bias)
        self.resreduce_noise_level1 = conv1x1(2 * d, 2 * d, bias)
        self.decoder_level1 = stage(2 * d, num_blocks[0], heads[0])
        self.refinement = stage(2 * d, num_refinement_blocks, heads[0])
        self.output = nn.Conv2d(2 * d, out_channels, kernel_size=3, padding=1, bias=bias)

    @property
    def latent_channels(self) -> int:
        return 8 * self.config["dim"]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder: ``(B, 3, H, W) -> (e1, e2, e3, z)``, z the source latent ``(B, 8dim, H/8, W/8)``."""
        check_network_input(self, x)
        e1, e2, e3, latent = _run_encoder(self, x)
        z = self.LN(latent)
        return e1, e2, e3, z

    def barycenter(self, z: torch.Tensor) -> torch.Tensor:
        """WB latent of a source latent: ``(B, 8dim, h, w) -> (B, 8dim, h, w)``."""
        return self.LN(self.barylatent(z))

    def bary_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and barycenter path only (no decoder): ``(B, 3, H, W) -> (B, 8dim, H/8, W/8)``.

        The potentials update of training needs just this.
        """
        return self.barycenter(self.encode(x)[3])

    def decode(self, x, e1, e2, e3, b, r) -> torch.Tensor:
        """Both decoder paths and the global residual: returns ``(B, 3, H, W)``."""
        t = self.reduce_noise_level3(self.noise_level3(torch.cat([b, r], dim=1)))
        q = self.resreduce_noise_level3(r)
        d3 = self.up4_3(t)
        q3 = self.resup4_3(q)
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([d3, e3 + 0.8 * q3], dim=1)))
        q3 = self.resdecoder_level3(self.resreduce_chan_level3(q3))

        d3 = self.reduce_noise_level2(self.noise_level2(d3))
        q3 = self.resreduce_noise_level2(q3)
        d2 = self.up3_2(d3)
        q2 = self.resup3_2(q3)
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([d2, e2 + 0.8 * q2], dim=1)))
        q2 = self.resdecoder_level2(self.resreduce_chan_level2(q2))

        d2 = self.reduce_noise_level1(self.noise_level1(d2))
        q2 = self.resreduce_noise_level1(q2)
        d1 = self.up2_1(d2)
        q1 = self.resup2_1(q2)
        d1 = self.refinement(self.decoder_level1(torch.cat([d1, e1 + 0.8 * q1], dim=1)))
        return self.output(d1) + x

    def forward(self, x: torch.Tensor) -> BaryOutput:
        """``(B, 3, H, W)`` with H, W multiples of 8 -> :class:`BaryOutput`."""
        e1, e2, e3, z = self.encode(x)
        b = self.barycenter(z)
        r = z - b
        return BaryOutput(self.decode(x, e1, e2, e3, b, r), z, b, r)


class Restormer(nn.Module):
    """The plain Restormer backbone (no barycenter split): the L1-only baseline.

    Same blocks and widths as :class:`BaryNet`'s main path; ``forward`` returns the
    restored image ``(B, 3, H, W)``.
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias"):
        super().__init__()
        d = dim
        self.config = _config(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
                              ffn_expansion_factor, bias, LayerNorm_type)

        def stage(width, depth, n_heads):
            return transformer_stage(width, depth, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        _add_encoder(self, stage, inp_channels, d, num_blocks, heads)
        self.up4_3 = Upsample(8 * d)
        self.reduce_chan_level3 = conv1x1(8 * d, 4 * d, bias)
        self.decoder_level3 = stage(4 * d, num_blocks[2], heads[2])
        self.up3_2 = Upsample(4 * d)
        self.reduce_chan_level2 = conv1x1(4 * d, 2 * d, bias)
        self.decoder_level2 = stage(2 * d, num_blocks[1], heads[1])
        self.up2_1 = Upsample(2 * d)
        self.decoder_level1 = stage(2 * d, num_blocks[0], heads[0])
        self.refinement = stage(2 * d, num_refinement_blocks, heads[0])
        self.output = nn.Conv2d(2 * d, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` with H, W multiples of 8 -> the restored image ``(B, 3, H, W)``."""
        check_network_input(self, x)
        e1, e2, e3, z = _run_encoder(self, x)
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(z), e3], dim=1)))
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], dim=1)))
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], dim=1))
        return self.output(self.refinement(d1)) + x
