"""The mixed-degradation training set of BaryIR: its samples, their order, and the start-up report.

The module is the training data's entry point (``from utils.dataset_utils import ...`` for all of it):
the degradation types, their domains, repetition and barycenter weights are in
:mod:`utils.data.degradations`; where the files come from and how they are checked before training,
in :mod:`utils.data.training_files`; both are imported here too.

Sample pipeline (:meth:`MixedDegradationDataset.__getitem__`)
    read RGB 8-bit -> centre-crop both images to multiples of 16 -> one random ``patch_size``
    window shared by degraded and clean -> one of the seven non-identity flip/rotation modes,
    shared -> for denoising, ``uint8(clip(clean + sigma * N(0, 1), 0, 255))`` (truncation).
    All randomness of a sample is a pure function of ``(seed, epoch, index)``
    (:meth:`~MixedDegradationDataset.set_epoch`), so a sample does not depend on the worker
    that loads it, nor on what was loaded before: resuming mid-epoch reproduces the run.

Start-up report (:meth:`MixedDegradationDataset.report`)
    Per degradation type: images found, repetition, samples per epoch, domain and its lambda,
    and the total samples per epoch, as a small table.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from utils.data.degradations import (
    ALL_IN_ONE_3D,
    ALL_IN_ONE_5D,
    CROP_BASE,
    DE_IDS,
    DENOISE_25_ALONE_REPEAT,
    DRIVEN_BY_TARGET,
    FAMILIES,
    ID_LISTS,
    LAYOUT,
    NOISE_SIGMA,
    REPEATS,
    DatasetError,
    barycenter_weights,
    check_de_types,
    dir_dest,
    domain_families,
    domain_of,
    epoch_counts,
    family,
    num_sources,
    parse_repeats,
    repeat_factor,
)
from utils.data.image_io import ImageReadError, read_image
from utils.data.noise import add_noise
from utils.data.training_files import (
    Pair,
    check_images,
    collect_samples,
    read_id_list,
    split_listed_ids,
)
from utils.errors import human_bytes


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
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


# Memory an epoch takes per sample: its entry in the epoch's list and its index in the sampler's order (a
# scratch measurement gave about 45 bytes; an epoch of 3e7 samples held 1.3 GB).
LISTED_SAMPLE_BYTES = 48


def check_epoch_fits(samples: int, repeats: dict[str, int] | None, free: int | None = None,
                     copies: int | None = None) -> None:
    """Refuse an epoch whose list of samples would not fit in half of this machine's free memory (``free``,
    default :func:`utils.memory.host_available`): a huge ``--repeat`` otherwise ended in "out of memory" with
    advice for other flags. Each of torchrun's ranks on this machine lists the epoch (``copies``, default its
    ``LOCAL_WORLD_SIZE``); loader workers share their rank's list."""
    from utils.memory import host_available
    free = host_available() if free is None else free
    copies = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if copies is None else copies
    need = samples * LISTED_SAMPLE_BYTES * copies
    if free is None or need <= free / 2:
        return
    flags = f"lower --repeat {' '.join(f'{k}={v}' for k, v in (repeats or {}).items())}" if repeats else \
        "train fewer images"
    held = f" by each of the {copies} ranks on this machine, about {human_bytes(need)} in all" if copies > 1 else \
        f", about {human_bytes(need)}"
    too_large = DatasetError(f"an epoch of {samples:,} samples is listed in memory{held}, more than half of the "
                             f"{human_bytes(free)} free on this machine: {flags} (the paper's 3D epoch is 215,295 "
                             f"samples)")
    too_large.met_by_every_rank = False  # judged from this process's view of free memory (torchrun's ranks)
    raise too_large


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
        check_epoch_fits(sum(self.images_by_de[de] * rep for de, rep in self.repeat_by_de.items()), repeats)
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

    def fingerprint(self) -> int:
        """A 63-bit digest of the epoch's list: each sample's degradation and file names, in order (the names
        alone: nodes may mount one copy of the data at other paths). The ranks of a run compare theirs: ranks
        that found other files would train other samples, and epochs of other lengths left a rank waiting for
        the others in a collective they never joined."""
        h = hashlib.sha256()
        for s in self.samples:
            names = (s.pair.degraded.name if s.pair.degraded is not None else "", s.pair.clean.name)
            h.update(f"{s.de_id}\0{names[0]}\0{names[1]}\n".encode("utf-8", "surrogateescape"))
        return int.from_bytes(h.digest()[:8], "little") >> 1

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
                               f"of {CROP_BASE}, smaller than --patch-size {p}")
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
            except ImageReadError as exc:  # met mid-epoch: the way on, beside the file's own fix (if it gives one)
                text = str(exc).rstrip(".")
                lead = f"{text}: put it back, or" if text.startswith("image not found:") else f"{text}. Or"
                raise ImageReadError(f"{lead} leave such files out: --skip-bad-files (with --resume auto to go on "
                                     f"from the newest checkpoint)") from exc
        for step in range(len(self.samples)):
            j = (index + step) % len(self.samples)
            try:
                return self._load(j, stream=index)
            except (ImageReadError, DatasetError) as exc:
                if str(exc) not in self._warned:
                    self._warned.add(str(exc))
                    print(f"warning: skipping a bad training sample (--skip-bad-files; said once per file by each "
                          f"loader process): {exc}", file=sys.stderr)
        raise DatasetError("no training sample could be read")

    def summary(self) -> str:
        parts = [f"{de} {n}" for de, n in self.counts_by_de.items()]
        doms = ", ".join(f"{k}:{fam} n={n} lambda={lam:.4f}" for k, (fam, n, lam) in
                         enumerate(zip(self.families, self.domain_counts, self.lambdas)))
        return f"{len(self)} samples per epoch ({', '.join(parts)}); domains {doms}"

    def report(self, domains: bool = True) -> list[str]:
        """The start-up table: per degradation type the images found, their repetition, the samples
        per epoch, the domain and its lambda (on the domain's first row only: the noise levels share one
        domain, and the column sums to 1); then the total samples per epoch. ``domains=False`` (an L1-only
        backbone, which uses neither) leaves the domain and lambda columns out."""
        head = ("type", "images", "repeat", "samples", "domain", "lambda")
        rows, shown = [], set()
        for de in self.counts_by_de:
            k = domain_of(self.de_types)[de]
            rows.append((de, str(self.images_by_de[de]), f"x{self.repeat_by_de[de]}", str(self.counts_by_de[de]),
                         f"{k} {self.families[k]}", "" if k in shown else f"{self.lambdas[k]:.4f}"))
            shown.add(k)
        total = ("total", "", "", str(len(self)), f"K={len(self.families)}", "")
        table = [r if domains else r[:4] for r in (head, *rows, total)]
        width = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
        left = {0, 4}  # names left-aligned, numbers right-aligned
        return ["  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                          for c, (cell, w) in enumerate(zip(r, width))).rstrip() for r in table]


def build_train_dataset(de_types: Sequence[str], dirs: dict[str, str | os.PathLike], patch_size: int,
                        seed: int = 0, data_file_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                        check: bool = True, log: Callable[[str], None] = print,
                        warn: Callable[[str], None] | None = None,
                        progress: Callable[[Iterable, int], Iterable] | None = None,
                        repeats: dict[str, int] | None = None, strict_ids: bool = False) -> MixedDegradationDataset:
    """Collect, validate and wrap the training data in one call (what the trainer uses).

    The arguments are those of :func:`collect_samples`, :func:`check_images` (run when ``check``)
    and :class:`MixedDegradationDataset`; :meth:`MixedDegradationDataset.report` is the start-up table.
    """
    found = collect_samples(de_types, dirs, data_file_dir, skip_bad=skip_bad, log=log, strict_ids=strict_ids,
                            warn=warn)
    if check:
        found = check_images(found, patch_size, skip_bad=skip_bad, progress=progress, log=log, warn=warn)
    return MixedDegradationDataset(found, de_types, patch_size, seed=seed, skip_bad=skip_bad, repeats=repeats)


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


# its own names and its two neighbours' (the training data has one entry point)
__all__ = [
    "ALL_IN_ONE_3D", "ALL_IN_ONE_5D", "CROP_BASE", "DENOISE_25_ALONE_REPEAT", "DE_IDS", "DRIVEN_BY_TARGET",
    "DatasetError", "FAMILIES", "ID_LISTS", "LAYOUT", "MixedDegradationDataset", "NOISE_SIGMA", "Pair", "REPEATS",
    "ResumableSampler", "Sample", "augment", "barycenter_weights", "build_train_dataset", "centre_crop",
    "check_de_types", "check_images", "collate", "collect_samples", "dir_dest", "domain_families", "domain_of",
    "epoch_counts", "family", "iterations_per_epoch", "num_sources", "parse_repeats", "read_id_list", "repeat_factor",
    "split_listed_ids",
]
