"""The tester's engine: what ``tester_bary.py`` does with its flags (:mod:`utils.eval.options`).

:func:`main` checks the flags, chooses the model and the images, checks every output folder before the model
loads, then evaluates (``--tasks``, ``--degset/--tarset``: :func:`utils.eval.evaluation.evaluate_sets`) or
restores (``--input``: :func:`utils.eval.evaluation.restore_files`) under the locks of its output folders
(``--save``, ``--savetar``, ``--figs-dir``), and writes ``results.*`` (also when stopped, marked partial).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from utils.checkpoints import REFERENCE_MODEL_NAME, load_model, model_or_default
from utils.compiled import CompileError, check_compile, compile_cache_dir
from utils.data.doctor import tester_check
from utils.data.image_io import IMAGE_EXTENSIONS, ImageReadError, pixel_limit
from utils.data.pairing import DEGSET_FLAGS, PairingError
from utils.errors import UsageError, UserError, listing
from utils.eval.evaluation import EvaluationStopped, ImageTooSmall, evaluate_sets, perceptual_metrics, restore_files
from utils.eval.inference import check_precision, slow_precision_note
from utils.eval.options import get_args_parser
from utils.eval.outputs import (
    OutputFolderError,
    check_outputs_apart,
    check_outputs_outside_inputs,
    check_writable_folder,
    figure_names,
    inside,
    output_names,
    recorded_outputs,
    tester_writes,
)
from utils.eval.paper import paper_column, setting_note
from utils.eval.protocol import Protocol
from utils.eval.report import format_report, write_results
from utils.eval.tasks import (
    EvalSet,
    find_task_sets,
    ignored_inputs,
    input_files,
    input_paths,
    paired_set,
    paper_layout,
    present_paper_tasks,
    task_layout,
)
from utils.files import json_text, keep_aside, keep_aside_together, remove_stale_temporaries, write_text
from utils.output_lock import OutputLock
from utils.runtime import apply_gpus_flag, gpus_on_cpu_note, pick_device
from utils.streams import OutputClosed


class RunStopped(UserError):
    """The run stopped at an image after writing the results so far; the exit status is the failure's."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def _protocol(args) -> Protocol:
    try:
        return Protocol(protocol=args.protocol, metric_space=args.metric_space, ssim=args.ssim,
                        crop_border=args.crop_border, precision=args.precision, tile=args.tile,
                        tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, lpips=args.lpips, fid=args.fid,
                        noise_seed=args.noise_seed, compile=args.compile).validate()
    except ValueError as exc:  # the message names the flag and the fix
        raise UsageError(str(exc)) from exc


def _fail(message: str) -> None:
    """A usage error the user fixes: raised as :class:`UsageError`, which ``run_main`` prints as one
    ``error:`` line with exit status 2 (no traceback without --debug)."""
    raise UsageError(message)


def apply_defaults(args) -> bool:
    """Fill in ``--model`` and the tasks when not given, printing each choice and why (as the reference's
    tester, which needs no arguments); a missing checkpoint or benchmark is a one-line error, exit 2.
    Returns whether the tasks were chosen here."""
    args.model = model_or_default(args.model, f"put the authors' {REFERENCE_MODEL_NAME} there, train one with "
                                              f"trainer_bary.py")
    if not (args.tasks or args.degset or args.tarset or args.input):
        present = present_paper_tasks(args.data_root)
        if not present:
            _fail(f"no test data found under {Path(args.data_root).as_posix()}/ (none of the paper tasks' folders) "
                  f"— put the benchmarks there as {', '.join(paper_layout(args.data_root))}; or pass --data-root "
                  f"DIR, --degset/--tarset or --input")
        args.tasks = present
        print(f"=> no --tasks given: evaluating the paper tasks present under {Path(args.data_root).as_posix()}: "
              f"{', '.join(present)}")
        return True
    return False


