"""a.condition(mask, values): the conditional of the free coordinates, against closed-form
Gaussian conditionals and posterior mixture weights; composition, canonical and file forms."""

import math

import pytest
import torch
from sampler_helpers import eager_and_compiled_draws

import ebmalgebra as eb
from ebmalgebra import CompositionError
from ebmalgebra.condition import Conditioned
from ebmalgebra.diagnostics import ess, mcse_mean
from ebmalgebra.samplers import MALA
from ebmalgebra.targets import Gaussian, GaussianMixture, MultivariateGaussian
from ebmalgebra.testing import assert_equivalent

F64 = torch.float64
Z_MAX = 4.0
FIRST = torch.tensor([True, False])

MEAN = torch.tensor([1.0, -0.5], dtype=F64)
COVARIANCE = torch.tensor([[2.0, 1.2], [1.2, 1.5]], dtype=F64)
C = 2.0


def conditional_of_x2():
    """x₂ | x₁ = c for N(μ, Σ): mean μ₂ + Σ₂₁/Σ₁₁ (c − μ₁), variance Σ₂₂ − Σ₂₁²/Σ₁₁."""
    mean = MEAN[1] + COVARIANCE[1, 0] / COVARIANCE[0, 0] * (C - MEAN[0])
    variance = COVARIANCE[1, 1] - COVARIANCE[1, 0] ** 2 / COVARIANCE[0, 0]
    return float(mean), float(variance)


def test_conditioned_gaussian_samples_have_the_closed_form_conditional_moments():
    posterior = MultivariateGaussian(MEAN, COVARIANCE, name="g").condition(FIRST, [C, 0.0])
    assert posterior.event_shape == torch.Size([1])
    generator = torch.Generator().manual_seed(2)
    run = eb.sample(posterior, MALA(step_size=0.8), n_chains=128, n_steps=400, warmup=200,
                    generator=generator, progress=False)
    mean, variance = conditional_of_x2()
    draws = run.draws
    for values, truth in ((draws, mean), ((draws - mean) ** 2, variance)):
        # z ≤ 4 with the ESS-based Monte-Carlo standard error of the mean.
        assert (ess(values, kind="mean") >= 100).all()
        z = (values.mean((0, 1)) - truth) / mcse_mean(values)
        assert z.abs().max() <= Z_MAX, z


def test_conditioned_gaussian_energy_is_the_joint_energy_and_rewrites_to_the_conditional():
    joint = MultivariateGaussian(MEAN, COVARIANCE, name="g")
    posterior = joint.condition(FIRST, torch.tensor([C, 123.0]))  # the free value is ignored
    x2 = torch.linspace(-3, 3, 11, dtype=F64)[:, None]
    full = torch.cat([torch.full_like(x2, C), x2], 1)
    torch.testing.assert_close(posterior.energy(x2), joint.energy(full))
    torch.testing.assert_close(posterior.score(x2), joint.score(full)[:, 1:])
    exact = eb.compile(posterior, closed_form=True)
    mean, variance = conditional_of_x2()
    reference = torch.distributions.Normal(torch.tensor(mean, dtype=F64), math.sqrt(variance))
    # Its normaliser is the marginal density of x₁ at c.
    marginal = torch.distributions.Normal(MEAN[0], COVARIANCE[0, 0].sqrt()).log_prob(
        torch.tensor(C, dtype=F64))
    torch.testing.assert_close(exact.log_z(), marginal)
    # log p̃(c, x₂) − log p(c) is the conditional log-density.
    torch.testing.assert_close(exact.log_prob(x2), reference.log_prob(x2[:, 0]))


def two_component_mixture():
    """Components with x₂ far apart, so that mass at x₂ < 0 is component 0's."""
    locs = torch.tensor([[0.0, -6.0], [2.0, 6.0]], dtype=F64)
    covariances = torch.tensor([[[1.0, 0.3], [0.3, 1.0]], [[0.5, -0.2], [-0.2, 1.0]]],
                               dtype=F64)
    weights = torch.tensor([0.7, 0.3], dtype=F64)
    return GaussianMixture(locs, covariances=covariances, weights=weights, name="gmm"), \
        locs, covariances, weights


