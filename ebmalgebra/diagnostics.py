"""MCMC convergence diagnostics: rank-normalised ESS and split-R̂.

Implements Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
"Rank-normalization, folding, and localization: an improved R̂ for
assessing convergence of MCMC", Bayesian Analysis 16(2).

Draws are shaped ``(n_draws, n_chains, *event_shape)`` (a ``torch.Tensor``
or anything ``numpy.asarray`` accepts). Note the order: draws first, then
chains (ArviZ uses ``(chain, draw)``). Every diagnostic is computed
independently per coordinate, in float64 with NumPy, and returned shaped
``event_shape``: a float64 tensor on the input's device if the input is a
tensor, else a NumPy array.

Building blocks, per coordinate, for m chains of n draws:

- *split chains*: each chain is cut into its first and last ⌊n/2⌋ draws
  (the middle draw of an odd-length chain is dropped), giving 2m chains,
  so a drift within a chain shows up as disagreement between chains;
- *rank normalisation*: z = Φ⁻¹((r − 3/8) / (S + 1/4)) with r the average
  rank of a draw among all S draws (S = 2m·⌊n/2⌋ after splitting);
- *folding*: |x − median(x)|, which turns differences in scale into
  differences in location.

Results agree with ArviZ (``az.ess(method="bulk" | "tail" | "mean" | "sd")``,
``az.rhat(method="rank")``, ``az.mcse(method="mean")``) to float rounding,
except that R̂ of a single chain is computed from its two halves where
ArviZ returns NaN. Degenerate coordinates follow ArviZ: if the draws span a
range below float64 resolution (1e-15) ESS is the number of split draws;
R̂ is NaN for a constant coordinate (0/0) and inf for chains stuck at
different values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentError, ArgumentTypeError

__all__ = ["ESS_KINDS", "Summary", "ess", "mcse_chain_means", "mcse_mean", "rhat", "summary"]

ESS_KINDS = ("bulk", "tail", "mean", "sd")
"""Values accepted by ``ess(draws, kind=...)``."""

TAIL_PROBS = (0.05, 0.95)
MIN_DRAWS = 4

Draws = torch.Tensor | ArrayLike
"""Draws shaped ``(n_draws, n_chains, *event_shape)``."""

Values = np.ndarray | torch.Tensor
"""Per-coordinate results shaped ``event_shape``: float64, tensor iff the draws were."""


# ---------------------------------------------------------------- input / output


@dataclass(frozen=True)
class _Prepared:
    """Validated draws flattened to ``(n_draws, n_chains, n_coords)`` in float64."""

    values: np.ndarray
    event_shape: tuple[int, ...]
    device: torch.device | None  # set iff the input was a tensor

    def wrap(self, per_coord: np.ndarray) -> Values:
        """Reshape ``(n_coords,)`` results to ``event_shape`` in the input's array type."""
        out = np.asarray(per_coord, dtype=np.float64).reshape(self.event_shape)
        if self.device is None:
            return out
        return torch.from_numpy(out).to(self.device)


def _prepare(draws: Draws) -> _Prepared:
    device = None
    if isinstance(draws, torch.Tensor):
        if draws.is_complex():
            raise ArgumentTypeError(f"draws must be real-valued, got a tensor of dtype "
                                    f"{draws.dtype}")
        device = draws.device
        values = draws.detach().to("cpu", torch.float64).numpy()
    else:
        values = np.asarray(draws)
        real = np.issubdtype(values.dtype, np.bool_) or (
            np.issubdtype(values.dtype, np.number)
            and not np.issubdtype(values.dtype, np.complexfloating)
        )
        if not real:
            raise ArgumentTypeError(f"draws must be real numbers, got an array of dtype "
                                    f"{values.dtype}")
        values = values.astype(np.float64)
    if values.ndim < 2:
        raise ArgumentError(
            f"draws must be shaped (n_draws, n_chains, *event_shape), got shape "
            f"{tuple(values.shape)}; for a single chain pass draws[:, None]"
        )
    n_draws, n_chains = values.shape[:2]
    if n_draws < MIN_DRAWS:
        raise ArgumentError(
            f"draws needs at least {MIN_DRAWS} draws along axis 0 to split chains in two, "
            f"got {n_draws} (shape {tuple(values.shape)})"
        )
    if n_chains < 1:
        raise ArgumentError(f"draws has no chains: shape {tuple(values.shape)}")
    finite = np.isfinite(values)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ArgumentError(
            f"draws contains {int((~finite).sum())} non-finite values (first at index "
            f"{first}: {values[first]}); diagnostics need finite draws"
        )
    event_shape = tuple(values.shape[2:])
    n_coords = int(np.prod(event_shape, dtype=np.int64))
    return _Prepared(values.reshape(n_draws, n_chains, n_coords), event_shape, device)


