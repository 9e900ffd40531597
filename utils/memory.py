"""How much memory a forward pass or a training run needs, against what the machine has: the one home
of memory estimates.

The activation memory per pixel of each backbone, preset and precision was measured once with
``bench/memory_coefficients.py`` (peak resident memory of fresh processes at two sizes; the slope is
the per-pixel cost) and is kept here. A configuration that is not a preset (a checkpoint's own widths)
is scaled from the nearest preset by :func:`activation_measure`. The tester tiles an image that would
not fit (:func:`choose_tile`); the trainers refuse a configuration that cannot fit
(:func:`training_need`) before building anything, with the estimate and what to change, instead of
being killed by the kernel half-way through start-up.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

# Measured on the CPU (AMD EPYC, AVX2, torch 2.14.1, 2 threads) by bench/memory_coefficients.py; BENCHMARKS.md
# has the runs. Bytes per input pixel of one image through ``utils.eval.inference.restore``, from sides 1024 and
# 2048 (tiny) or 512 and 1024 (paper). bf16/fp16 use the fp32 rows (an upper bound): this CPU emulates bf16 too
# slowly to measure it.
RESTORE_BYTES_PER_PIXEL: dict[tuple[str, str, str], int] = {
    ("BaryNet", "tiny", "fp32"): 2969, ("BaryNet", "paper", "fp32"): 6880,
    ("Restormer", "tiny", "fp32"): 2492, ("Restormer", "paper", "fp32"): 6672,
    ("PromptIR", "tiny", "fp32"): 2975, ("PromptIR", "paper", "fp32"): 6475,
    ("BaryPromptIR", "tiny", "fp32"): 2433, ("BaryPromptIR", "paper", "fp32"): 7188,
}
# Bytes per pixel of ``batch x patch^2`` for one training iteration (map update, potentials, congruence).
TRAIN_BYTES_PER_PIXEL: dict[tuple[str, str, str], int] = {
    ("BaryNet", "tiny", "fp32"): 19366, ("BaryNet", "paper", "fp32"): 222611,
    ("Restormer", "tiny", "fp32"): 15794, ("Restormer", "paper", "fp32"): 179938,
    ("PromptIR", "tiny", "fp32"): 18545, ("PromptIR", "paper", "fp32"): 188972,
    ("BaryPromptIR", "tiny", "fp32"): 22300, ("BaryPromptIR", "paper", "fp32"): 224914,
}
# Peak of a process that imported torch and the project, before any network.
PROCESS_BYTES = 509 * 2**20
# Slopes of repeated measurements of one case differed by up to ~35 % (BaryNet tiny restore, 1024-2048: 2164
# and 2969 B/px; 256-512: 3128, 3200, 3859): the tables keep the higher value and estimates carry this factor,
# so that a refused run would really not have fitted; automatic tiling may start a little early.
MARGIN = 1.25
# What tiled restoring holds for the whole image beside the tiles' activations, in host memory: the float32
# input (12 B/px), the float64 blend accumulator (24) and its normalising weights (8), the float32 result (12);
# on the CPU it comes out of the same memory as the activations. (A pointwise stand-in network on 3000x3000
# in 512-pixel tiles measured 51.7 B/px of peak growth.)
TILED_IMAGE_BYTES_PER_PIXEL = 56
# A backbone added later without its own measurement uses the one whose graph it extends.
SIMILAR_BACKBONE = {"PromptIR": "Restormer", "BaryPromptIR": "BaryNet"}
# Bytes of state per parameter beside its float32 value: the gradient, and the optimizer's buffers.
OPTIMIZER_STATE_BYTES = {"RMSprop": 4, "Adam": 8}


def _cgroup_limit(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's cgroup may still use (v2 ``memory.max``, or v1's limit, minus the working set), else
    None. The working set is the usage less the inactive file cache (``memory.stat``), which the kernel reclaims
    before it fails an allocation: a checkpoint or data set just read does not count as used."""
    root = Path(root)
    for limit_file, usage_file, stat_file, inactive in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
             "total_inactive_file")):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - max(0, usage - _stat_value(root / stat_file, inactive)))
    return None


def _stat_value(path: Path, key: str) -> int:
    """``key``'s value in a cgroup ``memory.stat`` file; 0 when absent or unreadable."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def host_available() -> int | None:
    """Bytes the host can still give this process: ``MemAvailable``, bounded by a cgroup limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit = _cgroup_limit()
    if avail is None:
        return limit
    return avail if limit is None else min(avail, limit)


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory where ``device`` computes: the GPU's free memory plus what torch's cache holds
    unused, or :func:`host_available` for the CPU; None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return host_available()
    return None


def activation_measure(cfg: Mapping[str, Any]) -> float:
    """Activation channels per input pixel summed over a configuration's blocks (levels at 1/2^k resolution
    count 1/4^k): what activation memory grows with across widths and depths, for scaling a preset's
    measurement to another configuration."""
    d, nb = cfg["dim"], cfg["num_blocks"]
    f = 1.0 + cfg.get("ffn_expansion_factor", 2.66)
    level1 = d * nb[0] + 2 * d * nb[0] + 2 * d * cfg.get("num_refinement_blocks", 0)
    return f * (level1 + 2 * (2 * d * nb[1]) / 4 + 2 * (4 * d * nb[2]) / 16 + 8 * d * nb[3] / 64)


