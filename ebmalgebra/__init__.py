"""ebmalgebra: energy-based models as algebraic objects.

An energy-based model is an unnormalised density p̃(x) = exp(−E(x)). Models
compose with operators (``a & b`` product of experts, ``a | b`` mixture,
``w * a`` weight, ``a ** beta`` tempering, ``~a`` inverse), compile to one
fused ``energy_and_score`` function, and feed samplers, normalisers and
training losses.

Every name of :mod:`ebmalgebra.samplers` is also reachable here
(``ebmalgebra.HMC``, ``ebmalgebra.MALA``, ``ebmalgebra.ULA``, …). The
subpackages ``apps``, ``datasets``, ``learning``, ``testing`` and ``zoo`` load
on first access (``ebmalgebra.zoo.load("ring")`` works after a bare
``import ebmalgebra``), so importing the package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from ebmalgebra import samplers, targets
from ebmalgebra.base import Capabilities, EnergyModel
from ebmalgebra.compile import CompiledEnergy, compile
from ebmalgebra.envelope import BallEnvelope, ball_envelope
from ebmalgebra.errors import (
    ArgumentError,
    ArgumentTypeError,
    CapabilityError,
    CompositionError,
    EBMAlgebraError,
)
from ebmalgebra.io import SerializationError, load, save
from ebmalgebra.leaves import (
    Leaf,
    from_distribution,
    from_energy,
    from_log_prob,
    from_score,
    one,
)
from ebmalgebra.negation import Without, without
from ebmalgebra.normalize import LogZEstimate, estimate_log_z, normalize
from ebmalgebra.operator import Operator
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight
from ebmalgebra.pushforward import transform
from ebmalgebra.samplers import sample

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BallEnvelope",
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
    "Without",
    "ball_envelope",
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
    "without",
]

_SUBPACKAGES = frozenset({"apps", "datasets", "diagnostics", "learning", "testing", "zoo"})
"""Imported on first attribute access: they pull in scipy, scikit-learn or weights."""

_LAZY_NAMES = {"ClassifierEnergy": "ebmalgebra.apps.guidance"}


def __getattr__(name: str) -> Any:
    # PEP 562: only called for names the module does not define.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"ebmalgebra.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    if name in samplers.__all__:
        return getattr(samplers, name)
    raise AttributeError(f"module 'ebmalgebra' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES, *_LAZY_NAMES, *samplers.__all__})