def _check_flags(args) -> None:
    """Flags that cannot work together: :class:`UsageError` (exit status 2) before anything runs."""
    modes = [m for m, on in (("--tasks", args.tasks), ("--degset/--tarset", args.degset or args.tarset),
                             ("--input", args.input)) if on]
    if len(modes) > 1:
        _fail(f"choose one of --tasks, --degset/--tarset or --input (got {', '.join(modes)})")
    if bool(args.degset) != bool(args.tarset):
        _fail("--degset and --tarset go together: pass both (degraded images and their targets)")
    if args.input and args.savetar:
        _fail("--savetar saves targets, and --input has none: drop --savetar")
    if args.input and args.no_images:
        _fail("--no-images leaves --input nothing to do (its restorations are its only output): drop --no-images")
    if args.input and args.figs:
        _fail("--figs draws degraded | restored | target rows of benchmark sets, and --input has no targets: drop "
              "--figs (the restorations are saved under --save)")
    if args.input and args.max_images:
        _fail("--max-images cuts benchmark sets, and --input restores every image given: drop --max-images, or "
              "pass fewer images")
    defaults = get_args_parser(add_help=False)  # what each flag is when not given
    if args.input:  # nothing is scored: the scoring protocol's flags would be accepted and do nothing
        scoring = _flags_given(args, SCORING_FLAGS, defaults)
        if scoring:
            _fail(f"{' '.join(scoring)} {'sets' if len(scoring) == 1 else 'set'} how benchmark images are scored, "
                  f"and --input scores nothing (it restores every image whole, padded to multiples of 8): drop "
                  f"{' '.join(f.split()[0] for f in scoring)}, or pass --tasks or --degset/--tarset to score")
    root = _flags_given(args, ("data_root",), defaults) if (args.input or args.degset) else []
    if root:
        _fail(f"{root[0]}: it holds the --tasks sets, and {'--input' if args.input else '--degset/--tarset'} reads "
              f"no task: drop --data-root, or pass --tasks")
    figures = [] if args.figs else _flags_given(args, ("figs_dir", "fig_images"), defaults)
    if figures:
        _fail(f"{' '.join(figures)}: {'it chooses' if len(figures) == 1 else 'they choose'} the figures --figs draws, "
              f"and --figs is not given: add --figs, or drop {' '.join(f.split()[0] for f in figures)}")
    tiling = _flags_given(args, ("tile_overlap", "tile_batch"), defaults) if args.tile == 0 else []
    if tiling:
        _fail(f"--tile 0 never tiles, so {' '.join(tiling)} would do nothing: drop "
              f"{' '.join(f.split()[0] for f in tiling)}, or pass --tile N (or leave --tile out: tiles only where an "
              f"image would not fit)")


# The flags that only change how restorations are scored against targets (or which targets): with --input they
# would do nothing.
SCORING_FLAGS = ("protocol", "metric_space", "ssim", "crop_border", "lpips", "fid", "noise_seed", "compare_paper",
                 "skip_unpaired")


def _flags_given(args, dests, parser: argparse.ArgumentParser) -> list[str]:
    """Each of ``dests`` whose value differs from ``parser``'s default (the tester's), as its flag (and value)."""
    given = []
    for dest in dests:
        value, default = getattr(args, dest, None), parser.get_default(dest)
        if value != default:
            flag = "--" + dest.replace("_", "-")
            given.append(flag if isinstance(value, bool) else f"{flag} {value}")
    return given


def unused_noise_seed(args, sets: list[EvalSet]) -> str | None:
    """A warning for ``--noise-seed`` given when none of ``sets`` has synthetic noise to seed (no denoise task is
    evaluated); None otherwise."""
    given = _flags_given(args, ("noise_seed",), get_args_parser(add_help=False))
    if not given or any(item.sigma is not None for s in sets for item in s.items):
        return None
    evaluated = f"the sets evaluated ({', '.join(s.name for s in sets)}) have none" if sets else "no set is evaluated"
    return (f"{given[0]} has no effect: it only seeds the synthetic noise of denoise tasks, and {evaluated} (drop "
            f"--noise-seed, or evaluate a denoise task, e.g. --tasks denoise_25)")


