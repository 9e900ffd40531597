"""The two embedding figures of a set of degraded views, and what they measured: one computation for the demo
(:func:`utils.demo.run.embedding_figures`, on its test files) and ``python -m utils.analysis`` (on a user's photos).

Each photo's views go through the network as one batch; the takeaway maps compare the views of one photo with
its first view, the PCA projection pools every view of every photo, and the numbers are those the figures' titles
give (:mod:`utils.analysis.embeddings`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from utils.analysis.embeddings import (
    difference_map,
    latents,
    mean_cosine,
    nearest_neighbour_accuracy,
    nearest_neighbour_chance,
    pooled,
)
from utils.analysis.figures import embedding_projection, takeaway_maps
from utils.data.image_io import to_float
from utils.eval.protocol import crop_to_multiple


def view_batch(img: np.ndarray) -> torch.Tensor:
    """One view as the network's input: cropped to multiples of 8 (bottom rows, right columns), ``(1, 3, H, W)``
    float in [0, 1]."""
    return torch.from_numpy(to_float(crop_to_multiple(img))).permute(2, 0, 1)[None].contiguous()


def photo_latents(model: torch.nn.Module, views: Mapping[str, np.ndarray],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """WB and residual latents of every view of one photo (views of one size), one batch, on the CPU:
    ``((V, C, h, w), (V, C, h, w))`` in the order of ``views``."""
    x = torch.cat([view_batch(v) for v in views.values()]).to(device)
    b, r = latents(model, x)
    return b.cpu(), r.cpu()


def embedding_report(model: torch.nn.Module, views: Mapping[str, Mapping[str, np.ndarray]],
                     takeaway_path: str | os.PathLike, projection_path: str | os.PathLike, device: torch.device,
                     takeaway_photo: str | None = None, progress: bool = False) -> dict:
    """Draw the takeaway maps of ``takeaway_photo`` (default the first photo) and the PCA projection of every
    view; returns the figures' paths and what they measured.

    ``views``: ``{photo: {degradation: uint8 (H, W, 3)}}``, the views of one photo of one size, the first the
    reference the takeaway maps measure from. Returned: ``takeaway``, ``projection`` (paths), ``photo``,
    ``reference`` (its first view), ``mean_wb_difference`` / ``mean_residual_difference`` (mean relative
    distance from the reference, over the maps), ``mean_cosine_wb_residual`` (per photo, then over the photos),
    and the leave-one-out 1-NN accuracy of the degradation and of the photo from the pooled WB and residual
    latents (``wb_degradation_1nn``, ...) with their chance levels. ``progress``: a bar over the photos.
    """
    chosen = next(iter(views)) if takeaway_photo is None else takeaway_photo
    if chosen not in views:
        raise ValueError(f"takeaway_photo {chosen!r} is none of the photos {list(views)}")
    wb_feats, res_feats, labels, photos, cosines = [], [], [], [], []
    first = None
    for photo, found in tqdm(views.items(), desc="embeddings", unit="photo", disable=not progress):
        b, r = photo_latents(model, found, device)
        wb_feats.append(pooled(b))
        res_feats.append(pooled(r))
        labels += list(found)
        photos += [photo] * len(found)
        cosines.append(mean_cosine(b, r).item())
        if photo == chosen:
            first = (photo, found, b, r)
    photo, found, b, r = first
    names = list(found)
    size = view_batch(found[names[0]]).shape[-2:]
    # distance of every other view from the first, each map drawn under its view;
    # relative distances: the WB latent is LayerNorm-ed and much larger than the residual
    wb_maps = [difference_map(b[0], b[i], size, relative=True).numpy() for i in range(1, len(names))]
    res_maps = [difference_map(r[0], r[i], size, relative=True).numpy() for i in range(1, len(names))]
    imgs = [to_float(found[n][:size[0], :size[1]]) for n in names]
    t_path = takeaway_maps(imgs, names, wb_maps, res_maps, Path(takeaway_path))
    wb, res = torch.cat(wb_feats), torch.cat(res_feats)
    p_path = embedding_projection(wb, res, labels, Path(projection_path), photos=photos)
    separability = {f"{space}_{key}_1nn": nearest_neighbour_accuracy(feats, keys)
                    for space, feats in (("wb", wb), ("residual", res))
                    for key, keys in (("degradation", labels), ("photo", photos))}
    separability.update(degradation_1nn_chance=nearest_neighbour_chance(labels),
                        photo_1nn_chance=nearest_neighbour_chance(photos))
    return {"takeaway": str(t_path), "projection": str(p_path), "photo": photo, "reference": names[0],
            "mean_wb_difference": float(np.mean([m.mean() for m in wb_maps])),
            "mean_residual_difference": float(np.mean([m.mean() for m in res_maps])),
            "mean_cosine_wb_residual": float(np.mean(cosines)), **separability}
