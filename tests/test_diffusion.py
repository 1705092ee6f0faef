"""Diffusion leaves: the ε/x₀/v conversions against an analytic noised Gaussian mixture,
composition and sampling (annealed Langevin for score-only products, MALA and SMC for
energy heads), and diffusers UNets (skipped without the optional extra)."""

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import CapabilityError, CompositionError
from ebmalgebra.diffusion import (
    DiscreteVP,
    from_diffusers,
    from_energy_network,
    from_prediction,
    prediction_from_score,
    score_from_prediction,
)
from ebmalgebra.samplers import SMC, AnnealedLangevin
from ebmalgebra.schedules import VE, VP
from ebmalgebra.targets import GaussianMixture

F64 = torch.float64
LOCS = torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.0, 2.0]], dtype=F64)
COVARIANCES = torch.stack([
    torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64),
    torch.tensor([[0.4, -0.1], [-0.1, 0.8]], dtype=F64),
    torch.tensor([[0.2, 0.0], [0.0, 0.3]], dtype=F64),
])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
# DDPM's linear β from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020), built by hand.
DDPM_CUMPROD = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)

SCHEDULES = {
    "VE": (VE(), [0.05, 0.3, 1.0, 4.0]),
    "VP": (VP(), [0.01, 0.1, 0.5, 1.0]),
    "DDPM-interpolate": (DiscreteVP(DDPM_CUMPROD), [0.02, 0.1, 0.5, 0.99]),
    "DDPM-nearest": (DiscreteVP(DDPM_CUMPROD, timesteps="nearest"), [0.0123, 0.3, 0.77, 0.99]),
}


def _seed(seed=0):
    return torch.Generator().manual_seed(seed)


def _posterior_mean(x, alpha, sigma, locs=LOCS, covariances=COVARIANCES, weights=WEIGHTS):
    """E[x₀ | x_t] for x₀ ~ Σ π_k N(μ_k, Σ_k), x_t = α x₀ + σ ε, from Gaussian conditioning
    (independent of the library's score): with C_k = α² Σ_k + σ² I,
    E[x₀ | x_t, k] = μ_k + α Σ_k C_k⁻¹ (x_t − α μ_k), weighted by
    p(k | x_t) ∝ π_k N(x_t; α μ_k, C_k).
    """
    alpha, sigma = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
    eye = torch.eye(locs.shape[1], dtype=x.dtype)
    marginal_cov = alpha**2 * covariances + sigma**2 * eye  # (batch, K, d, d)
    diff = x[:, None, :] - alpha[..., 0] * locs  # (batch, K, d)
    solved = torch.linalg.solve(marginal_cov, diff[..., None])[..., 0]
    log_joint = (weights.log() - 0.5 * (diff * solved).sum(-1)
                 - 0.5 * torch.logdet(marginal_cov))
    responsibilities = torch.softmax(log_joint, dim=1)
    component_means = locs + alpha[..., 0] * torch.einsum("kij,bkj->bki", covariances, solved)
    return (responsibilities[..., None] * component_means).sum(1)


def _analytic_network(schedule, prediction, **mixture):
    """The exact ε, x₀ or v prediction of the noised mixture: ε̂ = (x − α x̂₀)/σ, v̂ = α ε̂ − σ x̂₀."""
    def network(x, t):
        alpha, sigma = schedule.alpha(t).to(x), schedule.sigma(t).to(x)
        x0 = _posterior_mean(x, alpha, sigma, **mixture)
        epsilon = (x - alpha[:, None] * x0) / sigma[:, None]
        return {"x0": x0, "epsilon": epsilon, "v": alpha[:, None] * epsilon - sigma[:, None] * x0}[
            prediction]
    return network


