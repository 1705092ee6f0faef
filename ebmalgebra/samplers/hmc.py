"""Hamiltonian Monte Carlo with a leapfrog integrator, and its warmup adaptation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel, check_count
from ebmalgebra.errors import CompositionError
from ebmalgebra.samplers.adaptation import (
    DualAveraging,
    StepSizeAdaptation,
    WelfordCovariance,
    long_enough_to_adapt,
    mass_windows,
)
from ebmalgebra.samplers.base import (
    Potential,
    StepSizeSampler,
    as_chain_values,
    draw_normal,
    draw_uniform,
    expand_to_event,
    finite_rows,
    metropolis_accept,
    run_update,
    select,
    squared_norm,
)

__all__ = ["HMC", "HMCInfo", "HMCState"]

METRICS = ("diag", "dense")


class HMCState(NamedTuple):
    """HMC state.

    Attributes:
        position: ``(n_chains, *event_shape)``.
        energy: E(position), ``(n_chains,)``.
        score: s(position) = −∇E, like ``position``; reused by the next trajectory's
            first half step, so every leapfrog step costs exactly one evaluation.
        step_size: ε per chain, ``(n_chains,)``.
        inverse_mass: M⁻¹, shaped ``event_shape`` (``metric="diag"``) or ``(d, d)``
            with d = numel of the event (``metric="dense"``).
        mass_factor: the matching factor to draw momenta p ~ N(0, M): M^{1/2}
            elementwise (diag) or the Cholesky factor L of M = L Lᵀ (dense).
        potential: the compiled model (see :class:`~ebmalgebra.samplers.Potential`).
    """

    position: Tensor
    energy: Tensor
    score: Tensor
    step_size: Tensor
    inverse_mass: Tensor
    mass_factor: Tensor
    potential: Potential


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
            the flattened event; worth it for strongly correlated targets).
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

    def __init__(
        self,
        *,
        step_size: float | Tensor = 0.1,
        n_leapfrog: int = 10,
        jitter: float = 0.2,
        metric: str = "diag",
        inverse_mass: Tensor | None = None,
        target_accept: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass: bool = True,
        max_energy_error: float = 1000.0,
        jit: bool = False,
    ) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size, jit=jit)
        check_count(n_leapfrog, "n_leapfrog")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.n_leapfrog = n_leapfrog
        self.jitter = float(jitter)
        self.metric = metric
        self.inverse_mass = None if inverse_mass is None else inverse_mass.detach()
        self.adapt_mass = adapt_mass
        self.max_energy_error = float(max_energy_error)
        # ⌈L₀(1 − j)⌉ … ⌊L₀(1 + j)⌋, with a tolerance for float products like 10 · 1.2.
        self._lowest = max(1, math.ceil(n_leapfrog * (1.0 - self.jitter) - 1e-9))
        self._highest = max(self._lowest, math.floor(n_leapfrog * (1.0 + self.jitter) + 1e-9))

    # ------------------------------------------------------------------ init
    def init(self, x0: Tensor, model: EnergyModel) -> HMCState:
        potential = Potential(model, operation=self.name)
        potential.check(x0, self.name)
        position = x0.detach()
        energy, score = potential.energy_and_score(position)
        step_size = as_chain_values(self.step_size, position, f"{self.name}: step_size")
        inverse_mass = self._initial_inverse_mass(position)
        return HMCState(position, energy, score, step_size, inverse_mass,
                        self.mass_factor(inverse_mass), potential)

    def _initial_inverse_mass(self, position: Tensor) -> Tensor:
        event_shape = position.shape[1:]
        dim = math.prod(event_shape)
        expected = tuple(event_shape) if self.metric == "diag" else (dim, dim)
        if self.inverse_mass is None:
            if self.metric == "diag":
                return torch.ones(event_shape, dtype=position.dtype, device=position.device)
            return torch.eye(dim, dtype=position.dtype, device=position.device)
        inverse_mass = self.inverse_mass.to(position)
        if tuple(inverse_mass.shape) != expected:
            raise CompositionError(f"{self.name}: inverse_mass for metric={self.metric!r} must "
                                   f"be shaped {expected}, got {tuple(inverse_mass.shape)}")
        return inverse_mass

    def mass_factor(self, inverse_mass: Tensor) -> Tensor:
        """M^{1/2} (diag) or the Cholesky factor of M = (M⁻¹)⁻¹ (dense)."""
        if self.metric == "diag":
            if not (inverse_mass > 0).all():
                raise ValueError(f"{self.name}: inverse_mass must be positive")
            return inverse_mass.rsqrt()
        factor, info = torch.linalg.cholesky_ex(torch.linalg.inv(inverse_mass))
        if info != 0:
            raise ValueError(f"{self.name}: inverse_mass must be symmetric positive definite")
        return factor

    # ------------------------------------------------------------------ step
    def _velocity(self, momentum: Tensor, inverse_mass: Tensor) -> Tensor:
        if self.metric == "diag":
            return inverse_mass * momentum
        return (momentum.reshape(momentum.shape[0], -1) @ inverse_mass).reshape(momentum.shape)

    def _kinetic(self, momentum: Tensor, inverse_mass: Tensor) -> Tensor:
        """½ pᵀ M⁻¹ p per chain."""
        return 0.5 * torch.linalg.vecdot(momentum.reshape(momentum.shape[0], -1),
                                         self._velocity(momentum, inverse_mass)
                                         .reshape(momentum.shape[0], -1))

    def _momentum(self, noise: Tensor, mass_factor: Tensor) -> Tensor:
        """p = M^{1/2} ξ ~ N(0, M) from standard normal ξ."""
        if self.metric == "diag":
            return mass_factor * noise
        return (noise.reshape(noise.shape[0], -1) @ mass_factor.mT).reshape(noise.shape)

    def _draw_n_leapfrog(self, like: Tensor, generator: torch.Generator | None) -> int:
        if self._lowest == self._highest:
            return self._lowest
        device = generator.device if generator is not None else like.device
        return int(torch.randint(self._lowest, self._highest + 1, (), generator=generator,
                                 device=device))

    def integrate(self, state: HMCState, momentum: Tensor, n_leapfrog: int,
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Leapfrog ``n_leapfrog`` steps from ``(state.position, momentum)``.

        Returns ``(position, energy, score, momentum)`` at the end; costs exactly
        ``n_leapfrog`` energy-and-score evaluations (the start's score is cached).
        """
        x, score, inverse_mass, potential = (state.position, state.score, state.inverse_mass,
                                             state.potential)
        epsilon = expand_to_event(state.step_size, x)
        half = 0.5 * epsilon
        # Diagonal metric: ε M⁻¹ once per trajectory, so each drift is one fused op.
        drift = epsilon * inverse_mass if self.metric == "diag" else None
        p = torch.addcmul(momentum, half, score)
        for index in range(n_leapfrog):
            if drift is not None:
                x = torch.addcmul(x, drift, p)
            else:
                x = torch.addcmul(x, epsilon, self._velocity(p, inverse_mass))
            energy, score = potential.energy_and_score(x)
            p = torch.addcmul(p, epsilon if index < n_leapfrog - 1 else half, score)
        return x, energy, score, p

    def step(self, state: HMCState, generator: torch.Generator | None = None,
             ) -> tuple[HMCState, HMCInfo]:
        x = state.position
        n_leapfrog = self._draw_n_leapfrog(x, generator)
        return run_update(self.update, self.jit, state, draw_normal(x, generator),
                          draw_uniform(x, generator), n_leapfrog)

    def update(self, state: HMCState, noise: Tensor, uniform: Tensor, n_leapfrog: int,
               ) -> tuple[HMCState, HMCInfo]:
        """The deterministic part of a step given its random numbers: ξ ~ N(0, I) like
        the position (momentum p = M^{1/2} ξ), u ~ U(0, 1) per chain and the number of
        leapfrog steps. Traceable whole by ``torch.compile`` (one graph per length)."""
        x, energy, score, p = self.integrate(state, self._momentum(noise, state.mass_factor),
                                             n_leapfrog)
        # With p = M^{1/2} ξ the initial kinetic energy ½ pᵀ M⁻¹ p is ½ ‖ξ‖².
        energy_error = (energy - state.energy) + (
            self._kinetic(p, state.inverse_mass) - 0.5 * squared_norm(noise))
        finite = finite_rows(energy, score)
        accepted, probability = metropolis_accept(-energy_error, finite, uniform)
        # NaN errors (∞ − ∞ from an overflowing kinetic energy) count as divergent too.
        divergent = ~(energy_error <= self.max_energy_error)
        new_state = state._replace(
            position=select(accepted, x, state.position),
            energy=torch.where(accepted, energy, state.energy),
            score=select(accepted, score, state.score),
        )
        return new_state, HMCInfo(probability, accepted, energy_error, divergent, ~finite,
                                  n_leapfrog)

    # -------------------------------------------------------------- warmup
    def adaptation(self, state: HMCState, n_warmup: int) -> WindowAdaptation | None:
        """Step size and metric adaptation, or ``None`` with neither flag or with fewer
        than ``MIN_ADAPTATION_STEPS`` warmup steps (which warns)."""
        flags = tuple(flag for flag in ("adapt_step_size", "adapt_mass") if getattr(self, flag))
        if not flags or not long_enough_to_adapt(n_warmup, self.name, flags):
            return None
        return WindowAdaptation(self, state, n_warmup)


