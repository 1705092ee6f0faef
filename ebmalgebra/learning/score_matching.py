"""Score matching: fit an energy by its score, never touching the normaliser Z.

All losses take a model (any expression with a score), a batch x of shape
``(batch, *event_shape)`` drawn from the data p_d, and return a scalar
tensor to minimise. The model's score s = −∇ₓE comes from its public
``score(x, t, create_graph=True)``, so compiled and uncompiled expressions,
and score-only leaves, train alike.

* **Exact** (Hyvärinen 2005). The Fisher divergence
  F(θ) = ½ E_d ‖s_θ(x) − ∇ₓ log p_d(x)‖² equals, after integrating by parts,

      J(θ) = E_d [ ½ ‖s_θ(x)‖² + tr ∇ₓ s_θ(x) ],   J = F − ½ E_d ‖∇ₓ log p_d‖²,

  so J and F have the same minimiser. The trace costs one extra backward
  pass per dimension, so use it for small dimensions only.
* **Sliced** (Song et al. 2019). Project onto random v with E[v vᵀ] = I
  (Rademacher or Gaussian): E_v[vᵀ ∇ₓ(vᵀ s)] = tr ∇ₓ s, so

      J_sliced = E_d E_v [ ½ (vᵀ s)² + vᵀ ∇ₓ (vᵀ s) ]

  is unbiased for J; ``variance_reduction=True`` (SSM-VR) replaces the
  first term by its exact expectation ½ ‖s‖². One backward pass per
  projection.
* **Denoising** (Vincent 2011). With x̃ = x + σ ε, ε ~ N(0, I),

      J_σ = ½ E_d E_ε ‖s_θ(x̃) + ε/σ‖²,

  which is the Fisher divergence to the σ-smoothed data up to a constant:
  its minimiser is the score of p_d ∗ N(0, σ² I) (so a Gaussian model
  learns Σ_d + σ² I).
* **Multi-noise denoising** (Song & Ermon 2019) for noise-conditioned
  models s_θ(x, σ): draw σ per sample and weight by λ(σ) = σ²,

      J = ½ E_σ E_d E_ε ‖σ s_θ(x + σε, σ) + ε‖²,

  which makes every noise level contribute on the same scale.

The denoising losses take ``jit=True``: the score and the loss then run as one
kernel compiled by ``torch.compile`` (a training graph, differentiated once by
``loss.backward()``; :mod:`ebmalgebra.jit`). Exact and sliced score matching
differentiate the score again inside the loss, and torch.compile's graphs are
differentiable only once, so they stay eager.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, TimeLike
from ebmalgebra.compile import compile as compile_model
from ebmalgebra.errors import ArgumentError, CapabilityError
from ebmalgebra.jit import call_compiled
from ebmalgebra.learning._checks import check_batch, check_model

__all__ = ["denoising_score_matching", "exact_score_matching", "multi_noise_dsm",
           "score_matching", "sliced_score_matching"]

_METHODS = ("exact", "sliced", "denoising")
_PROJECTIONS = ("rademacher", "gaussian")


def score_matching(
    model: EnergyModel,
    batch: Tensor,
    *,
    method: str = "sliced",
    t: TimeLike = None,
    sigma: float = 0.1,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = True,
    generator: torch.Generator | None = None,
    jit: bool = False,
) -> Tensor:
    """Score-matching loss of ``model`` on ``batch`` by ``method``; see the module docstring.

    Args:
        model: an expression with a score (energy not required).
        batch: data ``(batch, *event_shape)``.
        method: ``"exact"`` (Hessian trace by autograd, one backward pass
            per dimension), ``"sliced"`` (random projections) or
            ``"denoising"`` (noise level ``sigma``).
        t: noise level passed to a noise-conditioned model.
        sigma: noise standard deviation for ``"denoising"``.
        n_projections: projections per sample for ``"sliced"``.
        projection: ``"rademacher"`` or ``"gaussian"`` for ``"sliced"``.
        variance_reduction: SSM-VR for ``"sliced"``.
        generator: randomness for projections and noise.
        jit: compile score and loss into one kernel (``"denoising"`` only).

    Returns:
        A 0-d tensor, differentiable in the model's parameters.

    Example:
        >>> loss = score_matching(model, x, method="exact")
        >>> loss.backward()
    """
    if jit and method != "denoising":
        raise ArgumentError(f"score_matching: jit=True needs method='denoising'; {method!r} "
                            "differentiates the score twice, which compiled graphs do not support")
    if method == "exact":
        return exact_score_matching(model, batch, t=t)
    if method == "sliced":
        return sliced_score_matching(model, batch, t=t, n_projections=n_projections,
                                     projection=projection,
                                     variance_reduction=variance_reduction, generator=generator)
    if method == "denoising":
        return denoising_score_matching(model, batch, sigma=sigma, t=t, generator=generator,
                                        jit=jit)
    raise ArgumentError(f"score_matching: method must be one of {_METHODS}, got {method!r}")


def exact_score_matching(model: EnergyModel, batch: Tensor, *, t: TimeLike = None,
                         generator: torch.Generator | None = None) -> Tensor:
    """Hyvärinen's J = mean_x [ ½ ‖s(x)‖² + tr ∇ₓ s(x) ], the trace by autograd.

    J equals the Fisher divergence ½ E ‖s − ∇ log p_d‖² minus the data-only
    constant ½ E ‖∇ log p_d‖². Cost: one backward pass per dimension of x.
    The loss is deterministic; ``generator`` is accepted (and unused) so that
    it fits the loss signature of :func:`~ebmalgebra.learning.fit`.
    """
    check_model(model, "exact_score_matching", "score")
    x = check_batch(model, batch, "exact_score_matching").detach().requires_grad_(True)
    score = model.score(x, t, create_graph=True).flatten(1)
    flat_x = x
    trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(score.shape[1]):
        (grad,) = torch.autograd.grad(score[:, i].sum(), flat_x, create_graph=True,
                                      allow_unused=True)
        if grad is not None:
            trace = trace + grad.flatten(1)[:, i]
    return (0.5 * score.square().sum(1) + trace).mean()


def sliced_score_matching(
    model: EnergyModel,
    batch: Tensor,
    *,
    t: TimeLike = None,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Song et al.'s J = mean_{x,v} [ ½ (vᵀs)² + vᵀ ∇ₓ(vᵀs) ], E[v vᵀ] = I.

    With ``variance_reduction`` the first term is ½ ‖s‖² (SSM-VR); either way
    the expectation over v is the exact-SM objective.
    """
    check_model(model, "sliced_score_matching", "score")
    x = check_batch(model, batch, "sliced_score_matching")
    validation.one_of("sliced_score_matching: projection", projection, _PROJECTIONS)
    validation.count("sliced_score_matching: n_projections", n_projections)
    # Each projection gets its own copy of x: one backward pass serves all of them.
    repeated = x.detach().repeat(n_projections, *([1] * (x.dim() - 1))).requires_grad_(True)
    if isinstance(t, Tensor) and t.dim() > 0:
        t = t.repeat(n_projections)
    shape = repeated.shape
    if projection == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    else:
        v = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    score = model.score(repeated, t, create_graph=True)
    projected = (v * score).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(projected.sum(), repeated, create_graph=True,
                                  allow_unused=True)
    trace = (v * grad).flatten(1).sum(1) if grad is not None else torch.zeros_like(projected)
    norm = score.flatten(1).square().sum(1) if variance_reduction else projected.square()
    return (0.5 * norm + trace).mean()


