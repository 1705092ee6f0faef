"""Noise schedules and noised Gaussian mixtures against independent computations."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from ebmalgebra import CompositionError
from ebmalgebra.noised import NoisedGaussianMixture
from ebmalgebra.schedules import VE, VP
from ebmalgebra.targets import GaussianMixture

F64 = torch.float64
LOCS = torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.0, -3.0]], dtype=F64)
COVARIANCES = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[1.0, -0.4], [-0.4, 0.8]],
                            [[0.05, 0.0], [0.0, 2.0]]], dtype=F64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=F64)


def _mixture():
    return GaussianMixture(LOCS, covariances=COVARIANCES, weights=WEIGHTS, name="g")


def _torch_noised(alpha, sigma):
    """p_t by torch.distributions: components N(α μ_k, α² Σ_k + σ² I)."""
    covariances = alpha**2 * COVARIANCES + sigma**2 * torch.eye(2, dtype=F64)
    return MixtureSameFamily(Categorical(WEIGHTS), MultivariateNormal(alpha * LOCS, covariances))


@pytest.mark.parametrize("schedule", [VE(), VP(), VP(beta_min=0.5, beta_max=5.0)])
@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
def test_energy_and_score_match_torch_distributions(schedule, t):
    noised = _mixture().noised(schedule)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    reference = _torch_noised(float(schedule.alpha(t)), float(schedule.sigma(t)))
    x_grad = x.clone().requires_grad_(True)
    log_p = reference.log_prob(x_grad)
    (score,) = torch.autograd.grad(log_p.sum(), x_grad)
    energy, model_score = noised.energy_and_score(x, t=t)
    torch.testing.assert_close(energy, -log_p.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model_score, score, rtol=1e-9, atol=1e-10)


def test_one_noise_level_per_row_equals_row_by_row():
    noised = _mixture().noised(VP())
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    levels = torch.linspace(0.05, 0.95, 6, dtype=F64)
    energy, score = noised.energy_and_score(x, t=levels)
    for row in range(6):
        e, s = noised.energy_and_score(x[row:row + 1], t=float(levels[row]))
        torch.testing.assert_close(energy[row:row + 1], e)
        torch.testing.assert_close(score[row:row + 1], s)


def test_ve_at_zero_noise_is_the_mixture():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(_mixture().noised(VE()).energy(x, t=0.0), _mixture().energy(x))


def test_vp_schedule_integrates_its_rate():
    """α_t = exp(−½ ∫₀ᵗ β(s) ds) by the trapezoid rule, and α² + σ² = 1."""
    schedule = VP(beta_min=0.1, beta_max=20.0)
    for t in (0.01, 0.4, 1.0):
        s = torch.linspace(0.0, t, 20001, dtype=F64)
        integral = torch.trapezoid(0.1 + s * (20.0 - 0.1), s)
        assert float(schedule.alpha(t)) == pytest.approx(float(torch.exp(-0.5 * integral)),
                                                         rel=1e-8)
        assert float(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2) == pytest.approx(1.0)


def test_noised_leaf_needs_a_noise_level_and_a_schedule():
    noised = _mixture().noised(VE())
    assert noised.noise_conditioned and float(noised.log_z()) == 0.0
    with pytest.raises(CompositionError, match="noise-conditioned"):
        noised.energy(torch.zeros(2, 2, dtype=F64))
    with pytest.raises(TypeError, match="NoiseSchedule"):
        _mixture().noised("ve")
    with pytest.raises(ValueError, match="beta_max"):
        VP(beta_min=2.0, beta_max=1.0)


def test_direct_construction_normalises_weights_and_checks_its_arguments():
    # log Z = 0 is claimed, so unnormalised weights must be normalised (they gave
    # log_prob off by log Σπ), and malformed covariances must not give NaN energies.
    noised = NoisedGaussianMixture(LOCS, COVARIANCES, 10.0 * WEIGHTS, VP(), name="g")
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    schedule = VP()
    reference = _torch_noised(schedule.alpha(0.3), schedule.sigma(0.3)).log_prob(x)
    torch.testing.assert_close(noised.log_prob(x, t=0.3), reference)
    with pytest.raises(ValueError, match="g: covariances must be positive definite"):
        NoisedGaussianMixture(LOCS, -COVARIANCES, WEIGHTS, VE(), name="g")
    with pytest.raises(CompositionError, match=r"g: covariances must be \(3, 2, 2\)"):
        NoisedGaussianMixture(LOCS, COVARIANCES[0], WEIGHTS, VE(), name="g")
    with pytest.raises(CompositionError, match=r"g: weights must be \(3,\)"):
        NoisedGaussianMixture(LOCS, COVARIANCES, WEIGHTS[:2], VE(), name="g")
    with pytest.raises(ValueError, match="g: weights"):
        NoisedGaussianMixture(LOCS, COVARIANCES, -WEIGHTS, VE(), name="g")


def test_vp_prints_back_as_itself():
    # Rounded to 6 digits (:g) it printed as another schedule, and annealed samplers
    # compare schedules by their printed form.
    schedule = VP(beta_min=0.123456789, beta_max=19.99999)
    assert repr(schedule) == "VP(beta_min=0.123456789, beta_max=19.99999)"
    assert eval(repr(schedule), {"VP": VP}).spec() == schedule.spec()
    assert repr(VP()) == "VP(beta_min=0.1, beta_max=20)"
