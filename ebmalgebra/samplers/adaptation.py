"""Warmup adaptation: dual-averaging step sizes and Stan-style windowed metrics.

Adaptation runs outside the kernels, between steps, only during warmup: it
reads ``info.acceptance_rate`` and ``state.position`` and writes
``state.step_size`` (and ``state.metric``). After warmup the state holds the
tuned values and the kernel runs unchanged, so the sampling phase is an exact
Markov chain.

**Interface** (what :func:`ebmalgebra.sample` calls, and what a new sampler
provides to get adaptation for free). :func:`window_adaptation` works for any
sampler with a step size, and also tunes a metric when it has one; it is typed
to no sampler class:

- the sampler has ``name``, ``target_accept`` (δ) and ``adapt_step_size``, and,
  to tune a metric, ``adapt_mass``; its class lists the switches it has in
  ``adaptation_flags`` (see :class:`~ebmalgebra.samplers.Sampler`);
- its state is a NamedTuple with ``position`` ``(n_chains, *event_shape)``,
  ``step_size`` ``(n_chains,)`` and, to tune a metric, ``metric`` (a
  :class:`~ebmalgebra.samplers.metrics.Metric`, replaced through
  ``metric.replace(inverse_mass)``);
- its info has ``acceptance_rate`` ``(n_chains,)`` in [0, 1] (NaN counts as 0):
  the Metropolis acceptance probability, or for NUTS the mean acceptance over
  the trajectory (Hoffman & Gelman 2014, §3.2).

``sampler.adaptation(state, n_warmup)`` returns ``window_adaptation(sampler,
state, n_warmup)``, an object with ``update(state, info) -> state`` (after each
warmup step) and ``finish(state) -> state`` (after the last), or ``None``.

**Dual averaging** (Nesterov 2009; Hoffman & Gelman 2014, §3.2). With
acceptance statistic α_t and target δ, iteration t = 1, 2, … updates

    H̄_t = (1 − 1/(t + t₀)) H̄_{t−1} + (δ − α_t) / (t + t₀)
    log ε_t = μ − √t / γ · H̄_t
    log ε̄_t = t^{−κ} log ε_t + (1 − t^{−κ}) log ε̄_{t−1}

with μ = log(10 ε₀); warmup ends with ε = ε̄. Defaults t₀ = 10, γ = 0.05,
κ = 0.75 (Stan's). Chains are grouped: one step size pooled over all chains
(α_t is the mean over chains), one per chain, or one per group of chains (a
tempering replica).

**Windowed mass adaptation** (Stan reference manual, "HMC algorithm
parameters"): an initial fast buffer (75 steps) adapts only the step size;
then slow windows of 25, 50, 100, … steps (the last one stretched to the end)
each estimate the (co)variance of the positions seen in the window, pooled
over every chain, and set the inverse mass matrix to the regularised estimate

    M⁻¹ = n/(n + 5) · Σ̂ + 10⁻³ · 5/(n + 5) · I     (n = draws in the window)

restarting dual averaging after each window; a final fast buffer (50 steps)
re-tunes the step size for the last metric. Short warmups (< 150 steps) use
15% / 75% / 10% of the steps, with a final buffer of at least 5 steps.
Pooling across chains gives a good estimate early (FINDINGS: 100 chains).

**Short warmups.** Dual averaging starts at μ = log(10 ε₀) on purpose, to try
large steps first, so its first iterates are about 10 ε₀, and ε̄_t, which
weights early iterates heavily, is far off for small t: from a well-tuned ε₀ on
a 2-D Gaussian, MALA's ε̄ is 12× too large after one step, 2.2× after three and
within 5% after twenty. Started anywhere from ε*/10 to 10 ε* (MALA and
random-walk MH on Gaussians in 2 and 20 dimensions), ε̄ is within 25% of its
converged value after 20 steps, while after 10 it can still be 2× off. (Stan
likewise skips metric adaptation below 20 warmup steps.) So a warmup shorter
than ``MIN_ADAPTATION_STEPS`` = 20 steps adapts nothing: the initial step size
and metric are kept, the warmup only burns in, and one warning says so
(:func:`long_enough_to_adapt`). The final fast buffer is shorter, but it
restarts from a step size already tuned for the previous metric, and HMC's
acceptance falls steeply with ε (1 − α grows like ε⁴), which dual averaging
settles quickly: 2 or 3 steps (the 10% of warmups of 20–39 steps) left ε̄
several times too large, with acceptance ≈ 0 on 2-D Gaussians; with at least
``MIN_TERM_BUFFER`` = 5 the acceptance after warmups of 20–40 steps was
0.78–0.93 (target 0.8) on Gaussians and a banana.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.distributed import active_shard
from ebmalgebra.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "MIN_ADAPTATION_STEPS",
    "MIN_TERM_BUFFER",
    "DualAveraging",
    "StepSizeAdaptation",
    "WelfordCovariance",
    "WindowAdaptation",
    "long_enough_to_adapt",
    "mass_windows",
    "window_adaptation",
]

MIN_ADAPTATION_STEPS = 20
"""The fewest warmup steps that adapt anything; shorter warmups only burn in."""

MIN_TERM_BUFFER = 5
"""The fewest steps of the final fast buffer, which re-tunes ε after the last metric update."""

_TUNED_BY = {"adapt_step_size": "step size", "adapt_mass": "metric"}


def long_enough_to_adapt(n_warmup: int, operation: str,
                         flags: tuple[str, ...] = ("adapt_step_size",), *,
                         stacklevel: int = 4) -> bool:
    """Whether ``n_warmup`` warmup steps are enough to adapt (≥ ``MIN_ADAPTATION_STEPS``).

    A shorter, non-zero warmup gets one ``RuntimeWarning`` naming ``warmup`` and
    the sampler's adaptation ``flags`` that are on (``"adapt_step_size"``,
    ``"adapt_mass"``), which switch adaptation off. ``stacklevel`` points it at the
    user's call of :func:`ebmalgebra.sample`.

    Example:
        >>> long_enough_to_adapt(200, "MALA")
        True
    """
    if n_warmup >= MIN_ADAPTATION_STEPS:
        return True
    if n_warmup > 0:
        what = " and ".join(_TUNED_BY[flag] for flag in flags)
        verb = "are" if len(flags) > 1 else "is"
        off = " and ".join(f"{flag}=False" for flag in flags)
        warnings.warn(
            f"{operation}: warmup={n_warmup} is too short to adapt the {what} (that takes "
            f"at least {MIN_ADAPTATION_STEPS} steps), so the initial {what} "
            f"{verb} kept and the warmup only burns in; pass warmup ≥ {MIN_ADAPTATION_STEPS}, "
            f"or {off} to burn in without adapting", RuntimeWarning, stacklevel=stacklevel)
    return False


@dataclass(frozen=True)
class DualAveraging:
    """Dual-averaging hyper-parameters: target acceptance δ, t₀, γ, κ."""

    target_accept: float = 0.8
    t0: float = 10.0
    gamma: float = 0.05
    kappa: float = 0.75

    def __post_init__(self) -> None:
        validation.in_interval("target_accept", self.target_accept)
        for name in ("t0", "gamma", "kappa"):
            validation.positive(name, getattr(self, name))

    def init(self, step_size: Tensor) -> DualAveragingState:
        """Start at ``step_size`` (per group), with μ = log(10 ε₀)."""
        log_step = step_size.log()
        return DualAveragingState(
            log_step=log_step,
            log_step_avg=torch.zeros_like(log_step),
            error_avg=torch.zeros_like(log_step),
            mu=log_step + math.log(10.0),
            count=0,
        )

    def update(self, state: DualAveragingState, accept_stat: Tensor) -> DualAveragingState:
        """One iteration with acceptance statistic α_t (per group, in [0, 1])."""
        t = state.count + 1
        weight = 1.0 / (t + self.t0)
        error_avg = (1.0 - weight) * state.error_avg + weight * (self.target_accept - accept_stat)
        log_step = state.mu - math.sqrt(t) / self.gamma * error_avg
        eta = t ** (-self.kappa)
        log_step_avg = eta * log_step + (1.0 - eta) * state.log_step_avg
        return DualAveragingState(log_step, log_step_avg, error_avg, state.mu, t)


class DualAveragingState(NamedTuple):
    """Per-group dual-averaging state: log ε_t, log ε̄_t, H̄_t, μ and t."""

    log_step: Tensor
    log_step_avg: Tensor
    error_avg: Tensor
    mu: Tensor
    count: int


class StepSizeAdaptation:
    """Tunes ``state.step_size`` by dual averaging during warmup.

    Args:
        state: the initial state; its ``step_size`` ``(n_chains,)`` is ε₀.
        dual_averaging: hyper-parameters (target acceptance, t₀, γ, κ).
        n_groups: 1 pools all chains into one step size; ``n_chains`` tunes one per
            chain; any divisor k of ``n_chains`` tunes one per block of
            ``n_chains / k`` consecutive chains (tempering replicas).
    """

    def __init__(self, state, dual_averaging: DualAveraging, n_groups: int = 1) -> None:
        n_chains = state.step_size.shape[0]
        if n_groups < 1 or n_chains % n_groups:
            raise ArgumentError(f"n_groups must divide n_chains = {n_chains}, got {n_groups}")
        self.dual_averaging = dual_averaging
        self.n_groups = n_groups
        self.da = dual_averaging.init(self._grouped(state.step_size))

    def _grouped(self, per_chain: Tensor) -> Tensor:
        # Means in float64, so that the pooled mean over chains sharded across processes
        # (summed per rank, then across ranks) rounds to the same value in the run's dtype.
        shard = active_shard()
        if shard is not None and self.n_groups == 1:
            return shard.mean(per_chain).reshape(1)
        return per_chain.reshape(self.n_groups, -1).to(torch.float64).mean(1).to(per_chain.dtype)

    def _per_chain(self, per_group: Tensor, like: Tensor) -> Tensor:
        return per_group.repeat_interleave(like.shape[0] // self.n_groups).to(like)

    def restart(self, state):
        """Restart dual averaging from the current step size (after a metric change)."""
        self.da = self.dual_averaging.init(self._grouped(state.step_size))
        return state

    def update(self, state, info):
        """Feed one step's ``info.acceptance_rate``; return the state with ε_t."""
        stat = torch.nan_to_num(info.acceptance_rate, nan=0.0)
        self.da = self.dual_averaging.update(self.da, self._grouped(stat))
        return state._replace(step_size=self._per_chain(self.da.log_step.exp(), state.step_size))

    def finish(self, state):
        """End of warmup: the state with the averaged step size ε̄."""
        final = self.da.log_step_avg if self.da.count else self.da.log_step
        return state._replace(step_size=self._per_chain(final.exp(), state.step_size))


