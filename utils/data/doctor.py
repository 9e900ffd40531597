"""The data doctor: are the benchmark and training folders what the tester and the trainers will read?

Run it right after downloading the data (``tester_bary.py --check-data``, ``trainer_bary.py
--check-data``). Per set it reports the images found against the paper's counts, unpaired files,
degraded/target size mismatches, unreadable or truncated files and files in the wrong folder, each
with one concrete fix, and nothing is decoded unless a file looks damaged (or is a validation image):

- which sets exist follows the tester's rules (:mod:`utils.eval.tasks`) and the trainer's
  (:mod:`utils.data.training_files`: id lists, scanned folders; :mod:`utils.data.degradations`: the
  ``--*_dir`` layout);
- pairing is the loaders' own: :func:`utils.data.pairing.match_pairs` for test sets, the trainer's
  :func:`~utils.data.training_files.pair_of` for training sets (``rain-N`` <-> ``norain-N``,
  ``ID_A_B`` <-> ``ID``, same names);
- sizes come from the image headers (:func:`utils.data.image_io.image_size`);
- readability: the header must parse, and the file must end where its format says it ends (PNG
  ``IEND``, JPEG ``EOI``, BMP/WebP sizes from the header). Only a file failing that is decoded, by
  :func:`utils.data.image_io.read_image` (the loaders' reader): a truncated file is an error, a file
  with extra bytes after its end is fine. Damage in the middle of a complete file is not looked for
  (that would mean decoding every image), but in the trainers' validation set, a hundred pairs or so that
  the trainers decode before training, every image is decoded.

Problems are errors (the run would stop, or score a set other than the paper's) or warnings (the
trainer goes on: listed training ids absent from disk, targets nothing uses, training-set counts other than
the paper's); :mod:`utils.data.data_report` holds the report and prints it as a table. :func:`tester_check`
and :func:`trainer_check` are the two scripts' ``--check-data`` (exit status 0 when there is no error, 1
otherwise).
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from utils import dataset_utils as du
from utils.data import training_files as tf
from utils.data.data_report import (
    ERROR,
    WARNING,
    DataReport,
    Expected,
    Problem,
    SetReport,
    count_problem,
    format_report,
)
from utils.data.image_files import list_images, nested_images_hint, visible_subfolders
from utils.data.image_headers import is_greyscale, turned_pair_note
from utils.data.image_io import max_pixels, pixels_in_words, read_problem
from utils.data.integrity import HEADER_THREADS, FileCheck, check_files, decode_files
from utils.data.pairing import PairingError, SwappedFolders, match_pairs, partners_of
from utils.errors import UsageError, counted
from utils.eval.evaluation import smallest_file_side
from utils.eval.paper import paper_column
from utils.eval.protocol import Protocol, protocol_from_args
from utils.eval.tasks import (
    EXAMPLE_SETS,
    DenoiseLayout,
    PairedLayout,
    greyscale_note,
    paper_layout,
    present_paper_tasks,
    task_layout,
)

# The paper's test sets, by folder under the benchmark root (lower case): images found must equal these. A set
# elsewhere that fills one of their paper columns (dehaze/SOTS_outdoor, deblur/GoPro) is expected at the same count
# (expected_count).
TEST_EXPECTED: dict[str, int] = {
    "denoise/bsd68": 68,
    "denoise/kodak24": 24,
    "derain/rain100l": 100,
    "dehaze": 500,        # SOTS outdoor
    "deblur": 1111,       # GoPro test
    "lowlight": 15,       # LOL v1 eval15
}


# The authors' training sets (their id lists; data_dir/README.md). Deblur (GoPro), low light (LOL) and
# single have no count the code or the paper's lists know: their rows show what was found only.
TRAIN_EXPECTED: dict[str, Expected] = {
    "denoise": Expected(5144, (4744,), "5,144 listed (BSD400 + WED); the authors' run used the 4,744 WED images"),
    "derain": Expected(200, note="Rain100L training set"),
    "dehaze": Expected(72135, note="the authors' RESIDE OTS subset, listed in their hazy/hazy_outside.txt"),
}

# Folder names people download data with, for "rename X to Y" fixes.
_DEGRADED_NAMES = {"input", "inputs", "hazy", "rainy", "rain", "low", "blur", "blurred", "degraded", "lq", "noisy"}
_TARGET_NAMES = {"target", "targets", "gt", "groundtruth", "ground_truth", "clear", "clean", "norain", "high",
                 "sharp", "hq", "original"}


class CheckDataUsage(UsageError):
    """``--check-data`` with flags that cannot name a data set (a bad ``--tasks`` name): exit status 2."""


# --------------------------------------------------------------------------- shared checks

_FIX_BAD = "re-download or replace it (or remove it, and its pair)"
_TESTER_LIMIT = "downscale it, or raise the limit (tester_bary.py --max-pixels N)"
_SKIP_SMALL = "or pass --skip-bad-files to leave it out"


def _report_files(row: SetReport, checks: Mapping[Path, FileCheck], files: Iterable[Path],
                  pixel_limit: int | None, limit_fix: str, bad_fix: str = _FIX_BAD) -> None:
    for f in dict.fromkeys(files):
        c = checks[f]
        if c.size is None:
            row.add(c.kind, f, read_problem(c.error), bad_fix)
        elif pixel_limit and c.size[0] * c.size[1] > pixel_limit:
            h, w = c.size
            row.add("too large", f, f"{f} is {w}x{h} = {pixels_in_words(h * w)}, over the "
                                    f"{pixels_in_words(pixel_limit)} limit", limit_fix)


def _size_mismatches(row: SetReport, checks: Mapping[Path, FileCheck], pairs: Iterable[tuple[Path, Path]]) -> None:
    for deg, tar in pairs:
        sd, st = checks[deg].size, checks[tar].size
        if sd is not None and st is not None and sd != st:
            row.add("size mismatch", deg, f"{deg} is {sd[0]}x{sd[1]} (height x width) but its target {tar} is "
                                          f"{st[0]}x{st[1]}{turned_pair_note(deg, tar, sd, st)}",
                    "replace one of the two with the matching version, or remove both")


def _too_small(row: SetReport, checks: Mapping[Path, FileCheck], files: Iterable[Path], least_side: int,
               fix: Callable[[Path], str]) -> None:
    """Each of ``files`` whose header's height or width is under ``least_side``, the least the tester's scoring
    takes (:func:`utils.eval.evaluation.smallest_file_side`): an error, with ``fix(file)``."""
    for f in dict.fromkeys(files):
        size = checks[f].size
        if size is not None and min(size) < least_side:
            row.add("too small", f, f"{f} is {size[0]}x{size[1]} (height x width), too small to score: at least "
                                    f"{least_side}x{least_side}", fix(f))


def _image_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that hold images directly (sorted)."""
    return [d for d in visible_subfolders(folder) if list_images(d)]


