"""Contrastive divergence: maximum likelihood with MCMC negatives.

For p_θ = exp(−E_θ)/Z_θ the gradient of the negative log-likelihood is

    ∇_θ NLL = E_data[∇_θ E_θ(x)] − E_{p_θ}[∇_θ E_θ(x)],

because ∇_θ log Z_θ = −E_{p_θ}[∇_θ E_θ]. The second expectation is
estimated with negatives x⁻ from a short MCMC run, held fixed (no gradient
through the sampler), which makes it the gradient of the surrogate

    L(θ) = mean E_θ(x⁺) − mean E_θ(x⁻) + α (mean E_θ(x⁺)² + mean E_θ(x⁻)²),

where the optional α term (Du & Mordatch 2019) keeps energies near zero so
that they cannot drift without bound. Where the chains start decides the
variant:

* ``buffer=None``: at the data batch, CD-k (Hinton 2002);
* ``buffer=ReplayBuffer(...)``: from a replay buffer with 5% fresh noise
  (Du & Mordatch 2019);
* ``buffer=ReplayBuffer.persistent(x0)``: persistent chains (Tieleman 2008).

The negatives come from any sampler of the library (``ULA``, ``MALA``,
``HMC``, …): ``sampler.init(x0, model)`` then ``n_steps`` calls of
``sampler.step(state, generator)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, ArgumentTypeError
from ebmalgebra.learning._checks import check_batch, check_model
from ebmalgebra.learning.buffer import ReplayBuffer

__all__ = ["contrastive_divergence"]


def contrastive_divergence(
    model: EnergyModel,
    batch: Tensor,
    *,
    sampler: object,
    n_steps: int = 20,
    buffer: ReplayBuffer | None = None,
    alpha: float = 0.0,
    generator: torch.Generator | None = None,
    return_negatives: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Surrogate loss whose gradient is the MLE gradient; see the module docstring.

    Args:
        model: an expression with an energy (score-only models cannot be
            trained by CD: the loss needs E itself).
        batch: data x⁺ ``(batch, *event_shape)``.
        sampler: any library sampler (an object with ``init(x0, model)`` and
            ``step(state, generator)``), e.g. ``ULA(step_size=0.01)``.
        n_steps: MCMC steps per loss evaluation.
        buffer: a :class:`ReplayBuffer` where chains start (``None``: at the
            data); one negative per data point is drawn and written back
            after sampling.
        alpha: weight α ≥ 0 of the energy-magnitude regulariser α (E⁺² + E⁻²).
        generator: a ``torch.Generator`` for the buffer and the sampler.
        return_negatives: also return the negatives x⁻.

    Returns:
        The 0-d loss (and x⁻ ``(batch, *event_shape)`` with
        ``return_negatives``). Negatives whose energy is not finite are left
        out of the loss; in the buffer, those whose energy or score is not
        finite are re-initialised from its noise. If no energy is finite a
        ``FloatingPointError`` suggests a smaller step size.

    Example:
        >>> buffer = ReplayBuffer(10_000, 2, low=-4, high=4)
        >>> loss = contrastive_divergence(model, x, sampler=ULA(step_size=0.01),
        ...                               n_steps=20, buffer=buffer, alpha=0.1)
    """
    check_model(model, "contrastive_divergence", "energy")
    positives = check_batch(model, batch, "contrastive_divergence")
    if not hasattr(sampler, "init") or not hasattr(sampler, "step"):
        raise ArgumentTypeError(f"contrastive_divergence: sampler must have init(x0, model) and "
                                f"step(state, generator), got {type(sampler).__name__}; "
                                "use e.g. ebmalgebra.samplers.ULA(step_size=...)")
    validation.count("contrastive_divergence: n_steps", n_steps, 0)
    alpha = validation.non_negative("contrastive_divergence: alpha", alpha)
    validation.generator("contrastive_divergence: generator", generator)
    n = positives.shape[0]
    if buffer is None:
        starts, index = positives.detach(), None
    else:
        if not isinstance(buffer, ReplayBuffer):
            raise ArgumentTypeError(
                f"contrastive_divergence: buffer must be a ReplayBuffer or None, got "
                f"{type(buffer).__name__}; for chains that start at a tensor x0 use "
                "ReplayBuffer.persistent(x0)")
        if tuple(buffer.event_shape) != tuple(positives.shape[1:]):
            raise ArgumentError(f"contrastive_divergence: the buffer holds points of shape "
                                f"{tuple(buffer.event_shape)} but data points are "
                                f"{tuple(positives.shape[1:])}")
        starts, index = buffer.draw(n, generator)

    state = sampler.init(starts.to(positives), model)
    for _ in range(n_steps):
        state, _ = sampler.step(state, generator)
    negatives = state.position.detach()

    energy_pos = model.energy(positives)
    energy_neg = model.energy(negatives)
    if index is not None:
        buffer.update(index, negatives, energy=energy_neg.detach(), score=_score(state, negatives),
                      generator=generator)
    finite = torch.isfinite(energy_neg.detach())
    if not finite.all():
        if not finite.any():
            raise FloatingPointError(
                "contrastive_divergence: every negative has a non-finite energy; the sampler "
                "diverged, so lower its step size or add the regulariser alpha"
            )
        energy_neg = energy_neg[finite]
    loss = energy_pos.mean() - energy_neg.mean()
    if alpha:
        loss = loss + alpha * (energy_pos.square().mean() + energy_neg.square().mean())
    return (loss, negatives) if return_negatives else loss


def _score(state: object, position: Tensor) -> Tensor | None:
    """The sampler's score at ``position`` if its state keeps one (ULA, MALA, HMC), else None."""
    score = getattr(state, "score", None)
    if isinstance(score, Tensor) and score.shape == position.shape:
        return score.detach()
    return None
