"""Tests for ``ebmalgebra.diagnostics``: agreement with ArviZ, theory, edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmalgebra import diagnostics
from ebmalgebra.diagnostics import (
    ESS_KINDS,
    Summary,
    ess,
    mcse_chain_means,
    mcse_mean,
    rhat,
    summary,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ArviZ announces its refactor on import
    import arviz as az

RTOL = 1e-6


def ar1(rng: np.random.Generator, phi: float, shape: tuple[int, ...]) -> np.ndarray:
    """Stationary AR(1), x_t = φ x_{t−1} + √(1 − φ²) ε_t, unit variance; time on axis 0."""
    noise = rng.normal(size=shape)
    start = rng.normal(size=(1, *shape[1:]))
    gain = np.sqrt(1.0 - phi**2)
    return scipy.signal.lfilter([gain], [1.0, -phi], noise, axis=0, zi=phi * start)[0]


def _case(name: str) -> np.ndarray:
    rng = np.random.default_rng(CASES.index(name))
    if name == "iid":
        return rng.normal(size=(1000, 4))
    if name == "ar1_0.9":
        return ar1(rng, 0.9, (1000, 4))
    if name == "ar1_0.99":
        return ar1(rng, 0.99, (2000, 4))
    if name == "antithetic":  # ESS > S: exercises the positive even-lag term
        return ar1(rng, -0.6, (1000, 4))
    if name == "bad_mixing":
        return rng.normal(size=(500, 4)) + 2.0 * np.arange(4)
    if name == "odd_draws":
        return ar1(rng, 0.5, (501, 3))
    if name == "cauchy":
        return rng.standard_cauchy(size=(1000, 4))
    if name == "event_3x2":
        return ar1(rng, 0.7, (500, 4, 3, 2))
    if name == "ties":
        return rng.poisson(2.0, size=(400, 4)).astype(np.float64)
    if name == "single_chain":
        return ar1(rng, 0.5, (101, 1))
    if name == "constant":
        return np.full((100, 4), 3.0)
    if name == "stuck_chains":  # each chain constant, chains disagree: R̂ = inf
        return np.repeat(np.arange(4.0)[None], 50, axis=0)
    if name == "four_draws":
        return rng.normal(size=(4, 2))
    raise KeyError(name)


CASES = (
    "iid", "ar1_0.9", "ar1_0.99", "antithetic", "bad_mixing", "odd_draws", "cauchy",
    "event_3x2", "ties", "single_chain", "constant", "stuck_chains", "four_draws",
)  # fmt: skip

OURS = {
    **{f"ess_{kind}": (lambda x, kind=kind: ess(x, kind)) for kind in ESS_KINDS},
    "rhat": rhat,
    "mcse_mean": mcse_mean,
}
ARVIZ = {
    **{f"ess_{kind}": (lambda d, kind=kind: az.ess(d, method=kind)) for kind in ESS_KINDS},
    "rhat": lambda d: az.rhat(d, method="rank"),
    "mcse_mean": lambda d: az.mcse(d, method="mean"),
}


def arviz_reference(draws: np.ndarray, statistic: str) -> np.ndarray:
    """ArviZ's value of ``statistic`` per coordinate; ArviZ wants (chain, draw, *event)."""
    dataset = az.convert_to_dataset(np.swapaxes(np.asarray(draws), 0, 1))
    return np.asarray(ARVIZ[statistic](dataset)["x"].values)


def assert_matches_arviz(draws: np.ndarray, statistic: str) -> None:
    ours = OURS[statistic](draws)
    assert isinstance(ours, np.ndarray)
    assert ours.shape == draws.shape[2:]
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, arviz_reference(draws, statistic), rtol=RTOL, atol=0)


# ArviZ's R̂ of one chain is NaN; ours splits it into halves (tested separately).
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # ArviZ divides by W = 0
@pytest.mark.parametrize(
    ("case", "statistic"),
    [(c, s) for c in CASES for s in OURS if not (c == "single_chain" and s == "rhat")],
)
def test_matches_arviz(case: str, statistic: str) -> None:
    assert_matches_arviz(_case(case), statistic)


