"""Matching degraded images with their targets by file name (never by sorted position).

Rule: two files pair when their *keys* are equal. The key is the file stem with the
reference's prefixes removed: ``rain-12`` and ``norain-12`` both give ``12``; a hazy
``0001_0.8_0.2`` gives ``0001`` (SOTS/RESIDE naming, only when the target folder holds
``0001``). Everything else pairs by identical stem, whatever the extensions.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from utils.data.image_files import list_images, nested_images_hint
from utils.errors import UserError, counted, listing, one_or_many
from utils.scores import MAX_PSNR

_RAIN = re.compile(r"^(?:no)?rain-(.+)$", re.IGNORECASE)
_HAZE = re.compile(r"^(.+?)_[0-9.]+_[0-9.]+$")


class PairingError(UserError, ValueError):
    """Degraded and target folders do not pair up; the message lists the files."""


class SwappedFolders(PairingError):
    """Every degraded image is named as a target (``norain-N``) and every target as a degraded image (``rain-N``):
    the two folders were given the wrong way round, which pairs (the rule is symmetric) and scores clean images."""


def name_key(stem: str) -> str:
    """``rain-N``/``norain-N`` -> ``N``; other stems unchanged."""
    m = _RAIN.match(stem)
    return m.group(1) if m else stem




# The flags of the tester and the trainers that name a set of degraded images and their targets.
DEGSET_FLAGS = ("--degset", "--tarset")


def same_folder(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name one folder (also through a link, or spelt otherwise: ``x`` and ``x/``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: said later, naming it
        return os.path.abspath(a) == os.path.abspath(b)


def one_folder_twice(degset: str | None, tarset: str | None) -> str | None:
    """The error line for ``--degset`` and ``--tarset`` (tester and trainers) naming one folder (:func:`same_folder`),
    whose every image would be scored against itself; None when they are two folders, or one is not given."""
    if not (degset and tarset and same_folder(degset, tarset)):
        return None
    return (f"--degset {degset} and --tarset {tarset} are the same folder: every image would be scored against itself "
            f"(PSNR {MAX_PSNR:g} dB, SSIM 1): pass the degraded images' folder as --degset and their targets' as "
            f"--tarset")


def partners_of(pairs: Iterable[tuple[Path, Path]]) -> dict[Path, list[Path]]:
    """Each file of ``pairs`` and the files it is paired with (a target several hazy images share has them all),
    for an error about one file that names its pair."""
    partners: dict[Path, list[Path]] = {}
    for d, t in pairs:
        partners.setdefault(d, []).append(t)
        partners.setdefault(t, []).append(d)
    return partners


def match_pairs(degraded_dir: str | os.PathLike, target_dir: str | os.PathLike,
                skip_unpaired: bool = False, fix: str = "pass --skip-unpaired to leave them out",
                flags: tuple[str, str] | None = None) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair every image of ``degraded_dir`` with its target in ``target_dir``.

    Returns ``(pairs, unpaired)`` with pairs sorted by degraded file name. Several degraded
    files may share one target (hazy images with different A, beta). Unpaired degraded files
    are a :class:`PairingError` listing them (and ending with the caller's other ``fix``) unless
    ``skip_unpaired`` (then they are returned). ``flags``: the command-line flags that named the two folders
    (``("--degset", "--tarset")``), for the errors of a folder that is not there.
    """
    degraded_dir, target_dir = Path(degraded_dir), Path(target_dir)
    given = flags or (None, None)
    for folder, kind, flag in ((degraded_dir, "degraded", given[0]), (target_dir, "target", given[1])):
        if not folder.is_dir():
            if folder.exists():
                raise PairingError(f"the {kind} folder {folder} is a file, not a folder: pass the folder that holds "
                                   f"the {kind} images")
            if flag:
                raise PairingError(f"{flag} {folder}: no such folder (the {kind} images' folder); check the path")
            raise PairingError(f"the {kind} folder {folder} does not exist: put the {kind} images there, or pass "
                               f"the folder that holds them")
    degraded = list_images(degraded_dir)
    targets = list_images(target_dir)
    for files, folder, flag in ((degraded, degraded_dir, "degraded"), (targets, target_dir, "target")):
        if not files:
            nested = nested_images_hint(folder)
            raise PairingError(f"no images in the {flag} folder {folder}" + (f": {nested}" if nested else ""))
    by_key: dict[str, Path] = {}
    for t in targets:
        key = name_key(t.stem)
        if key in by_key:
            raise PairingError(f"two targets share the name {key!r} in {target_dir}: {by_key[key].name}, {t.name}")
        by_key[key] = t
    pairs, unpaired = [], []
    for d in degraded:
        key = name_key(d.stem)
        target = by_key.get(key)
        if target is None:
            m = _HAZE.match(d.stem)
            target = by_key.get(m.group(1)) if m else None
        if target is None:
            unpaired.append(d)
        else:
            pairs.append((d, target))
    if pairs and all(d.stem.lower().startswith("norain-") and t.stem.lower().startswith("rain-") for d, t in pairs):
        raise SwappedFolders(f"the degraded folder {degraded_dir} holds norain-N images and the target folder "
                             f"{target_dir} rain-N ones: the two look swapped (the degraded folder holds rain-N, "
                             f"the target folder norain-N); swap them")
    if unpaired and not skip_unpaired:
        have, them = one_or_many(len(unpaired), "has", "have"), one_or_many(len(unpaired), "it", "them")
        raise PairingError(f"{counted(len(unpaired), 'degraded image')} in {degraded_dir} {have} no target of the "
                           f"same name in {target_dir}:{listing(p.name for p in unpaired)}. Rename {them} to match "
                           f"(rain-N pairs with norain-N), or {fix}.")
    return pairs, unpaired
