"""Hamiltonian Monte Carlo with a leapfrog integrator, and its warmup adaptation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.samplers.base import (
    Derived,
    Potential,
    StepSizeSampler,
    as_chain_values,
    draw_normal,
    draw_uniform,
    finite_rows,
    metropolis_accept,
    run_update,
    select,
    shared_value,
    squared_norm,
    sum_is_finite_eagerly,
)
from ebmalgebra.samplers.integrators import PhasePoint, integrate
from ebmalgebra.samplers.metrics import Metric, given_inverse_mass, metric_class

__all__ = ["HMC", "HMCInfo", "HMCState"]


class HMCState(NamedTuple):
    """HMC state.

    Attributes:
        position: ``(n_chains, *event_shape)``.
        energy: E(position), ``(n_chains,)``.
        score: s(position) = −∇E, like ``position``; reused by the next trajectory's
            first half step, so every leapfrog step costs exactly one evaluation.
        step_size: ε per chain, ``(n_chains,)``.
        metric: the mass matrix (:class:`~ebmalgebra.samplers.metrics.DiagonalMetric`
            or :class:`~ebmalgebra.samplers.metrics.DenseMetric`); warmup replaces it.
        potential: the compiled model (see :class:`~ebmalgebra.samplers.Potential`).
    """

    position: Tensor
    energy: Tensor
    score: Tensor
    step_size: Tensor
    metric: Metric
    potential: Potential

    @property
    def inverse_mass(self) -> Tensor:
        """M⁻¹, shaped ``event_shape`` (diagonal metric) or ``(d, d)`` (dense)."""
        return self.metric.inverse_mass

    @property
    def mass_factor(self) -> Tensor:
        """The factor F with p = F ξ ~ N(0, M): M^{1/2} elementwise (diagonal) or the
        Cholesky factor L of M = L Lᵀ (dense)."""
        return self.metric.mass_factor


class HMCInfo(NamedTuple):
    """Per-step facts.

    Attributes:
        acceptance_rate: min(1, exp(H(x, p) − H(x′, p′))) per chain.
        is_accepted: whether the end of the trajectory was taken, per chain.
        energy_error: H(x′, p′) − H(x, p) per chain (0 for a perfect integrator).
        divergent: the energy error exceeded ``max_energy_error`` or is NaN (the integrator
            is unstable there; the proposal was almost surely rejected).
        nonfinite: the trajectory ended at a NaN/inf energy or score (rejected).
        n_leapfrog: leapfrog steps in this trajectory (the same for all chains).
    """

    acceptance_rate: Tensor
    is_accepted: Tensor
    energy_error: Tensor
    divergent: Tensor
    nonfinite: Tensor
    n_leapfrog: int


class HMC(StepSizeSampler):
    """Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) with a leapfrog integrator.

    Momenta p ~ N(0, M) are drawn afresh each step and the Hamiltonian
    H(x, p) = E(x) + ½ pᵀ M⁻¹ p is integrated by L leapfrog steps of size ε:

        p ← p + (ε/2) s(x);  x ← x + ε M⁻¹ p;  p ← p + (ε/2) s(x)

    (the inner half steps fused into full steps). The end point is accepted with
    probability min(1, exp(H(x, p) − H(x′, p′))). The score at the current point is
    cached in the state, so a trajectory of L steps costs exactly L energy-and-score
    evaluations. The number of steps is jittered, L uniform on
    {⌈L₀(1 − j)⌉, …, ⌊L₀(1 + j)⌋}, one draw per step shared by all chains, which
    avoids the periodic orbits of a fixed path length (Neal 2011, §5.4.2.2).
    Needs energies: score-only models raise :class:`~ebmalgebra.CapabilityError`.

    Warmup (``ebmalgebra.sample(..., warmup=n)``) adapts ε by dual averaging
    towards ``target_accept`` (Hoffman & Gelman 2014: t₀ = 10, γ = 0.05, κ = 0.75,
    one step size pooled over chains) and M⁻¹ by Stan's windowed scheme, each
    window's (co)variance estimate pooling the draws of all chains (see
    :mod:`ebmalgebra.samplers.adaptation`).

    Non-finite values: trajectories ending at a NaN or infinite energy or score
    are rejected and counted (``info.nonfinite``); an energy error above
    ``max_energy_error`` is reported as a divergence.

    Args:
        step_size: ε, a float or one value per chain ``(n_chains,)``.
        n_leapfrog: L₀, the mean number of leapfrog steps per trajectory.
        jitter: j ∈ [0, 1), the relative spread of the number of steps (0: fixed).
        metric: ``"diag"`` (diagonal mass matrix) or ``"dense"`` (full matrix over
            the flattened event; worth it for strongly correlated targets), or a
            :class:`~ebmalgebra.samplers.metrics.Metric` subclass.
        inverse_mass: the initial M⁻¹ (default identity), shaped ``event_shape``
            for ``"diag"`` or ``(d, d)`` for ``"dense"``.
        target_accept: δ for step-size adaptation.
        adapt_step_size: tune ε in warmup.
        adapt_mass: tune M⁻¹ in warmup.
        max_energy_error: energy error beyond which a step counts as divergent.
        jit: compile the whole deterministic update with ``torch.compile`` (one
            kernel per trajectory length, compiled as lengths first occur; random
            numbers still come from ``generator``, so a seed gives the same chain as
            ``jit=False`` up to float rounding). Each kernel pays a one-off compile of
            a few seconds; see :mod:`ebmalgebra.jit`.

    Example:
        >>> samples = ebmalgebra.sample(model, HMC(step_size=0.1, n_leapfrog=16), n_chains=100,
        ...                             n_steps=1000, warmup=500)
        >>> samples.state.inverse_mass  # the adapted metric
    """

    name = "HMC"
    leaves_target_invariant = True
    tempering_step_exponent = 0.5
    adaptation_flags = ("adapt_step_size", "adapt_mass")

    def __init__(
        self,
        *,
        step_size: float | Tensor = 0.1,
        n_leapfrog: int = 10,
        jitter: float = 0.2,
        metric: str | type[Metric] = "diag",
        inverse_mass: Tensor | None = None,
        target_accept: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass: bool = True,
        max_energy_error: float = 1000.0,
        jit: bool = False,
    ) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size, jit=jit)
        validation.count(f"{self.name}: n_leapfrog", n_leapfrog)
        validation.in_interval(f"{self.name}: jitter", jitter, closed_low=True)
        self._metric_class = metric_class(metric, self.name)
        self.n_leapfrog = n_leapfrog
        self.jitter = float(jitter)
        self.metric = metric
        self.inverse_mass = given_inverse_mass(inverse_mass, self.name)
        self.adapt_mass = adapt_mass
        validation.positive(f"{self.name}: max_energy_error", max_energy_error)
        self.max_energy_error = float(max_energy_error)
        # ⌈L₀(1 − j)⌉ … ⌊L₀(1 + j)⌋, with a tolerance for float products like 10 · 1.2.
        self._lowest = max(1, math.ceil(n_leapfrog * (1.0 - self.jitter) - 1e-9))
        self._highest = max(self._lowest, math.floor(n_leapfrog * (1.0 + self.jitter) + 1e-9))
        self._shared_step = Derived(shared_value)  # read once per step-size tensor

    # ------------------------------------------------------------------ init
    def init(self, x0: Tensor, model: EnergyModel) -> HMCState:
        potential = Potential(model, operation=self.name, needs_energy=self.needs_energy)
        potential.check(x0, self.name)
        position = x0.detach()
        energy, score = potential.energy_and_score(position)
        step_size = as_chain_values(self.step_size, position, f"{self.name}: step_size")
        metric = self._metric_class.starting(self.inverse_mass, position, self.name)
        return HMCState(position, energy, score, step_size, metric, potential)

    # ------------------------------------------------------------------ step
    def _draw_n_leapfrog(self, like: Tensor, generator: torch.Generator | None) -> int:
        if self._lowest == self._highest:
            return self._lowest
        device = generator.device if generator is not None else like.device
        return int(torch.randint(self._lowest, self._highest + 1, (), generator=generator,
                                 device=device))

    def step(self, state: HMCState, generator: torch.Generator | None = None,
             ) -> tuple[HMCState, HMCInfo]:
        x = state.position
        n_leapfrog = self._draw_n_leapfrog(x, generator)
        return run_update(self.update, self.jit, state, draw_normal(x, generator),
                          draw_uniform(x, generator), n_leapfrog,
                          self._shared_step(state.step_size))

    def update(self, state: HMCState, noise: Tensor, uniform: Tensor, n_leapfrog: int,
               shared_step_size: Tensor | None = None) -> tuple[HMCState, HMCInfo]:
        """The deterministic part of a step given its random numbers: ξ ~ N(0, I) like
        the position (momentum p = F ξ ~ N(0, M)), u ~ U(0, 1) per chain and the number of
        leapfrog steps. Traceable whole by ``torch.compile`` (one graph per length).
        ``shared_step_size``: the step size as a 0-d tensor when every chain has the same
        (see :func:`~ebmalgebra.samplers.integrators.integrate`)."""
        metric = state.metric
        start = PhasePoint(state.position, metric.momentum_from_noise(noise), state.energy,
                           state.score)
        x, p, energy, score = integrate(start, state.step_size, metric,
                                        state.potential.energy_and_score, n_leapfrog,
                                        shared_step_size)
        # The initial kinetic energy of p = F ξ is ½ ‖ξ‖² (Metric.momentum_from_noise).
        energy_error = (energy - state.energy) + (
            metric.kinetic_energy(p) - 0.5 * squared_norm(noise))
        if sum_is_finite_eagerly(energy_error):
            # The usual case, read from one sum: every error is finite, so every end
            # point's energy and momentum, hence score (p′ = p + ½ε s′, ε > 0), is too.
            # The masks below then hold what the row-wise checks would give.
            nonfinite = torch.zeros_like(uniform, dtype=torch.bool)
            accepted, probability = metropolis_accept(-energy_error, None, uniform,
                                                      ratios_finite=True)
            divergent = energy_error > self.max_energy_error
        else:
            finite = finite_rows(energy, score)
            nonfinite = ~finite
            accepted, probability = metropolis_accept(-energy_error, finite, uniform)
            # NaN errors (∞ − ∞ from an overflowing kinetic energy) count as divergent.
            divergent = ~(energy_error <= self.max_energy_error)
        new_state = state._replace(
            position=select(accepted, x, state.position),
            energy=torch.where(accepted, energy, state.energy),
            score=select(accepted, score, state.score),
        )
        return new_state, HMCInfo(probability, accepted, energy_error, divergent, nonfinite,
                                  n_leapfrog)
