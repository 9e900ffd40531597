"""The two embedding figures of a set of degraded views, and what they measured: one computation for the demo
(:func:`utils.demo.run.embedding_figures`, on its test files) and ``python -m utils.analysis`` (on a user's photos).

Each photo's views go through the network as one batch; the takeaway maps compare the views of one photo with
its first view, the PCA projection pools every view of every photo, and the numbers are those the figures' titles
give (:mod:`utils.analysis.embeddings`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
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
from utils.analysis.figures import embedding_projection_figure, png_of, takeaway_maps_figure
from utils.data.image_io import to_float
from utils.eval.protocol import crop_to_multiple
from utils.files import replace_file


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


@dataclass
class Measured:
    """What the network made of every view of every photo (:func:`measured_views`): ``wb``, ``res`` the pooled WB
    and residual latents ``(N, C)``, a row a view; ``labels`` and ``photos`` each row's degradation and photo;
    ``cosines`` the mean cosine(WB, residual) of each photo's views; ``photo`` the takeaway maps' photo, ``views``
    its views and ``b``, ``r`` their latents ``(V, C, h, w)``."""
    wb: torch.Tensor
    res: torch.Tensor
    labels: list[str]
    photos: list[str]
    cosines: list[float]
    photo: str
    views: Mapping[str, np.ndarray]
    b: torch.Tensor
    r: torch.Tensor


def measured_views(model: torch.nn.Module, views: Mapping[str, Mapping[str, np.ndarray]], device: torch.device,
                   takeaway_photo: str | None = None, progress: bool = False) -> Measured:
    """Every view of ``views`` (``{photo: {degradation: uint8 (H, W, 3)}}``, one size a photo) through the network,
    a batch a photo: the slow part of :func:`embedding_report`, which writes nothing. ``takeaway_photo``: the photo
    whose latents are kept whole (default the first); ``progress``: a bar over the photos."""
    chosen = next(iter(views)) if takeaway_photo is None else takeaway_photo
    if chosen not in views:
        raise ValueError(f"takeaway_photo {chosen!r} is none of the photos {list(views)}")
    wb_feats, res_feats, labels, photos, cosines = [], [], [], [], []
    kept = None
    for photo, found in tqdm(views.items(), desc="embeddings", unit="photo", disable=not progress):
        b, r = photo_latents(model, found, device)
        wb_feats.append(pooled(b))
        res_feats.append(pooled(r))
        labels += list(found)
        photos += [photo] * len(found)
        cosines.append(mean_cosine(b, r).item())
        if photo == chosen:
            kept = (b, r)
    return Measured(torch.cat(wb_feats), torch.cat(res_feats), labels, photos, cosines, chosen, views[chosen], *kept)


def rendered_report(measured: Measured, source: str | None = None) -> tuple[tuple[bytes, bytes], dict]:
    """The takeaway maps of ``measured.photo`` and the PCA projection of every view, each rendered as a PNG in
    memory (both before either is written: a stop leaves no new figure beside an earlier run's other), and what
    they measured. ``source``: a line under both titles saying which network and which photos.

    Returns ``((takeaway PNG, projection PNG), numbers)``: ``photo``, ``reference`` (its first view),
    ``mean_wb_difference`` / ``mean_residual_difference`` (mean relative distance from the reference, over the
    maps), ``mean_cosine_wb_residual`` (per photo, then over the photos), and the leave-one-out 1-NN accuracy of
    the degradation and of the photo from the pooled WB and residual latents (``wb_degradation_1nn``, ...) with
    their chance levels."""
    found, b, r = measured.views, measured.b, measured.r
    names = list(found)
    size = view_batch(found[names[0]]).shape[-2:]
    # distance of every other view from the first, each map drawn under its view;
    # relative distances: the WB latent is LayerNorm-ed and much larger than the residual
    wb_maps = [difference_map(b[0], b[i], size, relative=True).numpy() for i in range(1, len(names))]
    res_maps = [difference_map(r[0], r[i], size, relative=True).numpy() for i in range(1, len(names))]
    imgs = [to_float(found[n][:size[0], :size[1]]) for n in names]
    takeaway = png_of(takeaway_maps_figure(imgs, names, wb_maps, res_maps, photo=measured.photo, source=source))
    wb, res, labels, photos = measured.wb, measured.res, measured.labels, measured.photos
    projection = png_of(embedding_projection_figure(wb, res, labels, photos=photos, source=source))
    separability = {f"{space}_{key}_1nn": nearest_neighbour_accuracy(feats, keys)
                    for space, feats in (("wb", wb), ("residual", res))
                    for key, keys in (("degradation", labels), ("photo", photos))}
    separability.update(degradation_1nn_chance=nearest_neighbour_chance(labels),
                        photo_1nn_chance=nearest_neighbour_chance(photos))
    return (takeaway, projection), {
        "photo": measured.photo, "reference": names[0],
        "mean_wb_difference": float(np.mean([m.mean() for m in wb_maps])),
        "mean_residual_difference": float(np.mean([m.mean() for m in res_maps])),
        "mean_cosine_wb_residual": float(np.mean(measured.cosines)), **separability}


def embedding_report(model: torch.nn.Module, views: Mapping[str, Mapping[str, np.ndarray]],
                     takeaway_path: str | os.PathLike, projection_path: str | os.PathLike, device: torch.device,
                     takeaway_photo: str | None = None, progress: bool = False, source: str | None = None) -> dict:
    """Draw the takeaway maps of ``takeaway_photo`` (default the first photo) and the PCA projection of every
    view (:func:`measured_views`, then :func:`rendered_report`) and write them, each whole, to the two paths;
    returns their paths (``takeaway``, ``projection``) and what they measured."""
    (takeaway, projection), numbers = rendered_report(
        measured_views(model, views, device, takeaway_photo, progress), source)
    for path, png in ((takeaway_path, takeaway), (projection_path, projection)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, png)
    return {"takeaway": str(Path(takeaway_path)), "projection": str(Path(projection_path)), **numbers}