def unmatched_comparison(args, sets: list[EvalSet]) -> str | None:
    """A warning for ``--compare-paper`` when none of ``sets`` fills a column of the paper's table (a
    ``--degset``/``--tarset`` row is named after its folder, ``input``, which is no paper set); None otherwise."""
    if not args.compare_paper or any(paper_column(s.name) for s in sets):
        return None
    how = ("a --degset/--tarset row is named after the degraded folder and cannot be matched: evaluate with "
           "--data-root DIR --tasks ... (e.g. --tasks derain for derain/Rain100L)") if args.degset else \
        "evaluate the paper's tasks (--tasks derain dehaze denoise_25 ...)"
    rows = ", ".join(s.name for s in sets) or "none"
    return (f"--compare-paper {args.compare_paper}: no row of this run (rows: {rows}) fills a column of the paper's "
            f"table, so every column will read 'not evaluated'; {how}")


def _find_sets(args, tasks_defaulted: bool) -> list[EvalSet]:
    """The sets to evaluate (``--degset``/``--tarset`` or ``--tasks``), cut to ``--max-images``."""
    if args.degset:
        row = Path(os.path.abspath(args.degset)).name  # the folder's own name, even for --degset .
        sets = [paired_set(row, args.degset, args.tarset, skip_unpaired=args.skip_unpaired, flags=DEGSET_FLAGS,
                           skip_bad_files=args.skip_bad_files)]
    else:
        notes: list[str] = []
        try:
            sets = find_task_sets(args.tasks, args.data_root, args.skip_unpaired, args.skip_bad_files, notes)
        except ValueError as exc:
            if not isinstance(exc, PairingError):  # a --tasks name that cannot be a folder
                raise UsageError(str(exc)) from exc
            if not tasks_defaulted:
                raise
            _fail(f"{exc} (found while evaluating every paper task present under {args.data_root}; pass --tasks "
                  f"to choose)")
        for note in dict.fromkeys(notes):  # once per folder, not once per noise level
            print(f"warning: {note}", file=sys.stderr)
    if args.max_images:
        for s in sets:
            s.items = s.items[:args.max_images]
    return sets


def _input_folders(args, sets: list[EvalSet]) -> tuple[list[Path], list[Path]]:
    """The folders the run reads images from: ``(trees, flat)``. ``trees`` are read with their subfolders (a
    ``--tasks`` task folder under --data-root): no output may be in one. ``flat`` are listed without their
    subfolders (``--input DIR``, the folders of the images and targets): an output may be below one, not in it."""
    trees = [Path(args.data_root) / task_layout(s.task).folder for s in sets] if not args.degset else []
    flat = [p if p.is_dir() else p.parent for p in input_paths(args.input)]
    for s in sets:
        for item in s.items:
            flat += [item.target.parent] + ([item.degraded.parent] if item.degraded is not None else [])
    return list(dict.fromkeys(trees)), list(dict.fromkeys(flat))


def _check_outputs(args, sets: list[EvalSet]) -> None:
    """Before the model is loaded: no output folder inside an input folder (unless --overwrite), none
    reached through a symbolic link out of its base, and every one creatable and writable (judged from the
    nearest existing folder, writing nothing: each is created and probed by its lock, :func:`_output_locks`)."""
    rows = [s.name for s in sets] if not args.degset else []

    def written(base: str) -> list[Path]:
        return [Path(base)] + [Path(base) / r for r in rows]

    def image_folders(base: str) -> list[Path]:  # where the image files go: <base>/<row>, or <base> itself
        return [Path(base) / r for r in rows] or [Path(base)]

    outputs = {"--save": (Path(args.save), written(args.save) if not args.no_images else [Path(args.save)])}
    images = {"--save": image_folders(args.save) if not args.no_images else []}
    if args.savetar:
        outputs["--savetar"] = (Path(args.savetar), written(args.savetar))
        images["--savetar"] = image_folders(args.savetar)
    if args.figs:
        outputs["--figs-dir"] = (Path(args.figs_dir), [Path(args.figs_dir)])
        images["--figs-dir"] = [Path(args.figs_dir)]
    trees, flat = _input_folders(args, sets)
    check_outputs_outside_inputs(outputs, trees, overwrite=args.overwrite, file_folders=flat)
    check_outputs_apart(images)
    for flag, (base, _) in outputs.items():
        check_writable_folder(base, flag, create=False)


