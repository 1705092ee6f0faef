"""Drawing samples from zoo expressions: annealed Langevin over the noise levels the cards give.

A zoo model is noise-conditioned, E(x, σ). :func:`draw` starts chains from
N(μ, σ_max² I), runs Langevin dynamics at each of ``n_levels`` geometrically
spaced noise levels σ_max > … > σ_min with step ε_k = ε (σ_k / σ_min)² (ULA at
high noise, MALA below ``mala_below``), and returns the final positions.

The settings come from the cards of the zoo models in the expression
(:func:`plan_for`); the step at σ_min is divided by the expression's total
exponent (``glasses & hat`` sums two energies, so its curvature is twice a
single model's). Step sizes are fixed, not adapted: a denoiser energy is
nearly flat far from the data at small σ, where acceptance-driven adaptation
grows the steps without bound.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, input_options
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError
from ebmalgebra.samplers.escape import ImproperTargetWarning, check_final

if TYPE_CHECKING:
    from ebmalgebra.samplers.smc import SMCResult

__all__ = ["KERNELS", "SamplingPlan", "draw", "is_noise_conditioned", "plan_for", "run_smc",
           "total_exponent"]

KERNELS = ("annealed", "mala", "ula", "hmc", "smc")
"""Kernel names :func:`draw` (and the CLI's ``--sampler``) accept."""


@dataclass(frozen=True)
class SamplingPlan:
    """Annealed-Langevin settings for one expression.

    Attributes:
        sigma_max, sigma_min: the first and last noise level.
        n_levels: number of geometrically spaced levels.
        steps_per_level: Langevin steps per level.
        step_size: ε at σ_min (level k uses ε (σ_k / σ_min)²).
        mala_below: levels with σ below this are MALA-corrected.
        init_mean: chains start at ``init_mean + sigma_max · ξ``.

    Raises:
        ArgumentError: a σ or ε that is not a finite positive number, a count that
            is not a positive int, or a non-finite ``mala_below`` / ``init_mean``.
    """

    sigma_max: float = 12.0
    sigma_min: float = 0.01
    n_levels: int = 60
    steps_per_level: int = 5
    step_size: float = 2.5e-5
    mala_below: float = 0.5
    init_mean: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sigma_max", "sigma_min", "step_size"):
            validation.positive(f"SamplingPlan: {name}", getattr(self, name))
        for name in ("n_levels", "steps_per_level"):
            validation.count(f"SamplingPlan: {name}", getattr(self, name))
        for name in ("mala_below", "init_mean"):
            validation.real(f"SamplingPlan: {name}", getattr(self, name))

    def noise_levels(self) -> list[float]:
        """σ_max … σ_min, geometrically spaced, ``n_levels`` values."""
        if self.n_levels == 1:
            return [self.sigma_min]
        ratio = math.log(self.sigma_min / self.sigma_max) / (self.n_levels - 1)
        return [self.sigma_max * math.exp(k * ratio) for k in range(self.n_levels)]


_PLAN_FIELDS = {"sigma_max", "sigma_min", "n_levels", "steps_per_level", "step_size",
                "mala_below", "init_mean"}


def total_exponent(model: EnergyModel) -> float:
    """Σ|β| over the leaves of products and powers: how many energies the expression stacks.

    Each node states it (``node.sampling_exponent()``): a product adds its
    factors', a power multiplies by |β|, a mixture takes its largest
    component's, a leaf counts 1 and ``one`` 0.
    """
    return model.sampling_exponent()


def plan_for(model: EnergyModel, **overrides: float) -> SamplingPlan:
    """The sampling plan of an expression over zoo models.

    Combines the ``"sampling"`` entries of the cards of its zoo leaves (the
    widest σ range that every model was trained on: the largest σ_max and the
    largest σ_min; the smallest step) and divides the step by
    :func:`total_exponent`. Leaves that are not from the zoo contribute
    nothing; an expression without zoo leaves gets the defaults.
    ``overrides`` (fields of :class:`SamplingPlan`) replace the cards' values
    before the step is divided.

    Example:
        >>> plan_for(zoo.parse("glasses & hat"), steps_per_level=5).steps_per_level
        5
    """
    from ebmalgebra.zoo import card_of

    settings = [card_of(leaf) for leaf in model.leaves()]
    settings = [record.get("sampling", {}) for record in settings if record]
    plan = SamplingPlan()
    if settings:
        merged: dict[str, float] = {}
        for entry in settings:
            for key, value in entry.items():
                if key not in _PLAN_FIELDS:
                    continue
                if key in ("step_size", "mala_below"):
                    merged[key] = min(merged.get(key, value), value)
                else:
                    merged[key] = max(merged.get(key, value), value)
        plan = replace(plan, **merged)
    unknown = set(overrides) - _PLAN_FIELDS
    if unknown:
        raise ArgumentTypeError(f"plan_for: unknown settings {sorted(unknown)}; valid: "
                                f"{sorted(_PLAN_FIELDS)}")
    plan = replace(plan, **overrides)
    exponent = max(total_exponent(model), 1.0)
    return replace(plan, step_size=plan.step_size / exponent)


def is_noise_conditioned(model: EnergyModel) -> bool:
    """Whether any leaf of ``model`` takes a noise level."""
    return any(getattr(leaf, "noise_conditioned", False) for leaf in model.leaves())


def draw(
    model: EnergyModel,
    n: int,
    *,
    kernel: str = "annealed",
    steps: int | None = None,
    plan: SamplingPlan | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    """``n`` approximate samples of ``model``, shaped ``(n, *event_shape)``.

    Args:
        model: an expression, typically over zoo models.
        n: number of chains (one sample each).
        kernel: for noise-conditioned models, ``"annealed"`` (ULA at high
            noise, MALA below ``plan.mala_below``), ``"mala"`` (MALA at every
            level), ``"ula"`` (no correction), or ``"hmc"`` (annealed, then HMC
            at σ_min); for other models ``"mala"``, ``"ula"`` or ``"hmc"``. ``"smc"``
            runs :class:`~ebmalgebra.samplers.SMC` (MALA moves, importance weights and
            resampling) over the same noise levels, or by tempering from N(0, 3² I) for
            models without noise levels, and returns its equally weighted particles.
        steps: total Langevin steps over all levels (annealed kernels; spread
            evenly over the levels, at least one each) or HMC / MCMC steps (``"hmc"`` and models
            without noise levels). Default: the plan's.
        plan: annealing settings; default :func:`plan_for` ``(model)``.
        generator: the only source of randomness: same seed, same samples.
        progress: tqdm progress bar; ``None`` shows it on a terminal.

    Raises:
        ValueError: unknown kernel, or ``"annealed"`` for a model without noise levels.

    Warns:
        ImproperTargetWarning: if a final position lies beyond ten times the
            largest ``"data_scale"`` on the cards of the expression's zoo models
            (around ``plan.init_mean``): e.g. ``glasses & ~hat``, which cannot be
            normalised (:mod:`ebmalgebra.samplers.escape`). Expressions without
            zoo leaves are checked by :func:`ebmalgebra.sample` instead.

    Example:
        >>> images = draw(zoo.load("glasses") & zoo.load("hat"), 16,
        ...               generator=torch.Generator().manual_seed(0))
    """
    if kernel not in KERNELS:
        raise ArgumentError(f"unknown sampler {kernel!r}; choose one of {', '.join(KERNELS)}")
    validation.count("n", n)
    if steps is not None:
        validation.count("steps", steps)
    validation.generator("draw: generator", generator)
    event_shape = model.event_shape
    if event_shape is None:
        raise CompositionError(f"draw: {model!r} has no event shape")
    scale = _data_scale(model)
    if scale is None:
        return _draw(model, n, kernel, steps, plan, generator, progress)
    with warnings.catch_warnings():
        # The run's own check measures against the deliberately wide annealing start;
        # the card's data scale is the sharper reference, applied to the result.
        warnings.simplefilter("ignore", ImproperTargetWarning)
        positions = _draw(model, n, kernel, steps, plan, generator, progress)
    center = (plan or plan_for(model)).init_mean if is_noise_conditioned(model) else 0.0
    check_final(model, positions, scale=scale, center=center, where="zoo.draw")
    return positions


def _data_scale(model: EnergyModel) -> float | None:
    """The largest ``"data_scale"`` on the cards of ``model``'s zoo leaves (None if none)."""
    from ebmalgebra.zoo import card_of

    scales = [(card_of(leaf) or {}).get("data_scale") for leaf in model.leaves()]
    scales = [float(s) for s in scales if s is not None]
    return max(scales) if scales else None


def _draw(model: EnergyModel, n: int, kernel: str, steps: int | None,
          plan: SamplingPlan | None, generator: torch.Generator | None,
          progress: bool | None) -> Tensor:
    """:func:`draw` after its checks: run the kernel, return the final positions."""
    from ebmalgebra.samplers import HMC, MALA, ULA, sample
    from ebmalgebra.samplers.annealed import AnnealedLangevin

    event_shape = model.event_shape
    dtype = input_options(model)["dtype"]

    if kernel == "smc":
        return _draw_smc(model, n, plan, steps, generator, progress)
    if not is_noise_conditioned(model):
        if kernel == "annealed":
            raise ArgumentError(f"the annealed sampler needs noise-conditioned models, and "
                                f"{model!r} has none; use mala, hmc or ula")
        n_steps = steps or 1000
        kind = {"mala": MALA, "ula": ULA, "hmc": HMC}[kernel]
        sampler = kind(**_adaptation(kind, n_steps // 2))
        x0 = 3.0 * torch.randn((n, *event_shape), generator=generator, dtype=dtype)
        result = sample(model, sampler, x0=x0, n_steps=max(n_steps // 2, 1),
                        warmup=n_steps // 2, generator=generator, progress=progress)
        return _final(result)

    plan = plan_for(model) if plan is None else plan
    if steps is not None and kernel != "hmc":
        plan = replace(plan, steps_per_level=max(1, steps // plan.n_levels))
    mala = {"annealed": plan.mala_below, "mala": True, "ula": False, "hmc": plan.mala_below}
    annealed = AnnealedLangevin(noise_levels=plan.noise_levels(),
                                steps_per_level=plan.steps_per_level,
                                step_size=plan.step_size, mala=mala[kernel],
                                adapt_step_size=False)
    x0 = plan.init_mean + plan.sigma_max * torch.randn((n, *event_shape), generator=generator,
                                                       dtype=dtype)
    result = sample(model, annealed, x0=x0, n_steps=1, warmup=annealed.n_annealing_steps - 1,
                    generator=generator, progress=progress)
    positions = _final(result)
    if kernel != "hmc":
        return positions
    from ebmalgebra.leaves import from_energy

    fixed = from_energy(partial(_energy_at, model, plan.sigma_min), event_shape,
                        name=f"({model!r}) at sigma={plan.sigma_min:g}")
    n_steps = steps or 100
    result = sample(fixed, HMC(**_adaptation(HMC, n_steps // 2)), x0=positions,
                    n_steps=max(n_steps // 2, 1), warmup=n_steps // 2, generator=generator,
                    progress=progress)
    return _final(result)


def _final(result) -> Tensor:
    """The last draw of every chain ``(n, *event_shape)``: all-gathered from the ranks
    when :func:`~ebmalgebra.sample` sharded the chains over a process group, so that
    :func:`draw` returns all ``n`` samples on every rank."""
    last = result.draws[-1]
    return last if result.shard is None else result.shard.all_gather(last)


def _draw_smc(model: EnergyModel, n: int, plan: SamplingPlan | None, steps: int | None,
              generator: torch.Generator | None, progress: bool | None) -> Tensor:
    """``draw(..., kernel="smc")``: the final particles of :func:`run_smc`, equally
    weighted (its log Z is not returned, so its degenerate-weights warning is not
    raised either)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SMC: only", category=RuntimeWarning)
        return run_smc(model, n, plan=plan, steps=steps, generator=generator,
                       progress=progress).samples


def run_smc(model: EnergyModel, n: int, *, plan: SamplingPlan | None = None,
            steps: int | None = None, generator: torch.Generator | None = None,
            progress: bool | None = None) -> SMCResult:
    """The :class:`~ebmalgebra.samplers.SMC` run behind ``draw(..., kernel="smc")``, whole:
    particles, log Z and its stderr, ESS per level.

    Noise-conditioned models walk the plan's noise levels from
    N(init_mean, σ_max² I) with ``steps_per_level`` MALA moves per level after the
    reweighting evaluation: steps_per_level + 1 evaluations per level, as the
    annealed sampler spends (its steps, and the new level's energy at the current
    positions). Other models are tempered from N(0, 3² I). ``steps`` replaces the
    total moves over all levels.

    Example:
        >>> result = run_smc(zoo.parse("glasses & hat"), 64)
        >>> result.samples.shape, result.log_z
        (torch.Size([64, 16, 16]), ...)
    """
    from ebmalgebra.samplers import SMC
    from ebmalgebra.targets import Gaussian

    validation.count("n", n, 2)
    validation.generator("run_smc: generator", generator)
    event_shape = model.event_shape
    dtype = input_options(model)["dtype"]
    if not is_noise_conditioned(model):
        base = Gaussian(torch.zeros(event_shape, dtype=dtype), 3.0, name="base")
        return SMC().run(model, n_particles=n, base=base, generator=generator,
                         progress=progress)
    plan = plan_for(model) if plan is None else plan
    n_steps = plan.steps_per_level if steps is None else max(1, steps // plan.n_levels)
    base = Gaussian(torch.full(event_shape, plan.init_mean, dtype=dtype), plan.sigma_max,
                    name="base")
    return SMC(n_steps=n_steps).run(model, noise_levels=plan.noise_levels(), n_particles=n,
                                    base=base, generator=generator, progress=progress)


def _adaptation(kind: type, warmup: int) -> dict[str, bool]:
    """The sampler class's adaptation switches (``kind.adaptation_flags``) for ``draw``'s
    own warmup: off when it is too short to adapt (fewer than ``MIN_ADAPTATION_STEPS``),
    so small ``steps`` burn in without a warning."""
    from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS

    adapt = warmup >= MIN_ADAPTATION_STEPS
    return dict.fromkeys(kind.adaptation_flags, adapt)


def _energy_at(model: EnergyModel, sigma: float, x: Tensor) -> Tensor:
    """E(x, σ) at a fixed σ, for kernels that know no noise levels."""
    return model.energy(x, sigma)
