"""The BaryIR training engine shared by ``trainer_bary.py`` and ``trainer_bary_ddp.py``.

One iteration is docs/METHOD.md §2's three updates (:func:`train_step`):

1. map update: the potentials frozen (``requires_grad`` off, gradients still flow through them
   into b), BaryNet forward, :func:`~utils.train.losses.map_loss`, step the map's optimizer;
2. potentials update: with the *updated* map, b recomputed by the encoder and barycenter path
   only (``BaryNet.bary_latent``, no decoder, no graph into the map),
   :func:`~utils.train.losses.potentials_loss`, step the potentials' optimizer;
3. congruence update: :func:`~utils.train.losses.congruence_loss` on the last sample's recomputed b
   (the same tensor: b does not depend on the potentials), step the potentials' optimizer again.

``--backbone Restormer`` runs the same loop with the L1 term only (``Sigma * mean|y - x|``).

Every update's losses are checked before its step (summed over ranks, so all ranks agree);
a non-finite value raises :class:`NonFiniteLossError` and nothing is saved after it. On the fast
path (``--compile``, utils/compiled.py) the loss computations run compiled and the checks
are made once per iteration, after its updates (:class:`LossChecks`): still before any save.
SIGTERM/SIGINT set a flag that all ranks agree on after each iteration: they stop after the
same iteration, rank 0 saves, and the run exits 0. One process and ``torchrun`` run the same code
(``world_size`` 1 is the special case).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import random
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from net import Potentials
from net.presets import WB_BACKBONES, build_model
from utils.checkpoints import (
    LOG_NAME,
    CheckpointError,
    LoopState,
    all_finite,
    is_training_checkpoint,
    plain_args,
    read_checkpoint,
    restore_training_state,
    resume_candidates,
    save_training_checkpoint,
    training_checkpoint,
)
from utils.compiled import CompileError, begin_iteration, check_compile, compile_cache_dir, compile_fn
from utils.data.doctor import trainer_check
from utils.dataset_utils import (
    LAYOUT,
    MixedDegradationDataset,
    ResumableSampler,
    build_train_dataset,
    collate,
    iterations_per_epoch,
    parse_repeats,
)
from utils.errors import UserError, run_main
from utils.eval.evaluation import EvaluationStopped, evaluate_set
from utils.eval.inference import autocast_context, check_precision, slow_precision_note
from utils.eval.protocol import NonFiniteOutput, Protocol
from utils.eval.tasks import EvalItem, EvalSet
from utils.output_lock import OutputFolderBusy, OutputLock
from utils.runtime import apply_gpus_flag, to_channels_last, tune_cpu_allocator
from utils.train.distributed import (
    DistInfo,
    all_reduce_sum,
    average_gradients,
    barrier,
    broadcast_int,
    broadcast_module,
    broadcast_text,
    cleanup,
    gather_ints,
    init_distributed_mode,
    weights_digest,
)
from utils.train.losses import OBJECTIVES, Objective, congruence_loss, map_loss, potentials_loss
from utils.train.options import model_overrides, resolve_data_file_dir, resolve_objective, run_dir
from utils.train.run_log import (
    LOSS_LABELS,
    Console,
    JsonlLog,
    Rate,
    discarded_log,
    plot_loss_curves,
    progress,
    progress_line,
    rewind_log,
)
from utils.train.setup import (
    FIG_NAME,
    ConfigError,
    check_args,
    check_memory,
    load_start,
    resume_outputs,
    start_fresh_outputs,
    validation_pairs,
)
from utils.train.tensorboard_log import RecordLogs, TensorBoardLog, open_tensorboard, require_tensorboard

MAP_TERMS = ("transport", "orthogonality", "contrastive", "potential")  # per-sample parts logged as means


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN or infinite; the message gives the epoch, the iteration and every part."""


# --------------------------------------------------------------------------- schedule and optimizers