def _noised_mixture(schedule):
    return GaussianMixture(LOCS, covariances=COVARIANCES, weights=WEIGHTS).noised(schedule)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_conversions_give_the_noised_mixtures_exact_score(schedule_name, prediction):
    schedule, levels = SCHEDULES[schedule_name]
    truth = _noised_mixture(schedule)
    leaf = from_prediction(_analytic_network(schedule, prediction), schedule,
                           prediction=prediction, event_shape=2, name="net")
    x = 3.0 * torch.randn(64, 2, generator=_seed(1), dtype=F64)
    # The 1e-10 tolerance also guards float levels: routed through float32 they were off
    # by ~1e-8 relative (a bug this test caught).
    for t in levels:
        torch.testing.assert_close(leaf.score(x, t=t), truth.score(x, t=t), rtol=1e-10,
                                   atol=1e-10)
    # One noise level per row, as SMC and annealed samplers may pass it.
    per_row = torch.tensor(levels, dtype=F64).repeat(16)
    torch.testing.assert_close(leaf.score(x, t=per_row), truth.score(x, t=per_row), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_prediction_from_score_inverts_the_conversion(prediction):
    x = torch.randn(8, 3, 4, generator=_seed(2), dtype=F64)
    score = torch.randn(8, 3, 4, generator=_seed(3), dtype=F64)
    for alpha, sigma in ((torch.tensor(1.0, dtype=F64), torch.tensor(2.5, dtype=F64)),
                         (torch.tensor(0.6, dtype=F64), torch.tensor(0.8, dtype=F64)),
                         (torch.rand(8, dtype=F64) + 0.1, torch.rand(8, dtype=F64) + 0.1)):
        output = prediction_from_score(score, x, alpha, sigma, prediction)
        torch.testing.assert_close(score_from_prediction(output, x, alpha, sigma, prediction),
                                   score)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_conversions_take_plain_float_scales(dtype):
    # α, σ as Python floats (as the docstring's "scalars" allows): the closed forms
    # s = −ε̂/σ, s = (α x̂₀ − x)/σ², ε̂ = (α v̂ + σ x)/(α² + σ²), in x's dtype.
    x = torch.randn(5, 2, generator=_seed(5), dtype=dtype)
    output = torch.randn(5, 2, generator=_seed(6), dtype=dtype)
    alpha, sigma = 0.6, 0.8
    expected = {"epsilon": -output / sigma, "x0": (alpha * output - x) / sigma**2,
                "v": -(alpha * output + sigma * x) / sigma}
    for prediction, score in expected.items():
        converted = score_from_prediction(output, x, alpha, sigma, prediction)
        assert converted.dtype == dtype
        torch.testing.assert_close(converted, score)
        torch.testing.assert_close(prediction_from_score(score, x, alpha, sigma, prediction),
                                   output)


def test_dtype_follows_the_input_and_scores_train_the_network():
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 2)  # ε̂ = W [x, t] + b
    leaf = from_prediction(lambda x, t: network(torch.cat([x, t[:, None]], 1)), VP(),
                           prediction="v", event_shape=2, name="linear")
    x = torch.randn(5, 2)
    score = leaf.score(x, t=0.5)
    assert score.dtype == torch.float32
    # With create_graph the score is differentiable in the network's parameters (for
    # denoising score matching), and compiled sums of leaves keep the exact conversion.
    leaf.score(x, t=0.5, create_graph=True).square().sum().backward()
    assert network.weight.grad is not None and network.weight.grad.abs().sum() > 0
    torch.testing.assert_close(eb.compile(leaf & 2.0 * leaf ** 3).score(x, t=0.5), 4 * score)


def test_discrete_vp_maps_noise_levels_to_timesteps():
    interpolate, nearest = DiscreteVP(DDPM_CUMPROD), DiscreteVP(DDPM_CUMPROD, timesteps="nearest")
    sigmas = torch.sqrt(1 - DDPM_CUMPROD)
    for n in (0, 1, 17, 500, 999):
        assert float(interpolate.timestep(float(sigmas[n]))) == pytest.approx(n, abs=1e-9)
    midpoint = float(0.5 * (sigmas[10] + sigmas[11]))
    assert float(interpolate.timestep(midpoint)) == pytest.approx(10.5, abs=1e-9)
    assert int(nearest.timestep(midpoint - 1e-9)) == 10
    assert int(nearest.timestep(midpoint + 1e-9)) == 11
    assert float(nearest.sigma(midpoint + 1e-9)) == pytest.approx(float(sigmas[11]), abs=1e-15)
    t = torch.tensor([0.1, 0.5], dtype=F64)
    torch.testing.assert_close(interpolate.alpha(t) ** 2 + interpolate.sigma(t) ** 2,
                               torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="noise level t"):
        interpolate.sigma(0.001)
    with pytest.raises(ValueError, match="timesteps must be"):
        DiscreteVP(DDPM_CUMPROD, timesteps="linear")
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVP(DDPM_CUMPROD.flip(0))


