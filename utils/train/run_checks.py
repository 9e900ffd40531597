"""The trainers' start-up checks: flags that cannot work together, flags that would do nothing, the loss figure's
folder, and whether a run fits the memory. :mod:`utils.train.start` applies them to a run; the run's folder, the
validation set and resuming have modules of their own (:mod:`~utils.train.run_folder`,
:mod:`~utils.train.validation_set`, :mod:`~utils.train.resuming`)."""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from net.presets import WB_BACKBONES, build_model, build_potentials
from utils.cli import network_size_overrides
from utils.data.degradations import DE_IDS, LAYOUT, dir_dest, family
from utils.data.pairing import one_folder_twice
from utils.data.training_files import scanned_folder
from utils.dataset_utils import DatasetError, check_de_types, num_sources, parse_repeats
from utils.errors import UserError, counted, human_bytes
from utils.eval.outputs import check_writable_folder
from utils.files import FREE_SPACE_MARGIN, DiskFullError
from utils.memory import (
    OPTIMIZER_STATE_BYTES,
    TrainingNeed,
    available_bytes,
    processes_on_this_node,
    resident_bytes,
    training_need,
)
from utils.train.distributed import DistInfo, broadcast_int
from utils.train.losses import L1_WEIGHT
from utils.train.options import DEFAULT_DEGSET, ConfigError, default_of, flag_of, resolve_data_file_dir
from utils.train.run_folder import FIG_NAME
from utils.train.run_log import Console