def lr_at(base_lr: float, epoch: int, step: int) -> float:
    """Learning rate of both optimizers at 1-based ``epoch``: ``base * 0.1**((epoch-1)//step) / 2``."""
    return base_lr * 0.1 ** ((epoch - 1) // step) / 2


def build_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    raise ConfigError(f"--optimizer must be RMSprop or Adam, got {name!r}")


def set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr


# --------------------------------------------------------------------------- one iteration

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
    l1_weight: float = 10000.0
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
        self.map = compile_fn(self._map, mode, backend)
        self.bary = compile_fn(self._bary, mode, backend)
        self.potentials = compile_fn(self._potentials, mode, backend)
        self.congruence = compile_fn(self._congruence, mode, backend)

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

    def __init__(self, info: DistInfo, where: str, deferred: bool):
        self.info, self.where, self.deferred = info, where, deferred
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
            f"checkpoint was not overwritten. Lower --lr, try --precision fp32, or resume from the last checkpoint.")


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
    """Half-precision autocast outputs up to float32; float32/float64 as they are."""
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
    checks = LossChecks(info, where, deferred=training.compile_mode != "off")
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


# --------------------------------------------------------------------------- stop requests

class StopRequest:
    """SIGTERM/SIGINT set a flag the loop reads after each iteration; a second signal aborts."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # asked twice: stop now, without a checkpoint
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process, which finishes the iteration
    (it may still need their batch), saves, and shuts them down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_loader_workers(timeout: float = 5.0) -> None:
    """Kill this process's loader workers (daemonic children).

    After a failure the loader that owns them may stay referenced by the traceback, and the exit
    handler's polite SIGTERM, which the workers ignore (:func:`_ignore_stop_signals`), would leave the
    exit waiting for them forever. The loader's SIGCHLD handler, which raises when a worker dies, is
    set aside meanwhile so every worker is reached.
    """
    workers = [c for c in multiprocessing.active_children() if c.daemon]
    if not workers:
        return
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if main_thread else None
    try:
        for child in workers:
            child.kill()
        for child in workers:
            child.join(timeout)
    finally:
        if main_thread:
            signal.signal(signal.SIGCHLD, old)


# --------------------------------------------------------------------------- epochs

def train_one_epoch(training: Training, loader: DataLoader, state: LoopState, iters_in_epoch: int, lr: float,
                    *, stop: StopRequest, log: JsonlLog | RecordLogs, console: Console, log_every: int = 10,
                    save_every: int = 0, save: Callable[[LoopState], None] | None = None,
                    nan_at: int = 0) -> tuple[dict[str, float], bool]:
    """Train from ``state.iteration`` to ``iters_in_epoch``; ``state`` advances in place.

    Returns ``(mean losses of the epoch's iterations so far, stopped)``: the means include those run before
    a mid-epoch resume (``state.loss_sums``); ``stopped`` is True when a signal asked to stop (the caller
    saves and exits).
    """
    training.model.train()
    if training.potentials is not None:
        training.potentials.train()
    sums = state.loss_sums  # the epoch's so far: carried by a mid-epoch checkpoint across a resume
    bar = progress(loader, total=iters_in_epoch, initial=state.iteration, desc=f"epoch {state.epoch}",
                   enabled=console.enabled)
    stopped = False
    rate = Rate()
    tic = time.perf_counter()
    try:
        # zip asks range first: no batch is loaded beyond the epoch's (possibly capped) length
        for _, batch in zip(range(iters_in_epoch - state.iteration), bar):
            where = f"epoch {state.epoch}, iteration {state.iteration + 1} (global step {state.global_step + 1})"
            losses = train_step(training, batch, where, inject_nan=nan_at > 0 and state.global_step + 1 == nan_at)
            state.iteration += 1
            state.global_step += 1
            state.loss_count += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            toc = time.perf_counter()
            rate.update(toc - tic)
            if log_every > 0 and (state.iteration % log_every == 0 or state.iteration == 1):
                log.write({"kind": "iter", "epoch": state.epoch, "iteration": state.iteration,
                           "global_step": state.global_step, "lr": lr, **losses, "sec": toc - tic})
                shown = {label: f"{losses[k]:.4g}" for k, label in LOSS_LABELS
                         if k in ("l1", "transport", "potentials", "congruence") and k in losses}
                bar.set_postfix(shown | {"lr": f"{lr:.2e}"}, refresh=False)
                if bar.disable:  # no terminal: one plain line instead of the bar
                    console(progress_line(state.epoch, state.iteration, iters_in_epoch, losses, lr, rate))
            tic = toc
            stopped = any_rank(stop.requested, training.info)
            if stopped:
                break
            if (save is not None and save_every > 0 and state.global_step % save_every == 0
                    and state.iteration < iters_in_epoch):
                save(state)
    finally:
        bar.close()
    return {k: v / max(state.loss_count, 1) for k, v in sums.items()}, stopped


def evaluate(model: nn.Module, pairs: list[tuple[Path, Path]], info: DistInfo,
             precision: str = "fp32") -> dict[str, float] | None:
    """Mean PSNR and SSIM over ``pairs`` (``{"psnr", "ssim"}``, None without pairs) by the tester's own
    scoring (:func:`utils.eval.evaluation.evaluate_set`, ``--protocol reference``, through ``restore()``),
    shared out over the ranks: the numbers logged as ``val_psnr``/``val_ssim`` are the ones
    ``tester_bary.py --degset/--tarset`` prints for the same checkpoint.
    """
    items = [EvalItem(deg.name, tar, deg) for deg, tar in pairs][info.rank::info.world_size]
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # image sizes vary: tuning kernels for each would cost more
    non_finite = ""
    try:
        scored = evaluate_set(model, EvalSet("validation", "validation", items), Protocol(precision=precision),
                              info.device, progress=False)["images"] if items else []
    except EvaluationStopped as stop:
        if not isinstance(stop.__cause__, NonFiniteOutput):
            raise
        scored, non_finite = [], str(stop)  # every rank still meets the all-reduce below
    finally:
        torch.backends.cudnn.benchmark = benchmark
    t = torch.tensor([sum(r["psnr"] for r in scored), sum(r["ssim"] for r in scored), float(len(scored)),
                      float(bool(non_finite))], dtype=torch.float64, device=info.device)
    all_reduce_sum(t, info)
    if t[3] > 0:  # a NaN or inf output: no score this epoch, said; the checkpoint is written already
        Console(info.is_main).warn(f"validation skipped this epoch: {non_finite or 'a rank restored a non-finite'}"
                                   f" output; training goes on (the weights are finite: checked at each save)")
        return None
    return {"psnr": float(t[0] / t[2]), "ssim": float(t[1] / t[2])} if t[2] > 0 else None


def main(args: argparse.Namespace) -> int:
    """Train as ``args`` say. Returns 0 (also after SIGTERM/SIGINT, with a checkpoint written)."""
    gpus_note = apply_gpus_flag(args.gpus)  # before anything touches CUDA
    info = init_distributed_mode(args.device, cuda=getattr(args, "cuda", False))  # the reference's --cuda
    if gpus_note:
        Console(info.is_main).warn(gpus_note)
        args.gpus = None
    try:
        return train(args, info)
    except BaseException:
        stop_loader_workers()
        raise
    finally:
        cleanup(info)


def train(args: argparse.Namespace, info: DistInfo) -> int:
    """The whole run, top to bottom. Returns 0 (also after SIGTERM/SIGINT, with a checkpoint written)."""
    console = Console(info.is_main)
    k, objective, ablate = check_run(args, info)
    check_memory(args, k, info, console)
    dry = getattr(args, "dry_run", False)
    with contextlib.nullcontext() if dry else hold_output_folder(Path(args.output_dir), info):
        ckpt_path, obj = where_to_start(args, console, info)
        seed = agree_seed(args, obj, info, console)
        dataset = build_dataset(args, seed, console)
        val_pairs = validation_pairs(args, console)
        model, pots, state, resumed = build_networks(args, k, ckpt_path, obj, info, console)
        training = build_training(args, model, pots, dataset, info, objective, ablate, state.epoch, console)
        if resumed is not None:
            restore_training_state(resumed, training.optimizer, training.potentials_optimizer, training.scaler,
                                   source=str(ckpt_path))
            state = continue_with_batch(resumed, args, info, state, console)
            warn_if_the_data_changed(resumed, dataset, state, console)
        sampler, loader = build_loader(args, dataset, seed, info)
        iters = iterations_per_epoch(sampler.num_samples, args.batchSize, args.iters_per_epoch)
        if state.iteration >= iters:  # a mid-epoch checkpoint at or past this run's smaller --iters-per-epoch
            console.warn(f"the checkpoint is {state.iteration} iterations into epoch {state.epoch}, and this run's "
                         f"epochs have {iters}: epoch {state.epoch} ends there, without more training (its "
                         f"checkpoint, record and validation come next)")
        if state.epoch > args.nEpochs:  # before anything is moved or written: a no-op changes nothing
            console(f"=> nothing to do: epoch {state.epoch} is past --nEpochs {args.nEpochs}; nothing was written")
            return 0
        if dry:
            console(f"=> dry run: the data, the networks{', the checkpoint' if ckpt_path else ''} and the memory "
                    f"check out; it would train epochs {state.epoch}..{args.nEpochs} of {iters} iterations into "
                    f"{args.output_dir}. Nothing was written; drop --dry-run to train")
            return 0
        output_dir = Path(args.output_dir)
        log = open_log(output_dir, resumed, ckpt_path, state, info, console)
        log.write(run_record(args, dataset, objective, state, resumed is not None, info))
        board = open_tensorboard(args, output_dir, resumed is not None, state.global_step, dataset, val_pairs,
                                 info.is_main, console)
        log = RecordLogs(log, board)  # the log's records go to TensorBoard too
        save = Saver(training, output_dir, run_meta(args, model, dataset, info), iters, args.keep, console, board)
        stop = StopRequest().install()
        try:
            for epoch in range(state.epoch, args.nEpochs + 1):
                if state.epoch != epoch:
                    state = LoopState(epoch, 0, state.global_step)
                lr = lr_at(args.lr, epoch, args.step)
                set_lr([training.optimizer, training.potentials_optimizer], lr)
                for part in (sampler, dataset):
                    part.set_epoch(epoch)
                sampler.set_start(state.iteration * args.batchSize)
                console(f"Epoch={epoch}, lr={lr:.3g}, {iters} iterations")
                tic = time.perf_counter()
                means, stopped = train_one_epoch(
                    training, loader, state, iters, lr, stop=stop, log=log, console=console, log_every=args.log_every,
                    save_every=args.save_every, save=save, nan_at=args.debug_nan_at)
                if state.iteration < iters:  # stopped mid-epoch
                    save(state)
                    console(f"=> stopped by signal {stop.signum} at epoch {epoch}, iteration {state.iteration}; "
                            f"continue with --resume auto (or --resume <checkpoint>)")
                    return 0
                save(state)  # first: validation reads the user's images and may fail, the epoch's training must not
                val = evaluate(model, val_pairs, info, args.precision) if val_pairs else None
                end_of_epoch(training, log, console, epoch, state, iters, lr, means, val, time.perf_counter() - tic)
                board.preview(model, state.global_step, info.device, args.precision)
                if info.is_main:
                    draw_loss_figure(output_dir / LOG_NAME, Path(args.figs_dir or output_dir) / FIG_NAME, console)
                if stopped or any_rank(stop.requested, info):  # a signal during validation or saving
                    console(f"=> stopped by signal {stop.signum} after epoch {epoch}")
                    return 0
                state = LoopState(epoch + 1, 0, state.global_step)
        finally:
            stop.restore()
            board.close()
        return 0


# --------------------------------------------------------------------------- the run's parts, in order

@contextlib.contextmanager
def hold_output_folder(folder: Path, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds ``folder``'s :class:`~utils.output_lock.OutputLock` for the run; when another
    trainer holds it, every rank stops with :class:`~utils.output_lock.OutputFolderBusy`."""
    lock, busy = OutputLock(folder), None
    if info.is_main:
        try:
            lock.acquire()
        except OutputFolderBusy as exc:
            busy = exc
    if broadcast_int(busy is not None, info):
        raise busy or OutputFolderBusy(f"--output-dir {folder} is in use by another trainer (see rank 0's error)")
    try:
        yield
    finally:
        lock.release()



def check_run(args: argparse.Namespace, info: DistInfo) -> tuple[int, Objective, frozenset[str]]:
    """The flag checks that need the device too; returns K, the objective and the ablated terms."""
    k = check_args(args)
    try:
        args.output_dir = run_dir(args, k)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        objective = resolve_objective(args)
    except ValueError as exc:
        raise ConfigError(f"--reg-weight/--potentials-steps/--contrastive-eps: {exc}") from None
    ablate = frozenset(getattr(args, "ablate", None) or ())
    if ablate and args.backbone not in WB_BACKBONES:
        raise ConfigError(f"--ablate {' '.join(sorted(ablate))} switches off BaryNet's terms; --backbone "
                          f"{args.backbone} has none (drop --ablate)")
    try:
        check_precision(info.device, args.precision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    slow = slow_precision_note(info.device, args.precision)
    if slow:
        Console(info.is_main).warn(slow)
    if getattr(args, "tensorboard", False):  # every rank: all stop alike
        require_tensorboard()
    try:
        check_compile(getattr(args, "compile", "off"), info.device, getattr(args, "compile_backend", "inductor"))
    except CompileError as exc:
        raise ConfigError(str(exc)) from None
    return k, objective, ablate


def where_to_start(args: argparse.Namespace, console: Console, info: DistInfo = DistInfo()) -> tuple[Path | None, Any]:
    """The checkpoint ``--resume`` names (or none) and its contents.

    With ``auto`` or a folder, a newest checkpoint that cannot be read (damaged, truncated) is passed
    over with a warning for the one before it; an explicit file that cannot be read is an error.
    Rank 0 chooses and every other rank reads the file it chose: ranks that judged the folder on their
    own (another node's view of it, a file damaged for one reader) could start from different states.
    """
    if info.distributed and not info.is_main:
        chosen = broadcast_text("", info)
        if chosen == _NO_START:
            raise CheckpointError("rank 0 could not choose the checkpoint to start from (its error says why)")
        if not chosen:
            return None, None
        if not Path(chosen).is_file():
            raise CheckpointError(f"rank {info.rank} cannot see {chosen}, the checkpoint rank 0 resumes: keep "
                                  f"--output-dir (and --resume) on a file system every node shares")
        return Path(chosen), read_checkpoint(chosen)
    try:
        path, obj = _choose_start(args, console)
    except BaseException:
        broadcast_text(_NO_START, info)  # the other ranks stop too, instead of waiting for a path
        raise
    broadcast_text(str(path) if path is not None else "", info)
    return path, obj


_NO_START = "\0"  # what rank 0 broadcasts when choosing the checkpoint failed (no path is a NUL byte)


def _choose_start(args: argparse.Namespace, console: Console) -> tuple[Path | None, Any]:
    candidates, note = resume_candidates(args.resume, Path(args.output_dir))
    if note:
        console(note)
    for i, path in enumerate(candidates):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as exc:
            if i + 1 == len(candidates):
                raise
            console.warn(f"{exc}\n!! Falling back to the checkpoint before it, {candidates[i + 1].name}; "
                         f"the iterations since then are trained again")
    return None, None


def agree_seed(args: argparse.Namespace, obj: Any, info: DistInfo, console: Console) -> int:
    """The run's seed (a resumed run keeps its own), the same on every rank; seeds every generator."""
    seed = args.seed
    if obj is not None and is_training_checkpoint(obj):
        old = (obj.get("args") or {}).get("seed", seed)
        if old != seed:
            console(f"=> keeping the resumed run's seed {old} (not --seed {seed}) so the data order continues")
        seed = int(old)
    seed = broadcast_int(seed, info)
    args.seed = seed
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return seed


def build_dataset(args: argparse.Namespace, seed: int, console: Console) -> MixedDegradationDataset:
    """The mixed-degradation training set the flags describe; prints its per-type table."""
    dirs = {fam: getattr(args, LAYOUT[fam][0].lstrip("-")) for fam in LAYOUT}
    dataset = build_train_dataset(
        args.de_type, dirs, args.patch_size, seed=seed, data_file_dir=resolve_data_file_dir(args.data_file_dir),
        skip_bad=args.skip_bad_files, check=args.check_images, log=console,
        progress=lambda it, n: progress(it, n, "checking images", enabled=console.enabled),
        repeats=parse_repeats(args.repeat), strict_ids=args.strict_ids)
    console("=> training data (one epoch):")
    for line in dataset.report():
        console("   " + line)
    return dataset


def build_networks(args: argparse.Namespace, k: int, ckpt_path: Path | None, obj: Any, info: DistInfo,
                   console: Console) -> tuple[nn.Module, Potentials | None, LoopState, dict | None]:
    """BaryNet (or a baseline) and its potentials, with their starting weights, on the device."""
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest kernels once
    model = build_model(args.backbone, args.preset, **model_overrides(args))
    pots = Potentials(k, model.config["dim"] * 8, args.patch_size) if args.backbone in WB_BACKBONES else None
    state, resumed = load_start(args, ckpt_path, obj, model, pots, console)
    # channels-last activations: oneDNN's and cuDNN's depthwise and 1x1 convolutions prefer them
    to_channels_last(model, info.device)
    if pots is not None:
        pots.to(info.device)
        broadcast_module(pots, info)
    n_params = sum(p.numel() for p in model.parameters())
    console(f"=> {args.backbone} ({args.preset}, {n_params / 1e6:.2f} M parameters), K={k} sources, "
            f"patch {args.patch_size}, batch {args.batchSize} x {info.world_size} process(es), "
            f"{args.optimizer}, {args.precision} on {info.device}")
    return model, pots, state, resumed


def build_training(args: argparse.Namespace, model: nn.Module, pots: Potentials | None,
                   dataset: MixedDegradationDataset, info: DistInfo, objective: Objective, ablate: frozenset[str],
                   epoch: int, console: Console) -> Training:
    """Optimizers (at ``epoch``'s learning rate), the DDP wrapper and the objective: what an iteration updates."""
    lr = lr_at(args.lr, epoch, args.step)
    optimizer = build_optimizer(args.optimizer, model.parameters(), lr)
    pot_optimizer = build_optimizer(args.optimizer, pots.parameters(), lr) if pots is not None else None
    ddp_model = model
    if info.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                            else None)
    lambdas = torch.tensor(dataset.lambdas, dtype=torch.float32, device=info.device)
    if pots is not None:
        console(f"=> objective {args.objective}: reg_weight {objective.reg_weight}, contrastive_eps "
                f"{objective.contrastive_eps:g}, potentials_steps {objective.potentials_steps}")
    if ablate:
        console(f"=> ablation: the map loss leaves out {', '.join(sorted(ablate))}")
    mode = getattr(args, "compile", "off")
    if mode != "off":
        console(f"=> --compile {mode}: the first iteration compiles the losses' graphs (minutes; cached under "
                f"{compile_cache_dir()} for later runs); losses are checked once per iteration")
    return Training(ddp_model, model, pots, optimizer, pot_optimizer, lambdas, l1_weight=args.Sigma,
                    precision=args.precision, info=info, channels_last=True, ablate=ablate, objective=objective,
                    compile_mode=mode, compile_backend=getattr(args, "compile_backend", "inductor"))


def continue_with_batch(resumed: dict, args: argparse.Namespace, info: DistInfo, state: LoopState,
                        console: Console) -> LoopState:
    """Where a run resumed mid-epoch continues when its batch (``--batchSize`` x processes) changed: the
    samples the checkpoint had used, ``iteration x batch x processes`` of the epoch's order, counted in
    iterations of the new batch (rounded down: at most one new batch is seen twice, none is skipped).
    Unchanged otherwise."""
    was = (resumed.get("args", {}).get("batchSize"), resumed.get("world_size"))
    now = (args.batchSize, info.world_size)
    if not resumed["iteration"] or was == now or None in was:
        return state
    used = int(resumed["iteration"]) * was[0] * was[1]
    iteration = used // (now[0] * now[1])
    console.warn(f"resuming mid-epoch with batch {now[0]} x {now[1]} process(es) where the checkpoint ran "
                 f"{was[0]} x {was[1]}: epoch {state.epoch} continues after the {used} samples used, at iteration "
                 f"{iteration + 1} of the new batch ({used - iteration * now[0] * now[1]} sample(s) seen again); its "
                 f"batches are not those the interrupted run would have drawn")
    return replace(state, iteration=iteration)  # the losses summed so far stay the epoch's


def warn_if_the_data_changed(resumed: dict, dataset: MixedDegradationDataset, state: LoopState,
                             console: Console) -> None:
    """Say so when the training images per domain differ from the checkpoint's (images added or removed
    since): the barycenter weights lambda follow the counts, and a resumed epoch's order is not the one the
    interrupted run was drawing from, so the run is no longer the one an uninterrupted run would train."""
    saved = resumed.get("domain_counts")
    if not isinstance(saved, (list, tuple)) or list(saved) == list(dataset.domain_counts):
        return
    where = (f"the rest of epoch {state.epoch} draws from a new order (some samples may be seen twice or not at "
             f"all), and " if state.iteration else "")
    console.warn(f"the training data changed since the checkpoint: samples per epoch and domain "
                 f"{list(saved)} there, {list(dataset.domain_counts)} now ({', '.join(dataset.families)}); {where}"
                 f"lambda is now {', '.join(f'{v:.4g}' for v in dataset.lambdas)}")


def build_loader(args: argparse.Namespace, dataset: MixedDegradationDataset, seed: int,
                 info: DistInfo) -> tuple[ResumableSampler, DataLoader]:
    sampler = ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=seed, shuffle=True)
    # Workers get a fresh copy of the dataset (with its epoch) each epoch: no persistent workers.
    loader = DataLoader(dataset, batch_size=args.batchSize, sampler=sampler, num_workers=args.threads,
                        collate_fn=collate, pin_memory=info.device.type == "cuda", drop_last=False,
                        persistent_workers=False, worker_init_fn=_ignore_stop_signals)
    return sampler, loader


