"""Score-matching losses: closed forms, Gaussian recovery, noise-conditioned DSM."""

from functools import partial

import pytest
import torch

from ebmalgebra import CapabilityError, CompositionError, from_energy, from_score
from ebmalgebra.learning import (
    GaussianEnergy,
    MLPEnergy,
    as_model,
    exact_score_matching,
    fit,
    multi_noise_dsm,
    score_matching,
    sliced_score_matching,
)

TRUE_MEAN = torch.tensor([1.0, -2.0, 0.5])
TRUE_SCALE_TRIL = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.5]])
TRUE_COVARIANCE = TRUE_SCALE_TRIL @ TRUE_SCALE_TRIL.T
N_DATA = 4000


def gaussian_data(n: int = N_DATA, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return TRUE_MEAN + torch.randn(n, 3, generator=g) @ TRUE_SCALE_TRIL.T


def exact_moments_data(mean: torch.Tensor, covariance: torch.Tensor, n: int = 64) -> torch.Tensor:
    """n points with sample mean exactly ``mean`` and (1/n) sample covariance ``covariance``."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    whitener = torch.linalg.cholesky(z.T @ z / n)
    z = torch.linalg.solve_triangular(whitener, z.T, upper=False).T
    return mean + z @ torch.linalg.cholesky(covariance).T


def closed_form_fisher(mean, covariance, data_mean, data_covariance) -> torch.Tensor:
    """½ E_d ‖s_model − s_data‖² for Gaussians, s(x) = −P(x − μ).

    s_model − s_data = A x + b with A = P_d − P, b = P μ − P_d μ_d, so the
    expectation is ½ [tr(A Σ_d Aᵀ) + ‖A μ_d + b‖²].
    """
    precision, data_precision = torch.linalg.inv(covariance), torch.linalg.inv(data_covariance)
    a = data_precision - precision
    b = precision @ mean - data_precision @ data_mean
    return 0.5 * (torch.trace(a @ data_covariance @ a.T) + (a @ data_mean + b).square().sum())


def gaussian_model(mean=None, scale_tril=None, dtype=torch.float32):
    net = GaussianEnergy(3, loc=mean, scale_tril=scale_tril).to(dtype)
    return net, as_model(net, name="gaussian")


# ----------------------------------------------------------------- exact objective


def test_exact_sm_equals_fisher_divergence_minus_data_constant():
    # On data with exactly the moments (μ_d, Σ_d), the batch average of
    # ½‖s‖² + tr ∇s for a Gaussian model equals its expectation under
    # N(μ_d, Σ_d) (it is quadratic in x), so J = F − ½ E‖s_d‖² must hold to
    # float64 round-off; ½ E‖s_d‖² = ½ tr(Σ_d⁻¹). A missing ½ on either term
    # or a ½ on the trace breaks the equality for every model below.
    data_mean, data_covariance = TRUE_MEAN.double(), TRUE_COVARIANCE.double()
    x = exact_moments_data(data_mean, data_covariance)
    constant = 0.5 * torch.trace(torch.linalg.inv(data_covariance))
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        mean = torch.randn(3, generator=g, dtype=torch.float64)
        scale_tril = torch.randn(3, 3, generator=g, dtype=torch.float64).tril(-1) * 0.5
        scale_tril = scale_tril + torch.diag(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
        net, model = gaussian_model(mean, scale_tril, torch.float64)
        objective = exact_score_matching(model, x)
        fisher = closed_form_fisher(mean, net.covariance().detach(), data_mean, data_covariance)
        torch.testing.assert_close(objective.detach(), fisher - constant, rtol=1e-10, atol=1e-10)


def test_exact_sm_trace_matches_hessian_trace_of_a_network():
    torch.manual_seed(0)
    net = MLPEnergy(3, hidden=(16, 16)).double()
    model = as_model(net, name="mlp")
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = []
    for point in x:
        hessian = torch.autograd.functional.hessian(lambda p: net(p[None])[0], point)
        gradient = torch.autograd.functional.jacobian(lambda p: net(p[None])[0], point)
        # s = −∇E, so ½‖s‖² + tr ∇s = ½‖∇E‖² − tr ∇²E.
        expected.append(0.5 * gradient.square().sum() - torch.trace(hessian))
    torch.testing.assert_close(exact_score_matching(model, x).detach(),
                               torch.stack(expected).mean())


def test_sliced_sm_is_unbiased_for_exact_sm():
    torch.manual_seed(0)
    model = as_model(MLPEnergy(3, hidden=(16,)).double(), name="mlp")
    x = torch.randn(8, 3, dtype=torch.float64)
    exact = exact_score_matching(model, x).detach()
    g = torch.Generator().manual_seed(0)
    for projection in ("rademacher", "gaussian"):
        for variance_reduction in (True, False):
            # 20,000 projections per point: the standard error of the mean is
            # below 1% of the loss scale here, so 5% is a > 5σ tolerance.
            sliced = sliced_score_matching(model, x, n_projections=20_000, projection=projection,
                                           variance_reduction=variance_reduction, generator=g)
            torch.testing.assert_close(sliced.detach(), exact, rtol=0.05, atol=0.05)


# ------------------------------------------------------------- Gaussian recovery


def test_exact_sm_minimiser_is_sample_mean_and_covariance():
    # J(μ, P) = ½ tr(P S P) + ½ ‖P(x̄ − μ)‖² − tr P on a batch is minimised at
    # μ = x̄, P = S⁻¹ with S the 1/n sample covariance: full-batch L-BFGS on
    # this deterministic objective must land there to optimiser precision.
    x = gaussian_data(500).double()
    net, model = gaussian_model(dtype=torch.float64)
    optimizer = torch.optim.LBFGS(net.parameters(), max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = exact_score_matching(model, x)
        loss.backward()
        return loss

    optimizer.step(closure)
    torch.testing.assert_close(net.loc.detach(), x.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(net.covariance().detach(), torch.cov(x.T, correction=0),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "sliced", "denoising"])
def test_score_matching_recovers_gaussian(method):
    # Monte-Carlo tolerance: with n = 4000 the sample mean has standard error
    # ≤ 1/√4000 ≈ 0.016 per coordinate and the covariance entries ≤ √(2/4000)
    # · 1 ≈ 0.022; 0.1 is > 4 standard errors, leaving room for optimiser noise.
    # Denoising SM learns the covariance of the smoothed data, Σ_d + σ² I.
    x = gaussian_data()
    sigma = 0.3
    net, model = gaussian_model()
    epochs = 100
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * 8)
    loss = partial(score_matching, method=method, sigma=sigma)
    fit(model, x, loss, epochs=epochs, batch_size=500, optimizer=optimizer, scheduler=scheduler,
        generator=torch.Generator().manual_seed(0), progress=False)
    covariance = net.covariance().detach()
    if method == "denoising":
        covariance = covariance - sigma**2 * torch.eye(3)
    torch.testing.assert_close(net.loc.detach(), TRUE_MEAN, rtol=0, atol=0.1)
    torch.testing.assert_close(covariance, TRUE_COVARIANCE, rtol=0, atol=0.1)


# ------------------------------------------------------------------ multi-noise


def test_multi_noise_dsm_on_analytic_noise_conditioned_model_is_minimal_at_truth():
    # Data N(0, I) smoothed by σ is N(0, (1 + σ²) I); the model with variance
    # (c + σ²) has the lowest expected loss at c = 1.
    x = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))

    def loss_at(c: float) -> float:
        model = from_energy(lambda y, s: 0.5 * y.square().sum(-1) / (c + s**2), 2,
                            name="smoothed", noise_conditioned=True)
        g = torch.Generator().manual_seed(1)
        return float(multi_noise_dsm(model, x, sigma_min=0.05, sigma_max=2.0, generator=g).detach())

    assert loss_at(1.0) < loss_at(0.7)
    assert loss_at(1.0) < loss_at(1.4)


def test_multi_noise_dsm_discrete_levels_and_score_only_models():
    # A score-only model trains by score matching: it needs no energy.
    model = from_score(lambda y, s: -y / (1 + s**2)[:, None], 2, name="denoiser",
                       noise_conditioned=True)
    x = torch.randn(64, 2)
    loss = multi_noise_dsm(model, x, sigmas=[0.1, 0.5, 1.0])
    assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="sigmas"):
        multi_noise_dsm(model, x, sigmas=[0.1, -1.0])
    with pytest.raises(ValueError, match="sigma_min"):
        multi_noise_dsm(model, x, sigma_min=2.0, sigma_max=1.0)


def test_score_matching_rejects_unknown_method():
    net, model = gaussian_model()
    with pytest.raises(ValueError, match="method must be one of"):
        score_matching(model, torch.zeros(4, 3), method="implicit")


def test_score_matching_validates_model_and_data():
    net, model = gaussian_model()
    with pytest.raises(TypeError, match="as_model"):
        score_matching(net, torch.zeros(4, 3))
    with pytest.raises(CompositionError, match=r"\(n, 3\)"):
        score_matching(model, torch.zeros(4, 2), method="exact")
    with pytest.raises(ValueError, match="non-finite"):
        multi_noise_dsm(model, torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="projection"):
        sliced_score_matching(model, torch.zeros(4, 3), projection="sphere")


def test_multi_noise_dsm_rejects_a_model_that_ignores_sigma():
    # An unconditioned net would train silently with every σ ignored.
    model = as_model(MLPEnergy(2, hidden=(8,)), name="plain")
    with pytest.raises(CapabilityError, match="multi_noise_dsm: 'plain' is not noise-conditioned"):
        multi_noise_dsm(model, torch.randn(8, 2))
    conditioned = as_model(MLPEnergy(2, hidden=(8,), noise_conditioned=True), name="noisy")
    assert torch.isfinite(multi_noise_dsm(conditioned & model, torch.randn(8, 2)))


@pytest.mark.parametrize("n_projections", [True, 0, 1.5])
def test_sliced_score_matching_needs_a_positive_int_of_projections(n_projections):
    _, model = gaussian_model()
    with pytest.raises(ValueError, match="n_projections must be a positive int"):
        sliced_score_matching(model, torch.zeros(4, 3), n_projections=n_projections)