def _stopped(stop: EvaluationStopped, written: str, kept: Path | None = None) -> RunStopped:
    """The one error line of a run stopped at an image: the failure, where the partial results are (and where
    the earlier complete ones went, ``kept``), the fix."""
    if isinstance(stop.__cause__, ImageTooSmall):
        hint = "; pass --skip-bad-files to leave images too small for these flags out, or score with other flags"
    elif isinstance(stop.__cause__, ImageReadError):
        hint = "; pass --skip-bad-files to leave unreadable images out"
    else:
        hint = ""
    earlier = f" (the files there before it started were moved to {kept})" if kept else ""
    return RunStopped(f"{stop} — the run stopped there; the results so far, marked partial, are in {written}"
                      f"{earlier}{hint}", stop.exit_status)


def _planned_outputs(args, sets: list[EvalSet], inputs: list[Path], save: Path) -> dict[Path, list[Path]]:
    """Every file this run will write, by the folder it is kept aside in (``--save``, ``--savetar``,
    ``--figs-dir``): the results.*, each restored image (and target) under its output name, each figure."""
    planned: dict[Path, list[Path]] = {save: [save / f"results.{ext}"
                                             for ext in (("json",) if args.input else ("json", "csv", "md"))]}

    def images(base: Path) -> list[Path]:
        if args.input:
            return [base / n for n in output_names([p.name for p in inputs])]
        return [(base / s.name if not args.degset else base) / n
                for s in sets for n in output_names([item.name for item in s.items])]
    if not args.no_images:
        planned[save] += images(save)
    if args.savetar:
        planned.setdefault(Path(args.savetar), []).extend(images(Path(args.savetar)))
    if args.figs:
        figs = Path(args.figs_dir)
        planned.setdefault(figs, []).extend(figs / name for name in figure_names([s.name for s in sets]))
    return planned


def _flag_of(args, base: Path) -> str:
    """The flag that named the output folder ``base``."""
    return "--save" if base == Path(args.save) else "--savetar" if args.savetar and base == Path(args.savetar) \
        else "--figs-dir"


