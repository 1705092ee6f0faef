"""Normalising noise-conditioned models at every noise level: log Z(σ) by SMC against
closed forms, true mixture weights, and the interpolation between levels."""

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import CapabilityError, CompositionError
from ebmalgebra.noise_normalized import NoiseNormalized
from ebmalgebra.normalize import normalize
from ebmalgebra.samplers import SMC
from ebmalgebra.schedules import VE
from ebmalgebra.targets import GaussianMixture

F64 = torch.float64
LEVELS = torch.logspace(1, -1.5, 25, dtype=F64).tolist()


def _seed(seed=0):
    return torch.Generator().manual_seed(seed)


def _shifted(locs, scale, shift, name):
    """A VE-noised mixture with energy −log p_σ(x) + c(σ), c(σ) = shift · (1 + log(1 + σ)):
    an unnormalised noise-conditioned model with log Z(σ) = −c(σ) at every level."""
    noised = GaussianMixture(torch.tensor(locs, dtype=F64), scale, name=name).noised(VE())

    def c(t):
        return shift * (1.0 + torch.log1p(torch.as_tensor(t, dtype=F64)))

    def energy(x, t):
        return noised.energy(x, t=t) + c(t).to(x)

    return eb.from_energy(energy, 2, name=name, noise_conditioned=True), c


def test_log_z_at_every_noise_level_within_four_stderr():
    model, c = _shifted([[-3.0, 0.0], [2.0, 1.0]], 0.5, 4.0, "a")
    normalised = normalize(model, noise_levels=LEVELS, n_particles=2048, generator=_seed(0))
    truth = -c(normalised.levels)
    estimate = normalised.log_z_values
    stderr = normalised.log_z_stderr
    assert torch.isfinite(stderr).all() and float(stderr.max()) < 0.1
    # Each level's log Ẑ is asymptotically normal around log Z with the reported stderr;
    # |z| ≤ 4 at 25 levels fails by chance with probability < 25 · 6.3e-5.
    assert ((estimate - truth).abs() <= 4 * stderr).all(), (estimate - truth, stderr)
    x = torch.randn(8, 2, generator=_seed(1), dtype=F64)
    # The normalised energy is −log p_σ: the shift is gone at a level and between levels
    # up to the interpolation of c in log σ (c is smooth: < 0.01 nats between these levels).
    noised = GaussianMixture(torch.tensor([[-3.0, 0.0], [2.0, 1.0]], dtype=F64), 0.5
                             ).noised(VE())
    for sigma, tolerance in ((LEVELS[5], 4 * float(stderr.max())),
                             (0.5 * (LEVELS[9] + LEVELS[10]), 4 * float(stderr.max()) + 0.01)):
        gap = normalised.energy(x, t=sigma) - noised.energy(x, t=sigma)
        assert float(gap.abs().max()) < tolerance


def test_normalised_mixture_has_true_weights_at_the_last_level():
    """``normalize(a) | normalize(b)`` of two models whose normalisers differ by e^12 puts
    half its mass on each, where the raw ``a | b`` puts e^-12 on ``a``."""
    a, _ = _shifted([[-4.0, 0.0], [-3.0, 2.0]], 0.5, 6.0, "a")
    b, _ = _shifted([[3.0, 0.0], [4.0, -1.0]], 0.5, -6.0, "b")
    options = {"noise_levels": LEVELS, "n_particles": 1024}
    fair = normalize(a, generator=_seed(2), **options) | normalize(b, generator=_seed(3),
                                                                     **options)
    on_a = lambda x: (x[:, 0] < 0).to(F64)  # noqa: E731 - the components lie on either side
    result = SMC().run(fair, noise_levels=LEVELS, n_particles=2048, generator=_seed(4))
    fraction, stderr = result.expectation(on_a)
    # The fraction on a is a binomial proportion of N_eff effective draws, sd
    # √(p(1−p)/N_eff); the genealogy stderr estimates exactly that for SMC particles,
    # whose resampled ancestors are shared (Chan & Lai 2013). The weights themselves are
    # off by the logistic slope (≤ 1/4) times the error of log Ẑ_a − log Ẑ_b, whose sd is
    # the two stderrs in quadrature: z ≤ 4 for both.
    sd_a, sd_b = (float(m.log_z_stderr[0]) for m in fair.operands())
    assert 0 < stderr < 0.03
    assert abs(fraction - 0.5) <= 4 * stderr + math.hypot(sd_a, sd_b), (fraction, stderr)
    raw = SMC().run(a | b, noise_levels=LEVELS, n_particles=2048, generator=_seed(5))
    assert raw.expectation(on_a)[0] < 1e-3


