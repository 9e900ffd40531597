"""One BaryIR training iteration: docs/METHOD.md §2's three updates (:func:`train_step`).

1. map update: the potentials frozen (``requires_grad`` off, gradients still flow through them
   into b), BaryNet forward, :func:`~utils.train.losses.map_loss`, step the map's optimizer;
2. potentials update: with the *updated* map, b recomputed by the encoder and barycenter path
   only (``BaryNet.bary_latent``, no decoder, no graph into the map),
   :func:`~utils.train.losses.potentials_loss`, step the potentials' optimizer;
3. congruence update: :func:`~utils.train.losses.congruence_loss` on the last sample's recomputed b
   (the same tensor: b does not depend on the potentials), step the potentials' optimizer again
   (the DDP reference accumulates 2 and 3 into one step: ``Objective.potentials_steps``).

``--backbone Restormer`` runs the same iteration with the L1 term only (``Sigma * mean|y - x|``).
Every update's losses are checked before its step (averaged over ranks, so all ranks agree;
:class:`LossChecks`); a non-finite value raises :class:`NonFiniteLossError`. On the fast path
(``--compile``) the loss computations run compiled (:class:`IterationLosses`) and the checks are
made once per iteration, after its updates. The epoch loop and the run are :mod:`utils.train.engine`'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from net import Potentials
from utils.compiled import begin_iteration, compile_fn, quiet_ddp_record_function_note
from utils.errors import UserError
from utils.eval.inference import autocast_context
from utils.train.distributed import DistInfo, all_reduce_sum, average_gradients
from utils.train.losses import L1_WEIGHT, OBJECTIVES, Objective, congruence_loss, map_loss, potentials_loss

MAP_TERMS = ("transport", "orthogonality", "contrastive", "potential")  # per-sample parts logged as means


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN or infinite; the message gives the epoch, the iteration, the update and its parts."""


@dataclass
class Training:
    """What an iteration updates. ``model`` may be DDP-wrapped; ``model_without_ddp`` never is.

    ``compile_mode`` other than ``"off"`` is the fast path (``--compile``, utils/compiled.py): the
    loss computations run compiled and the losses are checked once per iteration (:class:`LossChecks`).
    """
    model: nn.Module
    model_without_ddp: nn.Module
    potentials: Potentials | None
    optimizer: torch.optim.Optimizer
    potentials_optimizer: torch.optim.Optimizer | None
    lambdas: torch.Tensor
    l1_weight: float = L1_WEIGHT
    precision: str = "fp32"
    info: DistInfo = field(default_factory=DistInfo)
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    ablate: frozenset[str] = frozenset()  # terms of losses.ABLATABLE switched off (--ablate; studies only)
    objective: Objective = OBJECTIVES["single"]
    compile_mode: str = "off"
    compile_backend: str = "inductor"  # eager / aot_eager: tracing only (tests)

    def __post_init__(self):
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=self.precision == "fp16")
        self.steps = IterationLosses(self)

    def autocast(self):
        return autocast_context(self.info.device, self.precision)


