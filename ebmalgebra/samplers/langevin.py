"""Unadjusted Langevin algorithm (ULA), and the state Langevin-type samplers share."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.samplers.base import (
    Derived,
    Potential,
    Sampler,
    all_finite_eagerly,
    any_set,
    as_chain_values,
    check_step_size,
    draw_normal,
    expand_to_rank,
    finite_rows,
    local_chain_values,
    none_set_eagerly,
    run_update,
    select,
    shared_value,
)

__all__ = ["LangevinScales", "LangevinState", "ULA", "ULAInfo", "langevin_scales",
           "none_frozen_eagerly", "shared_langevin_scales", "ula_step", "ula_update"]


class LangevinState(NamedTuple):
    """State of ULA, MALA and annealed Langevin.

    Attributes:
        position: ``(n_chains, *event_shape)``.
        energy: E(position), ``(n_chains,)``; NaN for score-only models.
        score: s(position) = −∇E, like ``position``.
        step_size: ε per chain, ``(n_chains,)``.
        frozen: ``(n_chains,)`` chains stopped because a step produced a NaN or
            infinite energy or score; they stay at their last finite position.
        potential: the compiled model (see :class:`~ebmalgebra.samplers.Potential`).
    """

    position: Tensor
    energy: Tensor
    score: Tensor
    step_size: Tensor
    frozen: Tensor
    potential: Potential


class ULAInfo(NamedTuple):
    """Per-step facts, one entry per chain.

    Attributes:
        nonfinite: this step's proposal had a NaN/inf energy or score, so the
            chain froze.
        frozen: the chain is frozen (now or earlier).
    """

    nonfinite: Tensor
    frozen: Tensor


class LangevinScales(NamedTuple):
    """The scales of a Langevin proposal x′ = x + ε s(x) + σ ξ, per chain and shaped
    ``(n_chains, 1, …, 1)`` to broadcast against positions.

    Attributes:
        step_size: ε.
        noise_scale: σ (a float when one value serves every chain).
    """

    step_size: Tensor
    noise_scale: Tensor | float


def langevin_scales(step_size: Tensor, position_rank: int,
                    noise_scale: float | Tensor | None = None) -> LangevinScales:
    """ε and σ for positions with ``position_rank`` dimensions, from the step size
    ``(n_chains,)``: σ = √(2ε) when ``noise_scale`` is ``None``, else ``noise_scale``
    (a float, or per chain ``(n_chains,)``).

    Samplers cache the result between changes of the step size
    (:class:`~ebmalgebra.samplers.base.Derived`), which keeps these reshapes and the
    square root out of every step.
    """
    epsilon = expand_to_rank(step_size, position_rank)
    if noise_scale is None:
        return LangevinScales(epsilon, (2.0 * epsilon).sqrt())
    return LangevinScales(epsilon, expand_to_rank(noise_scale, position_rank))


def shared_langevin_scales(step_size: Tensor, position_rank: int) -> LangevinScales:
    """:func:`langevin_scales` of the step size ``(n_chains,)``, with ε and σ = √(2ε) as 0-d
    tensors when every chain has the same step size
    (:func:`~ebmalgebra.samplers.base.shared_value`): the same proposals, with each scaled
    op one loop over all coordinates instead of one per chain row. Read once per step-size
    tensor by the samplers' cache.
    """
    shared = shared_value(step_size)
    return langevin_scales(step_size if shared is None else shared, position_rank)


def init_langevin(x0: Tensor, potential: Potential, step_size: float | Tensor,
                  operation: str) -> LangevinState:
    """Evaluate the potential at ``x0``; chains starting at non-finite points are frozen."""
    potential.check(x0, operation)
    position = x0.detach()
    energy, score = potential.energy_and_score(position)
    frozen = ~finite_rows(energy if potential.has_energy else None, score)
    step = as_chain_values(step_size, position, f"{operation}: step_size")
    return LangevinState(position, energy, score, step, frozen, potential)


def none_frozen_eagerly(any_frozen: Derived, frozen: Tensor, jit: bool) -> bool:
    """Whether no chain of the ``frozen`` mask ``(n_chains,)`` is set, known only eagerly
    on the CPU: ``any_frozen`` (a :class:`~ebmalgebra.samplers.base.Derived` of
    :func:`~ebmalgebra.samplers.base.any_set`) reads a mask once, then recognises it.
    False under ``jit``, whose compiled kernel guards row-wise."""
    return not jit and frozen.device.type == "cpu" and not any_frozen(frozen)


def ula_step(state: LangevinState, generator: torch.Generator | None,
             noise_scale: float | Tensor | None = None) -> tuple[LangevinState, ULAInfo]:
    """x′ = x + ε s(x) + σ ξ with σ = √(2ε) unless ``noise_scale`` is given."""
    x = state.position
    return ula_update(state, draw_normal(x, generator),
                      langevin_scales(state.step_size, x.dim(), noise_scale))


def ula_update(state: LangevinState, noise: Tensor, scales: LangevinScales | None = None,
               none_frozen: bool = False) -> tuple[LangevinState, ULAInfo]:
    """The deterministic part of a ULA step given ``noise`` ξ ~ N(0, I) like the position:
    x′ = x + ε s(x) + σ ξ with ε and σ from ``scales`` (:func:`langevin_scales` of the
    state's step size), ε = ``state.step_size`` and σ = √(2ε) when ``None``.

    ``none_frozen``: the caller knows that no chain of ``state`` is frozen, so when
    every proposal is finite (two whole-tensor sums) the step returns at once,
    with ``state.frozen`` as the all-clear masks; otherwise the row-wise guard runs.
    Traceable whole by ``torch.compile`` (the eager-only shortcuts of
    :func:`~ebmalgebra.samplers.base.all_finite_eagerly` and
    :func:`~ebmalgebra.samplers.base.none_set_eagerly` switch themselves off).
    """
    x, energy, score, step_size, frozen, potential = state
    epsilon, sigma = langevin_scales(step_size, x.dim()) if scales is None else scales
    # Fused multiply-adds: this loop runs once per step, so op count is speed here.
    drift = torch.addcmul(x, epsilon, score)
    proposal = (torch.addcmul(drift, sigma, noise) if isinstance(sigma, Tensor)
                else drift.add(noise, alpha=sigma))
    new_energy, new_score = potential.energy_and_score(proposal)
    checked = new_energy if potential.has_energy else None
    if none_frozen and all_finite_eagerly(checked, new_score):
        new_state = LangevinState(proposal, new_energy, new_score, step_size, frozen, potential)
        return new_state, ULAInfo(frozen, frozen)
    finite = finite_rows(checked, new_score)
    now_frozen = finite <= frozen  # frozen or not finite (bools: a <= b is ¬a ∨ b)
    if none_set_eagerly(now_frozen):
        newly_frozen = now_frozen  # all False
    else:
        moving = ~now_frozen
        proposal = select(moving, proposal, x)
        new_energy = torch.where(moving, new_energy, energy)
        new_score = select(moving, new_score, score)
        newly_frozen = now_frozen ^ frozen
    new_state = LangevinState(proposal, new_energy, new_score, step_size, now_frozen, potential)
    return new_state, ULAInfo(newly_frozen, now_frozen)


class ULA(Sampler):
    """Unadjusted Langevin algorithm: x′ = x + ε s(x) + √(2ε) ξ, ξ ~ N(0, I).

    The Euler–Maruyama discretisation of the Langevin diffusion
    dx = s(x) dt + √2 dW with time step ε (the step size multiplies the score).
    There is no accept/reject step, so the chain is **biased**: its stationary
    law differs from p by O(ε). For a Gaussian N(μ, σ²) the chain is an AR(1)
    process x′ − μ = (1 − ε/σ²)(x − μ) + √(2ε) ξ whose stationary variance is
    σ² / (1 − ε/(2σ²)) (and it diverges for ε ≥ 2σ²). Use :class:`MALA` for
    exact sampling.

    ULA needs only scores, so it runs on score-only models (``from_score``); the
    state's energy is then NaN.

    Non-finite values: a chain whose proposal has a NaN or infinite energy or
    score is **frozen** at its last finite position for the rest of the run
    (``state.frozen``, ``info.frozen``), since an unadjusted chain has nothing to
    reject to.

    Args:
        step_size: ε, a float or one value per chain ``(n_chains,)``.
        noise_scale: σ of the injected noise, replacing √(2ε): a float or one value
            per chain. Decoupling it gives the "SGLD" used for contrastive
            divergence (Du & Mordatch 2019: x′ = x − (λ/2)∇E + ω, ω ~ N(0, σ²));
            the chain then targets roughly p^{2ε/σ²}, a tempered model, not p.
        jit: compile the whole deterministic update with ``torch.compile`` (one
            kernel per step; random numbers still come from ``generator``, so a seed
            gives the same chain as ``jit=False`` up to float rounding). The first
            step pays a one-off compile of a few seconds; see :mod:`ebmalgebra.jit`.

    Example:
        >>> samples = ebmalgebra.sample(model, ULA(step_size=0.01), n_chains=256, n_steps=500)
    """

    name = "ULA"
    needs_energy = False
    not_invariant_because = (
        "it has no Metropolis–Hastings correction, so its stationary law differs from the "
        "target by O(step_size) and estimates built on it are biased")

    def __init__(self, *, step_size: float | Tensor = 0.01,
                 noise_scale: float | Tensor | None = None, jit: bool = False) -> None:
        self.step_size = check_step_size(step_size, f"{self.name}: step_size")
        self.noise_scale = None if noise_scale is None else check_step_size(
            noise_scale, f"{self.name}: noise_scale")
        self.jit = validation.flag(f"{self.name}: jit", jit)
        self._scales = Derived(shared_langevin_scales)
        self._any_frozen = Derived(any_set)

    def init(self, x0: Tensor, model: EnergyModel) -> LangevinState:
        potential = Potential(model, operation=self.name, needs_energy=self.needs_energy)
        state = init_langevin(x0, potential, self.step_size, self.name)
        if isinstance(self.noise_scale, Tensor):
            as_chain_values(self.noise_scale, state.position, f"{self.name}: noise_scale")
        return state

    def step(self, state: LangevinState, generator: torch.Generator | None = None,
             ) -> tuple[LangevinState, ULAInfo]:
        x = state.position
        noise_scale = self.noise_scale
        if noise_scale is None:
            scales = self._scales(state.step_size, x.dim())  # ε and √(2ε), hoisted
        else:
            if isinstance(noise_scale, Tensor):
                noise_scale = local_chain_values(noise_scale).to(x)
            scales = langevin_scales(state.step_size, x.dim(), noise_scale)
        none_frozen = none_frozen_eagerly(self._any_frozen, state.frozen, self.jit)
        return run_update(ula_update, self.jit, state, draw_normal(x, generator), scales,
                          none_frozen)