def mass_windows(n_warmup: int, init_buffer: int = 75, term_buffer: int = 50,
                 base_window: int = 25) -> tuple[tuple[int, int], ...]:
    """Slow adaptation windows ``((start, end), …)`` (end exclusive) of a warmup of
    ``n_warmup`` steps, by Stan's rule (with a final buffer of at least
    ``MIN_TERM_BUFFER`` steps; none under ``MIN_ADAPTATION_STEPS``).

    Example:
        >>> mass_windows(1000)
        ((75, 100), (100, 150), (150, 250), (250, 450), (450, 950))
    """
    if n_warmup < MIN_ADAPTATION_STEPS:
        return ()
    if init_buffer + base_window + term_buffer > n_warmup:
        init_buffer = int(0.15 * n_warmup)
        term_buffer = max(int(0.1 * n_warmup), MIN_TERM_BUFFER)
        base_window = n_warmup - init_buffer - term_buffer
    end = n_warmup - term_buffer
    windows = []
    start, size = init_buffer, base_window
    while start < end:
        stop = start + size
        # Stretch the last window to the terminal buffer when the next one would not fit.
        if stop + 2 * size > end:
            stop = end
        windows.append((start, stop))
        start, size = stop, 2 * size
    return tuple(windows)


class WelfordCovariance:
    """Running mean and (co)variance of rows, pooled over chains (Chan et al. batch update).

    Accumulates in float64. ``dense=False`` tracks per-coordinate variances of
    ``(n, *event_shape)`` rows; ``dense=True`` the full ``(d, d)`` covariance of
    the flattened rows.
    """

    def __init__(self, dense: bool) -> None:
        self.dense = dense
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, rows: Tensor) -> None:
        x = rows.detach().to(torch.float64)
        if self.dense:
            x = x.reshape(x.shape[0], -1)
        n = x.shape[0]
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred if self.dense else (centred * centred).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * (n / total)
        correction = torch.outer(delta, delta) if self.dense else delta * delta
        self.m2 = self.m2 + batch_m2 + correction * (self.count * n / total)
        self.count = total

    def regularized(self) -> Tensor:
        """n/(n+5) · Σ̂ + 10⁻³ · 5/(n+5) · I (Stan's shrinkage towards a small identity).

        With chains sharded across processes, the moments of all ranks are pooled
        first (:meth:`ebmalgebra.distributed.ChainShard.merge_moments`).
        """
        n, m2 = self.count, self.m2
        shard = active_shard()
        if shard is not None:
            n, _, m2 = shard.merge_moments(n, self.mean, m2, dense=self.dense)
        covariance = m2 / max(n - 1, 1)
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            eye = torch.eye(covariance.shape[0], dtype=covariance.dtype,
                            device=covariance.device)
            return (n / (n + 5.0)) * covariance + shrink * eye
        return (n / (n + 5.0)) * covariance + shrink


