"""Networks of BaryIR: :class:`BaryNet`, its :class:`Potentials`, and the :class:`Restormer` and
:class:`PromptIR` baselines."""
from .barynet import BaryNet, BaryOutput, Restormer
from .blocks import set_layernorm_impl
from .potentials import Potentials
from .promptir import PromptIR

__all__ = ["BaryNet", "BaryOutput", "Restormer", "PromptIR", "Potentials", "set_layernorm_impl"]