def _keep_earlier_outputs(args, sets: list[EvalSet], inputs: list[Path], save: Path) -> Path | None:
    """Before anything is written: move the files this run would replace (an earlier run's results and
    restorations, or a user's own files of those names) into ``<folder>/results.before-<time>/``, kept at
    their places, and say so in one line per folder. With them go the restorations the earlier
    ``results.json`` in ``--save`` records (:func:`utils.eval.outputs.recorded_outputs`) that this run does not
    write (other tasks, images past a --max-images, any with --no-images): the new results.json would not
    describe them, and they stay with the record that does. Files this run reads stay. Returns the folder the
    ``--save`` files went to (None: nothing was there).
    ``--overwrite`` (outputs among the inputs) replaces what this run writes, as it says; but an earlier
    results.json whose run left other files (its restorations this run does not write, or, under ``--input``,
    which writes results.json alone, its results.csv/.md) goes aside with them, so that no record is left
    describing another run than the files beside it."""
    data = [f for s in sets for item in s.items for f in (item.degraded, item.target) if f is not None]
    read = {_real(f): f for f in [*inputs, *data]}
    planned = _planned_outputs(args, sets, inputs, save)
    trees = {_real(t) for t in _input_folders(args, sets)[0]} - {None}
    whole = {_real(f) for f in [*(p for p in input_paths(args.input) if p.is_dir()), *(f.parent for f in data)]}
    earlier = [p for p in _recorded_earlier(save) if p not in planned[save] and _real(p) not in read
               and not _in_input_folder(p, trees, whole - {None})]
    tables = _tables_beside_results_json(save) if args.input else []
    for base, paths in planned.items():  # --overwrite too: an image the run reads is never written over
        for p in paths:
            if _real(p) is not None and _real(p) in read:
                how = "" if p == read[_real(p)] else " (through a link)"
                raise OutputFolderError(f"{p} is where this run writes, and it is the image {read[_real(p)]} the "
                                        f"run reads{how} — choose another {_flag_of(args, base)}: not even "
                                        f"--overwrite writes over an image the run reads")
    if args.overwrite:
        if not tables and not earlier:
            return None
        record = [save / "results.json", *tables]
        kept = keep_aside(record + earlier, save / "results")
        more = f" and {len(earlier)} file(s) it records that this run does not write" if earlier else ""
        why = " (this run writes results.json alone)" if tables else ""
        print(f"=> an earlier run's {', '.join(p.name for p in record)}{more} were in {save}: moved to {kept}/{why}")
        return kept
    found = {base: [p for p in dict.fromkeys(paths) if _there(p)] for base, paths in planned.items()}
    found[save] += [p for p in tables if p not in found[save]]
    moving = {base: (there, earlier if base == save else []) for base, there in found.items()}
    moving = {base: lists for base, lists in moving.items() if lists[0] or lists[1]}
    # all folders or none: a --figs-dir that cannot be moved aside leaves --save's files where they were too
    kept = dict(zip(moving, keep_aside_together([(there + more, base / "results")
                                                 for base, (there, more) in moving.items()])))
    for base, (there, more) in moving.items():
        also = f", and {len(more)} more that the earlier results.json there records (this run does not " \
               f"write them)" if more else ""
        print(f"=> {len(there)} file(s) of the names this run writes were already in {base}{also}: moved to "
              f"{kept[base]}/")
    return kept.get(save)


def _in_input_folder(path: Path, trees: set[Path], flat: set[Path]) -> bool:
    """Whether ``path`` lies in a folder this run reads images from as a whole: below a tree (a ``--tasks``
    task folder), or directly in a flat folder (an ``--input`` folder, the folders of a set's images and
    targets); both given resolved. Such a file belongs to the run's data, whoever wrote it: it is not moved.
    (The folder of an ``--input`` file given by name is not read as a whole: only the file itself is spared.)"""
    folder = _real(path.parent)
    return folder is None or folder in flat or any(inside(folder, t) for t in trees)


def _recorded_earlier(save: Path) -> list[Path]:
    """The files the earlier ``results.json`` in ``save`` records writing there that are there still (as
    themselves: in no folder a link leads to out of ``save``); none when there is no such record, or it cannot
    be read as one."""
    try:
        record = json.loads((save / "results.json").read_bytes())
    except (OSError, ValueError):
        return []
    real_save = _real(save)
    if real_save is None:
        return []
    recorded = recorded_outputs(record, save)
    folders = {p.parent: _real(p.parent) for p in recorded}  # each folder resolved once
    return [p for p in recorded if _there(p) and folders[p.parent] is not None and inside(folders[p.parent], real_save)]


def _output_locks(args, save: Path) -> list[OutputLock]:
    """The locks of the folders this run writes into: ``--save``, ``--savetar`` and, with ``--figs``,
    ``--figs-dir``. A folder named by two flags (``--figs-dir`` equal to ``--save``) gets one lock, under the
    first flag: a second lock on it from this process would refuse the first. They are taken in the order of
    the folders' resolved paths, the same in every run, and a folder before the folders inside it (so that
    a run refused at a later lock removes the folders it made, inner ones first)."""
    folders = {"--save": save}
    if args.savetar:
        folders["--savetar"] = Path(args.savetar)
    if args.figs:
        folders["--figs-dir"] = Path(args.figs_dir)
    locks: dict[Path, OutputLock] = {}
    for flag, folder in folders.items():
        locks.setdefault(_real(folder) or folder.absolute(),
                         OutputLock(folder, flag, "tester", fix=f"choose another {flag}"))
    return [locks[real] for real in sorted(locks)]