class IterationLosses:
    """The loss computations of an iteration, eager or compiled (``training.compile_mode``).

    Each is a function of tensors only, so a compiled one is traced once per shape:
    ``map(degraded, target, de_ids, domains) -> (loss, logged)``, ``bary(degraded) -> b``,
    ``potentials(b, domains) -> loss`` and ``congruence(b_last) -> loss``.
    """

    def __init__(self, training: Training):
        self.training = training
        mode, backend = training.compile_mode, training.compile_backend
        if mode != "off" and isinstance(training.model, nn.parallel.DistributedDataParallel):
            quiet_ddp_record_function_note()  # dynamo's note on DDP.forward's profiler range, once per rank
        self.map = compile_fn(self._map, mode, backend)
        self.bary = compile_fn(self._bary, mode, backend)
        self.potentials = compile_fn(self._potentials, mode, backend)
        self.congruence = compile_fn(self._congruence, mode, backend)
        self.compiled = False  # whether a compiled iteration has run in this process (its first one compiles)

    def _map(self, degraded: torch.Tensor, target: torch.Tensor, de_ids: torch.Tensor,
             domains: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step 1's loss and its logged parts (scalars); ``(B, 3, H, W)`` images, ``(B,)`` ids."""
        training, pots, obj = self.training, self.training.potentials, self.training.objective
        with training.autocast():
            out = training.model(degraded)
            if pots is None:  # the L1-only baselines
                l1 = (_full(out) - target).abs().mean()
                return training.l1_weight * l1, {"l1": l1}
            loss, parts = map_loss(_full(out.restored), target, _full(out.source_latent), _full(out.bary_latent),
                                   _full(out.residual), de_ids, domains, training.lambdas, pots,
                                   l1_weight=training.l1_weight, reg_weight=obj.reg_weight,
                                   contrastive_eps=obj.contrastive_eps, without=training.ablate)
        return loss, {"l1": parts["l1"]} | {k: parts[k].mean() for k in MAP_TERMS}

    def _bary(self, degraded: torch.Tensor) -> torch.Tensor:
        """The WB latents recomputed by the (updated) map, without a graph: ``(B, 3, H, W) -> (B, C, h, w)``."""
        with torch.no_grad(), self.training.autocast():
            return _full(self.training.model_without_ddp.bary_latent(degraded))

    def _potentials(self, bary: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        with self.training.autocast():
            return potentials_loss(bary, domains, self.training.lambdas, self.training.potentials)

    def _congruence(self, bary_last: torch.Tensor) -> torch.Tensor:
        with self.training.autocast():
            return congruence_loss(bary_last, self.training.lambdas, self.training.potentials)


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _rank_mean(t: torch.Tensor, info: DistInfo) -> list[float]:
    """``(N,)`` -> its mean over ranks as N floats (one all-reduce, one read-back): a NaN on any rank reaches
    every rank."""
    all_reduce_sum(t, info)
    return (t / info.world_size).cpu().tolist()


def _agree(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Mean over ranks of each scalar (:func:`_rank_mean`)."""
    t = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    return dict(zip(values, _rank_mean(t, info)))


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on any (so all ranks stop after the same iteration)."""
    if not info.distributed:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    return bool(all_reduce_sum(t, info).item() > 0)


class LossChecks:
    """An iteration's logged losses: averaged over ranks and refused when not finite.

    Eager (``deferred=False``): each update's values are read back and checked *before* the
    update is applied, one host synchronisation per update. Deferred (the compiled path): they stay
    on the device until :meth:`settle`, after the iteration's updates, one synchronisation per
    iteration; a non-finite value then stops the run after weights in memory took the bad update,
    but before anything is saved, so no checkpoint ever holds it.
    """

    def __init__(self, info: DistInfo, where: str, deferred: bool, precision: str = "fp32"):
        self.info, self.where, self.deferred = info, where, deferred
        self.precision = precision  # the advice names --precision fp32 only to a run that is not fp32 already
        self.values: dict[str, float] = {}
        self._pending: list[tuple[str, list[str], torch.Tensor]] = []

    def before_update(self, update: str, logged: dict[str, torch.Tensor]) -> None:
        if not self.deferred:
            agreed = _agree(logged, self.info)
            self._refuse(agreed, update, applied=False)
            self.values |= agreed
            return
        # a fresh tensor: a compiled graph's outputs may be overwritten when it replays
        stacked = torch.stack([v.detach().float().reshape(()) for v in logged.values()])
        self._pending.append((update, list(logged), stacked))

    def settle(self) -> dict[str, float]:
        """Every value of the iteration as floats (reading back the deferred ones, in one go)."""
        if self._pending:
            t = _rank_mean(torch.cat([stacked for _, _, stacked in self._pending]), self.info)
            pos = 0
            for update, names, _ in self._pending:
                agreed = dict(zip(names, t[pos:pos + len(names)]))
                pos += len(names)
                self._refuse(agreed, update, applied=True)
                self.values |= agreed
            self._pending.clear()
        return self.values

    def _refuse(self, values: dict[str, float], update: str, applied: bool) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if not bad:
            return
        parts = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        when = ("Training stopped after this iteration (with --compile the losses are checked once per "
                "iteration), before anything was saved" if applied else "Training stopped before this update")
        raise NonFiniteLossError(
            f"non-finite {update} loss at {self.where} ({', '.join(bad)} not finite): {parts}. {when}; the last "
            f"checkpoint was not overwritten. {_nan_advice(self.precision)}")


def _nan_advice(precision: str) -> str:
    """What to try after a non-finite loss: ``--precision fp32`` only where the run used another precision
    (the demo, which has no --precision flag, always trains in fp32)."""
    lower = "Lower --lr, try --precision fp32," if precision != "fp32" else "Lower --lr"
    return f"{lower} or resume from the last checkpoint."


def _update(training: Training, checks: LossChecks, update: str, loss: torch.Tensor,
            logged: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
            before_step: Callable[[], None] | None = None) -> None:
    """Check ``logged`` (:class:`LossChecks`), then backward ``loss`` and step ``optimizer``.

    ``before_step`` runs between backward and step (gradient averaging over ranks, dropping the
    gradients of absent potentials).
    """
    checks.before_update(update, logged)
    scaler = training.scaler
    scaler.scale(loss).backward()
    if before_step is not None:
        before_step()
    scaler.step(optimizer)
    scaler.update()


def _full(t: torch.Tensor) -> torch.Tensor:
    """Half-precision autocast outputs up to float32 (same shape); float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def present_domains(domains: torch.Tensor, k: int, info: DistInfo) -> list[int]:
    """The domains with at least one sample in this iteration's batch on any rank."""
    counts = torch.bincount(domains.detach().cpu().long(), minlength=k)[:k]
    if info.distributed:  # NCCL reduces device tensors: one round trip, one sync
        counts = all_reduce_sum(counts.to(info.device), info).cpu()
    return [i for i in range(k) if counts[i] > 0]


def drop_absent_gradients(pots: Potentials, present: list[int]) -> None:
    """``.grad = None`` for the f_k of absent domains: the optimizer then leaves their
    parameters *and* its state for them alone, as in the reference, where they get no gradient."""
    for k, f in enumerate(pots.potentials):
        if k not in present:
            for p in f.parameters():
                p.grad = None


def train_step(training: Training, batch, where: str = "iteration", inject_nan: bool = False) -> dict[str, float]:
    """One iteration on ``batch = (degraded, target, de_ids, domains)``.

    Returns rank-averaged scalars: ``map``, ``l1``, ``transport``, ``orthogonality``,
    ``contrastive``, ``potential`` (mean f_k(b) in the map update), ``potentials``,
    ``congruence``. ``where`` names the iteration in error messages; ``inject_nan`` is for tests.
    """
    info, pots = training.info, training.potentials
    begin_iteration(training.compile_mode)
    checks = LossChecks(info, where, deferred=training.compile_mode != "off", precision=training.precision)
    degraded, target, de_ids, domains = (t.to(info.device, non_blocking=True) for t in batch)
    if training.channels_last:
        degraded = degraded.contiguous(memory_format=torch.channels_last)

    # 1. map update (potentials frozen; gradients reach b through them)
    training.optimizer.zero_grad(set_to_none=True)
    if pots is not None:
        _requires_grad(pots, False)
    loss, logged = training.steps.map(degraded, target, de_ids, domains)
    if inject_nan:
        loss = loss * float("nan")
    _update(training, checks, "map", loss, {"map": loss, **logged}, training.optimizer)
    if pots is not None and "potentials" not in training.ablate:  # ablated: the map trains on transport cost
        _requires_grad(pots, True)
        update_potentials(training, checks, degraded, domains, batch[3])
    return checks.settle()


def update_potentials(training: Training, checks: LossChecks, degraded: torch.Tensor, domains: torch.Tensor,
                      domains_cpu: torch.Tensor) -> None:
    """Steps 2-3: the potentials and congruence losses on b recomputed by the updated map (encoder
    and barycenter path only), as two steps or one accumulated step (``training.objective``).

    ``domains_cpu`` (the batch's, before the device move) says which f_k are present without a
    device sync; absent ones get no gradient in the potentials step.
    """
    info, pots, opt, steps = training.info, training.potentials, training.potentials_optimizer, training.steps
    bary = steps.bary(degraded)
    present = present_domains(domains_cpu, pots.num_potentials, info)

    def sync(drop_absent: bool) -> Callable[[], None]:
        def run():
            average_gradients(pots.parameters(), info)
            if drop_absent:
                drop_absent_gradients(pots, present)
        return run

    opt.zero_grad(set_to_none=True)
    pot_loss = steps.potentials(bary, domains)
    if training.objective.potentials_steps == 2:  # single-process reference: two steps
        _update(training, checks, "potentials", pot_loss, {"potentials": pot_loss}, opt, sync(True))
        opt.zero_grad(set_to_none=True)
        cong = steps.congruence(bary[-1])
        _update(training, checks, "congruence", cong, {"congruence": cong}, opt, sync(False))
        return
    # DDP reference: both gradients accumulated, one step (congruence reaches every f_k)
    cong = steps.congruence(bary[-1])
    _update(training, checks, "potentials", pot_loss + cong, {"potentials": pot_loss, "congruence": cong}, opt,
            sync(False))
