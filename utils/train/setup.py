"""Turning the command line into a run: flag checks, where training starts, validation pairs.

The rules; :mod:`utils.train.start` (``check_run``, ``where_to_start``) applies them to a run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from net import Potentials
from net.presets import (
    BACKBONES,
    MODEL_FLAGS,
    WB_BACKBONES,
    build_model,
    build_potentials,
    flags_for,
    model_config,
)
from utils.checkpoints import (
    LATEST,
    LOG_NAME,
    CheckpointError,
    LoopState,
    epoch_losses_from,
    is_reference_checkpoint,
    is_training_checkpoint,
    list_checkpoints,
    load_network,
    load_weights,
    potentials_state_from,
    progress_of,
    read_checkpoint,
    read_latest,
    resolve_checkpoint,
)
from utils.data.degradations import DE_IDS, LAYOUT, dir_dest, family, repeat_factor
from utils.data.image_io import image_size, read_problem
from utils.data.integrity import decode_files
from utils.data.pairing import DEGSET_FLAGS, match_pairs, partners_of
from utils.data.training_files import scanned_folder
from utils.dataset_utils import DatasetError, check_de_types, num_sources, parse_repeats
from utils.errors import UsageError, UserError, human_bytes, listing
from utils.eval.evaluation import smallest_file_side
from utils.eval.outputs import check_writable_folder
from utils.eval.protocol import Protocol
from utils.files import KeepAsideError, keep_aside
from utils.memory import TrainingNeed, available_bytes, processes_on_this_node, resident_bytes, training_need
from utils.train.distributed import DistInfo, broadcast_int, broadcast_text
from utils.train.losses import L1_WEIGHT, OBJECTIVES
from utils.train.options import (
    DEFAULT_DEGSET,
    DEFAULT_TARSET,
    default_of,
    flag_of,
    model_overrides,
    resolve_data_file_dir,
)
from utils.train.run_log import Console, discarded_log

FIG_NAME = "train_losses.png"  # the loss curves, drawn into --figs-dir (default: --output-dir)
TB_DIR = "tensorboard"  # --tensorboard's event files
# What a run writes into --output-dir beside its checkpoints (and the lock, utils/output_lock.py).
RUN_FILES = (LATEST, LOG_NAME, discarded_log(Path(LOG_NAME)).name, FIG_NAME, TB_DIR)


class ConfigError(UsageError, ValueError):
    """The command line asks for something inconsistent; the message names the flag."""


def validation_pairs(args, console: Console, info: DistInfo = DistInfo()) -> list[tuple[Path, Path]]:
    """``--degset``/``--tarset`` paired by file name, every image decoded (:func:`check_validation_images`);
    [] when validation is off. ``--skip-bad-files`` leaves out unpaired degraded images and pairs with a file
    that does not decode, as it leaves out such training files, with one warning naming them."""
    deg, tar = args.degset, args.tarset
    if deg or tar:  # a folder given: its partner must be too (an unset variable must not switch validation off)
        if not (deg and tar):
            raise ConfigError(f"--degset {deg!r} --tarset {tar!r}: pass both folders to validate each epoch, or "
                              f"--degset '' --tarset '' to train without validation")
    elif deg == "" or tar == "":
        return []
    if deg is None and tar is None:
        if not (Path(DEFAULT_DEGSET).is_dir() and Path(DEFAULT_TARSET).is_dir()):
            console(f"=> validation off: the default --degset {DEFAULT_DEGSET} / --tarset {DEFAULT_TARSET} "
                    f"do not exist (pass both to validate each epoch)")
            return []
        deg, tar = DEFAULT_DEGSET, DEFAULT_TARSET
    skip = bool(getattr(args, "skip_bad_files", False))
    try:
        pairs, unpaired = match_pairs(deg, tar, skip_unpaired=skip, flags=DEGSET_FLAGS,
                                      fix="validate on other folders (--degset/--tarset), pass --skip-bad-files to "
                                          "validate without them, or train without validation (--degset '' "
                                          "--tarset '')")
    except UserError as exc:  # every rank pairs the same folders: rank 0's error line says it for all
        exc.met_by_every_rank = True
        raise
    found = len(pairs) + len(unpaired)
    pairs, bad = check_validation_images(pairs, info, skip_bad=skip)
    left_out = [f"{d.name} has no target of the same name in {tar}" for d in unpaired] + bad
    if left_out and not pairs:
        exc = DatasetError(f"no validation pair of {deg} / {tar} can be used (--skip-bad-files left all {found} "
                           f"out):{listing(left_out)}. Fix them, validate on other folders (--degset/--tarset), "
                           f"or {NO_VALIDATION}")
        exc.met_by_every_rank = True
        raise exc
    if left_out:
        console.warn(f"validating without {found - len(pairs)} of the {found} degraded images of {deg} "
                     f"(--skip-bad-files):{listing(left_out)}; {len(pairs)} pair(s) validate")
    console(f"=> validation: {len(pairs)} pairs from {deg} / {tar}, matched by file name")
    return pairs


NO_VALIDATION = "pass --degset '' --tarset '' to train without validation"
# The fixes of a validation pair that cannot be used, after replacing or removing it (--check-data says them too)
SKIP_OR_NO_VALIDATION = f"pass --skip-bad-files to validate without the pair, or {NO_VALIDATION}"
_UNCHECKED = "\0"  # what rank 0 broadcasts when decoding the validation images failed (no JSON text is a NUL byte)


def check_validation_images(pairs: list[tuple[Path, Path]], info: DistInfo = DistInfo(),
                            skip_bad: bool = False) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Decode every image of the validation ``pairs`` in full (:func:`utils.data.integrity.decode_files`, the
    loaders' reader) and compare each pair's sizes, before training. The start-up check of the training files
    reads headers and endings only, and passes a complete PNG with bytes damaged in its middle; a pair of two
    sizes was found only when scored: either was met by the first validation, after a whole epoch, and stopped
    every ``--resume`` there again. One error names each file that does not decode (or pair whose sizes differ)
    and its pair, with the fixes; ``skip_bad`` (``--skip-bad-files``) leaves those pairs out instead. Returns
    the pairs kept and the files left out, each named with why and its pair. Rank 0
    decodes and every rank gets its verdict: all stop (or leave out) alike, and rank 0's error line says it for
    all."""
    bad = _unusable(pairs, info)
    if not bad:
        return pairs, []
    partners = partners_of(pairs)
    named = [f"{read_problem(why)} (its pair: {', '.join(map(str, partners[f]))})" for f, why in bad.items()]
    if skip_bad:
        return [(d, t) for d, t in pairs if d not in bad and t not in bad], named
    one = len(bad) == 1
    exc = DatasetError(f"{len(bad)} validation image{'' if one else 's'} cannot be used (validation reads "
                       f"{'it' if one else 'them'} after each epoch):{listing(named)}. Replace "
                       f"{'it' if one else 'each'}, remove {'it' if one else 'each'} and its pair, pass "
                       f"--skip-bad-files to validate without {'the pair' if one else 'those pairs'}, or "
                       f"{NO_VALIDATION}")
    exc.met_by_every_rank = True
    raise exc