def check_args(args) -> int:
    """Validate the flags that depend on each other; returns K, the number of sources."""
    try:
        de_types = check_de_types(args.de_type)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    k = num_sources(de_types)
    if args.num_sources is not None and args.num_sources != k and args.backbone in WB_BACKBONES:
        raise ConfigError(f"--num-sources {args.num_sources} does not match --de-type {' '.join(de_types)}, "
                          f"which spans {counted(k, 'source domain')} (families: noise levels count once). Drop "
                          f"--num-sources or pass --num-sources {k}.")
    if args.patch_size < 16 or args.patch_size % 8:
        raise ConfigError(f"--patch-size must be a multiple of 8 and at least 16, got {args.patch_size}")
    if args.start_epoch < 1:  # epoch 0 would train at 10x the learning rate (lr falls 10x every --step epochs)
        raise ConfigError(f"--start-epoch counts from 1, got {args.start_epoch}")
    if not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed must be in 0..2**63-1, got {args.seed}")
    for name in ("batchSize", "nEpochs", "step"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{flag_of(name)} must be at least 1, got {getattr(args, name)}")
    try:
        repeats = parse_repeats(args.repeat)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if set(repeats) - set(de_types):
        raise ConfigError(f"--repeat names {', '.join(sorted(set(repeats) - set(de_types)))}, which --de-type does "
                          f"not train ({' '.join(de_types)})")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    one_folder = one_folder_twice(args.degset, args.tarset)  # every validation image scored against itself
    if one_folder:
        raise ConfigError(one_folder)
    try:
        resolve_data_file_dir(args.data_file_dir)  # a mistyped folder stops here, before the output folder is made
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if args.figs_dir:  # the loss figure is drawn after each epoch: a file in the way must not end a run there
        try:
            check_writable_folder(args.figs_dir, "--figs-dir", create=False)
        except UserError as exc:
            raise ConfigError(str(exc)) from None
    if not math.isfinite(args.lr) or args.lr < 0:
        raise ConfigError(f"--lr must be a finite number >= 0, got {args.lr} (the paper's is 2e-4)")
    if not math.isfinite(args.Sigma) or args.Sigma < 0:
        raise ConfigError(f"--Sigma must be a finite number >= 0, got {args.Sigma} (the paper's is {L1_WEIGHT:g})")
    for flag, meaning in (("iters_per_epoch", "0: the whole data set"), ("keep", "0 keeps all"),
                          ("save_every", "0: at epochs' ends only"), ("log_every", "0: no iteration records")):
        if getattr(args, flag, 0) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0 ({meaning}), got {getattr(args, flag)}")
    return k


def inert_objective_flags(args, ablate: frozenset[str]) -> str | None:
    """A warning naming the objective flags given on the command line that this run cannot use, and why; None
    when there are none. Call it before :func:`~utils.train.options.resolve_objective` fills in the settings
    not given. An L1-only backbone (Restormer, PromptIR) has no potentials and no barycenter terms: --reg-weight,
    --potentials-steps, --contrastive-eps and --num-sources do nothing; an ablated term's setting does nothing."""
    given = {name: getattr(args, name, None) for name in ("reg_weight", "potentials_steps", "contrastive_eps",
                                                            "num_sources")}
    given = {name: value for name, value in given.items() if value is not None}
    if args.backbone not in WB_BACKBONES:
        inert = list(given)
        why = (f"--backbone {args.backbone} trains with the L1 loss alone (no potentials, no source domains, no "
               f"orthogonality or contrastive term)")
    else:
        reasons = {"potentials_steps": ("potentials", "--ablate potentials skips the potentials' updates"),
                   "contrastive_eps": ("contrastive", "--ablate contrastive leaves the contrastive term out")}
        inert, whys = [], []
        for name, (term, reason) in reasons.items():
            if name in given and term in ablate:
                inert.append(name)
                whys.append(reason)
        if "reg_weight" in given and {"orthogonality", "contrastive"} <= ablate:
            inert.append("reg_weight")
            whys.append("--ablate orthogonality contrastive leaves out both terms it weighs")
        why = "; ".join(whys)
    if not inert:
        return None
    named = " ".join(f"{flag_of(name)} {given[name]}" for name in inert)
    one = len(inert) == 1
    return f"{named} {'has' if one else 'have'} no effect: {why} (drop {'it' if one else 'them'})"


def unused_data_dirs(args) -> str | None:
    """A warning naming the data-folder flags (``--derain-dir`` ...) given on the command line for a family that
    ``--de-type`` does not train (the run never reads them: a mistyped ``--de-type`` looks like this); None when
    there are none. Given means other than the parser's default."""
    trained = {family(d) for d in args.de_type}
    unused = [fam for fam in LAYOUT if fam not in trained
              and getattr(args, dir_dest(fam), None) not in (None, default_of(dir_dest(fam)))]
    if not unused:
        return None
    named = " ".join(f"{LAYOUT[fam][0]} {getattr(args, dir_dest(fam))}" for fam in unused)
    one = len(unused) == 1
    add = " or ".join("/".join(d for d in DE_IDS if family(d) == fam) for fam in unused)
    return (f"{named} {'has' if one else 'have'} no effect: --de-type {' '.join(args.de_type)} does not train "
            f"{' or '.join(unused)} (drop {'it' if one else 'them'}, or add {add} to --de-type)")


def single_domain_note(args, k: int) -> str | None:
    """A warning for a BaryNet/BaryPromptIR run of one source domain (``k`` = 1): its barycenter terms have no
    other domain to align with; None otherwise (K > 1, or an L1-only backbone, which has no such terms)."""
    if k != 1 or args.backbone not in WB_BACKBONES:
        return None
    levels = "; noise levels count once" if len(args.de_type) > 1 else ""
    return (f"--de-type {' '.join(args.de_type)} spans one source domain (K=1{levels}): the barycenter of one "
            f"distribution is that distribution itself, so --backbone {args.backbone}'s barycenter terms have "
            f"nothing to align across domains; the paper trains 3D with K=3 and 5D with K=5 (add another "
            f"degradation family to --de-type to train across domains)")


def loss_figure(args) -> Path:
    """Where the trainer draws its loss curves after each epoch: in ``--figs-dir``, else beside the log."""
    return Path(args.figs_dir or args.output_dir) / FIG_NAME


def check_figure_outside_data(args) -> None:
    """Refuse a folder for the loss figure (``--figs-dir``, else ``--output-dir``) that a training scan or the
    validation pairing reads images from: the figure, a PNG drawn after each epoch, would be read back as
    a training or validation image by the next run."""
    flag, value = ("--figs-dir", args.figs_dir) if args.figs_dir else ("--output-dir", args.output_dir)
    where = loss_figure(args).parent.resolve()
    read: list[tuple[str, Path, bool]] = []
    for fam in sorted({family(d) for d in args.de_type}):
        data_flag = LAYOUT[fam][0]
        read.append((data_flag, *scanned_folder(fam, Path(getattr(args, dir_dest(fam))))))
    degset = DEFAULT_DEGSET if args.degset is None else args.degset
    if degset:
        read.append(("--degset", Path(degset), False))
    for data_flag, folder, recursive in read:
        folder = folder.resolve()
        if where == folder or (recursive and folder in where.parents):
            what = ("it is where" if where == folder else
                    f"it is inside {folder}, which") + f" {data_flag} reads images from"
            where_read = f" ({folder})" if where == folder else " with its subfolders"
            raise ConfigError(f"{flag} {value}: {what}{where_read}, so the loss figure drawn there after each epoch "
                              f"({FIG_NAME}) would be read as an image by the next run; choose a {flag} outside "
                              f"the data")


def memory_need(args, k: int, info: DistInfo, batch: int | None = None) -> TrainingNeed:
    """The memory one process of this run needs (:func:`utils.memory.training_need`), from networks built
    on the meta device: parameter counts without allocating them."""
    with torch.device("meta"):
        model = build_model(args.backbone, args.preset, **network_size_overrides(args))
        try:
            pots = build_potentials(args.backbone, model, k, args.patch_size)
        except (RuntimeError, OverflowError) as exc:  # "Storage size calculation overflowed"
            raise ConfigError(f"--patch-size {args.patch_size}: the potentials' first linear layer grows with the "
                              f"patch side to the fourth power, and at this size it cannot even be sized ({exc}); "
                              f"the paper trains 128") from None
    return training_need(model, pots, args.optimizer, args.precision, batch or args.batchSize, args.patch_size,
                         processes_on_this_node(info.device), info.distributed, info.device.type == "cuda")


def largest_batch_that_fits(batch: int, fixed: float, per_sample: float, free: float) -> int | None:
    """The largest batch ``b`` below ``batch`` whose need, ``fixed + b * per_sample`` bytes, is within ``free``;
    None when not even a batch of 1 fits. Solved, not searched (a search from a batch of 2**40 down took days),
    from the part that does not grow with the batch, so that a huge batch's need does not swamp it."""
    if per_sample <= 0:
        return None
    b = min(batch - 1, math.floor((free - fixed) / per_sample))
    while b >= 1 and fixed + b * per_sample > free:  # float rounding at the boundary
        b -= 1
    return b if b >= 1 else None


@dataclass(frozen=True)
class MemoryFit:
    """A run's estimated need (:func:`memory_need`) at ``batch`` against the ``free`` bytes where it computes;
    ``extra``: the part of the need still to come (on the CPU the processes exist already: their present size is
    in use, not still to come)."""
    need: TrainingNeed
    batch: int
    free: int
    extra: int

    @property
    def fits(self) -> bool:
        return self.extra <= self.free

    def smaller_batch(self) -> int | None:
        """The largest batch below ``batch`` that fits (:func:`largest_batch_that_fits`); None if not even 1 does.
        Activations are the only part that grows with the batch, in each of the processes here."""
        need = self.need
        per_sample = need.parts["activations"] / self.batch * need.processes_here
        fixed = (need.per_process - need.parts["activations"]) * need.processes_here - (need.total - self.extra)
        return largest_batch_that_fits(self.batch, fixed, per_sample, self.free)


def memory_fit(args, k: int, info: DistInfo, batch: int | None = None) -> MemoryFit | None:
    """The run's :func:`memory_need` (at ``batch``, else its ``--batch-size``) against the memory free where it
    computes (the GPU's, or this machine's for CPU ranks); None where the free memory is not known."""
    batch = batch or args.batchSize
    need = memory_need(args, k, info, batch)
    free = available_bytes(info.device)
    if free is None:
        return None
    extra = need.total - (0 if info.device.type == "cuda" else need.processes_here * resident_bytes())
    return MemoryFit(need, batch, free, extra)


def check_memory(args, k: int, info: DistInfo, console: Console) -> bool | None:
    """Refuse, before anything is built, a run whose estimated peak exceeds the memory its processes
    share (the GPU's, or this machine's for CPU ranks), with the estimate and what to change; print the
    estimate either way. Rank 0 decides for all ranks. ``--no-memory-check`` only warns. Returns whether the
    estimate fits (False: it did not, and was only warned of), None where the free memory is not known."""
    fit = memory_fit(args, k, info)
    if fit is None:
        return None
    need, free = fit.need, fit.free
    where = "the GPU" if info.device.type == "cuda" else "this machine"
    many = f" x {need.processes_here} processes on this machine" if need.processes_here > 1 else ""
    parts = ", ".join(f"{name} {human_bytes(v)}" for name, v in need.parts.items() if v)
    console(f"=> memory: about {human_bytes(need.per_process)} per process ({parts}){many}; {human_bytes(free)} free "
            f"on {where}")
    fits = broadcast_int(int(fit.fits), info)
    if fits:
        return True
    smaller = fit.smaller_batch()
    advice = [f"--batch-size {smaller}" if smaller else None, "--preset tiny" if args.preset != "tiny" else None,
              "a smaller --patch-size", "fewer processes (--nproc_per_node)" if need.processes_here > 1 else None,
              "--precision bf16" if args.precision == "fp32" else None]
    message = (f"{args.backbone} {args.preset} ({args.precision}, {args.optimizer}) at --batch-size {args.batchSize} "
               f"--patch-size {args.patch_size} needs about {human_bytes(need.per_process)} per process{many} "
               f"({parts}; "
               f"activations from {need.basis}), but {human_bytes(free)} are free on {where}: use "
               f"{', '.join(a for a in advice if a)}; --no-memory-check starts anyway")
    if args.no_memory_check:
        console.warn(message)
        return False
    raise ConfigError(message)


def checkpoint_need(model: torch.nn.Module, potentials: torch.nn.Module | None, optimizer: str,
                    potentials_trained: bool = True) -> int:
    """The bytes a checkpoint of this run takes at the least: the networks' parameters and buffers, and the
    optimizer's state of each parameter it updates (:data:`~utils.memory.OPTIMIZER_STATE_BYTES`, made at the first
    step, so not yet there to be counted; none for potentials that ``--ablate potentials`` leaves untrained); the
    rest (RNG states, the run's arguments) adds a little."""
    modules = [m for m in (model, potentials) if m is not None]
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    updated = [model] + ([potentials] if potentials is not None and potentials_trained else [])
    params = sum(p.numel() for m in updated for p in m.parameters() if p.requires_grad)
    return sum(t.numel() * t.element_size() for t in tensors) + OPTIMIZER_STATE_BYTES.get(optimizer, 8) * params


def saves_planned(epochs: int, iters: int, iteration: int, global_step: int, save_every: int) -> int:
    """How many checkpoints a run saves that trains ``epochs`` more epochs of ``iters`` iterations, the first from
    ``iteration`` (at ``global_step``): one at each epoch's end, and one each ``save_every`` global steps (0: none)
    that is not an epoch's end (the trainer's own rule, :func:`~utils.train.engine.train_one_epoch`)."""
    if epochs <= 0:
        return 0
    first = max(iters - iteration, 0)
    ends = [global_step + first + j * iters for j in range(epochs)]
    if save_every <= 0:
        return epochs
    every = ends[-1] // save_every - global_step // save_every
    return epochs + every - sum(1 for e in ends if e % save_every == 0)


def checkpoints_added(keep: int, held: int, saves: int) -> int:
    """The most checkpoints the run's ``saves`` add at once to a folder holding ``held`` of its run's checkpoints:
    each save writes its checkpoint whole before rotation removes the oldest beyond ``--keep`` ``keep`` (0 keeps
    all), so a folder at ``keep`` checkpoints needs room for one more at every save. With ``keep`` 0 only the
    first save counts: a run keeping all may be pruned by hand as it goes."""
    if keep <= 0:
        return min(saves, 1)
    count, peak = held, held
    for _ in range(min(saves, keep + 2)):  # by then every save peaks at keep + 1
        count += 1
        peak = max(peak, count)
        count = min(count, keep)
    return peak - held


def check_checkpoint_room(output_dir: Path, need: int, info: DistInfo, added: int = 1, keep: int = 0) -> None:
    """Refuse, before the first iteration, a run whose ``--output-dir`` has no room for the ``added`` checkpoints of
    ``need`` bytes (:func:`checkpoint_need`) its saves hold there at once beside those already there
    (:func:`checkpoints_added`), beside the :data:`~utils.files.FREE_SPACE_MARGIN` every write leaves free: the
    save that does not fit would refuse it anyway, an epoch (hours at the paper's scale) or more later. Rank 0,
    which writes the checkpoints, decides for all ranks."""
    folder = next(p for p in [output_dir, *output_dir.absolute().parents] if p.is_dir())
    free = shutil.disk_usage(folder).free
    added = max(added, 1)
    if broadcast_int(int(free >= added * need + FREE_SPACE_MARGIN), info):
        return
    if added == 1:
        holds, fails = f"each checkpoint of this run takes at least {human_bytes(need)}", "its first save"
    else:
        holds = (f"this run holds {added} checkpoints there at once (--keep {keep} keeps {keep}, and each save writes "
                 f"the new one whole before removing the oldest, so that a failed save loses none), each at least "
                 f"{human_bytes(need)}")
        fails = "a later save"
    smaller = ", or a smaller --keep" if added > 1 and keep > 1 else ""
    exc = DiskFullError(f"disk full: --output-dir {output_dir} has {human_bytes(free)} free, and {holds} (plus "
                        f"{human_bytes(FREE_SPACE_MARGIN)} left free), so {fails} would fail: free space there or "
                        f"choose another --output-dir{smaller}; nothing was trained")
    exc.met_by_every_rank = True  # rank 0's disk decided for every rank
    raise exc
