"""The degradation types of BaryIR's training data: ids, domains, repetition and barycenter weights.

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
"""
from __future__ import annotations

from typing import Sequence

from utils.errors import UserError

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
    "denoise": ("--denoise-dir", None, "."),
    "derain": ("--derain-dir", "rainy", "gt"),
    "dehaze": ("--dehaze-dir", "synthetic", "original"),
    "deblur": ("--deblur-dir", "blur", "sharp"),
    "lowlight": ("--lowlight-dir", "low", "high"),
    "single": ("--single-dir", "degraded", "target"),
}
# Families whose list of samples comes from the target folder, as in the reference: deblur
# lists Deblur/sharp/ and pairs each image with Deblur/blur/ of the same name.
DRIVEN_BY_TARGET = ("deblur",)


class DatasetError(UserError, ValueError):
    """The training data cannot be used as given; the message names the files, the flag and the fix."""


def dir_dest(fam: str) -> str:
    """The attribute of the parsed flags that holds ``fam``'s folder: ``'derain' -> 'derain_dir'``."""
    return LAYOUT[fam][0][2:].replace("-", "_")


def family(de_type: str) -> str:
    """``'denoise_25' -> 'denoise'``; other names are their own family."""
    return "denoise" if de_type.startswith("denoise_") else de_type


def check_de_types(de_types: Sequence[str]) -> list[str]:
    """Validate ``--de_type``: known names, no duplicates. Returns them as a list."""
    unknown = [d for d in de_types if d not in DE_IDS]
    if unknown:
        raise DatasetError(f"unknown --de-type {unknown}; choose from {list(DE_IDS)}")
    dup = sorted({d for d in de_types if list(de_types).count(d) > 1})
    if dup:
        raise DatasetError(f"--de-type lists {dup} more than once")
    if not de_types:
        raise DatasetError("--de-type is empty; name at least one degradation, e.g. --de-type derain dehaze")
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
