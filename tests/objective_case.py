"""The small float64 case shared by tests/test_objective.py and its 2-process worker."""
import torch

from net import Potentials
from net.presets import build_model

P = 16
LAMBDAS = torch.tensor([0.318, 0.341, 0.341], dtype=torch.float64)


def nets(k: int = 3):
    """Tiny BaryNet and K potentials in float64, the same on every call."""
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny").double()
    pots = Potentials(k, model.config["dim"] * 8, P).double()
    return model, pots


def batch_for_rank(rank: int, domains=(0, 1, 0, 2), de_ids=(0, 3, 1, 4)):
    """``(degraded, target, de_ids, domains)``: 4 float64 patches, different on each rank."""
    g = torch.Generator().manual_seed(100 + rank)
    target = torch.rand(len(domains), 3, P, P, generator=g, dtype=torch.float64)
    degraded = (target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return degraded, target, torch.tensor(de_ids), torch.tensor(domains)
