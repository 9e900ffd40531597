"""Networks of BaryIR: :class:`BaryNet`, its :class:`Potentials`, the :class:`Restormer` and
:class:`PromptIR` baselines, and :class:`BaryPromptIR` (BaryIR on the PromptIR backbone)."""
from .barynet import BaryNet, BaryOutput, Restormer
from .barypromptir import BaryPromptIR
from .blocks import set_layernorm_impl
from .potentials import Potentials
from .promptir import PromptIR

__all__ = ["BaryNet", "BaryOutput", "Restormer", "PromptIR", "BaryPromptIR", "Potentials", "set_layernorm_impl"]