def posterior_weights(locs, covariances, weights, c):
    """π_k N(c; μ_k1, Σ_k11) / Σ_j π_j N(c; μ_j1, Σ_j11)."""
    likelihoods = torch.distributions.Normal(locs[:, 0], covariances[:, 0, 0].sqrt()).log_prob(
        torch.tensor(c, dtype=F64))
    return torch.softmax(weights.log() + likelihoods, 0)


def test_conditioned_mixture_has_the_posterior_component_weights():
    gmm, locs, covariances, weights = two_component_mixture()
    expected = posterior_weights(locs, covariances, weights, 1.5)
    posterior = gmm.condition(FIRST, [1.5, 0.0])
    # By quadrature of the conditioned energy itself: mass on each side of x₂ = 0.
    grid = torch.linspace(-20.0, 20.0, 40_001, dtype=F64)
    density = torch.exp(-posterior.energy(grid[:, None]))
    below = torch.trapezoid(density * (grid < 0), grid)
    total = torch.trapezoid(density, grid)
    torch.testing.assert_close(torch.stack([below, total - below]) / total, expected,
                               rtol=1e-6, atol=1e-8)
    # And exactly, by the closed-form rewrite: a two-component mixture with those weights.
    exact = eb.compile(posterior, closed_form=True)
    leaf = exact.expr.base if isinstance(exact.expr, eb.Weight) else exact.expr
    torch.testing.assert_close(leaf.weights, expected)
    # The same for the mixture written with `|` of normalised components.
    written = (0.7 * MultivariateGaussian(locs[0], covariances[0], name="p")
               | 0.3 * MultivariateGaussian(locs[1], covariances[1], name="q"))
    rewritten = eb.compile(written.condition(FIRST, [1.5, 0.0]), closed_form=True).expr
    leaf = rewritten.base if isinstance(rewritten, eb.Weight) else rewritten
    torch.testing.assert_close(leaf.weights, expected)


def test_condition_composes_with_product_and_compiles():
    prior = MultivariateGaussian(MEAN, COVARIANCE, name="prior")
    likelihood = Gaussian(torch.tensor([0.5], dtype=F64), 0.7, name="lik")
    expr = prior.condition(FIRST, [C, 0.0]) & likelihood ** 2
    x2 = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    full = torch.cat([torch.full_like(x2, C), x2], 1)
    torch.testing.assert_close(expr.energy(x2),
                               prior.energy(full) + 2 * likelihood.energy(x2))
    assert_equivalent(eb.compile(expr), expr, x2)
    net = eb.from_energy(lambda x: (x ** 4).sum(-1), 2, name="quartic")
    autograd = net.condition(torch.tensor([False, True]), [0.0, 1.0])
    torch.testing.assert_close(eb.compile(autograd & likelihood).score(x2),
                               -4 * x2 ** 3 + likelihood.score(x2))


def test_canonical_form_of_conditions():
    g = MultivariateGaussian(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64), name="g")
    assert g.condition(torch.zeros(3, dtype=torch.bool), 0.0) is g
    twice = g.condition(torch.tensor([True, False, False]), [1.0, 0.0, 0.0]).condition(
        torch.tensor([False, True]), [0.0, 2.0])
    once = Conditioned(g, torch.tensor([True, False, True]), [1.0, 0.0, 2.0])
    assert twice.structure() == once.structure()
    assert type(once)(*once.args).structure() == once.structure()
    x = torch.randn(4, 1, dtype=F64)
    full = torch.cat([torch.ones(4, 1, dtype=F64), x, torch.full((4, 1), 2.0, dtype=F64)], 1)
    torch.testing.assert_close(twice.energy(x), g.energy(full))


def test_bad_masks_are_refused():
    g = MultivariateGaussian(MEAN, COVARIANCE, name="g")
    with pytest.raises(CompositionError, match="mask must be a bool tensor"):
        g.condition(torch.tensor([1, 0]), [1.0, 0.0])
    with pytest.raises(CompositionError, match="do not broadcast"):
        g.condition(FIRST, torch.zeros(3))


def test_masks_and_values_that_are_not_numbers_are_refused_naming_them():
    # Regression: a mask of None raised torch's "Could not infer dtype of NoneType" (and
    # a file with a null mask escaped load's SerializationError).
    g = MultivariateGaussian(MEAN, COVARIANCE, name="g")
    with pytest.raises(CompositionError, match="condition of g: mask must be a tensor"):
        g.condition(None, [1.0, 0.0])
    with pytest.raises(CompositionError, match="condition of g: values must be a tensor"):
        g.condition(FIRST, "observed")


