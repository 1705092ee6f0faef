"""Symplectic integrators of Hamiltonian dynamics: the leapfrog (velocity Verlet).

For H(x, p) = E(x) + ½ pᵀ M⁻¹ p (a :class:`~ebmalgebra.samplers.metrics.Metric`)
and score s = −∇E, one leapfrog step of size ε is

    p ← p + (ε/2) s(x);   x ← x + ε M⁻¹ p;   (E, s) ← energy_and_score(x);   p ← p + (ε/2) s(x)

It is volume-preserving and time-reversible (negate p, step, negate p: back
to the start; equivalently, a step of −ε undoes a step of ε), and its energy
error H(x′, p′) − H(x, p) after a fixed integration time is O(ε²) (Leimkuhler
& Reich 2004; Neal 2011, §2.3). The score at the current point travels in the
:class:`PhasePoint`, so every step costs exactly one ``energy_and_score`` call.

Shapes: positions, momenta and scores ``(n_chains, *event_shape)``, energies
``(n_chains,)``; a step size is a float or one value per chain ``(n_chains,)``
(negative values integrate backwards, as NUTS does). The functions are plain
tensor code with no value-dependent branching, usable in ``torch.compile``.

Example:
    >>> point = PhasePoint(x, metric.sample_momentum(x, generator), *energy_and_score(x))
    >>> point = leapfrog(point, 0.1, metric, energy_and_score)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.samplers.metrics import Metric

__all__ = ["EnergyAndScore", "PhasePoint", "integrate", "leapfrog"]

EnergyAndScore = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``x (n, *event_shape) -> (E(x) (n,), s(x) = −∇E(x) like x)``."""


class PhasePoint(NamedTuple):
    """A point of phase space with its cached energy and score.

    Attributes:
        position: x, ``(n_chains, *event_shape)``.
        momentum: p, like ``position``.
        energy: E(x), ``(n_chains,)``.
        score: s(x) = −∇E(x), like ``position``.
    """

    position: Tensor
    momentum: Tensor
    energy: Tensor
    score: Tensor


def _per_chain(step_size: float | Tensor, like: Tensor) -> float | Tensor:
    """ε as a float or ``(n, 1, …, 1)`` to broadcast against ``like`` ``(n, *event_shape)``."""
    if not isinstance(step_size, Tensor) or step_size.dim() == 0:
        return step_size
    return step_size.reshape(step_size.shape + (1,) * (like.dim() - 1))


def _kick(momentum: Tensor, scale: float | Tensor, score: Tensor) -> Tensor:
    """p + scale · s in one fused op."""
    if isinstance(scale, Tensor):
        return torch.addcmul(momentum, scale, score)
    return torch.add(momentum, score, alpha=scale)


def leapfrog(point: PhasePoint, step_size: float | Tensor, metric: Metric,
             energy_and_score: EnergyAndScore) -> PhasePoint:
    """One leapfrog step of size ε (float or per chain ``(n_chains,)``, may be negative).

    Costs one ``energy_and_score`` call (the start's score is ``point.score``).
    """
    return integrate(point, step_size, metric, energy_and_score, 1)


def integrate(point: PhasePoint, step_size: float | Tensor, metric: Metric,
              energy_and_score: EnergyAndScore, n_steps: int,
              shared_step_size: Tensor | None = None) -> PhasePoint:
    """``n_steps`` leapfrog steps of size ε from ``point``.

    The same as ``n_steps`` calls of :func:`leapfrog` up to float rounding, with the
    inner half kicks fused into full kicks (p ← p + ε s) and ε M⁻¹ computed once, so
    a trajectory costs ``n_steps`` ``energy_and_score`` calls and ``n_steps + 1``
    kicks. ``n_steps`` is a Python int (one compiled graph per length under
    ``torch.compile``). ``shared_step_size``: ε as a 0-d tensor when every chain has the
    same step size (:func:`~ebmalgebra.samplers.base.shared_value`); the kicks then scale
    by it, with the same results, in one loop over all coordinates instead of one per
    chain row (the drift keeps ε M⁻¹ per chain, a full tensor).
    """
    validation.count("integrate: n_steps", n_steps)
    x, momentum, energy, score = point
    epsilon = _per_chain(step_size, x)
    scale = metric.drift_scale(epsilon)
    if shared_step_size is not None:
        epsilon = shared_step_size
    half = 0.5 * epsilon
    p = _kick(momentum, half, score)
    for index in range(n_steps):
        x = metric.drift(x, p, scale)
        energy, score = energy_and_score(x)
        p = _kick(p, epsilon if index < n_steps - 1 else half, score)
    return PhasePoint(x, p, energy, score)