def open_log(output_dir: Path, resumed: dict | None, ckpt_path: Path | None, state: LoopState, info: DistInfo,
             console: Console) -> JsonlLog:
    """The run's log, once the folder holds no other run's files. A fresh run moves an earlier run's files
    apart (:func:`start_fresh_outputs`), a resumed one any other timeline's (:func:`resume_outputs`); a
    resumed run then moves the records past its checkpoint (training lost when the run stopped, about to be
    redone) aside (:func:`~utils.train.run_log.rewind_log`), so every iteration is logged once."""
    if info.is_main and resumed is None:
        start_fresh_outputs(output_dir, console)
    elif info.is_main:
        resume_outputs(output_dir, ckpt_path, (int(resumed["epoch"]), int(resumed["iteration"])), console)
        moved = rewind_log(output_dir / LOG_NAME, state.global_step)
        if moved:
            console(f"=> {moved} log record(s) past global step {state.global_step} (training after the "
                    f"checkpoint, lost when the run stopped) moved to {discarded_log(output_dir / LOG_NAME).name}")
    return JsonlLog(output_dir / LOG_NAME, enabled=info.is_main)


def run_meta(args: argparse.Namespace, model: nn.Module, dataset: MixedDegradationDataset,
             info: DistInfo) -> dict[str, Any]:
    """What every checkpoint of the run records beside the states."""
    return {"model_config": dict(model.config), "backbone": args.backbone, "preset": args.preset,
            "lambdas": [float(v) for v in dataset.lambdas], "domains": list(dataset.families),
            "domain_counts": list(dataset.domain_counts), "world_size": info.world_size, "args": plain_args(args)}


