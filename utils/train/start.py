"""Setting a training run up, in the order :func:`utils.train.engine.train` calls these: hold the output
folder, check the flags against the device, choose where to start (fresh or a checkpoint; rank 0 chooses),
agree on the seed, build the data set, the networks and the loader, open the log, and describe the run.

The rules these apply are in :mod:`utils.train.run_checks` (flags, memory), :mod:`utils.train.resuming` (the run's
settings, where it starts), :mod:`utils.train.run_folder` and :mod:`utils.train.validation_set`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from net import Potentials
from net.presets import WB_BACKBONES, build_model, build_potentials
from utils.checkpoints import (
    LOG_NAME,
    CheckpointError,
    LoopState,
    is_training_checkpoint,
    plain_args,
    read_checkpoint,
    resume_candidates,
)
from utils.cli import network_size_overrides
from utils.compiled import CompileError, check_compile
from utils.dataset_utils import (
    LAYOUT,
    DatasetError,
    MixedDegradationDataset,
    ResumableSampler,
    build_train_dataset,
    collate,
    dir_dest,
    parse_repeats,
)
from utils.errors import UserError, counted, human_bytes, listing
from utils.eval.inference import check_precision, slow_precision_note
from utils.eval.outputs import check_writable_folder
from utils.output_lock import OutputFolderBusy, OutputLock
from utils.runtime import (
    busy_cores,
    gpus_on_cpu_note,
    kernel_setup,
    kernel_setup_changes,
    load_average,
    provenance,
    to_channels_last,
)
from utils.train.distributed import (
    DistInfo,
    broadcast_int,
    broadcast_module,
    broadcast_text,
    gather_int_rows,
)
from utils.train.losses import Objective
from utils.train.options import ConfigError, resolve_data_file_dir, resolve_objective, run_dir
from utils.train.progress import progress
from utils.train.resuming import load_start
from utils.train.run_checks import (
    check_args,
    check_figure_outside_data,
    inert_objective_flags,
    single_domain_note,
    unused_data_dirs,
)
from utils.train.run_folder import resume_outputs, start_fresh_outputs
from utils.train.run_log import Console, JsonlLog, discarded_log, mend_log, rewind_log
from utils.train.signals import ignore_stop_signals
from utils.train.tensorboard_log import require_tensorboard


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
    # the folder as the run's lock will need it, checked here too so that --dry-run says what the run would
    check_writable_folder(args.output_dir, "--output-dir", create=False, fix="choose another --output-dir (or --name)")
    check_figure_outside_data(args)
    ablate = frozenset(getattr(args, "ablate", None) or ())
    if ablate and args.backbone not in WB_BACKBONES:
        raise ConfigError(f"--ablate {' '.join(sorted(ablate))} switches off BaryNet's terms; --backbone "
                          f"{args.backbone} has none (drop --ablate)")
    inert = inert_objective_flags(args, ablate)  # before resolve_objective fills in the settings not given
    try:
        objective = resolve_objective(args)
    except ValueError as exc:
        raise ConfigError(f"--reg-weight/--potentials-steps/--contrastive-eps: {exc}") from None
    unused = (inert, single_domain_note(args, k), unused_data_dirs(args),
              gpus_on_cpu_note(getattr(args, "gpus", None), getattr(args, "device", "auto")))
    for note in filter(None, unused):
        Console(info.is_main).warn(note)
    try:
        check_precision(info.device, args.precision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    slow = slow_precision_note(info.device, args.precision)
    if slow:
        Console(info.is_main).warn(slow)
    busy = busy_cores_note(info)
    if busy:
        Console(info.is_main)(busy)
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
        try:
            if not Path(chosen).is_file():
                raise CheckpointError(f"rank {info.rank} cannot see {chosen}, the checkpoint rank 0 resumes: keep "
                                      f"--output-dir (and --resume) on a file system every node shares")
            return Path(chosen), read_checkpoint(chosen)
        except CheckpointError as exc:  # this rank's view of the file, not rank 0's: it says so itself
            exc.met_by_every_rank = False
            raise
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
            console.warn(f"keeping the resumed run's seed {old} (not --seed {seed}) so the data order continues; "
                         f"a run with seed {seed} is a fresh run (drop --resume)")
        seed = int(old)
    seed = broadcast_int(seed, info)
    args.seed = seed
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return seed


def build_dataset(args: argparse.Namespace, seed: int, console: Console,
                  info: DistInfo = DistInfo()) -> MixedDegradationDataset:
    """The mixed-degradation training set the flags describe, the same on every rank
    (:func:`same_data_on_every_rank`); prints its per-type table."""
    dirs = {fam: getattr(args, dir_dest(fam)) for fam in LAYOUT}
    dataset, failure = None, None
    try:
        dataset = build_train_dataset(
            args.de_type, dirs, args.patch_size, seed=seed, data_file_dir=resolve_data_file_dir(args.data_file_dir),
            skip_bad=args.skip_bad_files, check=args.check_images, log=console, warn=console.warn,
            progress=lambda it, n: progress(it, n, "checking images", enabled=console.enabled),
            repeats=parse_repeats(args.repeat), strict_ids=args.strict_ids)
    except UserError as exc:  # the ranks of one machine scan the same folders: rank 0's error line says it for all
        if not hasattr(exc, "met_by_every_rank"):  # but an epoch too large for this rank's memory is its own
            exc.met_by_every_rank = True
        failure = exc
    same_data_on_every_rank(dataset, failure, info)
    console("=> training data (one epoch):")
    for line in dataset.report(domains=args.backbone in WB_BACKBONES):  # L1-only: no domains, no lambda
        console("   " + line)
    return dataset


def same_data_on_every_rank(dataset: MixedDegradationDataset | None, failure: UserError | None,
                            info: DistInfo) -> None:
    """Raise ``failure`` (this rank could not build its ``dataset``), or stop every rank when another rank
    failed or found other files (:meth:`~utils.dataset_utils.MixedDegradationDataset.fingerprint`).

    Each rank scans the folders itself. A rank other than 0 that failed alone stayed quiet (rank 0 says the
    failures every rank meets alike), and rank 0 said only that another process stopped; ranks that found
    other files (a node's copy of the data that differs, files changed while the run started) trained
    epochs of other lengths, and the longer one waited forever in a collective the others never joined."""
    if not info.distributed:
        if failure is not None:
            raise failure
        return
    rows = gather_int_rows([-1, -1] if dataset is None else [dataset.fingerprint(), len(dataset)], info)
    prints, sizes = [row[0] for row in rows], [row[1] for row in rows]
    failed = [rank for rank, p in enumerate(prints) if p < 0]
    if failure is not None:
        if 0 not in failed:  # rank 0 found the data: this rank's line is the one that says why
            failure.met_by_every_rank = False
        raise failure
    fix = ("every rank trains on the same files: give every node the same data folders (one file system they "
           "share, or identical copies) and leave them as they are while a run starts; nothing was written")
    if failed:
        exc = DatasetError(f"{_ranks(failed)} could not use the training data (the error: line of "
                           f"{'each' if len(failed) > 1 else 'that rank'} says why), where rank {info.rank} could; "
                           f"{fix}")
    elif len(set(prints)) > 1:
        found: dict[int, list[int]] = {}
        for rank, p in enumerate(prints):
            found.setdefault(p, []).append(rank)
        exc = DatasetError("the ranks found different training data (" + "; ".join(
            f"{_ranks(ranks)}: {sizes[ranks[0]]} samples per epoch" for ranks in found.values())
            + f"{', the same number from other files' if len(set(sizes)) == 1 else ''}): {fix}")
    else:
        return
    exc.met_by_every_rank = True  # every rank raises it alike: rank 0's line says it
    raise exc


def busy_cores_note(info: DistInfo) -> str | None:
    """The start's note when the CPU that trains is kept busy by other processes (:func:`utils.runtime.busy_cores`):
    torch's threads then wait on each other and training can run several times slower, without a word. None on a
    GPU or an idle CPU."""
    if info.device.type != "cpu":
        return None
    busy = busy_cores(torch.get_num_threads(), load_average(), os.cpu_count() or 1)
    return (f"=> note: {busy}: OMP_NUM_THREADS=1 (set before the command) can be several times faster here"
            if busy else None)


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {listing(ranks, sep=', ', lead='')}"


def build_networks(args: argparse.Namespace, k: int, ckpt_path: Path | None, obj: Any, info: DistInfo,
                   console: Console) -> tuple[nn.Module, Potentials | None, LoopState, dict | None]:
    """BaryNet (or a baseline) and its potentials, with their starting weights, on the device."""
    if info.device.type == "cuda" and not getattr(args, "deterministic", False):
        torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest kernels once
    model = build_model(args.backbone, args.preset, **network_size_overrides(args))
    pots = build_potentials(args.backbone, model, k, args.patch_size)
    state, resumed = load_start(args, ckpt_path, obj, model, pots, console)
    # channels-last activations: oneDNN's and cuDNN's depthwise and 1x1 convolutions prefer them
    to_channels_last(model, info.device)
    if pots is not None:
        pots.to(info.device)
        broadcast_module(pots, info)
    n_params = sum(p.numel() for p in model.parameters())
    # K is the barycenter's number of sources; an L1 backbone only mixes the K degradation types
    sources = f"K={k} sources" if pots is not None else f"{k} degradation type{'s' * (k != 1)}, L1 loss"
    console(f"=> {args.backbone} ({args.preset}, {n_params / 1e6:.2f} M parameters), {sources}, "
            f"patch {args.patch_size}, batch {args.batchSize} x {info.world_size} process(es), "
            f"{args.optimizer}, {args.precision} on {info.device}")
    return model, pots, state, resumed


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
    again = counted(used - iteration * now[0] * now[1], "sample")
    console.warn(f"resuming mid-epoch with batch {now[0]} x {counted(now[1], 'process', 'processes')} where the "
                 f"checkpoint ran {was[0]} x {was[1]}: epoch {state.epoch} continues after the {used} samples used, at "
                 f"iteration {iteration + 1} of the new batch ({again} seen again); its batches are not those the "
                 f"interrupted run would have drawn")
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


def warn_if_the_kernels_changed(resumed: dict, info: DistInfo, console: Console) -> None:
    """Say so when this process computes with another torch version or (on the CPU) another intra-op thread
    count than the checkpoint's run (:func:`~utils.runtime.kernel_setup`): the run goes on, but its numbers from
    here differ in the last bits from those an uninterrupted run would reach, so resume is not bit-exact."""
    changes = kernel_setup_changes(resumed.get("kernels"), info.device)
    if changes:
        console.warn(f"the checkpoint's run computed with other kernels ({'; '.join(changes)}): training goes on, "
                     f"but its numbers are no longer bit for bit those of an uninterrupted run (for that, resume "
                     f"with the checkpoint's torch and, on the CPU, OMP_NUM_THREADS set to its thread count)")


def build_loader(args: argparse.Namespace, dataset: MixedDegradationDataset, seed: int,
                 info: DistInfo) -> tuple[ResumableSampler, DataLoader]:
    sampler = ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=seed, shuffle=True)
    # Workers get a fresh copy of the dataset (with its epoch) each epoch: no persistent workers. Each epoch's
    # iterator draws the workers' base seed from a generator of the loader's own, seeded per epoch by the loop:
    # from torch's global one, a resumed epoch drew it a second time, after the checkpoint's state was put back.
    loader = DataLoader(dataset, batch_size=args.batchSize, sampler=sampler, num_workers=args.threads,
                        collate_fn=collate, pin_memory=info.device.type == "cuda", drop_last=False,
                        persistent_workers=False, worker_init_fn=ignore_stop_signals, generator=torch.Generator())
    return sampler, loader


def open_log(output_dir: Path, resumed: dict | None, ckpt_path: Path | None, state: LoopState, info: DistInfo,
             console: Console) -> JsonlLog:
    """The run's log, once the folder holds no other run's files. A fresh run moves an earlier run's files
    apart (:func:`start_fresh_outputs`), a resumed one any other timeline's (:func:`resume_outputs`); a
    resumed run then removes a record cut short when the run stopped (:func:`~utils.train.run_log.mend_log`)
    and moves the records past its checkpoint (training lost when the run stopped, about to be redone) aside
    (:func:`~utils.train.run_log.rewind_log`), so every iteration is logged once."""
    if info.is_main and resumed is None:
        start_fresh_outputs(output_dir, console)
    elif info.is_main:
        renumbered = state.iteration != int(resumed["iteration"])  # another batch: continue_with_batch
        resume_outputs(output_dir, ckpt_path, (int(resumed["epoch"]), int(resumed["iteration"])), console,
                       renumbered)
        if state.global_step and not (output_dir / LOG_NAME).exists():  # removed, or the checkpoint copied alone
            console.warn(f"{output_dir / LOG_NAME}, the log of the {counted(state.global_step, 'iteration')} before "
                         f"{ckpt_path.name if ckpt_path else 'the checkpoint'}, is not there: a new log starts at "
                         f"global step {state.global_step + 1}, and the loss figure and TensorBoard show the run "
                         f"from there (put the earlier log back before resuming to keep the whole curve)")
        torn, size = mend_log(output_dir / LOG_NAME)
        if torn:
            console(f"=> removed {counted(torn, 'line')}, {human_bytes(size)}, from {output_dir / LOG_NAME}: records "
                    f"cut short when a run stopped while writing them (a full disk, or a kill); every complete record "
                    f"stays")
        moved = rewind_log(output_dir / LOG_NAME, state.global_step)
        if moved:
            console(f"=> {counted(moved, 'log record')} past global step {state.global_step} (training after the "
                    f"checkpoint, lost when the run stopped) moved to {discarded_log(output_dir / LOG_NAME).name}")
    return JsonlLog(output_dir / LOG_NAME, enabled=info.is_main)


def run_meta(args: argparse.Namespace, model: nn.Module, dataset: MixedDegradationDataset,
             info: DistInfo) -> dict[str, Any]:
    """What every checkpoint of the run records beside the states."""
    return {"model_config": dict(model.config), "backbone": args.backbone, "preset": args.preset,
            "lambdas": [float(v) for v in dataset.lambdas], "domains": list(dataset.families),
            "domain_counts": list(dataset.domain_counts), "world_size": info.world_size, "kernels": kernel_setup(),
            "args": plain_args(args)}


def run_record(args: argparse.Namespace, dataset: MixedDegradationDataset, objective: Objective, state: LoopState,
               resumed: bool, info: DistInfo) -> dict[str, Any]:
    """The log's ``run`` record: one per start (``tensorboard``: whether it wrote event files, which tells a later
    start with ``--tensorboard`` which steps they miss: :func:`~utils.train.tensorboard_log.boarded_until`)."""
    return {"kind": "run", "started": datetime.now().astimezone().isoformat(timespec="microseconds"),
            "start_epoch": state.epoch, "start_iteration": state.iteration,
            "global_step": state.global_step, "resumed": resumed,
            "objective": args.objective, "reg_weight": objective.reg_weight,
            "contrastive_eps": objective.contrastive_eps, "potentials_steps": objective.potentials_steps,
            "lambdas": [float(v) for v in dataset.lambdas], "samples_per_epoch": len(dataset),
            "world_size": info.world_size, "seed": args.seed, "kernels": kernel_setup(),
            "tensorboard": bool(getattr(args, "tensorboard", False)), **provenance()}
