"""A run's output folder when training starts: the files a fresh run sets aside (``run.before-*``) and those a
resume from an earlier point sets aside with their timeline (``abandoned.before-*``), each with its history."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from utils.checkpoints import LATEST, LOG_NAME, list_checkpoints, progress_of, read_latest
from utils.errors import counted
from utils.files import KeepAsideError, keep_aside
from utils.train.options import ConfigError
from utils.train.run_log import Console, discarded_log

FIG_NAME = "train_losses.png"  # the loss curves, drawn into --figs-dir (default: --output-dir)
TB_DIR = "tensorboard"  # --tensorboard's event files


# What a run writes into --output-dir beside its checkpoints (and the lock, utils/output_lock.py).
RUN_FILES = (LATEST, LOG_NAME, discarded_log(Path(LOG_NAME)).name, FIG_NAME, TB_DIR)


ABANDONED = "abandoned"  # <output-dir>/abandoned.before-<time>/: a timeline set aside by a resume (resume_outputs)


def earlier_run_files(output_dir: Path, resuming: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(checkpoints, every file)`` of an earlier run in ``output_dir`` that a fresh run moves aside: its
    checkpoints, whichever of :data:`RUN_FILES` exist, and the ``abandoned.before-*`` folders of the timelines it
    set aside (they are that run's: left behind, they would read as the new run's own), except the one holding
    ``resuming``, the checkpoint a run resumes into ``output_dir`` (its history is carried over from there)."""
    checkpoints = list_checkpoints(output_dir)
    files = [p for p in (output_dir / n for n in RUN_FILES) if p.exists() or p.is_symlink()]
    abandoned = sorted(output_dir.glob(f"{ABANDONED}.before-*")) if output_dir.is_dir() else []
    if resuming is not None:
        abandoned = [p for p in abandoned if p.resolve() not in Path(resuming).resolve().parents]
    return checkpoints, checkpoints + files + abandoned


def checkpoints_held(output_dir: Path, resumed_path: Path | None, resumed: dict | None) -> int:
    """How many checkpoints of its run ``output_dir`` holds once a run starts there (before its first save): none for
    a fresh run or one resuming another folder's checkpoint (the earlier run's are moved aside), else those up to the
    resumed checkpoint (``resumed``, read from ``resumed_path``; those past it go to ``abandoned.before-*``)."""
    if resumed is None or resumed_path is None or Path(resumed_path).resolve().parent != output_dir.resolve():
        return 0
    upto = (int(resumed["epoch"]), int(resumed["iteration"]))
    return sum(1 for p in list_checkpoints(output_dir) if progress_of(p.name) <= upto)


def start_fresh_outputs(output_dir: Path, console: Console, why: str = "a fresh run",
                        resuming: Path | None = None) -> Path | None:
    """A fresh run in a folder that holds an earlier run's files (its checkpoints and whichever of
    :data:`RUN_FILES` exist) moves them all into ``<output-dir>/run.before-<time>/`` first, so none is
    overwritten (its ``epoch_001.pth`` by this run's, its log by this log) or removed by this run's
    rotation. Returns that folder (None: nothing to move). ``why`` starts the console's line; ``resuming``: the
    checkpoint of another folder a run resumes into ``output_dir`` (:func:`earlier_run_files`)."""
    checkpoints, earlier = earlier_run_files(output_dir, resuming)
    if not earlier:
        return None
    kept = _move_aside(earlier, output_dir, "run", "an earlier run's files")
    timelines = sum(p.name.startswith(f"{ABANDONED}.before-") for p in earlier)
    also = f", and {counted(timelines, 'folder')} of timelines it abandoned ({ABANDONED}.before-*)" if timelines else ""
    if checkpoints:
        what = f"{counted(len(checkpoints), 'checkpoint')}, newest {checkpoints[-1].name}{also}"
        then = f"; to continue that run instead, pass --resume {kept}"
    else:  # nothing to resume: its log and figure are kept, and --resume there would find no checkpoint
        what, then = f"no checkpoint{also}", ""
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
            _remove_copy(output_dir / LOG_NAME)
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


def _remove_copy(path: Path) -> None:
    """Remove what a copy cut short (a full disk) left at ``path``, a file or a folder, so that no part of a log or
    of its events passes for the whole; what cannot be removed stays."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


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
            _remove_copy(kept / name)  # half a log here would be carried over later as that timeline's whole history
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
        start_fresh_outputs(output_dir, console, why=f"resuming {ckpt_path} into another folder", resuming=ckpt_path)
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
    kept = _move_aside(moved + pointer, output_dir, ABANDONED, "checkpoints past the one resumed")
    for p in resumed:
        _link_or_copy(p, kept / p.name)
    history = _keep_history(output_dir, kept, console)
    if past != progress:
        console(f"=> resuming {ckpt_path.name} with another batch: epoch {progress[0] + 1}'s {len(later)} mid-epoch "
                f"and later checkpoint(s) (newest {newest}), named in the old batch's iterations, were kept in "
                f"{kept.name}/{history} (the resumed one also stays here until this run saves), so that this "
                f"run's checkpoints of the same names replace none of them")
        return
    console(f"=> resuming {ckpt_path.name}, an earlier checkpoint of this run: moved the "
            f"{counted(len(later), 'checkpoint')} past it (newest {newest}) to {kept.name}/{history}, so that none is "
            f"overwritten, returned to by --resume auto or kept by rotation before this run's own")