class WindowAdaptation:
    """HMC warmup: dual-averaging ε plus Stan-style windowed M⁻¹, pooled over chains.

    Used by :func:`ebmalgebra.sample`: ``update(state, info)`` after each warmup
    step, ``finish(state)`` at the end (see :mod:`ebmalgebra.samplers.adaptation`).
    """

    def __init__(self, sampler: HMC, state: HMCState, n_warmup: int) -> None:
        self.sampler = sampler
        self.step_size = (StepSizeAdaptation(state, DualAveraging(sampler.target_accept))
                          if sampler.adapt_step_size else None)
        self.windows = dict(mass_windows(n_warmup)) if sampler.adapt_mass else {}
        self.window_end: int | None = None
        self.estimator: WelfordCovariance | None = None
        self.iteration = 0

    def update(self, state: HMCState, info: HMCInfo) -> HMCState:
        if self.step_size is not None:
            state = self.step_size.update(state, info)
        index = self.iteration
        self.iteration += 1
        if index in self.windows:
            self.window_end = self.windows[index]
            self.estimator = WelfordCovariance(dense=self.sampler.metric == "dense")
        if self.estimator is None:
            return state
        self.estimator.add(state.position)
        if self.iteration == self.window_end:
            inverse_mass = self.estimator.regularized().to(state.inverse_mass)
            self.estimator = None
            state = state._replace(inverse_mass=inverse_mass,
                                   mass_factor=self.sampler.mass_factor(inverse_mass))
            if self.step_size is not None:
                state = self.step_size.restart(state)
        return state

    def finish(self, state: HMCState) -> HMCState:
        return state if self.step_size is None else self.step_size.finish(state)
