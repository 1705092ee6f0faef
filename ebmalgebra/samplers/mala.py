"""Metropolis-adjusted Langevin algorithm (MALA)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel
from ebmalgebra.samplers.base import (
    Derived,
    Potential,
    StepSizeSampler,
    any_set,
    draw_normal,
    draw_uniform,
    expand_to_event,
    finite_rows,
    metropolis_accept,
    run_update,
    select,
    squared_norm,
    sum_is_finite_eagerly,
)
from ebmalgebra.samplers.langevin import (
    LangevinScales,
    LangevinState,
    init_langevin,
    langevin_scales,
    none_frozen_eagerly,
    shared_langevin_scales,
)

__all__ = ["MALA", "MALAInfo", "mala_step", "mala_update"]


class MALAInfo(NamedTuple):
    """Per-step facts, one entry per chain.

    Attributes:
        acceptance_rate: the acceptance probability min(1, exp(log α)).
        is_accepted: whether the proposal was taken.
        nonfinite: the proposal's energy or score was NaN or ±∞ (it was rejected).
    """

    acceptance_rate: Tensor
    is_accepted: Tensor
    nonfinite: Tensor


def mala_step(state: LangevinState, generator: torch.Generator | None, *,
              keep_frozen: bool = False) -> tuple[LangevinState, MALAInfo]:
    """One MALA transition of every chain (see :class:`MALA` for the math)."""
    x = state.position
    return mala_update(state, draw_normal(x, generator), draw_uniform(x, generator),
                       keep_frozen=keep_frozen)


def mala_update(state: LangevinState, noise: Tensor, uniform: Tensor,
                scales: LangevinScales | None = None, none_frozen: bool = False, *,
                keep_frozen: bool = False,
                ) -> tuple[LangevinState, MALAInfo]:
    """The deterministic part of a MALA step, given its random numbers.

    ``noise`` ξ ~ N(0, I) is shaped like the position, ``uniform`` u ~ U(0, 1) is
    ``(n_chains,)``. Traceable whole by ``torch.compile``: no host synchronisation there
    or on accelerators (eagerly on the CPU, one read of the sum of the log acceptance
    ratios skips the acceptance mask: a non-finite energy or score makes its row's ratio,
    so the sum, non-finite).
    Chains that start at a non-finite point never move (their ratio is NaN);
    ``keep_frozen`` also holds chains marked in ``state.frozen`` (annealing).
    ``scales``: ε and σ = √(2ε) shaped to broadcast against the position
    (:func:`~ebmalgebra.samplers.langevin.langevin_scales` of ``state.step_size``) when
    the caller has them at hand (:class:`MALA` computes them once per step size);
    computed here when ``None``. ``none_frozen``: the caller knows that no chain of
    ``state`` is frozen, so ``state.frozen`` serves as the all-clear ``nonfinite`` mask
    when every proposal is finite.
    """
    x, energy, score, step_size, frozen, potential = state
    epsilon, sigma = langevin_scales(step_size, x.dim()) if scales is None else scales
    proposal = torch.addcmul(torch.addcmul(x, epsilon, score), sigma, noise)
    new_energy, new_score = potential.energy_and_score(proposal)
    # log q(x′ | x) = −‖ξ‖²/2 and log q(x | x′) = −‖x − x′ − ε s(x′)‖²/(4ε), up to the
    # same constant; the factors ½ and ¼ are powers of two, so folding them into fused
    # ops rounds exactly as the separate products and quotient would.
    backward = torch.addcmul(x - proposal, epsilon, new_score, value=-1.0)
    log_ratio = torch.addcdiv(torch.add(energy - new_energy, squared_norm(noise), alpha=0.5),
                              squared_norm(backward), step_size, value=-0.25)
    ratios_finite = sum_is_finite_eagerly(log_ratio)  # the usual case: no row needs a mask
    if ratios_finite:
        finite = None
        nonfinite = frozen if none_frozen else torch.zeros_like(uniform, dtype=torch.bool)
    else:
        finite = finite_rows(new_energy, new_score)
        nonfinite = ~finite
    accepted, probability = metropolis_accept(log_ratio, finite, uniform,
                                              ratios_finite=ratios_finite)
    if keep_frozen:
        accepted = accepted & ~frozen
    rows = expand_to_event(accepted, x)
    new_state = LangevinState(
        select(rows, proposal, x),
        torch.where(accepted, new_energy, energy),
        select(rows, new_score, score),
        step_size,
        frozen,
        potential,
    )
    return new_state, MALAInfo(probability, accepted, nonfinite)


class MALA(StepSizeSampler):
    """Metropolis-adjusted Langevin: a Langevin proposal corrected to sample p exactly.

    Proposal (one ULA step) x′ = x + ε s(x) + √(2ε) ξ, i.e.
    q(x′ | x) = N(x′; x + ε s(x), 2ε I). Accept with probability min(1, α),

        log α = E(x) − E(x′) + log q(x | x′) − log q(x′ | x)
              = E(x) − E(x′) − ‖x − x′ − ε s(x′)‖²/(4ε) + ‖x′ − x − ε s(x)‖²/(4ε).

    The proposal-density ratio is what makes the chain exact; without it the
    stationary law is biased (the stationarity test in tests/test_samplers.py
    shows it). The score at the current point is cached in the state, so a step
    costs one energy-and-score evaluation. Needs energies: score-only models raise
    :class:`~ebmalgebra.CapabilityError`.

    Non-finite values: proposals with a NaN or infinite energy or score are
    rejected and counted (``info.nonfinite``).

    Args:
        step_size: ε, a float or one value per chain ``(n_chains,)``. For a
            Gaussian with smallest standard deviation σ_min, ε ≈ σ_min² is a good start.
        target_accept: acceptance rate that warmup tunes ε towards (0.574 is optimal
            in high dimension, Roberts & Rosenthal 1998).
        adapt_step_size: tune ε by dual averaging during warmup, pooled over chains.
        jit: compile the whole deterministic update with ``torch.compile`` (one
            kernel per step; random numbers still come from ``generator``, so a seed
            gives the same chain as ``jit=False`` up to float rounding). The first
            step pays a one-off compile of a few seconds; see :mod:`ebmalgebra.jit`.

    Example:
        >>> samples = ebmalgebra.sample(ring & bar, MALA(step_size=0.05), n_chains=512,
        ...                             n_steps=1000, warmup=200)
    """

    name = "MALA"
    leaves_target_invariant = True
    tempering_step_exponent = 1.0

    def __init__(self, *, step_size: float | Tensor = 0.1, target_accept: float = 0.574,
                 adapt_step_size: bool = True, jit: bool = False) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size, jit=jit)

        self._scales = Derived(shared_langevin_scales)
        self._any_frozen = Derived(any_set)

    def init(self, x0: Tensor, model: EnergyModel) -> LangevinState:
        return init_langevin(x0, Potential(model, operation=self.name,
                                           needs_energy=self.needs_energy),
                             self.step_size, self.name)

    def step(self, state: LangevinState, generator: torch.Generator | None = None,
             ) -> tuple[LangevinState, MALAInfo]:
        x = state.position
        return run_update(mala_update, self.jit, state, draw_normal(x, generator),
                          draw_uniform(x, generator), self._scales(state.step_size, x.dim()),
                          none_frozen_eagerly(self._any_frozen, state.frozen, self.jit))
