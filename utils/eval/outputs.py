"""Where the tester writes, and the rules that keep it from harming the user's files.

* :func:`output_names`: one output name per input, never two alike. An input ``NAME.EXT`` gives
  ``NAME.png``; when inputs of one folder share a name (``a.png``, ``a.jpg``), the ``.png`` one
  keeps ``a.png`` and the others carry their extension: ``a_jpg.png``.
* :func:`check_writable_folder`: an output folder is created and probed before any work starts,
  so a read-only or mistyped folder fails at once, not after a whole evaluation.
* :func:`check_outputs_outside_inputs`: an output folder equal to or inside a folder the run reads
  (or reached through a symbolic link into one) is refused unless the user says ``--overwrite``;
  an output folder that a symbolic link leads out of its base (``--save``) is refused always, and so is an output
  at the path of an image the run reads (:func:`utils.eval.output_folders.check_inputs_not_overwritten`);
* :func:`check_outputs_apart`: two flags never write images into one folder (``--save`` equal to
  ``--savetar`` would replace every restoration by its target).
* result files are written as images are (:func:`utils.files.write_text`, :func:`utils.files.replace_file`):
  a finished temporary file renamed over the old one, so a link in their place is replaced, not
  followed.

Files of an earlier run in the same folder under the names a run writes, and the restorations, targets and figures
its ``results.json`` records (:func:`recorded_outputs`, :func:`recorded_targets`, :func:`recorded_figures`) that
this run does not write, are moved aside first, by the
tester (``results.before-<time>/``, :func:`utils.eval.output_folders.keep_earlier_outputs`); anything else in the
folder is left alone. Temporaries a killed tester left there are removed (:func:`tester_writes`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from utils.errors import UsageError


class OutputFolderError(UsageError):
    """An output folder cannot be used (not writable, or it would overwrite inputs); exit status 2."""


def output_names(names: Sequence[str], suffix: str = ".png") -> list[str]:
    """The output file name of each input file name, in order (see the module rule).

    ``a.png``, ``a.jpg``, ``b.tif`` -> ``a.png``, ``a_jpg.png``, ``b.png``. Names are compared
    case-blind (``A.png`` and ``a.jpg`` clash on macOS and Windows); if an output still meets another,
    the input already called that name keeps it (``a.png`` beside ``a.PNG``; ``a_jpg.png``, an earlier
    output read again, beside ``a.jpg``) and ``_2``, ``_3``, ... follow the other's stem.
    """
    stems = [Path(n).stem for n in names]
    count: dict[str, int] = {}
    for stem in stems:
        count[stem.casefold()] = count.get(stem.casefold(), 0) + 1
    wanted = []
    for name, stem in zip(names, stems):
        ext = Path(name).suffix
        keeps = count[stem.casefold()] == 1 or ext.lower() == suffix.lower() or not ext
        wanted.append(stem if keeps else f"{stem}_{ext.lstrip('.')}")
    taken: set[str] = set()
    out = [""] * len(names)
    # an input already called what its output is called keeps the name: b.png gives b.png, and b.PNG beside it
    # b_2.png (not the other way round, which would pair b.png with another image's restoration)
    for i in sorted(range(len(names)), key=lambda i: names[i] != wanted[i] + suffix):
        candidate, k = wanted[i], 1
        while (candidate + suffix).casefold() in taken:
            k += 1
            candidate = f"{wanted[i]}_{k}"
        taken.add((candidate + suffix).casefold())
        out[i] = candidate + suffix
    return out


def figure_names(rows: Sequence[str]) -> list[str]:
    """The ``--figs`` file name of each result row, in order, never two alike: ``derain/Rain100L`` ->
    ``derain_Rain100L.png``; a row whose name another row's already took (a task ``derain_demo`` beside the set
    ``derain/demo``) gets ``_2``, ``_3``, ... (compared case-blind, as :func:`output_names`)."""
    taken: set[str] = set()
    out = []
    for row in rows:
        stem = row.replace("/", "_")
        candidate, k = stem, 1
        while (candidate + ".png").casefold() in taken:
            k += 1
            candidate = f"{stem}_{k}"
        taken.add((candidate + ".png").casefold())
        out.append(candidate + ".png")
    return out


RESULT_NAMES = ("results.json", "results.csv", "results.md")  # the record the tester writes into --save


def tester_writes(name: str) -> bool:
    """Whether the tester writes files named ``name``: its result files, and images and figures (``.png``)."""
    return name in RESULT_NAMES or name.endswith(".png")


def _restoration_name(name: str) -> bool:
    """Whether ``name`` is a file name the tester gives a restoration: ``<stem>.png``, not hidden."""
    return name.endswith(".png") and not name.startswith(".") and "/" not in name and name != ".png"


def recorded_outputs(results: Any, save: Path) -> list[Path]:
    """The restorations the run that wrote ``results`` (its parsed ``results.json``, which lies in ``save``)
    recorded writing into ``save``: each ``--input`` restoration (``"restored"``: the name of ``"output"``,
    ``<name>.png``, in ``save``) and each benchmark restoration (``"tasks"``: every image's ``"output"``,
    ``<row>/<name>.png`` with ``<row>`` that task's own key (one folder, or two: ``derain/Rain100L``), or
    ``<name>.png`` for a ``--degset`` run). Only names the tester gives its restorations are taken
    (:func:`_restoration_name`: ``.png``, not hidden), so a record that is not the tester's, or was edited,
    never names its lock, its ``results.*``, a checkpoint or anything outside ``save``. Whether the files are
    there is not looked at."""
    if not isinstance(results, dict):
        return []
    found: list[Path] = []
    restored = results.get("restored")
    for entry in restored if isinstance(restored, list) else []:
        output = entry.get("output") if isinstance(entry, dict) else None  # the path as written: its name counts
        name = Path(output).name if isinstance(output, str) else ""
        if _restoration_name(name):
            found.append(save / name)
    found += [path for path, _ in _task_outputs(results, save)]
    return list(dict.fromkeys(found))


def _task_outputs(results: dict, folder: Path) -> list[tuple[Path, dict]]:
    """Each benchmark image of ``results`` (a parsed ``results.json``) with its ``"output"`` under ``folder``:
    ``(folder/<row>/<name>.png or folder/<name>.png, the image's entry)``, as :func:`recorded_outputs` takes them."""
    found = []
    tasks = results.get("tasks")
    for row, summary in tasks.items() if isinstance(tasks, dict) else []:
        images = summary.get("images") if isinstance(summary, dict) else None
        folders = row.split("/") if isinstance(row, str) else [""]  # a row may be two levels: derain/Rain100L
        row_ok = all(f not in ("", ".", "..") for f in folders)
        for image in images if isinstance(images, list) else []:
            output = image.get("output") if isinstance(image, dict) else None
            parts = output.split("/") if isinstance(output, str) else []
            if row_ok and parts[:-1] == folders and _restoration_name(parts[-1]):
                found.append((folder.joinpath(*folders, parts[-1]), image))
            elif len(parts) == 1 and _restoration_name(parts[0]):
                found.append((folder / parts[0], image))
    return found


def recorded_targets(results: Any, savetar: Path) -> dict[Path, str]:
    """The targets the run that wrote ``results`` (its parsed ``results.json``) saved into its ``--savetar``, here
    ``savetar`` (the record's ``"savetar"``: the caller checks that it is this folder), each with the SHA-256 it had
    when written (its image's ``"target_sha256"``): at the place of the image's restoration (``"output"``) under
    ``savetar``, by the same rules as :func:`recorded_outputs`. An image without both is not named."""
    if not isinstance(results, dict):
        return {}
    return {path: image["target_sha256"] for path, image in _task_outputs(results, savetar)
            if isinstance(image.get("target_sha256"), str)}


def recorded_figures(results: Any) -> dict[Path, str]:
    """The figures the run that wrote ``results`` (its parsed ``results.json``) drew, each row's ``"figure"`` (its
    path as given then) with the SHA-256 it had when drawn (``"figure_sha256"``); only names the tester gives a
    figure (``.png``, not hidden)."""
    tasks = results.get("tasks") if isinstance(results, dict) else None
    found = {}
    for summary in tasks.values() if isinstance(tasks, dict) else []:
        drawn, digest = (summary.get("figure"), summary.get("figure_sha256")) if isinstance(summary, dict) \
            else (None, None)
        if isinstance(drawn, str) and isinstance(digest, str) and _restoration_name(Path(drawn).name):
            found[Path(drawn)] = digest
    return found


def check_writable_folder(folder: str | os.PathLike, flag: str, create: bool = True, fix: str = "") -> Path:
    """Create ``folder`` (with its parents) and write a probe file in it; one :class:`OutputFolderError`
    naming the flag and the folder when that fails (``fix``: what to do, default "choose another <flag>").
    Returns the folder. With ``create=False`` nothing is written: the nearest existing folder on the way
    must be one this process may write into."""
    folder = Path(folder)
    fix = fix or f"choose another {flag}"
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists() or p.is_symlink())
    if existing.is_symlink() and not existing.exists():
        raise OutputFolderError(f"{flag} {folder}: the link {existing} points to {os.readlink(existing)}, which does "
                                f"not exist (an unmounted disk?) — mount it or fix the link, or {fix}")
    if not existing.is_dir():
        where = "" if existing.absolute() == folder.absolute() else f" ({existing})"
        raise OutputFolderError(f"{flag} {folder}: a file, not a folder, is in the way{where} — {fix}")
    if not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputFolderError(f"{flag} {folder}: cannot create or write this folder ({existing} is not a "
                                    f"folder you can write to) — {fix}")
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputFolderError(f"{flag} {folder}: cannot create or write this folder ({why}) — {fix}") from exc
    return folder


def inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (both as given: resolve them first to follow links)."""
    return path == folder or folder in path.parents


def check_outputs_outside_inputs(outputs: Mapping[str, tuple[Path, Iterable[Path]]], inputs: Iterable[Path],
                                 overwrite: bool = False, file_folders: Iterable[Path] = ()) -> None:
    """Refuse output folders that would write over what the run reads (see the module rule).

    ``outputs``: per flag (``--save``), its base folder and the folders written under it (the base
    itself, ``<save>/<row>``, ...). ``inputs``: the folders the run reads images from; an output
    folder equal to or inside one is refused. ``file_folders``: the folders of single input files
    (``--input photo.jpg``), of which only the folder itself is refused (``--save .`` next to the
    photo in the current folder; ``results/`` below it is fine). Paths are compared after resolving
    symbolic links, so a link to an input folder is caught too.
    """
    resolved_inputs = [(p, True) for p in dict.fromkeys(Path(p).resolve() for p in inputs)]
    resolved_inputs += [(p, False) for p in dict.fromkeys(Path(p).resolve() for p in file_folders)]
    for flag, (base, folders) in outputs.items():
        real_base = Path(base).resolve()
        for folder in folders:
            real = Path(folder).resolve()
            if not inside(real, real_base):
                raise OutputFolderError(f"{flag} {base}: {folder} leads out of it through a symbolic link (to "
                                        f"{real}) — remove the link or choose another {flag}")
            if overwrite:
                continue
            for src, whole in resolved_inputs:
                if real == src or (whole and inside(real, src)):
                    same = "is" if real == src else "is inside"
                    raise OutputFolderError(
                        f"{flag} {folder} {same} the input folder {src}: the outputs could overwrite the images "
                        f"read — choose another {flag} (e.g. results/...), or pass --overwrite to write there anyway")


def check_outputs_apart(image_folders: Mapping[str, Iterable[Path]]) -> None:
    """Refuse two flags that would write images into the same folder (``--save`` and ``--savetar`` alike:
    each restoration would be replaced by its target, under the same name). ``image_folders``: per flag,
    the folders it writes image files into; compared after resolving symbolic links."""
    owner: dict[Path, tuple[str, Path]] = {}
    for flag, folders in image_folders.items():
        for folder in folders:
            real = Path(folder).resolve()
            if real in owner and owner[real][0] != flag:
                other, shown = owner[real]
                raise OutputFolderError(f"{other} {shown} and {flag} {folder} are the same folder: the images of one "
                                        f"would replace the other's under the same names — choose separate folders")
            owner.setdefault(real, (flag, Path(folder)))