def run_record(args: argparse.Namespace, dataset: MixedDegradationDataset, objective: Objective, state: LoopState,
               resumed: bool, info: DistInfo) -> dict[str, Any]:
    """The log's ``run`` record: one per start."""
    return {"kind": "run", "start_epoch": state.epoch, "start_iteration": state.iteration,
            "global_step": state.global_step, "resumed": resumed,
            "objective": args.objective, "reg_weight": objective.reg_weight,
            "contrastive_eps": objective.contrastive_eps, "potentials_steps": objective.potentials_steps,
            "lambdas": [float(v) for v in dataset.lambdas], "samples_per_epoch": len(dataset),
            "world_size": info.world_size}


@dataclass
class Saver:
    """``save(state)``: refuse non-finite weights, write the checkpoint on rank 0, wait for all ranks."""
    training: Training
    output_dir: Path
    meta: dict[str, Any]
    iters: int
    keep: int
    console: Console
    board: TensorBoardLog | None = None  # flushed before each checkpoint: what it holds is on disk

    def __call__(self, state: LoopState) -> None:
        t = self.training
        if not all_finite(t.model_without_ddp, t.potentials):
            raise NonFiniteLossError(f"the weights became non-finite by epoch {state.epoch}, iteration "
                                     f"{state.iteration}; not saving (the last checkpoint stays as it was)")
        if t.info.is_main:
            if self.board is not None:
                self.board.flush()
            ckpt = training_checkpoint(t.model_without_ddp, t.potentials, t.optimizer, t.potentials_optimizer,
                                       t.scaler, state, state.iteration >= self.iters, self.meta)
            self.console(f"=> checkpoint {save_training_checkpoint(ckpt, self.output_dir, keep=self.keep)}")
        barrier(t.info)


