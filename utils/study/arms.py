"""The study's design: the tasks every run is scored on, the arms it compares and how each is built.

An arm is a network (the ``tiny`` preset of a backbone, with width overrides) and an objective (the
full BaryIR one, or BaryIR with terms left out, ``--ablate``; L1 only for the non-WB backbones); every
arm trains on the same data, iterations and seeds. :data:`COMPARISONS` names the pairs the tables test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from net.presets import WB_BACKBONES, build_model, model_config
from utils.dataset_utils import ALL_IN_ONE_3D

ID_TASKS = ALL_IN_ONE_3D
OOD_TASKS = ("denoise_75", "jpeg", "lowlight", "deblur")
GROUPS = {"ID": ID_TASKS, "OOD": OOD_TASKS}

# The capacity-matched baseline: the tiny Restormer widened (dim only) to within 10% of tiny BaryNet's
# 2,573,617 parameters: dim 26 has 2,615,261 (+1.6%); dim 24 has 2,232,625 (-13.2%).
MATCHED_DIM = 26
CAPACITY_TOLERANCE = 0.10


@dataclass(frozen=True)
class Arm:
    """One arm: its name in the tables, a backbone (the ``tiny`` preset), the objective's terms it leaves out
    (``--ablate``; none: the full objective on a WB backbone, L1 only on the others), width overrides."""
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
    from net.presets import build_potentials
    from utils.dataset_utils import num_sources
    out = {}
    for name in arms:
        arm = ARMS[name]
        with torch.device("meta"):
            model = build_model(arm.backbone, "tiny", **arm.config)
            pots = build_potentials(arm.backbone, model, num_sources(ID_TASKS), patch_size) if arm.wb else None
        out[name] = {"network": sum(p.numel() for p in model.parameters()),
                     "potentials": sum(p.numel() for p in pots.parameters()) if pots is not None else 0}
    return out