def test_energy_heads_give_the_noised_mixtures_energy_and_score():
    schedule = VP()
    truth = _noised_mixture(schedule)
    x = 2.0 * torch.randn(32, 2, generator=_seed(4), dtype=F64)
    direct = from_energy_network(lambda x, t: truth.energy(x, t), schedule, event_shape=2)
    # ε-parameterised head: f = σ_t E, so ∇f = σ_t ∇E = −σ_t s = ε̂ (Tweedie).
    scaled = from_energy_network(lambda x, t: schedule.sigma(t).to(x) * truth.energy(x, t),
                                 schedule, event_shape=2, parameterization="epsilon")
    for leaf in (direct, scaled):
        for t in (0.05, 0.4, 1.0):
            energy, score = leaf.energy_and_score(x, t=t)
            torch.testing.assert_close(energy, truth.energy(x, t=t), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(score, truth.score(x, t=t), rtol=1e-10, atol=1e-10)


def test_capabilities_and_errors():
    schedule = VE()
    scores = from_prediction(_analytic_network(schedule, "epsilon"), schedule,
                             prediction="epsilon", event_shape=2, name="eps")
    energies = from_energy_network(lambda x, t: x.square().sum(-1), schedule, event_shape=2,
                                   name="head")
    assert not scores.capabilities.has_energy and energies.capabilities.has_energy
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(CompositionError, match="mixture needs energies.*'eps'"):
        scores | energies
    with pytest.raises(CapabilityError, match="eps"):
        (scores & energies).energy(x, t=1.0)
    with pytest.raises(CompositionError, match="noise level"):
        scores.score(x)
    with pytest.raises(ValueError, match="σ_t > 0"):
        scores.score(x, t=0.0)
    with pytest.raises(ValueError, match="prediction must be one of"):
        from_prediction(lambda x, t: x, schedule, prediction="score", event_shape=2)
    with pytest.raises(CompositionError, match="schedule must be a NoiseSchedule"):
        from_prediction(lambda x, t: x, "VE", prediction="epsilon", event_shape=2)
    with pytest.raises(ValueError, match="parameterization"):
        from_energy_network(lambda x, t: x.sum(-1), schedule, event_shape=2,
                            parameterization="x0")
    bad = from_prediction(lambda x, t: x.sum(-1), schedule, prediction="x0", event_shape=2,
                          name="bad")
    with pytest.raises(CompositionError, match="bad.*shaped like x"):
        bad.score(x, t=1.0)


# Two single-Gaussian factors, so every noisy product is Gaussian in closed form.
LOC_A, COV_A = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[[1.0, 0.4], [0.4, 0.8]]],
                                                                    dtype=F64)
LOC_B, COV_B = torch.tensor([[-0.5, 1.0]], dtype=F64), torch.tensor([[[0.6, 0.0], [0.0, 1.5]]],
                                                                     dtype=F64)
ONE = torch.ones(1, dtype=F64)


def _gaussian_product(sigma):
    """N(μ_a, Σ_a + σ²I) · N(μ_b, Σ_b + σ²I) = Z N(m, P⁻¹): P = P_a + P_b,
    m = P⁻¹(P_a μ_a + P_b μ_b), log Z = log N(μ_a; μ_b, Σ_a + Σ_b + 2σ²I)."""
    eye = torch.eye(2, dtype=F64)
    cov_a, cov_b = COV_A[0] + sigma**2 * eye, COV_B[0] + sigma**2 * eye
    precision = torch.linalg.inv(cov_a) + torch.linalg.inv(cov_b)
    mean = torch.linalg.solve(precision, torch.linalg.solve(cov_a, LOC_A[0])
                              + torch.linalg.solve(cov_b, LOC_B[0]))
    log_z = torch.distributions.MultivariateNormal(LOC_B[0], cov_a + cov_b).log_prob(LOC_A[0])
    return mean, precision, float(log_z)


def test_product_of_score_only_leaves_samples_by_uncorrected_annealed_langevin():
    schedule = VE()
    a = from_prediction(_analytic_network(schedule, "epsilon", locs=LOC_A, covariances=COV_A,
                                          weights=ONE), schedule, prediction="epsilon",
                        event_shape=2, name="a")
    b = from_prediction(_analytic_network(schedule, "v", locs=LOC_B, covariances=COV_B,
                                          weights=ONE), schedule, prediction="v",
                        event_shape=2, name="b")
    step, sigma_min, n = 0.05, 0.5, 8000
    sampler = AnnealedLangevin(noise_levels=torch.logspace(math.log10(3.0),
                                                           math.log10(sigma_min), 10),
                               steps_per_level=10, step_size=step)
    with pytest.raises(CapabilityError):
        eb.sample(a & b, AnnealedLangevin(noise_levels=[1.0, sigma_min], mala=True),
                  n_chains=4, n_steps=1, progress=False)
    x0 = 3.0 * torch.randn(n, 2, generator=_seed(5), dtype=F64)
    run = eb.sample(a & b, sampler, x0=x0, warmup=sampler.n_annealing_steps + 150, n_steps=1,
                    generator=_seed(6), progress=False)
    final = run.draws[-1]
    # ULA on a Gaussian with precision P keeps the mean m and has the stationary covariance
    # C = (P (I − εP/2))⁻¹ (solve C = (I − εP) C (I − εP) + 2εI): the uncorrected bias.
    mean, precision, _ = _gaussian_product(sigma_min)
    ula_cov = torch.linalg.inv(precision @ (torch.eye(2, dtype=F64) - 0.5 * step * precision))
    # Independent chains: the sample mean has sd √(C_ii/n), a sample covariance entry
    # sd ≤ √((C_ii C_jj + C_ij²)/n); 4 sd margins.
    mean_sd = (ula_cov.diagonal() / n).sqrt()
    assert ((final.mean(0) - mean).abs() <= 4 * mean_sd).all(), (final.mean(0), mean)
    cov_sd = ((ula_cov.diagonal()[:, None] * ula_cov.diagonal()[None, :] + ula_cov**2) / n).sqrt()
    assert ((torch.cov(final.T) - ula_cov).abs() <= 4 * cov_sd).all(), (torch.cov(final.T),
                                                                       ula_cov)


def _energy_heads(schedule):
    a = GaussianMixture(LOC_A, covariances=COV_A, name="a").noised(schedule)
    b = GaussianMixture(LOC_B, covariances=COV_B, name="b").noised(schedule)
    head_a = from_energy_network(lambda x, t: a.energy(x, t), schedule, event_shape=2,
                                 name="head_a")
    head_b = from_energy_network(lambda x, t: schedule.sigma(t).to(x) * b.energy(x, t),
                                 schedule, event_shape=2, parameterization="epsilon",
                                 name="head_b")
    return head_a & head_b


def test_energy_heads_compose_under_mala():
    sigma, n = 0.3, 4000
    sampler = AnnealedLangevin(noise_levels=[sigma], steps_per_level=1, step_size=0.3, mala=True)
    x0 = torch.randn(n, 2, generator=_seed(7), dtype=F64)
    run = eb.sample(_energy_heads(VE()), sampler, x0=x0, warmup=150, n_steps=1,
                    generator=_seed(8), progress=False)
    final = run.draws[-1]
    mean, precision, _ = _gaussian_product(sigma)
    cov = torch.linalg.inv(precision)
    assert float(run.stats["acceptance_rate"].mean()) > 0.5
    # MALA is exact: the product Gaussian itself, 4 sd margins as above.
    assert ((final.mean(0) - mean).abs() <= 4 * (cov.diagonal() / n).sqrt()).all()
    cov_sd = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(final.T) - cov).abs() <= 4 * cov_sd).all()


