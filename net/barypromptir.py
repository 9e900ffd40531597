"""BaryPromptIR: BaryIR on the PromptIR backbone, this project's reconstruction (the authors did not release it).

It is :class:`~net.barynet.BaryNet` with PromptIR's three prompt blocks put back into its main
(restoration) decoder, at the places where BaryNet kept PromptIR's ``noise_level*`` mixing blocks
but dropped the prompts (see ``docs/METHOD.md``, "BaryIR on the PromptIR backbone"):

- level 3 (1/8): ``t = reduce_noise_level3(noise_level3(cat[h3, prompt3(h3)]))`` with ``h3 = cat[b, r]``;
- level 2 (1/4) and level 1 (1/2): the decoder feature with its prompt appended, mixed, reduced back.

The prompt blocks read the main decoder's own feature, as PromptIR's do; the residual decoder path is
BaryNet's, unprompted. Every other module is BaryNet's, with BaryNet's name and shape, so the BaryNet
parts of a state dict line up; only the three ``noise_level*`` blocks and their ``reduce_noise_level*``
convolutions are wider by the prompt's channels, and ``prompt1..3`` are new.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .barynet import BaryNet
from .blocks import TransformerBlock, conv1x1
from .promptir import PromptGenBlock, PromptIR, check_prompt_settings


class BaryPromptIR(BaryNet):
    """BaryNet whose main decoder takes a generated prompt at each of its three levels.

    ``forward`` returns :class:`~net.barynet.BaryOutput` and ``bary_latent`` runs the encoder and the
    barycenter head only, both inherited from BaryNet unchanged: the prompts act after the latent split,
    so the WB and residual latents are computed exactly as in BaryNet.

    Args:
        dim, num_blocks, num_refinement_blocks, heads, ffn_expansion_factor, bias, LayerNorm_type,
        inp_channels, out_channels: as for :class:`~net.barynet.BaryNet`.
        prompt_dims, prompt_len, prompt_sizes: as for :class:`~net.promptir.PromptIR`; ``prompt1..3``
            act at 1/2, 1/4 and 1/8 of the input size, on 2dim, 4dim and 16dim channels (the last is
            ``cat[b, r]``).
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias",
                 prompt_dims: Sequence[int] = (64, 128, 320), prompt_len: int = 5,
                 prompt_sizes: Sequence[int] = (64, 32, 16)):
        check_prompt_settings(prompt_dims, prompt_sizes)
        super().__init__(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
                         ffn_expansion_factor, bias, LayerNorm_type)
        d = dim
        p1, p2, p3 = prompt_dims
        self.config.update(prompt_dims=list(prompt_dims), prompt_len=prompt_len, prompt_sizes=list(prompt_sizes))

        def block(width):
            return TransformerBlock(width, heads[2], ffn_expansion_factor, bias, LayerNorm_type)

        # BaryNet built its mixing blocks for the unprompted feature; they are rebuilt here to take the
        # prompt's channels too. Assigning to an existing name keeps its place in state_dict() order.
        self.noise_level3 = block(16 * d + p3)
        self.reduce_noise_level3 = conv1x1(16 * d + p3, 4 * d, bias)
        self.noise_level2 = block(4 * d + p2)
        self.reduce_noise_level2 = conv1x1(4 * d + p2, 4 * d, bias)
        self.noise_level1 = block(2 * d + p1)
        self.reduce_noise_level1 = conv1x1(2 * d + p1, 2 * d, bias)
        # Each prompt reads the feature it is appended to (PromptIR's rule); at level 3 that is cat[b, r].
        self.prompt1 = PromptGenBlock(p1, prompt_len, prompt_sizes[0], 2 * d)
        self.prompt2 = PromptGenBlock(p2, prompt_len, prompt_sizes[1], 4 * d)
        self.prompt3 = PromptGenBlock(p3, prompt_len, prompt_sizes[2], 16 * d)

    def decode(self, x, e1, e2, e3, b, r) -> torch.Tensor:
        """Prompted main decoder, BaryNet's residual decoder and the global residual: ``(B, 3, H, W)``."""
        prompted = PromptIR._prompted
        t = prompted(torch.cat([b, r], dim=1), self.prompt3, self.noise_level3, self.reduce_noise_level3)
        q = self.resreduce_noise_level3(r)
        d3 = self.up4_3(t)
        q3 = self.resup4_3(q)
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([d3, e3 + 0.8 * q3], dim=1)))
        q3 = self.resdecoder_level3(self.resreduce_chan_level3(q3))

        d3 = prompted(d3, self.prompt2, self.noise_level2, self.reduce_noise_level2)
        q3 = self.resreduce_noise_level2(q3)
        d2 = self.up3_2(d3)
        q2 = self.resup3_2(q3)
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([d2, e2 + 0.8 * q2], dim=1)))
        q2 = self.resdecoder_level2(self.resreduce_chan_level2(q2))

        d2 = prompted(d2, self.prompt1, self.noise_level1, self.reduce_noise_level1)
        q2 = self.resreduce_noise_level1(q2)
        d1 = self.up2_1(d2)
        q1 = self.resup2_1(q2)
        d1 = self.refinement(self.decoder_level1(torch.cat([d1, e1 + 0.8 * q1], dim=1)))
        return self.output(d1) + x