def draw_loss_figure(log_path: Path, fig_path: Path, console: Console) -> None:
    """The loss curves of the log so far; a figure that cannot be written (the disk, its folder) is a warning:
    the epoch is saved already, and training goes on."""
    try:
        plot_loss_curves(log_path, fig_path)
    except OSError as exc:
        console.warn(f"the loss figure {fig_path} could not be written ({exc.strerror or exc}); training goes on")


def end_of_epoch(training: Training, log: JsonlLog | RecordLogs, console: Console, epoch: int, state: LoopState,
                 iters: int, lr: float, means: dict[str, float], val: dict[str, float] | None, seconds: float) -> None:
    """Check that the ranks agree, log the epoch (``val``: :func:`evaluate`'s scores) and say how it went."""
    val = val or {}
    record = {"kind": "epoch", "epoch": epoch, "global_step": state.global_step, "lr": lr,
              "iterations": iters, **means, "val_psnr": val.get("psnr"), "val_ssim": val.get("ssim"),
              "sec": seconds}
    info = training.info
    if info.distributed:  # every rank must hold the same BaryNet and Potentials, bit for bit
        record["rank_digests"] = digests = gather_ints(weights_digest(training.model_without_ddp,
                                                                      training.potentials), info)
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' weights differ after epoch {epoch} (digests {digests}); "
                               f"this is a bug, please report it with the command line")
    log.write(record)
    console(f"=> epoch {epoch} done in {seconds:.1f}s, means: "
            + ", ".join(f"{label} {means[k]:.4g}" for k, label in LOSS_LABELS if k in means)
            + (f"; validation PSNR {val['psnr']:.3f} dB, SSIM {val['ssim']:.4f}" if val else ""))


def run_cli(args: argparse.Namespace) -> int:
    """``main`` with every failure the user can act on turned into one ``error:`` line and a non-zero
    exit status (2 for bad flags); ``--debug`` keeps the traceback. On the CPU it first applies
    :func:`tune_cpu_allocator`."""
    if getattr(args, "check_data", False):  # the data doctor, before any device or process group is set up
        return run_main(trainer_check, args, debug=getattr(args, "debug", False))
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        tune_cpu_allocator()
    return run_main(main, args, debug=getattr(args, "debug", False))
