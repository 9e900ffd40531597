"""Kantorovich potentials of the barycenter objective (training only).

One scalar network f_k per source domain k. The map (BaryNet) minimises
``sum_k lambda_k E[c(z, b) - f_k(b)]`` while the potentials maximise it, with
``sum_k lambda_k f_k = 0`` enforced by the congruence penalty (docs/METHOD.md §2).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def potential_feature_size(size: int) -> int:
    """Side ``s`` of the grouped 4x4/stride-4 conv's output for a training patch of ``size``."""
    h = size // 8
    s = (h + 2 - 4) // 4 + 1
    if s < 1:
        raise ValueError(f"patch size {size} is too small for the potentials (needs at least 16)")
    return s


def _potential(channels: int, size: int) -> nn.Sequential:
    s = potential_feature_size(size)
    features = channels * s * s
    net = nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=4, stride=4, padding=1, groups=4, bias=False),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(features, features // 4),
        nn.Linear(features // 4, 64),
        nn.LeakyReLU(0.2),
        nn.Linear(64, 1),
    )
    nn.init.normal_(net[0].weight, 0.0, 0.02)
    return net


class Potentials(nn.Module):
    """``num_potentials`` networks f_k, each ``(B, channels, size/8, size/8) -> (B,)``.

    Args:
        num_potentials: K, the number of source domains.
        channels: latent channels (8 * BaryNet dim; 384 for the paper's model).
        size: the training patch size; fixes the latent side ``size/8`` the f_k accept.
    """

    def __init__(self, num_potentials: int, channels: int = 384, size: int = 128):
        super().__init__()
        if channels % 4:
            raise ValueError(f"Potentials channels must be divisible by 4 (grouped conv), got {channels}")
        self.num_potentials = num_potentials
        self.channels = channels
        self.size = size
        self.potentials = nn.ModuleList([_potential(channels, size) for _ in range(num_potentials)])

    def _check(self, z: torch.Tensor) -> None:
        side = self.size // 8
        if z.dim() != 4 or z.shape[1] != self.channels or z.shape[-2:] != (side, side):
            raise ValueError(
                f"Potentials were built for latents of shape (B, {self.channels}, {side}, {side}) "
                f"(patch size {self.size}); got {tuple(z.shape)}. Train with --patch-size {self.size} "
                f"or rebuild the Potentials for your patch size.")

    def all(self, z: torch.Tensor) -> torch.Tensor:
        """Every potential on every sample: ``(B, C, h, w) -> (B, K)``."""
        self._check(z)
        return torch.cat([f(z) for f in self.potentials], dim=1)

    def forward(self, z: torch.Tensor, idx: int | torch.Tensor) -> torch.Tensor:
        """``f_idx(z)``: ``(B, C, h, w) -> (B,)``.

        ``idx`` is one domain for the whole batch (int) or one per sample (``(B,)`` ints).
        """
        if isinstance(idx, int):
            self._check(z)
            return self.potentials[idx](z).squeeze(1)
        idx = torch.as_tensor(idx, device=z.device).long().view(-1, 1)
        return self.all(z).gather(1, idx).squeeze(1)
