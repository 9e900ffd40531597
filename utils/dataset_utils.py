"""The mixed-degradation training set of BaryIR.

Degradation ids and domains
    Every sample carries a degradation id ``de`` (:data:`DE_IDS`: denoise_15 0, denoise_25 1,
    denoise_50 2, derain 3, dehaze 4, deblur 5, lowlight 6, single 7) and a domain ``k``: the
    degradation *families* present, in the order of :data:`FAMILIES`, numbered 0..K-1. All noise
    levels are one family. The numbering depends only on which families are present, so a
    missing family in between (e.g. ``denoise_25 deblur``) still gives domains 0, 1.

Repetition (:func:`repeat_factor`)
    Each family is listed several times per epoch to balance the paper's data sizes: a noise
    level x5, derain x360, dehaze x1, deblur x35, lowlight x150, single x5. ``denoise_25`` is x15
    when it is trained without both other levels (the 5D setting trains it alone), exactly the
    reference's rule.

Barycenter weights (:func:`epoch_counts`, :func:`barycenter_weights`)
    ``lambda_k = (1/n_k) / sum_j (1/n_j)`` with ``n_k`` the number of samples of domain ``k`` in
    one epoch, *after repetition*, all noise levels of the denoising family together. The
    reference's conformance vector ``[77160, 72000, 72135]`` for 3D is all 5144 listed clean
    images x 5 x 3 levels, 200 Rain100L images x 360 and 72135 hazy images x 1. The authors' own
    3D run found 4744 of the 5144 clean images (the WED part): 4744 x 3 x 5 + 200 x 360 + 72135
    = 215,295 samples per epoch, domain counts ``[71160, 72000, 72135]``.

Sample pipeline (:meth:`MixedDegradationDataset.__getitem__`)
    read RGB 8-bit -> centre-crop both images to multiples of 16 -> one random ``patch_size``
    window shared by degraded and clean -> one of the seven non-identity flip/rotation modes,
    shared -> for denoising, ``uint8(clip(clean + sigma * N(0, 1), 0, 255))`` (truncation).
    All randomness of a sample is a pure function of ``(seed, epoch, index)``
    (:meth:`~MixedDegradationDataset.set_epoch`), so a sample does not depend on the worker
    that loads it, nor on what was loaded before: resuming mid-epoch reproduces the run.

Where the files come from (:func:`collect_samples`)
    Denoising, deraining and dehazing follow the authors' id lists when ``--data_file_dir``
    holds them (``noisy/denoise.txt``, ``rainy/rainTrain.txt``, ``hazy/hazy_outside.txt``; the
    project ships them in ``data_dir/``, the default), in list order, each id relative to its
    family's folder. As in the reference, a listed id that is not on disk is left out; unlike
    it, one ``warning:`` line (through ``log``) gives the count per list and the first names
    (:func:`split_listed_ids` is the pure "which ids exist" step). ``strict_ids=True`` makes
    them a :class:`DatasetError` instead. A list none of whose ids exist means a wrong folder
    and is always an error. Without a list file (or with ``data_file_dir`` empty) the folder
    is scanned: ``Denoise/`` for clean images, ``Derain/rainy/``, ``Dehaze/synthetic/**``.
    Deblurring is driven by ``Deblur/sharp/``, as the reference does: every sharp image needs
    ``Deblur/blur/`` of the same name. Low light and ``single`` scan their degraded folder.

    Every pair is then checked before training: one :class:`DatasetError` lists all missing
    targets (first 20, then a count) with the flag and folder they were looked for in (a
    listed rainy image without its ``gt/norain-N`` is such an error, not a dropped id).
    Unreadable images, images smaller than the patch and degraded/clean size mismatches are
    found by :func:`check_images` (image headers only). ``skip_bad=True`` leaves such files
    out with a warning and a count instead.

Start-up report (:meth:`MixedDegradationDataset.report`)
    Per degradation type: images found, repetition, samples per epoch, domain and its lambda,
    and the total samples per epoch, as a small table.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from utils.data.image_io import IMAGE_EXTENSIONS, ImageReadError, list_images, max_pixels, read_image
from utils.data.integrity import check_files
from utils.data.noise import add_noise
from utils.errors import UserError, listing

DE_IDS = {"denoise_15": 0, "denoise_25": 1, "denoise_50": 2, "derain": 3, "dehaze": 4,
          "deblur": 5, "lowlight": 6, "single": 7}
FAMILIES = ("denoise", "derain", "dehaze", "deblur", "lowlight", "single")
# The paper's two all-in-one settings (--de_type): 3D, and 5D in the reference README's order.
ALL_IN_ONE_3D = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")
ALL_IN_ONE_5D = ("derain", "dehaze", "deblur", "denoise_25", "lowlight")
NOISE_SIGMA = {0: 15, 1: 25, 2: 50}
REPEATS = {"denoise_15": 5, "denoise_25": 5, "denoise_50": 5, "derain": 360, "dehaze": 1,
           "deblur": 35, "lowlight": 150, "single": 5}
DENOISE_25_ALONE_REPEAT = 15
CROP_BASE = 16            # images are centre-cropped to multiples of this (reference crop_img)

# Reference id lists, relative to --data_file_dir.
ID_LISTS = {"denoise": "noisy/denoise.txt", "derain": "rainy/rainTrain.txt", "dehaze": "hazy/hazy_outside.txt"}
# Family -> (flag, degraded sub-folder, target sub-folder); denoise has clean images only.
LAYOUT = {
    "denoise": ("--denoise_dir", None, "."),
    "derain": ("--derain_dir", "rainy", "gt"),
    "dehaze": ("--dehaze_dir", "synthetic", "original"),
    "deblur": ("--deblur_dir", "blur", "sharp"),
    "lowlight": ("--lowlight_dir", "low", "high"),
    "single": ("--single_dir", "degraded", "target"),
}
_FEW = 5                  # names shown per id list whose ids are absent
# Families whose list of samples comes from the target folder, as in the reference: deblur
# lists Deblur/sharp/ and pairs each image with Deblur/blur/ of the same name.
DRIVEN_BY_TARGET = ("deblur",)


class DatasetError(UserError, ValueError):
    """The training data cannot be used as given; the message names the files, the flag and the fix."""


# --------------------------------------------------------------------------- ids, domains, weights

def family(de_type: str) -> str:
    """``'denoise_25' -> 'denoise'``; other names are their own family."""
    return "denoise" if de_type.startswith("denoise_") else de_type


def check_de_types(de_types: Sequence[str]) -> list[str]:
    """Validate ``--de_type``: known names, no duplicates. Returns them as a list."""
    unknown = [d for d in de_types if d not in DE_IDS]
    if unknown:
        raise DatasetError(f"unknown --de_type {unknown}; choose from {list(DE_IDS)}")
    dup = sorted({d for d in de_types if list(de_types).count(d) > 1})
    if dup:
        raise DatasetError(f"--de_type lists {dup} more than once")
    if not de_types:
        raise DatasetError("--de_type is empty; name at least one degradation, e.g. --de_type derain dehaze")
    return list(de_types)


def domain_families(de_types: Sequence[str]) -> list[str]:
    """The families present, in the canonical order: domain k is ``domain_families(...)[k]``."""
    present = {family(d) for d in de_types}
    return [f for f in FAMILIES if f in present]


def domain_of(de_types: Sequence[str]) -> dict[str, int]:
    """``{de_type: domain index}`` for the trained degradations."""
    fams = domain_families(de_types)
    return {d: fams.index(family(d)) for d in de_types}


def num_sources(de_types: Sequence[str]) -> int:
    """K: the number of domains (families) ``de_types`` spans."""
    return len(domain_families(de_types))


def parse_repeats(items: Sequence[str] | None) -> dict[str, int]:
    """``["derain=8", "dehaze=5"]`` -> ``{"derain": 8, "dehaze": 5}`` (the trainer's ``--repeat``)."""
    out: dict[str, int] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or name not in DE_IDS or not value.isdigit() or int(value) < 1:
            raise DatasetError(f"--repeat expects NAME=N with NAME one of {', '.join(DE_IDS)} and N >= 1, "
                               f"got {item!r} (e.g. --repeat derain=8 dehaze=5)")
        out[name] = int(value)
    return out


def repeat_factor(de_type: str, de_types: Sequence[str], overrides: dict[str, int] | None = None) -> int:
    """How many times each image of ``de_type`` is listed per epoch (see the module docstring).

    ``overrides`` (the trainer's ``--repeat``) replaces the paper's factor for the types it names,
    for data sets whose sizes differ from the paper's.
    """
    if overrides and de_type in overrides:
        return overrides[de_type]
    if de_type == "denoise_25" and not {"denoise_15", "denoise_50"} <= set(de_types):
        return DENOISE_25_ALONE_REPEAT
    return REPEATS[de_type]


def epoch_counts(de_types: Sequence[str], images: dict[str, int],
                 overrides: dict[str, int] | None = None) -> tuple[dict[str, int], list[int]]:
    """Samples per epoch for ``images[family]`` training images of each family.

    Returns ``({de_type: samples}, [samples of domain k])``, de types in de-id order: each
    type's images times its :func:`repeat_factor`, the noise levels summed into one domain.
    """
    de_types = check_de_types(de_types)
    by_de = {de: images[family(de)] * repeat_factor(de, de_types, overrides)
             for de in sorted(de_types, key=DE_IDS.get)}
    by_domain = [sum(n for de, n in by_de.items() if family(de) == fam) for fam in domain_families(de_types)]
    return by_de, by_domain


def barycenter_weights(domain_counts: Sequence[int]) -> list[float]:
    """``lambda_k`` proportional to ``1 / domain_counts[k]``, normalised to sum 1."""
    if any(c <= 0 for c in domain_counts):
        raise DatasetError(f"every domain needs at least one sample, got counts {list(domain_counts)}")
    inv = [1.0 / c for c in domain_counts]
    total = sum(inv)
    return [v / total for v in inv]


# --------------------------------------------------------------------------- finding the files

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


def split_listed_ids(ids: Sequence[str], available: Container[str]) -> tuple[list[str], list[str]]:
    """``(present, absent)``: the listed ``ids``, in list order, split by membership in ``available``.

    The pure "which listed ids exist" step: the trainer passes the files on disk
    (:class:`_FilesUnder`); a test can pass a plain set.
    """
    present: list[str] = []
    absent: list[str] = []
    for i in ids:
        (present if i in available else absent).append(i)
    return present, absent


class _FilesUnder:
    """``id in _FilesUnder(root)``: ``root / id`` is a file (one stat per id, no folder scan)."""

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


def _need_dir(folder: Path, flag: str, root: Path, what: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"{flag} points at {root}, but {folder} does not exist ({what}). "
                           f"Put the data there (layout: data/Train/{{Denoise, Derain/{{rainy,gt}}, "
                           f"Dehaze/{{synthetic,original}}, Deblur/{{blur,sharp}}, lowlight/{{low,high}}, "
                           f"single/{{degraded,target}}}}) or pass {flag} with the right folder.")


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
    ids = read_id_list(id_list)
    present, absent = split_listed_ids(ids, _FilesUnder(root))
    if not ids:
        raise DatasetError(f"the id list {id_list} for {flag} lists no ids (an empty file): restore it, point "
                           f"--data_file_dir at the authors' lists, or pass --data_file_dir '' to scan {root}")
    if not present:
        example = f" (e.g. {root / ids[0]})"
        raise DatasetError(f"none of the {len(ids)} ids listed in {id_list} exist under {flag}={root}{example}: "
                           f"{flag} points at the wrong folder, or the list is not for this data. Pass {flag} "
                           f"with the folder the ids are relative to, or --data_file_dir '' to scan {root} instead.")
    notes.append(f"{fam}: {len(present)} of the {len(ids)} ids listed in {id_list} found under {root}")
    dropped = _Dropped(flag, root, id_list, len(ids), absent) if absent else None
    return [root / i for i in present], dropped


def _scanned_files(fam: str, root: Path, notes: list[str], no_list: Path | None) -> list[Path]:
    """The files a folder scan finds: clean images (denoise), sharp images (deblur), else degraded ones."""
    flag, deg_sub, tar_sub = LAYOUT[fam]
    if fam == "denoise":
        _need_dir(root, flag, root, "clean images for denoising")
        files = list_images(root)
    elif fam in DRIVEN_BY_TARGET:
        _need_dir(root / tar_sub, flag, root, f"the {tar_sub} images of {fam}, which drive its list")
        _need_dir(root / deg_sub, flag, root, f"the {deg_sub} images of {fam}")
        files = list_images(root / tar_sub)
    else:
        _need_dir(root / deg_sub, flag, root, f"the degraded images of {fam}")
        files = list_images(root / deg_sub, recursive=(fam == "dehaze"))
    what = {"denoise": "clean images", "deblur": "sharp images"}.get(fam, "images")
    notes.append(f"{fam}: {len(files)} {what} found by scanning {root}"
                 + (f" (no id list at {no_list})" if no_list is not None else ""))
    return files


def _pair(fam: str, found: Path, root: Path) -> tuple[Pair | None, tuple[Path, str] | None]:
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


def collect_samples(de_types: Sequence[str], dirs: dict[str, str | os.PathLike],
                    data_file_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                    log: Callable[[str], None] = print, strict_ids: bool = False) -> dict[str, list[Pair]]:
    """Find and pair the training images of every trained family (see the module docstring).

    Args:
        de_types: the ``--de_type`` names.
        dirs: ``{family: folder}`` (the ``--denoise_dir`` ... ``--single_dir`` values).
        data_file_dir: folder of the reference's id lists (used when they exist; None or ''
            scans the folders).
        skip_bad: leave unpaired files out with a warning instead of failing.
        log: where the notes on each family and the one ``warning:`` line on left-out ids go.
        strict_ids: listed ids absent from disk are an error instead of being left out.
    Returns:
        ``{family: [Pair, ...]}`` in :data:`FAMILIES` order.
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
        pairs = []
        for f in files:
            pair, miss = _pair(fam, f, root)
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
                           + ". Put the files there, point --data_file_dir at lists that match your data, "
                             "or drop --strict-ids to train without them (the reference leaves them out).")
    if dropped:
        log("warning: training without listed ids that are not on disk, as the reference does: "
            + "; ".join(d.describe() for d in dropped) + ". Pass --strict-ids to stop instead.")
    if missing:
        lines = [f"{LAYOUT[f][0]}={dirs[f]}: {p} (for {n})" for f, p, n in missing]
        msg = (f"{len(missing)} training file(s) are missing (a rainy image needs gt/norain-N, a hazy "
               f"ID_A_B image needs original/ID, a sharp image needs a same-named blur image, low and "
               f"degraded images need a same-named file in high and target):{listing(lines)}")
        if not skip_bad:
            raise DatasetError(msg + ". Add the files, fix the folder flags, or pass --skip-bad-files to "
                                     "train without them.")
        log(f"warning: skipping {len(missing)} sample(s) without their files (--skip-bad-files): {msg}")
    for fam, pairs in found.items():
        if not pairs:
            raise DatasetError(f"no usable {fam} training images under {LAYOUT[fam][0]}={dirs[fam]}")
    return found


def _cropped(n: int) -> int:
    return n - n % CROP_BASE


def check_images(found: dict[str, list[Pair]], patch_size: int, skip_bad: bool = False,
                 progress: Callable[[Iterable, int], Iterable] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, list[Pair]]:
    """Read every image header and ending (:func:`utils.data.integrity.check_file`): unreadable or truncated
    files, images smaller than the patch (after the centre-crop to multiples of 16) and degraded/clean size
    mismatches are one :class:`DatasetError` listing them, or are left out with a ``warning:`` line to ``log``
    when ``skip_bad``. A file cut short keeps a valid header: found only by a loader worker, it ended the run
    mid-epoch with the iterations since the last checkpoint lost."""
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
            bad.append(str(exc).rstrip("."))  # the list ends with its own sentence
            continue
        if hw_deg != hw_clean:
            bad.append(f"{pair.degraded} is {hw_deg[0]}x{hw_deg[1]} but its target {pair.clean} is "
                       f"{hw_clean[0]}x{hw_clean[1]}")
            continue
        if hw_clean[0] * hw_clean[1] > limit:  # a loader worker would refuse it mid-epoch
            bad.append(f"{pair.degraded or pair.clean} is {hw_clean[0]}x{hw_clean[1]}, more than the limit of "
                       f"{limit:,} pixels an image may have; downscale it (training crops {patch_size}-pixel "
                       f"patches)")
            continue
        h, w = _cropped(hw_clean[0]), _cropped(hw_clean[1])
        if min(h, w) < patch_size:
            name = pair.degraded or pair.clean
            bad.append(f"{name} is {hw_clean[0]}x{hw_clean[1]} ({h}x{w} after the centre-crop to multiples "
                       f"of {CROP_BASE}), smaller than --patch_size {patch_size}")
            continue
        keep[fam].append(pair)
    if bad:
        msg = f"{len(bad)} training image(s) cannot be used:{listing(bad)}"
        if not skip_bad:
            raise DatasetError(msg + ". Replace or remove them, lower --patch_size, or pass --skip-bad-files.")
        log(f"warning: skipping {len(bad)} training image(s) (--skip-bad-files): {msg}")
    for fam, pairs in keep.items():
        if not pairs:
            raise DatasetError(f"no usable {fam} training images remain (all {len(found[fam])} were bad)")
        out[fam] = pairs
    return out


# --------------------------------------------------------------------------- the sample pipeline

def centre_crop(img: np.ndarray, base: int = CROP_BASE) -> np.ndarray:
    """Centre-crop ``(H, W, C)`` to multiples of ``base`` (the extra rows/columns split, top/left floor)."""
    h, w = img.shape[:2]
    dh, dw = h % base, w % base
    return img[dh // 2:h - dh + dh // 2, dw // 2:w - dw + dw // 2]


def augment(img: np.ndarray, mode: int) -> np.ndarray:
    """Flip/rotation ``mode`` 0..7 of ``(H, W, C)``: 0 identity, 1 flip up-down, 2 rot90,
    3 rot90 + flip, 4 rot180, 5 rot180 + flip, 6 rot270, 7 rot270 + flip (rotations counter-clockwise)."""
    if not 0 <= mode <= 7:
        raise ValueError(f"augmentation mode must be 0..7, got {mode}")
    out = np.rot90(img, k=mode // 2)
    if mode % 2:
        out = np.flipud(out)
    return np.ascontiguousarray(out)




def _to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit data, as the reference's PIL ``convert('RGB')`` gives it: a 16-bit RGB image keeps its high
    byte (PIL's rule; 16-bit greyscale, which PIL clips at 255, is read the same way instead)."""
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    return img


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


@dataclass(frozen=True)
class Sample:
    """One entry of an epoch's list: a pair and the degradation it trains."""
    pair: Pair
    de_id: int
    domain: int


class MixedDegradationDataset(Dataset):
    """All trained degradations in one list, with repetition (see the module docstring).

    ``dataset[i]`` is ``(degraded, clean, de_id, domain)``: two ``(3, P, P)`` float tensors in
    [0, 1] and two ints. Call :meth:`set_epoch` before each epoch (the loader's workers receive
    a copy of the dataset when an epoch's iterator is created).

    Args:
        found: ``{family: [Pair]}`` from :func:`collect_samples` (and :func:`check_images`).
        de_types: the ``--de_type`` names.
        patch_size: side of the training patches.
        seed: base of every sample's random stream.
        skip_bad: a file that fails to decode during training is replaced by the next sample, drawn with
            the failed sample's own random stream (another crop than that sample's), instead of stopping the
            run; each such file is named once per loader process.
    """

    def __init__(self, found: dict[str, list[Pair]], de_types: Sequence[str], patch_size: int, seed: int = 0,
                 skip_bad: bool = False, repeats: dict[str, int] | None = None):
        self.de_types = check_de_types(de_types)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.skip_bad = skip_bad
        self._warned: set[str] = set()  # bad files already named (by this process: each loader worker its own)
        self.epoch = 0
        self.families = domain_families(self.de_types)
        dom = domain_of(self.de_types)
        # Merged in de-id order (denoise_15, 25, 50, derain, ...), as the reference lists them.
        self.images_by_de = {de: len(found[family(de)]) for de in sorted(self.de_types, key=DE_IDS.get)}
        self.repeat_by_de = {de: repeat_factor(de, self.de_types, repeats) for de in self.images_by_de}
        self.samples: list[Sample] = []
        for de, rep in self.repeat_by_de.items():
            self.samples.extend([Sample(p, DE_IDS[de], dom[de]) for p in found[family(de)]] * rep)
        self.counts_by_de, self.domain_counts = epoch_counts(
            self.de_types, {fam: len(found[fam]) for fam in self.families}, repeats)
        self.lambdas = barycenter_weights(self.domain_counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _load(self, index: int, stream: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Sample ``index``, its crop, flip and noise drawn from random stream ``stream`` (its own by default)."""
        s = self.samples[index]
        rng = self.rng(index if stream is None else stream)
        p = self.patch_size
        clean = centre_crop(_to_uint8(read_image(s.pair.clean)))
        deg = centre_crop(_to_uint8(read_image(s.pair.degraded))) if s.pair.degraded is not None else None
        if deg is not None and deg.shape != clean.shape:
            raise DatasetError(f"{s.pair.degraded} and its target {s.pair.clean} differ in size "
                               f"({deg.shape[:2]} vs {clean.shape[:2]})")
        h, w = clean.shape[:2]
        if h < p or w < p:
            raise DatasetError(f"{s.pair.degraded or s.pair.clean} is {h}x{w} after the centre-crop to multiples "
                               f"of {CROP_BASE}, smaller than --patch_size {p}")
        top = int(rng.integers(0, h - p + 1))
        left = int(rng.integers(0, w - p + 1))
        mode = int(rng.integers(1, 8))  # never the identity (reference quirk kept)
        clean = augment(clean[top:top + p, left:left + p], mode)
        if deg is None:
            deg = add_noise(clean, NOISE_SIGMA[s.de_id], rng)
        else:
            deg = augment(deg[top:top + p, left:left + p], mode)
        return _to_tensor(deg), _to_tensor(clean), s.de_id, s.domain

    def __getitem__(self, index: int):
        if not self.skip_bad:
            try:
                return self._load(index)
            except ImageReadError as exc:  # met mid-epoch: the way on, beside the file's own fix
                raise ImageReadError(f"{exc} Or leave such files out: --skip-bad-files (with --resume auto to go on "
                                     f"from the newest checkpoint)") from exc
        for step in range(len(self.samples)):
            j = (index + step) % len(self.samples)
            try:
                return self._load(j, stream=index)
            except (ImageReadError, DatasetError) as exc:
                if str(exc) not in self._warned:
                    self._warned.add(str(exc))
                    print(f"warning: skipping a bad training sample (--skip-bad-files; said once per file): {exc}",
                          file=sys.stderr)
        raise DatasetError("no training sample could be read")

    def summary(self) -> str:
        parts = [f"{de} {n}" for de, n in self.counts_by_de.items()]
        doms = ", ".join(f"{k}:{fam} n={n} lambda={lam:.4f}" for k, (fam, n, lam) in
                         enumerate(zip(self.families, self.domain_counts, self.lambdas)))
        return f"{len(self)} samples per epoch ({', '.join(parts)}); domains {doms}"

    def report(self) -> list[str]:
        """The start-up table: per degradation type the images found, their repetition, the samples
        per epoch, the domain and its lambda; then the total samples per epoch."""
        head = ("type", "images", "repeat", "samples", "domain", "lambda")
        rows = [(de, str(self.images_by_de[de]), f"x{self.repeat_by_de[de]}", str(self.counts_by_de[de]),
                 f"{k} {self.families[k]}", f"{self.lambdas[k]:.4f}")
                for de in self.counts_by_de for k in [domain_of(self.de_types)[de]]]
        total = ("total", "", "", str(len(self)), f"K={len(self.families)}", "")
        table = [head, *rows, total]
        width = [max(len(r[c]) for r in table) for c in range(len(head))]
        left = {0, 4}  # names left-aligned, numbers right-aligned
        return ["  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                          for c, (cell, w) in enumerate(zip(r, width))).rstrip() for r in table]


def build_train_dataset(de_types: Sequence[str], dirs: dict[str, str | os.PathLike], patch_size: int,
                        seed: int = 0, data_file_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                        check: bool = True, log: Callable[[str], None] = print,
                        progress: Callable[[Iterable, int], Iterable] | None = None,
                        repeats: dict[str, int] | None = None, strict_ids: bool = False) -> MixedDegradationDataset:
    """Collect, validate and wrap the training data in one call (what the trainer uses).

    The arguments are those of :func:`collect_samples`, :func:`check_images` (run when ``check``)
    and :class:`MixedDegradationDataset`; :meth:`MixedDegradationDataset.report` is the start-up table.
    """
    found = collect_samples(de_types, dirs, data_file_dir, skip_bad=skip_bad, log=log, strict_ids=strict_ids)
    if check:
        found = check_images(found, patch_size, skip_bad=skip_bad, progress=progress, log=log)
    return MixedDegradationDataset(found, de_types, patch_size, seed=seed, skip_bad=skip_bad, repeats=repeats)


# --------------------------------------------------------------------------- the epoch order

class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (order a pure function of ``seed + epoch``) that can start mid-epoch.

    Works without a process group (``num_replicas``/``rank`` given), so one process and many
    share the code. ``set_start(n)`` skips this rank's first ``n`` indices of the epoch: resuming
    after ``i`` iterations of batch ``B`` is ``set_start(i * B)``; no image is read for them.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def iterations_per_epoch(num_samples: int, batch_size: int, cap: int = 0) -> int:
    """Batches in one epoch of ``num_samples`` per rank (the last one may be partial), capped by ``cap`` if > 0."""
    n = math.ceil(num_samples / batch_size)
    return min(n, cap) if cap and cap > 0 else n


def collate(batch):
    """``[(deg, clean, de, k), ...] -> (deg (B,3,P,P), clean, de_ids (B,), domains (B,))``."""
    deg, clean, de, dom = zip(*batch)
    return torch.stack(deg), torch.stack(clean), torch.tensor(de, dtype=torch.long), torch.tensor(dom, dtype=torch.long)

