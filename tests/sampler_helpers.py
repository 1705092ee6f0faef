"""Models and samplers shared by the sampler tests (tests/test_samplers_*.py)."""

from __future__ import annotations

import math

import torch

import ebmalgebra as eb
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
