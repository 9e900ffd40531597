"""The BaryIR objective (docs/METHOD.md §2), vectorised over the batch.

Notation, per sample i of a batch of B: ``z_i`` source latent, ``b_i`` WB latent,
``r_i = z_i - b_i`` residual, each ``(C, h, w)`` and flattened to one vector of
``C*h*w`` values wherever a norm or an inner product is taken; ``k_i`` the
sample's domain (degradation family), ``de_i`` its degradation id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import torch
import torch.nn.functional as F

from net.potentials import Potentials

# Terms an ablation may switch off (``map_loss(without=...)``, the trainer's ``--ablate``);
# "potentials" also stops the potentials' own updates (the engine skips steps 2 and 3).
ABLATABLE = ("orthogonality", "contrastive", "potentials")


@dataclass(frozen=True)
class Objective:
    """Which of the authors' two training objectives an iteration optimises.

    The authors' two trainers differ (the network and the losses are otherwise the same):

    ============================  ===========  ================  ==========================
    reference script              reg_weight   contrastive_eps   potentials_steps
    ============================  ===========  ================  ==========================
    ``trainer_bary.py``           0.05         0 (exact ratio)   2 (potentials, congruence)
    ``trainer_bary_ddp.py``       0.02         1e-6              1 (both accumulated)
    ============================  ===========  ================  ==========================

    Attributes:
        reg_weight: weight of orthogonality + contrastive in the map loss.
        contrastive_eps: ``eps`` of ``-log((pos + eps) / (pos + neg + eps))``; 0 is the exact ratio.
        potentials_steps: 2 steps the potentials' optimizer on the potentials loss, then on the
            congruence loss; 1 accumulates both gradients and steps once.
    """
    reg_weight: float = 0.05
    contrastive_eps: float = 0.0
    potentials_steps: int = 2

    def __post_init__(self):
        if self.potentials_steps not in (1, 2):
            raise ValueError(f"potentials_steps must be 1 or 2, got {self.potentials_steps}")
        if not (math.isfinite(self.reg_weight) and self.reg_weight >= 0
                and math.isfinite(self.contrastive_eps) and self.contrastive_eps >= 0):
            raise ValueError(f"reg_weight and contrastive_eps must be finite and >= 0, got {self.reg_weight}, "
                             f"{self.contrastive_eps}")


# The objective of each of the authors' trainers (the default of ours of the same name).
OBJECTIVES = {"single": Objective(0.05, 0.0, 2), "ddp": Objective(0.02, 1e-6, 1)}
# The constants both trainers share (docs/METHOD.md §2): the L1 weight (--Sigma), the contrastive temperature and the
# congruence weight.
L1_WEIGHT = 10000
TEMPERATURE = 0.07
CONGRUENCE_WEIGHT = 10.0


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, D)``: each sample flattened and L2-normalised (``x / max(|x|, 1e-12)``)."""
    return F.normalize(x.flatten(1), dim=1)


def transport_cost(source: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """``c_i = sqrt(mean((z_i - b_i)^2))``: ``(B, C, h, w) x2 -> (B,)``."""
    return (source - bary).flatten(1).pow(2).mean(dim=1).sqrt()


def orthogonality(bary: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``o_i = sum_j <b^_i, r^_j>^2`` over the whole batch: ``(B, C, h, w) x2 -> (B,)``."""
    return (_unit_rows(bary) @ _unit_rows(residual).T).pow(2).sum(dim=1)


def contrastive(residual: torch.Tensor, de_ids: torch.Tensor, temperature: float = TEMPERATURE,
                eps: float = 0.0) -> torch.Tensor:
    """Supervised contrastive term on residuals, classes by degradation id: ``(B, C, h, w), (B,) -> (B,)``.

    ``-log((pos_i + eps) / (pos_i + neg_i + eps))`` with ``s_ij = exp(<r^_i, r^_j>/T)``,
    ``pos_i = sum_{j: de_j = de_i} s_ij`` (j = i included) and ``neg_i`` the rest. With
    ``eps = 0`` (the single-process reference) it is computed with log-sum-exp, which equals the
    ratio exactly; ``eps > 0`` (the DDP reference, 1e-6) needs the sums themselves
    (``s_ij <= exp(1/T)``, about 1.6e6 at T = 0.07: no overflow).
    """
    r = _unit_rows(residual)
    logits = (r @ r.T) / temperature
    same = de_ids.view(-1, 1) == de_ids.view(1, -1)
    if eps == 0:
        log_pos = logits.masked_fill(~same, float("-inf")).logsumexp(dim=1)
        return logits.logsumexp(dim=1) - log_pos
    s = logits.exp()
    pos = (s * same).sum(dim=1)
    return -torch.log((pos + eps) / (s.sum(dim=1) + eps))


def map_loss(restored: torch.Tensor, target: torch.Tensor, source: torch.Tensor, bary: torch.Tensor,
             residual: torch.Tensor, de_ids: torch.Tensor, domains: torch.Tensor, lambdas: torch.Tensor,
             potentials: Potentials, l1_weight: float = L1_WEIGHT, reg_weight: float = 0.05,
             temperature: float = TEMPERATURE, contrastive_eps: float = 0.0,
             without: Collection[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 1 of an iteration: the loss the map (BaryNet) minimises.

    ``L = mean_i lambda_{k_i} (c_i + reg (o_i + ctr_i) - f_{k_i}(b_i)) + l1_weight * mean|y - target|``.

    Args:
        restored, target: ``(B, 3, H, W)``.
        source, bary, residual: ``(B, C, h, w)``.
        de_ids, domains: ``(B,)`` integer degradation ids and domain indices.
        lambdas: ``(K,)`` barycenter weights.
        potentials: the f_k; gradients flow through them into ``bary`` (their own
            parameters are frozen by the caller).
        reg_weight, contrastive_eps: see :class:`Objective` (0.05 and 0 in the single-process
            reference, 0.02 and 1e-6 in the DDP reference).
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
        "contrastive": contrastive(residual, de_ids, temperature, contrastive_eps),
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
                    weight: float = CONGRUENCE_WEIGHT) -> torch.Tensor:
    """Step 3: ``weight * (sum_k lambda_k f_k(b_last))^2`` for one sample ``b_last`` of shape ``(C, h, w)``."""
    values = potentials.all(bary_last.unsqueeze(0)).squeeze(0)
    return weight * (lambdas.to(values.dtype) * values).sum().pow(2)
