"""An observation as an energy: :class:`GaussianLikelihood`, the leaf of posterior expressions.

An observation y = A(x) + σ η, η ~ N(0, I), seen through a mask M, has the
likelihood p(y | x) ∝ exp(−‖M ⊙ (A(x) − y)‖² / (2σ²)). As a function of x
that is an energy, so a posterior is a product of experts,
``prior & GaussianLikelihood(y, sigma, mask=M, operator=A)``
(:mod:`ebmalgebra.apps.inverse` builds and estimates it).

**Noise-conditioned priors.** A prior E(x, t) trained on data smoothed by
N(0, t² I) is sampled by annealed Langevin dynamics from large to small t.
The likelihood then has to describe the same smoothed variable x_t = x + t ε:
y = A(x_t) − t A(ε) + σ η, so, treating the smoothing noise as independent of
x (exact for masks and the identity, whose rows are orthonormal), y given x_t
has variance σ² + t². ``GaussianLikelihood(..., noise_conditioned=True)``
uses exactly that, E(x, t) = ‖M ⊙ (A(x) − y)‖² / (2(σ² + t²)).
At high t the data term is weak and chains explore the prior; as t → t_min
it tightens to the true likelihood (σ² + t_min² ≈ σ²). This is the
"σ_obs² + t²" rule of annealed posterior sampling (Jalal et al. 2021,
Kawar et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, TimeLike, input_options
from ebmalgebra.errors import CompositionError
from ebmalgebra.io import SerializationError, register_leaf
from ebmalgebra.leaves import Leaf, as_event_shape

__all__ = ["GaussianLikelihood"]


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
        sigma = validation.positive(f"{name}: sigma", sigma)
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

        super().__init__(torch.Size(shape), name, Capabilities(
            has_energy=True, has_score=True, normalizer_known=False, can_sample=False))
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
    zeros = torch.zeros((1, *event_shape), **input_options(operator, dtype=dtype))
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
