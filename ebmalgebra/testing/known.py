"""Unnormalised models whose log Z is known in closed form, for tests and benchmarks of
:func:`ebmalgebra.estimate_log_z` and :class:`~ebmalgebra.samplers.SMC`."""

from __future__ import annotations

import math

import torch

from ebmalgebra.base import EnergyModel
from ebmalgebra.leaves import from_energy

__all__ = ["correlated_gaussian"]


def correlated_gaussian(dim: int = 20, correlation: float = 0.9) -> tuple[EnergyModel, float]:
    """An unnormalised Gaussian over ``(dim,)`` with Σ_ij = correlation^|i−j| (an AR(1)
    covariance, ill-conditioned as correlation → 1) and mean linspace(−1, 1, dim), given
    by its energy E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ), so that the closed form is hidden.

    Returns ``(model, log Z)`` with log Z = (d/2) log 2π + ½ log det Σ (float64).
    """
    index = torch.arange(dim)
    covariance = correlation ** (index[:, None] - index[None, :]).abs().to(torch.float64)
    precision = torch.linalg.inv(covariance)
    loc = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    model = from_energy(lambda x: 0.5 * ((x - loc) @ precision * (x - loc)).sum(-1), dim,
                        name=f"g{dim}")
    return model, 0.5 * dim * math.log(2 * math.pi) + 0.5 * float(torch.logdet(covariance))
