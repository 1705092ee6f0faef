"""Random-walk Metropolis–Hastings: needs energies only, no gradients."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel
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
)

__all__ = ["MHInfo", "MHState", "RandomWalkMH"]


class MHState(NamedTuple):
    """Random-walk MH state.

    Attributes:
        position: ``(n_chains, *event_shape)``.
        energy: E(position), ``(n_chains,)``.
        step_size: proposal standard deviation σ per chain, ``(n_chains,)``.
        potential: the compiled model (see :class:`~ebmalgebra.samplers.Potential`).

    No score is cached: random-walk proposals never need one, and computing it
    would cost a gradient per step.
    """

    position: Tensor
    energy: Tensor
    step_size: Tensor
    potential: Potential


class MHInfo(NamedTuple):
    """Per-step facts, one entry per chain.

    Attributes:
        acceptance_rate: min(1, p̃(x′)/p̃(x)), the acceptance probability.
        is_accepted: whether the proposal was taken.
        nonfinite: the proposal's energy was NaN or ±∞ (it was rejected).
    """

    acceptance_rate: Tensor
    is_accepted: Tensor
    nonfinite: Tensor


class RandomWalkMH(StepSizeSampler):
    """Random-walk Metropolis–Hastings with an isotropic Gaussian proposal.

    Proposal x′ = x + σ ξ, ξ ~ N(0, I); accept with probability
    min(1, exp(E(x) − E(x′))) (the proposal is symmetric, so no density ratio).
    Needs only energies; score-only models raise
    :class:`~ebmalgebra.CapabilityError`.

    Args:
        step_size: σ, a float or one value per chain ``(n_chains,)``.
        target_accept: acceptance rate that warmup tunes σ towards by dual
            averaging (0.234 is optimal for high-dimensional targets,
            Roberts, Gelman & Gilks 1997).
        adapt_step_size: tune σ during warmup (pooled over chains).
        jit: compile the whole deterministic update with ``torch.compile`` (one
            kernel per step; random numbers still come from ``generator``, so a seed
            gives the same chain as ``jit=False`` up to float rounding). The first
            step pays a one-off compile of a few seconds; see :mod:`ebmalgebra.jit`.

    Example:
        >>> samples = ebmalgebra.sample(model, RandomWalkMH(step_size=0.5), n_chains=64,
        ...                             n_steps=2000, warmup=500)
    """

    name = "RandomWalkMH"
    leaves_target_invariant = True
    tempering_step_exponent = 0.5

    def __init__(self, *, step_size: float | Tensor = 0.5, target_accept: float = 0.234,
                 adapt_step_size: bool = True, jit: bool = False) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size, jit=jit)

    def init(self, x0: Tensor, model: EnergyModel) -> MHState:
        potential = Potential(model, operation=self.name, needs_energy=self.needs_energy,
                              needs_score=False)
        potential.check(x0, self.name)
        position = x0.detach()
        step_size = as_chain_values(self.step_size, position, f"{self.name}: step_size")
        return MHState(position, potential.energy(position).detach(), step_size, potential)

    def step(self, state: MHState, generator: torch.Generator | None = None,
             ) -> tuple[MHState, MHInfo]:
        x = state.position
        return run_update(self.update, self.jit, state, draw_normal(x, generator),
                          draw_uniform(x, generator))

    def update(self, state: MHState, noise: Tensor, uniform: Tensor) -> tuple[MHState, MHInfo]:
        """The deterministic part of a step given ξ ~ N(0, I) (like the position) and
        u ~ U(0, 1) per chain; traceable whole by ``torch.compile``."""
        x, energy, step_size, potential = state
        proposal = torch.addcmul(x, expand_to_event(step_size, x), noise)
        proposal_energy = potential.energy(proposal)
        finite = finite_rows(proposal_energy, None)
        accepted, probability = metropolis_accept(energy - proposal_energy, finite, uniform)
        new_state = MHState(
            select(accepted, proposal, x),
            torch.where(accepted, proposal_energy, energy),
            step_size,
            potential,
        )
        return new_state, MHInfo(probability, accepted, ~finite)
