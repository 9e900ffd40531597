"""The tester's engine: what ``tester_bary.py`` does with its flags (:mod:`utils.eval.options`).

:func:`main` checks the flags, chooses the model and the images, checks every output folder before the model
loads, then evaluates (``--tasks``, ``--degset/--tarset``: :func:`utils.eval.evaluation.evaluate_sets`) or
restores (``--input``: :func:`utils.eval.evaluation.restore_files`) under the locks of its output folders
(``--save``, ``--savetar``, ``--figs-dir``), and writes ``results.*`` (also when stopped, marked partial).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from utils.checkpoints import REFERENCE_MODEL_NAME, load_model, model_or_default
from utils.cli import network_size_overrides
from utils.compiled import CompileError, check_compile, inference_compile_note
from utils.data.doctor import tester_check
from utils.data.image_files import IMAGE_EXTENSIONS
from utils.data.image_io import ImageReadError, pixel_limit
from utils.data.pairing import DEGSET_FLAGS, PairingError, one_folder_twice
from utils.errors import UsageError, UserError, counted, listing, one_or_many
from utils.eval.evaluation import (
    EvaluationStopped,
    ImageTooSmall,
    evaluate_sets,
    perceptual_metrics,
    restore_files,
    run_description,
)
from utils.eval.inference import check_precision, slow_precision_note
from utils.eval.options import get_args_parser
from utils.eval.output_folders import check_outputs, keep_earlier_outputs, output_locks, remove_tester_temporaries
from utils.eval.paper import SETTINGS, only_in_table, other_setting_rows, paper_column, setting_note
from utils.eval.protocol import Protocol, protocol_from_args
from utils.eval.report import format_report, write_results
from utils.eval.resuming import (
    EarlierImages,
    check_same_run,
    check_same_weights,
    earlier_images,
    kept_outputs,
    own_figures,
    own_results_files,
    own_targets,
    read_earlier_results,
    recorded_digest,
)
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
from utils.files import json_text, write_text
from utils.owned_outputs import file_digest
from utils.runtime import apply_gpus_flag, gpus_on_cpu_note, kernel_setup, pick_device, provenance
from utils.streams import OutputClosed


class RunStopped(UserError):
    """The run stopped at an image after writing the results so far; the exit status is the failure's."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


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
    if args.resume and args.input:
        _fail("--resume continues a benchmark run (--tasks or --degset/--tarset), and --input scores nothing: drop "
              "--resume (an --input run restores every image again)")
    if args.resume and args.fid:
        _fail("--resume keeps the earlier run's scores, and FID needs every image's features, which results.json "
              "does not keep: drop --fid, or drop --resume to evaluate afresh")
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
    one_folder = one_folder_twice(args.degset, args.tarset)
    if one_folder:
        _fail(one_folder)
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
    """A warning for ``--compare-paper`` when none of ``sets`` fills a column of the setting's table (a
    ``--degset``/``--tarset`` row is named after its folder, ``input``, which is no paper set; ``denoise_15/bsd68``
    fills a 3D column, which the 5D table has not), or when some fill a column only the other setting's table has
    (left out of the comparison); None otherwise."""
    setting = args.compare_paper
    if not setting:
        return None
    names = [s.name for s in sets]
    elsewhere = other_setting_rows(names, setting)
    fills = [n for n in names if paper_column(n) in SETTINGS[setting]]
    if fills and not elsewhere:
        return None
    said = "; ".join(f"{row} ({column}) has a number {where}: {flags}"
                     for row, column in elsewhere.items() for where, flags in [only_in_table([column])])
    if fills:
        return f"--compare-paper {setting}: left out of its table, named under it: {said}"
    how = said or (("a --degset/--tarset row is named after the degraded folder and cannot be matched: evaluate with "
                    "--data-root DIR --tasks ... (e.g. --tasks derain for derain/Rain100L)") if args.degset else
                   "evaluate the paper's tasks (--tasks derain dehaze denoise_25 ...)")
    rows = ", ".join(names) or "none"
    return (f"--compare-paper {setting}: no row of this run (rows: {rows}) fills a column of the paper's "
            f"{setting.upper()} table, so every column will read 'not evaluated'; {how}")


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