def _rename_fix(parent: Path, wanted: str, degraded: bool, what: str) -> str:
    """How to make ``parent/wanted`` exist: rename a folder with a download's usual name, else create it."""
    names = _DEGRADED_NAMES if degraded else _TARGET_NAMES
    alias = [d for d in _image_folders(parent) if d.name.lower() in names and d.name != wanted]
    if alias:
        return f"rename {alias[0]}/ to {parent / wanted}/"
    return f"put the {what} in {parent / wanted}/"


def _target_name(degraded: Path) -> str:
    """The name a degraded image's target would have (for messages; pairing is match_pairs')."""
    m = re.match(r"^rain-(.+)$", degraded.stem, re.IGNORECASE)
    if m:
        return f"norain-{m.group(1)}{degraded.suffix}"
    m = re.match(r"^(.+?)_[0-9.]+_[0-9.]+$", degraded.stem)
    return f"{m.group(1) if m else degraded.stem}{degraded.suffix}"


def _degraded_name(target: Path) -> str:
    m = re.match(r"^norain-(.+)$", target.stem, re.IGNORECASE)
    return f"rain-{m.group(1)}{target.suffix}" if m else target.name


# --------------------------------------------------------------------------- test sets

def check_paired_set(name: str, degraded_dir: str | os.PathLike, target_dir: str | os.PathLike,
                     expected: int | Expected | None = None, used_by: Sequence[str] = (),
                     pixel_limit: int | None = None, threads: int = HEADER_THREADS, look_beside: bool = True,
                     decode: str = "", least_side: int = 0) -> tuple[SetReport, int]:
    """One test set of degraded images and their targets, paired by :func:`match_pairs`; returns the row
    and the number of files read. ``look_beside``: images in the folder holding both (a benchmark layout's
    set folder) are reported as misplaced. ``decode``: also decode every paired file whose header and ending
    are fine (:func:`~utils.data.integrity.decode_files`; affordable for a validation set of a hundred pairs),
    and end the fix of one that does not decode with these words. ``least_side``: the least height and width a
    degraded image is scored at (:func:`utils.eval.evaluation.smallest_file_side`); a smaller one is an error."""
    deg_dir, tar_dir = Path(degraded_dir), Path(target_dir)
    base = deg_dir.parent if deg_dir.parent == tar_dir.parent else deg_dir
    row = SetReport(name, str(base), expected=expected, used_by=tuple(used_by))
    row.problems += missing_set_folders(deg_dir, tar_dir)
    missing = bool(row.errors)
    if look_beside:  # an error when they stand in for the missing folders, else a warning
        _misplaced(row, base, deg_dir, tar_dir, ERROR if missing else WARNING)
    if missing:
        return row, 0
    degraded, targets = list_images(deg_dir), list_images(tar_dir)
    row.found = len(degraded)
    for folder, files, what in ((deg_dir, degraded, "degraded images"), (tar_dir, targets, "target images")):
        if not files:
            row.add("empty", folder, f"no images in {folder}/",
                    nested_images_hint(folder).rstrip(".") or f"put the {what} of {name} there")
    if not (degraded and targets):
        return row, 0
    try:
        pairs, unpaired = match_pairs(deg_dir, tar_dir, skip_unpaired=True)
    except SwappedFolders as exc:
        row.add("swapped folders", deg_dir, str(exc).removesuffix("; swap them"), f"swap {deg_dir} and {tar_dir}")
        return row, 0
    except PairingError as exc:  # two targets with one name
        row.add("duplicate target", tar_dir, str(exc), "remove or rename one of the two")
        return row, 0
    for d in unpaired:
        row.add("no target", d, f"{d} has no target: expected at {tar_dir / _target_name(d)}",
                f"add that file, or remove {d}")
    used = {t for _, t in pairs}
    for t in targets:
        if t not in used:
            row.add("no input", t, f"target {t} has no degraded image: expected at {deg_dir / _degraded_name(t)}",
                    f"add that file, or move {t} out of {tar_dir}/")
    checks = check_files([f for pair in pairs for f in pair] + list(unpaired), threads)
    _report_files(row, checks, checks, pixel_limit, _TESTER_LIMIT)
    if decode:
        _report_undecodable(row, checks, pairs, decode)
    _size_mismatches(row, checks, pairs)
    partners = partners_of(pairs)
    _too_small(row, checks, (d for d, _ in pairs), least_side,
               lambda f: f"replace it, remove it and its pair ({', '.join(map(str, partners[f]))}), "
                         f"{decode or _SKIP_SMALL}")
    count_problem(row, "degraded images")
    return row, len(checks)


