"""BaryIR's claims at small scale: eight arms x seeds on the embedded demo data, with the real
trainer (``trainer_bary.py``'s engine and parser) and the real tester engine (``utils.eval.evaluation``).

    .venv/bin/python bench/study.py            # the full study: 8 arms x 3 seeds (up to 2 hours on 2 CPU cores)
    .venv/bin/python bench/study.py --quick    # one seed, 60 iterations (up to 12 minutes): a pipeline check
    .venv/bin/python bench/study.py            # again: continues where it stopped; finished runs are skipped

The time estimates (``plan``, printed first) are measured for the first five arms and guessed from the
networks' sizes for the last three (UNMEASURED) until a run records them.

What it does (``STUDY.md`` explains the setup and how to read the tables):

1. arms, all with the ``tiny`` preset, the same data, iterations, batch, patch and seeds: BaryIR
   (BaryNet); the ``Restormer`` baseline with the L1 loss only; BaryIR without the orthogonality
   term, without the contrastive term, and without the potentials (transport cost only) (trainer
   ``--ablate``); a capacity-matched Restormer (L1 only; ``--dim 26``: within 10% of BaryNet's
   parameters); PromptIR (L1 only); BaryPromptIR (BaryIR on PromptIR's decoder, the full objective);
2. each run is evaluated in distribution (sigma 15/25/50, rain, haze) and out of distribution
   (sigma 75, JPEG q10, low light, motion blur): mean +- std over seeds per arm and task, and the
   differences BaryIR - Restormer, BaryIR - capacity-matched Restormer and BaryPromptIR - PromptIR
   (COMPARISONS), paired over (seed, image) and over seeds, with a plain verdict and each pair's
   parameter counts (whether capacity confounds it);
3. a linear probe of degradation type on pooled WB and residual embeddings (the WB backbones'
   arms), evaluated on held-out photos (leave one test photo out), against chance; the mean cosine
   between WB and residual;
4. tables to ``<out>/study.md`` (and the console), everything to ``<out>/study.json``, figures
   to ``--figs-dir``.

Every (arm, seed) run trains into ``<out>/runs/<arm>/seed<k>/train`` with ``--resume auto``;
its evaluation and embeddings are cached next to it (``eval.json``, ``embeddings.npz``, with the
network it evaluated: a run of another configuration than its arm's is refused, not reused).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# The probe's small L-BFGS fits (scipy) run ~30x slower through OpenBLAS's thread pool when another
# process holds a core; numpy/scipy only (torch uses MKL and its own threads). Effective when this
# file is the entry point, before numpy loads (and only then: importing it changes nothing).
if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

from net.presets import WB_BACKBONES, build_model, model_config
from utils.analysis.embeddings import latents, pooled
from utils.data.image_io import read_image, to_float
from utils.data.noise import noisy_version
from utils.dataset_utils import ALL_IN_ONE_3D
from utils.demo.data import build_demo_data
from utils.demo.degrade import darken, jpeg_degrade, motion_blur
from utils.demo.run import InputAsOutput, views_of_one_photo
from utils.errors import INTERRUPTED_STATUS, OneLineArgumentParser, UsageError, UserError, add_debug_flag, run_main
from utils.eval.evaluation import evaluate_tasks
from utils.eval.protocol import Protocol, crop_to_multiple, load_model
from utils.files import atomic_write, write_text
from utils.plotting import save_figure
from utils.runtime import DEVICES, pick_device
from utils.train.engine import run_cli
from utils.train.options import get_args_parser as trainer_parser

ID_TASKS = ALL_IN_ONE_3D
OOD_TASKS = ("denoise_75", "jpeg", "lowlight", "deblur")
GROUPS = {"ID": ID_TASKS, "OOD": OOD_TASKS}
# Probe classes: the five training degradations, then the three unseen types.
ID_VIEWS = ("noise 15", "noise 25", "noise 50", "rain", "haze")
OOD_VIEWS = ("jpeg q10", "low light", "blur")
PROBE_SETS = {"ID": ID_VIEWS, "all": ID_VIEWS + OOD_VIEWS}
SPACES = ("wb", "residual", "source")

# The capacity-matched baseline: the tiny Restormer widened (dim only) to within 10% of tiny BaryNet's
# 2,573,617 parameters: dim 26 has 2,615,261 (+1.6%); dim 24 has 2,232,625 (-13.2%).
MATCHED_DIM = 26
CAPACITY_TOLERANCE = 0.10

# Measured on this project's 2-core CPU with one torch thread while another process used the other
# core (so on the safe side): seconds per training iteration of the tiny preset at batch 4, patch 64
# (scaled by batch x patch^2), and seconds to evaluate one model on the nine tasks at demo scale 1
# (about 0.9 s per 224x288 image for BaryNet) plus, for the WB backbones, the probe's 136 embeddings.
# With both cores free (two threads) BaryNet trains at about 0.35 s per iteration (the demo's log).
# Keyed by Arm.cost_key (the backbone, and its width overrides). The entries in UNMEASURED are guesses
# from the networks' sizes, not measurements: replace them (and drop them from UNMEASURED) once a run
# has recorded its train_seconds and eval_seconds (eval.json).
MATCHED = f"Restormer dim={MATCHED_DIM}"
SEC_PER_ITER = {"BaryNet": 0.6, "Restormer": 0.35, MATCHED: 0.75, "PromptIR": 0.6, "BaryPromptIR": 0.8}
EVAL_SECONDS = {"BaryNet": 60.0, "Restormer": 30.0, MATCHED: 45.0, "PromptIR": 40.0, "BaryPromptIR": 70.0}
UNMEASURED = frozenset({MATCHED, "PromptIR", "BaryPromptIR"})
FREE_CORES_FACTOR = 0.6


@dataclass(frozen=True)
class Arm:
    label: str
    backbone: str
    ablate: tuple[str, ...] = ()
    # Width/depth changes to the tiny preset, as build_model takes them and the trainer's flags of the same
    # names (--dim, --num-blocks, --num-refinement-blocks, --heads) pass them.
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.overrides)

    @property
    def cost_key(self) -> str:
        """The key of SEC_PER_ITER and EVAL_SECONDS: the backbone, and its overrides."""
        return " ".join([self.backbone, *(f"{k}={v}" for k, v in self.overrides)])

    @property
    def wb(self) -> bool:
        """A WB backbone: the full BaryIR objective and its potentials, WB/residual latents for the probe."""
        return self.backbone in WB_BACKBONES


ARMS = {
    "baryir": Arm("BaryIR", "BaryNet"),
    "restormer": Arm("Restormer (L1 only)", "Restormer"),
    "no_orthogonality": Arm("BaryIR w/o orthogonality", "BaryNet", ("orthogonality",)),
    "no_contrastive": Arm("BaryIR w/o contrastive", "BaryNet", ("contrastive",)),
    "no_potentials": Arm("BaryIR w/o potentials (transport only)", "BaryNet", ("potentials",)),
    "restormer_matched": Arm(f"Restormer dim {MATCHED_DIM}, capacity-matched (L1 only)", "Restormer",
                             overrides=(("dim", MATCHED_DIM),)),
    "promptir": Arm("PromptIR (L1 only)", "PromptIR"),
    "barypromptir": Arm("BaryPromptIR", "BaryPromptIR"),
}
METHOD, BASELINE = "baryir", "restormer"
# (method, baseline): PSNR of the method minus the baseline's, paired, in the tables and the difference figure.
COMPARISONS = ((METHOD, BASELINE), (METHOD, "restormer_matched"), ("barypromptir", "promptir"))

# One colour per arm in the figures (the difference figure draws each comparison in its method's colour).
COLOURS = {"baryir": "tab:red", "restormer": "tab:grey", "no_orthogonality": "tab:blue",
           "no_contrastive": "tab:green", "no_potentials": "tab:orange", "restormer_matched": "tab:brown",
           "promptir": "tab:cyan", "barypromptir": "tab:purple"}

FULL = dict(iters=400, epochs=4, seeds=[0, 1, 2])
QUICK = dict(iters=60, epochs=2, seeds=[0])  # evaluation dominates: one seed keeps it near 10 minutes


class StudyError(UserError):
    """A setting conflicts with what ``--out`` already holds, or a run failed; the message says what to do."""


class StudySettingError(StudyError, UsageError):
    """Flags that cannot work together (exit status 2)."""


class StudyInterrupted(StudyError):
    """Ctrl-C (or a signal) during the runs: the shell's status for it, and how to continue."""
    exit_status = INTERRUPTED_STATUS


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="BaryIR vs L1 baselines (Restormer, a capacity-matched Restormer, "
                                          "PromptIR), three ablations and BaryPromptIR on the demo data: "
                                          "PSNR/SSIM over seeds, paired tests, a linear probe of the WB and "
                                          "residual spaces",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{len(QUICK['seeds'])} seed x {QUICK['iters']} iterations per arm (up to 12 minutes for "
                        f"all arms): "
                        f"checks the pipeline; the study's setting is the default")
    p.add_argument("--out", default=None, help="runs, caches and tables (default results/study, "
                                               "results/study-quick with --quick)")
    p.add_argument("--figs-dir", dest="figs_dir", default=None,
                   help="figures (default figs/study, the committed ones; <out>/figs with --quick)")
    p.add_argument("--root", default="data/demo", help="demo data folder (built when missing or stale)")
    p.add_argument("--scale", type=float, default=1.0, help="demo data size factor (tests use 0.25)")
    p.add_argument("--max-photos", dest="max_photos", type=int, default=None,
                   help="demo data: keep only the first N train and test photos (tests)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"training seeds (default {FULL['seeds']}, {QUICK['seeds']} with --quick)")
    p.add_argument("--iters", type=int, default=None,
                   help=f"training iterations per run (default {FULL['iters']}, {QUICK['iters']} with --quick)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"the iterations are split into this many epochs; the last one runs at lr/10 "
                        f"(default {FULL['epochs']}, {QUICK['epochs']} with --quick)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    p.add_argument("--patch-size", dest="patch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="base lr (the trainer halves it), the demo's: the paper's 2e-4 is too slow for a short budget")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no training progress bars")
    add_debug_flag(p)
    return p


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on ``--quick``; checks the numbers."""
    base = QUICK if args.quick else FULL
    suffix = "study-quick" if args.quick else "study"
    args.out = args.out or f"results/{suffix}"
    # the full run's figures are the committed ones; a quick run's go with its results
    args.figs_dir = args.figs_dir or (str(Path(args.out) / "figs") if args.quick else "figs/study")
    args.seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else base["seeds"]))
    args.iters = args.iters if args.iters is not None else base["iters"]
    args.epochs = args.epochs if args.epochs is not None else base["epochs"]
    if args.epochs < 1 or args.iters < args.epochs:
        raise StudySettingError(f"--iters ({args.iters}) must be at least --epochs ({args.epochs}) >= 1")
    if args.iters % args.epochs:
        raise StudySettingError(f"--iters {args.iters} must be a multiple of --epochs {args.epochs} (equal epochs)")
    return args


# --------------------------------------------------------------------------- data and training

def balanced_repeats(manifest: dict, min_samples: int) -> dict[str, int]:
    """``--repeat`` factors giving each family (noise, rain, haze) about the same share of an epoch.

    The paper's factors balance the paper's data sizes (derain x360 for 200 images); on the demo
    data they would make an epoch 97% rain. Noise levels split the noise family's share equally.
    The epoch holds at least ``min_samples`` samples, so capped epochs never run short.
    """
    files = manifest["files"]
    n_clean = sum(rel.startswith("Train/Denoise/") for rel in files)
    n_rain = sum(rel.startswith("Train/Derain/rainy/") for rel in files)
    n_haze = sum(rel.startswith("Train/Dehaze/synthetic/") for rel in files)
    per_type = {"denoise_15": (n_clean, 3), "denoise_25": (n_clean, 3), "denoise_50": (n_clean, 3),
                "derain": (n_rain, 1), "dehaze": (n_haze, 1)}
    share = max(max(n * k for n, k in per_type.values()), math.ceil(min_samples / 3))
    while True:
        reps = {de: max(1, round(share / (n * k))) for de, (n, k) in per_type.items()}
        if sum(reps[de] * n for de, (n, _) in per_type.items()) >= min_samples:
            return reps
        share += max(1, share // 10)


def override_flags(arm: Arm) -> list[str]:
    """The trainer's flags for ``arm``'s overrides of the tiny preset: ``dim`` -> ``--dim 26``,
    ``num_blocks`` -> ``--num-blocks 1 1 1 2`` (lists as several values)."""
    out: list[str] = []
    for key, value in arm.overrides:
        out += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return out


def arm_model_config(arm: Arm) -> dict[str, Any]:
    """The network configuration ``arm`` trains: the tiny preset with its overrides, checked."""
    return model_config("tiny", backbone=arm.backbone, **arm.config)


def parameter_counts(arms: Sequence[str], patch_size: int) -> dict[str, dict[str, int]]:
    """Per arm, the restoration network's parameters (what is trained and tested) and, for the WB backbones,
    the potentials' (trained beside it, not used at test time), built on the meta device: nothing allocated."""
    from net import Potentials
    from utils.dataset_utils import num_sources
    out = {}
    for name in arms:
        arm = ARMS[name]
        with torch.device("meta"):
            model = build_model(arm.backbone, "tiny", **arm.config)
            pots = Potentials(num_sources(ID_TASKS), model.config["dim"] * 8, patch_size) if arm.wb else None
        out[name] = {"network": sum(p.numel() for p in model.parameters()),
                     "potentials": sum(p.numel() for p in pots.parameters()) if pots is not None else 0}
    return out


def trainer_argv(args: argparse.Namespace, arm: Arm, seed: int, root: Path, train_dir: Path,
                 repeats: dict[str, int]) -> list[str]:
    train = root / "Train"
    return ["--preset", "tiny", "--backbone", arm.backbone, *override_flags(arm),
            *(["--ablate", *arm.ablate] if arm.ablate else []),
            "--de-type", *ID_TASKS, "--denoise-dir", str(train / "Denoise"), "--derain-dir", str(train / "Derain"),
            "--dehaze-dir", str(train / "Dehaze"), "--data-file-dir", "",  # scan the synthetic folders
            "--repeat", *(f"{k}={v}" for k, v in repeats.items()),
            "--batch-size", str(args.batch_size), "--patch-size", str(args.patch_size),
            "--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters // args.epochs),
            "--step", str(max(1, args.epochs - 1)), "--lr", str(args.lr), "--seed", str(seed),
            "--device", args.device, "--threads", "0", "--output-dir", str(train_dir),
            "--figs-dir", str(train_dir), "--save-every", "50", "--keep", "2", "--log-every", "10",
            "--resume", "auto", "--degset", ""]


def finished_checkpoint(train_dir: Path, epochs: int) -> Path | None:
    """The run's final checkpoint, or None while it is missing or unfinished."""
    from utils.checkpoints import read_checkpoint, read_latest
    latest = read_latest(train_dir) if train_dir.is_dir() else None
    if latest is None:
        return None
    obj = read_checkpoint(latest)
    return latest if int(obj.get("epoch", 0)) >= epochs and int(obj.get("iteration", 0)) == 0 else None


def train_run(argv: list[str], train_dir: Path, epochs: int, progress: bool) -> Path:
    """Train (or continue) one run with the real trainer; its console output goes to ``train/stdout.txt``.

    ``run_cli`` and its parser are what ``trainer_bary.py``'s ``main`` runs; the script itself is not importable
    here (``python bench/study.py`` puts bench/, not the repository root, on sys.path, and the package
    installs only ``net`` and ``utils``)."""
    targs = trainer_parser().parse_args(argv)
    train_dir.mkdir(parents=True, exist_ok=True)
    with open(train_dir / "stdout.txt", "a") as fh, contextlib.redirect_stdout(fh), \
            (contextlib.redirect_stderr(fh) if not progress else contextlib.nullcontext()):
        rc = run_cli(targs)
    if rc:
        raise StudyError(f"training failed (exit code {rc}); see {train_dir}/stdout.txt. Fix it, then rerun the "
                         f"same command: finished runs are kept")
    ckpt = finished_checkpoint(train_dir, epochs)
    if ckpt is None:  # stopped by a signal: the trainer saved a checkpoint and returned 0
        raise KeyboardInterrupt
    return ckpt


# --------------------------------------------------------------------------- evaluation

def evaluate_model(model: torch.nn.Module, root: Path, device: torch.device) -> dict[str, Any]:
    """Per-task mean and per-image PSNR/SSIM on the nine tasks (the reference protocol)."""
    res = evaluate_tasks(model, ID_TASKS + OOD_TASKS, root / "test", Protocol(), device, progress=False)
    out = {}
    for row, r in res["tasks"].items():
        if row.split("/")[0] in out:
            raise StudyError(f"{root / 'test'}: task {row.split('/')[0]} has several sets; the study expects the "
                             f"demo layout (one set per task)")
        out[row.split("/")[0]] = {"row": row, "psnr": r["psnr"], "ssim": r["ssim"],
                                  "images": {im["name"]: [im["psnr"], im["ssim"]] for im in r["images"]}}
    return out


@dataclass
class ProbeView:
    """One image for the probe: which photo, held-out (test photo) or not, degradation label."""
    photo: str
    test: bool
    label: str
    image: np.ndarray


def _center_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(img[y:y + side, x:x + side])


def probe_views(root: Path, manifest: dict) -> list[ProbeView]:
    """Every degradation of every photo: held-out test photos (the test files) and training crops.

    Test photos: the evaluation's own inputs (noise synthesised as the tester does). Training
    crops (probe training data only): noise synthesised likewise, rain and haze from the training
    files whose target is that crop, JPEG/low light/blur synthesised by ``utils.demo.data``; all
    centre-cropped to the test images' short side.
    """
    files = manifest["files"]
    views: list[ProbeView] = []
    for photo in manifest["sources"]["test"]:
        found = views_of_one_photo(root, manifest, photo)
        for rel, info in files.items():
            if rel.startswith("test/deblur/input/") and info["source"] == photo:
                found["blur"] = read_image(root / rel)
        views += [ProbeView(photo, True, label, img) for label, img in found.items() if label in PROBE_SETS["all"]]
    side = min(min(info["size"]) for rel, info in files.items() if rel.startswith("test/denoise/")) // 8 * 8
    by_sha: dict[str, list[str]] = {}
    for rel, info in files.items():
        by_sha.setdefault(info["sha256"], []).append(rel)
    scale = float(manifest.get("scale", 1.0))
    for rel, info in sorted(files.items()):
        if not rel.startswith("Train/Denoise/"):
            continue
        name = Path(rel).name
        clean = read_image(root / rel)
        rng = np.random.default_rng(zlib.crc32(f"probe:{name}".encode()))
        found = {f"noise {s}": noisy_version(clean, name, s) for s in (15, 25, 50)}
        for twin in by_sha[info["sha256"]]:  # the same crop stored as a rain or haze target
            if twin.startswith("Train/Derain/gt/") and "rain" not in found:
                found["rain"] = read_image(root / twin.replace("/gt/norain-", "/rainy/rain-"))
            if twin.startswith("Train/Dehaze/original/") and "haze" not in found:
                image_id = Path(twin).stem
                hazy = sorted((root / "Train/Dehaze/synthetic").rglob(f"{image_id}_*"))
                if hazy:
                    found["haze"] = read_image(hazy[0])
        found.update({"jpeg q10": jpeg_degrade(clean), "low light": darken(clean, rng),
                      "blur": motion_blur(clean, rng, scale)})
        views += [ProbeView(info["source"], False, label, _center_crop(img, side)) for label, img in found.items()]
    return views


def embed(model: torch.nn.Module, views: Sequence[ProbeView], device: torch.device) -> dict[str, np.ndarray]:
    """Pooled WB, residual and source (z = b + r) embeddings of every view, and cos(b_i, r_i) of the
    flattened latents (what ``utils.analysis.embeddings.mean_cosine`` averages). Views of one size are batched."""
    n = len(views)
    wb, res, cos = [None] * n, [None] * n, np.zeros(n)
    by_shape: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        by_shape.setdefault(crop_to_multiple(v.image).shape[:2], []).append(i)
    for (h, w), idx in by_shape.items():
        for start in range(0, len(idx), 16):
            chunk = idx[start:start + 16]
            x = torch.stack([torch.from_numpy(to_float(views[i].image[:h, :w])).permute(2, 0, 1) for i in chunk])
            b, r = latents(model, x.to(device))
            c = F.cosine_similarity(b.flatten(1), r.flatten(1), dim=1).cpu().numpy()
            pb, pr = pooled(b).cpu().numpy(), pooled(r).cpu().numpy()
            for j, i in enumerate(chunk):
                wb[i], res[i], cos[i] = pb[j], pr[j], c[j]
    wb, res = np.stack(wb).astype(np.float64), np.stack(res).astype(np.float64)
    return {"wb": wb, "residual": res, "source": wb + res, "cos": cos}


# --------------------------------------------------------------------------- the probe

def logistic_loss(w_flat: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(x W) plus ``l2 * |W|^2`` (not the bias row), and its gradient.

    ``x`` carries a last column of ones (the bias); ``W`` is ``(D + 1, classes)``, flattened.
    """
    n, k = onehot.shape
    w = w_flat.reshape(x.shape[1], k)
    logits = x @ w
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -(onehot * logp).sum() / n + l2 * (w[:-1] ** 2).sum()
    grad = x.T @ (np.exp(logp) - onehot) / n
    grad[:-1] += 2 * l2 * w[:-1]
    return float(loss), grad.ravel()


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression, L2 on the weights, by L-BFGS from zeros (deterministic).

    Returns ``(D + 1, n_classes)``: the weights, then the bias row.
    """
    from scipy.optimize import minimize
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(n_classes)[y]
    res = minimize(logistic_loss, np.zeros(xb.shape[1] * n_classes), args=(xb, onehot, l2), jac=True,
                   method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(xb.shape[1], n_classes)


def probe_accuracy(feats: np.ndarray, labels: Sequence[str], photos: Sequence[str], test: np.ndarray,
                   classes: Sequence[str]) -> float:
    """Leave one test photo out: train on the training crops and the other test photos, predict the
    held-out photo's views; features standardised on the training fold. Accuracy over all folds."""
    keep = np.array([lab in classes for lab in labels])
    y = np.array([classes.index(lab) if lab in classes else -1 for lab in labels])
    photos = np.asarray(photos)
    correct = total = 0
    for photo in sorted(set(photos[test & keep])):
        held = keep & test & (photos == photo)
        fit = keep & ~held
        mu, sd = feats[fit].mean(0), feats[fit].std(0) + 1e-6
        w = fit_logistic((feats[fit] - mu) / sd, y[fit], len(classes))
        xs = np.hstack([(feats[held] - mu) / sd, np.ones((held.sum(), 1))])
        correct += int(((xs @ w).argmax(1) == y[held]).sum())
        total += int(held.sum())
    return correct / max(total, 1)


# --------------------------------------------------------------------------- statistics

def paired_stats(d: Sequence[float]) -> dict[str, Any]:
    """Mean of paired differences with a 95% t interval, the paired t-test and Wilcoxon signed-rank p."""
    from scipy import stats
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean": float(d.mean()) if n else float("nan"),
                           "sd": float(d.std(ddof=1)) if n > 1 else None, "ci95": None, "p_t": None,
                           "p_wilcoxon": None}
    if n > 1:
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        out["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
        if d.std() > 0:
            out["p_t"] = float(stats.ttest_1samp(d, 0.0).pvalue)
        if np.any(d != 0):
            with contextlib.suppress(ValueError):
                out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return out


def excludes_zero(s: dict[str, Any]) -> bool:
    return s["ci95"] is not None and (s["ci95"][0] > 0 or s["ci95"][1] < 0)


NEGLIGIBLE_DB = 0.05  # PSNR differences below this are not worth a claim (tables print two decimals)


def verdict(images: dict[str, Any], seeds: dict[str, Any], better: str, worse: str) -> str:
    """One plain sentence from the image-level and seed-level tests (differences ``a - b``, positive: ``better``).

    "Larger than the seed-to-seed noise" needs the seed-level 95% interval to exclude 0; the
    image-level test alone treats the same image under different seeds as independent pairs, so
    it can only say the difference is consistent over images.
    """
    small = f"; negligible (under {NEGLIGIBLE_DB} dB)" if abs(images["mean"]) < NEGLIGIBLE_DB else ""
    if excludes_zero(seeds):
        return f"larger than the seed-to-seed noise: {better if seeds['mean'] > 0 else worse}{small}"
    if excludes_zero(images):
        who = better if images["mean"] > 0 else worse
        tail = (f" but not larger than the seed-to-seed noise ({seeds['n']} seeds)" if seeds["n"] > 1
                else "; one seed, so the seed-to-seed noise is not measured")
        return f"consistent over images ({who}){tail}{small}"
    return "not distinguishable from noise"


def psnr_matrix(evals: dict, arm: str, seeds: Sequence[int], tasks: Sequence[str]) -> dict[int, np.ndarray]:
    """Per seed, the PSNR of every (task, image) in a fixed order (the pairing key)."""
    out = {}
    for s in seeds:
        e = evals[(arm, s)]
        out[s] = np.array([e[t]["images"][name][0] for t in tasks for name in sorted(e[t]["images"])])
    return out


def group_mean(e: dict, tasks: Sequence[str], metric: int) -> float:
    """Mean over tasks of the task's mean over images (the paper's average)."""
    return float(np.mean([np.mean([v[metric] for v in e[t]["images"].values()]) for t in tasks]))


def compare(evals: dict, a: str, b: str, seeds: Sequence[int], tasks: Sequence[str]) -> dict[str, Any]:
    """PSNR of arm ``a`` minus arm ``b``: paired over (seed, image), and over seeds (group means)."""
    ma, mb = psnr_matrix(evals, a, seeds, tasks), psnr_matrix(evals, b, seeds, tasks)
    images = paired_stats(np.concatenate([ma[s] - mb[s] for s in seeds]))
    per_seed = [group_mean(evals[(a, s)], tasks, 0) - group_mean(evals[(b, s)], tasks, 0) for s in seeds]
    seed_level = paired_stats(per_seed)
    seed_level["values"] = per_seed
    return {"images": images, "seeds": seed_level}


def comparison_key(method: str, baseline: str) -> str:
    return f"{method}_vs_{baseline}"


def summarise(evals: dict, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean +- std over seeds of PSNR/SSIM per arm and task (and per group), and the comparisons."""
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = {}
        for name in list(ID_TASKS + OOD_TASKS) + list(GROUPS):
            tasks = GROUPS.get(name, (name,))
            vals = np.array([[group_mean(evals[(arm, s)], tasks, m) for m in (0, 1)] for s in seeds])
            rows[name] = {"psnr": [float(vals[:, 0].mean()), float(vals[:, 0].std(ddof=1)) if len(seeds) > 1 else None],
                          "ssim": [float(vals[:, 1].mean()), float(vals[:, 1].std(ddof=1)) if len(seeds) > 1 else None],
                          "per_seed_psnr": vals[:, 0].tolist()}
        table[arm] = rows
    out: dict[str, Any] = {"table": table, "comparisons": {}, "ablations": {}}
    for method, baseline in COMPARISONS:
        if method in arms and baseline in arms:
            rows = {}
            for name in list(ID_TASKS + OOD_TASKS) + list(GROUPS):
                c = compare(evals, method, baseline, seeds, GROUPS.get(name, (name,)))
                c["verdict"] = verdict(c["images"], c["seeds"], f"{ARMS[method].label} better", "baseline better")
                rows[name] = c
            out["comparisons"][comparison_key(method, baseline)] = {"method": method, "baseline": baseline,
                                                                     "tasks": rows}
    if METHOD in arms:
        for arm in arms:
            if ARMS[arm].ablate:
                out["ablations"][arm] = {}
                for g, tasks in GROUPS.items():
                    c = compare(evals, arm, METHOD, seeds, tasks)
                    c["verdict"] = verdict(c["images"], c["seeds"], "the ablation better",
                                           "full BaryIR better")
                    out["ablations"][arm][g] = c
    return out


def probe_summary(embeddings: dict, labels: list[str], photos: list[str], test: np.ndarray,
                  arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Probe accuracy per space and class set, and cos(WB, residual) on held-out views, over seeds."""
    out: dict[str, Any] = {}
    for arm in arms:
        if not ARMS[arm].wb:
            continue
        per: dict[str, Any] = {}
        for set_name, classes in PROBE_SETS.items():
            for space in SPACES:
                acc = [probe_accuracy(embeddings[(arm, s)][space], labels, photos, test, classes) for s in seeds]
                per[f"{set_name}/{space}"] = acc
        cos = [float(embeddings[(arm, s)]["cos"][test].mean()) for s in seeds]
        abs_cos = [float(np.abs(embeddings[(arm, s)]["cos"][test]).mean()) for s in seeds]
        per["cos"], per["abs_cos"] = cos, abs_cos
        out[arm] = per
    return out


# --------------------------------------------------------------------------- tables and figures

def _ms(v: Sequence[float] | list, digits: int = 2) -> str:
    mean, std = v
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _mean_sd(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f}" + (f" ± {a.std(ddof=1):.{digits}f}" if len(a) > 1 else "")


def _p(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def _ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:+.2f}" + (f" [{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]" if s["ci95"] else "")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def capacity_note(method: str, baseline: str, params: dict[str, dict[str, int]]) -> str:
    """One sentence: the two networks' parameter counts and whether capacity confounds their difference."""
    a, b = params[method]["network"], params[baseline]["network"]
    ratio = a / b
    counts = (f"{ARMS[method].label} has {_millions(a)} parameters, {ARMS[baseline].label} {_millions(b)} "
              f"(ratio {ratio:.2f})")
    if abs(ratio - 1) <= CAPACITY_TOLERANCE:
        return (f"Capacity: {counts}, within {CAPACITY_TOLERANCE:.0%}: matched in parameter count (not in "
                f"shape: where the parameters sit differs), so the number of parameters does not explain a "
                f"difference.")
    return (f"Capacity: {counts}: NOT capacity-matched; a difference may come from the "
            f"{'extra' if ratio > 1 else 'missing'} capacity as well as from the method.")


def arms_table(arms: Sequence[str], params: dict[str, dict[str, int]]) -> list[str]:
    """What each arm trains: flags, objective, parameter counts (network; potentials, training only)."""
    ref = params[METHOD]["network"]
    md = ["### Arms", "",
          f"All with --preset tiny, the same data, iterations and seeds. Parameters: the restoration network "
          f"(trained and tested), its ratio to tiny BaryNet's {ref:,}, and the potentials the WB backbones "
          f"train beside it (not used at test time).", "",
          "| arm | trainer flags | objective | parameters | / BaryNet | potentials (training only) |",
          "|---|---|---|---|---|---|"]
    for name in arms:
        arm, n = ARMS[name], params[name]
        flags = " ".join(["--backbone", arm.backbone, *override_flags(arm),
                          *(["--ablate", *arm.ablate] if arm.ablate else [])])
        objective = ("BaryIR" + (f" w/o {', '.join(arm.ablate)}" if arm.ablate else "")) if arm.wb else "L1 only"
        pots = "–" if not n["potentials"] else (f"{n['potentials']:,} (not updated)" if "potentials" in arm.ablate
                                                else f"{n['potentials']:,}")
        md.append(f"| {arm.label} | `{flags}` | {objective} | {n['network']:,} | {n['network'] / ref:.2f} | "
                  f"{pots} |")
    return md + [""]


def tables(summary: dict, probe: dict, degraded: dict, arms: Sequence[str], seeds: Sequence[int],
           n_probe: dict[str, int], params: dict[str, dict[str, int]] | None = None) -> str:
    """The markdown tables. ``params``: :func:`parameter_counts` of ``arms`` and METHOD (default: at patch 64)."""
    if params is None:
        params = parameter_counts(list(dict.fromkeys([*arms, METHOD])), 64)
    names = list(ID_TASKS + OOD_TASKS) + list(GROUPS)
    split = {**{t: "ID" for t in ID_TASKS}, **{t: "OOD" for t in OOD_TASKS}, "ID": "ID avg", "OOD": "OOD avg"}
    md = arms_table(arms, params)
    for metric, digits in (("psnr", 2), ("ssim", 4)):
        md += [f"### {metric.upper()} (mean ± std over {len(seeds)} seed(s))", "",
               "| task | split | degraded input | "
               + " | ".join(f"{ARMS[a].label} ({_millions(params[a]['network'])})" for a in arms) + " |",
               "|---|---|---|" + "---|" * len(arms)]
        for name in names:
            tasks = GROUPS.get(name, (name,))
            deg = group_mean(degraded, tasks, 0 if metric == "psnr" else 1)
            cells = [_ms(summary["table"][a][name][metric], digits) for a in arms]
            md.append(f"| {name if name not in GROUPS else '**average**'} | {split[name]} | {deg:.{digits}f} | "
                      + " | ".join(cells) + " |")
        md.append("")
    for k, comparison in enumerate(summary["comparisons"].values()):
        method, baseline = comparison["method"], comparison["baseline"]
        md += [f"### {ARMS[method].label} − {ARMS[baseline].label}, PSNR (dB)", ""]
        if k == 0:
            md += ["Image level: the differences of every (seed, image) pair; seed level: one difference per seed "
                   "(the task's, or the group's, mean). 95% t intervals; p from the paired t-test and the Wilcoxon "
                   "signed-rank test.", ""]
        md += [capacity_note(method, baseline, params), "",
               "| task | image level: mean [95% CI] | p (t) | p (Wilcoxon) | pairs | seed level: mean [95% CI] "
               "| p (t) | seeds | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for name in names:
            c = comparison["tasks"][name]
            i, s = c["images"], c["seeds"]
            md.append(f"| {name if name not in GROUPS else f'**{name}**'} | {_ci(i)} | {_p(i['p_t'])} | "
                      f"{_p(i['p_wilcoxon'])} | {i['n']} | {_ci(s)} | {_p(s['p_t'])} | {s['n']} | {c['verdict']} |")
        md.append("")
    if summary["ablations"]:
        md += ["### Ablations: arm − full BaryIR, PSNR (dB; negative: the term helps)", "",
               "| arm | split | image level: mean [95% CI] | p (t) | seed level: mean [95% CI] | p (t) | verdict |",
               "|---|---|---|---|---|---|---|"]
        for arm, groups in summary["ablations"].items():
            for g, c in groups.items():
                md.append(f"| {ARMS[arm].label} | {g} | {_ci(c['images'])} | {_p(c['images']['p_t'])} | "
                          f"{_ci(c['seeds'])} | {_p(c['seeds']['p_t'])} | {c['verdict']} |")
        md.append("")
    if probe:
        md += ["### Linear probe of degradation type (accuracy %, mean ± std over seeds)", "",
               f"Held-out photos: {n_probe['test_photos']} test photos, leave one out; probe training data: "
               f"{n_probe['train_crops']} training crops plus the other test photos. Classes: ID = "
               f"{', '.join(ID_VIEWS)} (chance {100 / len(ID_VIEWS):.0f}%); all = ID + {', '.join(OOD_VIEWS)} "
               f"(chance {100 / len(PROBE_SETS['all']):.1f}%). cos: mean cosine of the flattened WB and residual "
               f"latents of the held-out views.", "",
               "| arm | WB (ID) | residual (ID) | source z (ID) | WB (all) | residual (all) | source z (all) "
               "| cos(WB, residual) | mean abs cos |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, per in probe.items():
            cells = [_mean_sd(per[f"{c}/{s}"], 1, 100) for c in PROBE_SETS for s in SPACES]
            md.append(f"| {ARMS[arm].label} | " + " | ".join(cells)
                      + f" | {_mean_sd(per['cos'], 3)} | {_mean_sd(per['abs_cos'], 3)} |")
        md += ["", f"Chance: {100 / len(ID_VIEWS):.0f}% (ID), {100 / len(PROBE_SETS['all']):.1f}% (all).", ""]
    return "\n".join(md)


def figures(summary: dict, probe: dict, degraded: dict, arms: Sequence[str], seeds: Sequence[int],
            figs_dir: Path, params: dict[str, dict[str, int]] | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = COLOURS

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [len(ID_TASKS), len(OOD_TASKS)]})
    width = 0.8 / len(arms)
    for ax, (g, tasks) in zip(axes, GROUPS.items()):
        x = np.arange(len(tasks))
        for k, arm in enumerate(arms):
            rows = [summary["table"][arm][t]["psnr"] for t in tasks]
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, [r[0] for r in rows], width,
                   yerr=[r[1] or 0 for r in rows], capsize=2, color=colours[arm], label=ARMS[arm].label)
        inputs = [group_mean(degraded, (t,), 0) for t in tasks]
        ax.hlines(inputs, x - 0.45, x + 0.45, colors="k", lw=2, label="degraded input")
        lo = min(inputs + [summary["table"][a][t]["psnr"][0] for a in arms for t in tasks])
        ax.set_ylim(max(0.0, lo - 3), None)
        ax.set_xticks(x, tasks)
        ax.set_title(f"{'in' if g == 'ID' else 'out of'} distribution")
        ax.set_ylabel("PSNR (dB)")
    handles, names = axes[0].get_legend_handles_labels()
    ncol = min(len(names), 5)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"PSNR by arm, mean ± std over {len(seeds)} seed(s)")
    fig.tight_layout(rect=(0, 0.02 + 0.045 * math.ceil(len(names) / ncol), 1, 1))
    paths.append(figs_dir / "psnr_by_arm.png")
    save_figure(fig, paths[-1], dpi=110)
    plt.close(fig)

    if summary["comparisons"]:
        names = list(ID_TASKS + OOD_TASKS) + list(GROUPS)
        comparisons = list(summary["comparisons"].values())
        fig, axs = plt.subplots(len(comparisons), 1, figsize=(10, 0.6 + 3.2 * len(comparisons)), squeeze=False)
        for ax, comparison in zip(axs[:, 0], comparisons):
            method, baseline = comparison["method"], comparison["baseline"]
            for k, name in enumerate(names):
                c = comparison["tasks"][name]
                i = c["images"]
                err = None if i["ci95"] is None else [[i["mean"] - i["ci95"][0]], [i["ci95"][1] - i["mean"]]]
                ax.errorbar(k, i["mean"], yerr=err, fmt="o", color=colours[method], capsize=3,
                            label="(seed, image) pairs, 95% CI" if k == 0 else None)
                ax.plot([k + 0.15] * len(seeds), c["seeds"]["values"], "x", color="k",
                        label="per-seed difference" if k == 0 else None)
            ax.axhline(0, color="grey", lw=0.8)
            ax.axvline(len(ID_TASKS) - 0.5, color="grey", ls=":")
            ax.axvline(len(ID_TASKS + OOD_TASKS) - 0.5, color="grey", ls=":")
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set_ylabel("PSNR difference (dB)")
            counts = ""
            if params is not None:
                counts = (f"; {_millions(params[method]['network'])} vs "
                          f"{_millions(params[baseline]['network'])} parameters")
            ax.set_title(f"{ARMS[method].label} − {ARMS[baseline].label} (positive: {ARMS[method].label} "
                         f"better{counts})", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(figs_dir / "baryir_minus_baseline.png")  # the name of the figure when it had one comparison
        save_figure(fig, paths[-1], dpi=110)
        plt.close(fig)

    if probe:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        space_colours = {"wb": "tab:blue", "residual": "tab:orange", "source": "tab:grey"}
        for ax, (set_name, classes) in zip(axes, PROBE_SETS.items()):
            x = np.arange(len(probe))
            for k, space in enumerate(SPACES):
                vals = [np.asarray(per[f"{set_name}/{space}"]) * 100 for per in probe.values()]
                ax.bar(x + (k - 1) * 0.27, [v.mean() for v in vals], 0.27,
                       yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals], capsize=2,
                       color=space_colours[space], label={"wb": "WB", "source": "source z"}.get(space, space))
            ax.axhline(100 / len(classes), color="k", ls="--", lw=1, label="chance")
            ax.set_xticks(x, [textwrap.fill(ARMS[a].label, 16) for a in probe], fontsize=7)
            ax.set_title(f"{len(classes)} classes ({set_name})")
            ax.set_ylim(0, 105)
        axes[0].set_ylabel("probe accuracy on held-out photos (%)")
        axes[1].legend(fontsize=8)
        fig.suptitle("Linear probe of degradation type")
        fig.tight_layout()
        paths.append(figs_dir / "probe_accuracy.png")
        save_figure(fig, paths[-1], dpi=110)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- the study

def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                          text=True, timeout=10).stdout.strip():
            commit += " (with uncommitted changes)"
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def check_out_dir(out: Path, config: dict) -> None:
    """``--out`` keeps one setting: a different one would mix runs. Seeds and arms may be added."""
    path = out / "study_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if diff:
            listing = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise StudyError(f"{out} holds runs of another setting ({listing}). Pass another --out (and "
                             f"--figs-dir), or delete {out} to start over.")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(config, indent=1) + "\n")


def estimated_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Planned seconds of one run of each arm (training and evaluation) on this project's CPU."""
    scale = args.batch_size * args.patch_size ** 2 / (4 * 64 ** 2)
    return {a: args.iters * SEC_PER_ITER[ARMS[a].cost_key] * scale + EVAL_SECONDS[ARMS[a].cost_key] * args.scale ** 2
            for a in args.arms}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plan(args: argparse.Namespace, repeats: dict[str, int]) -> str:
    per_run = estimated_seconds(args)
    total = sum(per_run.values()) * len(args.seeds)
    guessed = {a for a in per_run if ARMS[a].cost_key in UNMEASURED}
    per_run = {(f"{a}*" if a in guessed else a): s for a, s in per_run.items()}
    decay = ", the last at lr/10" if args.epochs > 1 else ""
    quick = (f" (QUICK: {len(args.seeds)} seed(s) x {args.iters} iterations, not the study's {len(FULL['seeds'])} x "
             f"{FULL['iters']}; it checks the pipeline, not the claims)") if args.quick else ""
    lines = [f"BaryIR study{quick}",
             f"  arms:   {', '.join(args.arms)}",
             f"  seeds:  {' '.join(map(str, args.seeds))}   ({len(args.arms) * len(args.seeds)} trainings)",
             f"  per run: {args.iters} iterations ({args.epochs} epoch(s) of {args.iters // args.epochs}{decay}), "
             f"batch {args.batch_size}, patch {args.patch_size}, tiny preset, lr {args.lr:g}",
             f"  data:   {args.root} (scale {args.scale:g}), --repeat "
             + " ".join(f"{k}={v}" for k, v in repeats.items()),
             f"  estimate: up to {_minutes(total)} on this project's 2-core CPU when another process holds a core, "
             f"about {_minutes(FREE_CORES_FACTOR * total)} with both free "
             f"({', '.join(f'{a} {_minutes(s)}' for a, s in per_run.items())} per seed, on the safe side"
             + ("; * guessed from the network's size, not measured yet" if guessed else "")
             + "); finished runs are skipped",
             f"  out:    {args.out}   figures: {args.figs_dir}"]
    return "\n".join(lines)


def check_network(arm_name: str, network: dict | None, source: Path) -> None:
    """Refuse a run (a checkpoint, or a cached evaluation) of another network than the arm's today, e.g.
    after MATCHED_DIM changed: its results would be reported under the arm's name. Caches written before
    the check existed carry no ``network`` and pass."""
    if network is None:
        return
    arm = ARMS[arm_name]
    want, have = arm_model_config(arm), network.get("model_config") or {}
    differ = [f"{k} {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
    if network.get("backbone") != arm.backbone:
        differ.insert(0, f"backbone {network.get('backbone')!r} there, {arm.backbone!r} now")
    if differ:
        raise StudyError(f"{source} holds a run of another network than arm {arm_name} ({'; '.join(differ)}). "
                         f"Delete {source.parent if source.name == 'eval.json' else source.parents[1]} to "
                         f"retrain it, or pass another --out")


def run_one(args, arm_name: str, seed: int, root: Path, repeats: dict, views: list[ProbeView],
            device: torch.device) -> tuple[dict, dict | None, float]:
    """Train, evaluate and embed one (arm, seed) run, or read its caches; returns (eval, embeddings, seconds)."""
    arm = ARMS[arm_name]
    run_dir = Path(args.out) / "runs" / arm_name / f"seed{seed}"
    eval_path, emb_path = run_dir / "eval.json", run_dir / "embeddings.npz"
    want_emb = arm.wb
    if eval_path.is_file() and (emb_path.is_file() or not want_emb):
        cached = json.loads(eval_path.read_text())
        check_network(arm_name, cached.get("network"), eval_path)
        emb = None
        if want_emb:
            with np.load(emb_path) as z:
                emb = dict(z)
        return cached["tasks"], emb, 0.0
    tic = time.time()
    train_dir = run_dir / "train"
    ckpt = finished_checkpoint(train_dir, args.epochs) or train_run(
        trainer_argv(args, arm, seed, root, train_dir, repeats), train_dir, args.epochs, args.progress)
    t_train = time.time() - tic
    model, info = load_model(ckpt)
    network = {"backbone": info["backbone"], "model_config": info["model_config"]}
    check_network(arm_name, network, ckpt)
    model.to(device).eval()
    tasks = evaluate_model(model, root, device)
    emb = embed(model, views, device) if want_emb else None
    if emb is not None:
        atomic_write(emb_path, lambda fh: np.savez(fh, **emb))
    write_text(eval_path, json.dumps({"checkpoint": str(ckpt), "network": network, "train_seconds": t_train,
                                      "eval_seconds": time.time() - tic - t_train, "tasks": tasks}, indent=1) + "\n")
    return tasks, emb, time.time() - tic


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) the study; returns everything written to ``<out>/study.json``."""
    args = resolve_settings(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    out, figs_dir, root = Path(args.out), Path(args.figs_dir), Path(args.root)
    manifest = build_demo_data(root, seed=0, scale=args.scale, max_photos=args.max_photos, progress=args.progress)
    iters_per_epoch = args.iters // args.epochs
    repeats = balanced_repeats(manifest, iters_per_epoch * args.batch_size)
    config = {"iters": args.iters, "epochs": args.epochs, "batch_size": args.batch_size,
              "patch_size": args.patch_size, "lr": args.lr, "repeats": repeats, "preset": "tiny",
              "data_hash": manifest["content_hash"]}
    check_out_dir(out, config)
    print(plan(args, repeats), flush=True)
    device = pick_device(args.device)
    views = probe_views(root, manifest)

    evals, embeddings, done = {}, {}, 0
    runs = [(arm, s) for s in args.seeds for arm in args.arms]  # seed-major: an early stop has every arm
    planned, measured = estimated_seconds(args), {}
    try:
        for k, (arm, seed) in enumerate(runs, 1):
            print(f"[{k}/{len(runs)}] {arm} seed {seed}: ", end="", flush=True)
            evals[(arm, seed)], emb, seconds = run_one(args, arm, seed, root, repeats, views, device)
            if emb is not None:
                embeddings[(arm, seed)] = emb
            e = evals[(arm, seed)]
            if seconds > 0:
                done += 1
                measured.setdefault(arm, []).append(seconds)
            left = sum(np.mean(measured[a]) if a in measured else planned[a] for a, s in runs[k:]
                       if not (out / "runs" / a / f"seed{s}" / "eval.json").is_file())
            print(("cached" if seconds == 0 else f"{seconds:.0f} s") + f"; PSNR ID {group_mean(e, ID_TASKS, 0):.2f}, "
                  f"OOD {group_mean(e, OOD_TASKS, 0):.2f} dB" + (f"; about {_minutes(left)} left" if left else ""),
                  flush=True)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # off the line the run's progress was on
        raise StudyInterrupted(f"study interrupted; the finished runs and the last checkpoint are kept in {out}/runs. "
                               f"Run the same command again to continue.") from None
    degraded_path = out / "degraded_input.json"
    if not degraded_path.is_file():
        write_text(degraded_path, json.dumps(evaluate_model(InputAsOutput(), root, device), indent=1) + "\n")
    degraded = json.loads(degraded_path.read_text())

    summary = summarise(evals, args.arms, args.seeds)
    labels, photos = [v.label for v in views], [v.photo for v in views]
    test = np.array([v.test for v in views])
    probe = probe_summary(embeddings, labels, photos, test, args.arms, args.seeds) if embeddings else {}
    n_probe = {"test_photos": len({v.photo for v in views if v.test}),
               "train_crops": sum(1 for v in views if not v.test and v.label == "noise 15")}
    machine = machine_info(args)
    recorded = [json.loads((out / "runs" / a / f"seed{s}" / "eval.json").read_text()) for a, s in runs]
    compute = sum(r["train_seconds"] + r["eval_seconds"] for r in recorded)
    params = parameter_counts(list(dict.fromkeys([*args.arms, METHOD])), args.patch_size)
    md = tables(summary, probe, degraded, args.arms, args.seeds, n_probe, params)
    fig_paths = figures(summary, probe, degraded, args.arms, args.seeds, figs_dir, params)
    header = [f"# BaryIR study{' (QUICK setting: not the study)' if args.quick else ''}", "",
              f"- command: `{machine['command']}`",
              f"- machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']} "
              f"({machine['torch_threads']} threads), {machine['platform']}",
              f"- code: {machine['commit']}; {machine['date']}; wall time {(time.time() - t0) / 60:.1f} min "
              f"({done} run(s) trained or evaluated in this invocation); the {len(runs)} runs took "
              f"{compute / 60:.1f} min (training and evaluation, as recorded by the invocations that ran them)",
              f"- setting: {len(args.seeds)} seed(s) ({' '.join(map(str, args.seeds))}), {args.iters} iterations "
              f"per run, batch {args.batch_size}, patch {args.patch_size}, tiny preset, lr {args.lr:g}, "
              f"--repeat {' '.join(f'{k}={v}' for k, v in repeats.items())}",
              f"- figures: {', '.join(str(p) for p in fig_paths)}", ""]
    text = "\n".join(header) + "\n" + md
    write_text(out / "study.md", text + "\n")
    result = {"settings": {**config, "seeds": args.seeds, "arms": args.arms, "quick": args.quick},
              "machine": machine, "parameters": params,
              "networks": {a: {"backbone": ARMS[a].backbone, "model_config": arm_model_config(ARMS[a])}
                           for a in args.arms},
              "summary": summary, "probe": probe, "probe_counts": n_probe,
              "degraded": {t: {"psnr": v["psnr"], "ssim": v["ssim"]} for t, v in degraded.items()},
              "figures": [str(p) for p in fig_paths], "seconds": time.time() - t0, "run_seconds": compute}
    write_text(out / "study.json", json.dumps(result, indent=1, default=str) + "\n")
    print("\n" + text)
    print(f"tables: {out / 'study.md'}; everything: {out / 'study.json'}; total {(time.time() - t0) / 60:.1f} min")
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """``python bench/study.py``: a failure the user can fix (a flag, a folder, a failed run, Ctrl-C outside a
    run) is one ``error:`` line (:func:`utils.errors.run_main`), its traceback only with ``--debug``."""
    args = get_args_parser().parse_args(argv)
    return run_main(main, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(cli())