def _stopped(stop: EvaluationStopped, written: str, kept: Path | None = None, resumable: bool = True) -> RunStopped:
    """The one error line of a run stopped at an image: the failure, where the partial results are (and where
    the earlier complete ones went, ``kept``), the fix, and (``resumable``) that --resume continues it."""
    if isinstance(stop.__cause__, ImageTooSmall):
        hint = "; pass --skip-bad-files to leave images too small for these flags out, or score with other flags"
    elif isinstance(stop.__cause__, ImageReadError):
        hint = "; pass --skip-bad-files to leave unreadable images out"
    else:
        hint = ""
    earlier = f" (the files there before it started were moved to {kept})" if kept else ""
    again = "; the same command with --resume continues it" if resumable else ""
    return RunStopped(f"{stop} — the run stopped there; the results so far, marked partial, are in {written}"
                      f"{earlier}{hint}{again}", stop.exit_status)


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
    protocol = protocol_from_args(args)
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
        check_outputs(args, sets, inputs)  # created below, by their locks, once the model and the metrics have loaded
        model, info = load_model(args.model, args.backbone, args.preset, **network_size_overrides(args))
        if "note" in info:
            print(f"=> {info.pop('note')}")
        if protocol.compile != "off":
            print(f"=> --compile {protocol.compile}: the first image of each size compiles the network's forward "
                  f"({inference_compile_note(device)})")
        made = _provenance(info["model"])  # the checkpoint hashed once, as it was loaded (--resume compares it)
        locks = output_locks(args, save, sets)
        earlier = _earlier_images(args, sets, save, protocol, device, info, made, say=args.dry_run) \
            if args.resume else {}
        if args.dry_run:
            for lock in locks:  # the real run would be refused: so is the dry one
                lock.check_free()
            count = len(inputs) if args.input else sum(len(s.items) for s in sets)
            rows = "" if args.input else f" in {counted(len(sets), 'row')} ({', '.join(s.name for s in sets)})"
            figures = f", figures to {args.figs_dir}" if args.figs and not args.input else ""
            are = one_or_many(count, "is", "are")
            print(f"=> dry run: {info['model']} ({info['backbone']}) loads, and {counted(count, 'image')}{rows} {are} "
                  f"found; outputs would go to {save}{figures}. Nothing was restored or written; drop --dry-run to run")
            return {"dry_run": True, "model": info, "images": count, "rows": [s.name for s in sets]}
        # LPIPS/FID weights load now: a run that fails on them moves nothing aside
        metrics = None if args.input else perceptual_metrics(protocol, device)
        # one tester at a time writes each output folder: two would mix their images under one record, or replace
        # each other's targets and figures. The locks create the folders, and a run refused at one of them
        # removes those it made (still empty): a run that could not start leaves no empty output folder behind
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            remove_tester_temporaries(args, sets, save)
            own: set[Path] = set()
            if args.resume:  # read again under the lock: no other tester has changed it since
                earlier = _earlier_images(args, sets, save, protocol, device, info, made)
                record = read_earlier_results(save)
                own = own_results_files(record, sets, save)  # replaced, not piled up aside
                own |= own_figures(record, Path(args.figs_dir)) if args.figs else set()
                own |= own_targets(earlier, Path(args.savetar)) if args.savetar else set()
            kept = keep_earlier_outputs(args, sets, inputs, save, keep=kept_outputs(earlier, save) | own)
            if args.input:
                return _restore_inputs(args, model, info, inputs, protocol, device, save, progress, made, kept)
            return _evaluate(args, model, info, sets, protocol, device, save, progress, made, kept, metrics, earlier)