def missing_set_folders(degraded_dir: str | os.PathLike, target_dir: str | os.PathLike) -> list[Problem]:
    """The degraded and target folders of a test set that are not there, each with its fix: rename a folder of a
    download's usual name beside it (``hazy/`` to ``input/``), else put the images there. ``--check-data`` reports
    them, and the tester's error for a task folder with one of its two folders missing is theirs."""
    problems = []
    for folder, is_deg in ((Path(degraded_dir), True), (Path(target_dir), False)):
        what = "degraded images" if is_deg else "target images"
        if not folder.is_dir():
            problems.append(Problem("missing folder", str(folder), f"{folder}/ does not exist ({what})",
                                    _rename_fix(folder.parent, folder.name, is_deg, what)))
    return problems


def _report_undecodable(row: SetReport, checks: Mapping[Path, FileCheck], pairs: Sequence[tuple[Path, Path]],
                        fix: str) -> None:
    """Decode the paired files whose header and ending passed (:func:`check_files` decodes a file only when
    its ending is wrong): bytes damaged in the middle of a complete file are found only so. Each that does not
    decode is an error whose fix names its pair and ends with ``fix``."""
    partners = partners_of(pairs)
    for f, why in decode_files(f for f in partners if checks[f].size is not None).items():
        row.add("unreadable", f, read_problem(why),
                f"replace it, remove it and its pair ({', '.join(map(str, partners[f]))}), {fix}")


