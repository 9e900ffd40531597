"""One tester run's output folders (``--save``, ``--savetar``, ``--figs-dir``) before it writes: none inside what
it reads, every file it will write (:func:`keep_earlier_outputs` moves what stands at those names aside, never
an input), the locks that keep a second tester out, and the temporaries a killed one left. The rules themselves
(names, what counts as an input folder, what a record names) are in :mod:`utils.eval.outputs`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from utils.errors import counted
from utils.eval.outputs import (
    OutputFolderError,
    check_outputs_apart,
    check_outputs_outside_inputs,
    check_writable_folder,
    figure_names,
    inside,
    output_names,
    recorded_figures,
    recorded_outputs,
    recorded_targets,
    tester_writes,
)
from utils.eval.tasks import EvalSet, input_paths, task_layout
from utils.files import keep_aside_together, remove_stale_temporaries
from utils.output_lock import OutputLock
from utils.owned_outputs import as_written


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


def check_outputs(args, sets: list[EvalSet], inputs: list[Path]) -> None:
    """Before the model is loaded: no output folder inside an input folder (unless --overwrite), no output file
    at an input's path (:func:`check_inputs_not_overwritten`), none
    reached through a symbolic link out of its base, and every one creatable and writable (judged from the
    nearest existing folder, writing nothing: each is created and probed by its lock, :func:`output_locks`)."""
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
    check_inputs_not_overwritten(args, sets, inputs, Path(args.save), _earlier_record(Path(args.save)))
    for flag, (base, _) in outputs.items():
        check_writable_folder(base, flag, create=False)


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


def check_inputs_not_overwritten(args, sets: list[EvalSet], inputs: list[Path], save: Path, record: Any) -> None:
    """No file this run writes is an image it reads (by its real path: a link to one counts), ``--overwrite`` or not:
    :class:`OutputFolderError` naming both, and whether it is an earlier run's restoration now read as an input.
    ``record``: the earlier ``results.json`` in ``save``, parsed (:func:`_earlier_record`)."""
    data = [f for s in sets for item in s.items for f in (item.degraded, item.target) if f is not None]
    read = {_real(f): f for f in [*inputs, *data]}
    restored_before = {_real(p) for p in _recorded_earlier(save, record)} - {None}
    for base, paths in _planned_outputs(args, sets, inputs, save).items():
        for p in paths:
            if _real(p) is not None and _real(p) in read:
                how = "" if p == read[_real(p)] else " (through a link)"
                why = (f"; it is a restoration the earlier results.json in {save} records, now read as an input: "
                       f"move the earlier restorations out of the folders read") if _real(p) in restored_before else ""
                raise OutputFolderError(f"{p} is where this run writes, and it is the image {read[_real(p)]} the "
                                        f"run reads{how}{why} — choose another {_flag_of(args, base)}: not even "
                                        f"--overwrite writes over an image the run reads")


def keep_earlier_outputs(args, sets: list[EvalSet], inputs: list[Path], save: Path,
                         keep: frozenset[Path] | set[Path] = frozenset()) -> Path | None:
    """Before anything is written: move the files this run would replace (an earlier run's results and
    restorations, or a user's own files of those names) into ``<folder>/results.before-<time>/``, kept at
    their places, and say so in one line per folder. With them go the restorations the earlier
    ``results.json`` in ``--save`` records (:func:`utils.eval.outputs.recorded_outputs`) that this run does not
    write (other tasks, images past a --max-images, any with --no-images): the new results.json would not
    describe them, and they stay with the record that does; and so do the targets and figures it records writing
    into this run's ``--savetar`` and ``--figs-dir`` that this run does not write, when they are still as that run
    wrote them (:func:`_recorded_beside`; a file edited since is the user's, and stays). Files this run reads
    stay. Returns the folder the ``--save`` files went to (None: nothing was there).
    ``--overwrite`` (outputs among the inputs) replaces what this run writes, as it says; but an earlier
    results.json whose run left other files (its restorations this run does not write, or, under ``--input``,
    which writes results.json alone, its results.csv/.md) goes aside with them, so that no record is left
    describing another run than the files beside it. ``keep``: files that stay where they are: the restorations
    of the images ``--resume`` keeps (:func:`utils.eval.resuming.kept_outputs`), and its earlier ``results.*`` as
    that run wrote them, which the new ones replace (:func:`utils.eval.resuming.own_results_files`)."""
    data = [f for s in sets for item in s.items for f in (item.degraded, item.target) if f is not None]
    read = {_real(f): f for f in [*inputs, *data]}
    planned = _planned_outputs(args, sets, inputs, save)
    trees = {_real(t) for t in _input_folders(args, sets)[0]} - {None}
    whole = {_real(f) for f in [*(p for p in input_paths(args.input) if p.is_dir()), *(f.parent for f in data)]}
    written = {p for paths in planned.values() for p in paths}

    def not_this_runs(p: Path) -> bool:  # a recorded file this run neither writes nor reads nor keeps (--resume)
        return p not in written and p not in keep and _real(p) not in read and not _in_input_folder(p, trees,
                                                                                                     whole - {None})
    record = _earlier_record(save)
    earlier = [p for p in _recorded_earlier(save, record) if not_this_runs(p)]
    recorded = {save: earlier}  # by the folder they lie in: with the targets and figures of this run's folders
    for base, paths in _recorded_beside(args, record).items():
        recorded[base] = list(dict.fromkeys([*recorded.get(base, []), *filter(not_this_runs, paths)]))
    tables = _tables_beside_results_json(save) if args.input else []
    check_inputs_not_overwritten(args, sets, inputs, save, record)
    if args.overwrite:
        if not tables and not any(recorded.values()):
            return None
        record = [save / "results.json", *tables]
        others = {base: paths for base, paths in recorded.items() if base != save and paths}
        kept, *kept_others = keep_aside_together([(record + recorded[save], save / "results"),
                                                  *((paths, base / "results") for base, paths in others.items())])
        more = f" and {counted(len(recorded[save]), 'file')} it records that this run does not write" \
            if recorded[save] else ""
        why = " (this run writes results.json alone)" if tables else ""
        print(f"=> an earlier run's {', '.join(p.name for p in record)}{more} were in {save}: moved to {kept}/{why}")
        for (base, paths), kept_there in zip(others.items(), kept_others):
            print(f"=> with them, {counted(len(paths), 'file')} in {base} that the earlier results.json records "
                  f"(this run does not write them): moved to {kept_there}/")
        return kept
    found = {base: [p for p in dict.fromkeys(paths) if _there(p) and p not in keep] for base, paths in planned.items()}
    found[save] += [p for p in tables if p not in found[save]]
    moving = {base: (found.get(base, []), recorded.get(base, [])) for base in dict.fromkeys([*found, *recorded])}
    moving = {base: lists for base, lists in moving.items() if lists[0] or lists[1]}
    # all folders or none: a --figs-dir that cannot be moved aside leaves --save's files where they were too
    kept = dict(zip(moving, keep_aside_together([(there + more, base / "results")
                                                 for base, (there, more) in moving.items()])))
    for base, (there, more) in moving.items():
        where = "there" if base == save else f"in {save}"
        also = f", and {len(more)} more that the earlier results.json {where} records (this run does not " \
               f"write them)" if more else ""
        print(f"=> {len(there)} file(s) of the names this run writes were already in {base}{also}: moved to "
              f"{kept[base]}/")
    return kept.get(save)


def _recorded_beside(args, record: Any) -> dict[Path, list[Path]]:
    """The targets and figures the earlier ``results.json`` (parsed: ``record``) records writing into the
    ``--savetar`` and ``--figs-dir`` this run writes (the record's ``"savetar"`` is that folder; a figure's recorded
    path lies in it), by this run's folder, that are there still as that run wrote them (the SHA-256 it recorded of
    each; not a link) and as themselves (in no folder a link leads to out of that folder). None in a --savetar the
    record does not name (another one, or a record written before it named one): they are not known to be that
    run's."""
    if not isinstance(record, dict):
        return {}
    wanted: dict[Path, dict[Path, str]] = {}
    savetar = record.get("savetar")
    if args.savetar and isinstance(savetar, str) and Path(savetar).is_absolute() \
            and _real(Path(savetar)) == _real(Path(args.savetar)):
        wanted[Path(args.savetar)] = recorded_targets(record, Path(args.savetar))
    if args.figs:
        figs = Path(args.figs_dir)
        wanted[figs] = {figs / drawn.name: digest for drawn, digest in recorded_figures(record).items()
                        if _real(drawn.parent) == _real(figs)}
    found: dict[Path, list[Path]] = {}
    for base, files in wanted.items():
        real_base = _real(base)
        folders = {p.parent: _real(p.parent) for p in files}  # each folder resolved once
        found[base] = [p for p, digest in files.items() if real_base is not None and folders[p.parent] is not None
                       and inside(folders[p.parent], real_base) and as_written(p, digest)]
    return found


def _in_input_folder(path: Path, trees: set[Path], flat: set[Path]) -> bool:
    """Whether ``path`` lies in a folder this run reads images from as a whole: below a tree (a ``--tasks``
    task folder), or directly in a flat folder (an ``--input`` folder, the folders of a set's images and
    targets); both given resolved. Such a file belongs to the run's data, whoever wrote it: it is not moved.
    (The folder of an ``--input`` file given by name is not read as a whole: only the file itself is spared.)"""
    folder = _real(path.parent)
    return folder is None or folder in flat or any(inside(folder, t) for t in trees)


def _earlier_record(save: Path) -> Any:
    """The earlier ``results.json`` in ``save``, parsed; None when there is none or it is not JSON."""
    try:
        return json.loads((save / "results.json").read_bytes())
    except (OSError, ValueError):
        return None


def _recorded_earlier(save: Path, record: Any) -> list[Path]:
    """The files the earlier ``results.json`` in ``save`` (parsed: ``record``, from :func:`_earlier_record`) records
    writing there that are there still (as themselves: in no folder a link leads to out of ``save``); none when
    there is no such record, or it cannot be read as one."""
    real_save = _real(save)
    if real_save is None:
        return []
    recorded = recorded_outputs(record, save)
    folders = {p.parent: _real(p.parent) for p in recorded}  # each folder resolved once
    return [p for p in recorded if _there(p) and folders[p.parent] is not None and inside(folders[p.parent], real_save)]


def output_locks(args, save: Path, sets: Sequence[EvalSet] = ()) -> list[OutputLock]:
    """The locks of the folders this run writes into: ``--save``, ``--savetar`` and, with ``--figs``,
    ``--figs-dir``, and the row folders of ``sets`` it writes in ``--save`` and ``--savetar`` (``--tasks``:
    ``<save>/derain/Rain100L``), which another tester may write as its own ``--save`` (that set alone, into the
    row folder) and replace this run's restorations under their names. A folder named by two flags (``--figs-dir``
    equal to ``--save``) gets one lock, under the first flag: a second lock on it from this process would refuse
    the first. They are taken in the order of the folders' resolved paths, the same in every run, and a folder
    before the folders inside it (so that a run refused at a later lock removes the folders it made, inner ones
    first)."""
    rows = [s.name for s in sets] if not args.degset else []
    folders = [("--save", save), *(("--save", save / r) for r in rows if not args.no_images)]
    if args.savetar:
        folders += [("--savetar", Path(args.savetar)), *(("--savetar", Path(args.savetar) / r) for r in rows)]
    if args.figs:
        folders.append(("--figs-dir", Path(args.figs_dir)))
    locks: dict[Path, OutputLock] = {}
    for flag, folder in folders:
        locks.setdefault(_real(folder) or folder.absolute(),
                         OutputLock(folder, flag, "tester", fix=f"choose another {flag}"))
    return [locks[real] for real in sorted(locks)]


def remove_tester_temporaries(args, sets: list[EvalSet], save: Path) -> None:
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
        print(f"=> removed {counted(len(removed), 'unfinished temporary file')} that a killed run left: "
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
