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
N(0, t² I) is sampled by annealed Langevin dynamics from large to small t.
The likelihood then has to describe the same smoothed variable x_t = x + t ε:
y = A(x_t) − t A(ε) + σ η, so, treating the smoothing noise as independent of
x (exact for masks and the identity, whose rows are orthonormal), y given x_t
has variance σ² + t². ``GaussianLikelihood(..., noise_conditioned=True)``
uses exactly that, E(x, t) = ‖M ⊙ (A(x) − y)‖² / (2(σ² + t²)), and
:func:`denoise` / :func:`inpaint` switch it on for noise-conditioned priors.
At high t the data term is weak and chains explore the prior; as t → t_min
it tightens to the true likelihood (σ² + t_min² ≈ σ²). This is the
"σ_obs² + t²" rule of annealed posterior sampling (Jalal et al. 2021,
Kawar et al. 2021).

Observations may come in a batch: ``y`` of shape ``(n_obs, *obs_shape)`` is n
independent problems, and chain j observes ``y[j % n_obs]`` (so a batch of
k·n_obs chains runs k chains per observation in one tensor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike
from ebmalgebra.errors import CompositionError
from ebmalgebra.io import SerializationError, register_leaf
from ebmalgebra.leaves import Leaf, as_event_shape
from ebmalgebra.samplers import MALA, AnnealedLangevin, Sampler, sample

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


def _positive_float(value: object, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise CompositionError(f"{what} must be a positive number, got a tensor of shape "
                                   f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise CompositionError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


@register_leaf("gaussian_likelihood")
class GaussianLikelihood(Leaf):
    """The likelihood of an observation y = A(x) + σ η as an energy in x.

        E(x) = ‖M ⊙ (A(x) − y)‖² / (2σ²),
        s(x) = −Aᵀ (M² ⊙ (A(x) − y)) / σ²

    (M = 1 without a mask; the score is closed-form for A = I or a matrix,
    by autograd for a callable A). The constant ½ n log(2πσ²) of p(y | x) is
    left out: it does not depend on x, so the posterior ``prior & likelihood``
    is unchanged. With ``noise_conditioned=True`` the variance at noise level t
    is σ² + t² (see the module docstring); with t = ``None`` it is σ².

    Shapes: x is ``(batch, *event_shape)``, energies ``(batch,)``. ``y`` is one
    observation ``obs_shape`` or a batch ``(n_obs, *obs_shape)``; with a batch,
    row j of x is paired with ``y[j % n_obs]`` and the batch size of x must be
    a multiple of n_obs.

    Args:
        y: the observation(s).
        sigma: observation noise σ > 0.
        mask: weights M broadcastable to ``y`` (bool: True where observed).
        operator: the forward map A: ``None`` (identity, obs_shape =
            event_shape), a matrix ``(m, d)`` acting on the flattened x
            (obs_shape = ``(m,)``), or a callable / module mapping
            ``(batch, *event_shape)`` to ``(batch, *obs_shape)``.
        event_shape: shape of x; needed with a callable operator or a batch
            of observations of a matrix operator (default: y's shape for the
            identity, ``(d,)`` for a matrix).
        noise_conditioned: use σ² + t² at noise level t (annealed sampling
            with a noise-conditioned prior).
        name: printed by ``repr``.

    Example:
        >>> y = x_true + 0.3 * torch.randn_like(x_true)       # (8, 8)
        >>> posterior = prior & GaussianLikelihood(y, 0.3)
        >>> visible = torch.ones(16, 16, dtype=torch.bool); visible[5:9] = False
        >>> completion = face & GaussianLikelihood(y, 0.05, mask=visible)
    """

    def __init__(
        self,
        y: Tensor,
        sigma: float,
        *,
        mask: Tensor | None = None,
        operator: Tensor | Callable[[Tensor], Tensor] | None = None,
        event_shape: int | Sequence[int] | None = None,
        noise_conditioned: bool = False,
        name: str = "likelihood",
    ) -> None:
        if not isinstance(y, Tensor) or not y.is_floating_point():
            kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
            raise CompositionError(f"{name}: y must be a floating-point tensor, got {kind}")
        if not torch.isfinite(y).all():
            raise CompositionError(f"{name}: y must be finite")
        sigma = _positive_float(sigma, f"{name}: sigma")
        y = y.detach().clone()
        shape = None if event_shape is None else as_event_shape(event_shape)
        matrix = callable_operator = None
        if operator is None:
            shape = y.shape if shape is None else shape
            obs_shape = shape
        elif isinstance(operator, Tensor):
            matrix = operator.detach().to(y.dtype).clone()
            if matrix.dim() != 2:
                raise CompositionError(f"{name}: a matrix operator must be 2-D (m, d), got shape "
                                       f"{tuple(matrix.shape)}")
            shape = torch.Size([matrix.shape[1]]) if shape is None else shape
            if math.prod(shape) != matrix.shape[1]:
                raise CompositionError(f"{name}: operator of shape {tuple(matrix.shape)} acts on "
                                       f"{matrix.shape[1]} values, but event_shape "
                                       f"{tuple(shape)} has {math.prod(shape)}")
            obs_shape = torch.Size([matrix.shape[0]])
        elif callable(operator):
            if shape is None:
                raise CompositionError(f"{name}: give event_shape= (the shape of x) with a "
                                       "callable operator")
            callable_operator = operator
            obs_shape = _probe_operator(operator, shape, y.dtype, name)
        else:
            raise CompositionError(f"{name}: operator must be None, a matrix or a callable, got "
                                   f"{type(operator).__name__}")
        if tuple(y.shape) == tuple(obs_shape):
            n_obs = None
        elif y.dim() == len(obs_shape) + 1 and tuple(y.shape[1:]) == tuple(obs_shape):
            n_obs = y.shape[0]
        else:
            raise CompositionError(
                f"{name}: y has shape {tuple(y.shape)}, but the operator maps x of shape "
                f"{tuple(shape)} to observations of shape {tuple(obs_shape)}; y must be shaped "
                f"{tuple(obs_shape)} or (n_obs, {', '.join(map(str, obs_shape))})")
        if mask is not None:
            mask = _check_mask(mask, y, name)

        super().__init__(torch.Size(shape), name, Capabilities(True, True, False, False))
        self.sigma = sigma
        self.noise_conditioned = bool(noise_conditioned)
        self.analytic_score = callable_operator is None
        self.obs_shape = torch.Size(obs_shape)
        self.n_obs = n_obs
        self.register_buffer("observation", y)
        self.register_buffer("mask", mask)
        self.register_buffer("matrix", matrix)
        if isinstance(callable_operator, nn.Module):
            self.operator = callable_operator  # registered, so .to() and .parameters() see it
        else:
            self._operator_fn = callable_operator
        self._freeze()

    # ---------------------------------------------------------------- config
    def config(self) -> dict:
        """Constructor arguments for :func:`ebmalgebra.save` (not for callable operators)."""
        if not self.analytic_score:
            raise SerializationError(f"{self.name}: a likelihood with a callable operator cannot "
                                     "be saved (its code is not data); use a matrix operator")
        return {"y": self.observation, "sigma": self.sigma, "mask": self.mask,
                "operator": self.matrix, "event_shape": list(self.event_shape),
                "noise_conditioned": self.noise_conditioned, "name": self.name}

    # ------------------------------------------------------------ evaluation
    def variance(self, t: TimeLike = None, like: Tensor | None = None) -> Tensor | float:
        """σ², or σ² + t² when noise-conditioned and t is given (per row for a ``(batch,)`` t)."""
        if not self.noise_conditioned or t is None:
            return self.sigma**2
        t = torch.as_tensor(t, dtype=like.dtype if like is not None else None,
                            device=like.device if like is not None else None)
        return self.sigma**2 + t.square()

    def _forward(self, x: Tensor) -> Tensor:
        """A(x), ``(batch, *obs_shape)``."""
        if self.matrix is not None:
            return x.flatten(1) @ self.matrix.to(x).T
        if not self.analytic_score:
            operator = self.operator if "operator" in self._modules else self._operator_fn
            return _check_operator_output(operator(x), x, self.obs_shape, self.name)
        return x

    def _residual(self, prediction: Tensor) -> tuple[Tensor, Tensor | None]:
        """(M ⊙ (A(x) − y), M as a float tensor or None), rows paired with observations."""
        y = self.observation.to(prediction)
        mask = None if self.mask is None else self.mask.to(prediction)
        if self.n_obs is None:
            residual = prediction - y
        else:
            batch = prediction.shape[0]
            if batch % self.n_obs:
                raise CompositionError(
                    f"{self.name}: holds {self.n_obs} observations, so x's batch size must be a "
                    f"multiple of {self.n_obs} (row j observes y[j % {self.n_obs}]); got {batch}")
            grouped = prediction.reshape(batch // self.n_obs, self.n_obs, *self.obs_shape)
            residual = (grouped - y).reshape(prediction.shape)
            if mask is not None and mask.dim() == len(self.obs_shape) + 1:
                mask = mask.expand(self.n_obs, *self.obs_shape).repeat(
                    batch // self.n_obs, *([1] * len(self.obs_shape)))
        return (residual if mask is None else mask * residual), mask

    def _per_row(self, variance: Tensor | float, like: Tensor) -> Tensor | float:
        if isinstance(variance, Tensor) and variance.dim() == 1:
            return variance.reshape(-1, *([1] * (like.dim() - 1)))
        return variance

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        residual, _ = self._residual(self._forward(x))
        variance = self.variance(t, x)
        energy = residual.flatten(1).square().sum(1)
        return energy / (2.0 * variance)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        if not self.analytic_score:
            return super()._energy_and_score(x, t, create_graph)
        residual, mask = self._residual(self._forward(x))
        variance = self.variance(t, x)
        energy = residual.flatten(1).square().sum(1) / (2.0 * variance)
        weighted = residual if mask is None else mask * residual
        if self.matrix is not None:
            weighted = (weighted @ self.matrix.to(x)).reshape(x.shape)
        return energy, -weighted / self._per_row(variance, x)


def _probe_operator(operator: Callable, event_shape: torch.Size, dtype: torch.dtype,
                    name: str) -> torch.Size:
    """obs_shape of a callable operator, from one evaluation at x = 0."""
    reference = next((p for p in operator.parameters() if p.is_floating_point()), None) if (
        isinstance(operator, nn.Module)) else None
    zeros = torch.zeros((1, *event_shape), dtype=reference.dtype if reference is not None
                        else dtype, device=reference.device if reference is not None else None)
    with torch.no_grad():
        out = operator(zeros)
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise CompositionError(f"{name}: the operator must map (batch, *event_shape) to "
                               f"(batch, *obs_shape); for x of shape (1, "
                               f"{', '.join(map(str, event_shape))}) it returned {got}")
    return out.shape[1:]


def _check_operator_output(out: object, x: Tensor, obs_shape: torch.Size, name: str) -> Tensor:
    if not isinstance(out, Tensor) or tuple(out.shape) != (x.shape[0], *obs_shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise CompositionError(f"{name}: the operator returned {got} for x of shape "
                               f"{tuple(x.shape)}; expected ({x.shape[0]}, "
                               f"{', '.join(map(str, obs_shape))})")
    return out


def _check_mask(mask: object, y: Tensor, name: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise CompositionError(f"{name}: mask must be a tensor, got {type(mask).__name__}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, y.shape)
    except RuntimeError:
        broadcast = None
    if broadcast is None or tuple(broadcast) != tuple(y.shape):
        raise CompositionError(f"{name}: mask of shape {tuple(mask.shape)} does not match y of "
                               f"shape {tuple(y.shape)} (it must broadcast to it)")
    mask = mask.detach().to(y.dtype).clone()
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise CompositionError(f"{name}: mask must be finite and non-negative")
    return mask


# ------------------------------------------------------------- estimation
def is_noise_conditioned(model: EnergyModel) -> bool:
    """Whether any leaf of ``model`` takes a noise level t."""
    return any(getattr(leaf, "noise_conditioned", False) for leaf in model.leaves())


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
    serving observation j % n_obs (the pairing of :class:`GaussianLikelihood`).
    Returns ``(n_obs, *event_shape)``:

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
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if x0.shape[0] % n_obs:
        raise ValueError(f"x0 must hold a multiple of n_obs={n_obs} chains, got {x0.shape[0]}")
    noise_conditioned = is_noise_conditioned(posterior)
    if sampler is None:
        sampler = (annealed_sampler(_prior_part(posterior)) if noise_conditioned
                   else MALA(step_size=1e-3))
    annealed = isinstance(sampler, AnnealedLangevin) and sampler.noise_levels is not None
    if noise_conditioned and not annealed:
        raise ValueError(f"{posterior!r} is noise-conditioned: use an AnnealedLangevin sampler "
                         "with noise_levels (e.g. ebmalgebra.apps.inverse.annealed_sampler)")
    if method == "map":
        levels = sampler.noise_levels if annealed else (None,)
        steps = max(1, n_steps // len(levels)) if annealed else n_steps
        return _descend(posterior, x0, levels, steps)[:n_obs]
    warmup = (sampler.n_annealing_steps if isinstance(sampler, AnnealedLangevin)
              else n_steps)
    keep = n_steps if method == "posterior_mean" else 1
    result = sample(posterior, sampler, x0=x0, n_steps=keep, warmup=warmup,
                    generator=generator, progress=progress)
    if method == "sample":
        return result.draws[-1, :n_obs]
    draws = result.draws.reshape(keep, -1, n_obs, *x0.shape[1:])
    return draws.mean(dim=(0, 1))


def _prior_part(posterior: EnergyModel) -> EnergyModel:
    """The factors of a product that are not Gaussian likelihoods (whose curvature the
    annealed step schedule need not budget for: 1/(σ² + t²) ≤ 1/t²)."""
    from ebmalgebra.ops import Product

    if not isinstance(posterior, Product):
        return posterior
    kept = [f for f in posterior.operands() if not isinstance(f, GaussianLikelihood)]
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
        return y, False
    raise CompositionError(f"{what}: y has shape {tuple(y.shape)}, but the prior {prior!r} has "
                           f"event_shape {tuple(event_shape)}; y must be one observation of "
                           "that shape or a batch of them")


def _reconstruct(prior: EnergyModel, y: Tensor, sigma: float, mask: Tensor | None, *,
                 what: str, method: str, sampler: Sampler | None, n_chains: int, n_steps: int,
                 generator: torch.Generator | None, progress: bool | None) -> Tensor:
    """Shared body of :func:`denoise` and :func:`inpaint`."""
    if not isinstance(prior, EnergyModel):
        raise TypeError(f"{what}: prior must be an EnergyModel, got {type(prior).__name__}")
    if isinstance(n_chains, bool) or not isinstance(n_chains, int) or n_chains < 1:
        raise ValueError(f"{what}: n_chains must be a positive int, got {n_chains!r}")
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