def _misplaced(row: SetReport, base: Path, deg_dir: Path, tar_dir: Path, severity: str) -> None:
    """Images lying in the set's folder itself, beside (or instead of) its degraded/target folders."""
    if not base.is_dir() or base == deg_dir:
        return
    for f in list_images(base):
        where = tar_dir if re.match(r"^(norain-|gt[_-]?)", f.stem, re.IGNORECASE) else deg_dir
        row.add("misplaced", f, f"{f} is outside {deg_dir.name}/ and {tar_dir.name}/, where it is not read",
                f"move it into {where}/" + ("" if where == tar_dir or f.stem.lower().startswith("rain-")
                                           else f" (or {tar_dir}/ if it is a target)"), severity)


def check_denoise_set(name: str, folder: str | os.PathLike, expected: int | Expected | None = None,
                      used_by: Sequence[str] = (), pixel_limit: int | None = None,
                      threads: int = HEADER_THREADS, least_side: int = 0) -> tuple[SetReport, int]:
    """A denoising test set: the clean images of one folder (the noisy inputs are synthesised); ``least_side`` as
    :func:`check_paired_set` takes it."""
    folder = Path(folder)
    row = SetReport(name, str(folder), expected=expected, used_by=tuple(used_by))
    files = list_images(folder)
    row.found = len(files)
    if not files:
        fix = nested_images_hint(folder).rstrip(".") or f"put the clean images of {name} there, or remove the folder"
        row.add("empty", folder, f"no images in {folder}/", fix, ERROR if expected is not None else WARNING)
        return row, 0
    checks = check_files(files, threads)
    _report_files(row, checks, files, pixel_limit, _TESTER_LIMIT)
    _too_small(row, checks, files, least_side, lambda f: f"replace it, remove it, {_SKIP_SMALL}")
    count_problem(row, "clean images")
    grey = sum(map(is_greyscale, files))
    if grey:
        row.add("greyscale", folder, greyscale_note(folder, grey, len(files)),
                "for the paper's table, use the colour set", WARNING)
    return row, len(checks)


def _test_rows(task: str, root: Path, expected: Mapping[str, int], pixel_limit: int | None, threads: int,
               least_side: int = 0) -> list[tuple[str, Callable[[], tuple[SetReport, int]]] | SetReport]:
    """The sets ``task`` reads under ``root``, as the tester finds them (:mod:`utils.eval.tasks`): a key
    (the folder under ``root``) and how to check it, or a row that says why there is none."""
    layout = task_layout(task)
    base = root / layout.folder

    def exp(folder: Path) -> int | Expected | None:
        return expectedcount_problem(folder.relative_to(root).as_posix(), task, expected)

    if isinstance(layout, DenoiseLayout):
        folders = ([base] if base.is_dir() and list_images(base) else []) + visible_subfolders(base)
        if not folders:
            row = SetReport(layout.folder, str(base), used_by=(task,))
            example = EXAMPLE_SETS.get(layout.folder, "<set>")
            row.add("missing folder", base, f"{base}/ holds no test set ({task} needs clean images)",
                    f"put each set's clean images in {base}/<set>/, e.g. {base / example}/")
            return [row]
        return [(d.relative_to(root).as_posix(),
                 lambda d=d: check_denoise_set(d.relative_to(root).as_posix(), d, exp(d), (task,), pixel_limit,
                                               threads, least_side)) for d in folders]
    assert isinstance(layout, PairedLayout)
    if (base / layout.degraded).is_dir() or (base / layout.target).is_dir():
        folders = [base]
    else:
        folders = [d for d in visible_subfolders(base)
                   if (d / layout.degraded).is_dir() or (d / layout.target).is_dir()]
    if not folders and not any(d.name.lower() in _DEGRADED_NAMES | _TARGET_NAMES for d in _image_folders(base)):
        # images, but no degraded/target folders (e.g. Rain100L's rain-N and norain-N side by side): each
        # folder holding them is a set whose files are to be moved
        folders = ([base] if base.is_dir() and list_images(base) else []) + _image_folders(base)
    if not folders:
        example = EXAMPLE_SETS.get(layout.folder)
        where = base / example if example else base
        row = SetReport(layout.folder, str(base), expected=exp(base), used_by=(task,))
        if not base.is_dir():
            row.add("missing folder", base, f"{base}/ does not exist ({task})",
                    f"put the degraded images in {where / layout.degraded}/ and the targets in "
                    f"{where / layout.target}/")
        else:
            row.add("missing folder", base, f"{base}/ has neither {layout.degraded}/ and {layout.target}/ nor "
                    f"<set>/{{{layout.degraded},{layout.target}}}",
                    _rename_fix(base, layout.degraded, True, "degraded images") + "; "
                    + _rename_fix(base, layout.target, False, "target images"))
        return [row]
    return [(d.relative_to(root).as_posix(),
             lambda d=d: check_paired_set(d.relative_to(root).as_posix(), d / layout.degraded, d / layout.target,
                                          exp(d), (task,), pixel_limit, threads,
                                          least_side=least_side)) for d in folders]


