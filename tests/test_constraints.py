"""Constrained supports: sampling through biject_to + pushforward, against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import (
    Beta,
    Dirichlet,
    Exponential,
    Gamma,
    HalfNormal,
    Independent,
    Normal,
    Poisson,
    Uniform,
    Wishart,
    constraints,
)
from torch.distributions import transforms as tt

import ebmalgebra as eb
from ebmalgebra import CapabilityError
from ebmalgebra.constraints import (
    BlockwiseElementwise,
    LowerCholeskyVector,
    PositiveDefiniteVector,
    is_real,
    same_support,
    unconstrain,
    unconstraining_transform,
)
from ebmalgebra.diagnostics import ess
from ebmalgebra.samplers import HMC

N_CHAINS, WARMUP, N_STEPS = 128, 150, 100


def _run(model: eb.EnergyModel, seed: int = 0, **kwargs) -> eb.Samples:
    return eb.sample(model, HMC(n_leapfrog=8), n_chains=N_CHAINS, n_steps=N_STEPS,
                     warmup=WARMUP, generator=torch.Generator().manual_seed(seed), **kwargs)


def _assert_moments(draws: Tensor, mean: Tensor, var: Tensor) -> None:
    """Means and variances within 5 Monte-Carlo standard errors.

    The standard error of the mean is sd/√ESS (bulk ESS of the draws); that of the
    variance is sd(x²−…)·/√ESS computed on the centred squares, so a 5σ band fails
    a correct sampler with probability < 1e-6 per coordinate.
    """
    flat = draws.reshape(*draws.shape[:2], -1).double()
    mean, var = mean.reshape(-1).double(), var.reshape(-1).double()
    n_eff = ess(flat)
    mean_error = (flat.mean((0, 1)) - mean).abs()
    assert torch.all(mean_error < 5 * var.sqrt() / n_eff.sqrt()), (flat.mean((0, 1)), mean)
    squares = (flat - mean) ** 2
    var_error = (squares.mean((0, 1)) - var).abs()
    assert torch.all(var_error < 5 * squares.std((0, 1)) / ess(squares).sqrt()), (
        squares.mean((0, 1)), var)



def test_gamma_moments_and_draws_stay_in_the_support() -> None:
    shape, rate = torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0])
    gamma = _run(eb.from_distribution(Independent(Gamma(shape, rate), 1)))
    assert gamma.unconstrained is not None and gamma.draws.min() > 0
    # The chains ran on log x, so their draws are the log of the returned ones.
    torch.testing.assert_close(gamma.unconstrained_draws.exp(), gamma.draws)
    assert "sampled in unconstrained coordinates" in str(gamma.summary())
    _assert_moments(gamma.draws, shape / rate, shape / rate**2)


def test_beta_moments_and_draws_stay_in_the_unit_interval() -> None:
    a, b = torch.tensor([2.0, 0.7]), torch.tensor([5.0, 0.7])
    beta = _run(eb.from_distribution(Independent(Beta(a, b), 1)), seed=1)
    assert beta.draws.min() > 0 and beta.draws.max() < 1
    total = a + b
    _assert_moments(beta.draws, a / total, a * b / (total**2 * (total + 1)))


def test_dirichlet_moments_on_the_simplex() -> None:
    alpha = torch.tensor([1.5, 3.0, 0.8])
    samples = _run(eb.from_distribution(Dirichlet(alpha)))
    # Stick-breaking: 2 unconstrained coordinates for 3 components.
    assert samples.unconstrained_draws.shape[-1] == 2 and samples.draws.shape[-1] == 3
    torch.testing.assert_close(samples.draws.sum(-1), torch.ones(N_STEPS, N_CHAINS))
    total = alpha.sum()
    mean = alpha / total
    _assert_moments(samples.draws, mean, mean * (1 - mean) / (total + 1))


def test_wishart_moments_on_positive_definite_matrices() -> None:
    # float64: in float32 exp(v_ii) of early warmup steps underflows to matrices that
    # pass one positive-definiteness check and fail the next.
    df, scale = 5.0, torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    # Started near df·Σ (as wide as the target, for the escape check): torch's Wishart
    # sampler can return singular matrices.
    jitter = torch.rand(N_CHAINS, 1, 1, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    samples = _run(eb.from_distribution(Wishart(df, covariance_matrix=scale)),
                   x0=df * scale * (0.5 + 2 * jitter))
    assert samples.unconstrained_draws.shape[-1] == 3  # n(n+1)/2 free entries
    assert torch.linalg.eigvalsh(samples.draws).min() > 0
    diagonal = scale.diagonal()
    # E W = ν Σ, Var W_ij = ν (Σ_ij² + Σ_ii Σ_jj) (Wishart moments).
    _assert_moments(samples.draws, df * scale,
                    df * (scale**2 + diagonal[:, None] * diagonal[None, :]))


def test_positive_definite_bijection_log_jacobian_matches_autograd() -> None:
    n = 3
    v = torch.randn(n * (n + 1) // 2, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    rows, cols = torch.tril_indices(n, n)
    for bijection in (LowerCholeskyVector(n), PositiveDefiniteVector(n)):
        def lower_entries(u: Tensor, bijection: tt.Transform = bijection) -> Tensor:
            return bijection(u)[rows, cols]

        # The density is on the n(n+1)/2 free entries: |det| of that square Jacobian.
        jacobian = torch.autograd.functional.jacobian(lower_entries, v)
        expected = torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(bijection.log_abs_det_jacobian(v, bijection(v)), expected)
        torch.testing.assert_close(bijection.inv(bijection(v)), v)


def test_positive_scale_from_log_prob_never_goes_negative() -> None:
    # Half-normal on a scale: without the bijection HMC proposes negative values.
    scale = eb.from_log_prob(lambda x: -0.5 * (x**2).sum(-1), 1, support=constraints.positive)
    x0 = 0.2 + 2 * torch.rand(N_CHAINS, 1, generator=torch.Generator().manual_seed(2))
    samples = _run(scale, x0=x0)
    assert samples.draws.min() > 0
    # Half-normal(1): mean √(2/π), variance 1 − 2/π.
    mean = torch.tensor([(2 / torch.pi) ** 0.5])
    _assert_moments(samples.draws, mean, 1 - mean**2)


def test_product_of_leaves_with_one_support() -> None:
    # Gamma(2, 3) & Exponential(1) on (0, ∞)² is Gamma(2, 4) in each coordinate.
    gamma = eb.from_distribution(Independent(Gamma(torch.full((2,), 2.0),
                                                   torch.full((2,), 3.0)), 1))
    exponential = eb.from_distribution(Independent(Exponential(torch.ones(2)), 1))
    normal = eb.from_distribution(Independent(Normal(torch.zeros(2), 10.0), 1))
    # Exponential's support is [0, ∞) and HalfNormal's (0, ∞): the same bijection.
    # Its scale 1000 shifts the moments by ~1e-7, far below the Monte-Carlo error.
    half_normal = eb.from_distribution(Independent(HalfNormal(torch.full((2,), 1000.0)), 1))
    model = gamma & exponential & normal ** 0.0 & half_normal  # ℝ does not change the support
    samples = _run(model)
    assert samples.draws.min() > 0
    _assert_moments(samples.draws, torch.full((2,), 0.5), torch.full((2,), 2 / 16))


def test_mixed_supports_are_a_clear_error() -> None:
    beta = eb.from_distribution(Independent(Beta(torch.ones(2), torch.ones(2)), 1), name="beta")
    gamma = eb.from_distribution(Independent(Gamma(torch.ones(2), torch.ones(2)), 1),
                                 name="gamma")
    with pytest.raises(CapabilityError, match="mixes the supports"):
        eb.sample(beta & gamma, HMC(), n_chains=2, n_steps=1)
    # The union of (0, ∞) and ℝ is ℝ: a mixture with a real component needs nothing.
    normal = eb.from_distribution(Independent(Normal(torch.zeros(2), 1.0), 1))
    assert unconstrain(gamma | normal) is None
    # Sampling the model as it is stays possible.
    raw = eb.sample(beta & gamma, HMC(step_size=0.1), x0=torch.full((2, 2), 0.5), n_steps=3,
                    unconstrain=False)
    assert raw.unconstrained is None and raw.draws.shape == (3, 2, 2)


def test_constrained_x0_is_mapped_and_condition_keeps_elementwise_supports() -> None:
    gamma = eb.from_distribution(Independent(Gamma(torch.full((3,), 2.0),
                                                   torch.ones(3)), 1))
    x0 = torch.full((2, 3), 1.5)
    samples = eb.sample(gamma, HMC(), x0=x0, n_steps=0)
    torch.testing.assert_close(samples.state.position, x0.log())  # chains run on log x
    conditioned = gamma.condition(torch.tensor([True, False, False]), torch.tensor([1.0, 0, 0]))
    assert isinstance(conditioned.support, constraints.independent)
    assert conditioned.pushforward(tt.ExpTransform().inv).support is not None
    dirichlet = eb.from_distribution(Dirichlet(torch.ones(3)))
    with pytest.raises(CapabilityError, match="ties the coordinates"):
        _ = dirichlet.condition(torch.tensor([True, False, False]), torch.zeros(3)).support


def test_distribution_leaf_rejects_a_non_positive_definite_matrix_next_to_a_nan() -> None:
    # torch's positive_definite.check tests only symmetry once one matrix of the
    # batch is not symmetric; a NaN matrix used to let the singular one through to
    # log_prob, which raised.
    wishart = eb.from_distribution(Wishart(5.0, covariance_matrix=torch.eye(2)))
    x = torch.stack([torch.full((2, 2), torch.nan), torch.diag(torch.tensor([0.0, 4.0])),
                     torch.eye(2)])
    energy = wishart.energy(x)
    assert torch.isinf(energy[:2]).all() and torch.isfinite(energy[2])


def test_each_node_derives_its_support() -> None:
    gamma = eb.from_distribution(Independent(Gamma(torch.ones(2), torch.ones(2)), 1))
    normal = eb.from_distribution(Independent(Normal(torch.zeros(2), 1.0), 1))
    positive = gamma.support
    assert isinstance(positive, constraints.independent)
    # Independent builds a new constraint on each access: compare by structure.
    assert same_support((gamma & normal).support, positive)        # ∩: ℝ is neutral
    assert same_support((2.0 * gamma**0.5).support, positive)       # unary nodes keep it
    assert same_support(eb.compile(gamma & normal).support, positive)
    assert is_real((gamma | normal).support)                        # ∪ with ℝ is ℝ
    assert same_support((gamma | gamma**2).support, positive)
    assert not same_support(positive, constraints.independent(constraints.positive, 1))
    log_gamma = gamma.pushforward(tt.ExpTransform().inv)   # the transform's codomain
    assert unconstrain(log_gamma) is None
    unknown = eb.from_log_prob(lambda x: -x.sum(-1), 2, support=constraints.dependent)
    assert unconstrain(unknown) is None                     # nothing to map: sampled as is
    with pytest.raises(CapabilityError, match="no bijection"):
        unconstrain(eb.from_log_prob(lambda x: -x.sum(-1), 2,
                                     support=constraints.nonnegative_integer))
    with pytest.raises(Exception, match="support must be"):
        eb.from_log_prob(lambda x: -x.sum(-1), 2, support="positive")


def test_a_model_on_cholesky_factors() -> None:
    # p̃(L) = ∏_{i≥j} exp(−L_ij²/2) on lower-triangular L with a positive diagonal:
    # the diagonal is half-normal (mean √(2/π), variance 1 − 2/π), the entry below
    # it standard normal, and the entry above it stays 0.
    def log_density(factor: Tensor) -> Tensor:
        return -0.5 * (factor.tril() ** 2).sum((-2, -1))

    model = eb.from_log_prob(log_density, (2, 2), support=constraints.lower_cholesky)
    # Starts as wide as the target (the escape check measures from their spread).
    start = torch.randn(N_CHAINS, 2, 2, generator=torch.Generator().manual_seed(3)).tril()
    x0 = start + torch.diag_embed(start.diagonal(dim1=-2, dim2=-1).abs() + 0.3
                                  - start.diagonal(dim1=-2, dim2=-1))
    samples = _run(model, x0=x0)
    assert samples.unconstrained_draws.shape[-1] == 3
    draws = samples.draws
    assert (draws[..., 0, 1] == 0).all() and (draws.diagonal(dim1=-2, dim2=-1) > 0).all()
    half = (2 / torch.pi) ** 0.5
    lower = torch.stack([draws[..., 0, 0], draws[..., 1, 0], draws[..., 1, 1]], -1)
    _assert_moments(lower, torch.tensor([half, 0.0, half]),
                    torch.tensor([1 - half**2, 1.0, 1 - half**2]))


# ℝ, (0, ∞), ℝ², (−1, 2), (3, ∞) along a 6-vector.
BLOCKS = constraints.cat([constraints.real, constraints.positive, constraints.real,
                          constraints.interval(-1.0, 2.0), constraints.greater_than(3.0)],
                         dim=-1, lengths=[1, 1, 2, 1, 1])


def test_blockwise_bijection_agrees_with_torchs_cat_transform() -> None:
    # torch's CatTransform (biject_to of the cat) is the independent reference: values,
    # inverse and the log-Jacobian summed over the vector.
    bijection = unconstraining_transform(BLOCKS, (6,))
    assert isinstance(bijection, BlockwiseElementwise)
    reference = torch.distributions.biject_to(BLOCKS)
    u = 3 * torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = bijection(u)
    torch.testing.assert_close(x, reference(u))
    assert bool(BLOCKS.check(x).all())
    torch.testing.assert_close(bijection.inv(x), u)
    torch.testing.assert_close(bijection.log_abs_det_jacobian(u, x),
                               reference.log_abs_det_jacobian(u, x).sum(-1))
    # Without the blocks, torch's bijections lose only their identity stages (positive's
    # exp is followed by x ↦ 0 + 1·x): the same values and log-Jacobians.
    for support in (constraints.positive, constraints.greater_than(2.0),
                    constraints.interval(0.0, 3.0), constraints.independent(
                        constraints.positive, 1)):
        lean, full = unconstraining_transform(support, (6,)), torch.distributions.biject_to(
            support)
        torch.testing.assert_close(lean(u), full(u))
        torch.testing.assert_close(lean.log_abs_det_jacobian(u, lean(u)),
                                   full.log_abs_det_jacobian(u, full(u)))
    assert type(unconstraining_transform(constraints.positive, (6,))) is tt.ExpTransform
    # Only the elementwise blocks of vectors take it; a tied block keeps torch's.
    tied = constraints.cat([constraints.simplex, constraints.real], dim=-1, lengths=[3, 1])
    assert not isinstance(unconstraining_transform(tied, (4,)), BlockwiseElementwise)
    # dim=0 cats along the batch when torch checks a batch of vectors: not ours either.
    along_batch = constraints.cat([constraints.real, constraints.positive], dim=0,
                                  lengths=[1, 1])
    assert not isinstance(unconstraining_transform(along_batch, (2,)), BlockwiseElementwise)


def test_blockwise_support_samples_each_block_with_its_moments() -> None:
    # Independent blocks: N(1, 2²) on ℝ, Gamma(2, 3) on (0, ∞), Beta(2, 5) on (0, 1).
    blocks = constraints.cat([constraints.real, constraints.positive,
                              constraints.unit_interval], dim=-1, lengths=[1, 1, 1])
    normal, gamma, beta = Normal(1.0, 2.0), Gamma(2.0, 3.0), Beta(2.0, 5.0)

    def log_density(x: Tensor) -> Tensor:
        return (normal.log_prob(x[:, 0]) + gamma.log_prob(x[:, 1].clamp_min(1e-30))
                + beta.log_prob(x[:, 2].clamp(1e-7, 1 - 1e-7)))

    model = eb.from_log_prob(log_density, 3, support=blocks)
    x0 = torch.tensor([0.0, 0.5, 0.3]).expand(N_CHAINS, 3)
    samples = _run(model, x0=x0)
    assert isinstance(samples.unconstrained.transform, BlockwiseElementwise)
    assert samples.draws[..., 1].min() > 0 and samples.draws[..., 2].min() > 0
    assert samples.draws[..., 2].max() < 1
    _assert_moments(samples.draws, torch.stack([normal.mean, gamma.mean, beta.mean]),
                    torch.stack([normal.variance, gamma.variance, beta.variance]))


def test_unconstrained_autograd_model_takes_one_reverse_pass(monkeypatch) -> None:
    # p̃(x) = exp(−x²/2) on (0, ∞), in u = log x: E(u) = e^{2u}/2 − u, s(u) = 1 − e^{2u}.
    from ebmalgebra import leaves, pushforward

    model = eb.from_log_prob(lambda x: -0.5 * (x**2).sum(-1), 1, support=constraints.positive)
    compiled = eb.compile(unconstrain(model).model)
    passes = []

    def counted(*args, **kwargs):
        passes.append(1)
        return vector_jacobian(*args, **kwargs)

    vector_jacobian = leaves.vector_jacobian
    monkeypatch.setattr(leaves, "vector_jacobian", counted)
    monkeypatch.setattr(pushforward, "vector_jacobian", counted)
    u = torch.linspace(-2.0, 1.5, 8, dtype=torch.float64)[:, None]
    energy, score = compiled.energy_and_score(u)
    # One pass through the energy and the transform together, not the leaf's own pass
    # and a second pulling its score back.
    assert len(passes) == 1
    torch.testing.assert_close(energy, (0.5 * (2 * u).exp() - u)[:, 0])
    torch.testing.assert_close(score, 1 - (2 * u).exp())


def test_condition_keeps_the_bounds_and_blocks_of_the_free_coordinates() -> None:
    # Regression: the conditioned support kept the bounds of every coordinate, so the
    # unconstraining map returned 3 coordinates for a model of 1 (and ignored the clamp).
    uniform = eb.from_distribution(Independent(Uniform(torch.tensor([0.0, 10.0, 100.0]),
                                                       torch.tensor([1.0, 20.0, 200.0])), 1))
    clamp = torch.tensor([True, False, True])
    conditioned = uniform.condition(clamp, torch.tensor([0.5, 0.0, 150.0]))
    support = conditioned.support.base_constraint
    assert support.lower_bound.tolist() == [10.0] and support.upper_bound.tolist() == [20.0]
    samples = eb.sample(conditioned, HMC(), n_chains=4, n_steps=20, warmup=20,
                        generator=torch.Generator().manual_seed(0))
    assert samples.draws.shape == (20, 4, 1)
    assert samples.draws.min() > 10 and samples.draws.max() < 20
    # A cat keeps the blocks of its free coordinates: (0, ∞) and (−1, 2) of BLOCKS.
    blocks = eb.from_log_prob(lambda x: -x.sum(-1), 6, support=BLOCKS)
    free = blocks.condition(torch.tensor([True, False, True, True, False, True]),
                            torch.full((6,), 4.0)).support
    u = torch.tensor([[-30.0, 30.0], [0.0, 0.0]])
    x = unconstraining_transform(free, (2,))(u)
    assert x.shape == (2, 2) and bool(free.check(x).all())
    torch.testing.assert_close(x[1], torch.tensor([1.0, 0.5]))  # exp(0), −1 + 3·σ(0)


def test_elementwise_and_independent_forms_of_one_support_compose() -> None:
    # Regression: ``positive`` and ``independent(positive, 1)`` on (0, ∞)² were refused as
    # different supports. Exp(1) & Gamma(3, 1) per coordinate is Gamma(3, 2).
    exponential = eb.from_log_prob(lambda x: -x.sum(-1), 2, support=constraints.positive)
    gamma = eb.from_distribution(Independent(Gamma(torch.full((2,), 3.0), torch.ones(2)), 1))
    x0 = 0.5 + torch.rand(N_CHAINS, 2, generator=torch.Generator().manual_seed(1))
    samples = _run(exponential & gamma, x0=x0)
    assert samples.unconstrained is not None and samples.draws.min() > 0
    _assert_moments(samples.draws, torch.full((2,), 1.5), torch.full((2,), 0.75))


def test_per_coordinate_bounds_equal_to_scalar_ones_are_one_support() -> None:
    # Regression: a Uniform(0, 1)² prior's interval with tensor bounds and a likelihood's
    # unit_interval were refused as different supports. p³(1 − p) × 1 is Beta(4, 2):
    # mean 2/3, variance ab/((a+b)²(a+b+1)) = 8/252.
    prior = eb.from_distribution(Independent(Uniform(torch.zeros(2), torch.ones(2)), 1))
    likelihood = eb.from_log_prob(lambda p: (3 * p.log() + (1 - p).log()).sum(-1), 2,
                                  support=constraints.unit_interval)
    assert same_support(prior.support.base_constraint, constraints.unit_interval)
    assert not same_support(constraints.interval(torch.tensor([0.0, 0.5]), torch.ones(2)),
                            constraints.interval(0.0, 1.0))
    assert not same_support(constraints.interval(torch.zeros(2), torch.ones(2)),
                            constraints.interval(torch.zeros(3), torch.ones(3)))
    x0 = 0.2 + 0.6 * torch.rand(N_CHAINS, 2, generator=torch.Generator().manual_seed(4))
    samples = _run(prior & likelihood, x0=x0)
    assert samples.draws.min() > 0 and samples.draws.max() < 1
    _assert_moments(samples.draws, torch.full((2,), 2 / 3), torch.full((2,), 8 / 252))


def test_discrete_supports_are_refused_as_discrete() -> None:
    # Regression: the error suggested unconstrain=False, whose chains never leave their
    # starting integers.
    poisson = eb.from_distribution(Poisson(torch.tensor(3.0)))
    with pytest.raises(CapabilityError, match="is discrete"):
        eb.sample(poisson, HMC(), n_chains=2, n_steps=1)
    # Nor sampled as it is: every proposal off the integers would be rejected.
    with pytest.raises(CapabilityError, match="is discrete"):
        eb.sample(poisson, HMC(), n_chains=2, n_steps=1, unconstrain=False)


def test_independent_wisharts_are_sampled_on_positive_definite_matrices() -> None:
    # Regression: independent(positive_definite, 1) had no bijection. Two Wisharts with
    # ν = 5, 7 and Σ = I: E W = ν I, Var W_ij = ν (δ_ij + 1).
    df = torch.tensor([5.0, 7.0], dtype=torch.float64)
    model = eb.from_distribution(Independent(Wishart(df, torch.eye(2, dtype=torch.float64)
                                                     .expand(2, 2, 2)), 1))
    jitter = torch.rand(N_CHAINS, 1, 1, 1, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    eye = torch.eye(2, dtype=torch.float64)
    samples = _run(model, x0=df[:, None, None] * eye * (0.5 + 2 * jitter))
    assert samples.unconstrained_draws.shape[-2:] == (2, 3)
    assert torch.linalg.eigvalsh(samples.draws).min() > 0
    _assert_moments(samples.draws, df[:, None, None] * eye,
                    df[:, None, None] * (eye + 1))


def test_unconstrained_coordinates_follow_the_models_dtype() -> None:
    # Regression: the bijection was kept from the first sample(), so after .float() a
    # Uniform's float64 bounds ran the float32 model's chains in float64.
    bounds = torch.tensor([0.0, 10.0], dtype=torch.float64), torch.tensor([1.0, 20.0],
                                                                          dtype=torch.float64)
    model = eb.from_distribution(Independent(Uniform(*bounds), 1))
    assert eb.sample(model, HMC(), n_chains=2, n_steps=2).draws.dtype == torch.float64
    model.float()
    samples = eb.sample(model, HMC(), x0=torch.tensor([[0.5, 15.0]]), n_steps=2)
    assert samples.draws.dtype == samples.unconstrained_draws.dtype == torch.float32
    assert unconstrain(model) is unconstrain(model)  # still built once per dtype