@given(
    n_draws=st.integers(4, 120),
    n_chains=st.integers(1, 4),
    event_shape=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    phi=st.floats(-0.9, 0.97),
    chain_spread=st.floats(0.0, 3.0),
    kind=st.sampled_from(["normal", "cauchy", "rounded"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=100, deadline=None, database=None)
def test_matches_arviz_on_random_inputs(
    n_draws: int,
    n_chains: int,
    event_shape: tuple[int, ...],
    phi: float,
    chain_spread: float,
    kind: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (n_draws, n_chains, *event_shape)
    draws = ar1(rng, phi, shape) + chain_spread * rng.normal(size=(1, n_chains, *event_shape))
    if kind == "cauchy":
        draws = np.tan(0.49 * np.pi * np.tanh(draws))  # heavy tails, same dependence
    elif kind == "rounded":
        draws = np.round(draws)  # many ties
    for statistic in OURS:
        if statistic == "rhat" and n_chains == 1:
            continue
        assert_matches_arviz(draws, statistic)


def test_rhat_flags_bad_mixing_and_passes_good_mixing() -> None:
    assert rhat(_case("bad_mixing")) > 1.5
    assert rhat(_case("iid")) < 1.01


def test_stuck_chains_have_infinite_rhat() -> None:
    assert rhat(_case("stuck_chains")) == np.inf


def test_rhat_of_a_single_chain_compares_its_halves() -> None:
    rng = np.random.default_rng(0)
    steady = rng.normal(size=(1000, 1))
    jumped = steady + np.where(np.arange(1000) < 500, 0.0, 3.0)[:, None]
    assert rhat(steady) < 1.01
    assert rhat(jumped) > 2.0  # √((W + var of half means) / W) ≈ √(1 + 4.5)


# Theory: for stationary AR(1) with coefficient φ, the integrated autocorrelation
# time of the mean is τ = (1 + φ)/(1 − φ), so ESS/S → (1 − φ)/(1 + φ).
# Tolerance from the simulation size S: the windowed estimator has
# var(τ̂) ≈ 2(2M + 1) τ̄²/S (Madras & Sokal 1988), M the lag where the sum stops and
# τ̄ = max(τ, 1) (for antithetic chains the absolute error does not shrink with τ).
# Geyer's truncation stops by M ≈ 3τ̄, so ESS/S has relative sd σ ≈ √(12τ̄/S)·τ̄/τ.
# Check of the formula: over 200 replicates we measured relative sds of 4.0%, 6.7%,
# 8.6%, 5.0% for φ = 0.5, 0.9, 0.99, −0.5 at S = 2e4, 4e4, 2e5, 2e4, where it gives
# 4.2%, 7.5%, 10.9%, 7.3%. We average R independent replicates (event coordinates)
# and allow 4σ/√R, which also covers the estimator's O(τ/n) bias (≲ 1% here).
@pytest.mark.parametrize(
    ("phi", "n_draws", "n_chains"),
    [(-0.5, 5000, 4), (0.5, 5000, 4), (0.9, 10_000, 4), (0.99, 25_000, 4)],
)
def test_ess_of_ar1_matches_theory(phi: float, n_draws: int, n_chains: int) -> None:
    replicates = 16
    rng = np.random.default_rng(int(1000 * (phi + 1)))
    draws = ar1(rng, phi, (n_draws, n_chains, replicates))
    size = n_draws * n_chains
    tau = (1 + phi) / (1 - phi)
    tau_floor = max(tau, 1.0)
    relative_sd = np.sqrt(12 * tau_floor / size) * tau_floor / tau
    ratio = ess(draws, "mean").mean() / size
    assert ratio == pytest.approx(1 / tau, rel=4 * relative_sd / np.sqrt(replicates))


def test_torch_input_gives_float64_tensor_equal_to_numpy() -> None:
    draws = _case("event_3x2")
    tensor = torch.from_numpy(draws)
    for statistic, compute in OURS.items():
        out = compute(tensor)
        assert isinstance(out, torch.Tensor), statistic
        assert out.dtype == torch.float64
        assert out.shape == (3, 2)
        np.testing.assert_array_equal(out.numpy(), compute(draws))


def test_float32_tensor_is_computed_in_float64() -> None:
    draws32 = torch.from_numpy(_case("ar1_0.9")).float()
    expected = ess(draws32.double().numpy())
    out = ess(draws32)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), expected)


def test_mcse_from_chain_means_matches_the_exact_error_of_ar1_chains() -> None:
    """m = 200 stationary AR(1) chains (φ = 0.9) of n = 500 draws: a chain mean has
    variance n⁻² Σᵢⱼ φ^|i−j| exactly, so the MCSE of the grand mean is known. The
    estimate's relative error is ≈ 1/√(2(m − 1)) = 5%; we allow 4 times that."""
    n, m, phi = 500, 200, 0.9
    draws = ar1(np.random.default_rng(7), phi, (n, m, 3))
    lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    exact = np.sqrt((phi**lags).sum() / n**2 / m)
    estimate = mcse_chain_means(torch.from_numpy(draws))
    assert isinstance(estimate, torch.Tensor) and estimate.shape == (3,)
    np.testing.assert_allclose(estimate.numpy(), exact, rtol=4 / np.sqrt(2 * (m - 1)))
    with pytest.raises(ValueError, match="number of chains must be an int ≥ 2, got 1"):
        mcse_chain_means(draws[:, :1])


def test_constant_draws_follow_arviz() -> None:
    draws = _case("constant")
    split_size = 2 * (100 // 2) * 4
    for kind in ESS_KINDS:
        assert ess(draws, kind) == split_size
    assert np.isnan(rhat(draws))
    assert mcse_mean(draws) == 0.0
    assert "nan" in str(summary(draws)).splitlines()[1]


def test_constant_coordinate_does_not_affect_others() -> None:
    draws = _case("event_3x2").copy()
    draws[:, :, 1, 0] = -2.0
    r_hat = rhat(draws)
    assert np.isnan(r_hat[1, 0])
    assert np.isfinite(np.delete(r_hat.ravel(), 2)).all()
    np.testing.assert_array_equal(ess(draws)[0], ess(_case("event_3x2"))[0])


def test_empty_event_gives_empty_results() -> None:
    draws = np.zeros((10, 2, 0))
    assert ess(draws).shape == (0,)
    assert rhat(draws).shape == (0,)
    assert len(summary(draws).names) == 0


@pytest.mark.parametrize(
    ("draws", "error", "match"),
    [
        (np.zeros((3, 2)), ValueError, "at least 4 draws"),
        (np.zeros(10), ValueError, r"draws must be shaped \(n_draws, n_chains"),
        (np.zeros((5, 0)), ValueError, "draws has no chains"),
        (np.array([[1.0, np.nan]] * 5), ValueError, "draws contains 5 non-finite"),
        (np.array([[1.0, np.inf]] * 5), ValueError, r"first at index \(0, 1\)"),
        (torch.full((5, 2), float("nan")), ValueError, "non-finite"),
        (np.zeros((5, 2), dtype=complex), TypeError, "draws must be real"),
        (np.array([["a"] * 2] * 5), TypeError, "draws must be real"),
    ],
)
def test_invalid_draws_are_rejected(draws: object, error: type, match: str) -> None:
    for function in (ess, rhat, mcse_mean, summary):
        with pytest.raises(error, match=match):
            function(draws)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ess(_case("iid"), kind="median")


def test_summary_table_has_one_row_per_coordinate() -> None:
    draws = _case("event_3x2")
    table = summary(draws)
    lines = str(table).splitlines()
    assert len(lines) == 1 + 6
    assert lines[0].split() == list(Summary.COLUMNS)
    assert [line.split()[0] for line in lines[1:]] == [
        "x[0,0]", "x[0,1]", "x[1,0]", "x[1,1]", "x[2,0]", "x[2,1]",
    ]  # fmt: skip
    assert len({len(line) for line in lines}) == 1  # columns are aligned
    assert "6 coordinates" in repr(table)


def test_summary_values_agree_with_functions() -> None:
    draws = _case("event_3x2")
    table = summary(draws, names="theta")
    np.testing.assert_array_equal(table.ess_bulk, ess(draws, "bulk").ravel())
    np.testing.assert_array_equal(table.ess_tail, ess(draws, "tail").ravel())
    np.testing.assert_array_equal(table.r_hat, rhat(draws).ravel())
    np.testing.assert_array_equal(table.mcse_mean, mcse_mean(draws).ravel())
    pooled = draws.reshape(-1, 6)
    np.testing.assert_allclose(table.mean, pooled.mean(axis=0))
    np.testing.assert_allclose(table.sd, pooled.std(axis=0, ddof=1))
    np.testing.assert_allclose(table.q5, np.quantile(pooled, 0.05, axis=0))
    np.testing.assert_allclose(table.q95, np.quantile(pooled, 0.95, axis=0))
    as_dict = table.to_dict()
    assert list(as_dict) == list(table.names)
    assert as_dict["theta[2,1]"]["r_hat"] == table.r_hat[5]
    assert set(as_dict["theta[0,0]"]) == set(Summary.COLUMNS)


def test_summary_names() -> None:
    scalar = summary(_case("iid"))
    assert scalar.names == ("x",)
    assert len(str(scalar).splitlines()) == 2
    named = summary(_case("event_3x2")[:, :, 0, :], names=["alpha", "beta"])
    assert named.names == ("alpha", "beta")
    with pytest.raises(ValueError, match="names must give one name per coordinate"):
        summary(_case("event_3x2"), names=["alpha", "beta"])


def test_statistics_in_blocks_of_coordinates_equal_those_in_one(monkeypatch):
    # Blocks bound the memory of summary(): a (1000, 100, 50) draw once peaked at ~10× its
    # size. Per-coordinate statistics must not depend on the blocking (sizes 1, 2 and 3
    # coordinates a block for 7 coordinates: uneven last blocks included).
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(200, 3, 7)).cumsum(axis=0) * 0.1 + rng.normal(size=(200, 3, 7))
    whole = diagnostics.summary(draws)
    functions = {"bulk": diagnostics.ess, "tail": lambda d: diagnostics.ess(d, "tail"),
                 "rhat": diagnostics.rhat, "mcse": diagnostics.mcse_mean}
    expected = {name: function(draws) for name, function in functions.items()}
    for width in (1, 2, 3):
        monkeypatch.setattr(diagnostics, "_BLOCK_ELEMENTS", width * 200 * 3)
        blocked = diagnostics.summary(draws)
        for field in ("q5", "q95", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"):
            # Rounding may differ in the last bit (vectorised loops over other widths).
            np.testing.assert_allclose(getattr(blocked, field), getattr(whole, field),
                                       rtol=1e-12)
        for name, function in functions.items():
            np.testing.assert_allclose(function(draws), expected[name], rtol=1e-12)
