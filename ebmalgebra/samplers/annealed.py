"""Annealed Langevin / MALA over a sequence of noise levels or of models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.samplers.base import Potential, Sampler, check_step_size, is_nonfinite
from ebmalgebra.samplers.langevin import LangevinState, init_langevin, ula_step
from ebmalgebra.samplers.mala import mala_step
from ebmalgebra.schedules import NoiseSchedule

__all__ = ["AnnealedInfo", "AnnealedLangevin", "AnnealedState"]


class AnnealedState(NamedTuple):
    """State of annealed Langevin.

    Attributes:
        position, energy, score, frozen: as in :class:`~ebmalgebra.samplers.LangevinState`,
            for the current level's model.
        step_size: the current level's step size per chain, ``(n_chains,)``.
        base_step_size: the step size at the last level per chain; level k uses
            ``base_step_size · scales[k]``.
        level: index of the current level (the last level repeats forever).
        iteration: steps taken so far.
        levels: one :class:`~ebmalgebra.samplers.Potential` per level.
        potential: ``levels[level]``.
    """

    position: Tensor
    energy: Tensor
    score: Tensor
    step_size: Tensor
    frozen: Tensor
    base_step_size: Tensor
    level: int
    iteration: int
    levels: tuple[Potential, ...]
    potential: Potential
    scales: tuple[float, ...]


class AnnealedInfo(NamedTuple):
    """Per-step facts, one entry per chain.

    Attributes:
        acceptance_rate: MALA acceptance probability at corrected levels, 1 at
            unadjusted ones (where every move is taken).
        nonfinite: this step's proposal had a NaN/inf energy or score; rejected at
            corrected levels, freezing the chain at unadjusted ones.
        frozen: the chain is frozen.
        level: the level this step ran at.
    """

    acceptance_rate: Tensor
    nonfinite: Tensor
    frozen: Tensor
    level: int


class AnnealedLangevin(Sampler):
    """Langevin dynamics through a sequence of distributions that ends at the target.

    Runs ``steps_per_level`` Langevin steps at each level k = 0 … K−1, then keeps
    running at the last level (so after the annealing phase it is plain ULA or
    MALA on the target). Levels are either

    * **noise levels** t₀ > t₁ > … > t_{K−1} of a noise-conditioned model E(x, t)
      (annealed Langevin dynamics, Song & Ermon 2019): level k targets
      exp(−E(x, t_k)) with step size ε_k = ε · (σ(t_k) / σ(t_{K−1}))², so ε is the
      step at the smallest noise; σ(t) is that of the model's noise schedule (its
      leaves' ``schedule``, e.g. ``VP()`` where t is time), or t itself for leaves
      without one (VE, the zoo: t is σ); or
    * **models** m₀, …, m_{K−2} followed by the target passed to ``init`` (e.g. a
      tempering path ``[target ** 0.1, target ** 0.3]``), all with step size ε.

    Each step is a ULA step x′ = x + ε_k s_k(x) + √(2ε_k) ξ, or a MALA step (the
    same proposal plus the Metropolis–Hastings correction) at levels selected by
    ``mala``. FINDINGS: about 60 noise levels, with MALA at low noise (t < 0.5),
    sample composed noise-conditioned models reliably. Moving to a new level
    re-evaluates energy and score at the current positions (one extra evaluation
    per level).

    Per-chain step sizes (a tensor ``(n_chains,)``) are allowed; with
    ``adapt_step_size`` each chain's step size is also tuned during the annealing
    phase at corrected levels, ε_c ← min(ε_c · exp(½(α_c − target_accept)), g · ε_c⁰),
    which shrinks the steps of chains that drift into stiff regions. The ceiling
    g · ε_c⁰ (g = ``max_step_growth``, ε_c⁰ the chain's initial ``step_size``)
    stops the opposite failure: where the energy is nearly flat (a denoiser far
    from its data) nearly every move is accepted and the step would otherwise
    grow by ≈ e^0.21 per step without bound. Adaptation stops at the end of the
    annealing phase, so the final MALA chain is exact.

    Score-only models work when no level is corrected.

    Args:
        noise_levels: decreasing positive noise levels t (give this or ``models``).
        models: intermediate models before the target (give this or ``noise_levels``).
        steps_per_level: Langevin steps at each level before moving on.
        step_size: ε at the last level; a float or one value per chain.
        mala: ``True`` corrects every level, ``False`` none, a number τ corrects
            the noise levels t < τ.
        target_accept: acceptance rate the per-chain adaptation aims at.
        adapt_step_size: tune per-chain step sizes at corrected levels while annealing.
        max_step_growth: the most adaptation may multiply a chain's initial step
            size by (≥ 1; ``math.inf`` removes the ceiling).
        schedule: the :class:`~ebmalgebra.schedules.NoiseSchedule` giving σ(t) for the
            step sizes; default the one the model's noise-conditioned leaves carry
            (``schedule`` attribute), else σ = t.

    Example:
        >>> sampler = AnnealedLangevin(noise_levels=torch.logspace(1, -2, 60).tolist(),
        ...                            steps_per_level=5, step_size=1e-4, mala=0.5)
        >>> samples = ebmalgebra.sample(glasses & hat, sampler, n_chains=256,
        ...                             warmup=sampler.n_annealing_steps, n_steps=1)
    """

    name = "AnnealedLangevin"
    not_invariant_because = (
        "it targets its own levels (noise levels or models) before the target, and is "
        "unadjusted Langevin wherever mala= does not correct it")

    def __init__(
        self,
        *,
        noise_levels: Sequence[float] | Tensor | None = None,
        models: Sequence[EnergyModel] | None = None,
        steps_per_level: int = 10,
        step_size: float | Tensor = 0.01,
        mala: bool | float = False,
        target_accept: float = 0.574,
        adapt_step_size: bool = False,
        max_step_growth: float = 1000.0,
        schedule: NoiseSchedule | None = None,
    ) -> None:
        if schedule is not None:
            validation.instance(f"{self.name}: schedule", schedule, NoiseSchedule,
                                "a NoiseSchedule (VE(), VP(), DiscreteVP(...))")
        if (noise_levels is None) == (models is None):
            raise ArgumentError(f"{self.name}: give exactly one of noise_levels, models")
        if noise_levels is not None:
            self.noise_levels: tuple[float, ...] | None = validation.decreasing(
                f"{self.name}: noise_levels", noise_levels)
            self.models: tuple[EnergyModel, ...] | None = None
        else:
            self.noise_levels = None
            self.models = tuple(models)
            if not isinstance(mala, bool):
                raise ArgumentError(f"{self.name}: a noise threshold mala={mala} needs "
                                    "noise_levels; use mala=True or False with models")
        validation.count(f"{self.name}: steps_per_level", steps_per_level)
        if not isinstance(mala, bool) and not (isinstance(mala, int | float) and mala > 0):
            raise ArgumentError(f"{self.name}: mala must be True, False or a positive noise "
                                f"threshold, got {mala!r}")
        validation.in_interval(f"{self.name}: target_accept", target_accept)
        if not (isinstance(max_step_growth, int | float) and max_step_growth == math.inf):
            validation.at_least(f"{self.name}: max_step_growth", max_step_growth, 1)
        self.steps_per_level = steps_per_level
        self.step_size = check_step_size(step_size, f"{self.name}: step_size")
        self.mala = mala
        self.target_accept = target_accept
        self.adapt_step_size = adapt_step_size
        self.max_step_growth = float(max_step_growth)
        self.schedule = schedule

    @property
    def n_levels(self) -> int:
        return len(self.noise_levels) if self.noise_levels is not None else len(self.models) + 1

    @property
    def n_annealing_steps(self) -> int:
        """Steps until the last level has had its ``steps_per_level``: a natural warmup."""
        return self.n_levels * self.steps_per_level

    @property
    def needs_energy(self) -> bool:
        """Energies are needed only where a level is MALA-corrected."""
        return any(self._corrected(k) for k in range(self.n_levels))

    def _corrected(self, level: int) -> bool:
        if isinstance(self.mala, bool):
            return self.mala
        return self.noise_levels[level] < float(self.mala)

    def _scales(self, model: EnergyModel) -> tuple[float, ...]:
        """(σ(t_k) / σ(t_{K−1}))² per level (all 1 on a path of models)."""
        if self.noise_levels is None:
            return (1.0,) * self.n_levels
        schedule = self.schedule or _schedule_of(model, self.name)
        levels = torch.tensor(self.noise_levels, dtype=torch.float64)
        sigmas = levels if schedule is None else schedule.sigma(levels).double()
        return tuple(((sigmas / sigmas[-1]) ** 2).tolist())

    def init(self, x0: Tensor, model: EnergyModel) -> AnnealedState:
        needs_energy = self.needs_energy
        operation = f"{self.name}(mala={self.mala!r})"
        if self.noise_levels is not None:
            base = Potential(model, operation=operation, needs_energy=needs_energy)
            if not any(getattr(leaf, "noise_conditioned", False)
                       for leaf in base.model.leaf_models):
                raise CompositionError(
                    f"{self.name}: noise_levels were given but no part of {model!r} is "
                    "noise-conditioned (build leaves with noise_conditioned=True)"
                )
            levels = tuple(base.replace(t=t) for t in self.noise_levels)
        else:
            levels = tuple(Potential(m, operation=operation, needs_energy=needs_energy)
                           for m in (*self.models, model))
        first = init_langevin(x0, levels[0], self.step_size, self.name)
        base_step = first.step_size
        scales = self._scales(model)
        return AnnealedState(first.position, first.energy, first.score,
                             base_step * scales[0], first.frozen, base_step, 0, 0,
                             levels, levels[0], scales)

    def step(self, state: AnnealedState, generator: torch.Generator | None = None,
             ) -> tuple[AnnealedState, AnnealedInfo]:
        level = min(state.iteration // self.steps_per_level, self.n_levels - 1)
        entered_bad = None
        if level != state.level:
            state, entered_bad = self._enter(state, level)
        langevin = LangevinState(state.position, state.energy, state.score, state.step_size,
                                 state.frozen, state.potential)
        corrected = self._corrected(level)
        if corrected:
            langevin, info = mala_step(langevin, generator, keep_frozen=True)
            acceptance, nonfinite = info.acceptance_rate, info.nonfinite
        else:
            langevin, info = ula_step(langevin, generator, None)
            acceptance = torch.ones_like(langevin.energy)
            nonfinite = info.nonfinite
        if entered_bad is not None:
            nonfinite = nonfinite | entered_bad
        base_step = state.base_step_size
        annealing = state.iteration < self.n_annealing_steps
        if corrected and self.adapt_step_size and annealing:
            factor = torch.exp(0.5 * (acceptance - self.target_accept))
            ceiling = self.max_step_growth * torch.as_tensor(self.step_size).to(base_step)
            adapted = torch.minimum(base_step * factor, ceiling)
            base_step = torch.where(langevin.frozen, base_step, adapted)
        new_state = AnnealedState(langevin.position, langevin.energy, langevin.score,
                                  base_step * state.scales[level], langevin.frozen, base_step,
                                  level, state.iteration + 1, state.levels, state.potential,
                                  state.scales)
        return new_state, AnnealedInfo(acceptance, nonfinite, langevin.frozen, level)

    def _enter(self, state: AnnealedState, level: int) -> tuple[AnnealedState, Tensor]:
        """Switch to ``level``: re-evaluate energy and score there; chains whose new
        values are non-finite are frozen (returned as a mask)."""
        potential = state.levels[level]
        energy, score = potential.energy_and_score(state.position)
        bad = is_nonfinite(energy if potential.has_energy else None, score) & ~state.frozen
        return state._replace(energy=energy, score=score,
                              step_size=state.base_step_size * state.scales[level],
                              frozen=state.frozen | bad, level=level, potential=potential), bad


def _schedule_of(model: EnergyModel, operation: str) -> NoiseSchedule | None:
    """The noise schedule the noise-conditioned leaves of ``model`` declare (their
    ``schedule``), ``None`` when none does; leaves that disagree raise."""
    schedules = {repr(leaf.schedule): leaf.schedule for leaf in model.leaves()
                 if isinstance(getattr(leaf, "schedule", None), NoiseSchedule)}
    if len(schedules) > 1:
        raise CompositionError(f"{operation}: the leaves of {model!r} use different noise "
                               f"schedules ({', '.join(schedules)}); give schedule= for the "
                               "step sizes")
    return next(iter(schedules.values()), None)
