"""Inverse problems as posterior expressions: ``prior & GaussianLikelihood(y, sigma)``.

An observation y = A(x) + σ η, η ~ N(0, I), seen through a mask M, has the
likelihood p(y | x) ∝ exp(−‖M ⊙ (A(x) − y)‖² / (2σ²)). As a function of x
that is an energy, so the posterior is literally a product of experts,

    p(x | y) ∝ p(x) · p(y | x),   E_post(x) = E_prior(x) + ‖M ⊙ (A(x) − y)‖² / (2σ²),

and everything the library does with expressions (compile, sample, tempering)
applies. :func:`denoise` (A = I, no mask) and :func:`inpaint` (A = I, a mask
of visible pixels) build that expression and estimate from it, with the
library samplers only:

* ``method="posterior_mean"`` averages MCMC draws of the posterior, the
  minimum-mean-squared-error estimate;
* ``method="sample"`` returns one posterior draw per observation (inpainting
  with a choice: different draws complete the image differently);
* ``method="map"`` descends the posterior energy from the observation.

**Noise-conditioned priors.** A prior E(x, t) trained on data smoothed by
N(0, t² I) is sampled by annealed Langevin dynamics from large to small t,
and the likelihood of the smoothed x_t has variance σ² + t² (derived in
:mod:`ebmalgebra.apps.likelihood`); :func:`denoise` / :func:`inpaint` switch
``GaussianLikelihood(..., noise_conditioned=True)`` on for such priors.

Observations may come in a batch: ``y`` of shape ``(n_obs, *obs_shape)`` is n
independent problems, and chain j observes ``y[j % n_obs]`` (so a batch of
k·n_obs chains runs k chains per observation in one tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.apps.likelihood import GaussianLikelihood, _check_mask
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.samplers import MALA, AnnealedLangevin, Sampler, sample
from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS
from ebmalgebra.zoo.sampling import is_noise_conditioned

__all__ = [
    "METHODS",
    "GaussianLikelihood",
    "annealed_sampler",
    "denoise",
    "inpaint",
    "is_noise_conditioned",
    "posterior_estimate",
    "psnr",
]

METHODS = ("posterior_mean", "sample", "map")
"""Estimates :func:`posterior_estimate` (and :func:`denoise`, :func:`inpaint`) can return."""


def annealed_sampler(
    prior: EnergyModel,
    *,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    n_levels: int | None = None,
    steps_per_level: int | None = None,
    step_size: float | None = None,
    mala_below: float | None = None,
) -> AnnealedLangevin:
    """Annealed Langevin over the noise levels of a noise-conditioned ``prior``.

    Defaults come from the cards of the models in ``prior``: those of
    :mod:`ebmalgebra.apps.pretrained` models, else :func:`ebmalgebra.zoo.plan_for`
    (zoo cards, or the library defaults); keyword arguments override them.
    The step is ε (t_k / t_min)² at level k, divided by the prior's total
    exponent, MALA-corrected below ``mala_below``, with per-chain step sizes
    adapted while annealing.
    """
    from ebmalgebra.apps.pretrained import sampling_settings
    from ebmalgebra.zoo import plan_for

    overrides = sampling_settings(prior)
    overrides.update({key: value for key, value in (
        ("sigma_max", sigma_max), ("sigma_min", sigma_min), ("n_levels", n_levels),
        ("steps_per_level", steps_per_level), ("step_size", step_size),
        ("mala_below", mala_below)) if value is not None})
    plan = plan_for(prior, **overrides)
    return AnnealedLangevin(noise_levels=plan.noise_levels(),
                            steps_per_level=plan.steps_per_level, step_size=plan.step_size,
                            mala=plan.mala_below, adapt_step_size=True)


def posterior_estimate(
    posterior: EnergyModel,
    x0: Tensor,
    n_obs: int,
    *,
    method: str = "posterior_mean",
    sampler: Sampler | None = None,
    n_steps: int = 200,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Estimate x from ``posterior`` by sampling or descent, chains started at ``x0``.

    ``x0`` is ``(k · n_obs, *event_shape)``: k chains per observation, chain j
    serving observation j % n_obs (the pairing of :class:`GaussianLikelihood`,
    so n_obs must equal the number of observations of every batched
    :class:`GaussianLikelihood` in ``posterior``). Returns ``(n_obs, *event_shape)``:

    * ``"posterior_mean"``: the average over chains and over ``n_steps``
      draws after warmup (the annealing phase for
      :class:`~ebmalgebra.samplers.AnnealedLangevin`, ``n_steps`` adaptation
      steps otherwise);
    * ``"sample"``: the final position of the first chain of each observation;
    * ``"map"``: the first chain of each observation after descending the
      posterior energy with Adam (learning rate 0.02 in the units of x; about
      ``n_steps`` steps in all), through the sampler's noise levels when it
      has them (annealed descent).

    ``sampler`` defaults to :func:`annealed_sampler` for noise-conditioned
    posteriors and to :class:`~ebmalgebra.samplers.MALA` otherwise.

    Raises:
        ArgumentError: (a ``ValueError``) n_obs is not a positive int or does not divide
            x0's batch size, or the posterior is noise-conditioned and the sampler
            does not anneal over noise levels.
        CompositionError: a batched :class:`GaussianLikelihood` in ``posterior``
            holds a different number of observations than n_obs.
    """
    validation.one_of("method", method, METHODS)
    validation.count("n_steps", n_steps)
    validation.count("n_obs", n_obs)
    if x0.shape[0] % n_obs:
        raise ArgumentError(f"x0 must hold a multiple of n_obs={n_obs} chains, got {x0.shape[0]}")
    _check_observation_count(posterior, n_obs)
    noise_conditioned = is_noise_conditioned(posterior)
    if sampler is None:
        # The warmup below is n_steps: adapt only when that is long enough to.
        sampler = (annealed_sampler(_prior_part(posterior)) if noise_conditioned
                   else MALA(step_size=1e-3, adapt_step_size=n_steps >= MIN_ADAPTATION_STEPS))
    validation.instance("posterior_estimate: sampler", sampler, Sampler,
                        "an ebmalgebra.samplers.Sampler")
    annealed = sampler.noise_levels is not None
    if noise_conditioned and not annealed:
        raise ArgumentError(f"{posterior!r} is noise-conditioned: use an AnnealedLangevin "
                            "sampler with noise_levels (e.g. "
                            "ebmalgebra.apps.inverse.annealed_sampler)")
    if method == "map":
        levels = sampler.noise_levels if annealed else (None,)
        steps = max(1, n_steps // len(levels)) if annealed else n_steps
        return _descend(posterior, x0, levels, steps)[:n_obs]
    warmup = n_steps if sampler.n_annealing_steps is None else sampler.n_annealing_steps
    keep = n_steps if method == "posterior_mean" else 1
    result = sample(posterior, sampler, x0=x0, n_steps=keep, warmup=warmup,
                    generator=generator, progress=progress)
    if method == "sample":
        return result.draws[-1, :n_obs]
    draws = result.draws.reshape(keep, -1, n_obs, *x0.shape[1:])
    return draws.mean(dim=(0, 1))


def _check_observation_count(posterior: EnergyModel, n_obs: int) -> None:
    """Every batched likelihood pairs chain j with y[j % its n_obs]; grouping the chains by
    j % n_obs must agree, or estimates would average chains of different observations."""
    for leaf in posterior.leaves():
        if isinstance(leaf, GaussianLikelihood) and leaf.n_obs not in (None, n_obs):
            raise CompositionError(
                f"posterior_estimate: n_obs={n_obs}, but {leaf!r} holds {leaf.n_obs} "
                f"observations (chain j observes y[j % {leaf.n_obs}]); pass n_obs={leaf.n_obs}")


def _prior_part(posterior: EnergyModel) -> EnergyModel:
    """The factors of a product that are not Gaussian likelihoods (whose curvature the
    annealed step schedule need not budget for: 1/(σ² + t²) ≤ 1/t²)."""
    kept = [f for f in posterior.factors() if not isinstance(f, GaussianLikelihood)]
    if not kept:
        return posterior
    prior = kept[0]
    for factor in kept[1:]:
        prior = prior & factor
    return prior


def _descend(model: EnergyModel, x0: Tensor, levels: Sequence[float | None], steps: int,
             lr: float = 0.02) -> Tensor:
    """Adam on the pixels, minimising E(x, t) at each level t in turn."""
    from ebmalgebra.compile import compile

    compiled = compile(model)
    x = x0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for t in levels:
        for _ in range(steps):
            _, score = compiled.energy_and_score(x.detach(), t)
            optimizer.zero_grad(set_to_none=True)
            x.grad = -torch.nan_to_num(score)
            optimizer.step()
    return x.detach()


def _as_batch(y: Tensor, prior: EnergyModel, what: str) -> tuple[Tensor, bool]:
    """y as ``(n_obs, *event_shape)`` and whether it was a single observation."""
    event_shape = prior.event_shape
    if not isinstance(y, Tensor) or not y.is_floating_point():
        kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise CompositionError(f"{what}: y must be a floating-point tensor, got {kind}")
    if event_shape is None:
        raise CompositionError(f"{what}: the prior {prior!r} has no event shape")
    if tuple(y.shape) == tuple(event_shape):
        return y[None], True
    if y.dim() == len(event_shape) + 1 and tuple(y.shape[1:]) == tuple(event_shape):
        if len(y) == 0:
            raise CompositionError(f"{what}: y of shape {tuple(y.shape)} holds no observations; "
                                   "give one observation or a batch of at least one")
        return y, False
    raise CompositionError(f"{what}: y has shape {tuple(y.shape)}, but the prior {prior!r} has "
                           f"event_shape {tuple(event_shape)}; y must be one observation of "
                           "that shape or a batch of them")


def _reconstruct(prior: EnergyModel, y: Tensor, sigma: float, mask: Tensor | None, *,
                 what: str, method: str, sampler: Sampler | None, n_chains: int, n_steps: int,
                 generator: torch.Generator | None, progress: bool | None) -> Tensor:
    """Shared body of :func:`denoise` and :func:`inpaint`."""
    validation.instance(f"{what}: prior", prior, EnergyModel, "an EnergyModel")
    validation.count(f"{what}: n_chains", n_chains)
    batch, single = _as_batch(y, prior, what)
    noise_conditioned = is_noise_conditioned(prior)
    if mask is not None:
        mask = _check_mask(mask, y, what).expand_as(batch)
    likelihood = GaussianLikelihood(batch, sigma, mask=mask, event_shape=prior.event_shape,
                                    noise_conditioned=noise_conditioned)
    posterior = prior & likelihood
    if sampler is None and noise_conditioned:
        sampler = annealed_sampler(prior)
    start = batch if mask is None else _fill_masked(batch, mask)
    x0 = start.repeat(n_chains, *([1] * (batch.dim() - 1)))
    levels = getattr(sampler, "noise_levels", None)
    if levels is not None and method != "map":
        x0 = x0 + levels[0] * torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                                          device=x0.device)
    estimate = posterior_estimate(posterior, x0, batch.shape[0], method=method,
                                  sampler=sampler, n_steps=n_steps, generator=generator,
                                  progress=progress)
    return estimate[0] if single else estimate


