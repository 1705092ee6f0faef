"""Anomaly detection with unnormalised densities: energies, likelihood ratios, ROC curves.

A model p̃ = exp(−E) ranks inputs by likelihood without its normaliser Z:
log p(x) = −E(x) − log Z, and log Z is the same constant for every x, so
sorting by E is sorting by −log p. :func:`energy_score` is that score
(higher = more anomalous).

Raw likelihood is confounded by low-level statistics: a model of digits can
give a dimmed digit, which is "simpler" (closer to the dark background),
a *higher* likelihood than a real one. Ren et al. 2019 divide it by a
*reference* (background) model that captures only those statistics:

    score(x) = log p_ref(x) − log p_model(x) = E_model(x) − E_ref(x) + (log Z_model − log Z_ref).

The bracket is again a constant, so the ranking by E_model − E_ref is exact
although neither Z is known. In the algebra the ratio is just the energy of
``model & ~reference`` (p̃_model / p̃_ref), which is what
:class:`LikelihoodRatioDetector` evaluates.

:func:`roc_auc` and :func:`roc_curve` measure a score with numpy alone;
:func:`plot_roc` draws curves with matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, TimeLike
from ebmalgebra.compile import compile
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError

__all__ = ["LikelihoodRatioDetector", "energy_score", "plot_roc", "roc_auc", "roc_curve"]

_CHUNK = 2048


def energy_score(model: EnergyModel, x: Tensor, *, t: TimeLike = None) -> Tensor:
    """Anomaly score E(x) (= −log p(x) up to a constant), ``(batch,)``; higher = more anomalous.

    ``x`` is ``(batch, *event_shape)``; ``t`` is the noise level at which to
    read a noise-conditioned model (its energy of the data smoothed by
    N(0, t² I)), a scalar or one per input, ``(batch,)``. Evaluated without
    gradients, in chunks.

    Raises:
        TypeError: x is not a tensor.
        CompositionError: x has no batch dimension, or t is neither a scalar
            nor ``(batch,)``.

    Example:
        >>> scores = energy_score(model, test_images, t=0.1)
    """
    compiled = compile(model)
    compiled.require("energy", "energy_score")
    _check_batch(model, x, t)
    chunks = x.split(_CHUNK)
    t_chunks = t.split(_CHUNK) if isinstance(t, Tensor) and t.dim() > 0 else [t] * len(chunks)
    with torch.no_grad():
        return torch.cat([compiled.energy(chunk, t_chunk)
                          for chunk, t_chunk in zip(chunks, t_chunks, strict=True)])


def _check_batch(model: EnergyModel, x: object, t: TimeLike) -> None:
    """x is a ``(batch, *event_shape)`` tensor and t a scalar or one level per row."""
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"energy_score: x must be a torch.Tensor, got {type(x).__name__}")
    event_shape = model.event_shape
    n_event = 0 if event_shape is None else len(event_shape)
    if x.dim() <= n_event:
        raise CompositionError(
            f"energy_score: x must be a batch (batch, *event_shape) for {model!r} of "
            f"event_shape {tuple(event_shape or ())}; got shape {tuple(x.shape)} (use x[None] "
            "for one input)")
    batch_shape = x.shape[:1] if event_shape is None else x.shape[:x.dim() - n_event]
    if isinstance(t, Tensor) and t.dim() > 0 and t.shape != batch_shape:
        raise CompositionError(f"energy_score: t must be a scalar or shaped like x's batch "
                               f"{tuple(batch_shape)}; got {tuple(t.shape)}")


class LikelihoodRatioDetector:
    """Score x by the log-likelihood ratio E_model(x) − E_reference(x); higher = more anomalous.

    The ratio is the energy of the expression ``model & ~reference``
    (p̃_model / p̃_ref), kept as :attr:`expression`. Both normalisers cancel up
    to one constant, so the ranking, and every ROC number, is exact.

    Args:
        model: the density of normal data.
        reference: a background model capturing what both normal and
            anomalous inputs share (pixel statistics, intensity), e.g. a
            per-pixel Gaussian fitted to the data or the same network trained
            on randomly perturbed data (Ren et al. 2019). Same event shape.
        t: noise level for noise-conditioned models (passed to both).

    Raises:
        CompositionError: the event shapes differ.

    Example:
        >>> detector = LikelihoodRatioDetector(digits_0to4, background, t=0.1)
        >>> roc_auc(detector.score(inliers), detector.score(outliers))
    """

    def __init__(self, model: EnergyModel, reference: EnergyModel, *, t: TimeLike = None):
        for what, value in (("model", model), ("reference", reference)):
            validation.instance(f"LikelihoodRatioDetector: {what}", value, EnergyModel,
                                "an EnergyModel")
        self.model = model
        self.reference = reference
        self.t = t
        self.expression = model & ~reference

    def score(self, x: Tensor) -> Tensor:
        """E_model(x) − E_reference(x), ``(batch,)`` for x ``(batch, *event_shape)``."""
        return energy_score(self.expression, x, t=self.t)

    def __repr__(self) -> str:
        extra = "" if self.t is None else f", t={self.t!r}"
        return f"LikelihoodRatioDetector({self.model!r}, {self.reference!r}{extra})"


def _as_scores(values: object, what: str) -> np.ndarray:
    array = (values.detach().cpu().double().numpy() if isinstance(values, Tensor)
             else np.asarray(values, dtype=np.float64))
    if array.ndim != 1:
        # Flattening (n, k) scores would rank n·k numbers as if they were n·k samples.
        raise ArgumentError(f"{what} must be 1-D, one score per sample (n,); got shape "
                            f"{tuple(array.shape)}")
    if array.size == 0:
        raise ArgumentError(f"{what} must not be empty")
    if np.isnan(array).any():
        raise ArgumentError(f"{what} contains NaN; an anomaly score must be comparable")
    return array


def roc_auc(inlier_scores: Tensor | np.ndarray, outlier_scores: Tensor | np.ndarray) -> float:
    """Area under the ROC curve for "outlier" as the positive class; higher scores = outlier.

    AUC = P(s_out > s_in) + ½ P(s_out = s_in), the Mann–Whitney statistic
    computed from average ranks (ties count one half): 1 separates perfectly,
    0.5 is chance, below 0.5 the score ranks the wrong way round. ±inf scores
    are allowed; NaN or scores that are not 1-D ``(n,)`` raise ``ValueError``.

    Example:
        >>> roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
        1.0
    """
    inliers = _as_scores(inlier_scores, "inlier_scores")
    outliers = _as_scores(outlier_scores, "outlier_scores")
    values = np.concatenate([inliers, outliers])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    average_rank = (last - (counts - 1) / 2.0)[inverse]
    n_in, n_out = inliers.size, outliers.size
    rank_sum = average_rank[n_in:].sum()
    return float((rank_sum - n_out * (n_out + 1) / 2.0) / (n_in * n_out))


def roc_curve(inlier_scores: Tensor | np.ndarray, outlier_scores: Tensor | np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(false_positive_rate, true_positive_rate, thresholds)`` of "score ≥ threshold → outlier".

    Thresholds are strictly decreasing. The first point is (0, 0), nothing
    flagged, with threshold +inf; then comes one point per distinct score, at
    that score, down to (1, 1). A +inf score gets the threshold
    ``np.finfo(np.float64).max`` (the largest finite float) instead, so that
    +inf means "nothing flagged" and every later point k is exactly
    "score ≥ thresholds[k]". The trapezoidal area under the curve equals
    :func:`roc_auc`.

    Example:
        >>> roc_curve([0.0, 1.0], [2.0])
        (array([0. , 0. , 0.5, 1. ]), array([0., 1., 1., 1.]), array([inf,  2.,  1.,  0.]))
    """
    inliers = _as_scores(inlier_scores, "inlier_scores")
    outliers = _as_scores(outlier_scores, "outlier_scores")
    scores = np.minimum(np.concatenate([inliers, outliers]), np.finfo(np.float64).max)
    thresholds = np.unique(scores)[::-1]
    fpr = np.concatenate([[0.0], _fraction_at_least(inliers, thresholds)])
    tpr = np.concatenate([[0.0], _fraction_at_least(outliers, thresholds)])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def _fraction_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of ``scores`` ≥ each threshold."""
    ordered = np.sort(scores)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="left")) / ordered.size


def plot_roc(
    curves: Mapping[str, tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
    *,
    ax=None,
    path: str | Path | None = None,
    title: str | None = None,
):
    """Plot ROC curves, one per ``label → (inlier_scores, outlier_scores)``, AUC in the legend.

    Draws into ``ax`` (a new figure if ``None``) and saves to ``path`` if
    given; returns the Axes.

    Example:
        >>> plot_roc({"energy": (e_in, e_out), "ratio": (r_in, r_out)}, path="roc.png")
    """
    from ebmalgebra.plotting import new_axes, save_figure

    if ax is None:
        ax = new_axes(path, figsize=(4, 4))
    for label, (inliers, outliers) in curves.items():
        fpr, tpr, _ = roc_curve(inliers, outliers)
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {roc_auc(inliers, outliers):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (inliers flagged)")
    ax.set_ylabel("true positive rate (outliers flagged)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    if path is not None:
        save_figure(ax.figure, path, tight=True)
    return ax
