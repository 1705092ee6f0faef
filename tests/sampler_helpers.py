"""Models, samplers and Monte-Carlo checks shared by the sampler tests
(tests/test_samplers_*.py, tests/test_adaptation.py).

Tolerances of the moment checks: |estimate − truth| ≤ Z_MAX · MCSE, with
MCSE = sd(f) / √ESS(f) measured on the very draws (see test_samplers_statistics.py).
"""

from __future__ import annotations

import math

import torch

import ebmalgebra as eb
from ebmalgebra.diagnostics import ess, mcse_mean
from ebmalgebra.samplers import HMC, MALA, ULA, AnnealedLangevin, ParallelTempering, RandomWalkMH
from ebmalgebra.targets import Gaussian

F64 = torch.float64


def gaussian(dim: int = 3, dtype=F64) -> eb.EnergyModel:
    return Gaussian(torch.zeros(dim, dtype=dtype), 1.0, name="g")


def all_samplers(model=None) -> dict:
    return {
        "rwmh": RandomWalkMH(step_size=0.5),
        "ula": ULA(step_size=0.1),
        "mala": MALA(step_size=0.3),
        "hmc": HMC(step_size=0.3, n_leapfrog=4),
        "hmc_dense": HMC(step_size=0.3, n_leapfrog=4, metric="dense"),
        "annealed": AnnealedLangevin(noise_levels=[1.0, 0.5, 0.1], steps_per_level=2,
                                     step_size=0.05, mala=0.6),
        "tempering": ParallelTempering(betas=[1.0, 0.5, 0.25], sampler=MALA(step_size=0.3)),
        "tempering_rwmh": ParallelTempering(betas=[1.0, 0.3], sampler=RandomWalkMH()),
        "tempering_hmc": ParallelTempering(betas=[1.0, 0.3], sampler=HMC(n_leapfrog=3)),
    }


def noise_conditioned_gaussian(dim: int = 3) -> eb.EnergyModel:
    """E(x, t) = ‖x‖² / (2(1 + t²)): N(0, 1) convolved with N(0, t²)."""
    return eb.from_energy(lambda x, t: 0.5 * (x * x).sum(-1) / (1.0 + t**2), dim,
                          name="noisy", noise_conditioned=True)


def model_for(name: str, dim: int = 3) -> eb.EnergyModel:
    return noise_conditioned_gaussian(dim) if name == "annealed" else gaussian(dim)


SAMPLER_NAMES = tuple(all_samplers())


def denoiser_score():
    return eb.from_score(lambda x: -x, 3, name="denoiser")


def nan_wall() -> eb.EnergyModel:
    """N(0, 1) in 1-D whose energy and score are NaN for x > 1 (√(1 − x) there)."""
    def energy(x):
        return (0.5 * x * x + 0.0 * torch.sqrt(1.0 - x)).sum(-1)
    return eb.from_energy(energy, 1, name="wall")


def sink() -> eb.EnergyModel:
    """N(0, 1) with a −∞ energy (infinite density) for x > 1: never a valid state."""
    def energy(x):
        e = 0.5 * (x * x).sum(-1)
        return torch.where(x[:, 0] > 1.0, -math.inf, e)
    return eb.from_energy(energy, 1, name="sink")


class CountingEnergy(torch.nn.Module):
    """½‖x‖² by autograd (not analytic), counting forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 0.5 * (x * x).sum(-1)


Z_MAX = 4.0


def normal(mean: float, variance: float, name: str) -> eb.EnergyModel:
    """N(mean, variance) over event shape (1,), in float64."""
    return Gaussian(torch.tensor([mean], dtype=F64), math.sqrt(variance), name=name)


def z_scores(values: torch.Tensor, truth: torch.Tensor | float) -> torch.Tensor:
    """(estimate − truth) / MCSE per coordinate; asserts ESS ≥ 100."""
    effective = ess(values, kind="mean")
    assert (effective >= 100).all(), f"ESS too small for a reliable MCSE: {effective}"
    estimate = values.double().mean((0, 1))
    return (estimate - truth) / mcse_mean(values)


def assert_moments(draws: torch.Tensor, mean, variance, what: str) -> None:
    """Mean and variance (as E(x − μ)² with the exact μ) within 4 MCSE."""
    mean = torch.as_tensor(mean, dtype=F64)
    variance = torch.as_tensor(variance, dtype=F64)
    z_mean = z_scores(draws, mean)
    z_var = z_scores((draws.double() - mean) ** 2, variance)
    assert z_mean.abs().max() <= Z_MAX, f"{what}: mean z = {z_mean.tolist()}"
    assert z_var.abs().max() <= Z_MAX, f"{what}: variance z = {z_var.tolist()}"