def _row_of(key: str, task: str) -> str:
    """The tester's row for the set in ``key`` (its folder under the root) read by ``task``: ``denoise/bsd68`` is
    ``denoise_25/bsd68`` for ``denoise_25``; a paired set's row is its folder."""
    layout = task_layout(task)
    if isinstance(layout, DenoiseLayout) and (key == layout.folder or key.startswith(layout.folder + "/")):
        return task + key[len(layout.folder):]
    return key


def expectedcount_problem(key: str, task: str, expected: Mapping[str, int] = TEST_EXPECTED) -> int | Expected | None:
    """The images expected in the set at ``key`` (its folder under the root, e.g. ``dehaze/SOTS_outdoor``) that
    ``task`` reads: ``expected[key]`` (keys in lower case), else, when the tester's row of it fills a paper column
    (:func:`utils.eval.paper.paper_column`, the rule ``--compare-paper`` follows: ``*sots*``/``outdoor`` is SOTS,
    ``gopro`` GoPro, ``lol``/``eval15`` LOL, ``cbsd68`` BSD68), the count of the ``expected`` set filling that
    column; None for a set that fills none."""
    key = key.lower()
    if key in expected:
        return expected[key]
    column = paper_column(_row_of(key, task))
    if column is None:
        return None
    for paper_key, n in expected.items():
        if paper_column(_row_of(paper_key, task)) == column:
            return Expected(n, note=f"the paper's {column.split(' ')[0]} set, the column --compare-paper gives this "
                                    f"row")
    return None


def check_test_data(data_root: str | os.PathLike, tasks: Sequence[str] | None = None,
                    expected: Mapping[str, int] = TEST_EXPECTED, pixel_limit: int | None = None,
                    threads: int = HEADER_THREADS, least_side: int = 0) -> DataReport:
    """The test sets ``tasks`` read under ``data_root`` (None or ``all``: every paper task present), one row
    per folder (``denoise/bsd68`` serves every ``denoise_<sigma>``). ``expected``: images per set, keyed by
    the set's folder under the root in lower case (:data:`TEST_EXPECTED`); a set filling the paper column of one
    of them is expected at its count (:func:`expected_count`). ``least_side``: as :func:`check_paired_set`."""
    tic = time.perf_counter()
    root = Path(data_root)
    report = DataReport(f"test data under {root}")
    if not root.is_dir():
        report.problems.append(Problem("missing folder", str(root), f"--data-root {root} does not exist",
                                       f"put the benchmarks there as {', '.join(paper_layout(root))}, or pass "
                                       f"--data-root DIR"))
        return report
    wanted: list[str] = []
    for t in tasks or ["all"]:
        wanted += present_paper_tasks(root) if t == "all" else [t]
    if not wanted:
        report.problems.append(Problem("no data", str(root), f"none of the paper tasks' folders is under {root}",
                                       f"put the benchmarks there as {', '.join(paper_layout(root))}"))
        return report
    rows: dict[str, SetReport] = {}
    jobs: dict[str, Callable[[], tuple[SetReport, int]]] = {}
    used: dict[str, list[str]] = {}
    for task in dict.fromkeys(wanted):
        try:
            found = _test_rows(task, root, expected, pixel_limit, threads, least_side)
        except ValueError as exc:  # a --tasks name that cannot be a folder
            raise CheckDataUsage(str(exc)) from None
        for entry in found:
            key = entry.name if isinstance(entry, SetReport) else entry[0]
            used.setdefault(key, []).append(task)
            if isinstance(entry, SetReport):
                rows.setdefault(key, entry)
            else:
                jobs.setdefault(key, entry[1])
    for key in used:
        if key in jobs:
            rows[key], n = jobs[key]()
            report.files_read += n
        rows[key].used_by = tuple(used[key])
        report.sets.append(rows[key])
    report.seconds = time.perf_counter() - tic
    return report


