"""The network a checkpoint needs, built and loaded: :func:`load_model`, what the tester, the app, the analysis
command, the demo and the study evaluate (the trainers build theirs from their flags and load into it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from net.presets import BACKBONES, model_config
from utils.checkpoints.folder import resolve_checkpoint
from utils.checkpoints.guard import CheckpointError
from utils.checkpoints.reading import read_checkpoint
from utils.checkpoints.weights import load_network


def load_model(path: str | Path, backbone: str | None = None, preset: str | None = None,
               **overrides) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint needs and load it; returns ``(model, info)``.

    ``path`` may be a checkpoint file, a run's ``latest`` pointer or a run folder
    (:func:`~utils.checkpoints.resolve_checkpoint`; ``info["note"]`` says what it became). A project
    checkpoint names its ``backbone`` and ``model_config``: they are used; ``backbone`` and
    ``overrides`` replace them only when given, and ``preset`` is ignored (``info["note"]`` says so).
    A plain state dict or a reference checkpoint (``{'BaryIR': module}``) carries no configuration:
    ``backbone`` (default BaryNet) and ``preset`` (default paper) plus ``overrides`` describe it.
    """
    path, note = resolve_checkpoint(path)
    notes = [note] if note else []
    obj = read_checkpoint(path)
    stored_cfg = obj.get("model_config") if isinstance(obj, Mapping) else None
    stored_backbone = obj.get("backbone") if isinstance(obj, Mapping) else None
    asked_backbone = backbone
    backbone = backbone or (stored_backbone if isinstance(stored_backbone, str) else None) or "BaryNet"
    if backbone not in BACKBONES:
        raise CheckpointError(f"{path} names backbone {backbone!r}, which is none of {sorted(BACKBONES)}; pass "
                              f"--backbone to say which network the weights are for")
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(stored_cfg, Mapping):
        flags = " ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in given.items())
        where = f"{path}'s model_config" + (f" with {flags}" if flags else "")
        if isinstance(stored_backbone, str):  # flags that contradict the file: said first, as that, whatever the
            _check_flags_fit(path, stored_backbone, stored_cfg, asked_backbone, given)  # configuration then makes
        cfg = model_config("paper", source=where, backbone=backbone, **{**dict(stored_cfg), **given})
        source = "checkpoint"
        if preset is not None:
            notes.append(f"--preset {preset} ignored: {path.name} carries its own configuration")
    else:
        cfg = model_config(preset or "paper", backbone=backbone, **given)
        source = f"preset {preset or 'paper'}"
    model = BACKBONES[backbone](**cfg)
    load_network(model, obj, str(path))
    info = {"model": str(path), "backbone": backbone, "model_config": cfg, "config_from": source}
    domains = obj.get("domains") if isinstance(obj, Mapping) else None  # the families a trainer checkpoint trained
    if isinstance(domains, list) and domains and all(isinstance(d, str) for d in domains):
        info["domains"] = list(domains)  # (--compare-paper says when they are not the setting's)
    if notes:
        info["note"] = "; ".join(notes)
    return model, info


def _shown(v: Any) -> str:
    """A model flag's value as it is typed: ``[2, 3, 3, 4]`` as ``2 3 3 4``."""
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _check_flags_fit(path: Path, stored_backbone: str, stored_cfg: Mapping[str, Any], backbone: str | None,
                     given: Mapping[str, Any]) -> None:
    """A checkpoint that names its network and configuration is built as it says: a --backbone or model flag
    (--dim, --num-blocks, ...; ``given``: those passed) that says otherwise cannot load it, and the fix is to drop
    the flag, not to pick another (the message of the weights' mismatch). Flags that agree with the file are fine."""
    def same(a: Any, b: Any) -> bool:
        return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)
    differ = [k for k, v in given.items() if k in stored_cfg and not same(v, stored_cfg[k])]
    wrong = [f"--backbone {backbone}"] if backbone is not None and backbone != stored_backbone else []
    wrong += [f"--{k.replace('_', '-')} {_shown(given[k])}" for k in differ]
    if wrong:
        has = ", ".join([stored_backbone] + [f"{k.replace('_', ' ')} {_shown(stored_cfg[k])}" for k in differ])
        raise CheckpointError(f"{' '.join(wrong)}: {path} names its own network and configuration ({has}), and is "
                              f"built from them: drop {' '.join(w.split()[0] for w in wrong)}")
