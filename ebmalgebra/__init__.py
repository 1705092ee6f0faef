"""ebmalgebra: energy-based models as algebraic objects.

An energy-based model is an unnormalised density p̃(x) = exp(−E(x)). Models
compose with operators (``a & b`` product of experts, ``a | b`` mixture,
``w * a`` weight, ``a ** beta`` tempering, ``~a`` inverse), compile to one
fused ``energy_and_score`` function, and feed samplers, normalisers and
training losses.
"""

from ebmalgebra import samplers, targets
from ebmalgebra.apps.guidance import ClassifierEnergy
from ebmalgebra.base import Capabilities, EnergyModel
from ebmalgebra.compile import CompiledEnergy, compile
from ebmalgebra.errors import CapabilityError, CompositionError, EBMAlgebraError
from ebmalgebra.io import SerializationError, load, save
from ebmalgebra.leaves import (
    Leaf,
    from_distribution,
    from_energy,
    from_log_prob,
    from_score,
    one,
)
from ebmalgebra.normalize import LogZEstimate, estimate_log_z, normalize
from ebmalgebra.operator import Operator
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight
from ebmalgebra.pushforward import transform
from ebmalgebra.samplers import sample

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CapabilityError",
    "ClassifierEnergy",
    "CompiledEnergy",
    "CompositionError",
    "EBMAlgebraError",
    "EnergyModel",
    "Leaf",
    "LogZEstimate",
    "Mixture",
    "Normalized",
    "Operator",
    "Power",
    "Product",
    "SerializationError",
    "Weight",
    "compile",
    "estimate_log_z",
    "from_distribution",
    "from_energy",
    "from_log_prob",
    "from_score",
    "load",
    "normalize",
    "one",
    "sample",
    "samplers",
    "save",
    "targets",
    "transform",
]
