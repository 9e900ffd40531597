"""The linear probe of degradation type on the WB, residual and source (``z = b + r``) embeddings.

Views (:func:`probe_views`): every degradation of every photo, held-out test photos and training
crops; embeddings (:func:`embed`): pooled latents of each view; the probe (:func:`probe_accuracy`):
multinomial logistic regression (:func:`fit_logistic`), leave one test photo out.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.analysis.embeddings import latents, pooled
from utils.data.image_io import read_image, to_float
from utils.data.noise import noisy_version
from utils.demo.degrade import darken, jpeg_degrade, motion_blur
from utils.demo.run import views_of_one_photo
from utils.eval.protocol import crop_to_multiple
from utils.study.arms import ARMS

# Probe classes: the five training degradations, then the three unseen types.
ID_VIEWS = ("noise 15", "noise 25", "noise 50", "rain", "haze")
OOD_VIEWS = ("jpeg q10", "low light", "blur")
PROBE_SETS = {"ID": ID_VIEWS, "all": ID_VIEWS + OOD_VIEWS}
SPACES = ("wb", "residual", "source")


@dataclass
class ProbeView:
    """One image for the probe: which photo, held-out (test photo) or not, degradation label."""
    photo: str
    test: bool
    label: str
    image: np.ndarray


def _center_crop(img: np.ndarray, side: int) -> np.ndarray:
    """``(H, W, C) -> (side, side, C)`` from the centre, contiguous; ``side`` at most H and W."""
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
    flattened latents (what ``utils.analysis.embeddings.mean_cosine`` averages). Views of one size are batched.

    Returns ``wb``, ``residual``, ``source``: ``(N, C)`` float64 for ``N`` views; ``cos``: ``(N,)``."""
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
    held-out photo's views; features standardised on the training fold. Accuracy over all folds.

    ``feats``: ``(N, D)``; ``labels``, ``photos``: ``N`` each; ``test``: ``(N,)`` bool, the test photos' views;
    views whose label is not in ``classes`` are left out."""
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