class WindowAdaptation:
    """Dual-averaging ε plus Stan-style windowed M⁻¹, pooled over chains.

    Generic over samplers (see the module docstring for the interface): the step
    size is tuned when ``adapt_step_size`` and the metric when ``adapt_mass``; the
    metric estimate is dense when ``state.metric.dense``.

    Args:
        state: the initial state (its ``step_size`` is ε₀, its ``metric`` the start).
        n_warmup: warmup steps; the windows come from :func:`mass_windows`.
        target_accept: δ for dual averaging.
        adapt_step_size: tune ``state.step_size``.
        adapt_mass: tune ``state.metric``.
    """

    def __init__(self, state, n_warmup: int, *, target_accept: float,
                 adapt_step_size: bool = True, adapt_mass: bool = True) -> None:
        self.step_size = (StepSizeAdaptation(state, DualAveraging(target_accept))
                          if adapt_step_size else None)
        if adapt_mass and not hasattr(state, "metric"):
            raise ArgumentTypeError(f"adapt_mass needs a state with a metric, got "
                                    f"{type(state).__name__}")
        self.windows = dict(mass_windows(n_warmup)) if adapt_mass else {}
        self.window_end: int | None = None
        self.estimator: WelfordCovariance | None = None
        self.iteration = 0

    def update(self, state, info):
        """Feed one warmup step; return the state with the current ε (and metric)."""
        if self.step_size is not None:
            state = self.step_size.update(state, info)
        index = self.iteration
        self.iteration += 1
        if index in self.windows:
            self.window_end = self.windows[index]
            self.estimator = WelfordCovariance(dense=state.metric.dense)
        if self.estimator is None:
            return state
        self.estimator.add(state.position)
        if self.iteration == self.window_end:
            metric = state.metric
            estimate = self.estimator.regularized().to(metric.inverse_mass)
            self.estimator = None
            state = state._replace(metric=metric.replace(estimate))
            if self.step_size is not None:
                state = self.step_size.restart(state)
        return state

    def finish(self, state):
        """End of warmup: the averaged step size ε̄ (the metric is already in place)."""
        return state if self.step_size is None else self.step_size.finish(state)


def window_adaptation(sampler, state, n_warmup: int) -> WindowAdaptation | None:
    """The warmup adaptation of ``sampler`` from ``state`` over ``n_warmup`` steps.

    Tunes what the sampler's switches ask (``adapt_step_size``, ``adapt_mass``;
    missing switches count as off). Returns ``None`` when none is on, or when
    ``n_warmup`` is shorter than ``MIN_ADAPTATION_STEPS`` (which warns, naming the
    switches).

    Example:
        >>> adaptation = window_adaptation(HMC(), state, n_warmup=500)
        >>> state = adaptation.update(state, info)   # after each warmup step
    """
    flags = tuple(flag for flag in _TUNED_BY if getattr(sampler, flag, False))
    # stacklevel: long_enough_to_adapt, this function, the sampler's adaptation(),
    # sample(), its caller.
    if not flags or not long_enough_to_adapt(n_warmup, sampler.name, flags, stacklevel=5):
        return None
    return WindowAdaptation(state, n_warmup, target_accept=sampler.target_accept,
                            adapt_step_size="adapt_step_size" in flags,
                            adapt_mass="adapt_mass" in flags)
