"""The optimizers of the map and the potentials, and the learning-rate schedule (the reference's step decay).
"""
from __future__ import annotations

import torch

from utils.train.options import ConfigError


def lr_at(base_lr: float, epoch: int, step: int) -> float:
    """Learning rate of both optimizers at 1-based ``epoch``: ``base * 0.1**((epoch-1)//step) / 2``."""
    return base_lr * 0.1 ** ((epoch - 1) // step) / 2


def build_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    raise ConfigError(f"--optimizer must be RMSprop or Adam, got {name!r}")


def set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr
