"""ebmalgebra.apps.inverse: the Gaussian likelihood leaf, posteriors, denoising, inpainting.

Statistical tolerances. Posterior means estimated with k chains per
observation are averages of draws that are at least k independent ones after
warmup (the chains start apart and are mixed by then), so their standard
error is at most sd_post / √k per coordinate; checks allow 4 of those
(a chance failure ~6e-5 per coordinate; the seeds are fixed, so the outcome
is deterministic). Each test also checks that the tolerance is tight enough
to tell the posterior from the prior and from the likelihood alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import zoo
from ebmalgebra.apps import pretrained
from ebmalgebra.apps.inverse import (
    GaussianLikelihood,
    annealed_sampler,
    denoise,
    inpaint,
    posterior_estimate,
    psnr,
)
from ebmalgebra.leaves import autograd_energy_and_score
from ebmalgebra.samplers import MALA
from ebmalgebra.targets import Gaussian


def check_against_autograd(leaf, x, t=None):
    energy, score = leaf.energy_and_score(x, t)
    reference_energy, reference_score = autograd_energy_and_score(leaf._energy, x, t, False)
    torch.testing.assert_close(energy, reference_energy)
    torch.testing.assert_close(score, reference_score, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the leaf
def test_energy_is_the_masked_squared_residual_over_two_sigma_squared():
    y = torch.randn(3, 4)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    leaf = GaussianLikelihood(y, 0.5, mask=mask)
    x = torch.randn(7, 3, 4)
    expected = (mask * (x - y)).flatten(1).square().sum(1) / (2 * 0.25)
    torch.testing.assert_close(leaf.energy(x), expected)
    assert leaf.analytic_score and leaf.event_shape == (3, 4) and repr(leaf) == "likelihood"
    check_against_autograd(leaf, x)


def test_fractional_mask_weights_scale_the_precision_per_coordinate():
    # A weight M_i is observation noise σ/M_i on coordinate i: the likelihood is the
    # diagonal Gaussian N(y, diag(σ/M)²) up to its constant, an independent closed form.
    y = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([0.5, 0.25, 1.0, 2.0], dtype=torch.float64)
    leaf = GaussianLikelihood(y, 0.4, mask=mask)
    gaussian = Gaussian(y, 0.4 / mask)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy, score = leaf.energy_and_score(x)
    torch.testing.assert_close(energy, gaussian.energy(x) - gaussian.log_constant)
    torch.testing.assert_close(score, gaussian.score(x))
    # Through a matrix A: s = −Aᵀ (M² ⊙ (Ax − y)) / σ².
    matrix = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    projected = GaussianLikelihood(y, 0.4, mask=mask, operator=matrix)
    x3 = x[:, :3]
    residual = x3 @ matrix.T - y
    torch.testing.assert_close(projected.energy(x3),
                               (mask * residual).square().sum(1) / (2 * 0.16))
    torch.testing.assert_close(projected.score(x3), -(mask**2 * residual) @ matrix / 0.16)


def test_matrix_operator_batched_observations_and_noise_levels_have_analytic_scores():
    matrix = torch.randn(3, 4)
    y = torch.randn(5, 3)  # five observations
    leaf = GaussianLikelihood(y, 0.3, operator=matrix, event_shape=4,
                              mask=torch.tensor([True, False, True]), noise_conditioned=True)
    assert leaf.analytic_score and leaf.n_obs == 5
    x = torch.randn(10, 4)
    check_against_autograd(leaf, x)
    check_against_autograd(leaf, x, 0.7)
    check_against_autograd(leaf, x, torch.rand(10))
    # Row j observes y[j % 5].
    expected = ((x @ matrix.T - y.repeat(2, 1)) * torch.tensor([1.0, 0.0, 1.0])).square().sum(1)
    torch.testing.assert_close(leaf.energy(x), expected / (2 * 0.09))
    torch.testing.assert_close(leaf.energy(x, 0.4), expected / (2 * (0.09 + 0.16)))


def test_callable_operator_uses_autograd():
    def downsample(x):
        return x.reshape(x.shape[0], 4, 2, 4, 2).mean((2, 4))

    y = torch.rand(4, 4)
    leaf = GaussianLikelihood(y, 0.1, operator=downsample, event_shape=(8, 8))
    assert not leaf.analytic_score and leaf.obs_shape == (4, 4)
    x = torch.rand(6, 8, 8)
    torch.testing.assert_close(leaf.energy(x),
                               (downsample(x) - y).flatten(1).square().sum(1) / 0.02)
    score = leaf.score(x)
    torch.testing.assert_close(score, -torch.autograd.functional.vjp(
        downsample, x, (downsample(x) - y) / 0.01)[1])


def test_posterior_is_a_product_expression_that_compiles():
    prior = Gaussian(torch.zeros(4), 1.0, name="prior")
    likelihood = GaussianLikelihood(torch.ones(4), 0.5)
    posterior = prior & likelihood
    assert repr(posterior) == "prior & likelihood"
    x = torch.randn(9, 4)
    energy, score = eb.compile(posterior).energy_and_score(x)
    torch.testing.assert_close(energy, prior.energy(x) + likelihood.energy(x))
    torch.testing.assert_close(score, -x - (x - 1) / 0.25)


def test_save_and_load_round_trip(tmp_path):
    leaf = GaussianLikelihood(torch.randn(2, 3), 0.2, operator=torch.randn(3, 6),
                              event_shape=6, noise_conditioned=True, name="obs")
    path = tmp_path / "lik.safetensors"
    eb.save(Gaussian(torch.zeros(6), 1.0, name="prior") & leaf, path)
    loaded = eb.load(path)
    x = torch.randn(4, 6)
    assert repr(loaded) == "prior & obs"
    torch.testing.assert_close(loaded.energy(x, 0.3), (Gaussian(torch.zeros(6), 1.0) & leaf)
                               .energy(x, 0.3))


# ------------------------------------------------------------------ errors
def test_bad_sigma_is_a_clear_error():
    # A bad value of one argument: ArgumentError (a ValueError), not CompositionError.
    for sigma in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(eb.ArgumentError, match="likelihood: sigma must be (positive|finite)"):
            GaussianLikelihood(torch.zeros(3), sigma)
    with pytest.raises(eb.ArgumentError, match="sigma"):
        denoise(Gaussian(torch.zeros(3), 1.0), torch.zeros(3), 0.0)


def test_mask_shape_mismatch_is_a_clear_error():
    with pytest.raises(eb.CompositionError, match=r"mask of shape \(7, 7\) does not match y"):
        GaussianLikelihood(torch.zeros(8, 8), 0.1, mask=torch.ones(7, 7))
    with pytest.raises(eb.CompositionError, match="mask"):
        inpaint(Gaussian(torch.zeros(8, 8), 1.0), torch.zeros(8, 8), torch.ones(8, 7))
    with pytest.raises(eb.CompositionError, match="non-negative"):
        GaussianLikelihood(torch.zeros(3), 0.1, mask=torch.tensor([1.0, -1.0, 1.0]))


def test_shape_errors_name_the_argument():
    with pytest.raises(eb.CompositionError, match="y has shape"):
        GaussianLikelihood(torch.zeros(2, 3), 0.1, operator=torch.zeros(4, 3))
    with pytest.raises(eb.CompositionError, match="event_shape"):
        GaussianLikelihood(torch.zeros(3), 0.1, operator=lambda x: x)
    with pytest.raises(eb.CompositionError, match="y has shape"):
        denoise(Gaussian(torch.zeros(8, 8), 1.0), torch.zeros(8, 7), 0.3)
    with pytest.raises(eb.CompositionError, match="multiple of 3"):
        GaussianLikelihood(torch.zeros(3, 2), 0.1, event_shape=2).energy(torch.zeros(4, 2))
    with pytest.raises(eb.CompositionError, match="event shapes differ"):
        Gaussian(torch.zeros(3), 1.0) & GaussianLikelihood(torch.zeros(4), 0.1)


def test_an_empty_batch_of_observations_is_named():
    # Regression: it failed inside posterior_estimate with "n_obs must be a positive int,
    # got 0", an argument the caller never passed.
    prior = Gaussian(torch.zeros(3), 1.0)
    with pytest.raises(eb.CompositionError, match=r"denoise: y of shape \(0, 3\) holds no "):
        denoise(prior, torch.zeros(0, 3), 0.3)
    with pytest.raises(eb.CompositionError, match=r"inpaint: y of shape \(0, 3\) holds no "):
        inpaint(prior, torch.zeros(0, 3), torch.ones(3, dtype=torch.bool))


def test_bad_method_and_sampler_combinations_raise():
    prior = Gaussian(torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        denoise(prior, torch.zeros(2), 0.3, method="median")
    noisy_prior = eb.from_energy(lambda x, t: 0.5 * (x**2).sum(1) / (1 + t**2), 2,
                                 noise_conditioned=True)
    with pytest.raises(ValueError, match="noise-conditioned"):
        denoise(noisy_prior, torch.zeros(2), 0.3, sampler=MALA())


# ------------------------------------------------ posteriors with closed forms
def test_denoise_posterior_mean_and_samples_match_the_gaussian_posterior(generator):
    """Prior N(0, I), y = x + σ η: posterior N(y / (1 + σ²), σ²/(1 + σ²) I)."""
    sigma, chains = 0.5, 256
    y = torch.tensor([[2.0, -1.0, 0.5, 0.0], [1.0, 1.0, -2.0, 3.0]])
    prior = Gaussian(torch.zeros(4), 1.0, name="prior")
    mean = y / (1 + sigma**2)
    sd = sigma / math.sqrt(1 + sigma**2)
    tolerance = 4 * sd / math.sqrt(chains)
    # The check would catch the likelihood alone (mean y) and the prior alone (mean 0).
    assert tolerance < min((y - mean).abs().max(), mean.abs().max())
    estimate = denoise(prior, y, sigma, n_chains=chains, n_steps=100, generator=generator)
    assert (estimate - mean).abs().max() < tolerance
    draws = torch.stack([denoise(prior, y, sigma, method="sample", n_chains=1, n_steps=100,
                                 generator=generator) for _ in range(chains)])
    assert (draws.mean(0) - mean).abs().max() < tolerance
    # sd of the sample sd of n normal draws ≈ sd / √(2n)
    assert (draws.std(0) - sd).abs().max() < 4 * sd / math.sqrt(2 * chains)


def test_annealed_posterior_of_a_noise_conditioned_prior(generator):
    """Prior N(0, I) smoothed at level t: N(0, (1 + t²) I). With the likelihood's variance
    σ² + t², the annealed chain's last level t_min targets the Gaussian with mean
    y (1 + t²) / (1 + σ² + 2t²) (→ y / (1 + σ²) as t_min → 0)."""
    prior = eb.from_energy(lambda x, t: 0.5 * (x**2).sum(1) / (1 + t**2), 3, name="smoothed",
                           noise_conditioned=True)
    sigma, chains, t_min = 0.5, 256, 0.5
    y = torch.tensor([2.0, -1.5, 0.0])
    # The step grows as (t / t_min)² (36× here), as image posteriors' variances do; the
    # largest step, 1.8, stays below twice the posterior variance at t = 3 (4.8).
    sampler = annealed_sampler(prior, sigma_max=3.0, sigma_min=t_min, n_levels=10,
                               steps_per_level=20, step_size=0.05, mala_below=1.0)
    estimate = denoise(prior, y, sigma, sampler=sampler, n_chains=chains, n_steps=100,
                       generator=generator)
    variance = 1 / (1 / (1 + t_min**2) + 1 / (sigma**2 + t_min**2))
    mean = y * (1 + t_min**2) / (1 + sigma**2 + 2 * t_min**2)
    tolerance = 4 * math.sqrt(variance) / math.sqrt(chains)
    without_t = y * (1 + t_min**2) / (1 + t_min**2 + sigma**2)  # likelihood variance σ² alone
    assert tolerance < (mean - without_t).abs().max()
    assert (estimate - mean).abs().max() < tolerance
    assert GaussianLikelihood(y, sigma, noise_conditioned=True).variance(0.5) == pytest.approx(0.5)


def test_inpaint_recovers_hidden_coordinates_from_correlations(generator):
    """Correlated Gaussian prior, one coordinate hidden: E[x₂ | x₁ = y₁] = ρ y₁ (σ → 0)."""
    rho = 0.9
    prior = eb.targets.MultivariateGaussian(torch.zeros(2), torch.tensor([[1.0, rho],
                                                                          [rho, 1.0]]))
    y = torch.tensor([1.5, 0.0])
    visible = torch.tensor([True, False])
    sigma, chains = 0.05, 256
    estimate = inpaint(prior, y, visible, sigma=sigma, method="posterior_mean", n_chains=chains,
                       n_steps=200, sampler=MALA(step_size=0.01), generator=generator)
    # x₁ | y₁ ~ N(y₁/(1 + σ²), σ²/(1 + σ²)) and E[x₂ | y₁] = ρ E[x₁ | y₁]; the posterior
    # variance of x₂ is below 1 − ρ² + σ².
    expected = rho * 1.5 / (1 + sigma**2)
    assert abs(float(estimate[1]) - expected) < 4 * math.sqrt(1 - rho**2 + sigma**2) / math.sqrt(
        chains)
    assert abs(float(estimate[0]) - 1.5) < 0.05


def test_map_descends_to_the_posterior_mode():
    prior = Gaussian(torch.zeros(3), 1.0)
    y = torch.tensor([2.0, -1.0, 0.5])
    estimate = denoise(prior, y, 0.5, method="map", sampler=MALA(), n_steps=500)
    torch.testing.assert_close(estimate, y / 1.25, atol=1e-3, rtol=0)


def test_posterior_estimate_needs_whole_groups_of_chains():
    posterior = Gaussian(torch.zeros(2), 1.0) & GaussianLikelihood(torch.zeros(3, 2), 0.5,
                                                                   event_shape=2)
    with pytest.raises(ValueError, match="multiple of n_obs"):
        posterior_estimate(posterior, torch.zeros(4, 2), 3)


def test_posterior_estimate_checks_n_obs_against_the_likelihood():
    prior = Gaussian(torch.zeros(2), 1.0)
    posterior = prior & GaussianLikelihood(torch.zeros(3, 2), 0.5, event_shape=2)
    for n_obs in (0, -3, True, 3.0):
        with pytest.raises(ValueError, match="n_obs must be a positive int"):
            posterior_estimate(posterior, torch.zeros(6, 2), n_obs)
    # 6 chains split evenly into 1 or 2 groups, but the likelihood pairs chain j with y[j % 3].
    for n_obs in (1, 2):
        with pytest.raises(eb.CompositionError, match="likelihood holds 3 observations"):
            posterior_estimate(posterior, torch.zeros(6, 2), n_obs)
    with pytest.raises(eb.CompositionError, match="pass n_obs=3"):
        posterior_estimate(posterior ** 2, torch.zeros(6, 2), 2)
    estimate = posterior_estimate(posterior, torch.zeros(6, 2), 3, method="sample",
                                  sampler=MALA(adapt_step_size=False), n_steps=1)
    assert estimate.shape == (3, 2)


def test_psnr():
    truth = torch.zeros(2, 4)
    torch.testing.assert_close(psnr(truth + 0.1, truth), torch.full((2,), 20.0))


# ------------------------------------------------------------ shipped prior
def gaussian_blur(images: torch.Tensor, width: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(np.stack([gaussian_filter(image.numpy(), width, mode="constant")
                                      for image in images]))


def test_denoising_digits_beats_the_noisy_input_and_a_tuned_blur():
    """Measured on the 355 test digits (docs/applications.md): posterior mean ≈ 17.6 dB,
    noisy 10.5 dB, best blur 14.5 dB. Here 96 images with fewer draws (MC noise lowers the
    PSNR slightly); the acceptance criteria are + 3 dB over the noisy input and more than
    the blur with its width tuned on held-out training images."""
    from ebmalgebra.datasets import digits

    torch.manual_seed(0)
    prior = pretrained.load("digits")
    clean = digits(split="test")[::3][:96]
    noise = torch.Generator().manual_seed(1)
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=noise)
    held_out = digits(split="train")[::4]
    held_out_noisy = held_out + 0.3 * torch.randn(held_out.shape, generator=noise)
    width = max((0.4, 0.5, 0.6, 0.7, 0.8, 1.0), key=lambda w: float(
        psnr(gaussian_blur(held_out_noisy, w).clamp(0, 1), held_out).mean()))
    blur = float(psnr(gaussian_blur(noisy, width).clamp(0, 1), clean).mean())
    estimate = denoise(prior, noisy, 0.3, n_chains=4, n_steps=50,
                       generator=torch.Generator().manual_seed(0))
    ours = float(psnr(estimate, clean).mean())
    assert ours >= float(psnr(noisy, clean).mean()) + 3.0
    assert ours > blur + 1.0


@pytest.mark.slow
def test_inpainting_the_eye_band_controls_glasses():
    """Measured on 256 faces (docs/applications.md): face 48.4%, glasses 100%, tempered
    negation (α = 0.2) 7.4% glasses with 78.5% realism. Here 48 faces (binomial standard
    errors at n = 48: 7.2% at ½, 3.8% at 7.4%, 5.9% at 78.5%): face in [30%, 80%], from 2.8
    standard errors below ½ to 4.2 above (room for the ≈ 60% the float16 weights gave),
    negation ≤ 15% (2 above 7.4%) and ≥ 60% realistic (3 below 78.5%)."""
    from ebmalgebra.datasets import faces
    from ebmalgebra.zoo.faces import attribute_rates

    face, glasses = zoo.load("face"), zoo.load("glasses")
    observed = faces(48, glasses=True, generator=torch.Generator().manual_seed(100))
    visible = torch.ones(16, 16, dtype=torch.bool)
    visible[5:9] = False

    def rates(prior):
        return attribute_rates(inpaint(prior, observed, visible, sigma=0.05,
                                       generator=torch.Generator().manual_seed(0)))

    assert 0.3 <= rates(face)["glasses"] <= 0.8  # about the data rate, ½
    assert rates(glasses)["glasses"] >= 0.9
    negated = rates(face & (face & ~glasses) ** 0.2)
    assert negated["glasses"] <= 0.15 and negated["realistic"] >= 0.6
