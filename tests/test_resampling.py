"""Resampling schemes: unbiased offspring counts, their variances, and argument checks."""

import pytest
import torch

from ebmalgebra.samplers.resampling import (
    RESAMPLING,
    _inverse_cdf,
    resample,
    residual,
    systematic,
)

F64 = torch.float64
WEIGHTS = torch.tensor([0.31, 0.005, 0.12, 0.0, 0.2, 0.045, 0.07, 0.15, 0.1, 0.0], dtype=F64)
N_RUNS = 4000


def _offspring_counts(method, weights, n_runs, n=None, seed=0):
    """(n_runs, N) offspring counts N_i = #{m : A_m = i} of independent resamplings."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([
        torch.bincount(resample(weights, generator, method=method, n=n),
                       minlength=weights.shape[0])
        for _ in range(n_runs)
    ]).to(F64)


@pytest.mark.parametrize("method", list(RESAMPLING))
@pytest.mark.parametrize("n", [None, 7])
def test_mean_offspring_count_is_n_times_the_weight(method, n):
    counts = _offspring_counts(method, WEIGHTS, N_RUNS, n=n)
    m = WEIGHTS.shape[0] if n is None else n
    expected = m * WEIGHTS
    assert (counts.sum(1) == m).all()
    # Var N_i is M W_i (1 − W_i) for multinomial and below 1 for the others (systematic: ¼,
    # stratified: ≤ ½ from its two partial strata, residual: r(1 − r/R) < 1 with r < 1), so
    # max(M W (1 − W), 1) / N_RUNS bounds the variance of the mean; z ≤ 4.5 over 10 particles.
    bound = torch.sqrt(torch.clamp(m * WEIGHTS * (1 - WEIGHTS), min=1.0) / N_RUNS)
    assert ((counts.mean(0) - expected).abs() <= 4.5 * bound).all(), (counts.mean(0), expected)
    # Particles of weight zero are never chosen.
    assert (counts[:, WEIGHTS == 0] == 0).all()


def test_systematic_counts_are_floor_or_ceiling():
    counts = _offspring_counts("systematic", WEIGHTS, 500)
    expected = WEIGHTS.shape[0] * WEIGHTS
    assert ((counts == expected.floor()) | (counts == expected.ceil())).all()


def test_residual_keeps_the_deterministic_copies():
    counts = _offspring_counts("residual", WEIGHTS, 500)
    assert (counts >= (WEIGHTS.shape[0] * WEIGHTS).floor()).all()


def test_systematic_has_lower_variance_than_multinomial():
    n = WEIGHTS.shape[0]
    multinomial = _offspring_counts("multinomial", WEIGHTS, N_RUNS).var(0).sum()
    systematic_variance = _offspring_counts("systematic", WEIGHTS, N_RUNS, seed=1).var(0).sum()
    exact_multinomial = float(n * (WEIGHTS * (1 - WEIGHTS)).sum())
    fraction = n * WEIGHTS - (n * WEIGHTS).floor()
    exact_systematic = float((fraction * (1 - fraction)).sum())  # counts are ⌊nW⌋ or ⌈nW⌉
    # Sample variances of 4000 runs are within ~√(2/4000) ≈ 2.2 % of the truth (Gaussian
    # approximation); 15 % is > 6 of those.
    assert multinomial == pytest.approx(exact_multinomial, rel=0.15)
    assert float(systematic_variance) <= 1.15 * exact_systematic
    assert exact_systematic < 0.5 * exact_multinomial
    assert systematic_variance < 0.5 * multinomial


@pytest.mark.parametrize("method", list(RESAMPLING))
def test_same_generator_same_ancestors_and_dtype_follows(method):
    weights = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(3)), 0)
    first = resample(weights.float(), torch.Generator().manual_seed(5), method=method)
    second = resample(weights.float(), torch.Generator().manual_seed(5), method=method)
    assert torch.equal(first, second)
    assert first.dtype == torch.long and first.shape == (50,)
    assert (first.diff() >= 0).all()


def test_all_weight_on_one_particle():
    weights = torch.zeros(6, dtype=F64)
    weights[4] = 1.0
    for method in RESAMPLING:
        assert (resample(weights, torch.Generator().manual_seed(0), method=method) == 4).all()


def test_a_point_rounded_up_to_one_never_picks_a_zero_weight_particle():
    # In float32 the last point (n − 1 + U)/n of systematic and stratified resampling
    # rounds to 1 when U > 1 − ulp(n − 1)/2 (for n = 2²³ half the time); that point
    # belongs to the last particle with positive weight, as does any u < 1.
    weights = torch.tensor([0.25, 0.75, 0.0, 0.0])
    points = torch.tensor([0.0, 0.5, 0.9999999, 1.0])
    assert _inverse_cdf(weights, points).tolist() == [0, 1, 1, 1]


def test_bad_arguments_name_the_problem():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="normalised"):
        systematic(torch.tensor([1.0, 2.0]), generator)
    with pytest.raises(ValueError, match="non-negative"):
        residual(torch.tensor([1.5, -0.5]), generator)
    with pytest.raises(ValueError, match="method must be one of"):
        resample(torch.tensor([0.5, 0.5]), generator, method="optimal")
    with pytest.raises(TypeError, match="floating-point"):
        systematic(torch.tensor([1, 0]), generator)
    with pytest.raises(ValueError, match="n must be a positive int"):
        systematic(torch.tensor([0.5, 0.5]), generator, n=0)