def _unusable(pairs: list[tuple[Path, Path]], info: DistInfo) -> dict[Path, str]:
    """Rank 0's verdict on the validation ``pairs``, on every rank: ``{file: why}`` for each file that does not
    decode (:func:`~utils.data.integrity.decode_files`), each degraded image whose target has another size, and
    each too small for the validation's scoring (:func:`~utils.eval.evaluation.smallest_file_side`)."""
    files = list(dict.fromkeys(f for pair in pairs for f in pair))
    if info.is_main:
        try:
            bad = decode_files(files)
            least = smallest_file_side(Protocol())  # the protocol validation scores with (engine.evaluate)
            for d, t in pairs:
                if d in bad or t in bad:
                    continue
                (h, w), (th, tw) = image_size(d), image_size(t)
                if (h, w) != (th, tw):
                    bad[d] = f"{d} is {h}x{w} but its target {t} is {th}x{tw} (height x width)"
                elif min(h, w) < least:
                    bad[d] = f"{d} is {h}x{w} (height x width), too small to score: validation needs at least " \
                             f"{least}x{least}"
        except BaseException:
            broadcast_text(_UNCHECKED, info)  # the other ranks stop too, instead of waiting for a verdict
            raise
        broadcast_text(json.dumps({str(f): why for f, why in bad.items()}), info)
        return bad
    said = broadcast_text("", info)
    if said == _UNCHECKED:
        exc = DatasetError("rank 0 could not check the validation images (its error says why)")
        exc.met_by_every_rank = True
        raise exc
    by_name = json.loads(said)
    return {f: by_name[str(f)] for f in files if str(f) in by_name}


