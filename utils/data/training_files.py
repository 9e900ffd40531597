"""Finding the training set's files and checking them before training.

Where the files come from (:func:`collect_samples`)
    Denoising, deraining and dehazing follow the authors' id lists when ``--data_file_dir``
    holds them (``noisy/denoise.txt``, ``rainy/rainTrain.txt``, ``hazy/hazy_outside.txt``; the
    project ships them in ``data_dir/``, the default), in list order, each id relative to its
    family's folder. As in the reference, a listed id that is not on disk is left out; unlike
    it, one warning (through ``warn``, the trainer's framed one on stderr; else a ``warning:`` line through ``log``)
    gives the count per list and the first names
    (:func:`split_listed_ids` is the pure "which ids exist" step). ``strict_ids=True`` makes
    them a :class:`DatasetError` instead. A list none of whose ids exist means a wrong folder
    and is always an error. Without a list file (or with ``data_file_dir`` empty) the folder
    is scanned (a list missing from a ``data_file_dir`` given gets a warning: the scan trains other images):
    ``Denoise/`` for clean images, ``Derain/rainy/``, ``Dehaze/synthetic/**``.
    Deblurring is driven by ``Deblur/sharp/``, as the reference does: every sharp image needs
    ``Deblur/blur/`` of the same name. Low light and ``single`` scan their degraded folder.

    Every pair is then checked before training: one :class:`DatasetError` lists all missing
    targets (first 20, then a count) with the flag and folder they were looked for in (a
    listed rainy image without its ``gt/norain-N`` is such an error, not a dropped id).
    Unreadable images, images smaller than the patch and degraded/clean size mismatches are
    found by :func:`check_images` (image headers only). ``skip_bad=True`` leaves such files
    out with a warning and a count instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Iterable, Sequence

from utils.data.degradations import (
    CROP_BASE,
    DRIVEN_BY_TARGET,
    ID_LISTS,
    LAYOUT,
    DatasetError,
    check_de_types,
    domain_families,
)
from utils.data.image_files import IMAGE_EXTENSIONS, list_images, nested_images_hint
from utils.data.image_headers import turned_pair_note
from utils.data.image_io import ImageReadError, max_pixels, read_problem
from utils.data.integrity import check_files
from utils.errors import counted, listing, one_or_many

_FEW = 5  # names shown per id list whose ids are absent


@dataclass(frozen=True)
class Pair:
    """One training image: ``degraded`` is None for denoising (noise is synthesised)."""
    degraded: Path | None
    clean: Path
    family: str


def read_id_list(path: str | os.PathLike) -> list[str]:
    """The ids of one of the reference's list files, one a line, in file order (blank lines skipped). UTF-8,
    with or without a byte-order mark; any other encoding is a :class:`DatasetError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"id list {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as "
                           f"UTF-8 (Windows PowerShell's > writes UTF-16), one file name a line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def listed_ids(fam: str, path: str | os.PathLike) -> list[str]:
    """The ids of ``fam``'s list file as the reference takes them: the noise list filters the Denoise folder's
    listing, so a name listed twice is one image there; the rain and haze lists are used line by line, so a
    repeated line is a repeated sample."""
    ids = read_id_list(path)
    return list(dict.fromkeys(ids)) if fam == "denoise" else ids


def split_listed_ids(ids: Sequence[str], available: Container[str]) -> tuple[list[str], list[str]]:
    """``(present, absent)``: the listed ``ids``, in list order, split by membership in ``available``.

    The pure "which listed ids exist" step: the trainer passes the files on disk
    (:class:`FilesUnder`); a test can pass a plain set.
    """
    present: list[str] = []
    absent: list[str] = []
    for i in ids:
        (present if i in available else absent).append(i)
    return present, absent


class FilesUnder:
    """``id in FilesUnder(root)``: ``root / id`` is a file (one stat per id, no folder scan)."""

    def __init__(self, root: Path):
        self.root = root

    def __contains__(self, rel: object) -> bool:
        return isinstance(rel, str) and (self.root / rel).is_file()


@dataclass(frozen=True)
class _Dropped:
    """Listed ids absent from disk for one list file."""
    flag: str
    root: Path
    id_list: Path
    listed: int
    absent: list[str]

    def describe(self) -> str:
        more = f", ... ({len(self.absent) - _FEW} more)" if len(self.absent) > _FEW else ""
        return (f"{len(self.absent)} of the {self.listed} ids in {self.id_list} are not under "
                f"{self.flag}={self.root} ({', '.join(self.absent[:_FEW])}{more})")


def _need_dir(folder: Path, flag: str, root: Path, what: str, fam: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"{flag} points at {root}, but {folder} does not exist ({what}). "
                           + (layout_hint(fam, root) or
                              f"Put the data there (layout: data/Train/{{Denoise, Derain/{{rainy,gt}}, "
                              f"Dehaze/{{synthetic,original}}, Deblur/{{blur,sharp}}, lowlight/{{low,high}}, "
                              f"single/{{degraded,target}}}}) or pass {flag} with the right folder."))


# Where each family's images go, for a layout hint (LAYOUT names the folders).
_LAYOUT_EXAMPLE = {"derain": "rainy/rain-N.png and gt/norain-N.png",
                   "dehaze": "synthetic/<part>/ID_A_B.jpg and original/ID.jpg",
                   "deblur": "blur/NAME and sharp/NAME", "lowlight": "low/NAME and high/NAME",
                   "single": "degraded/NAME and target/NAME"}


def layout_hint(fam: str, root: Path) -> str:
    """The sentence that says where ``fam``'s images under ``root`` are when they are not where the trainer reads
    them, else ``""``: denoise's clean images only in subfolders of ``root`` (:func:`nested_images_hint`), or
    another family's pairs loose in ``root`` itself, as a download unpacks (Rain100L's ``rain-N.png`` beside
    ``norain-N.png``), instead of in its two folders."""
    _, deg_sub, tar_sub = LAYOUT[fam]
    if not root.is_dir():
        return ""
    loose = list_images(root)
    if deg_sub is None:
        return "" if loose else nested_images_hint(root)
    if not loose:
        return ""
    shown = ", ".join(p.name for p in loose[:2]) + (", ..." if len(loose) > 2 else "")
    return (f"{root} holds {len(loose):,} image{'s' if len(loose) > 1 else ''} directly ({shown}), and "
            f"{LAYOUT[fam][0]} reads them from {root / deg_sub}/ and {root / tar_sub}/: move the degraded images "
            f"and their targets there ({_LAYOUT_EXAMPLE[fam]}).")


def _find_with_stem(folder: Path, stem: str, prefer_suffix: str) -> Path | None:
    """``folder/stem<prefer_suffix>`` if it exists, else the one image ``folder/stem.*``."""
    first = folder / (stem + prefer_suffix)
    if first.is_file():
        return first
    for ext in IMAGE_EXTENSIONS:
        for cand in (folder / (stem + ext), folder / (stem + ext.upper())):
            if cand.is_file():
                return cand
    return None


def _target_for(fam: str, degraded: Path, root: Path) -> Path:
    """Where the clean image of ``degraded`` must be (it may not exist)."""
    _, _, tar_sub = LAYOUT[fam]
    tar_dir = root / tar_sub
    if fam == "derain":  # rain-N.ext <-> gt/norain-N.ext
        name = degraded.name
        key = name[len("rain-"):] if name.startswith("rain-") else name
        return tar_dir / ("norain-" + key)
    if fam == "dehaze":  # synthetic/**/ID_A_B.ext <-> original/ID.ext
        stem = degraded.stem.split("_")[0]
        return _find_with_stem(tar_dir, stem, degraded.suffix) or tar_dir / (stem + degraded.suffix)
    return tar_dir / degraded.name  # low/high, degraded/target: same names


def _listed_files(fam: str, root: Path, id_list: Path, notes: list[str]) -> tuple[list[Path], _Dropped | None]:
    """The listed files of ``fam`` that exist (list order) and the ids left out, if any."""
    flag = LAYOUT[fam][0]
    ids = listed_ids(fam, id_list)
    present, absent = split_listed_ids(ids, FilesUnder(root))
    if not ids:
        raise DatasetError(f"the id list {id_list} for {flag} lists no ids (an empty file): restore it, point "
                           f"--data-file-dir at the authors' lists, or pass --data-file-dir '' to scan {root}")
    if not present:
        example = f" (e.g. {root / ids[0]})"
        nested = layout_hint(fam, root)
        raise DatasetError(f"none of the {len(ids)} ids listed in {id_list} exist under {flag}={root}{example}: "
                           + (nested or f"{flag} points at the wrong folder, or the list is not for this data. Pass "
                                        f"{flag} with the folder the ids are relative to, or --data-file-dir '' to "
                                        f"scan {root} instead."))
    notes.append(f"{fam}: {len(present)} of the {len(ids)} ids listed in {id_list} found under {root}")
    dropped = _Dropped(flag, root, id_list, len(ids), absent) if absent else None
    return [root / i for i in present], dropped


def scanned_folder(fam: str, root: Path) -> tuple[Path, bool]:
    """The folder a scan of ``fam``'s training files under ``root`` lists, and whether it goes into its
    subfolders: the clean images (denoise), the sharp ones (deblur), else the degraded ones."""
    _, deg_sub, tar_sub = LAYOUT[fam]
    if fam == "denoise":
        return root, False
    if fam in DRIVEN_BY_TARGET:
        return root / tar_sub, False
    return root / deg_sub, fam == "dehaze"


def _scanned_files(fam: str, root: Path, notes: list[str], no_list: Path | None) -> list[Path]:
    """The files a folder scan finds (:func:`scanned_folder`)."""
    flag, deg_sub, tar_sub = LAYOUT[fam]
    folder, recursive = scanned_folder(fam, root)
    if fam == "denoise":
        _need_dir(root, flag, root, "clean images for denoising", fam)
    elif fam in DRIVEN_BY_TARGET:
        _need_dir(root / tar_sub, flag, root, f"the {tar_sub} images of {fam}, which drive its list", fam)
        _need_dir(root / deg_sub, flag, root, f"the {deg_sub} images of {fam}", fam)
    else:
        _need_dir(root / deg_sub, flag, root, f"the degraded images of {fam}", fam)
    files = list_images(folder, recursive=recursive)
    what = {"denoise": "clean images", "deblur": "sharp images"}.get(fam, "images")
    notes.append(f"{fam}: {len(files)} {what} found by scanning {root}"
                 + (f" (no id list at {no_list})" if no_list is not None else ""))
    return files


def pair_of(fam: str, found: Path, root: Path) -> tuple[Pair | None, tuple[Path, str] | None]:
    """``(pair, None)``, or ``(None, (missing file, what needed it))``; ``found`` exists."""
    if fam == "denoise":
        return Pair(None, found, fam), None
    if fam in DRIVEN_BY_TARGET:  # sharp/NAME drives; blur/NAME must exist
        deg = root / LAYOUT[fam][1] / found.name
        return (Pair(deg, found, fam), None) if deg.is_file() else (None, (deg, _rel(found, root)))
    tar = _target_for(fam, found, root)
    return (Pair(found, tar, fam), None) if tar.is_file() else (None, (tar, _rel(found, root)))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def warned(log: Callable[[str], None], warn: Callable[[str], None] | None) -> Callable[[str], None]:
    """Where a warning goes: ``warn`` when given (the trainer's framed warning on stderr), else ``log`` as a
    ``warning: ...`` line."""
    return warn if warn is not None else (lambda msg: log(f"warning: {msg}"))


def collect_samples(de_types: Sequence[str], dirs: dict[str, str | os.PathLike],
                    data_file_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                    log: Callable[[str], None] = print, strict_ids: bool = False,
                    warn: Callable[[str], None] | None = None) -> dict[str, list[Pair]]:
    """Find and pair the training images of every trained family (see the module docstring).

    Args:
        de_types: the ``--de_type`` names.
        dirs: ``{family: folder}`` (the ``--denoise_dir`` ... ``--single_dir`` values).
        data_file_dir: folder of the reference's id lists (used when they exist; None or ''
            scans the folders).
        skip_bad: leave unpaired files out with a warning instead of failing.
        log: where the notes on each family go, and the warnings on left-out ids and files (as ``warning:``
            lines) when ``warn`` is not given.
        strict_ids: listed ids absent from disk are an error instead of being left out.
        warn: where those warnings go instead (the trainer's framed warning on stderr).
    Returns:
        ``{family: [Pair, ...]}`` in :data:`utils.data.degradations.FAMILIES` order.
    Raises:
        DatasetError: a folder is missing or empty, no listed id of a list exists, listed ids
        are absent with ``strict_ids``, or pairs are missing (all listed in one error).
    """
    de_types = check_de_types(de_types)
    dfd = Path(data_file_dir) if data_file_dir else None
    found: dict[str, list[Pair]] = {}
    missing: list[tuple[str, Path, str]] = []  # (family, looked-for file, what needed it)
    dropped: list[_Dropped] = []
    notes: list[str] = []
    unlisted: list[str] = []  # families scanned because their list is missing from a --data-file-dir given
    for fam in domain_families(de_types):
        flag = LAYOUT[fam][0]
        root = Path(dirs[fam])
        if not root.is_dir():
            raise DatasetError(f"{flag} points at {root}, which does not exist. Put the {fam} training "
                               f"data there or pass {flag} with the right folder.")
        id_list = dfd / ID_LISTS[fam] if dfd is not None and fam in ID_LISTS else None
        if id_list is not None and id_list.is_file():
            files, gone = _listed_files(fam, root, id_list, notes)
            dropped += [gone] if gone else []
        else:
            files = _scanned_files(fam, root, notes, id_list)
            if id_list is not None:  # lists asked for, this one absent: the scan trains other images than the list's
                unlisted.append(f"--data-file-dir {dfd} has no {ID_LISTS[fam]}: {fam} trains on the {len(files):,} "
                                f"images a scan of {root} finds, not the authors' list")
        pairs = []
        for f in files:
            pair, miss = pair_of(fam, f, root)
            if pair is not None:
                pairs.append(pair)
            else:
                missing.append((fam, *miss))
        found[fam] = pairs
    for note in notes:
        log(f"  data: {note}")
    if dropped and strict_ids:
        raise DatasetError("listed training ids are missing (--strict-ids):"
                           + listing(d.describe() for d in dropped)
                           + ". Put the files there, point --data-file-dir at lists that match your data, "
                             "or drop --strict-ids to train without them.")
    if unlisted:
        warned(log, warn)("; ".join(unlisted) + " (the barycenter weights lambda, the degradation mix and the epoch "
                          "length follow the scan; the reference reads the list of each family it trains). Put the "
                          "list there (data_dir/ ships the authors'), or pass --data-file-dir '' to scan every folder "
                          "on purpose.")
    if dropped:
        warned(log, warn)("training without listed ids that are not on disk (the reference leaves out missing "
                          "noise-list ids too, and stops at a missing rain or haze id): "
                          + "; ".join(d.describe() for d in dropped) + ". Pass --strict-ids to stop instead.")
    if missing:
        lines = [f"{LAYOUT[f][0]}={dirs[f]}: {p} (for {n})" for f, p, n in missing]
        are, their = one_or_many(len(missing), "is", "are"), one_or_many(len(missing), "its", "their")
        msg = (f"{counted(len(missing), 'training file')} {are} missing (a rainy image needs gt/norain-N, a hazy "
               f"ID_A_B image needs original/ID, a sharp image needs a same-named blur image, low and "
               f"degraded images need a same-named file in high and target):{listing(lines)}")
        if not skip_bad:
            them = one_or_many(len(missing), "it", "them")
            raise DatasetError(msg + f". Add {them}, fix the folder flags, or pass --skip-bad-files to train without "
                                     f"{them}.")
        warned(log, warn)(f"skipping {counted(len(missing), 'sample')} without {their} files (--skip-bad-files): {msg}")
    for fam, pairs in found.items():
        if not pairs:
            folder, recursive = scanned_folder(fam, Path(dirs[fam]))
            nested = "" if recursive or list_images(folder) else nested_images_hint(folder)
            raise DatasetError(f"no usable {fam} training images under {LAYOUT[fam][0]}={dirs[fam]}"
                               + (f": {nested}" if nested else ""))
    return found


def cropped_length(n: int) -> int:
    """A side of ``n`` pixels after the centre-crop to multiples of :data:`CROP_BASE`."""
    return n - n % CROP_BASE


def check_images(found: dict[str, list[Pair]], patch_size: int, skip_bad: bool = False,
                 progress: Callable[[Iterable, int], Iterable] | None = None,
                 log: Callable[[str], None] = print,
                 warn: Callable[[str], None] | None = None) -> dict[str, list[Pair]]:
    """Read every image header and ending (:func:`utils.data.integrity.check_file`): unreadable or truncated
    files, images smaller than the patch (after the centre-crop to multiples of 16) and degraded/clean size
    mismatches are one :class:`DatasetError` listing them, or are left out with a warning (through ``warn``, else
    a ``warning:`` line to ``log``) when ``skip_bad``. A file cut short keeps a valid header: found only by a
    loader worker, it ended the run mid-epoch with the iterations since the last checkpoint lost."""
    bad: list[str] = []
    out: dict[str, list[Pair]] = {}
    limit = max_pixels()
    items = [(fam, pair) for fam, pairs in found.items() for pair in pairs]
    keep: dict[str, list[Pair]] = {fam: [] for fam in found}
    # Each file once (OTS's 72,135 hazy images share about 2,000 clean targets), several at a time
    checks = check_files([p for _, pair in items for p in (pair.clean, pair.degraded) if p is not None],
                         progress=progress)

    def size_of(path: Path) -> tuple[int, int]:
        if checks[path].size is None:
            raise ImageReadError(checks[path].error)
        return checks[path].size

    for fam, pair in items:
        try:
            hw_clean = size_of(pair.clean)
            hw_deg = size_of(pair.degraded) if pair.degraded is not None else hw_clean
        except ImageReadError as exc:
            bad.append(read_problem(str(exc)))  # the list ends with its own fix
            continue
        if hw_deg != hw_clean:
            bad.append(f"{pair.degraded} is {hw_deg[0]}x{hw_deg[1]} but its target {pair.clean} is "
                       f"{hw_clean[0]}x{hw_clean[1]}{turned_pair_note(pair.degraded, pair.clean, hw_deg, hw_clean)}")
            continue
        if hw_clean[0] * hw_clean[1] > limit:  # a loader worker would refuse it mid-epoch
            bad.append(f"{pair.degraded or pair.clean} is {hw_clean[0]}x{hw_clean[1]}, more than the limit of "
                       f"{limit:,} pixels an image may have; downscale it (training crops {patch_size}-pixel "
                       f"patches)")
            continue
        h, w = cropped_length(hw_clean[0]), cropped_length(hw_clean[1])
        if min(h, w) < patch_size:
            name = pair.degraded or pair.clean
            bad.append(f"{name} is {hw_clean[0]}x{hw_clean[1]} ({h}x{w} after the centre-crop to multiples "
                       f"of {CROP_BASE}), smaller than --patch-size {patch_size}")
            continue
        keep[fam].append(pair)
    if bad:
        msg = f"{counted(len(bad), 'training image')} cannot be used:{listing(bad)}"
        if not skip_bad:
            smaller = ", lower --patch-size" if any("smaller than --patch-size" in b for b in bad) else ""
            raise DatasetError(f"{msg}. Replace or remove {one_or_many(len(bad), 'it', 'them')}{smaller}, or pass "
                               f"--skip-bad-files.")
        warned(log, warn)(f"skipping {counted(len(bad), 'training image')} (--skip-bad-files): {msg}")
    for fam, pairs in keep.items():
        if not pairs:
            raise DatasetError(f"no usable {fam} training images remain (all {len(found[fam])} were bad)")
        out[fam] = pairs
    return out
