"""a.pushforward(T): change of variables, inherited log Z and exact sampling, laws,
sampling a constrained model in unconstrained space, canonical form and file form."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Gamma, Independent, LogNormal, Normal
from torch.distributions import transforms as tt

import ebmalgebra as eb
from ebmalgebra import CompositionError
from ebmalgebra.diagnostics import ess, mcse_mean
from ebmalgebra.pushforward import Pushforward
from ebmalgebra.samplers import HMC
from ebmalgebra.testing import assert_equivalent

F64 = torch.float64
Z_MAX = 4.0


def normal(loc=0.0, scale=1.0, name="n"):
    return eb.from_distribution(Independent(Normal(torch.tensor([loc], dtype=F64),
                                                   torch.tensor([scale], dtype=F64)), 1),
                                name=name)


def test_lognormal_as_pushforward_of_a_normal_has_the_exact_density_and_log_z():
    lognormal = normal(0.3, 0.7).pushforward(tt.ExpTransform())
    reference = Independent(LogNormal(torch.tensor([0.3], dtype=F64),
                                      torch.tensor([0.7], dtype=F64)), 1)
    y = torch.linspace(0.05, 6.0, 40, dtype=F64)[:, None]
    torch.testing.assert_close(lognormal.log_prob(y), reference.log_prob(y))
    assert float(lognormal.log_z()) == 0.0 and lognormal.normalizer_known
    inputs = y.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.log_prob(inputs).sum(), inputs)
    for model in (lognormal, eb.compile(lognormal)):
        torch.testing.assert_close(model.score(y), expected)


def test_exact_sampling_goes_through_the_transform():
    lognormal = normal(0.3, 0.7).pushforward(tt.ExpTransform())
    draws = lognormal.sample(20_000, torch.Generator().manual_seed(0))
    mean = math.exp(0.3 + 0.7**2 / 2)
    sd = math.sqrt((math.exp(0.7**2) - 1) * math.exp(2 * 0.3 + 0.7**2))
    # z ≤ 4 with the standard error of an iid mean, sd/√n.
    assert abs(float(draws.mean()) - mean) <= Z_MAX * sd / math.sqrt(draws.shape[0])


def test_gamma_sampled_by_hmc_in_log_space_has_gamma_moments():
    # Without validation, a trajectory that overflows exp gives a NaN energy, which HMC
    # rejects and counts, instead of torch's support error.
    gamma = eb.from_distribution(Independent(Gamma(torch.tensor([2.0], dtype=F64),
                                                   torch.tensor([3.0], dtype=F64),
                                                   validate_args=False), 1), name="gamma")
    log_gamma = gamma.pushforward(tt.ExpTransform().inv)
    assert log_gamma.event_shape == torch.Size([1])
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(128, 1, generator=generator, dtype=F64)
    run = eb.sample(log_gamma, HMC(step_size=0.3), x0=x0, n_steps=300, warmup=200,
                    generator=generator, progress=False)
    x = run.draws.exp()  # back on (0, ∞): Gamma(2, 3) draws
    mean, variance = torch.tensor([2.0 / 3.0], dtype=F64), torch.tensor([2.0 / 9.0], dtype=F64)
    for values, truth in ((x, mean), ((x - mean) ** 2, variance)):
        # z ≤ 4 with the ESS-based Monte-Carlo standard error of the mean.
        assert (ess(values, kind="mean") >= 100).all()
        z = (values.mean((0, 1)) - truth) / mcse_mean(values)
        assert z.abs().max() <= Z_MAX, z


@settings(max_examples=50, deadline=None)
@given(st.floats(-2, 2), st.floats(0.3, 3), st.floats(-1, 1), st.floats(0.5, 2))
def test_composition_of_transforms_is_one_pushforward_and_the_closed_form(loc, scale,
                                                                         shift, stretch):
    first, second = tt.AffineTransform(loc, scale), tt.ExpTransform()
    stepwise = normal().pushforward(first).pushforward(second)
    at_once = normal().pushforward(tt.ComposeTransform([first, second]))
    y = torch.linspace(0.1, 5.0, 12, dtype=F64)[:, None]
    assert_equivalent(stepwise, at_once, y)
    reference = Independent(LogNormal(torch.tensor([loc], dtype=F64),
                                      torch.tensor([scale], dtype=F64)), 1)
    torch.testing.assert_close(-stepwise.energy(y), reference.log_prob(y))
    # A transform followed by its inverse changes nothing (energy and score).
    there_and_back = normal().pushforward(tt.AffineTransform(shift, stretch)).pushforward(
        tt.AffineTransform(shift, stretch).inv)
    x = torch.linspace(-3.0, 3.0, 9, dtype=F64)[:, None]
    assert_equivalent(there_and_back, normal(), x, rtol=1e-9, atol=1e-9)


def test_identity_transform_and_canonical_form_on_every_path():
    base = normal()
    assert base.pushforward(tt.identity_transform) is base
    assert Pushforward(base, tt.ComposeTransform([])) is base
    exp = tt.ExpTransform()
    affine = tt.AffineTransform(1.0, 2.0)
    by_method = base.pushforward(affine).pushforward(exp)
    by_class = Pushforward(Pushforward(base, affine), exp)
    by_function = eb.transform(base, tt.ComposeTransform([affine, exp]))
    assert by_method.structure() == by_class.structure() == by_function.structure()
    assert type(by_class)(*by_class.args).structure() == by_class.structure()


def test_pushforward_composes_with_the_algebra_and_compiles():
    log_normal = normal(name="a").pushforward(tt.ExpTransform())
    other = eb.from_energy(lambda y: (y - 1.0).pow(2).sum(-1), 1, name="q")
    expr = 0.5 * log_normal ** 2 & other
    y = torch.linspace(0.2, 3.0, 7, dtype=F64)[:, None]
    assert_equivalent(eb.compile(expr), expr, y)
    assert "a.pushforward(ExpTransform())" in expr.explain()


def test_bad_transforms_are_refused_with_the_reason():
    with pytest.raises(CompositionError, match="must be a torch.distributions"):
        normal().pushforward(lambda x: x)
    with pytest.raises(CompositionError, match="not bijective"):
        normal().pushforward(tt.AbsTransform())


def test_pushforwards_save_and_load(tmp_path):
    transform = tt.ComposeTransform([tt.AffineTransform(torch.tensor([0.5], dtype=F64),
                                                        torch.tensor([2.0], dtype=F64)),
                                     tt.ExpTransform().inv.inv])
    a = eb.targets.Gaussian(torch.tensor([0.2], dtype=F64), 1.0, name="a")
    b = eb.targets.Gaussian(torch.tensor([-0.5], dtype=F64), 2.0, name="b")
    expr = a.pushforward(transform) | 2 * b.pushforward(tt.SigmoidTransform())
    eb.save(expr, tmp_path / "push.safetensors")
    loaded = eb.load(tmp_path / "push.safetensors")
    y = torch.linspace(0.1, 0.9, 9, dtype=F64)[:, None]
    assert_equivalent(loaded, expr, y)
    with pytest.raises(eb.SerializationError, match="no file form"):
        eb.save(normal().pushforward(tt.CumulativeDistributionTransform(Normal(0.0, 1.0))),
                tmp_path / "cdf.safetensors")


def test_differentiable_scores_match_autograd_of_the_energy():
    # Score matching differentiates the score in y; the pulled-back score must keep the
    # graph as autograd of E(y) = E_a(T⁻¹y) + log|det J_T| does.
    base = eb.targets.Gaussian(torch.tensor([0.2, -0.4], dtype=F64),
                               torch.tensor([1.0, 0.5], dtype=F64), name="a")
    pushed = base.pushforward(tt.ComposeTransform([tt.AffineTransform(0.5, 2.0),
                                                   tt.ExpTransform()]))
    by_autograd = eb.from_energy(lambda y: pushed.energy(y), 2, name="e")
    y = (torch.rand(6, 2, dtype=F64) * 3 + 0.2).requires_grad_(True)

    def divergence(model):
        score = model.score(y, create_graph=True)
        return sum(torch.autograd.grad(score[:, i].sum(), y, create_graph=True)[0][:, i]
                   for i in range(2))

    torch.testing.assert_close(pushed.score(y), by_autograd.score(y))
    torch.testing.assert_close(divergence(pushed), divergence(by_autograd))


def test_a_file_with_an_unknown_transform_is_refused():
    from ebmalgebra.io.transforms import decode

    with pytest.raises(eb.SerializationError, match="unknown transform kind 'eval'"):
        decode(["eval", "1"])
    with pytest.raises(eb.SerializationError, match="must be a list"):
        decode({"kind": "exp"})


def test_affine_pushforwards_of_gaussians_rewrite_to_gaussians():
    # N(μ, Σ) under y = loc + s ⊙ x is N(s ⊙ μ + loc, diag(s) Σ diag(s)), mass kept.
    mean = torch.tensor([0.5, -1.0], dtype=F64)
    covariance = torch.tensor([[1.0, 0.4], [0.4, 0.8]], dtype=F64)
    g = eb.targets.MultivariateGaussian(mean, covariance, name="g")
    loc, scale = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([2.0, -0.5], dtype=F64)
    pushed = 3.0 * g.pushforward(tt.AffineTransform(loc, scale)).pushforward(
        tt.AffineTransform(0.0, 0.5))
    exact = eb.compile(pushed & g, closed_form=True)
    assert len(exact.leaf_models) == 1  # the pushforward fused with g into one Gaussian
    y = torch.randn(8, 2, dtype=F64)
    assert_equivalent(exact, pushed & g, y, rtol=1e-9, atol=1e-9)
    alone = eb.compile(pushed, closed_form=True).expr.base
    torch.testing.assert_close(alone.loc, 0.5 * (scale * mean + loc))
    torch.testing.assert_close(alone.scale_tril @ alone.scale_tril.mT,
                               0.25 * scale[:, None] * covariance * scale[None, :])
    mixture = eb.targets.GaussianMixture(torch.stack([mean, -mean]), 0.7,
                                         weights=torch.tensor([0.2, 0.8], dtype=F64))
    moved = mixture.pushforward(tt.AffineTransform(loc, scale))
    assert_equivalent(eb.compile(moved, closed_form=True), moved, y, rtol=1e-9, atol=1e-9)


def test_closed_forms_inside_a_pushforward_keep_its_transform():
    # The Gaussian product inside is fused; the (unsavable, non-affine) transform stays.
    a = eb.targets.Gaussian(torch.tensor([0.3], dtype=F64), 1.0, name="a")
    b = eb.targets.Gaussian(torch.tensor([-0.2], dtype=F64), 2.0, name="b")
    expr = (a & b).pushforward(tt.CumulativeDistributionTransform(Normal(0.0, 1.0)))
    exact = eb.compile(expr, closed_form=True)
    assert exact.expr.base is not expr.base
    y = torch.linspace(0.05, 0.95, 7, dtype=F64)[:, None]
    assert_equivalent(exact, expr, y, rtol=1e-9, atol=1e-9)


def test_to_moves_the_tensors_inside_the_transform():
    """``.to(float64)`` of a float32 pushforward reaches the affine's loc and scale through
    a composition and inverses, and then evaluates like the moved base pushed through the
    transform built in float64 (the transform's constants are dyadic, exact in both)."""
    def transform(dtype):
        affine = tt.AffineTransform(torch.tensor([0.125, -0.375], dtype=dtype),
                                    torch.tensor([2.0, 0.75], dtype=dtype))
        return tt.ComposeTransform([affine, tt.ExpTransform().inv.inv]).inv.inv

    def base():
        return eb.targets.Gaussian(torch.zeros(2, dtype=torch.float32), 1.25, name="g")

    moved = base().pushforward(transform(torch.float32)).to(torch.float64)
    reference = base().to(torch.float64).pushforward(transform(torch.float64))
    stages = moved.transform.inv.inv.parts
    assert stages[0].loc.dtype == stages[0].scale.dtype == torch.float64
    x = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    torch.testing.assert_close(moved.energy(x), reference.energy(x), rtol=1e-13, atol=0)
    torch.testing.assert_close(moved.score(x), reference.score(x), rtol=1e-13, atol=0)


def test_to_reaches_transforms_wrapped_in_independent_and_cat_transforms():
    # Regression: ``.float()`` left the tensors of an IndependentTransform's (biject_to of
    # a Uniform's support) or a CatTransform's affine blocks in float64, so float32 inputs
    # gave float64 energies and draws.
    loc = torch.tensor([0.125, -0.375], dtype=F64)
    scale = torch.tensor([2.0, 0.75], dtype=F64)
    wrapped = (tt.IndependentTransform(tt.AffineTransform(loc, scale), 1),
               tt.CatTransform([tt.AffineTransform(loc[:1], scale[:1]),
                                tt.AffineTransform(loc[1:], scale[1:])], dim=-1, lengths=[1, 1]))
    y = torch.tensor([[0.5, 1.0], [-1.0, 0.25]])
    for transform in wrapped:
        model = eb.targets.Gaussian(torch.zeros(2, dtype=F64), 1.25, name="g").pushforward(
            transform).float()
        # E(y) = E_g((y − loc)/scale) + Σ log scale, evaluated in float32 throughout.
        x = (y - loc.float()) / scale.float()
        expected = 0.5 * (x / 1.25) ** 2 + math.log(2 * math.pi * 1.25**2) / 2
        energy = model.energy(y)
        assert energy.dtype == torch.float32
        torch.testing.assert_close(energy, expected.sum(1) + scale.float().log().sum())
        assert model.sample(3, generator=torch.Generator().manual_seed(0)).dtype == torch.float32


def test_scores_are_exact_under_inference_mode():
    # The pull-back through T⁻¹ is a reverse pass, which inference mode (not lifted by
    # enable_grad) used to break: a raw torch error for a base scored by autograd. Closed
    # form of the log-normal: s(y) = −1/y − (log y − μ)/(σ² y).
    analytic = eb.targets.Gaussian(torch.tensor([0.3], dtype=F64), 0.7, name="g")
    y = torch.linspace(0.05, 6.0, 40, dtype=F64)[:, None]
    expected = -1.0 / y - (y.log() - 0.3) / (0.7**2 * y)
    for base in (normal(0.3, 0.7), analytic):
        lognormal = base.pushforward(tt.ExpTransform())
        for model in (lognormal, eb.compile(lognormal), eb.compile(lognormal & eb.one)):
            with torch.inference_mode():
                inside = y.clone()
                torch.testing.assert_close(model.score(inside), expected)
                torch.testing.assert_close(model.energy_and_score(inside)[1], expected)


def test_an_affine_map_with_a_zero_scale_is_refused_naming_the_scale():
    # Regression: torch calls it bijective, and it failed only when evaluated, with a bare
    # "math domain error".
    message = r"^pushforward of n: AffineTransform scale must be non-zero, got 0.0"
    for transform in (tt.AffineTransform(0.0, 0.0), tt.AffineTransform(1.0, 0.0).inv,
                      tt.ComposeTransform([tt.ExpTransform(), tt.AffineTransform(
                          0.0, torch.tensor([2.0, 0.0], dtype=F64))])):
        with pytest.raises(eb.ArgumentError, match=message):
            normal().pushforward(transform)
    assert isinstance(normal().pushforward(tt.AffineTransform(0.0, -2.0)), Pushforward)


def test_an_empty_batch_has_empty_energies_and_scores():
    # Regression: log|det J| was reshaped to (0, -1), which torch refuses. Closed forms on
    # a batch as well: E(y) = E_a(T⁻¹y) + log|det J_T|, i.e. + Σ log y for exp and
    # + 6 log 2 for y = 1 + 2x over 2×3 events.
    matrix = eb.targets.Gaussian(torch.zeros(2, 3, dtype=F64), 1.0, name="m")
    y = torch.rand(4, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) + 0.5
    vector = eb.targets.Gaussian(torch.zeros(1, dtype=F64), 1.0, name="v")
    cases = ((vector.pushforward(tt.ExpTransform()), None),
             (matrix.pushforward(tt.ExpTransform()),
              matrix.energy(y.log()) + y.log().flatten(1).sum(1)),
             (matrix.pushforward(tt.AffineTransform(1.0, 2.0)),
              matrix.energy((y - 1.0) / 2.0) + 6 * math.log(2.0)))
    for model, expected in cases:
        empty = torch.zeros(0, *model.event_shape, dtype=F64)
        for evaluated in (model, eb.compile(model)):
            energy, score = evaluated.energy_and_score(empty)
            assert energy.shape == (0,) and score.shape == empty.shape
            assert evaluated.energy(empty).shape == (0,)
            if expected is not None:
                torch.testing.assert_close(evaluated.energy(y), expected)