def _remove_stale_temporaries(args, sets: list[EvalSet], save: Path) -> None:
    """Remove the temporaries a tester killed while writing (``kill -9``) left in ``--save`` and its row folders,
    which no other tester writes while this one holds their lock, and say so in one line:
    :func:`utils.files.remove_stale_temporaries` for the names the tester writes, and only temporaries that name
    their writer's process (the tester's always have), once that process is gone (or the file has not changed
    for 15 minutes). Nothing is removed in ``--savetar`` or ``--figs-dir`` (held too, but not tidied)."""
    rows = [s.name for s in sets] if not args.degset else []
    folders = [save, *(save / r for r in rows)]
    removed = [p for folder in dict.fromkeys(folders)
               for p in remove_stale_temporaries(folder, tester_writes, named_writer=True)]
    if removed:
        print(f"=> removed {len(removed)} unfinished temporary file(s) that a killed run left: "
              f"{', '.join(str(p) for p in removed[:5])}" + (f" and {len(removed) - 5} more" if len(removed) > 5
                                                             else ""))


def _there(path: Path) -> bool:
    """A file or a link (a dangling one too) is at ``path``: writing there would replace it."""
    return path.is_file() or path.is_symlink()


def _tables_beside_results_json(save: Path) -> list[Path]:
    """The results.csv/.md of an earlier run in ``save``, when its results.json is there too: an ``--input``
    run writes results.json alone, so these go aside with the json they describe."""
    if not _there(save / "results.json"):
        return []
    return [p for p in (save / "results.csv", save / "results.md") if _there(p)]


