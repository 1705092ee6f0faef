"""Run-time check for improper targets: warn when chains run away.

An expression such as ``a & ~b`` or ``a ** -1`` is generally improper:
∫ exp(−E) = ∞ because E → −∞ along some direction (DESIGN §1). MCMC still
runs on it, locally, but nothing stops the chains: they drift outwards while
the energy falls without bound, and the "samples" are garbage (face pixels of
158, 2-D points at ±700). This module watches for that symptom:

    escaped(x) ⇔ maxⱼ |xⱼ − cⱼ| > factor · scale,

with c the centre and ``scale`` the reference size: the largest of a data
scale (the zoo card's ``"data_scale"``, max |xⱼ| of the training data), the
spread of the starting points, maxᵢⱼ |x0ᵢⱼ − cⱼ| with c the mean of x0, and
the size of c itself, maxⱼ |cⱼ| (1 when all of these are 0).
``factor`` is 10 by default: a proper target's chains equilibrate in its own
typical set, so they pass ten times the starting spread only when the
target is far wider than the starting points (then start the chains wider,
or silence the warning). When a run escapes, one :class:`ImproperTargetWarning`
names the expression's improper part (:func:`improper_parts`) and how far
the chains went, once per run.

:func:`ebmalgebra.sample` watches every run (a check every
:data:`CHECK_EVERY` steps and at the end, one host synchronisation each);
:func:`ebmalgebra.zoo.draw` checks its final positions against the card's
data scale.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel

__all__ = ["CHECK_EVERY", "EscapeWatch", "ImproperTargetWarning", "check_final",
           "escape_message", "improper_parts", "warn_if_escaped"]

CHECK_EVERY = 64
"""Steps between two checks of a run: rare enough to cost nothing next to the steps."""

DEFAULT_FACTOR = 10.0
"""How many reference scales away a chain counts as escaped."""


class ImproperTargetWarning(RuntimeWarning):
    """Chains ran far beyond the data or starting scale: the target is probably improper
    (or, with no inverse in it, the step size too large for the sampler to be stable)."""


def improper_parts(model: EnergyModel) -> list[EnergyModel]:
    """The sub-expressions that can make ``model`` improper, smallest first found.

    A Gaussian part with a precision that is not positive definite
    (:func:`ebmalgebra.normalize.improper_gaussian_part`) if there is one; else
    every power with a negative exponent (``~b``, ``b ** -2``): 1/p̃_b grows
    without bound wherever p̃_b vanishes, which a product with another factor
    may or may not cure. Empty when neither is found.

    Example:
        >>> improper_parts(a & ~b)
        [~b]
    """
    from ebmalgebra.normalize import improper_gaussian_part
    from ebmalgebra.ops import Power

    model = getattr(model, "source", model)  # a CompiledEnergy keeps its expression
    gaussian = improper_gaussian_part(model)
    if gaussian is not None:
        return [gaussian[0]]
    found: list[EnergyModel] = []
    pending = [model]
    while pending:
        node = pending.pop()
        if isinstance(node, Power) and node.exponent < 0:
            found.append(node)
        else:
            pending.extend(reversed(node.operands()))
    return found


def escape_message(model: EnergyModel, distance: float, limit: float, n_escaped: int,
                   n_chains: int, where: str) -> str:
    """The warning text: how far the chains went, and the improper part of ``model``."""
    parts = improper_parts(model)
    if parts:
        culprit = (f"its improper part is probably {', '.join(repr(p) for p in parts)}: an "
                   "inverse or negative power has no bound where that factor's density "
                   "vanishes, so the expression cannot be normalised. The draws are not "
                   "samples of a distribution. Use a stable form such as "
                   "a & (base & ~b) ** alpha (docs/algebra.md)")
    else:
        culprit = ("no inverse or negative power was found: the step size may be too large "
                   "(an unstable integrator diverges even on a proper target), the energy "
                   "may be unbounded below, or the target far wider than the starting points "
                   "(then the draws are fine: start chains as wide as the target)")
    return (f"{where}: {n_escaped} of {n_chains} chains of {model!r} ran to "
            f"max|x − c| = {distance:.3g}, beyond {limit:.3g} ({DEFAULT_FACTOR:g}× the data or "
            f"starting scale); {culprit}. Silence this with warnings.filterwarnings('ignore', "
            "category=ebmalgebra.samplers.ImproperTargetWarning).")


class _Reference(NamedTuple):
    center: Tensor  # broadcastable to one position, event_shape
    limit: float


def _reference(x0: Tensor | None, scale: float | None,
               center: float | Tensor | None) -> _Reference:
    if x0 is None:
        middle = torch.as_tensor(0.0 if center is None else center)
        reference = scale or 0.0
    else:
        start = x0.detach()
        middle = start.mean(0) if center is None else torch.as_tensor(
            center, dtype=start.dtype, device=start.device)
        # The start's location counts as a scale too: chains started together at x = 5
        # may well be meant to explore a target of size 5 around the origin.
        reference = max(float((start - middle).abs().amax()), float(middle.abs().amax()),
                        scale or 0.0)
    # An all-equal start (x0 = zeros) and no data scale: measure against unit scale.
    return _Reference(middle, DEFAULT_FACTOR * (reference if reference > 0 else 1.0))


class EscapeWatch:
    """Watches a run's positions and warns once if chains escape (module docstring).

    Args:
        model: the expression sampled (named in the warning).
        x0: starting points ``(n_chains, *event_shape)``.
        scale: a data scale (max |xⱼ| of typical data), if known.
        center: the centre c; default the mean of ``x0``.
        n_steps: total steps of the run (the last one is always checked).
        where: the caller's name, at the start of the warning.
        exact: the model is normalised (so proper) and every step leaves it exactly
            invariant: its chains go only where it has mass, however far that is (a
            constrained model's unconstrained coordinates, say), so nothing is watched.
    """

    def __init__(self, model: EnergyModel, x0: Tensor, *, scale: float | None = None,
                 center: float | Tensor | None = None, n_steps: int,
                 where: str = "sample", exact: bool = False) -> None:
        self.model = model
        self.reference = _reference(x0, scale, center)
        self.n_steps = n_steps
        self.where = where
        self.warned = exact  # an exact run has nothing to warn about

    def update(self, index: int, position: Tensor) -> None:
        """Check after step ``index`` (0-based) every :data:`CHECK_EVERY` steps and at the end."""
        if self.warned or ((index + 1) % CHECK_EVERY and index + 1 != self.n_steps):
            return
        self.warned = warn_if_escaped(self.model, position, self.reference, self.where)


def warn_if_escaped(model: EnergyModel, position: Tensor, reference: _Reference,
                    where: str) -> bool:
    """Warn (:class:`ImproperTargetWarning`) if any chain of ``position`` is beyond
    ``reference.limit``; returns whether it warned."""
    center = reference.center.to(device=position.device, dtype=position.dtype)
    distance = (position.detach() - center).abs().reshape(len(position), -1).amax(1)
    # NaN positions (frozen chains) are counted elsewhere, not as escapes.
    escaped = distance > reference.limit
    if not bool(escaped.any()):
        return False
    warnings.warn(escape_message(model, float(distance[escaped].max()), reference.limit,
                                 int(escaped.sum()), len(distance), where),
                  ImproperTargetWarning, stacklevel=4)
    return True


def check_final(model: EnergyModel, positions: Tensor, *, x0: Tensor | None = None,
                scale: float | None = None, center: float | Tensor | None = None,
                where: str = "draw") -> bool:
    """One check of final ``positions``: against ``scale`` around ``center`` (default 0)
    alone, or, given ``x0``, against the largest of ``scale``, x0's spread around
    ``center`` (default x0's mean) and the size of ``center``. Returns whether it warned."""
    return warn_if_escaped(model, positions, _reference(x0, scale, center), where)
