"""Networks of BaryIR: :class:`BaryNet`, its :class:`Potentials`, and the :class:`Restormer` baseline."""
from .barynet import BaryNet, BaryOutput, Restormer
from .blocks import set_layernorm_impl
from .potentials import Potentials

__all__ = ["BaryNet", "BaryOutput", "Restormer", "Potentials", "set_layernorm_impl"]