def test_interpolation_is_linear_in_log_sigma_and_refuses_other_levels():
    noised = GaussianMixture(torch.tensor([[0.0, 0.0]], dtype=F64), 1.0).noised(VE())
    model = NoiseNormalized(noised, levels=[1.0, 0.1, 10.0], log_z=[2.0, 1.0, 5.0])
    x = torch.randn(4, 2, generator=_seed(6), dtype=F64)
    for t, shift in ((0.1, 1.0), (1.0, 2.0), (10.0, 5.0), (math.sqrt(10.0), 3.5),
                     (10 ** -0.75, 1.25)):
        torch.testing.assert_close(model.energy(x, t=t) - noised.energy(x, t=t),
                                   torch.full((4,), shift, dtype=F64))
    per_row = torch.tensor([0.1, 1.0, 10.0, math.sqrt(10.0)], dtype=F64)
    torch.testing.assert_close(model.energy(x, t=per_row) - noised.energy(x, t=per_row),
                               torch.tensor([1.0, 2.0, 5.0, 3.5], dtype=F64))
    energy, score = eb.compile(model | model).energy_and_score(x, t=0.5)
    reference = noised.energy_and_score(x, t=0.5)
    torch.testing.assert_close(score, reference[1])
    torch.testing.assert_close(energy, reference[0] + float(model.log_z_at(0.5)) - math.log(2))
    assert model.normalizer_known and float(model.log_z()) == 0.0
    for t in (0.05, 11.0):
        with pytest.raises(CompositionError, match=r"outside the levels .*\[0\.1, 10\]"):
            model.energy(x, t=t)
    with pytest.raises(CompositionError, match="noise-conditioned"):
        NoiseNormalized(GaussianMixture(torch.zeros(1, 2), 1.0), levels=[1.0], log_z=[0.0])
    with pytest.raises(CompositionError, match="log_z has 1 values for 2 levels"):
        NoiseNormalized(noised, levels=[1.0, 2.0], log_z=[0.0])
    with pytest.raises(TypeError, match="log_z= was given"):
        normalize(noised, noise_levels=[1.0], log_z=[0.0], n_particles=10)


def test_score_only_bases_keep_their_score():
    """log Z(t) is flat in x, so a normalised score-only model has the base's score (its
    capabilities say so); the level is checked as for energies."""
    noised = GaussianMixture(torch.tensor([[1.0, -1.0]], dtype=F64), 0.5).noised(VE())
    score_only = eb.from_score(noised.score, 2, name="s", noise_conditioned=True)
    model = normalize(score_only, noise_levels=[0.1, 1.0], log_z=[0.0, 1.0])
    assert model.capabilities.has_score and not model.capabilities.has_energy
    x = torch.randn(4, 2, generator=_seed(10), dtype=F64)
    per_row = torch.tensor([0.1, 0.3, 0.7, 1.0], dtype=F64)
    for t in (0.5, per_row):
        torch.testing.assert_close(model.score(x, t=t), noised.score(x, t=t))
        torch.testing.assert_close((model & model).score(x, t=t), 2 * noised.score(x, t=t))
    with pytest.raises(CompositionError, match="outside the levels"):
        model.score(x, t=2.0)


def test_a_path_whose_lineages_die_out_is_refused():
    model, _ = _shifted([[-3.0, 0.0], [2.0, 1.0]], 0.5, 0.0, "a")
    with pytest.warns(RuntimeWarning), pytest.raises(CapabilityError, match="n_particles"):
        normalize(model, noise_levels=LEVELS, n_particles=8, ess_threshold=1.0,
                  generator=_seed(7))


def test_replicates_pool_independent_runs():
    """R runs pooled by their mean Ẑ, stderr from their spread: the estimate is within four
    stderrs at the last level and the spread agrees with one run's genealogy stderr (the
    two estimate the same sd; with R = 8 the sample sd is within a factor 2 of it with
    probability > 0.95 for near-normal log Ẑ, χ²₇ quantiles)."""
    model, c = _shifted([[-3.0, 0.0], [2.0, 1.0]], 0.5, 4.0, "a")
    pooled = normalize(model, noise_levels=LEVELS, n_particles=512, replicates=8,
                       generator=_seed(8))
    single = normalize(model, noise_levels=LEVELS, n_particles=512, generator=_seed(9))
    error = float(pooled.log_z_values[0] + c(LEVELS[-1]))
    assert abs(error) <= 4 * float(pooled.log_z_stderr[0])
    ratio = float(pooled.log_z_stderr[0] * math.sqrt(8) / single.log_z_stderr[0])
    assert 0.5 < ratio < 2.0, ratio


def test_replicates_that_disagree_give_no_stderr():
    """Pooled runs whose log Ẑ are tens of nats apart (an improper level, as for the zoo's
    faces at σ = 0.01) are refused rather than given the spread's stderr, which is ≈ 1
    whenever one run dominates."""
    from ebmalgebra.normalize import _pooled

    log_z, stderr = _pooled(torch.tensor([[0.0, 5.0], [0.1, 40.0], [-0.1, 9.0],
                                          [0.05, 2.0]], dtype=F64))
    assert math.isfinite(float(stderr[0])) and float(stderr[1]) == math.inf
    # Four near-equal runs: log of the mean of e^0, e^0.1, e^−0.1, e^0.05.
    assert float(log_z[0]) == pytest.approx(math.log(sum(math.exp(v) for v in
                                                         (0.0, 0.1, -0.1, 0.05)) / 4))