def _earlier_images(args, sets: list[EvalSet], save: Path, protocol: Protocol, device, info: dict, made: dict,
                    say: bool = True) -> EarlierImages:
    """``--resume``: the images of ``sets`` the run recorded in ``<save>/results.json`` scored, checked to have
    scored as this run does (``made``: this run's :func:`_provenance`, its checkpoint's digest); said on one line
    (``say``)."""
    record = read_earlier_results(save)
    check_same_run(record["protocol"], run_description(protocol, device, info), save / "results.json",
                   same_weights=recorded_digest(record) == made["model_sha256"])
    check_same_weights(record, made["model_sha256"], info["model"], save / "results.json")
    earlier, changed = earlier_images(record, sets, save, subfolders=not args.degset, saves_images=not args.no_images)
    kept, total = sum(len(row) for row in earlier.values()), sum(len(s.items) for s in sets)
    if say and changed:
        n = len(changed)
        print(f"note: --resume: {counted(n, 'image')} scored by that run {one_or_many(n, 'is', 'are')} scored again: "
              f"{one_or_many(n, 'its', 'their')} degraded or target file holds other content now (replaced since "
              f"under the same name):{listing(changed)}")
    if say:
        print(f"=> --resume: {kept:,} of the {counted(total, 'image')} were scored by the run recorded in "
              f"{save / 'results.json'} and are kept; {total - kept:,} to evaluate")
    return earlier


def _evaluate(args, model, info, sets: list[EvalSet], protocol: Protocol, device, save: Path, progress: bool,
              made: dict, kept: Path | None = None, metrics: tuple | None = None,
              earlier: EarlierImages | None = None) -> dict:
    """``--tasks``/``--degset``: restore and score every set, print the table and write ``results.*`` into
    ``--save`` (also when stopped, marked partial); ``made``: :func:`_provenance`."""
    try:
        results = evaluate_sets(model, sets, protocol, device, save_dir=None if args.no_images else save,
                                savetar_dir=args.savetar, figs_dir=args.figs_dir if args.figs else None,
                                fig_images=args.fig_images, subfolders=not args.degset, progress=progress,
                                model_info=info, skip_bad_files=args.skip_bad_files, metrics=metrics,
                                earlier=earlier)
        _record_flags(results, args, made)
    except EvaluationStopped as stop:
        _record_flags(stop.results, args, made)
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


def _record_flags(results: dict, args, made: dict) -> None:
    """What the results must say beside the protocol: the paper table asked for (and a note when the checkpoint
    was trained on another setting's families, :func:`~utils.eval.paper.setting_note`), a cut to --max-images
    (each set's first N images: its numbers are not the whole set's), and how to run them again (the command, the
    commit, the versions: ``made``, :func:`_provenance`), and the ``--savetar`` folder its targets went to."""
    results["provenance"] = made
    if args.savetar:  # where its targets are: a later run into the same --savetar moves those it does not write aside
        results["savetar"] = str(Path(args.savetar).absolute())
    if args.compare_paper:
        results["compare_paper"] = args.compare_paper
        note = setting_note(results["protocol"].get("domains"), args.compare_paper)
        if note:
            results["compare_paper_note"] = note
    if args.max_images:
        results["protocol"]["max_images"] = args.max_images


def _provenance(model: str) -> dict:
    """How to run the results again (:func:`~utils.runtime.provenance`, :func:`~utils.runtime.kernel_setup`), and
    the SHA-256 of the checkpoint: its path may later hold other weights (a fresh run in its folder)."""
    return {**provenance(), **kernel_setup(), "model_sha256": file_digest(Path(model))}


def _restore_inputs(args, model, info, inputs, protocol, device, save: Path, progress: bool, made: dict,
                    kept: Path | None = None) -> dict:
    """``--input``: restore the images into ``--save`` and write ``results.json`` (also when stopped).

    Nothing is scored, so the record says only what was done: the model, how it ran, and each
    image's output file and time (no metrics protocol, no tasks).
    """
    how = {"device": str(device), "precision": protocol.precision, "tile": protocol.tile}
    if protocol.tile:
        how.update(tile_overlap=protocol.tile_overlap, tile_batch=protocol.tile_batch)
    results = {"model": {k: info[k] for k in ("model", "backbone", "config_from") if k in info}, "run": how,
               "provenance": made}

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
            print(f"restored {len(results['restored'])} of {counted(len(inputs), 'image')} into {save} before the run "
                  f"stopped at {stop.file}")
        raise _stopped(stop, str(path), kept, resumable=False) from stop
    path = write_text(save / "results.json", json_text(results))
    print(f"restored {counted(len(results['restored']), 'image')} into {save}")
    for line in skipped:
        print(f"skipped: {line}")
    if not results["restored"]:
        raise _nothing_scored(f"--input {' '.join(map(str, input_paths(args.input)))}", len(skipped), str(path))
    return results