def _real(path: Path) -> Path | None:
    """``path`` with its links followed; None for a link that loops (no input can be one)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _nothing_scored(what: str, skipped: int, written: str) -> UserError:
    return UserError(f"{what}: none of the {skipped} image(s) could be used (each is listed with its reason in "
                     f"{written}); fix or replace them")


def main(args) -> dict:
    """Run the tester as ``args`` say; returns the results (also written to ``<save>/results.*``).

    Failures the user fixes raise :class:`utils.errors.UserError` subclasses (``__main__`` prints
    them as one ``error:`` line through :func:`utils.errors.run_main`).
    """
    if isinstance(args.input, list):  # --input "" (an unset variable) means not given, as for --degset
        args.input = [p for p in args.input if p] or None
    _check_flags(args)
    if getattr(args, "check_data", False):  # the data doctor: no model, nothing written
        return tester_check(args)
    for task in args.tasks or ():
        try:
            task_layout(task)
        except ValueError as exc:  # a name that cannot be a task: said before a checkpoint is looked for
            _fail(str(exc))
    # the flags first (device, protocol, compile mode), then the files they name
    gpus_note = apply_gpus_flag(args.gpus) or gpus_on_cpu_note(args.gpus, args.device)  # the reference's --gpus
    if gpus_note:
        print(f"warning: {gpus_note}", file=sys.stderr)
    device = pick_device(args.device, args.cuda, gpus_flag=True)  # DeviceError names the flag and the fix
    try:
        check_precision(device, args.precision)
    except ValueError as exc:  # fp16 on the CPU: said before anything is written
        raise UsageError(str(exc)) from None
    slow = slow_precision_note(device, args.precision)
    if slow:
        print(f"warning: {slow}", file=sys.stderr)
    protocol = _protocol(args)
    try:
        check_compile(protocol.compile, device)
    except CompileError as exc:
        raise UsageError(str(exc)) from exc
    tasks_defaulted = apply_defaults(args)
    save = Path(args.save)
    progress = not args.no_progress
    with pixel_limit(args.max_pixels):
        # What to read and where to write are settled before the model is loaded or anything restored.
        inputs = input_files(args.input) if args.input else []
        ignored, not_files, folders = ignored_inputs(args.input) if args.input else ([], [], [])
        if ignored:
            print(f"note: {len(ignored)} file(s) of the --input folders are not images of a kind read here "
                  f"({' '.join(IMAGE_EXTENSIONS)}) and are left out:{listing(ignored)}", file=sys.stderr)
        if not_files:
            print(f"note: {len(not_files)} entr{'y' if len(not_files) == 1 else 'ies'} of the --input folders "
                  f"{'is' if len(not_files) == 1 else 'are'} neither a file nor a folder (a link to nothing, a pipe) "
                  f"and left out:{listing(not_files)}", file=sys.stderr)
        if folders and inputs:  # a folder of subfolders alone is an error that names them (input_files)
            print(f"note: {len(folders)} subfolder(s) of the --input folders are not read (pass them too, e.g. "
                  f"--input {folders[0].parent}/*/):{listing(folders)}", file=sys.stderr)
        sets = [] if args.input else _find_sets(args, tasks_defaulted)
        for warning in (unused_noise_seed(args, sets), unmatched_comparison(args, sets)):
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        _check_outputs(args, sets)  # created below, by their locks, once the model and the metrics have loaded
        model, info = load_model(args.model, args.backbone, args.preset, dim=args.dim, num_blocks=args.num_blocks,
                                 num_refinement_blocks=args.num_refinement_blocks, heads=args.heads)
        if "note" in info:
            print(f"=> {info.pop('note')}")
        if protocol.compile != "off":
            print(f"=> --compile {protocol.compile}: the first image of each size compiles the network's forward "
                  f"(minutes; cached under {compile_cache_dir()} for later runs)")
        locks = _output_locks(args, save)
        if args.dry_run:
            for lock in locks:  # the real run would be refused: so is the dry one
                lock.check_free()
            count = len(inputs) if args.input else sum(len(s.items) for s in sets)
            rows = "" if args.input else f" in {len(sets)} row(s) ({', '.join(s.name for s in sets)})"
            figures = f", figures to {args.figs_dir}" if args.figs and not args.input else ""
            print(f"=> dry run: {info['model']} ({info['backbone']}) loads and {count} image(s){rows} are found; "
                  f"outputs would go to {save}{figures}. Nothing was restored or written; drop --dry-run to run")
            return {"dry_run": True, "model": info, "images": count, "rows": [s.name for s in sets]}
        # LPIPS/FID weights load now: a run that fails on them moves nothing aside
        metrics = None if args.input else perceptual_metrics(protocol, device)
        # one tester at a time writes each output folder: two would mix their images under one record, or replace
        # each other's targets and figures. The locks create the folders, and a run refused at one of them
        # removes those it made (still empty): a run that could not start leaves no empty output folder behind
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            _remove_stale_temporaries(args, sets, save)
            kept = _keep_earlier_outputs(args, sets, inputs, save)
            if args.input:
                return _restore_inputs(args, model, info, inputs, protocol, device, save, progress, kept)
            return _evaluate(args, model, info, sets, protocol, device, save, progress, kept, metrics)


def _evaluate(args, model, info, sets: list[EvalSet], protocol: Protocol, device, save: Path, progress: bool,
              kept: Path | None = None, metrics: tuple | None = None) -> dict:
    """``--tasks``/``--degset``: restore and score every set, print the table and write ``results.*`` into
    ``--save`` (also when stopped, marked partial)."""
    try:
        results = evaluate_sets(model, sets, protocol, device, save_dir=None if args.no_images else save,
                                savetar_dir=args.savetar, figs_dir=args.figs_dir if args.figs else None,
                                fig_images=args.fig_images, subfolders=not args.degset, progress=progress,
                                model_info=info, skip_bad_files=args.skip_bad_files, metrics=metrics)
        _record_flags(results, args)
    except EvaluationStopped as stop:
        _record_flags(stop.results, args)
        paths = _write_and_show(stop.results, save)
        raise _stopped(stop, f"{paths['json']} (.csv, .md)", kept) from stop
    paths = _write_and_show(results, save)
    drawn = [r["figure"] for r in results["tasks"].values() if r.get("figure")]
    figures = f"; figures: {Path(drawn[0]).parent}/ ({len(drawn)})" if drawn else ""
    print(f"\nresults: {paths['json']}, {paths['csv']}, {paths['md']}{figures}")
    if not any(r["count"] for r in results["tasks"].values()):
        raise _nothing_scored(", ".join(results["tasks"]), sum(r.get("skipped", 0) for r in results["tasks"].values()),
                              str(paths["md"]))
    return results


def _write_and_show(results: dict, save: Path) -> dict[str, Path]:
    """Write ``results.*`` into ``save``, then print the table, also when the writing failed (a full disk: the
    scores are on the screen at least). Written first: the table may go to a pipe whose reader has gone (``|
    head``), which then ends the run (:class:`~utils.streams.OutputClosed`) with the results kept."""
    try:
        paths = write_results(results, save)
    except BaseException:
        with contextlib.suppress(OutputClosed):  # the writing's own failure is the one to tell
            print(format_report(results))
        raise
    print(format_report(results))
    return paths


def _record_flags(results: dict, args) -> None:
    """What the results must say beside the protocol: the paper table asked for (and a note when the checkpoint
    was trained on another setting's families, :func:`~utils.eval.paper.setting_note`), and a cut to --max-images
    (each set's first N images: its numbers are not the whole set's)."""
    if args.compare_paper:
        results["compare_paper"] = args.compare_paper
        note = setting_note(results["protocol"].get("domains"), args.compare_paper)
        if note:
            results["compare_paper_note"] = note
    if args.max_images:
        results["protocol"]["max_images"] = args.max_images


def _restore_inputs(args, model, info, inputs, protocol, device, save: Path, progress: bool,
                    kept: Path | None = None) -> dict:
    """``--input``: restore the images into ``--save`` and write ``results.json`` (also when stopped).

    Nothing is scored, so the record says only what was done: the model, how it ran, and each
    image's output file and time (no metrics protocol, no tasks).
    """
    how = {"device": str(device), "precision": protocol.precision, "tile": protocol.tile}
    if protocol.tile:
        how.update(tile_overlap=protocol.tile_overlap, tile_batch=protocol.tile_batch)
    results = {"model": {k: info[k] for k in ("model", "backbone", "config_from") if k in info}, "run": how}

    def record(entries: list[dict]) -> list[str]:
        results["restored"] = [e for e in entries if "output" in e]
        skipped = [f"{e['name']} (unreadable: {e['skipped']})" for e in entries if "skipped" in e]
        if skipped:
            results["skipped_files"] = skipped
        return skipped

    try:
        skipped = record(restore_files(model, inputs, save, protocol, device, progress,
                                       skip_bad_files=args.skip_bad_files))
    except EvaluationStopped as stop:
        record(stop.row["restored"])
        results["partial"] = {"row": "input", "file": stop.file, "error": str(stop)}
        path = write_text(save / "results.json", json_text(results))
        with contextlib.suppress(OutputClosed):  # as the table of a benchmark run: how far it got (| head: gone)
            print(f"restored {len(results['restored'])} of {len(inputs)} image(s) into {save} before the run "
                  f"stopped at {stop.file}")
        raise _stopped(stop, str(path), kept) from stop
    path = write_text(save / "results.json", json_text(results))
    print(f"restored {len(results['restored'])} image(s) into {save}")
    for line in skipped:
        print(f"skipped: {line}")
    if not results["restored"]:
        raise _nothing_scored(f"--input {' '.join(map(str, input_paths(args.input)))}", len(skipped), str(path))
    return results
