"""Models, samplers and Monte-Carlo checks shared by the sampler tests
(tests/test_samplers_*.py, tests/test_adaptation.py).

Tolerances of the moment checks: |estimate − truth| ≤ Z_MAX · MCSE, with
MCSE = sd(f) / √ESS(f) measured on the very draws (see test_samplers_statistics.py).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import scipy.stats
import torch

import ebmalgebra as eb
from ebmalgebra.diagnostics import ess, mcse_chain_means, mcse_mean
from ebmalgebra.jit import JitFallbackWarning
from ebmalgebra.samplers import (
    HMC,
    MALA,
    NUTS,
    ULA,
    AnnealedLangevin,
    ParallelTempering,
    RandomWalkMH,
)
from ebmalgebra.samplers.base import Potential, StepSizeSampler, as_chain_values
from ebmalgebra.samplers.metrics import DiagonalMetric, Metric
from ebmalgebra.targets import Banana, Gaussian

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
        "nuts": NUTS(step_size=0.3, max_depth=4),
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


def eager_and_compiled_draws(model: eb.EnergyModel, step_size: float, seed: int,
                             **options) -> tuple[torch.Tensor, torch.Tensor]:
    """MALA draws of ``model`` with ``jit=False`` and with ``jit=True``, from the same seed
    (``options`` go to ``eb.sample``); a kernel falling back to eager fails the test."""
    draws = []
    for jit in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", JitFallbackWarning)
            draws.append(eb.sample(model, MALA(step_size=step_size, jit=jit),
                                   generator=torch.Generator().manual_seed(seed),
                                   progress=False, **options).draws)
    return draws[0], draws[1]


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


# The banana of issue 16: x₀ ~ N(0, 10²), x₁ | x₀ ~ N(0.03 (x₀² − 100), 1), so E x₁ = 0 and
# Var x₁ = 2 · 0.03² · 10⁴ + 1 = 19. Its curvature grows like x₀² in the tails.
BANANA_TRUTH = {"mean": (0.0, 0.0), "sd": (10.0, math.sqrt(19.0))}
BANANA_SEEDS = range(5)
BANANA_K = float(scipy.stats.norm.isf(0.01 / (2 * 5 * 4)))
"""3.48: two-sided, Bonferroni over 5 seeds × 4 moments (mean and sd of x₀ and x₁) at a
family-wise error of 1%, for z-scores that are ~N(0, 1) when the draws are right."""


def banana_run(sampler, seed: int) -> eb.samplers.Samples:
    """The issue's run: 200 chains from N(0, 1), 500 warmup + 500 draws, float32.

    The chains legitimately go ten times further out than they start (x₀'s sd is
    10), which the escape check reports; that warning is expected here.
    """
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(200, 2, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eb.samplers.ImproperTargetWarning)
        return eb.sample(Banana(scale=10.0, curvature=0.03, noise=1.0), sampler, x0=x0,
                         n_steps=500, warmup=500, generator=generator, progress=False)


def chain_batch_z(draws: torch.Tensor, mean, sd) -> dict[str, torch.Tensor]:
    """z-scores of the mean and sd of each coordinate of ``(n, m, d)`` draws against the
    exact ``mean`` and ``sd``, with standard errors from the m chains' own averages
    (:func:`ebmalgebra.diagnostics.mcse_chain_means`).

    After warmup the step size and metric are frozen, so the chains are independent,
    and so are their averages of x and of (x − μ)², whatever the autocorrelation; the sd
    estimate √b̄, with b̄ the mean of (x − μ)², has the error se(b̄)/(2√b̄) (delta
    method). No ESS estimate enters, so these errors do not share the blind spots of
    the ESS that the banana tests are about.
    """
    x = draws.double()
    mean = torch.as_tensor(mean, dtype=x.dtype)
    sd = torch.as_tensor(sd, dtype=x.dtype)
    squares = (x - mean) ** 2
    sd_estimate = squares.mean((0, 1)).sqrt()
    se_sd = mcse_chain_means(squares) / (2 * sd_estimate)
    return {"mean": (x.mean((0, 1)) - mean) / mcse_chain_means(x),
            "sd": (sd_estimate - sd) / se_sd}


class WalkState(NamedTuple):
    position: torch.Tensor
    energy: torch.Tensor
    step_size: torch.Tensor
    metric: Metric
    potential: Potential


class WalkInfo(NamedTuple):
    acceptance_rate: torch.Tensor
    nonfinite: torch.Tensor


class PreconditionedWalk(StepSizeSampler):
    """A sampler of one's own, in one class: random-walk Metropolis with proposal
    N(x, ε² M⁻¹), i.e. x′ = x + ε M⁻¹ p with p ~ N(0, M). It declares its facts and
    gets warmup (step size and metric), tempering and AIS from the library."""

    name = "PreconditionedWalk"
    leaves_target_invariant = True
    tempering_step_exponent = 0.5
    adaptation_flags = ("adapt_step_size", "adapt_mass")

    def __init__(self, *, step_size: float = 0.5, target_accept: float = 0.3,
                 adapt_step_size: bool = True, adapt_mass: bool = True) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size)
        self.adapt_mass = adapt_mass

    def init(self, x0, model):
        potential = Potential(model, operation=self.name, needs_score=False)
        step_size = as_chain_values(self.step_size, x0, f"{self.name}: step_size")
        return WalkState(x0, potential.energy(x0), step_size, DiagonalMetric.identity(x0),
                         potential)

    def step(self, state, generator=None):
        x, energy, step_size, metric, potential = state
        momentum = metric.sample_momentum(x, generator)
        proposal = metric.drift(x, momentum, metric.drift_scale(step_size[:, None]))
        proposal_energy = potential.energy(proposal)
        finite = torch.isfinite(proposal_energy)
        uniform = torch.rand(x.shape[:1], generator=generator, dtype=x.dtype)
        probability = torch.where(finite, (energy - proposal_energy).clamp(max=0).exp(), 0.0)
        accepted = uniform < probability
        new_state = state._replace(position=torch.where(accepted[:, None], proposal, x),
                                   energy=torch.where(accepted, proposal_energy, energy))
        return new_state, WalkInfo(probability, ~finite)


class WindowRecorder:
    """A ``sample`` callback that keeps the positions of warmup steps start … end − 1
    (a metric adaptation window, e.g. ``mass_windows(warmup)[-1]``)."""

    def __init__(self, window: tuple[int, int]) -> None:
        self.start, self.end = window
        self.positions: list[torch.Tensor] = []

    def __call__(self, index: int, state, info) -> None:
        if self.start <= index < self.end:
            self.positions.append(state.position.clone())

    def draws(self) -> torch.Tensor:
        """``(steps, chains, d)``."""
        return torch.stack(self.positions)


def assert_window_metric(inverse_mass: torch.Tensor, draws: torch.Tensor,
                         covariance: torch.Tensor, mean: torch.Tensor | float = 0.0) -> None:
    """The metric set after a window estimates the target's (co)variance.

    Undoes Stan's regularisation M⁻¹ = n/(n+5) Σ̂ + 10⁻³ · 5/(n+5) I (n pooled draws)
    and requires every entry of Σ̂ within Z_MAX · MCSE of ``covariance`` (diagonal
    ``(d,)`` or dense ``(d, d)``), the MCSE of each centred product
    (x_i − μ_i)(x_j − μ_j) from its ESS on these very ``draws`` (steps, chains, d).
    Σ̂'s centring at the window mean rather than μ moves it by O(Σ/n), far below the MCSE.
    """
    n = draws.shape[0] * draws.shape[1]
    dense = inverse_mass.dim() == 2
    identity = torch.eye(draws.shape[-1], dtype=draws.dtype) if dense else 1.0
    estimate = (inverse_mass - 1e-3 * 5 / (n + 5) * identity) * (n + 5) / n
    centred = draws - mean
    pairs = [(i, j) for i in range(draws.shape[-1]) for j in range(i + 1)] if dense else [
        (i, i) for i in range(draws.shape[-1])]
    for i, j in pairs:
        product = centred[..., i] * centred[..., j]
        assert float(ess(product)) >= 100, f"Σ[{i},{j}]: ESS too small for a reliable MCSE"
        got = estimate[i, j] if dense else estimate[i]
        want = covariance[i, j] if dense else covariance[i]
        z = float((got - want) / mcse_mean(product))
        assert abs(z) <= Z_MAX, f"Σ[{i},{j}] = {float(got):.4g} vs {float(want):.4g}: z = {z:.2f}"
