"""Named model configurations, one check of any configuration, and one constructor for every backbone.

Every configuration goes through :func:`check_model_config` before a network is built from it: the
presets, command-line overrides and the ``model_config`` stored in a checkpoint (which
``utils.checkpoints.load_model`` passes through :func:`model_config`). A configuration from a file
is data, not trusted code: a width of 2048 would build a network of tens of gigabytes, and ``heads=0``
would fail deep inside the constructor with a ``ZeroDivisionError``.
"""
from __future__ import annotations

import copy
import numbers
from typing import Any, Mapping

import torch.nn as nn

from utils.errors import UserError

from .barynet import BaryNet, Restormer
from .barypromptir import BaryPromptIR
from .potentials import Potentials
from .promptir import PromptIR

# 'paper' is the published configuration; 'tiny' the same graph, narrow and shallow,
# for CPU runs, the demo and the tests.
PRESETS: dict[str, dict] = {
    "paper": dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
                  ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
    "tiny": dict(dim=16, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1, heads=[1, 2, 4, 8],
                 ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
}
# PromptIR's prompt settings, added to the preset of the same name for every backbone with prompts
# ('paper': the reference's PromptIR(decoder=True); 'tiny': prompts narrowed with the network, about
# 2.0 M parameters in all for PromptIR).
PROMPT_PRESETS: dict[str, dict] = {
    "paper": dict(prompt_dims=[64, 128, 320], prompt_len=5, prompt_sizes=[64, 32, 16]),
    "tiny": dict(prompt_dims=[16, 32, 64], prompt_len=5, prompt_sizes=[64, 32, 16]),
}
BACKBONES = {"BaryNet": BaryNet, "Restormer": Restormer, "PromptIR": PromptIR, "BaryPromptIR": BaryPromptIR}
# The backbones that return a BaryOutput and train with the full BaryIR objective and its potentials;
# the others return the restored image and train on the L1 term alone.
WB_BACKBONES = frozenset({"BaryNet", "BaryPromptIR"})
# The backbones whose configuration carries PROMPT_KEYS (from PROMPT_PRESETS).
PROMPT_BACKBONES = frozenset({"PromptIR", "BaryPromptIR"})

# The constructor arguments a configuration may name (BaryNet and Restormer take the same ones;
# the PROMPT_BACKBONES take PROMPT_KEYS too).
CONFIG_KEYS = frozenset({"inp_channels", "out_channels", "dim", "num_blocks", "num_refinement_blocks", "heads",
                         "ffn_expansion_factor", "bias", "LayerNorm_type"})
PROMPT_KEYS = frozenset({"prompt_dims", "prompt_len", "prompt_sizes"})
# Bounds, generous around the paper's configuration (dim 48, at most 8 blocks a stage, 53.5 M parameters).
MAX_DIM = 1024
MAX_BLOCKS = 64
MAX_CHANNELS = 64
MAX_FFN_EXPANSION = 16.0
MAX_PROMPT_LEN = 64
MAX_PROMPT_SIZE = 256
# A bound on parameter_lower_bound (the paper's is 21.7 M of its 53.5 M): 400 M there means about 1 G
# parameters (4 GB of float32 weights) in all, ~19x the paper's network; beyond it a configuration is
# refused before anything is allocated.
MAX_BLOCK_PARAMETERS = 400_000_000


class ModelConfigError(UserError, ValueError):
    """A model configuration (a preset, flags, or a checkpoint's ``model_config``) cannot describe a network."""


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _head_widths(dim: int, backbone: str, prompt_dims: list[int]) -> list[list[int]]:
    """The channel widths each ``heads[i]`` splits. The noise blocks use ``heads[2]``: BaryNet's at 16, 4
    and 2 times ``dim``; PromptIR's at 8, 4 and 2 times ``dim`` plus each level's prompt; BaryPromptIR's
    at BaryNet's widths plus the prompts. ``prompt_dims`` is ignored by the backbones without prompts."""
    p1, p2, p3 = prompt_dims if backbone in PROMPT_BACKBONES else (0, 0, 0)
    latent = 8 * dim if backbone == "PromptIR" else 16 * dim  # the latent, or BaryNet's cat[b, r]
    noise = [2 * dim + p1, 4 * dim + p2, latent + p3]
    return [[dim, 2 * dim], [2 * dim], sorted({4 * dim, *noise}), [8 * dim]]


def parameter_lower_bound(cfg: Mapping[str, Any]) -> int:
    """Parameters the transformer blocks of a (checked) configuration need at least, without building it.

    Counts only the stages both backbones share (encoder, latent, the three decoder levels and the
    refinement) and only each block's dominant weights: the attention's ``qkv`` and output projections
    (``4 C^2``) and the feed-forward's projections (``3 h C``, ``h = int(C * ffn_expansion_factor)``);
    with the prompt keys, also the learned prompt components (``prompt_len * P * S^2`` a level).
    """
    d, nb, f = cfg["dim"], cfg["num_blocks"], cfg["ffn_expansion_factor"]
    stages = [(d, nb[0]), (2 * d, nb[1]), (4 * d, nb[2]), (8 * d, nb[3]),  # encoder and latent
              (4 * d, nb[2]), (2 * d, nb[1]), (2 * d, nb[0]), (2 * d, cfg["num_refinement_blocks"])]
    blocks = sum(depth * (4 * c * c + 3 * int(c * f) * c) for c, depth in stages)
    if not PROMPT_KEYS & cfg.keys():
        return blocks
    prompts = {**PROMPT_PRESETS["paper"], **{k: cfg[k] for k in PROMPT_KEYS & cfg.keys()}}
    return blocks + prompts["prompt_len"] * sum(p * s * s for p, s in zip(prompts["prompt_dims"],
                                                                         prompts["prompt_sizes"]))


def check_model_config(cfg: Mapping[str, Any], source: str = "the model configuration",
                       backbone: str = "BaryNet") -> dict:
    """``cfg`` checked against every bound a buildable, sane ``backbone`` needs; returns it as a plain dict.

    ``source`` names where the configuration came from (a checkpoint path, ``--preset tiny``, ...) in
    the :class:`ModelConfigError`, which says which value is wrong and what is allowed. Nothing is built.
    """
    def refuse(what: str) -> ModelConfigError:
        return ModelConfigError(f"{source}: {what}; fix the configuration (or pick a --preset) so it describes "
                                f"a {backbone if backbone in PROMPT_BACKBONES else 'BaryNet/Restormer'} network")

    if backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if not isinstance(cfg, Mapping):
        raise refuse(f"the configuration must be a dict of constructor arguments, got {type(cfg).__name__}")
    known = CONFIG_KEYS | PROMPT_KEYS if backbone in PROMPT_BACKBONES else CONFIG_KEYS
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise refuse(f"unknown key(s) {', '.join(unknown[:10])} (known: {', '.join(sorted(known))})")
    out = dict(cfg)
    for key, low, high in (("inp_channels", 1, MAX_CHANNELS), ("out_channels", 1, MAX_CHANNELS),
                           ("dim", 2, MAX_DIM), ("num_refinement_blocks", 0, MAX_BLOCKS)):
        if key in out and not (_is_int(out[key]) and low <= out[key] <= high):
            raise refuse(f"{key} must be an integer from {low} to {high}, got {out[key]!r}")
    channels_in, channels_out = out.get("inp_channels", 3), out.get("out_channels", 3)
    if channels_in != channels_out:
        raise refuse(f"out_channels ({channels_out}) must equal inp_channels ({channels_in}): the network adds its "
                     f"input to its output")
    if out.get("dim", 2) % 2:
        raise refuse(f"dim must be even (each level halves and doubles it), got {out['dim']}")
    for key in ("num_blocks", "heads"):
        if key in out:
            v = out[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_int(x) for x in v)):
                raise refuse(f"{key} must be a list of 4 integers, got {v!r}")
            out[key] = [int(x) for x in v]
    for key, high in (("prompt_dims", MAX_DIM), ("prompt_sizes", MAX_PROMPT_SIZE)):
        if key in out:
            v = out[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and 1 <= x <= high for x in v)):
                raise refuse(f"{key} must be a list of 3 integers from 1 to {high}, got {v!r}")
            out[key] = [int(x) for x in v]
    if "prompt_len" in out and not (_is_int(out["prompt_len"]) and 1 <= out["prompt_len"] <= MAX_PROMPT_LEN):
        raise refuse(f"prompt_len must be an integer from 1 to {MAX_PROMPT_LEN}, got {out['prompt_len']!r}")
    if "num_blocks" in out and not all(1 <= n <= MAX_BLOCKS for n in out["num_blocks"]):
        raise refuse(f"num_blocks entries must be from 1 to {MAX_BLOCKS}, got {out['num_blocks']}")
    f = out.get("ffn_expansion_factor", 1.0)
    if not (isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f <= MAX_FFN_EXPANSION):
        raise refuse(f"ffn_expansion_factor must be a number above 0 and at most {MAX_FFN_EXPANSION:g}, got {f!r}")
    if "bias" in out and not isinstance(out["bias"], bool):
        raise refuse(f"bias must be true or false, got {out['bias']!r}")
    if "LayerNorm_type" in out and out["LayerNorm_type"] not in ("WithBias", "BiasFree"):
        raise refuse(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {out['LayerNorm_type']!r}")
    if "heads" in out and "dim" in out:
        prompt_dims = out.get("prompt_dims", PROMPT_PRESETS["paper"]["prompt_dims"])
        for i, (n, widths) in enumerate(zip(out["heads"], _head_widths(out["dim"], backbone, prompt_dims))):
            if n < 1 or any(w % n for w in widths):
                raise refuse(f"heads[{i}] = {n} must be at least 1 and divide the channel widths it splits "
                             f"({', '.join(map(str, widths))} for dim {out['dim']})")
    if all(k in out for k in ("dim", "num_blocks", "num_refinement_blocks", "ffn_expansion_factor")):
        if int(out["dim"] * f) < 1:
            raise refuse(f"dim * ffn_expansion_factor must be at least 1, got {out['dim']} * {f!r}")
        need = parameter_lower_bound(out)
        if need > MAX_BLOCK_PARAMETERS:
            raise refuse(f"it describes a network of more than {need / 1e6:,.0f} M parameters (at least "
                         f"{4 * need / 2**30:.1f} GiB of float32 weights), above the limit of "
                         f"{MAX_BLOCK_PARAMETERS / 1e6:,.0f} M in its transformer blocks")
    return out


def model_config(preset: str = "paper", source: str | None = None, *, backbone: str = "BaryNet", **overrides) -> dict:
    """The configuration of ``preset`` for ``backbone`` with ``overrides`` applied (a fresh dict), checked by
    :func:`check_model_config`; ``source`` names where the overrides came from in its error. The
    configurations of the :data:`PROMPT_BACKBONES` add :data:`PROMPT_PRESETS` to the shared preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {sorted(PRESETS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    cfg = copy.deepcopy(PRESETS[preset])
    if backbone in PROMPT_BACKBONES:
        cfg.update(copy.deepcopy(PROMPT_PRESETS[preset]))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if source is None:
        changed = sorted(k for k, v in overrides.items() if v is not None)
        source = f"--preset {preset}" + (f" with {', '.join(changed)} changed" if changed else "")
    return check_model_config(cfg, source, backbone)


MODEL_FLAGS = ("dim", "num_blocks", "num_refinement_blocks", "heads")  # the configuration keys flags change


def flags_for(cfg: Mapping[str, Any], backbone: str) -> str | None:
    """The command-line flags that build ``backbone`` with ``cfg`` (a checkpoint's ``model_config``): the
    ``--preset`` that needs fewest of the model flags (:data:`MODEL_FLAGS`) besides; None when no preset and
    flags build it (another prompt width, FFN factor or bias)."""
    def as_lists(c: Mapping[str, Any]) -> dict:
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in c.items()}
    have, best = as_lists(cfg), None
    for name in PRESETS:
        preset = as_lists(model_config(name, backbone=backbone))
        differ = [k for k in preset.keys() | have.keys() if preset.get(k) != have.get(k)]
        if all(k in MODEL_FLAGS for k in differ) and (best is None or len(differ) < len(best[1])):
            best = (name, sorted(differ, key=MODEL_FLAGS.index))
    if best is None:
        return None
    name, differ = best
    flags = [f"--{k.replace('_', '-')} " + (" ".join(map(str, have[k])) if isinstance(have[k], list) else str(have[k]))
             for k in differ]
    return " ".join([f"--backbone {backbone} --preset {name}", *flags])


def build_model(backbone: str = "BaryNet", preset: str = "paper", **overrides) -> nn.Module:
    """``BaryNet``, ``Restormer``, ``PromptIR`` or ``BaryPromptIR`` with the preset's configuration
    (``overrides`` win), checked first."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[backbone](**model_config(preset, backbone=backbone, **overrides))


def build_potentials(backbone: str, model: nn.Module, num_potentials: int, patch_size: int) -> Potentials | None:
    """The K potential networks a ``backbone`` run trains against ``model``'s latent ``(B, 8*dim, patch/8, patch/8)``
    (:attr:`BaryNet.latent_channels`); None for the L1-only backbones (Restormer, PromptIR), which have none."""
    if backbone not in WB_BACKBONES:
        return None
    return Potentials(num_potentials, model.latent_channels, patch_size)