def denoising_score_matching(
    model: EnergyModel,
    batch: Tensor,
    *,
    sigma: float = 0.1,
    t: TimeLike = None,
    generator: torch.Generator | None = None,
    jit: bool = False,
) -> Tensor:
    """Vincent's J_σ = ½ mean ‖s(x + σε) + ε/σ‖², ε ~ N(0, I).

    The minimiser is the score of the data convolved with N(0, σ² I), not of
    the data itself: a Gaussian model learns covariance Σ_d + σ² I. With
    ``jit=True`` the score and the loss run as one compiled kernel (the noise is
    still drawn from ``generator``); the first call compiles it.
    """
    check_model(model, "denoising_score_matching", "score")
    x = check_batch(model, batch, "denoising_score_matching")
    sigma = validation.positive("denoising_score_matching: sigma", sigma)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _run(_denoising_objective, jit, model, x + sigma * noise, noise, sigma, t)


def _denoising_objective(model: EnergyModel, noisy: Tensor, noise: Tensor, sigma: float,
                         t: TimeLike) -> Tensor:
    score = model.score(noisy, t, create_graph=True)
    return 0.5 * (score + noise / sigma).flatten(1).square().sum(1).mean()


def _run(objective: Callable[..., Tensor], jit: bool, model: EnergyModel, *args) -> Tensor:
    """``objective(model, *args)``, through a compiled training kernel when ``jit``."""
    if not jit:
        return objective(model, *args)
    compiled = compile_model(model)
    return call_compiled(objective, compiled, compiled, *args, differentiable=True)