# ---------------------------------------------------------------- transforms


def _pooled(x: np.ndarray) -> np.ndarray:
    """``(n, m, C)`` → ``(n·m, C)``: all draws of each coordinate in one column."""
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2])


def _split_chains(x: np.ndarray) -> np.ndarray:
    """``(n, m, C)`` → ``(⌊n/2⌋, 2m, C)``: first and last halves as separate chains."""
    half = x.shape[0] // 2
    return np.concatenate([x[:half], x[x.shape[0] - half :]], axis=1)


def _rank_normalize(x: np.ndarray) -> np.ndarray:
    """z = Φ⁻¹((r − 3/8) / (S + 1/4)), ranks r pooled over draws and chains per coordinate."""
    import scipy.special  # deferred: scipy costs ~0.4 s at `import ebmalgebra`
    import scipy.stats

    pooled = _pooled(x)
    ranks = scipy.stats.rankdata(pooled, method="average", axis=0)
    return scipy.special.ndtri((ranks - 0.375) / (len(pooled) + 0.25)).reshape(x.shape)


def _fold(x: np.ndarray) -> np.ndarray:
    """|x − median(x)|, median pooled over draws and chains per coordinate."""
    return np.abs(x - np.median(_pooled(x), axis=0))


def _quantile(x: np.ndarray, prob: float) -> np.ndarray:
    """Hyndman & Fan type-7 quantile over draws and chains: ``(n, m, C)`` → ``(C,)``.

    With order statistics x₍₁₎ ≤ … ≤ x₍S₎ and h = S·p + (1 − p), the quantile is
    (1 − γ) x₍ₖ₎ + γ x₍ₖ₊₁₎ with k = ⌊h⌋ clipped to [1, S − 1], γ = h − k.
    """
    flat = np.sort(_pooled(x), axis=0)
    size = flat.shape[0]
    position = size * prob + (1.0 - prob)
    k = int(np.floor(np.clip(position, 1, size - 1)))
    gamma = float(np.clip(position - k, 0.0, 1.0))
    return (1.0 - gamma) * flat[k - 1] + gamma * flat[k]


