"""What a task means: which image sets, from which folders, under a benchmark root.

Tasks (docs/METHOD.md §4 layout under a benchmark root, see :func:`task_layout`):

- ``denoise_<sigma>`` for any integer sigma: every subfolder of ``denoise/`` holding images is
  a set of clean images (``bsd68``, ``kodak24``, ...); the noisy inputs are synthesised with
  seeds from (file name, sigma) (:mod:`utils.data.noise`), rows ``denoise_25/bsd68``;
- ``derain``, ``dehaze``, ``deblur``, ``lowlight`` and any other NAME: ``NAME/{input,target}``
  (``lowlight/{low,high}``; ``single``, a user's own degradation: ``single/{degraded,target}``, the folders
  it is trained from), or one level deeper, ``NAME/<set>/{input,target}``, one row per set
  (``derain/Rain100L``). A set with one of its two folders missing is an error with ``--check-data``'s fix.

:func:`find_task_sets` turns task names into :class:`EvalSet` s of :class:`EvalItem` s;
:func:`paired_set` makes one from two folders (``--degset``/``--tarset``); :func:`input_files` lists
``--input``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from utils.data.degradations import LAYOUT
from utils.data.image_files import IMAGE_EXTENSIONS, entry_kind, is_image, list_images, visible_subfolders
from utils.data.image_headers import is_greyscale, turned_pair_note
from utils.data.image_io import ImageReadError, image_size
from utils.data.pairing import PairingError, match_pairs
from utils.errors import counted, listing, one_or_many

PAPER_TASKS = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze", "deblur", "lowlight")


# --------------------------------------------------------------------------- task registry

@dataclass(frozen=True)
class PairedLayout:
    """A task whose degraded and target images are both on disk: ``<root>/<folder>/{degraded,target}``."""
    folder: str
    degraded: str = "input"
    target: str = "target"


@dataclass(frozen=True)
class DenoiseLayout:
    """A task whose inputs are synthesised from clean images: ``<root>/<folder>/<set>/*``."""
    sigma: int
    folder: str = "denoise"


# The paper's tasks. Any other ``denoise_<sigma>`` is a DenoiseLayout and any other name a
# PairedLayout(name) (see task_layout), so new benchmarks need no code.
PAIRED_TASKS: dict[str, PairedLayout] = {
    "derain": PairedLayout("derain"),
    "dehaze": PairedLayout("dehaze"),
    "deblur": PairedLayout("deblur"),
    "lowlight": PairedLayout("lowlight", "low", "high"),
    # a user's own degradation, tested in the folders it is trained from (the trainer's --single-dir layout)
    "single": PairedLayout("single", *LAYOUT["single"][1:]),
}
_DENOISE = re.compile(r"^denoise_(\d+)$")
# The paper's set names inside a task folder, for messages that say where to put the data.
EXAMPLE_SETS = {"denoise": "bsd68", "derain": "Rain100L"}


def task_layout(task: str) -> PairedLayout | DenoiseLayout:
    """How to find the images of ``task`` under a benchmark root."""
    m = _DENOISE.match(task)
    if m and m.group(1) != str(int(m.group(1))):  # denoise_025 beside denoise_25 would score one set twice
        raise ValueError(f"--tasks: {task!r} is not a denoising task as written: denoise_<sigma> takes sigma without "
                         f"leading zeros, e.g. denoise_{int(m.group(1))} (its rows are named so)")
    if m:
        return DenoiseLayout(int(m.group(1)))
    if task in PAIRED_TASKS:
        return PAIRED_TASKS[task]
    if re.fullmatch(r"denoise(_[-+]?[\d.]*)?", task):  # a mistyped noise level (denoise_15_real is a folder name)
        raise ValueError(f"--tasks: {task!r} is not a denoising task: denoising is denoise_<sigma> with a whole "
                         f"sigma >= 0 on the 0-255 scale, e.g. denoise_15, denoise_25 or denoise_50")
    if not re.match(r"^[A-Za-z0-9][\w.-]*$", task):
        raise ValueError(f"--tasks: {task!r} is not a task name (e.g. denoise_25, derain, dehaze, deblur, lowlight, "
                         f"or a folder name under --data-root)")
    return PairedLayout(task)


def present_paper_tasks(data_root: str | Path) -> list[str]:
    """The paper tasks (:data:`PAPER_TASKS` order) whose folder exists under ``data_root``."""
    root = Path(data_root)
    return [t for t in PAPER_TASKS if (root / task_layout(t).folder).is_dir()]


def paper_layout(data_root: str | Path) -> list[str]:
    """Where the paper tasks' images go under ``data_root``, one entry per task folder (for messages).

    E.g. ``data/test/denoise/bsd68 (clean images)``, ``data/test/derain/Rain100L/{input,target}``,
    ``data/test/lowlight/{low,high}``.
    """
    entries: list[str] = []
    for task in PAPER_TASKS:
        layout = task_layout(task)
        base = (Path(data_root) / layout.folder).as_posix()
        example = EXAMPLE_SETS.get(layout.folder)
        if isinstance(layout, DenoiseLayout):
            entry = f"{base}/{example or '<set>'} (clean images)"
        else:
            entry = f"{base}/{example + '/' if example else ''}{{{layout.degraded},{layout.target}}}"
        if entry not in entries:
            entries.append(entry)
    return entries


@dataclass
class EvalItem:
    """One image to restore and score. ``degraded`` is None when it is synthesised (``sigma``)."""
    name: str
    target: Path
    degraded: Path | None = None
    sigma: int | None = None


@dataclass
class EvalSet:
    """One row of the table: a named list of items, and what was left out: ``skipped`` (``--skip-unpaired``,
    ``"NAME (why)"``) and ``bad_files`` (``--skip-bad-files``, ``{"name", "error"}``: unreadable when paired)."""
    name: str
    task: str
    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)
    bad_files: list[dict[str, str]] = field(default_factory=list)


def _validate_sizes(pairs: Sequence[tuple[Path, Path]], skip: bool, where: str,
                    skip_bad: bool = False) -> tuple[list, list[str], list[dict[str, str]]]:
    """Keep pairs whose degraded and target sizes agree; mismatches are an error unless ``skip``.
    A file whose size cannot be read is an :class:`ImageReadError` unless ``skip_bad`` (then listed)."""
    good, bad, unreadable = [], [], []
    for deg, tar in pairs:
        try:
            sd, st = image_size(deg), image_size(tar)
        except ImageReadError as exc:
            if not skip_bad:
                raise
            unreadable.append({"name": deg.name, "error": str(exc)})
            continue
        if sd == st:
            good.append((deg, tar))
        else:
            bad.append(f"{deg.name} {sd[0]}x{sd[1]} vs target {tar.name} {st[0]}x{st[1]}"
                       f"{turned_pair_note(deg, tar, sd, st)}")
    if bad and not skip:
        differ = one_or_many(len(bad), "differs", "differ")
        raise PairingError(f"{counted(len(bad), 'pair')} in {where} {differ} in size (height x width):{listing(bad)}. "
                           f"Fix or remove them, or pass --skip-unpaired to leave them out.")
    return good, [f"{b} (size mismatch)" for b in bad], unreadable


def paired_set(name: str, degraded_dir: str | Path, target_dir: str | Path, task: str | None = None,
               skip_unpaired: bool = False, skip_bad_files: bool = False,
               flags: tuple[str, str] | None = None) -> EvalSet:
    """An :class:`EvalSet` of the images of ``degraded_dir`` matched by name with ``target_dir``.

    Unpaired files and size mismatches raise :class:`PairingError` listing them, or are left
    out and listed in ``skipped`` when ``skip_unpaired``. A file whose header cannot be read
    raises :class:`ImageReadError`, or is left out into ``bad_files`` when ``skip_bad_files``.
    """
    pairs, unpaired = match_pairs(degraded_dir, target_dir, skip_unpaired=skip_unpaired, flags=flags)
    pairs, mismatched, unreadable = _validate_sizes(pairs, skip_unpaired, f"{degraded_dir} / {target_dir}",
                                                    skip_bad_files)
    items = [EvalItem(name=d.name, target=t, degraded=d) for d, t in pairs]
    skipped = [f"{p.name} (no target)" for p in unpaired] + mismatched
    if not items:
        left_out = skipped + [f"{b['name']} (unreadable)" for b in unreadable]
        raise PairingError(f"nothing left to evaluate in {degraded_dir}: every image was skipped "
                           f"({len(left_out)}: {', '.join(left_out[:5])})")
    return EvalSet(name=name, task=task or name, items=items, skipped=skipped, bad_files=unreadable)


def _has_either(folder: Path, layout: PairedLayout) -> bool:
    return (folder / layout.degraded).is_dir() or (folder / layout.target).is_dir()


def _paired_sets(task: str, layout: PairedLayout, root: Path, skip: bool, skip_bad: bool = False) -> list[EvalSet]:
    base = root / layout.folder
    if _has_either(base, layout):
        folders = [base]
    else:  # sets one level deeper; one with only one of its two folders is named below, with its fix
        folders = [d for d in visible_subfolders(base) if _has_either(d, layout)]
    if not folders:
        raise PairingError(f"task {task!r}: expected {base / layout.degraded} and {base / layout.target}, or "
                           f"{base}/<set>/{{{layout.degraded},{layout.target}}}; found neither. Check --data-root "
                           f"({root}) and the layout in docs/METHOD.md §4.")
    for d in folders:
        _check_both_folders(task, d / layout.degraded, d / layout.target)
    return [paired_set(task if d == base else f"{task}/{d.name}", d / layout.degraded, d / layout.target, task,
                       skip, skip_bad) for d in folders]


def _check_both_folders(task: str, degraded_dir: Path, target_dir: Path) -> None:
    """A set with one of its two folders not there is a :class:`PairingError` with the fix ``--check-data`` gives
    (:func:`utils.data.doctor.missing_set_folders`: the one home of those fixes)."""
    if any(f.exists() and not f.is_dir() for f in (degraded_dir, target_dir)):
        return  # a file where a folder belongs: match_pairs says so
    if degraded_dir.is_dir() and target_dir.is_dir():
        return
    from utils.data.doctor import missing_set_folders  # imported here: the doctor imports this module
    raise PairingError(f"--tasks {task}: " + "; ".join(p.line() for p in missing_set_folders(degraded_dir,
                                                                                             target_dir)))


def _denoise_sets(task: str, layout: DenoiseLayout, root: Path, notes: list[str] | None = None) -> list[EvalSet]:
    base = root / layout.folder
    if not base.is_dir():
        raise PairingError(f"task {task!r}: clean images expected in {base}/<set>/ (e.g. bsd68, kodak24); "
                           f"the folder does not exist. Check --data-root ({root}).")
    folders = visible_subfolders(base)  # .ipynb_checkpoints/ beside bsd68/ is not a set
    if list_images(base):  # clean images directly in denoise/: one unnamed set
        folders = [base] + folders
    sets = []
    for d in folders:
        images = list_images(d)
        if not images:
            if notes is not None:
                notes.append(f"{d} holds no images, so it gives no denoising row; add its images, or remove "
                             f"the folder")
            continue
        grey = sum(map(is_greyscale, images)) if notes is not None else 0
        if grey:
            notes.append(greyscale_note(d, grey, len(images)))
        name = task if d == base else f"{task}/{d.name}"
        sets.append(EvalSet(name=name, task=task,
                            items=[EvalItem(name=p.name, target=p, sigma=layout.sigma) for p in images]))
    if not sets:
        raise PairingError(f"task {task!r}: no clean images in {base} or its subfolders")
    return sets


def greyscale_note(folder: Path, grey: int, total: int) -> str:
    """What the tester and ``--check-data`` say of a denoising set with ``grey`` greyscale images of ``total``
    (:func:`~utils.data.image_headers.is_greyscale`): a grey BSD68, the one grey-denoising papers use, is a common
    download for the paper's colour column."""
    which = "all" if grey == total else f"{grey:,} of the {total:,}"
    return (f"{which} clean images in {folder} are greyscale: they are noised and restored as RGB (the grey "
            f"value in each channel, each channel with noise of its own), as the reference reads them; the paper's "
            f"denoising columns are the colour sets (CBSD68, Kodak24), so scores on grey images do not compare to "
            f"its table")


def find_task_sets(tasks: Iterable[str], data_root: str | Path, skip_unpaired: bool = False,
                   skip_bad_files: bool = False, notes: list[str] | None = None) -> list[EvalSet]:
    """The sets (table rows) of ``tasks`` under ``data_root``; ``"all"`` means every paper task present.
    ``skip_unpaired``, ``skip_bad_files``: as in :func:`paired_set`. A denoising set folder without images
    gives no row; ``notes`` (when given) receives one line naming it, for the caller to show."""
    root = Path(data_root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise PairingError(f"--data-root {root} {what} (it should hold denoise/, derain/, dehaze/, ...)")
    expanded: list[str] = []
    for task in tasks:
        if task == "all":  # in place, so `--tasks all denoise_75` keeps the paper's order first
            present = present_paper_tasks(root)
            if not present:
                raise PairingError(f"--tasks all: none of {', '.join(PAPER_TASKS)} is under {root}: put the "
                                   f"benchmarks there in the layout of docs/METHOD.md §4 (e.g. "
                                   f"{root / 'derain' / 'Rain100L' / 'input'}), or point --data-root at them")
            expanded += present
        else:
            expanded.append(task)
    sets: list[EvalSet] = []
    for task in dict.fromkeys(expanded):  # de-duplicated, order kept
        layout = task_layout(task)
        if isinstance(layout, DenoiseLayout):
            sets += _denoise_sets(task, layout, root, notes)
        else:
            sets += _paired_sets(task, layout, root, skip_unpaired, skip_bad_files)
    return sets


def input_paths(paths: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """``--input``'s files and folders as paths: one path (as callers of the tester's ``main`` may pass), several,
    or none."""
    if not paths:
        return []
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def input_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """``--input``: image files and the images of folders (each folder's sorted), in the order given, each once."""
    files: dict[Path, Path] = {}  # by folder and name: photos/ and /abs/photos/ name the same images (two links
    for path in input_paths(paths):  # to one image stay two inputs)
        for f in _input_files(path):
            files.setdefault(f.parent.resolve() / f.name, f)
    return list(files.values())


def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        if not is_image(path):
            raise ImageReadError(f"--input {path} is not an image file of a kind this project reads "
                                 f"({' '.join(IMAGE_EXTENSIONS)}): convert it, e.g. to PNG")
        return [path]
    if path.is_dir():
        files = list_images(path, unreadable_ok=True)  # a link to nothing, a pipe: named in a note (ignored_inputs)
        if not files:
            raise ImageReadError(f"--input {path}: the folder holds no images{_why_no_images(path)}")
        return files
    if path.exists():  # a pipe, a socket, a device: nothing to read an image from
        raise ImageReadError(f"--input {path} is neither an image file nor a folder: pass image files or folders")
    raise ImageReadError(f"--input {path} does not exist")


def _why_no_images(folder: Path) -> str:
    """What an ``--input`` folder without images holds instead, and the fix, as `` (...)`` ('' when it is empty)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others, subfolders = [p for p in entries if p.is_file()], [p for p in entries if p.is_dir()]
    why = []
    if others:
        are, them = one_or_many(len(others), "is", "are"), one_or_many(len(others), "it", "them")
        why.append(f"its {counted(len(others), 'file')} {are} not of a kind read here ({' '.join(IMAGE_EXTENSIONS)}), "
                   f"e.g. {others[0].name}: convert {them}, e.g. to PNG")
    if subfolders:
        are, them = one_or_many(len(subfolders), "is", "are"), one_or_many(len(subfolders), "it", "them")
        why.append(f"its {counted(len(subfolders), 'subfolder')} {are} not read: pass {them}, e.g. --input "
                   f"{folder / '*'}/")
    return f" ({'; '.join(why)})" if why else ""


def ignored_inputs(paths: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """What the ``--input`` folders hold and the tester leaves out (hidden entries aside; none for single files):
    ``(files that are not images of a kind read here (x.gif, notes.txt), entries that are neither a file nor a
    folder (a link to nothing, a pipe), subfolders (not read: only the images a folder holds itself are))``."""
    not_images: list[Path] = []
    not_files: list[Path] = []
    folders: list[Path] = []
    for path in input_paths(paths):
        if path.is_dir():
            for p in sorted(path.iterdir()):
                if p.name.startswith("."):
                    continue
                kind = entry_kind(p)
                if kind == "dir":
                    folders.append(p)
                elif kind != "file":
                    not_files.append(p)
                elif not is_image(p):
                    not_images.append(p)
    return not_images, not_files, folders