def check_input_files(files: Sequence[Path], name: str = "input", pixel_limit: int | None = None,
                      threads: int = HEADER_THREADS) -> DataReport:
    """``--input``: every image must be readable and within ``pixel_limit`` pixels (default: the reading limit,
    :func:`utils.data.image_io.max_pixels`), as the run reads it (no targets, no counts)."""
    tic = time.perf_counter()
    parents = list(dict.fromkeys(str(f.parent) for f in files))
    folder = parents[0] if len(parents) == 1 else os.path.commonpath(parents) if parents else ""
    row = SetReport(name, folder, found=len(files))
    checks = check_files(files, threads)
    _report_files(row, checks, files, pixel_limit or max_pixels(), _TESTER_LIMIT,
                  "replace it, or leave it out of --input")
    return DataReport(f"images to restore ({name})", [row], files_read=len(checks),
                      seconds=time.perf_counter() - tic)


# --------------------------------------------------------------------------- training sets

def check_training_data(de_types: Sequence[str], dirs: Mapping[str, str | os.PathLike],
                        data_file_dir: str | os.PathLike | None, patch_size: int = 128, strict_ids: bool = False,
                        expected: Mapping[str, Expected] = TRAIN_EXPECTED, pixel_limit: int | None = None,
                        threads: int = HEADER_THREADS) -> DataReport:
    """The training sets ``de_types`` read, found and paired as :func:`utils.data.training_files.collect_samples`
    finds them (id lists in ``data_file_dir`` when present, else a folder scan), one row per family."""
    tic = time.perf_counter()
    de_types = du.check_de_types(de_types)
    dfd = Path(data_file_dir) if data_file_dir else None
    report = DataReport("training data for --de-type " + " ".join(de_types)
                        + (f" (id lists: {dfd})" if dfd is not None else " (folders scanned)"))
    limit = pixel_limit or max_pixels()
    for fam in du.domain_families(de_types):
        row = SetReport(fam, str(dirs[fam]), expected=expected.get(fam),
                        used_by=tuple(d for d in de_types if du.family(d) == fam))
        report.sets.append(row)
        id_list = dfd / du.ID_LISTS[fam] if dfd is not None and fam in du.ID_LISTS else None
        unlisted = id_list if id_list is not None and not id_list.is_file() else None
        id_list = id_list if unlisted is None else None
        files, listed = _training_files(row, fam, Path(dirs[fam]), id_list, strict_ids)
        if unlisted is not None and files is not None:  # lists asked for, this one absent: the trainer scans
            row.add("no id list", unlisted, f"{dfd} has no {du.ID_LISTS[fam]}: the trainer takes every image a scan "
                    f"of {dirs[fam]} finds ({len(files):,}), not the authors' list",
                    "put the list there (data_dir/ ships the authors'), or pass --data-file-dir '' to scan on purpose",
                    WARNING)
        if listed is not None and (row.expected is None or listed != row.expected.count):
            row.expected = Expected(listed, note=f"the ids listed in {id_list}")  # the user's own list
        if files is None:
            continue
        _, deg_sub, tar_sub = du.LAYOUT[fam]
        if deg_sub is not None:  # images beside the two folders, which the trainer does not read
            root = Path(dirs[fam])
            _misplaced(row, root, root / deg_sub, root / tar_sub, WARNING)
        row.found = len(files)
        pairs = _training_pairs(row, fam, Path(dirs[fam]), files, scanned=id_list is None)
        checks = check_files([f for p in pairs for f in (p.degraded, p.clean) if f is not None], threads)
        report.files_read += len(checks)
        _report_files(row, checks, checks, limit, f"downscale it: the trainer reads at most {limit / 1e6:.0f} Mpx "
                                                  f"per image")
        _size_mismatches(row, checks, [(p.degraded, p.clean) for p in pairs if p.degraded is not None])
        small: set[Path] = set()  # a target many hazy images share is named once
        for p in pairs:  # the first file of the pair that is too small is named (with its own size)
            for f in (p.degraded, p.clean):
                size = checks[f].size if f is not None and f not in small else None
                if size is not None and min(tf.cropped_length(size[0]), tf.cropped_length(size[1])) < patch_size:
                    row.add("too small", f, f"{f} is {size[0]}x{size[1]}, smaller than --patch-size {patch_size} "
                                            f"after the centre-crop to multiples of {du.CROP_BASE}",
                            "remove it, or train with a smaller --patch-size")
                    small.add(f)
                    break
        if id_list is None:  # with a list, each absent id is named already
            count_problem(row, "images", WARNING, _scan_hint(fam, row))
    report.seconds = time.perf_counter() - tic
    return report


