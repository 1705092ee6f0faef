"""Euclidean metrics (mass matrices) for Hamiltonian samplers.

A metric is a positive-definite mass matrix M over the flattened event. The
Hamiltonian of a position x and momentum p is

    H(x, p) = E(x) + K(p),    K(p) = ½ pᵀ M⁻¹ p,

momenta are drawn as p ~ N(0, M), and the position moves along the velocity
dx/dt = ∂K/∂p = M⁻¹ p. Warmup estimates M⁻¹ as the covariance of the target
(Stan; Neal 2011, §4.1), so a metric stores the *inverse* mass M⁻¹ and,
precomputed once, the factor that turns standard normal noise ξ into a momentum:

- :class:`DiagonalMetric`: M⁻¹ = diag(m) with m shaped ``event_shape``;
  p = m^{−1/2} ⊙ ξ.
- :class:`DenseMetric`: M⁻¹ a ``(d, d)`` matrix, d = numel of ``event_shape``;
  p = L ξ with L the Cholesky factor of M = L Lᵀ.

Shapes: positions and momenta are ``(n_chains, *event_shape)``, kinetic
energies ``(n_chains,)``. Validation runs at construction (it reads tensor
values); the methods are branch-free tensor code, usable inside
``torch.compile``'d kernels. Device and dtype follow ``inverse_mass``
(move with :meth:`Metric.to`).

Example:
    >>> metric = DiagonalMetric(torch.tensor([4.0, 0.25]))
    >>> p = metric.sample_momentum(torch.zeros(1000, 2), torch.Generator().manual_seed(0))
    >>> metric.kinetic_energy(p).shape
    torch.Size([1000])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError

__all__ = ["DenseMetric", "DiagonalMetric", "Metric", "metric_class"]


def _flat(x: Tensor) -> Tensor:
    return x if x.dim() == 2 else x.reshape(x.shape[0], -1)


class Metric:
    """Base class of the Euclidean metrics: M⁻¹ and the factor of M.

    Subclasses set :attr:`dense`, implement :meth:`_mass_factor` (validating
    ``inverse_mass``), :meth:`momentum_from_noise`, :meth:`velocity` and
    :meth:`identity`, and check shapes in :meth:`check`.

    Attributes:
        inverse_mass: M⁻¹ (a detached tensor).
        mass_factor: the factor F with p = F ξ ~ N(0, M) for ξ ~ N(0, I).
        dense: whether M⁻¹ is a full ``(d, d)`` matrix (the covariance that adaptation
            estimates is then dense too).
    """

    dense: bool = False

    def __init__(self, inverse_mass: Tensor) -> None:
        validation.floating_tensor(f"{type(self).__name__}: inverse_mass", inverse_mass)
        self.inverse_mass = inverse_mass.detach()
        self.mass_factor = self._mass_factor(self.inverse_mass)

    def _mass_factor(self, inverse_mass: Tensor) -> Tensor:
        raise NotImplementedError

    @classmethod
    def identity(cls, position: Tensor) -> Metric:
        """M = I for positions ``(n_chains, *event_shape)``, on their device and dtype."""
        raise NotImplementedError

    @classmethod
    def starting(cls, inverse_mass: Tensor | None, position: Tensor, operation: str) -> Metric:
        """A sampler's first metric for positions ``(n_chains, *event_shape)``: the
        identity, or ``inverse_mass`` checked against the event shape, on the positions'
        device and dtype."""
        if inverse_mass is None:
            return cls.identity(position)
        metric = cls(inverse_mass.to(position))
        metric.check(position, operation)
        return metric

    def replace(self, inverse_mass: Tensor) -> Metric:
        """A metric of the same kind with a new M⁻¹ (e.g. the one warmup estimated)."""
        return type(self)(inverse_mass)

    def to(self, like: Tensor) -> Metric:
        """The same metric on ``like``'s device and dtype."""
        if self.inverse_mass.dtype == like.dtype and self.inverse_mass.device == like.device:
            return self
        return type(self)(self.inverse_mass.to(like))

    def check(self, position: Tensor, operation: str) -> None:
        """Raise :class:`~ebmalgebra.CompositionError` unless M⁻¹ fits positions
        ``(n_chains, *event_shape)``."""
        expected = self.expected_shape(position.shape[1:])
        if tuple(self.inverse_mass.shape) != expected:
            raise CompositionError(
                f"{operation}: inverse_mass for a {type(self).__name__} must be shaped "
                f"{expected} for event_shape {tuple(position.shape[1:])}, got "
                f"{tuple(self.inverse_mass.shape)}")

    @staticmethod
    def expected_shape(event_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """The shape of M⁻¹ for this kind of metric and ``event_shape``."""
        raise NotImplementedError

    def sample_momentum(self, position: Tensor, generator: torch.Generator | None) -> Tensor:
        """p ~ N(0, M), shaped like ``position`` ``(n_chains, *event_shape)``."""
        noise = torch.randn(position.shape, generator=generator, dtype=position.dtype,
                            device=position.device)
        return self.momentum_from_noise(noise)

    def momentum_from_noise(self, noise: Tensor) -> Tensor:
        """p = F ξ ~ N(0, M) from standard normal ξ ``(n_chains, *event_shape)``.

        Its kinetic energy is ½ ‖ξ‖² exactly (pᵀ M⁻¹ p = ξᵀ Fᵀ M⁻¹ F ξ = ξᵀ ξ), which a
        sampler that draws ξ itself can use instead of :meth:`kinetic_energy`.
        """
        raise NotImplementedError

    def velocity(self, momentum: Tensor) -> Tensor:
        """M⁻¹ p, shaped like ``momentum``."""
        raise NotImplementedError

    def kinetic_energy(self, momentum: Tensor) -> Tensor:
        """K(p) = ½ pᵀ M⁻¹ p per chain, ``(n_chains,)``."""
        return 0.5 * torch.linalg.vecdot(_flat(momentum), _flat(self.velocity(momentum)))

    def drift_scale(self, step_size: Tensor | float) -> Tensor | float:
        """What :meth:`drift` multiplies by, precomputed once per trajectory.

        ``step_size`` is ε as a float or broadcastable to positions (per chain
        ``(n_chains, 1, …, 1)``). The base class returns ε; a diagonal metric returns
        ε ⊙ M⁻¹ so that each drift is a single fused multiply-add.
        """
        return step_size

    def drift(self, position: Tensor, momentum: Tensor, scale: Tensor | float) -> Tensor:
        """x + ε M⁻¹ p, with ``scale`` from :meth:`drift_scale` (ε)."""
        if isinstance(scale, Tensor):
            return torch.addcmul(position, scale, self.velocity(momentum))
        return torch.add(position, self.velocity(momentum), alpha=scale)

    def __repr__(self) -> str:
        shape = tuple(self.inverse_mass.shape)
        return f"{type(self).__name__}(inverse_mass=tensor(shape={shape}))"


class DiagonalMetric(Metric):
    """M⁻¹ = diag(m), with m > 0 shaped ``event_shape`` (one variance per coordinate).

    Example:
        >>> DiagonalMetric(torch.ones(3)).velocity(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """

    dense = False

    def _mass_factor(self, inverse_mass: Tensor) -> Tensor:
        validation.positive_entries("DiagonalMetric: inverse_mass", inverse_mass)
        return inverse_mass.rsqrt()

    @classmethod
    def identity(cls, position: Tensor) -> DiagonalMetric:
        return cls(torch.ones(position.shape[1:], dtype=position.dtype,
                              device=position.device))

    @staticmethod
    def expected_shape(event_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        return tuple(event_shape)

    def momentum_from_noise(self, noise: Tensor) -> Tensor:
        return self.mass_factor * noise

    def velocity(self, momentum: Tensor) -> Tensor:
        return self.inverse_mass * momentum

    def drift_scale(self, step_size: Tensor | float) -> Tensor:
        return step_size * self.inverse_mass

    def drift(self, position: Tensor, momentum: Tensor, scale: Tensor | float) -> Tensor:
        """x + (ε ⊙ M⁻¹) ⊙ p in one fused op (``scale`` from :meth:`drift_scale`)."""
        return torch.addcmul(position, scale, momentum)


class DenseMetric(Metric):
    """M⁻¹ a symmetric positive-definite ``(d, d)`` matrix over the flattened event.

    Worth its O(d²) cost per step on strongly correlated targets, where a diagonal
    metric cannot undo the correlation.

    Example:
        >>> metric = DenseMetric(torch.tensor([[1.0, 0.9], [0.9, 1.0]]))
        >>> metric.velocity(torch.ones(5, 2)).shape
        torch.Size([5, 2])
    """

    dense = True

    def _mass_factor(self, inverse_mass: Tensor) -> Tensor:
        if inverse_mass.dim() != 2 or inverse_mass.shape[0] != inverse_mass.shape[1]:
            raise CompositionError("DenseMetric: inverse_mass must be a square (d, d) matrix, "
                                   f"got shape {tuple(inverse_mass.shape)}")
        scale = inverse_mass.abs().max()
        if not torch.allclose(inverse_mass, inverse_mass.mT, rtol=0.0, atol=float(1e-5 * scale)):
            raise ArgumentError("DenseMetric: inverse_mass must be symmetric")
        # In float64: a float32 inverse of a matrix conditioned like a windowed estimate
        # of few draws (κ ~ 1e5) is not symmetric enough for the Cholesky to succeed.
        exact = inverse_mass.to(torch.float64)
        factor, info = torch.linalg.cholesky_ex(torch.linalg.inv(exact))
        if info != 0 or not bool(torch.isfinite(factor).all()):
            raise ArgumentError("DenseMetric: inverse_mass (given, or estimated in warmup) must "
                                "be symmetric positive definite")
        return factor.to(inverse_mass.dtype)

    @classmethod
    def identity(cls, position: Tensor) -> DenseMetric:
        dim = math.prod(position.shape[1:])
        return cls(torch.eye(dim, dtype=position.dtype, device=position.device))

    @staticmethod
    def expected_shape(event_shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        dim = math.prod(event_shape)
        return (dim, dim)

    def momentum_from_noise(self, noise: Tensor) -> Tensor:
        return (_flat(noise) @ self.mass_factor.mT).reshape(noise.shape)

    def velocity(self, momentum: Tensor) -> Tensor:
        # p M⁻¹ row by row equals M⁻¹ p for the symmetric M⁻¹.
        return (_flat(momentum) @ self.inverse_mass).reshape(momentum.shape)


_KINDS: dict[str, type[Metric]] = {"diag": DiagonalMetric, "dense": DenseMetric}


def given_inverse_mass(value: object, operation: str) -> Tensor | None:
    """A sampler's ``inverse_mass`` argument as a detached tensor (a list or array in
    float64, cast to the positions' dtype at the start), or ``None``."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"{operation}: inverse_mass must be a tensor (or a list of "
                                f"numbers), got {type(value).__name__}") from None


def metric_class(kind: str | type[Metric], operation: str) -> type[Metric]:
    """The metric class for ``"diag"``, ``"dense"`` or a :class:`Metric` subclass."""
    if isinstance(kind, type) and issubclass(kind, Metric):
        return kind
    if kind not in _KINDS:
        raise ArgumentError(f"{operation}: metric must be one of {tuple(_KINDS)} or a Metric "
                            f"subclass, got {kind!r}")
    return _KINDS[kind]
