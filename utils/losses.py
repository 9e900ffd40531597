"""The BaryIR objective (SPEC section 2), vectorised over the batch.

Notation, per sample i of a batch of B: ``z_i`` source latent, ``b_i`` WB latent,
``r_i = z_i - b_i`` residual, each ``(C, h, w)`` and flattened to one vector of
``C*h*w`` values wherever a norm or an inner product is taken; ``k_i`` the
sample's domain (degradation family), ``de_i`` its degradation id.
"""
from __future__ import annotations

from typing import Collection

import torch
import torch.nn.functional as F

from net.potentials import Potentials

# Terms an ablation may switch off (``map_loss(without=...)``, the trainer's ``--ablate``);
# "potentials" also stops the potentials' own updates (the engine skips steps 2 and 3).
ABLATABLE = ("orthogonality", "contrastive", "potentials")


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, D)``: each sample flattened and L2-normalised (``x / max(|x|, 1e-12)``)."""
    return F.normalize(x.flatten(1), dim=1)


def transport_cost(source: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """``c_i = sqrt(mean((z_i - b_i)^2))``: ``(B, C, h, w) x2 -> (B,)``."""
    return (source - bary).flatten(1).pow(2).mean(dim=1).sqrt()


def orthogonality(bary: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``o_i = sum_j <b^_i, r^_j>^2`` over the whole batch: ``(B, C, h, w) x2 -> (B,)``."""
    return (_unit_rows(bary) @ _unit_rows(residual).T).pow(2).sum(dim=1)


def contrastive(residual: torch.Tensor, de_ids: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive term on residuals, classes by degradation id: ``(B, C, h, w), (B,) -> (B,)``.

    ``-log(sum_{j: de_j = de_i} s_ij / sum_j s_ij)`` with ``s_ij = exp(<r^_i, r^_j>/T)``; the
    positives include j = i. Computed with log-sum-exp, which equals the ratio form exactly.
    """
    r = _unit_rows(residual)
    logits = (r @ r.T) / temperature
    same = de_ids.view(-1, 1) == de_ids.view(1, -1)
    log_pos = logits.masked_fill(~same, float("-inf")).logsumexp(dim=1)
    return logits.logsumexp(dim=1) - log_pos


def map_loss(restored: torch.Tensor, target: torch.Tensor, source: torch.Tensor, bary: torch.Tensor,
             residual: torch.Tensor, de_ids: torch.Tensor, domains: torch.Tensor, lambdas: torch.Tensor,
             potentials: Potentials, l1_weight: float = 10000.0, reg_weight: float = 0.05,
             temperature: float = 0.07, without: Collection[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 1 of an iteration: the loss the map (BaryNet) minimises.

    ``L = mean_i lambda_{k_i} (c_i + reg (o_i + ctr_i) - f_{k_i}(b_i)) + l1_weight * mean|y - target|``.

    Args:
        restored, target: ``(B, 3, H, W)``.
        source, bary, residual: ``(B, C, h, w)``.
        de_ids, domains: ``(B,)`` integer degradation ids and domain indices.
        lambdas: ``(K,)`` barycenter weights.
        potentials: the f_k; gradients flow through them into ``bary`` (their own
            parameters are frozen by the caller).
        without: terms of :data:`ABLATABLE` left out of the total (ablation studies; the
            trainer's ``--ablate``). Their parts are still computed and returned, for logging.
    Returns:
        ``(total, parts)``: ``parts`` has per-sample ``(B,)`` tensors ``transport``,
        ``orthogonality``, ``contrastive``, ``potential``, ``weighted`` and the scalar ``l1``.
    """
    lam = lambdas.to(bary.dtype)[domains]
    parts = {
        "transport": transport_cost(source, bary),
        "orthogonality": orthogonality(bary, residual),
        "contrastive": contrastive(residual, de_ids, temperature),
        "potential": potentials(bary, domains),
    }
    ortho, ctr, pot = parts["orthogonality"], parts["contrastive"], parts["potential"]
    if without:
        unknown = set(without) - set(ABLATABLE)
        if unknown:
            raise ValueError(f"map_loss: cannot leave out {sorted(unknown)}; ablatable terms are {ABLATABLE}")
        zero = torch.zeros_like(ortho)
        ortho = zero if "orthogonality" in without else ortho
        ctr = zero if "contrastive" in without else ctr
        pot = zero if "potentials" in without else pot
    parts["weighted"] = lam * (parts["transport"] + reg_weight * (ortho + ctr) - pot)
    parts["l1"] = (restored - target).abs().mean()
    total = parts["weighted"].mean() + l1_weight * parts["l1"]
    return total, parts


def potentials_loss(bary: torch.Tensor, domains: torch.Tensor, lambdas: torch.Tensor,
                    potentials: Potentials) -> torch.Tensor:
    """Step 2: ``mean_i lambda_{k_i} f_{k_i}(b_i)`` on the recomputed WB latents ``(B, C, h, w)``."""
    return (lambdas.to(bary.dtype)[domains] * potentials(bary, domains)).mean()


def congruence_loss(bary_last: torch.Tensor, lambdas: torch.Tensor, potentials: Potentials,
                    weight: float = 10.0) -> torch.Tensor:
    """Step 3: ``weight * (sum_k lambda_k f_k(b_last))^2`` for one sample ``b_last`` of shape ``(C, h, w)``."""
    values = potentials.all(bary_last.unsqueeze(0)).squeeze(0)
    return weight * (lambdas.to(values.dtype) * values).sum().pow(2)