@dataclass(frozen=True)
class Coefficient:
    """Bytes per pixel for a network, and how it was obtained (said in notes and errors)."""
    bytes_per_pixel: float
    basis: str


def _coefficient(table: Mapping[tuple[str, str, str], int], backbone: str, cfg: Mapping[str, Any],
                 precision: str) -> Coefficient:
    from net.presets import PRESETS  # the presets the table was measured for

    base = backbone if any(k[0] == backbone for k in table) else SIMILAR_BACKBONE.get(backbone, "BaryNet")
    prec = "bf16" if precision == "fp16" else precision
    keys = {k[1] for k in table if k[0] == base and k[2] == prec} or {k[1] for k in table if k[0] == base}
    if not keys:
        raise KeyError(f"no memory measurement for {backbone} ({precision}); run bench/memory_coefficients.py")
    measure = activation_measure(cfg)
    preset = min(keys, key=lambda p: abs(math.log(activation_measure(PRESETS[p]) / measure)))
    value = table.get((base, preset, prec)) or table[(base, preset, "fp32")]
    scale = measure / activation_measure(PRESETS[preset])
    basis = f"{base} {preset} {prec}" + ("" if abs(scale - 1) < 1e-9 else f" scaled x{scale:.2f} to these widths")
    return Coefficient(value * scale, basis)


def _backbone_and_config(model: torch.nn.Module) -> tuple[str, Mapping[str, Any]]:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, Mapping) or "dim" not in cfg or "num_blocks" not in cfg:
        raise ValueError(f"{type(model).__name__} has no BaryNet-style .config to estimate its memory from")
    return type(model).__name__, cfg


def restore_need(model: torch.nn.Module, precision: str, height: int, width: int, batch: int = 1) -> int:
    """Bytes one :func:`~utils.eval.inference.restore` call on ``(batch, 3, height, width)`` adds to what the
    process already holds (activations, with :data:`MARGIN`; the sides rounded up to multiples of 8)."""
    backbone, cfg = _backbone_and_config(model)
    coef = _coefficient(RESTORE_BYTES_PER_PIXEL, backbone, cfg, precision)
    pixels = batch * (-(-height // 8) * 8) * (-(-width // 8) * 8)
    return int(MARGIN * coef.bytes_per_pixel * pixels)


TILE_SIDES = (1024, 768, 512, 384, 256, 128)


def choose_tile(model: torch.nn.Module, precision: str, height: int, width: int, budget: int,
                tile_batch: int, overlap: int = 0, step: int = 8) -> tuple[int, int] | None:
    """``(tile, tile_batch)`` for an image of ``height x width`` that does not fit ``budget`` bytes whole:
    the largest of :data:`TILE_SIDES` whose batch fits (one tile at a time if need be) and that leaves a step
    of at least ``step`` pixels after ``overlap``; None if none fits."""
    for batch in dict.fromkeys((tile_batch, 1)):
        for side in TILE_SIDES:
            if side - overlap < step:
                continue
            if side < max(height, width) and restore_need(model, precision, side, side, batch) <= budget:
                return side, batch
    return None


@dataclass(frozen=True)
class TrainingNeed:
    """A training process's estimated peak, its parts, and what it was compared with."""
    per_process: int
    processes_here: int
    parts: dict[str, int]
    basis: str

    @property
    def total(self) -> int:
        return self.per_process * self.processes_here


def training_need(model: torch.nn.Module, potentials: torch.nn.Module | None, optimizer: str, precision: str,
                  batch: int, patch: int, processes_here: int = 1, distributed: bool = False,
                  on_gpu: bool = False) -> TrainingNeed:
    """The peak memory of one training process (``model``/``potentials`` may live on the meta device:
    only their parameter counts are read).

    Parts: the process itself (CPU only), the parameters with their gradients and optimizer state
    (plus DDP's gradient buckets), and the activations of ``batch x patch^2`` pixels, with :data:`MARGIN`.
    ``processes_here`` share the memory compared against (ranks on this node on the CPU; 1 per GPU).
    """
    backbone, cfg = _backbone_and_config(model)
    coef = _coefficient(TRAIN_BYTES_PER_PIXEL, backbone, cfg, precision)
    n_model = sum(p.numel() for p in model.parameters())
    n_pots = sum(p.numel() for p in potentials.parameters()) if potentials is not None else 0
    per_param = 4 + 4 + OPTIMIZER_STATE_BYTES.get(optimizer, 8)
    parts = {"process": 0 if on_gpu else PROCESS_BYTES,
             "weights, gradients, optimizer": per_param * (n_model + n_pots) + (4 * n_model if distributed else 0),
             "activations": int(MARGIN * coef.bytes_per_pixel * batch * patch * patch)}
    return TrainingNeed(sum(parts.values()), processes_here, parts, coef.basis)


def processes_on_this_node(device: torch.device) -> int:
    """Training processes sharing this machine's memory: torchrun's ranks on this node for the CPU, 1 per GPU."""
    if device.type == "cuda":
        return 1
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