def earlier_run_files(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(checkpoints, every file)`` of an earlier run in ``output_dir`` that a fresh run moves aside: its
    checkpoints and whichever of :data:`RUN_FILES` exist."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints, checkpoints + [p for p in (output_dir / n for n in RUN_FILES) if p.exists() or p.is_symlink()]


def start_fresh_outputs(output_dir: Path, console: Console, why: str = "a fresh run") -> Path | None:
    """A fresh run in a folder that holds an earlier run's files (its checkpoints and whichever of
    :data:`RUN_FILES` exist) moves them all into ``<output-dir>/run.before-<time>/`` first, so none is
    overwritten (its ``epoch_001.pth`` by this run's, its log by this log) or removed by this run's
    rotation. Returns that folder (None: nothing to move). ``why`` starts the console's line."""
    checkpoints, earlier = earlier_run_files(output_dir)
    if not earlier:
        return None
    kept = _move_aside(earlier, output_dir, "run", "an earlier run's files")
    if checkpoints:
        what = f"{len(checkpoints)} checkpoint(s), newest {checkpoints[-1].name}"
        then = f"; to continue that run instead, pass --resume {kept}"
    else:  # nothing to resume: its log and figure are kept, and --resume there would find no checkpoint
        what, then = "no checkpoint", ""
    console(f"=> {why}: the earlier run's files in {output_dir} ({what}) were moved to {kept.name}/{then}")
    return kept


def _link_or_copy(source: Path, dest: Path) -> None:
    """A second name for ``source`` at ``dest`` (a hard link, else a copy): replacing ``source`` later, as an
    atomic save does, leaves ``dest`` with the old bytes."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _move_aside(paths: list[Path], output_dir: Path, name: str, what: str) -> Path:
    """Move ``paths`` (``what``, in the words of the error) into ``<output_dir>/<name>.before-<time>/``
    (:func:`keep_aside`: all or none of them); a file that cannot be moved stops the run before it writes
    anything, with the fix."""
    try:
        return keep_aside(paths, output_dir / name)
    except KeepAsideError as exc:  # which file, and where every file is now (all where they were, or still aside)
        raise ConfigError(f"--output-dir {output_dir} holds {what}, to be moved aside, and {exc.detail}; {exc.undo}"
                          f"continue that run with --resume auto, or train into another --output-dir") from exc
    except OSError as exc:
        raise ConfigError(f"--output-dir {output_dir} holds {what} and they could not be moved aside ({exc}); "
                          f"continue that run with --resume auto, or train into another --output-dir") from exc


def _carry_history(source: Path, output_dir: Path, console: Console) -> None:
    """Copy the resumed run's log and TensorBoard events from ``source`` into ``output_dir`` (both are
    rewound to the checkpoint afterwards: :func:`~utils.train.run_log.rewind_log`, TensorBoard's
    ``purge_step``). The log must come; events that cannot be copied are left behind with a warning."""
    if (source / LOG_NAME).is_file():
        try:
            shutil.copyfile(source / LOG_NAME, output_dir / LOG_NAME)
        except OSError as exc:
            raise ConfigError(f"could not carry the log {source / LOG_NAME} over into --output-dir {output_dir} "
                              f"({exc}); free space there, or resume into {source} itself") from exc
        console(f"=> the log of {source} was carried over into {output_dir / LOG_NAME}")
    if (source / TB_DIR).is_dir():
        part = output_dir / f"{TB_DIR}.part"
        try:
            shutil.rmtree(part, ignore_errors=True)
            shutil.copytree(source / TB_DIR, part, symlinks=True)
            part.rename(output_dir / TB_DIR)
        except OSError as exc:
            shutil.rmtree(part, ignore_errors=True)
            console.warn(f"the TensorBoard events of {source / TB_DIR} could not be copied into {output_dir} "
                         f"({exc}); the curves there start at this run's first step, the earlier ones stay in "
                         f"{source / TB_DIR}")
            return
        console(f"=> the TensorBoard events of {source} were carried over into {output_dir / TB_DIR}")


def _keep_history(output_dir: Path, kept: Path, console: Console) -> str:
    """Copy the run's log and TensorBoard events, as they are before the resume rewinds them, into ``kept`` (the
    folder the checkpoints past the resumed one were set aside in): resuming one of those later carries that
    timeline's history over (:func:`_carry_history`). Returns the words that say so (empty if there is no log).
    A copy that fails is a warning: the checkpoints are kept, and the records the rewind moves stay in
    ``<log stem>.discarded.jsonl``."""
    copied = []
    for name, copy in ((LOG_NAME, shutil.copyfile), (TB_DIR, lambda a, b: shutil.copytree(a, b, symlinks=True))):
        if not (output_dir / name).exists():
            continue
        try:
            copy(output_dir / name, kept / name)
            copied.append(name)
        except OSError as exc:
            console.warn(f"could not keep a copy of {output_dir / name} in {kept} ({exc}); resuming a checkpoint "
                         f"of {kept.name}/ later will not carry its history over")
    return f" with the log as it was ({kept.name}/{LOG_NAME})" if LOG_NAME in copied else ""


def resume_outputs(output_dir: Path, ckpt_path: Path, progress: tuple[int, int], console: Console,
                   renumbered: bool = False) -> None:
    """A resumed run writes over no other timeline's files and lets its rotation delete none of them.

    * Resuming a checkpoint of another folder (another run's, or one a fresh run kept aside) into
      ``output_dir``: the run already there is moved aside as a fresh run moves it
      (:func:`start_fresh_outputs`), and the resumed run's log and TensorBoard events are carried over
      up to its checkpoint (:func:`_carry_history`).
    * Resuming an older checkpoint of ``output_dir`` itself: the checkpoints past it (``progress``,
      ``(epochs done, iterations into the next)``), a timeline about to be trained again, move into
      ``<output-dir>/abandoned.before-<time>/`` (with ``latest`` when it names one of them): otherwise
      they would outrank the new ones, ``--resume auto`` would return to them, and rotation would delete
      the resumed checkpoint first. Their log records are set aside by
      :func:`~utils.train.run_log.rewind_log`, and a copy of the log and events as they were goes with them
      (:func:`_keep_history`): resuming one of them later carries that timeline's history over.
    * ``renumbered``: the run continues mid-epoch with another batch (:func:`~utils.train.start.continue_with_batch`),
      so its iterations are counted in other units than the names of this epoch's mid-epoch checkpoints: all of
      them go aside with those past it, or this run's saves would replace them. The resumed one stays in place
      (a run that fails before its first save still resumes it) and a hard link to it goes aside instead.
    """
    source = ckpt_path.resolve().parent
    if source != output_dir.resolve():
        start_fresh_outputs(output_dir, console, why=f"resuming {ckpt_path} into another folder")
        _carry_history(source, output_dir, console)
        return
    past = (progress[0], 0) if renumbered and progress[1] else progress
    later = [p for p in list_checkpoints(output_dir) if progress_of(p.name) > past]
    if not later:
        return
    # Renumbered, the resumed checkpoint itself may be replaced by a save of this run: it stays in place (a run
    # that fails before its first save still resumes it) and a link to it goes aside, keeping its bytes.
    resumed = [p for p in later if renumbered and p.resolve() == ckpt_path.resolve()]
    moved = [p for p in later if p not in resumed]
    newest, latest = later[-1].name, read_latest(output_dir)
    pointer = [output_dir / LATEST] if latest is not None and latest.resolve() in {p.resolve() for p in moved} else []
    kept = _move_aside(moved + pointer, output_dir, "abandoned", "checkpoints past the one resumed")
    for p in resumed:
        _link_or_copy(p, kept / p.name)
    history = _keep_history(output_dir, kept, console)
    if past != progress:
        console(f"=> resuming {ckpt_path.name} with another batch: epoch {progress[0] + 1}'s {len(later)} mid-epoch "
                f"and later checkpoint(s) (newest {newest}), named in the old batch's iterations, were kept in "
                f"{kept.name}/{history} (the resumed one also stays here until this run saves), so that this "
                f"run's checkpoints of the same names replace none of them")
        return
    console(f"=> resuming {ckpt_path.name}, an earlier checkpoint of this run: the {len(later)} checkpoint(s) past "
            f"it (newest {newest}) were moved to {kept.name}/{history}, so that none is overwritten, returned to by "
            f"--resume auto or kept by rotation before this run's own")


def check_args(args) -> int:
    """Validate the flags that depend on each other; returns K, the number of sources."""
    try:
        de_types = check_de_types(args.de_type)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    k = num_sources(de_types)
    if args.num_sources is not None and args.num_sources != k and args.backbone in WB_BACKBONES:
        raise ConfigError(f"--num-sources {args.num_sources} does not match --de-type {' '.join(de_types)}, "
                          f"which spans {k} source domain(s) (families: noise levels count once). Drop "
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


# The objective's settings (--objective and the three it sets): the L1-only backbones use none of them.
OBJECTIVE_SETTINGS = ("objective", "reg_weight", "contrastive_eps", "potentials_steps")


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


def _load_potentials_if_they_fit(pots: Potentials | None, obj: Any, source: str) -> bool | None:
    """Load the file's potentials into ``pots``: True if loaded, False if they do not fit, None if absent."""
    sd = potentials_state_from(obj, source) if pots is not None else None
    if sd is None:
        return None
    try:
        load_weights(pots, sd, f"{source} (potentials)")
    except CheckpointError:
        return False
    return True


# The settings that make a run what it is: the networks' shapes (backbone, preset, K sources, patch
# size for the potentials), the data (the degradation types and their repetition, hence lambda), the
# objective (the two reference trainers' differ) and the optimiser (its saved state fits only itself).
# A checkpoint resumes only into them.
RUN_SETTINGS = ("backbone", "preset", "dim", "num_blocks", "num_refinement_blocks", "heads", "de_type", "patch_size",
                "repeat", "objective", "reg_weight", "contrastive_eps", "potentials_steps", "optimizer", "Sigma",
                "ablate")
# Which script trains each --objective by default: named when a run is resumed with the other one.
OBJECTIVE_SCRIPTS = {"single": "trainer_bary.py", "ddp": "trainer_bary_ddp.py"}
# The settings whose value left out is chosen by another setting: the widths by --preset, the repetition factors by
# --de-type, the objective's weights by --objective. Not given on either side, they differ only with that setting,
# which names the difference.
CHOSEN_BY = {**dict.fromkeys(MODEL_FLAGS, "preset"), "repeat": "de_type",
             **dict.fromkeys(OBJECTIVE_SETTINGS[1:], "objective")}


def run_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`RUN_SETTINGS` a run's flags give (``vars(args)``, or the ``args`` a checkpoint saved), as the
    run trains them: a width flag left out is the preset's, the repetition is each --de-type's factor (--repeat's,
    else the paper's: ``{name: N}``), an objective weight left out is the --objective's, no --ablate is none.

    A resume compares these, not the flags as typed: ``--dim 16`` on ``--preset tiny``, or ``--repeat derain=360``,
    is the run that left them out. Settings ``values`` does not hold (a checkpoint of an older version) are left
    out; one that cannot be resolved (a configuration this version cannot build) stays as given."""
    out = {name: values[name] for name in RUN_SETTINGS if name in values}
    try:
        cfg = model_config(values["preset"], backbone=values["backbone"], **{k: values.get(k) for k in MODEL_FLAGS})
    except (KeyError, TypeError, ValueError):  # ModelConfigError is a ValueError
        cfg = {}
    out.update({k: cfg[k] for k in MODEL_FLAGS if k in out and k in cfg})
    if "repeat" in out:
        try:
            de_types, repeats = check_de_types(values["de_type"]), parse_repeats(values["repeat"])
            out["repeat"] = {de: repeat_factor(de, de_types, repeats) for de in sorted(de_types, key=DE_IDS.get)}
        except (DatasetError, KeyError, TypeError):
            pass
    objective = values.get("objective") or "single"
    base = OBJECTIVES.get(objective) if isinstance(objective, str) else None
    for name in OBJECTIVE_SETTINGS[1:]:
        if name in out and out[name] is None and base is not None:
            out[name] = getattr(base, name)
    if "ablate" in out and out["ablate"] is None:
        out["ablate"] = []
    return out


def _same_setting(name: str, a: Any, b: Any) -> bool:
    """Whether two values of the setting ``name`` (typed, or as :func:`run_settings` resolves them) are the same."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):  # repetition factors: of the types both train (--de-type
        return all(a[de] == b[de] for de in a.keys() & b.keys())  # names the others)
    if name in ("de_type", "repeat", "ablate") and isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) == sorted(map(str, b))  # no order
    return a == b


def _shown(v: Any) -> str:
    if v is None:
        return "(default)"
    if isinstance(v, Mapping):
        return " ".join(f"{k}={n}" for k, n in v.items())
    return " ".join(map(str, v)) or "(none)" if isinstance(v, (list, tuple)) else str(v)


def check_same_run(args, ckpt: Mapping[str, Any], ckpt_path: Path | None) -> None:
    """Refuse to resume a training checkpoint into a run of other settings (:data:`RUN_SETTINGS`, compared as
    :func:`run_settings` resolves them on both sides), naming each difference: otherwise a 3D command finds a 5D
    run's checkpoint in a shared folder and fails on weight shapes, or, worse, trains on with other data."""
    saved = ckpt.get("args") or {}
    typed = vars(args)
    here, there = run_settings(typed), run_settings(saved)
    # an L1-only run trains the same whatever its objective settings (trainer_bary.py's or trainer_bary_ddp.py's)
    l1_only = args.backbone not in WB_BACKBONES and saved.get("backbone", args.backbone) not in WB_BACKBONES
    differ = {name: (there[name], here.get(name)) for name in RUN_SETTINGS
              if name in there and not (l1_only and name in OBJECTIVE_SETTINGS)
              and not _same_setting(name, here.get(name), there[name])}
    named = []
    for name, (then, now) in differ.items():
        if CHOSEN_BY.get(name) in differ and _same_setting(name, typed.get(name), saved[name]):
            continue  # given alike (or left out on both sides): the setting that chooses it is named
        if isinstance(then, Mapping) and isinstance(now, Mapping):  # the repetition factors that differ
            then, now = ({de: n for de, n in v.items() if de in then and de in now and then[de] != now[de]}
                         for v in (then, now))
        named.append(f"{flag_of(name)} {_shown(then)} there, {_shown(now)} here")
    if named:
        trained = saved.get("objective")
        script = f" (it was trained by {OBJECTIVE_SCRIPTS[trained]}: resume it with that script)" \
            if trained in OBJECTIVE_SCRIPTS and trained != args.objective and not l1_only else ""
        network = {"backbone", "preset", *MODEL_FLAGS} & differ.keys()  # its weights fit another network only
        if getattr(args, "resume", "auto") == "auto":
            other = "give this run its own --output-dir"
        elif network:
            other = "leave --resume out to train this network from scratch (its weights fit its own network only)"
        else:
            other = (f"start a run of these settings from its weights alone: --pretrained {ckpt_path} instead of "
                     f"--resume")
        raise ConfigError(f"--resume: {ckpt_path} belongs to a run with other settings ({'; '.join(named)}){script}. "
                          f"Resume it with its own settings, or {other}")


def load_start(args, ckpt_path: Path | None, obj: Any, model: nn.Module, pots: Potentials | None,
                console: Console) -> tuple[LoopState, dict | None]:
    """Weights from --resume or --pretrained; returns where to start and the training checkpoint (if any)."""
    state = LoopState(epoch=args.start_epoch, iteration=0, global_step=0)
    if obj is not None:  # resuming: --pretrained (and --start-epoch, but for weights only) start runs without one
        unused = [f"--pretrained {args.pretrained}"] if args.pretrained else []
        if args.start_epoch != 1 and (is_training_checkpoint(obj) or is_reference_checkpoint(obj)):
            unused.append(f"--start-epoch {args.start_epoch}")
        if unused:
            console(f"=> {' and '.join(unused)} not used: the run resumes {ckpt_path} and continues from its "
                    f"epoch ({'they start' if len(unused) > 1 else 'it starts'} a run that has no checkpoint yet)")
    if obj is not None and is_training_checkpoint(obj):
        check_same_run(args, obj, ckpt_path)
        load_network(model, obj, str(ckpt_path))
        if pots is not None:
            sd = potentials_state_from(obj, str(ckpt_path))
            if sd is None:
                raise CheckpointError(f"{ckpt_path} has no potentials (a Restormer run?); resume it with "
                                      f"--backbone {obj.get('backbone')}")
            load_weights(pots, sd, f"{ckpt_path} (potentials)")
        state = LoopState(epoch=int(obj["epoch"]) + 1, iteration=int(obj["iteration"]),
                          global_step=int(obj.get("global_step", 0)))
        if state.iteration:  # in the checkpoint's iterations: another batch continues elsewhere (continue_with_batch)
            batch, processes = (obj.get("args") or {}).get("batchSize"), obj.get("world_size")
            of = f" of batch {batch} x {processes} process(es)" if batch and processes else ""
            console(f"=> resumed {ckpt_path}: {obj['epoch']} epoch(s) done and {state.iteration} iteration(s){of} of "
                    f"epoch {state.epoch}; continuing after them")
        else:
            console(f"=> resumed {ckpt_path}: {obj['epoch']} epoch(s) done, continuing at epoch {state.epoch}")
        if state.iteration:
            losses = epoch_losses_from(obj)
            if losses is None:
                console.warn(f"{ckpt_path} does not keep its epoch's losses so far: epoch {state.epoch}'s record "
                             f"will give the means of the iterations after iteration {state.iteration} only")
            else:
                state.loss_sums, state.loss_count = losses
        return state, obj
    if obj is not None and is_reference_checkpoint(obj):
        load_network(model, obj, str(ckpt_path))
        loaded = _load_potentials_if_they_fit(pots, obj, str(ckpt_path))
        note = {True: "its potentials", False: "fresh potentials (the file's do not fit this --patch-size/--de-type)",
                None: "fresh potentials"}[loaded]
        epoch = int(obj.get("epoch", 0))
        state = LoopState(epoch=epoch + 1)
        console(f"=> resumed reference checkpoint {ckpt_path}: weights and epoch {epoch} (continuing at epoch "
                f"{epoch + 1}) with {note} and fresh optimizers")
        return state, None
    if obj is not None:  # a plain state dict or other weights-only file given to --resume
        load_network(model, obj, str(ckpt_path))
        console(f"=> {ckpt_path} holds weights only: starting at epoch {state.epoch} with fresh optimizers")
        return state, None
    if args.pretrained:
        if not Path(args.pretrained).exists():  # the reference trains from random weights here: an hour lost to a typo
            raise ConfigError(f"--pretrained {args.pretrained}: no such file; check the path, or leave "
                              f"--pretrained out to start from random weights")
        path, note = resolve_checkpoint(args.pretrained, "--pretrained")  # a run's folder or latest: its newest
        if note:
            console(f"=> {note}")
        pobj = read_checkpoint(path)
        stored = pobj.get("backbone") if isinstance(pobj, Mapping) else None
        if isinstance(stored, str) and stored != args.backbone:  # said as that, not as two lists of keys
            raise ConfigError(f"--pretrained {path}: the file holds a {stored} network, and this run builds "
                              f"{args.backbone} (--backbone {args.backbone}): pass --backbone {stored} with its "
                              f"configuration, or another checkpoint.{recorded_network(pobj)}")
        try:
            load_network(model, pobj, str(path))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{recorded_network(pobj)}") from None
        loaded = _load_potentials_if_they_fit(pots, pobj, str(path))
        msg = {True: "network and potentials weights loaded", None: "network weights loaded",
               False: "network weights loaded; its potentials do not fit this run (another --patch-size or "
                      "number of --de-type domains) and start fresh"}[loaded]
        console(f"=> --pretrained {path}: {msg}")
    return state, None


def recorded_network(obj: Any) -> str:
    """The text " The file records its network: <flags>" for a project checkpoint that names its backbone and
    configuration (what a mismatch's fix needs), else ""."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model_config"), Mapping) or \
            obj.get("backbone") not in BACKBONES:
        return ""
    try:
        flags = flags_for(obj["model_config"], obj["backbone"])
    except (ValueError, TypeError):  # a configuration this version cannot build: nothing to name
        return ""
    return f" The file records its network: {flags}" if flags else ""


def memory_need(args, k: int, info: DistInfo, batch: int | None = None) -> TrainingNeed:
    """The memory one process of this run needs (:func:`utils.memory.training_need`), from networks built
    on the meta device: parameter counts without allocating them."""
    with torch.device("meta"):
        model = build_model(args.backbone, args.preset, **model_overrides(args))
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


def check_memory(args, k: int, info: DistInfo, console: Console) -> None:
    """Refuse, before anything is built, a run whose estimated peak exceeds the memory its processes
    share (the GPU's, or this machine's for CPU ranks), with the estimate and what to change; print the
    estimate either way. Rank 0 decides for all ranks. ``--no-memory-check`` only warns."""
    need = memory_need(args, k, info)
    free = available_bytes(info.device)
    if free is None:
        return
    # The processes exist already: their present size is in use, not still to come.
    extra = need.total - (0 if info.device.type == "cuda" else need.processes_here * resident_bytes())
    where = "the GPU" if info.device.type == "cuda" else "this machine"
    many = f" x {need.processes_here} processes on this machine" if need.processes_here > 1 else ""
    parts = ", ".join(f"{name} {human_bytes(v)}" for name, v in need.parts.items() if v)
    console(f"=> memory: about {human_bytes(need.per_process)} per process ({parts}){many}; {human_bytes(free)} free "
            f"on {where}")
    fits = broadcast_int(int(extra <= free), info)
    if fits:
        return
    # activations are the only part that grows with the batch, in each of the processes here
    per_sample = need.parts["activations"] / args.batchSize * need.processes_here
    fixed = (need.per_process - need.parts["activations"]) * need.processes_here - (need.total - extra)
    smaller = largest_batch_that_fits(args.batchSize, fixed, per_sample, free)
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
        return
    raise ConfigError(message)
