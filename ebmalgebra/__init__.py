"""ebmalgebra: energy-based models as algebraic objects.

An energy-based model is an unnormalised density p̃(x) = exp(−E(x)). Models
compose with operators (``a & b`` product of experts, ``a | b`` mixture,
``w * a`` weight, ``a ** beta`` tempering, ``~a`` inverse), compile to one
fused ``energy_and_score`` function, and feed samplers, normalisers and
training losses.
"""

from ebmalgebra import targets
from ebmalgebra.base import Capabilities, EnergyModel
from ebmalgebra.compile import CompiledEnergy, compile
from ebmalgebra.errors import CapabilityError, CompositionError, EBMAlgebraError
from ebmalgebra.leaves import (
    Leaf,
    from_distribution,
    from_energy,
    from_log_prob,
    from_score,
    one,
)
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CapabilityError",
    "CompiledEnergy",
    "CompositionError",
    "EBMAlgebraError",
    "EnergyModel",
    "Leaf",
    "Mixture",
    "Normalized",
    "Power",
    "Product",
    "Weight",
    "compile",
    "from_distribution",
    "from_energy",
    "from_log_prob",
    "from_score",
    "one",
    "targets",
]
