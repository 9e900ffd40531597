"""Named model configurations and one constructor for every backbone."""
from __future__ import annotations

import copy

import torch.nn as nn

from .barynet import BaryNet, Restormer

# 'paper' is the published configuration; 'tiny' the same graph, narrow and shallow,
# for CPU runs, the demo and the tests.
PRESETS: dict[str, dict] = {
    "paper": dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
                  ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
    "tiny": dict(dim=16, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1, heads=[1, 2, 4, 8],
                 ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
}
BACKBONES = {"BaryNet": BaryNet, "Restormer": Restormer}


def model_config(preset: str = "paper", **overrides) -> dict:
    """The configuration of ``preset`` with ``overrides`` applied (a fresh dict)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def build_model(backbone: str = "BaryNet", preset: str = "paper", **overrides) -> nn.Module:
    """``BaryNet`` or ``Restormer`` with the preset's configuration (``overrides`` win)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[backbone](**model_config(preset, **overrides))
