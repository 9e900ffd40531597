"""Which of the project's networks a state dict holds, told by its keys and shapes alone: what a refusal to load
it into another network names, with the flags that build the right one.

The sizes the model flags set (``--dim``, ``--num-blocks``, ``--num-refinement-blocks``, ``--heads``) are read off
the tensors; each backbone with each preset and those sizes is then laid out on the ``meta`` device (no memory is
allocated, whatever its size) and its keys and shapes compared with the file's.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from utils.errors import counted, listing

# The four levels whose block counts and head counts are num_blocks[i] and heads[i], in order.
_LEVELS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")


def _blocks(keys: list[str], stage: str) -> int | None:
    """How many blocks ``stage`` has in a state dict with ``keys``: one more than its highest block index."""
    found = [int(m.group(1)) for k in keys if (m := re.match(rf"{stage}\.(\d+)\.", k))]
    return max(found) + 1 if found else None


def sizes_of(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The model-flag sizes a state dict's tensors imply: ``dim`` from ``patch_embed.proj.weight``
    ``(dim, C, 3, 3)``, ``num_blocks``/``heads`` from each level's blocks and their ``attn.temperature``
    ``(heads, 1, 1)``, ``num_refinement_blocks`` from ``refinement``; a size the file does not show is left out."""
    keys = list(sd)
    out: dict[str, Any] = {}
    embed = sd.get("patch_embed.proj.weight")
    if isinstance(embed, torch.Tensor) and embed.dim() == 4:
        out["dim"] = int(embed.shape[0])
    blocks = [_blocks(keys, level) for level in _LEVELS]
    if all(blocks):
        out["num_blocks"] = blocks
    heads = [sd.get(f"{level}.0.attn.temperature") for level in _LEVELS]
    if all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in heads):
        out["heads"] = [int(t.shape[0]) for t in heads]
    refinement = _blocks(keys, "refinement")
    if refinement:
        out["num_refinement_blocks"] = refinement
    return out


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``model`` with its tensor's shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def differences(expected: Mapping[str, tuple[int, ...]], sd: Mapping[str, torch.Tensor]
                ) -> tuple[list[str], list[str], list[str]]:
    """How ``sd`` differs from a network's ``expected`` shapes: the keys missing from it, the keys the network
    has none of, and ``"key: file (..) vs model (..)"`` for each key of another shape; each sorted."""
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
              for k in sorted(expected.keys() & sd.keys()) if tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, shapes


def differences_text(missing: list[str], unexpected: list[str], shapes: list[str], examples: int = 2) -> str:
    """The three lists of :func:`differences` as one clause of counts, with ``examples`` of each."""
    parts = [f"{counted(len(keys), 'key')} {what} (" + listing(keys, limit=examples, sep=sep, lead="") + ")"
             for what, keys, sep in (("missing from the file", missing, ", "),
                                     ("the network has none of", unexpected, ", "),
                                     ("of another shape", shapes, "; ")) if keys]
    return ", ".join(parts)


def identify(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """The ``(backbone, model_config)`` of the project's networks whose keys and shapes are exactly ``sd``'s, or
    None. Candidates are each backbone with each preset and the sizes of :func:`sizes_of`, built on ``meta``."""
    from net.presets import BACKBONES, PRESETS, ModelConfigError, model_config

    sizes = sizes_of(sd)
    if "dim" not in sizes:
        return None  # not a network of this project's family: nothing to build
    tried: list[tuple[str, dict]] = []
    for backbone in BACKBONES:
        for preset in PRESETS:
            try:
                cfg = model_config(preset, source="the file's sizes", backbone=backbone, **sizes)
            except (ModelConfigError, ValueError):
                continue  # sizes no network of this backbone has (heads that do not divide its widths)
            if (backbone, cfg) in tried:
                continue
            tried.append((backbone, cfg))
            with torch.device("meta"):
                expected = shapes_of(BACKBONES[backbone](**cfg))
            if expected.keys() == sd.keys() and not any(differences(expected, sd)):
                return backbone, cfg
    return None