def _fill_masked(y: Tensor, mask: Tensor) -> Tensor:
    """Unobserved entries replaced by the mean of the observed ones, per observation."""
    weights = (mask > 0).to(y.dtype)
    counts = weights.flatten(1).sum(1).clamp_min(1.0)
    means = (weights * y).flatten(1).sum(1) / counts
    means = means.reshape(-1, *([1] * (y.dim() - 1)))
    return torch.where(weights > 0, y, means)


def denoise(
    prior: EnergyModel,
    y: Tensor,
    sigma: float,
    *,
    method: str = "posterior_mean",
    sampler: Sampler | None = None,
    n_chains: int = 8,
    n_steps: int = 200,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Remove Gaussian noise: estimate x from y = x + σ η under ``prior``.

    Builds ``prior & GaussianLikelihood(y, sigma)`` (noise-conditioned for a
    noise-conditioned prior, see the module docstring) and estimates x with
    :func:`posterior_estimate`: ``n_chains`` chains per observation, started
    at y (plus the first noise level's noise when annealing).

    Args:
        prior: a model with ``event_shape`` equal to y's (or y's trailing dims).
        y: one noisy observation ``event_shape`` or a batch ``(n, *event_shape)``.
        sigma: the noise standard deviation σ > 0.
        method: ``"posterior_mean"`` (MMSE), ``"sample"`` or ``"map"``.
        sampler: default :func:`annealed_sampler` for noise-conditioned priors,
            :class:`~ebmalgebra.samplers.MALA` with step-size adaptation otherwise.
        n_chains: chains per observation.
        n_steps: draws averaged for the posterior mean (after warmup), or
            descent steps for ``"map"``.
        generator: the source of all randomness.

    Returns:
        The estimate, shaped like y.

    Example:
        >>> prior = ebmalgebra.apps.pretrained.load("digits")
        >>> x_hat = denoise(prior, y, 0.3, generator=torch.Generator().manual_seed(0))
    """
    return _reconstruct(prior, y, sigma, None, what="denoise", method=method, sampler=sampler,
                        n_chains=n_chains, n_steps=n_steps, generator=generator,
                        progress=progress)


def inpaint(
    prior: EnergyModel,
    y: Tensor,
    mask: Tensor,
    *,
    sigma: float = 0.05,
    method: str = "sample",
    sampler: Sampler | None = None,
    n_chains: int = 1,
    n_steps: int = 200,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Fill in the unobserved pixels of y (``mask`` False / 0) from ``prior``.

    The posterior is ``prior & GaussianLikelihood(y, sigma, mask=mask)``:
    visible pixels are observed with noise σ, hidden ones only through the
    prior. The default returns one posterior *sample* per image (a plausible
    completion; the mean would average different completions); use
    ``method="posterior_mean"`` for the MMSE fill. Swap the prior to steer the
    completion: ``inpaint(glasses, ...)`` or ``inpaint(face & ~glasses, ...)``.

    Args:
        prior: any expression with y's event shape.
        y: the image(s), ``event_shape`` or ``(n, *event_shape)``; values under
            the hidden pixels are ignored.
        mask: True / positive where observed, broadcastable to y.
        sigma: noise σ > 0 of the visible pixels.
        method, sampler, n_chains, n_steps, generator: as in :func:`denoise`.

    Example:
        >>> visible = torch.ones(16, 16, dtype=torch.bool)
        >>> visible[5:9] = False                                    # hide the eye band
        >>> filled = inpaint(glasses, y, visible, generator=torch.Generator().manual_seed(0))
    """
    if not isinstance(mask, Tensor):
        raise CompositionError(f"inpaint: mask must be a tensor, got {type(mask).__name__}")
    return _reconstruct(prior, y, sigma, mask, what="inpaint", method=method, sampler=sampler,
                        n_chains=n_chains, n_steps=n_steps, generator=generator,
                        progress=progress)


def psnr(estimate: Tensor, truth: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, 10 log₁₀(range² / MSE) in dB, shape ``(n,)``.

    Both are ``(n, *image_shape)``; average the result for a data set's PSNR.
    """
    if estimate.shape != truth.shape:
        raise CompositionError(f"psnr: estimate {tuple(estimate.shape)} and truth "
                               f"{tuple(truth.shape)} differ in shape")
    mse = (estimate - truth).flatten(1).square().mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)

