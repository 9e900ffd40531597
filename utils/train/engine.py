"""The BaryIR training engine shared by ``trainer_bary.py`` and ``trainer_bary_ddp.py``: the run.

:func:`main` checks the run, chooses where to start (``--resume``), builds the networks, the
optimizers and the loader, then trains epoch by epoch (:func:`train_one_epoch`, each iteration
:func:`utils.train.iteration.train_step`: docs/METHOD.md §2's three updates), validates
(:func:`evaluate`, the tester's scoring) and saves (:class:`Saver`, utils/checkpoints/).

A non-finite loss stops the run before anything is saved after it. SIGTERM/SIGINT set a flag that
all ranks agree on after each iteration: they stop after the same iteration, rank 0 saves, and the
run exits 0. One process and ``torchrun`` run the same code (``world_size`` 1 is the special case).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from net import Potentials
from utils.checkpoints import (
    LATEST,
    LOG_NAME,
    CheckpointError,
    LatestNotUpdated,
    LoopState,
    all_finite,
    epoch_losses_from,
    latest_names,
    read_latest,
    restore_training_state,
    save_training_checkpoint,
    training_checkpoint,
)
from utils.compiled import compile_cache_dir
from utils.data.doctor import trainer_check
from utils.dataset_utils import (
    MixedDegradationDataset,
    iterations_per_epoch,
)
from utils.errors import UsageError, UserError, counted, failure_message, run_main, said_by_this_rank
from utils.eval.evaluation import EvaluationStopped, evaluate_set
from utils.eval.protocol import NonFiniteOutput, Protocol
from utils.eval.tasks import EvalItem, EvalSet
from utils.output_lock import OutputFolderBusy, OutputLock
from utils.runtime import apply_gpus_flag, tune_cpu_allocator, use_deterministic_kernels
from utils.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_int,
    cleanup,
    gather_ints,
    init_distributed_mode,
    weights_digest,
)
from utils.train.iteration import NonFiniteLossError, Training, any_rank, train_step
from utils.train.loss_figure import draw_loss_figure
from utils.train.loss_history import LossLogReader
from utils.train.losses import Objective
from utils.train.optim import build_optimizer, lr_at, set_lr
from utils.train.progress import Rate, plain_line_due, progress, progress_line
from utils.train.run_checks import (
    check_checkpoint_room,
    check_memory,
    checkpoint_need,
    checkpoints_added,
    loss_figure,
    saves_planned,
)
from utils.train.run_folder import checkpoints_held, earlier_run_files
from utils.train.run_log import LOSS_LABELS, Console, JsonlLog, record_lost
from utils.train.signals import StopRequest, signal_names, stop_loader_workers
from utils.train.start import (
    agree_seed,
    build_dataset,
    build_loader,
    build_networks,
    check_run,
    continue_with_batch,
    hold_output_folder,
    open_log,
    run_meta,
    run_record,
    warn_if_the_data_changed,
    warn_if_the_kernels_changed,
    where_to_start,
)
from utils.train.tensorboard_log import RecordLogs, TensorBoardLog, open_tensorboard
from utils.train.validation_set import validation_pairs

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
    shown_at: float | None = None  # when the last plain progress line was printed
    tic = time.perf_counter()
    try:
        # zip asks range first: no batch is loaded beyond the epoch's (possibly capped) length
        for _, batch in zip(range(iters_in_epoch - state.iteration), bar):
            where = f"epoch {state.epoch}, iteration {state.iteration + 1} (global step {state.global_step + 1})"
            compiling = training.compile_mode != "off" and not training.steps.compiled
            try:  # minutes of compiling with nothing trained yet: a stop ends it at once, not after it
                with stop.at_once() if compiling else contextlib.nullcontext():
                    losses = train_step(training, batch, where,
                                        inject_nan=nan_at > 0 and state.global_step + 1 == nan_at)
            except KeyboardInterrupt:
                if compiling:
                    console("=> stopped while the first iteration compiled, before it trained anything: "
                            + ("the checkpoints are as they were; continue with --resume auto" if state.global_step
                               else "no checkpoint was written"))
                raise
            state.iteration += 1
            state.global_step += 1
            state.loss_count += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            toc = time.perf_counter()
            if compiling:  # its minutes of compiling are no iteration's pace: kept out of the rate and the ETA
                training.steps.compiled = True
                cached = (" (a later run with the same settings loads the graphs from the cache)"
                          if training.compile_backend == "inductor" else "")
                console(f"=> the first compiled iteration took {toc - tic:.1f} s, compiling included{cached}")
            else:
                rate.update(toc - tic)
            if log_every > 0 and (state.iteration % log_every == 0 or state.iteration == 1):
                log.write({"kind": "iter", "epoch": state.epoch, "iteration": state.iteration,
                           "global_step": state.global_step, "lr": lr, **losses, "sec": toc - tic})
                shown = {label: f"{losses[k]:.4g}" for k, label in LOSS_LABELS
                         if k in ("l1", "transport", "potentials", "congruence") and k in losses}
                bar.set_postfix(shown | {"lr": f"{lr:.2e}"}, refresh=False)
                if bar.disable and not (compiling and state.iteration < iters_in_epoch) and plain_line_due(
                        None if shown_at is None else toc - shown_at, state.iteration, iters_in_epoch):
                    # no terminal: a plain line now and then (after a compile, at the next logged iteration)
                    console(progress_line(state.epoch, state.iteration, iters_in_epoch, losses, lr, rate))
                    shown_at = toc
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
    """Train as ``args`` say. Returns 0, also after SIGTERM/SIGINT with a checkpoint written
    (:func:`stopped_status`)."""
    gpus_note = apply_gpus_flag(args.gpus)  # before anything touches CUDA
    if getattr(args, "deterministic", False):
        use_deterministic_kernels()
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
    """The whole run, top to bottom. Returns 0, also after SIGTERM/SIGINT with a checkpoint written
    (:func:`stopped_status`)."""
    console = Console(info.is_main)
    k, objective, ablate = check_run(args, info)
    memory_fits = check_memory(args, k, info, console)
    dry = getattr(args, "dry_run", False)
    if dry:  # the real run would be refused: so is the dry one
        OutputLock(args.output_dir).check_free()
    with contextlib.nullcontext() if dry else hold_output_folder(Path(args.output_dir), info):
        ckpt_path, obj = where_to_start(args, console, info)
        seed = agree_seed(args, obj, info, console)
        dataset = build_dataset(args, seed, console, info)
        val_pairs = validation_pairs(args, console, info)
        model, pots, state, resumed = build_networks(args, k, ckpt_path, obj, info, console)
        training = build_training(args, model, pots, dataset, info, objective, ablate, state.epoch, console)
        if resumed is not None:
            restore_training_state(resumed, training.optimizer, training.potentials_optimizer, training.scaler,
                                   source=str(ckpt_path))
            state = continue_with_batch(resumed, args, info, state, console)
            warn_if_the_data_changed(resumed, dataset, state, console)
            warn_if_the_kernels_changed(resumed, info, console)
        sampler, loader = build_loader(args, dataset, seed, info)
        iters = iterations_per_epoch(sampler.num_samples, args.batchSize, args.iters_per_epoch)
        if state.iteration >= iters:  # a mid-epoch checkpoint at or past this run's smaller --iters-per-epoch
            console.warn(f"the checkpoint is {state.iteration} iterations into epoch {state.epoch}, and this run's "
                         f"epochs have {iters}: epoch {state.epoch} ends there, without more training (its "
                         f"checkpoint, record and validation come next)")
        unlogged = resumed is not None and not int(resumed["iteration"]) and epoch_unlogged(resumed, ckpt_path, info)
        if state.epoch > args.nEpochs and not unlogged:  # before anything is moved or written: a no-op changes nothing
            console(f"=> nothing to do: epoch {state.epoch} is past --epochs {args.nEpochs}; nothing was written")
            return 0
        if state.epoch <= args.nEpochs:  # an hour of training must not end at a save that cannot fit
            need = checkpoint_need(model, pots, args.optimizer, potentials_trained="potentials" not in ablate)
            saves = saves_planned(args.nEpochs - state.epoch + 1, iters, state.iteration, state.global_step,
                                  args.save_every)
            held = checkpoints_held(Path(args.output_dir), ckpt_path if resumed is not None else None, resumed)
            check_checkpoint_room(Path(args.output_dir), need, info, checkpoints_added(args.keep, held, saves),
                                  args.keep)
        if dry:
            record = (f"write epoch {int(resumed['epoch'])}'s missing log record (after its validation)"
                      if unlogged else "")
            train = (f"train epochs {state.epoch}..{args.nEpochs} of {iters} iterations"
                     if state.epoch <= args.nEpochs else "")
            checkpoints, earlier = earlier_run_files(Path(args.output_dir)) if resumed is None else ([], [])
            aside = (f", first moving the earlier run's {counted(len(earlier), 'file')} there "
                     f"({counted(len(checkpoints), 'checkpoint')}) to run.before-<time>/ (--resume auto would continue "
                     f"that run instead)"
                     if earlier else "")
            checked = ["the data", "the networks"] + (["the checkpoint"] if ckpt_path else []) + (
                ["the memory"] if memory_fits else [])
            memory = {False: " (but not the memory estimate: see the warning above)",
                      None: " (the free memory is not known here: not checked)"}.get(memory_fits, "")
            console(f"=> dry run: {', '.join(checked[:-1])} and {checked[-1]} check out{memory}; it would "
                    f"{' and '.join(filter(None, (record, train)))} into {args.output_dir}{aside}. Nothing was "
                    f"written; drop --dry-run to train")
            return 0
        output_dir = Path(args.output_dir)
        log = open_log(output_dir, resumed, ckpt_path, state, info, console)
        log.write(run_record(args, dataset, objective, state, resumed is not None, info))
        board = open_tensorboard(args, output_dir, resumed is not None, state.global_step, dataset, val_pairs,
                                 info.is_main, console)
        log = RecordLogs(log, board)  # the log's records go to TensorBoard too
        save = Saver(training, output_dir, run_meta(args, model, dataset, info), iters, args.keep, console, board)
        stop = StopRequest().install()
        figure_log = LossLogReader(output_dir / LOG_NAME)  # reads the whole log once, then each epoch's lines
        try:
            if unlogged:
                log_the_resumed_epoch(training, resumed, args, output_dir, val_pairs, log, console, figure_log)
                board.preview(model, state.global_step, info.device, args.precision)  # lost with the record
            for epoch in range(state.epoch, args.nEpochs + 1):
                if state.epoch != epoch:
                    state = LoopState(epoch, 0, state.global_step)
                lr = lr_at(args.lr, epoch, args.step)
                set_lr([training.optimizer, training.potentials_optimizer], lr)
                for part in (sampler, dataset):
                    part.set_epoch(epoch)
                loader.generator.manual_seed(seed + epoch)  # the workers' seeds: the epoch's, resumed or not
                sampler.set_start(state.iteration * args.batchSize)
                console(f"Epoch={epoch}, lr={lr:.3g}, {iters} iterations")
                tic = time.perf_counter()
                means, stopped = train_one_epoch(
                    training, loader, state, iters, lr, stop=stop, log=log, console=console, log_every=args.log_every,
                    save_every=args.save_every, save=save, nan_at=args.debug_nan_at)
                if state.iteration < iters:  # stopped mid-epoch
                    save(state)
                    console(f"=> stopped by {stop_cause(stop, info)} at epoch {epoch}, iteration {state.iteration}; "
                            f"continue with --resume auto (or --resume <checkpoint>)")
                    return stopped_status(stop, args)
                save(state)  # first: validation reads the user's images and may fail, the epoch's training must not
                val = evaluate(model, val_pairs, info, args.precision) if val_pairs else None
                end_of_epoch(training, log, console, epoch, state, iters, lr, means, val, time.perf_counter() - tic)
                board.preview(model, state.global_step, info.device, args.precision)
                if info.is_main:
                    draw_loss_figure(output_dir / LOG_NAME, loss_figure(args), console, figure_log)
                if stopped or any_rank(stop.requested, info):  # a signal during validation or saving
                    console(f"=> stopped by {stop_cause(stop, info)} after epoch {epoch}")
                    return stopped_status(stop, args)
                state = LoopState(epoch + 1, 0, state.global_step)
        finally:
            stop.restore()
            board.close()
        return 0


# --------------------------------------------------------------------------- the run's parts (more: start.py)

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
    else:  # --objective and its settings are recorded, but an L1-only backbone uses none of them
        console(f"=> objective: the L1 loss alone (--backbone {args.backbone} has no potentials; --objective "
                f"{args.objective} does not apply)")
    if ablate:
        console(f"=> ablation: the map loss leaves out {', '.join(sorted(ablate))}")
    mode, backend = getattr(args, "compile", "off"), getattr(args, "compile_backend", "inductor")
    if mode != "off":
        console(compile_start_line(mode, backend))
    return Training(ddp_model, model, pots, optimizer, pot_optimizer, lambdas, l1_weight=args.Sigma,
                    precision=args.precision, info=info, channels_last=True, ablate=ablate, objective=objective,
                    compile_mode=mode, compile_backend=backend)


def compile_start_line(mode: str, backend: str) -> str:
    """What a ``--compile`` run says at its start: inductor's first iteration builds kernels, cached on disk for
    later runs; the tracing backends (``--compile-backend eager``/``aot_eager``) build and cache nothing."""
    if backend == "inductor":
        first = (f"compiles the losses' graphs (minutes; cached under {compile_cache_dir()} for later runs, which "
                 f"TORCHINDUCTOR_CACHE_DIR moves: on a cluster, to shared storage, so a job resumed on another node "
                 f"finds it)")
    else:
        first = f"traces the losses' graphs (--compile-backend {backend} builds no kernels and caches nothing)"
    return f"=> --compile {mode}: the first iteration {first}; losses are checked once per iteration"


class CheckpointNotSaved(UserError):
    """A checkpoint could not be written (a full disk, a folder made read-only or immutable under a running
    training): what went wrong, that the checkpoints already there are untouched, and how to go on."""


class LatestNotSaved(UserError):
    """A checkpoint was written whole but its ``latest`` pointer was not: the message names the checkpoint, what
    ``latest`` still names, and what ``--resume auto`` takes."""


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
    warned: set[str] = field(default_factory=set)  # warnings given: an old checkpoint that stays is said once

    def warn_once(self, message: str) -> None:
        """The console's warning, unless this run gave it already (a file rotation cannot remove is tried again
        at every save)."""
        if message not in self.warned:
            self.warned.add(message)
            self.console.warn(message)

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
            try:
                saved = save_training_checkpoint(ckpt, self.output_dir, keep=self.keep, warn=self.warn_once)
            except LatestNotUpdated as exc:
                found = failure_message(exc.__cause__)
                if found is None:
                    raise
                raise LatestNotSaved(latest_not_updated(found[0], exc.checkpoint, state)) from exc
            except (OSError, UserError) as exc:
                found = failure_message(exc)
                if found is None:
                    raise
                raise CheckpointNotSaved(
                    f"{found[0]}. The checkpoint of epoch {state.epoch}, iteration {state.iteration} was not saved; "
                    f"the checkpoints already in {self.output_dir} and its latest are as they were: fix that, then "
                    f"continue with --resume auto (the iterations since the last checkpoint are trained again)"
                ) from exc
            self.console(f"=> checkpoint {saved}")
        barrier(t.info)


def latest_not_updated(reason: str, saved: Path, state: LoopState) -> str:
    """The error of a save whose checkpoint ``saved`` was written whole and whose ``latest`` pointer was not
    (``reason``): the checkpoint is there, ``latest`` still names the one before, and which one ``--resume auto``
    takes (:func:`~utils.checkpoints.read_latest`: a save that outran its pointer is found as the newer)."""
    folder = saved.parent
    named = latest_names(folder)
    before = f"still names {named}" if named is not None and named != saved.name else "was not written"
    picked = read_latest(folder)
    picks = (f"picks {picked.name}, this save" if picked == saved else
             f"picks {picked.name if picked else 'none of them'}, not this save")
    return (f"{reason}. The checkpoint of epoch {state.epoch}, iteration {state.iteration} is saved, as {saved}, but "
            f"{folder / LATEST} {before}; --resume auto {picks}: fix that, then continue with --resume auto")


def stopped_status(stop: StopRequest, args: argparse.Namespace) -> int:
    """The run's status after a polite stop, its checkpoint written: 0 for the scripts (a scheduler that requeues
    on failure sees none), 128 + the signal for a caller that set ``args.status_on_stop`` (the demo and the
    study, which say "stopped by SIGTERM" and exit as the shell would, rather than "interrupted" for any signal)."""
    return 128 + stop.signum if getattr(args, "status_on_stop", False) and stop.signum else 0


def stop_cause(stop: StopRequest, info: DistInfo) -> str:
    """What stopped the run ("SIGTERM", "SIGTERM to rank 1", "torchrun's death"), from every rank's signal:
    rank 0's alone said "signal None" when another rank was the one signalled. Every rank calls it once all
    have agreed to stop, after the save, by when a rank signalled during a collective has seen its signal."""
    return signal_names(gather_ints(stop.signum or 0, info))


def epoch_unlogged(resumed: dict, ckpt_path: Path, info: DistInfo) -> bool:
    """Whether the log of the end-of-epoch checkpoint ``resumed`` (its folder's, which a resume into another
    folder carries over) tells the run up to that epoch but lacks the epoch's own record, which the checkpoint's
    losses can give. A folder without such a log (checkpoints kept aside in ``abandoned.before-*``, a copied
    file) is not a lost record. Rank 0 reads the log, every rank gets its answer."""
    epoch, losses = int(resumed["epoch"]), epoch_losses_from(resumed)
    if epoch < 1 or losses is None:  # a checkpoint written before they were kept
        return False
    lost = False
    if info.is_main:
        try:
            lost = record_lost(Path(ckpt_path).parent / LOG_NAME, epoch, int(resumed["global_step"]) - losses[1])
        except (OSError, ValueError, TypeError):  # a log that cannot be read: nothing is rewritten into it
            lost = False
    return bool(broadcast_int(lost, info))


def log_the_resumed_epoch(training: Training, resumed: dict, args: argparse.Namespace, output_dir: Path,
                          val_pairs: list[tuple[Path, Path]], log: JsonlLog | RecordLogs, console: Console,
                          figure_log: LossLogReader | None = None) -> None:
    """The record of the epoch whose end-of-epoch checkpoint was resumed, when the log lacks it
    (:func:`epoch_unlogged`, also when no epoch is left to train): a run stopped
    between that checkpoint and its record (validation, which comes in between, lasts minutes at the paper's
    scale) lost it for good. It is written now from the losses the checkpoint keeps, after the epoch's
    validation (``iterations``: those its means cover; ``sec``: null). ``figure_log``: the run's reader of its log
    for the loss figure (:func:`~utils.train.loss_figure.draw_loss_figure`)."""
    info, epoch = training.info, int(resumed["epoch"])
    sums, count = epoch_losses_from(resumed)
    console(f"=> the log has no record of epoch {epoch} (the run stopped between its checkpoint and its record): "
            f"writing it now from the checkpoint's losses" + (", after its validation" if val_pairs else ""))
    val = evaluate(training.model_without_ddp, val_pairs, info, args.precision) if val_pairs else None
    end_of_epoch(training, log, console, epoch, LoopState(epoch + 1, 0, int(resumed["global_step"])), count,
                 lr_at(args.lr, epoch, args.step), {k: v / max(count, 1) for k, v in sums.items()}, val, None)
    if info.is_main:
        draw_loss_figure(output_dir / LOG_NAME, loss_figure(args), console, figure_log)


def end_of_epoch(training: Training, log: JsonlLog | RecordLogs, console: Console, epoch: int, state: LoopState,
                 iters: int, lr: float, means: dict[str, float], val: dict[str, float] | None,
                 seconds: float | None) -> None:
    """Check that the ranks agree, log the epoch (``val``: :func:`evaluate`'s scores) and say how it went
    (``seconds``: None when not known)."""
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
    console(f"=> epoch {epoch} done{'' if seconds is None else f' in {seconds:.1f}s'}, means: "
            + ", ".join(f"{label} {means[k]:.4g}" for k, label in LOSS_LABELS if k in means)
            + (f"; validation PSNR {val['psnr']:.3f} dB, SSIM {val['ssim']:.4f}" if val else ""))


def run_cli(args: argparse.Namespace) -> int:
    """``main`` with every failure the user can act on turned into one ``error:`` line and a non-zero
    exit status (2 for bad flags); ``--debug`` keeps the traceback. On the CPU it first applies
    :func:`tune_cpu_allocator`."""
    debug = getattr(args, "debug", False)
    if getattr(args, "check_data", False):  # the data doctor, before any device or process group is set up
        with contextlib.ExitStack() as quiet:
            if not said_by_this_rank():  # every rank would print the same report
                quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
            return run_main(trainer_check, args, debug=debug)
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        tune_cpu_allocator()
    return run_main(main, args, debug=debug, quiet=None if said_by_this_rank() else met_by_every_rank)


# Failures every torchrun rank of one machine meets alike: the flags, the checkpoint chosen, the output folder's
# lock, a non-finite loss (the ranks check their mean), Ctrl-C or a scheduler's SIGTERM before training (torchrun
# passes its own on to every rank; each rank printed "error: interrupted"). The data found at the start is marked
# so by build_dataset; a failure of one rank alone sets ``met_by_every_rank = False`` where it is raised.
SAME_ON_EVERY_RANK = (UsageError, CheckpointError, OutputFolderBusy, NonFiniteLossError, KeyboardInterrupt)


def met_by_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure every rank on rank 0's machine meets alike, which rank 0's error line says
    for all (those ranks exit with the same status and print nothing; :func:`utils.errors.said_by_this_rank`
    picks them). Any other failure (an image one rank's loader could not read, a checkpoint one rank cannot
    see, a rank's own memory) is said by the rank that met it."""
    return bool(getattr(exc, "met_by_every_rank", isinstance(exc, SAME_ON_EVERY_RANK)))

