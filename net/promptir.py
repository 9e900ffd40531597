"""PromptIR: a Restormer U-net whose decoder is steered by learned prompts (Potlapalli et al., NeurIPS 2023).

The reference's ``PromptIR(decoder=True)``, the all-in-one baseline BaryIR compares with. Module names
follow the reference so its released weights load; the six layers it declares but never uses
(``chnl_reduce1..3``, ``reduce_noise_channel_1..3``) are not built, and :mod:`utils.checkpoints` drops
them from its files. Widths the reference hard-codes for dim=48 are derived here from ``dim`` and the
prompt widths, so a narrower configuration is the same graph.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .barynet import _config, _run_encoder, check_network_input
from .blocks import (
    Downsample,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
    conv1x1,
    transformer_stage,
)


def check_prompt_settings(prompt_dims: Sequence[int], prompt_sizes: Sequence[int]) -> None:
    """Raise ``ValueError`` unless there is one prompt width and one prompt size per decoder level (1, 2, 3)."""
    if len(prompt_dims) != 3 or len(prompt_sizes) != 3:
        raise ValueError(f"prompt_dims and prompt_sizes need 3 entries each (decoder levels 1, 2, 3), "
                         f"got {list(prompt_dims)} and {list(prompt_sizes)}")


class PromptGenBlock(nn.Module):
    """The prompt of one decoder level: ``(B, lin_dim, H, W) -> (B, prompt_dim, H, W)``.

    ``prompt_len`` learned components ``(prompt_dim, prompt_size, prompt_size)`` are mixed with weights
    ``softmax(linear(mean of x over H, W))``; the mixture is resized (bilinear) to H x W and passed
    through a bias-free 3x3 convolution.
    """

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, lin_dim: int):
        super().__init__()
        # Shape (1, L, P, S, S) and uniform [0, 1) initial values, as in the reference.
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.linear_layer(x.mean(dim=(-2, -1))).softmax(dim=1)  # (B, L)
        prompt = torch.einsum("bl,lpij->bpij", weights, self.prompt_param[0])  # (B, P, S, S)
        prompt = F.interpolate(prompt, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)


class PromptIR(nn.Module):
    """All-in-one restoration baseline: Restormer whose three decoder levels each take a generated prompt.

    At each level the features are concatenated with their prompt, mixed by one TransformerBlock
    (``noise_level*``, ``heads[2]`` heads) and reduced back by a 1x1 convolution (``reduce_noise_level*``).

    Args:
        dim, num_blocks, num_refinement_blocks, heads, ffn_expansion_factor, bias, LayerNorm_type,
        inp_channels, out_channels: as for :class:`~net.barynet.Restormer`.
        prompt_dims: channels of the prompts ``prompt1..3``, which act on the decoder features at 1/2,
            1/4 and 1/8 of the input size (2dim, 4dim and 8dim channels).
        prompt_len: learned components per prompt.
        prompt_sizes: spatial size of each level's learned components (resized to the features).
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias",
                 prompt_dims: Sequence[int] = (64, 128, 320), prompt_len: int = 5,
                 prompt_sizes: Sequence[int] = (64, 32, 16)):
        super().__init__()
        check_prompt_settings(prompt_dims, prompt_sizes)
        d = dim
        p1, p2, p3 = prompt_dims
        self.config = {**_config(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
                                 ffn_expansion_factor, bias, LayerNorm_type),
                       "prompt_dims": list(prompt_dims), "prompt_len": prompt_len, "prompt_sizes": list(prompt_sizes)}

        def stage(width, depth, n_heads):
            return transformer_stage(width, depth, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        def block(width):
            return TransformerBlock(width, heads[2], ffn_expansion_factor, bias, LayerNorm_type)

        # Registration order follows the reference so state_dict() lists keys as its checkpoints do.
        self.patch_embed = OverlapPatchEmbed(inp_channels, d)
        self.prompt1 = PromptGenBlock(p1, prompt_len, prompt_sizes[0], 2 * d)
        self.prompt2 = PromptGenBlock(p2, prompt_len, prompt_sizes[1], 4 * d)
        self.prompt3 = PromptGenBlock(p3, prompt_len, prompt_sizes[2], 8 * d)
        self.encoder_level1 = stage(d, num_blocks[0], heads[0])
        self.down1_2 = Downsample(d)
        self.encoder_level2 = stage(2 * d, num_blocks[1], heads[1])
        self.down2_3 = Downsample(2 * d)
        self.encoder_level3 = stage(4 * d, num_blocks[2], heads[2])
        self.down3_4 = Downsample(4 * d)
        self.latent = stage(8 * d, num_blocks[3], heads[3])

        # The reference writes these widths as 4*48+512, 2*48+192, 2*48+224 and 2*48+64.
        self.up4_3 = Upsample(4 * d)
        self.reduce_chan_level3 = conv1x1(6 * d, 4 * d, bias)
        self.noise_level3 = block(8 * d + p3)
        self.reduce_noise_level3 = conv1x1(8 * d + p3, 4 * d, bias)
        self.decoder_level3 = stage(4 * d, num_blocks[2], heads[2])
        self.up3_2 = Upsample(4 * d)
        self.reduce_chan_level2 = conv1x1(4 * d, 2 * d, bias)
        self.noise_level2 = block(4 * d + p2)
        self.reduce_noise_level2 = conv1x1(4 * d + p2, 4 * d, bias)
        self.decoder_level2 = stage(2 * d, num_blocks[1], heads[1])
        self.up2_1 = Upsample(2 * d)
        self.noise_level1 = block(2 * d + p1)
        self.reduce_noise_level1 = conv1x1(2 * d + p1, 2 * d, bias)
        self.decoder_level1 = stage(2 * d, num_blocks[0], heads[0])
        self.refinement = stage(2 * d, num_refinement_blocks, heads[0])
        self.output = nn.Conv2d(2 * d, out_channels, kernel_size=3, padding=1, bias=bias)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder: ``(B, 3, H, W) -> (e1, e2, e3, latent)``, latent ``(B, 8dim, H/8, W/8)``."""
        check_network_input(self, x)
        return _run_encoder(self, x)

    @staticmethod
    def _prompted(x: torch.Tensor, prompt: PromptGenBlock, mix: nn.Module, reduce: nn.Module) -> torch.Tensor:
        """``x`` with its prompt appended along channels, mixed, and reduced by a 1x1 convolution."""
        return reduce(mix(torch.cat([x, prompt(x)], dim=1)))

    def decode(self, x: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor,
               latent: torch.Tensor) -> torch.Tensor:
        """Prompted decoder and the global residual: returns the restored ``(B, 3, H, W)``."""
        t = self._prompted(latent, self.prompt3, self.noise_level3, self.reduce_noise_level3)  # 4dim, H/8
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(t), e3], dim=1)))
        d3 = self._prompted(d3, self.prompt2, self.noise_level2, self.reduce_noise_level2)  # 4dim, H/4
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], dim=1)))
        d2 = self._prompted(d2, self.prompt1, self.noise_level1, self.reduce_noise_level1)  # 2dim, H/2
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], dim=1))
        return self.output(self.refinement(d1)) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` with H, W multiples of 8 -> the restored image ``(B, 3, H, W)``."""
        return self.decode(x, *self.encode(x))