def _scan_hint(fam: str, row: SetReport) -> str | None:
    """The fix of a scanned family whose count is not the paper's: the authors' id list, when there is one."""
    if fam not in du.ID_LISTS or row.expected is None or row.found < row.expected.count:
        return None
    return (f"{counted(row.found - row.expected.count, 'image')} more than the authors' list picks: pass "
            f"--data-file-dir with their lists (data_dir/, the default) to train on exactly theirs")


def _training_files(row: SetReport, fam: str, root: Path, id_list: Path | None,
                    strict_ids: bool) -> tuple[list[Path] | None, int | None]:
    """The files the trainer takes for ``fam`` (listed ids on disk, else a scan; None when it cannot start)
    and how many ids the list has (None: scanned)."""
    flag, deg_sub, tar_sub = du.LAYOUT[fam]
    if not root.is_dir():
        holds = "clean images" if deg_sub is None else f"{deg_sub}/ and {tar_sub}/"
        row.add("missing folder", root, f"{flag} {root} does not exist",
                f"put the {fam} training data there ({holds}), or pass {flag} with the right folder")
        return None, None
    if id_list is not None:
        ids = tf.listed_ids(fam, id_list)
        present, absent = du.split_listed_ids(ids, tf.FilesUnder(root))
        if not present:
            row.add("wrong folder", root, f"none of the {len(ids):,} ids listed in {id_list} exist under {flag} "
                    f"{root} (e.g. {root / ids[0] if ids else '-'})",
                    tf.layout_hint(fam, root).rstrip(".")
                    or f"pass {flag} with the folder the ids are relative to, or --data-file-dir '' to scan {root}")
            return None, len(ids)
        for i in absent:
            row.add("listed id absent", root / i, f"{root / i} is listed in {id_list} but not on disk",
                    f"put it there, or leave it out (the trainer warns"
                    f"{'; --strict-ids stops' if not strict_ids else ''})", ERROR if strict_ids else WARNING)
        return [root / i for i in present], len(ids)
    needed = [(root, "clean images", False)] if deg_sub is None else \
        [(root / deg_sub, "degraded images", True), (root / tar_sub, "target images", False)]
    loose = tf.layout_hint(fam, root).rstrip(".") if deg_sub is not None else ""  # a download unpacked flat
    for folder, what, is_deg in needed:
        if not folder.is_dir():
            fix = _rename_fix(folder.parent, folder.name, is_deg, what)
            row.add("missing folder", folder, f"{folder}/ does not exist ({what} of {fam})",
                    loose if loose and fix.startswith("put the") else fix)
    if row.errors:
        return None, None
    drive = root if deg_sub is None else root / (tar_sub if fam in du.DRIVEN_BY_TARGET else deg_sub)
    files = list_images(drive, recursive=(fam == "dehaze"))
    if not files:
        row.add("empty", drive, f"no images in {drive}/",
                nested_images_hint(drive).rstrip(".") or f"put the {fam} training images there")
        return None, None
    return files, None