def test_conditions_save_and_load(tmp_path):
    expr = MultivariateGaussian(MEAN, COVARIANCE, name="g").condition(FIRST, [C, 0.0]) ** 0.5
    eb.save(expr, tmp_path / "cond.safetensors")
    loaded = eb.load(tmp_path / "cond.safetensors")
    assert repr(loaded) == repr(expr) == "g.condition(0=2) ** 0.5"
    assert_equivalent(loaded, expr, torch.randn(6, 1, dtype=F64))


@pytest.mark.parametrize("analytic", [True, False])
def test_conditioned_models_have_the_conditional_score_and_compile_to_the_same_chain(analytic):
    # A torch distribution's score comes by autograd, so its condition is an autograd leaf
    # of the program (one reverse pass, which torch.compile traces); the target's is
    # analytic. Both have the closed-form conditional's score s(x₂) = −(x₂ − m)/v, and
    # jit=True draws the eager chain (inductor once miscompiled the embedding's scatter).
    joint = (MultivariateGaussian(MEAN, COVARIANCE) if analytic else
             eb.from_distribution(torch.distributions.MultivariateNormal(MEAN, COVARIANCE)))
    posterior = joint.condition(FIRST, [C, 0.0])
    assert posterior.analytic_score == analytic
    mean, variance = conditional_of_x2()
    x = torch.linspace(-3.0, 3.0, 7, dtype=F64)[:, None]
    torch.testing.assert_close(eb.compile(posterior).score(x), -(x - mean) / variance)
    eager, compiled = eager_and_compiled_draws(posterior, 0.5, seed=1,
                                               x0=torch.zeros(8, 1, dtype=F64), n_steps=10)
    assert eager.std(0).min() > 0.1  # the chains move
    torch.testing.assert_close(compiled, eager, rtol=1e-7, atol=1e-9)


def test_conditioned_autograd_leaves_have_the_conditional_score_under_inference_mode():
    # Inference mode used to make autograd scores zero. For E = ½ (x − μ)ᵀ P (x − μ) with
    # x₁ clamped to c, the conditional score is s(x₂) = −(P₂₂ (x₂ − μ₂) + P₂₁ (c − μ₁)).
    precision = torch.linalg.inv(COVARIANCE)
    quadratic = eb.from_energy(
        lambda x: 0.5 * (((x - MEAN) @ precision) * (x - MEAN)).sum(-1), 2, name="quadratic")
    conditioned = quadratic.condition(FIRST, C)
    x2 = torch.linspace(-3.0, 3.0, 7, dtype=F64)[:, None]
    expected = -(precision[1, 1] * (x2 - MEAN[1]) + precision[1, 0] * (C - MEAN[0]))
    gaussian = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="g")
    for model, score in ((conditioned, expected), (eb.compile(conditioned), expected),
                         (eb.compile(conditioned & gaussian), expected - x2)):
        with torch.inference_mode():
            torch.testing.assert_close(model.score(x2.clone()), score)


def test_numbers_are_clamped_in_the_dtype_of_the_model():
    # Regression: numbers were stored in the default float32, so a float64 model's
    # conditional energy was off by the rounding of 0.1 (~1e-9).
    gaussian = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="g")
    x2 = torch.tensor([[0.3], [-1.2]], dtype=F64)
    joint = gaussian.energy(torch.cat([torch.full_like(x2, 0.1), x2], 1))
    for values in (0.1, [0.1, 7.0], torch.tensor([0.1, 7.0], dtype=F64)):
        conditioned = gaussian.condition(FIRST, values)
        assert conditioned.values.dtype == F64 and conditioned.values[0].item() == 0.1
        torch.testing.assert_close(conditioned.energy(x2), joint, rtol=0, atol=0)
    assert gaussian.condition(FIRST, torch.tensor([1, 0])).values.dtype == F64
    float32 = Gaussian(torch.zeros(2), 1.0, name="g32").condition(FIRST, 0.1)
    assert float32.values.dtype == torch.float32
