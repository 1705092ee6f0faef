"""Resampling schemes for sequential Monte Carlo: which particles survive, and how often.

Each scheme takes normalised weights W ``(N,)`` (Σ W = 1) and returns ancestor
indices A ``(M,)`` (M = N by default) such that the offspring count
N_i = #{m : A_m = i} is unbiased, E[N_i] = M·W_i. They differ in the variance
of N_i (Douc, Cappé & Moulines 2005):

* ``multinomial``: A_m i.i.d. from W; N ~ Multinomial(M, W), Var N_i = M W_i (1 − W_i).
* ``stratified``: one uniform per stratum, u_m = (m + U_m)/M with U_m ~ U(0, 1)
  independent; A_m = F⁻¹(u_m) with F the cumulative weights.
* ``systematic``: the same with one uniform shared by all strata, u_m = (m + U)/M;
  N_i is ⌊M W_i⌋ or ⌈M W_i⌉, so Var N_i ≤ ¼. The default.
* ``residual``: ⌊M W_i⌋ copies of particle i kept deterministically, the
  remaining R = M − Σ⌊M W_i⌋ drawn multinomially from the residual weights
  (M W_i − ⌊M W_i⌋)/R.

Indices come back sorted (ancestors in order), on the weights' device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentError, CompositionError

__all__ = ["RESAMPLING", "multinomial", "resample", "residual", "stratified", "systematic"]


def _check_weights(weights: Tensor, what: str) -> Tensor:
    validation.floating_tensor(f"{what}: weights", weights)
    if weights.dim() != 1 or weights.shape[0] == 0:
        raise CompositionError(f"{what}: weights must be a non-empty vector (N,), got shape "
                               f"{tuple(weights.shape)}")
    validation.non_negative_entries(f"{what}: weights", weights)
    total = float(weights.sum())
    if abs(total - 1.0) > 1e-6 * weights.shape[0]:
        raise ArgumentError(f"{what}: weights must be normalised (sum to 1), they sum to "
                            f"{total!r}; pass torch.softmax(log_weights, 0)")
    return weights


def _inverse_cdf(weights: Tensor, points: Tensor) -> Tensor:
    """Indices i with F_{i−1} ≤ u < F_i for sorted or unsorted points u ∈ [0, 1)."""
    cumulative = torch.cumsum(weights, 0)
    # Rounding can leave F_N a hair below 1, or round a point (n − 1 + U)/n up to 1; a
    # point at or beyond F_N belongs to the last particle with positive weight (the first
    # i with F_i = F_N), never to a zero-weight one.
    cumulative = cumulative / cumulative[-1]
    indices = torch.searchsorted(cumulative, points.to(cumulative.dtype), right=True)
    return torch.minimum(indices, torch.searchsorted(cumulative, cumulative[-1:]))


def _uniforms(n: int, weights: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=weights.dtype, device=weights.device)


def multinomial(weights: Tensor, generator: torch.Generator | None = None,
                n: int | None = None) -> Tensor:
    """Multinomial resampling: ``n`` (default N) i.i.d. ancestors A_m ~ W, sorted ``(n,)``."""
    weights = _check_weights(weights, "multinomial")
    n = weights.shape[0] if n is None else validation.count("multinomial: n", n)
    return _inverse_cdf(weights, _uniforms(n, weights, generator)).sort().values


def stratified(weights: Tensor, generator: torch.Generator | None = None,
               n: int | None = None) -> Tensor:
    """Stratified resampling: A_m = F⁻¹((m + U_m)/n), U_m ~ U(0, 1) independent; ``(n,)``."""
    weights = _check_weights(weights, "stratified")
    n = weights.shape[0] if n is None else validation.count("stratified: n", n)
    offsets = torch.arange(n, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, (offsets + _uniforms(n, weights, generator)) / n)


def systematic(weights: Tensor, generator: torch.Generator | None = None,
               n: int | None = None) -> Tensor:
    """Systematic resampling: A_m = F⁻¹((m + U)/n) with one U ~ U(0, 1); ``(n,)``."""
    weights = _check_weights(weights, "systematic")
    n = weights.shape[0] if n is None else validation.count("systematic: n", n)
    offsets = torch.arange(n, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, (offsets + _uniforms(1, weights, generator)) / n)


def residual(weights: Tensor, generator: torch.Generator | None = None,
             n: int | None = None) -> Tensor:
    """Residual resampling: ⌊n W_i⌋ copies of each i, the rest multinomial on the
    residuals (n W_i − ⌊n W_i⌋)/R; sorted ``(n,)``."""
    weights = _check_weights(weights, "residual")
    n = weights.shape[0] if n is None else validation.count("residual: n", n)
    expected = n * weights
    copies = expected.floor().long()
    kept = torch.repeat_interleave(torch.arange(weights.shape[0], device=weights.device), copies)
    remaining = n - int(copies.sum())
    if remaining == 0:
        return kept
    leftover = expected - copies.to(expected.dtype)
    drawn = _inverse_cdf(leftover / leftover.sum(), _uniforms(remaining, weights, generator))
    return torch.cat([kept, drawn]).sort().values


RESAMPLING: dict[str, Callable[..., Tensor]] = {
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
    "multinomial": multinomial,
}
"""The resampling schemes by name."""


def resample(weights: Tensor, generator: torch.Generator | None = None, *,
             method: str = "systematic", n: int | None = None) -> Tensor:
    """Ancestor indices ``(n,)`` drawn from normalised weights ``(N,)`` by ``method``
    (one of :data:`RESAMPLING`); E[#{m : A_m = i}] = n·W_i for every scheme.

    Example:
        >>> ancestors = resample(torch.softmax(log_w, 0), generator, method="systematic")
        >>> particles = particles[ancestors]
    """
    validation.generator("resample: generator", generator)
    validation.one_of("resample: method", method, RESAMPLING)
    return RESAMPLING[method](weights, generator, n)
