"""What BaryNet's two latent spaces hold: embeddings, their differences and projections.

The paper's claim is that the WB embedding ``b`` carries degradation-agnostic content
(two degradations of one image give nearly the same ``b``) while the residual ``r``
carries what is specific to each degradation. These pure functions measure that.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from net import BaryNet


def latents(model: BaryNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WB and residual latents of a batch: ``(B, 3, H, W) -> ((B, C, h, w), (B, C, h, w))``.

    Runs only the encoder and the barycenter path; ``x`` sides must be multiples of 8.
    """
    if not isinstance(model, BaryNet):
        raise TypeError(f"embeddings need a BaryNet (it has the WB/residual split), got {type(model).__name__}")
    with torch.inference_mode():
        z = model.encode(x.float())[3]
        b = model.barycenter(z)
    return b.float(), (z - b).float()


def pooled(latent: torch.Tensor) -> torch.Tensor:
    """Global average pooling: ``(B, C, h, w) -> (B, C)``."""
    return latent.float().mean(dim=(2, 3))


def channel_norm(latent: torch.Tensor) -> torch.Tensor:
    """Per-position L2 norm over channels: ``(C, h, w) -> (h, w)`` (float32)."""
    return latent.float().pow(2).sum(dim=0).sqrt()


def upsampled(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map brought to an image's size, bilinear, to lay over it: ``(h, w) -> (H, W)``."""
    return F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def difference_map(a: torch.Tensor, b: torch.Tensor, size: tuple[int, int], relative: bool = False) -> torch.Tensor:
    """Per-position L2 distance of two latents over channels, upsampled to ``size``.

    ``(C, h, w), (C, h, w) -> (H, W)`` (bilinear upsampling, so it can be laid over the image).
    ``relative`` divides by the mean per-position norm of ``a`` and ``b``, so spaces of different
    scale (the LayerNorm-ed WB latent, the smaller residual) compare on one axis.
    """
    d = channel_norm(a.float() - b.float())
    if relative:
        d = d / (0.5 * (channel_norm(a).mean() + channel_norm(b).mean())).clamp_min(1e-12)
    return upsampled(d, size)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the cosine between flattened ``a_i`` and ``b_i``: ``(B, ...) x2 -> ()``."""
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1).mean()


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """Project rows onto their first two principal components: ``(N, D) -> (N, 2)``.

    The sign of each component is fixed (largest loading positive) so plots are reproducible.
    """
    x = features.double() - features.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:2]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * signs
    out = x @ comps.T
    if out.shape[1] < 2:  # fewer than two samples or features
        out = torch.cat([out, torch.zeros(out.shape[0], 2 - out.shape[1], dtype=out.dtype)], dim=1)
    return out.float()


def explained_variance(features: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Share of the total variance along each of the first ``n`` principal components: ``(N, D) -> (n,)``.

    The components are those :func:`pca_2d` projects onto; entries missing (fewer than ``n``
    samples or features, or no variance at all) are 0.
    """
    x = features.double() - features.double().mean(dim=0, keepdim=True)
    s2 = torch.linalg.svdvals(x).pow(2)
    total = s2.sum()
    share = s2 / total if total > 0 else torch.zeros_like(s2)
    out = torch.zeros(n, dtype=torch.float64)
    out[: min(n, share.numel())] = share[:n]
    return out.float()


def nearest_neighbour_accuracy(features: torch.Tensor, labels: Sequence[str]) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of ``labels`` from ``features``: ``(N, D), N labels -> [0, 1]``.

    Each row is given the label of its nearest other row (Euclidean; the first such row on a tie);
    the score is the share of rows labelled correctly. It reads how well the space separates the
    labels: 1 when every point's nearest neighbour shares its label. Compare it with
    :func:`nearest_neighbour_chance`.
    """
    x = features.double().flatten(1)
    if x.shape[0] != len(labels):
        raise ValueError(f"{x.shape[0]} feature rows but {len(labels)} labels")
    if x.shape[0] < 2:
        raise ValueError("nearest-neighbour accuracy needs at least two rows")
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    lab = np.asarray(labels)
    return float(np.mean(lab[d.argmin(dim=1).numpy()] == lab))


def nearest_neighbour_chance(labels: Sequence[str]) -> float:
    """Expected :func:`nearest_neighbour_accuracy` when each row's neighbour is a random other row.

    ``sum_k n_k (n_k - 1) / (N (N - 1))`` for ``n_k`` rows of label ``k`` among ``N``: the score of
    features that carry nothing about the labels (1/K minus a little for K balanced labels).
    """
    n = len(labels)
    if n < 2:
        raise ValueError("nearest-neighbour chance needs at least two rows")
    counts = np.unique(np.asarray(labels), return_counts=True)[1].astype(np.float64)
    return float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