def test_energy_heads_give_smc_weights_and_log_z():
    levels = torch.logspace(1, -1.5, 25, dtype=F64)
    result = SMC(n_steps=3).run(_energy_heads(VE()), noise_levels=levels, n_particles=2000,
                                generator=_seed(9))
    mean, _, log_z = _gaussian_product(float(levels[-1]))
    # The energies are normalised densities, so Ẑ estimates ∫ N_a N_b = exp(log_z).
    assert abs(result.log_z - log_z) <= 4 * result.stderr + 0.02, (result, log_z)
    for i in range(2):
        estimate, stderr = result.expectation(lambda x, i=i: x[:, i])
        assert abs(estimate - float(mean[i])) <= 4 * stderr + 0.01


def _tiny_unet(prediction_type, scheduler="DDPMScheduler", **scheduler_options):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D")).double().eval()
    scheduler = getattr(diffusers, scheduler)(num_train_timesteps=1000,
                                              prediction_type=prediction_type,
                                              **scheduler_options)
    return unet, scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusers_unet_leaf_converts_the_raw_output(prediction_type):
    unet, scheduler = _tiny_unet(prediction_type)
    leaf = from_diffusers(unet, scheduler, name="unet")
    assert leaf.event_shape == (2, 8, 8) and not leaf.capabilities.has_energy
    x = torch.randn(3, 2, 8, 8, generator=_seed(10), dtype=F64)
    t = torch.tensor([0.05, 0.5, 0.9], dtype=F64)
    # The timestep by hand: σ_n = √(1 − ᾱ_n) interpolated linearly in n.
    sigmas = torch.sqrt(1 - scheduler.alphas_cumprod.double())
    upper = torch.searchsorted(sigmas, t)
    timestep = upper - 1 + (t - sigmas[upper - 1]) / (sigmas[upper] - sigmas[upper - 1])
    with torch.no_grad():
        raw = unet(x, timestep).sample
    alpha, sigma = torch.sqrt(1 - t**2)[:, None, None, None], t[:, None, None, None]
    if prediction_type == "epsilon":
        expected = -raw / sigma
    elif prediction_type == "sample":
        expected = (alpha * raw - x) / sigma**2
    else:
        expected = -(alpha * raw + sigma * x) / sigma
    torch.testing.assert_close(leaf.score(x, t=t), expected, rtol=1e-10, atol=1e-10)


def test_diffusers_nearest_timestep_and_composition():
    unet, scheduler = _tiny_unet("epsilon", "DDIMScheduler", beta_schedule="squaredcos_cap_v2")
    leaf = from_diffusers(unet, scheduler, timesteps="nearest", name="unet")
    x = torch.randn(2, 2, 8, 8, generator=_seed(11), dtype=F64)
    cumprod = scheduler.alphas_cumprod.double()
    n = 400
    t = float(torch.sqrt(1 - cumprod[n])) + 1e-5  # nearer to σ_400 than to σ_401
    with torch.no_grad():
        raw = unet(x, torch.tensor([n, n])).sample
    torch.testing.assert_close(leaf.score(x, t=t), -raw / torch.sqrt(1 - cumprod[n]),
                               rtol=1e-10, atol=1e-10)
    # Composes as a score-only leaf: (unet & unet ** 0.5) has score 1.5 s.
    torch.testing.assert_close((leaf & leaf ** 0.5).score(x, t=t), 1.5 * leaf.score(x, t=t))
    with pytest.raises(ValueError, match="scheduler's range"):
        leaf.score(x, t=1e-4)


def test_diffusers_leaves_sample_images_by_annealed_langevin():
    unet, scheduler = _tiny_unet("epsilon")
    leaf = from_diffusers(unet.float(), scheduler, name="unet")
    sampler = AnnealedLangevin(noise_levels=[0.9, 0.5], steps_per_level=2, step_size=1e-3)
    x0 = torch.randn(2, 2, 8, 8, generator=_seed(12))
    draws = eb.sample(leaf & leaf ** 0.5, sampler, x0=x0, warmup=sampler.n_annealing_steps,
                      n_steps=1, generator=_seed(13), progress=False).draws
    assert draws.shape == (1, 2, 2, 8, 8) and draws.dtype == torch.float32
    assert torch.isfinite(draws).all()