def multi_noise_dsm(
    model: EnergyModel,
    batch: Tensor,
    *,
    sigma_min: float = 0.01,
    sigma_max: float = 1.0,
    sigmas: Sequence[float] | Tensor | None = None,
    generator: torch.Generator | None = None,
    jit: bool = False,
) -> Tensor:
    """Noise-conditional DSM: J = ½ mean ‖σ s(x + σε, σ) + ε‖² (λ(σ) = σ²).

    One σ per sample, log-uniform on [``sigma_min``, ``sigma_max``] or
    uniform over the discrete levels ``sigmas`` (Song & Ermon 2019's
    geometric sequence). ``model`` must be noise-conditioned (a
    :class:`~ebmalgebra.CapabilityError` otherwise): σ is passed as ``t`` of
    shape ``(batch,)``. ``jit=True`` compiles score and loss into one
    kernel, as for :func:`denoising_score_matching`.

    Example:
        >>> net = DenoiserEnergy(ResidualMLPDenoiser((16, 16)))
        >>> loss = multi_noise_dsm(as_model(net, name="face"), x, sigma_max=12.0)
    """
    check_model(model, "multi_noise_dsm", "score")
    x = check_batch(model, batch, "multi_noise_dsm")
    _require_noise_conditioned(model, "multi_noise_dsm")
    n = x.shape[0]
    if sigmas is not None:
        levels = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).reshape(-1)
        if levels.numel() == 0:
            raise ArgumentError("multi_noise_dsm: sigmas must be non-empty, got []")
        validation.positive_entries("multi_noise_dsm: sigmas", levels)
        index = torch.randint(0, levels.numel(), (n,), generator=generator, device=x.device)
        sigma = levels[index]
    else:
        low = math.log(validation.positive("multi_noise_dsm: sigma_min", sigma_min))
        high = math.log(validation.positive("multi_noise_dsm: sigma_max", sigma_max))
        if low > high:
            raise ArgumentError(f"multi_noise_dsm: sigma_min ({sigma_min}) must not exceed "
                                f"sigma_max ({sigma_max})")
        u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
        sigma = torch.exp(low + (high - low) * u)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _run(_multi_noise_objective, jit, model, x, noise, sigma)


def _require_noise_conditioned(model: EnergyModel, operation: str) -> None:
    """A :class:`CapabilityError` unless some leaf of ``model`` takes a noise level."""
    from ebmalgebra.zoo.sampling import is_noise_conditioned  # the zoo builds on learning

    if not is_noise_conditioned(model):
        raise CapabilityError(
            f"{operation}: '{model!r}' is not noise-conditioned, so it would ignore σ; build "
            "it with noise_conditioned=True (e.g. MLPEnergy(..., noise_conditioned=True) or "
            "DenoiserEnergy) or train it with denoising_score_matching at one σ"
        )


def _multi_noise_objective(model: EnergyModel, x: Tensor, noise: Tensor, sigma: Tensor
                           ) -> Tensor:
    per_sample = sigma.reshape(x.shape[0], *([1] * (x.dim() - 1)))
    score = model.score(x + per_sample * noise, sigma, create_graph=True)
    return 0.5 * (per_sample * score + noise).flatten(1).square().sum(1).mean()