def _training_pairs(row: SetReport, fam: str, root: Path, files: list[Path], scanned: bool) -> list[du.Pair]:
    """The trainer's pairing of ``files`` (:func:`utils.data.training_files.pair_of`); unpaired files are errors, and
    in a scanned family a target nothing pairs with is a warning (the trainer ignores it)."""
    pairs: list[du.Pair] = []
    flag = du.LAYOUT[fam][0]
    for f in files:
        pair, miss = tf.pair_of(fam, f, root)
        if pair is not None:
            pairs.append(pair)
        else:
            needed, by = miss
            row.add("no target" if fam not in du.DRIVEN_BY_TARGET else "no input", f,
                    f"{f} has no {'target' if fam not in du.DRIVEN_BY_TARGET else 'blurred image'}: expected at "
                    f"{needed}", f"add that file, or remove {f}" + ("" if scanned else " and its id from the list"))
    _, deg_sub, tar_sub = du.LAYOUT[fam]
    if scanned and deg_sub is not None:
        other = root / (deg_sub if fam in du.DRIVEN_BY_TARGET else tar_sub)
        used = {(p.degraded if fam in du.DRIVEN_BY_TARGET else p.clean) for p in pairs}
        mate = root / (tar_sub if fam in du.DRIVEN_BY_TARGET else deg_sub)
        for f in list_images(other):
            if f not in used:
                where = mate / ("**/" + f.stem + "_A_B" + f.suffix if fam == "dehaze" else _degraded_name(f))
                row.add("unused", f, f"{f} pairs with no {'sharp' if fam in du.DRIVEN_BY_TARGET else 'degraded'} "
                        f"image, so {flag} training does not use it", f"add its pair at {where}, or remove it",
                        WARNING)
    return pairs


# --------------------------------------------------------------------------- the scripts' --check-data

def tester_check(args, out: Callable[[str], None] = print) -> int:
    """``tester_bary.py --check-data``: check what the other flags would read (``--tasks`` under
    ``--data-root``, ``--degset``/``--tarset``, or ``--input``; none: every paper task present), print the
    report; 0 when there is no error, else 1. No model is loaded."""
    limit = getattr(args, "max_pixels", None)
    least = smallest_file_side(protocol_from_args(args))  # the least these flags score (--input scores none)
    if args.input:
        from utils.eval.tasks import input_files
        report = check_input_files(input_files(args.input), pixel_limit=limit)
    elif args.degset or args.tarset:
        if not (args.degset and args.tarset):
            raise CheckDataUsage("--degset and --tarset go together: pass both (degraded images and their targets)")
        tic = time.perf_counter()
        row, n = check_paired_set(Path(args.degset).name, args.degset, args.tarset, pixel_limit=limit,
                                  look_beside=False, least_side=least)
        report = DataReport(f"test data in {args.degset} / {args.tarset}", [row], files_read=n,
                            seconds=time.perf_counter() - tic)
    else:
        report = check_test_data(args.data_root, args.tasks, pixel_limit=limit, least_side=least)
    out(format_report(report))
    return report.exit_status


def trainer_check(args, out: Callable[[str], None] = print) -> int:
    """``trainer_bary.py --check-data`` (and the DDP trainer's): check the training sets of ``--de_type`` under
    the ``--*_dir`` flags and ``--data_file_dir``, and the validation set the run would read; print the
    report; 0 when there is no error, else 1. Nothing else is set up (no device, process group or model)."""
    from utils.train.options import DEFAULT_DEGSET, DEFAULT_TARSET, resolve_data_file_dir
    from utils.train.run_checks import check_args, unused_data_dirs
    from utils.train.validation_set import SKIP_OR_NO_VALIDATION
    check_args(args)  # the flags' own consistency first (exit status 2)
    unused = unused_data_dirs(args)  # a folder the check (and the run) would not read: said, not checked
    if unused:
        print(f"warning: {unused}", file=sys.stderr)
    dirs = {fam: getattr(args, du.dir_dest(fam)) for fam in du.LAYOUT}
    report = check_training_data(args.de_type, dirs, resolve_data_file_dir(args.data_file_dir), args.patch_size,
                                 strict_ids=args.strict_ids)
    deg, tar = args.degset, args.tarset
    if (deg is None) != (tar is None) and "" not in (deg, tar):
        raise CheckDataUsage("pass both --degset and --tarset (or neither)")
    if deg is None and tar is None and Path(DEFAULT_DEGSET).is_dir() and Path(DEFAULT_TARSET).is_dir():
        deg, tar = DEFAULT_DEGSET, DEFAULT_TARSET
    if deg and tar:
        tic = time.perf_counter()
        row, n = check_paired_set("validation", deg, tar, look_beside=False, decode=SKIP_OR_NO_VALIDATION,
                                  least_side=smallest_file_side(Protocol()))  # the protocol validation scores with
        report.sets.append(row)
        report.files_read += n
        report.seconds += time.perf_counter() - tic
    out(format_report(report))
    return report.exit_status