# ---------------------------------------------------------------- estimators


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance γ̂ₜ = (1/n) Σᵢ (xᵢ − x̄)(xᵢ₊ₜ − x̄) of every chain via FFT.

    ``(n, m, C)`` → ``(n, m, C)`` indexed by lag t = 0 … n − 1. Zero-padding to at
    least 2n makes the circular correlation equal the linear one.
    """
    import scipy.fft  # deferred, as in _rank_normalize

    n = x.shape[0]
    centred = x - x.mean(axis=0)
    n_fft = scipy.fft.next_fast_len(2 * n, real=True)
    spectrum = scipy.fft.rfft(centred, n=n_fft, axis=0)
    return scipy.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=0)[:n] / n


def _ess_of_split(x: np.ndarray) -> np.ndarray:
    """Multi-chain ESS of already-split chains ``(n, m, C)`` → ``(C,)``.

    With W the mean within-chain variance, B/n the variance of chain means and
    var⁺ = (n − 1)/n · W + B/n, the combined autocorrelation at lag t is
    ρ̂ₜ = 1 − (W − mean over chains of γ̂ₜ) / var⁺ (ρ̂₀ = 1). Geyer's initial
    positive sequence sums the pairs P̂ₖ = ρ̂₂ₖ + ρ̂₂ₖ₊₁ until the first
    P̂ₖ ≤ 0 (or the last lag), made monotone by P̂ₖ ← min(P̂ₖ, P̂ₖ₋₁). As in Stan,
    the even lag ρ̂₂ₖ of the first rejected pair is added when positive, which
    improves the estimate for antithetic chains, so

        τ̂ = −1 + 2 Σₖ₌₀ᴷ⁻¹ P̂ₖ + ρ̂₂ₖ [if positive], K the first rejected pair,

    floored at 1/log₁₀(S) (so ESS ≤ S log₁₀ S), and ESS = S / τ̂ with S = n·m.
    Constant coordinates (range below float64 resolution) get ESS = S.
    """
    n, m, n_coords = x.shape
    size = n * m
    acov = _autocovariance(x)
    within = acov[0].mean(axis=0) * n / (n - 1)
    var_plus = within * (n - 1) / n
    if m > 1:
        var_plus = var_plus + x.mean(axis=0).var(axis=0, ddof=1)
    constant = np.ptp(_pooled(x), axis=0) < np.finfo(np.float64).resolution
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (within - acov.mean(axis=1)) / var_plus
    rho[0] = 1.0

    # Pairs (ρ̂₂ₖ, ρ̂₂ₖ₊₁) for k = 0 … last_pair: the lags Stan and ArviZ inspect.
    last_pair = max(0, (n - 3) // 2)
    even = rho[0 : 2 * last_pair + 1 : 2]
    pairs = even + rho[1 : 2 * last_pair + 2 : 2]
    rejected = pairs <= 0.0
    rejected[-1] = True  # ran out of lags: the last pair ends the sequence
    stop = np.argmax(rejected, axis=0)
    kept = np.arange(last_pair + 1)[:, None] < stop
    monotone = np.minimum.accumulate(pairs, axis=0)
    stop_even = np.take_along_axis(even, stop[None], axis=0)[0]
    stop_pair = np.take_along_axis(pairs, stop[None], axis=0)[0]
    # A pair that ends the sequence with sum exactly 0 (or by running out of lags)
    # still counts its even lag, whatever its sign; this keeps parity with Stan/ArviZ.
    extra = np.where((stop_even > 0.0) | (stop_pair >= 0.0), stop_even, 0.0)
    tau = -1.0 + 2.0 * np.where(kept, monotone, 0.0).sum(axis=0) + extra
    tau = np.maximum(tau, 1.0 / np.log10(size))
    return np.where(constant, float(size), size / tau)


def _rhat_of_split(x: np.ndarray) -> np.ndarray:
    """Potential scale reduction of already-split chains ``(n, m, C)`` → ``(C,)``.

    R̂ = √(var⁺ / W), var⁺ = (n − 1)/n · W + B/n, with W the mean of the
    within-chain variances and B/n the variance of the chain means. Chains
    stuck at different values give inf; a constant coordinate gives NaN.
    """
    n = x.shape[0]
    # Decide constancy from ranges: np.var of equal values can round to ~1e-32
    # instead of 0, which would turn R̂ = inf into a huge finite number.
    chain_var = np.where(np.ptp(x, axis=0) > 0.0, x.var(axis=0, ddof=1), 0.0)
    within = chain_var.mean(axis=0)
    between_over_n = x.mean(axis=0).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_hat = np.sqrt(((n - 1) / n * within + between_over_n) / within)
    return np.where(np.ptp(_pooled(x), axis=0) > 0.0, r_hat, np.nan)


def _ess(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bulk":
        return _ess_of_split(_rank_normalize(_split_chains(x)))
    if kind == "tail":
        low, high = (
            _ess_of_split(_split_chains((x <= _quantile(x, prob)).astype(np.float64)))
            for prob in TAIL_PROBS
        )
        return np.minimum(low, high)
    if kind == "mean":
        return _ess_of_split(_split_chains(x))
    if kind == "sd":
        return _ess_of_split(_split_chains((x - x.mean(axis=(0, 1))) ** 2))
    raise validation.fail("kind", f"one of {ESS_KINDS}", kind)


def _rhat(x: np.ndarray) -> np.ndarray:
    split = _split_chains(x)
    bulk = _rhat_of_split(_rank_normalize(split))
    tail = _rhat_of_split(_rank_normalize(_fold(split)))
    # When every split chain is constant but the chains differ, bulk R̂ is inf and the
    # folded draws may all tie (tail R̂ = 0/0): report inf, as ArviZ does. NaN stays
    # only when bulk R̂ is NaN, i.e. the coordinate is constant.
    return np.where(tail > bulk, tail, bulk)


def _mcse_mean(x: np.ndarray) -> np.ndarray:
    sd = _pooled(x).std(axis=0, ddof=1)
    return sd / np.sqrt(_ess(x, "mean"))


def _by_coordinates(function: Callable[[np.ndarray], np.ndarray], x: np.ndarray
                    ) -> np.ndarray:
    """``function`` of ``x`` ``(n_draws, n_chains, n_coords)`` → ``(n_coords,)``, applied to
    blocks of coordinates of at most :data:`_BLOCK_ELEMENTS` values each: the statistics
    are per coordinate, and their temporaries (splits, ranks, FFTs) take ~10× their
    input, so blocks bound the memory whatever the number of coordinates."""
    n_draws, n_chains, n_coords = x.shape
    width = max(1, _BLOCK_ELEMENTS // max(1, n_draws * n_chains))
    if width >= n_coords:
        return function(x)
    return np.concatenate([function(x[:, :, start:start + width])
                           for start in range(0, n_coords, width)])


_BLOCK_ELEMENTS = 1 << 21
"""Values per block of coordinates in :func:`_by_coordinates` (16 MiB of float64)."""


# ---------------------------------------------------------------- public API


def ess(draws: Draws, kind: str = "bulk") -> Values:
    """Effective sample size of each coordinate, over split chains.

    ESS = S / τ̂ with S the number of draws after splitting and τ̂ the
    integrated autocorrelation time, estimated from FFT autocovariances of
    all chains, truncated by Geyer's initial monotone sequence. ``kind``
    chooses the quantity whose ESS is measured:

    - ``"bulk"``: rank-normalised draws z = Φ⁻¹((r − 3/8)/(S + 1/4)); robust
      for heavy tails, the default to judge central estimates;
    - ``"tail"``: min of the ESS of the indicators 1{x ≤ q₀.₀₅} and
      1{x ≤ q₀.₉₅}, q the pooled (type-7) quantiles; judges 90% intervals;
    - ``"mean"``: the draws themselves (ESS of the posterior mean; unreliable
      when the variance is infinite);
    - ``"sd"``: the squared deviations (x − x̄)².

    Args:
        draws: ``(n_draws, n_chains, *event_shape)`` with n_draws ≥ 4.
        kind: one of ``ESS_KINDS``.

    Returns:
        ``event_shape`` float64 array (tensor if ``draws`` is a tensor).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> draws = rng.normal(size=(1000, 4, 2))
        >>> ess(draws).shape
        (2,)
    """
    prepared = _prepare(draws)
    return prepared.wrap(_by_coordinates(lambda x: _ess(x, kind), prepared.values))


def rhat(draws: Draws) -> Values:
    """Rank-normalised split-R̂ of each coordinate.

    R̂ = max(R̂_bulk, R̂_tail), where both are the classic
    √(((n − 1)/n · W + B/n) / W) on split chains, after rank normalisation
    of the draws (bulk) and of the folded draws |x − median(x)| (tail).
    Values above 1.01 suggest the chains have not mixed. A single chain is
    split into two halves (ArviZ returns NaN for it); a constant coordinate
    gives NaN.

    Args:
        draws: ``(n_draws, n_chains, *event_shape)`` with n_draws ≥ 4.

    Returns:
        ``event_shape`` float64 array (tensor if ``draws`` is a tensor).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> stuck = rng.normal(size=(500, 4)) + np.arange(4)  # chains disagree
        >>> bool(rhat(stuck) > 1.1)
        True
    """
    prepared = _prepare(draws)
    return prepared.wrap(_by_coordinates(_rhat, prepared.values))


def mcse_mean(draws: Draws) -> Values:
    """Monte Carlo standard error of the mean of each coordinate.

    MCSE = sd / √ESS_mean, with sd the standard deviation (ddof = 1) of all
    draws pooled over chains and ESS_mean = ``ess(draws, kind="mean")``.

    Args:
        draws: ``(n_draws, n_chains, *event_shape)`` with n_draws ≥ 4.

    Returns:
        ``event_shape`` float64 array (tensor if ``draws`` is a tensor).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(float(mcse_mean(rng.normal(size=(2500, 4)))), 3)  # ≈ 1 / √10000
        0.01
    """
    prepared = _prepare(draws)
    return prepared.wrap(_by_coordinates(_mcse_mean, prepared.values))


def mcse_chain_means(draws: Draws) -> Values:
    """Monte Carlo standard error of the mean of each coordinate from the spread of the
    chains' own means: sd(x̄₁, …, x̄ₘ) / √m (ddof = 1), for m ≥ 2 chains.

    Valid when the chains are independent and stationary (after a warmup whose tuning
    is then frozen, as :func:`ebmalgebra.sample` runs them), whatever their
    autocorrelation: the chain means are then i.i.d., so no ESS estimate enters. With
    many chains it checks :func:`mcse_mean`; its own relative error is about
    1/√(2(m − 1)) when the chain means are near normal. Neither sees a region that
    every chain misses alike (docs/samplers.md).

    Args:
        draws: ``(n_draws, n_chains, *event_shape)`` with n_draws ≥ 4, n_chains ≥ 2.

    Returns:
        ``event_shape`` float64 array (tensor if ``draws`` is a tensor).

    Raises:
        ArgumentError: with a single chain.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(float(mcse_chain_means(rng.normal(size=(100, 400)))), 3)  # ≈ 1 / √40000
        0.005
    """
    prepared = _prepare(draws)
    n_chains = prepared.values.shape[1]
    validation.count("mcse_chain_means: number of chains", n_chains, 2)
    chain_means = prepared.values.mean(axis=0)
    return prepared.wrap(chain_means.std(axis=0, ddof=1) / np.sqrt(n_chains))


def _coordinate_names(prefix: str, event_shape: tuple[int, ...]) -> tuple[str, ...]:
    if not event_shape:
        return (prefix,)
    return tuple(
        f"{prefix}[{','.join(str(i) for i in index)}]" for index in np.ndindex(*event_shape)
    )


def _format_number(value: float, column: str) -> str:
    if not np.isfinite(value):
        return str(value)
    if column.startswith("ess"):
        return f"{value:.0f}"
    if value == 0.0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3f}"
    return f"{value:.2e}"


@dataclass(frozen=True, repr=False, eq=False)
class Summary:
    """Per-coordinate posterior summary and convergence diagnostics.

    Every statistic is a float64 array of shape ``(n_coords,)``, one entry per
    coordinate of the flattened event, in the order of ``names``. ``str()``
    gives an aligned table with one row per coordinate; ``to_dict()`` gives
    ``{name: {column: value}}``.
    """

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "mean",
        "sd",
        "q5",
        "q95",
        "mcse_mean",
        "ess_bulk",
        "ess_tail",
        "r_hat",
    )

    names: tuple[str, ...]
    event_shape: tuple[int, ...]
    n_draws: int
    n_chains: int
    mean: np.ndarray
    sd: np.ndarray
    q5: np.ndarray
    q95: np.ndarray
    mcse_mean: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    r_hat: np.ndarray
    header: str = ""

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{name: {column: value}}`` with plain Python floats, in row order."""
        return {
            name: {column: float(getattr(self, column)[row]) for column in self.COLUMNS}
            for row, name in enumerate(self.names)
        }

    def __str__(self) -> str:
        header = ("", *self.COLUMNS)
        rows = [
            (name, *(_format_number(getattr(self, c)[row], c) for c in self.COLUMNS))
            for row, name in enumerate(self.names)
        ]
        widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
        lines = []
        for line in (header, *rows):
            cells = [line[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(([self.header] if self.header else []) + lines)

    def __repr__(self) -> str:
        return (
            f"Summary({len(self.names)} coordinates, event_shape={self.event_shape}, "
            f"{self.n_draws} draws x {self.n_chains} chains)"
        )


def summary(draws: Draws, names: str | Sequence[str] | None = None, header: str = "",
            ) -> Summary:
    """Posterior summary and diagnostics of each coordinate of ``draws``.

    Columns: mean, sd (ddof = 1), type-7 quantiles q5 and q95, all pooled
    over draws and chains; ``mcse_mean`` = sd / √ESS_mean; ``ess_bulk``,
    ``ess_tail`` (see ``ess``) and ``r_hat`` (see ``rhat``).

    Args:
        draws: ``(n_draws, n_chains, *event_shape)`` with n_draws ≥ 4.
        names: a prefix (rows ``"theta[0,1]"`` …), one name per coordinate
            of the flattened event (C order), or ``None`` for the prefix ``"x"``.
        header: a line printed above the table (e.g. which sampler ran).

    Returns:
        a ``Summary``; its statistics are flattened to ``(n_coords,)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> table = summary(rng.normal(size=(1000, 4, 2)), names="theta")
        >>> table.names
        ('theta[0]', 'theta[1]')
    """
    prepared = _prepare(draws)
    x = prepared.values
    n_draws, n_chains, n_coords = x.shape
    if names is None or isinstance(names, str):
        row_names = _coordinate_names("x" if names is None else names, prepared.event_shape)
    else:
        row_names = tuple(str(name) for name in names)
        if len(row_names) != n_coords:
            raise ArgumentError(
                f"names must give one name per coordinate: event_shape "
                f"{prepared.event_shape} has {n_coords}, got {len(row_names)} names"
            )
    pooled = _pooled(x)
    return Summary(
        names=row_names,
        event_shape=prepared.event_shape,
        n_draws=n_draws,
        n_chains=n_chains,
        mean=pooled.mean(axis=0),
        sd=pooled.std(axis=0, ddof=1),
        q5=_by_coordinates(lambda block: _quantile(block, TAIL_PROBS[0]), x),
        q95=_by_coordinates(lambda block: _quantile(block, TAIL_PROBS[1]), x),
        mcse_mean=_by_coordinates(_mcse_mean, x),
        ess_bulk=_by_coordinates(lambda block: _ess(block, "bulk"), x),
        ess_tail=_by_coordinates(lambda block: _ess(block, "tail"), x),
        r_hat=_by_coordinates(_rhat, x),
        header=header,
    )
