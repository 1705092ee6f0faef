"""Analytic targets: energies equal −log p of reference densities, scores equal autograd,
log Z is 0 (checked by quadrature where no reference exists), exact samplers are exact."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import distributions as D

from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.leaves import autograd_energy_and_score
from ebmalgebra.targets import (
    Banana,
    Bar,
    Funnel,
    Gaussian,
    GaussianMixture,
    MultivariateGaussian,
    Ring,
)
from ebmalgebra.testing import assert_score_is_gradient, leaves, points_at_all_scales

F64 = torch.float64


def _points(n=64, dim=2, seed=0):
    return 3 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _reference_log_probs():
    loc = torch.tensor([0.5, -1.0], dtype=F64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=F64)
    locs = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=F64)
    scales = torch.tensor([[0.5, 1.0], [1.0, 0.7], [0.8, 0.8]], dtype=F64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    gmm_ref = D.MixtureSameFamily(D.Categorical(weights),
                                  D.Independent(D.Normal(locs, scales), 1))

    def banana_ref(x, s=2.0, b=0.5, sigma=1.0):
        x1, x2 = x[:, 0], x[:, 1]
        s, sigma = torch.tensor(s, dtype=F64), torch.tensor(sigma, dtype=F64)
        return D.Normal(0.0, s).log_prob(x1) + D.Normal(b * (x1**2 - s**2), sigma).log_prob(x2)

    def funnel_ref(x, s=3.0):
        v = x[:, 0]
        return (D.Normal(0.0, torch.tensor(s, dtype=F64)).log_prob(v)
                + D.Normal(0.0, torch.exp(v / 2)[:, None]).log_prob(x[:, 1:]).sum(-1))

    return [
        (Gaussian(loc, torch.tensor([0.5, 2.0], dtype=F64)),
         D.Independent(D.Normal(loc, torch.tensor([0.5, 2.0], dtype=F64)), 1).log_prob),
        (MultivariateGaussian(loc, cov), D.MultivariateNormal(loc, cov).log_prob),
        (Bar(length=2.0, width=0.5, angle=0.3), None),
        (GaussianMixture(locs, scales, weights=weights), gmm_ref.log_prob),
        (Banana(), banana_ref),
        (Funnel(3), funnel_ref),
    ]


@pytest.mark.parametrize("index", range(6))
def test_energy_is_negative_reference_log_prob_and_score_is_analytic(index):
    target, reference = _reference_log_probs()[index]
    x = _points(dim=target.event_shape[0])
    energy, score = target.energy_and_score(x)
    if reference is not None:
        torch.testing.assert_close(energy, -reference(x), rtol=1e-10, atol=1e-10)
    auto_energy, auto_score = autograd_energy_and_score(target._energy, x, None, False)
    torch.testing.assert_close(energy, auto_energy)
    torch.testing.assert_close(score, auto_score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(target.log_prob(x), -energy)


@pytest.mark.parametrize("event_shape", [(), (2, 3)])
def test_gaussian_over_scalar_and_matrix_events(event_shape):
    # Regression: a float loc (event shape ()) crashed in the energy (flatten(1) of (n,)).
    loc = torch.full(event_shape, 0.5, dtype=F64)
    target = Gaussian(loc, 2.0)
    x = 3 * torch.randn(5, *event_shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    reference = D.Independent(D.Normal(loc, torch.tensor(2.0, dtype=F64)), len(event_shape))
    energy, score = target.energy_and_score(x)
    torch.testing.assert_close(energy, -reference.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score, -(x - 0.5) / 4.0, rtol=1e-12, atol=1e-12)
    assert Gaussian(0.5, 2.0).energy(x.flatten()[:5]).shape == (5,)  # a float loc


def _grid_integral(energy_fn, low, high, n=1201):
    axis = torch.linspace(low, high, n, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    density = torch.exp(-energy_fn(torch.stack([xx.flatten(), yy.flatten()], -1)))
    step = (high - low) / (n - 1)
    return float(density.sum() * step * step)


@pytest.mark.parametrize("radius,width", [(2.0, 0.25), (1.0, 0.8), (0.5, 1.0)])
def test_ring_is_normalised_and_score_matches_autograd(radius, width):
    ring = Ring(radius=radius, width=width)
    # The density is smooth and negligible beyond radius + 9 widths: the Riemann sum on a
    # 1201² grid is accurate to far better than 1e-4.
    bound = radius + 9 * width
    assert _grid_integral(ring.energy, -bound, bound) == pytest.approx(1.0, abs=1e-4)
    x = _points(dim=2)
    _, score = ring.energy_and_score(x)
    torch.testing.assert_close(score, autograd_energy_and_score(ring._energy, x, None, False)[1])


def test_banana_is_normalised():
    banana = Banana(scale=1.0, curvature=0.3)
    assert _grid_integral(banana.energy, -12, 12, n=1601) == pytest.approx(1.0, abs=1e-4)


def _ks(sample, cdf):
    return stats.kstest(sample.numpy(), cdf).pvalue


def test_exact_samplers_pass_ks_tests():
    # Each test maps draws back to independent standard normals (or the radius CDF) and
    # applies a KS test; with a fixed seed a correct sampler passes p > 1e-3 deterministically,
    # while a wrong scale or curvature fails with p < 1e-10 at n = 20000.
    g = torch.Generator().manual_seed(1)
    n = 20000
    banana = Banana(scale=1.5, curvature=0.4, noise=0.7)
    x = banana.sample(n, g).double()
    assert _ks(x[:, 0] / 1.5, "norm") > 1e-3
    assert _ks((x[:, 1] - 0.4 * (x[:, 0] ** 2 - 1.5**2)) / 0.7, "norm") > 1e-3

    funnel = Funnel(3, scale=2.0)
    x = funnel.sample(n, g).double()
    assert _ks(x[:, 0] / 2.0, "norm") > 1e-3
    assert _ks(x[:, 2] * torch.exp(-x[:, 0] / 2), "norm") > 1e-3

    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    mvn = MultivariateGaussian(torch.tensor([1.0, -1.0]), cov)
    x = mvn.sample(n, g).double()
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov.double()),
                                          (x - torch.tensor([1.0, -1.0])).T, upper=False).T
    assert _ks(white[:, 0], "norm") > 1e-3 and _ks(white[:, 1], "norm") > 1e-3

    ring = Ring(radius=1.0, width=0.6)
    radii = ring.sample(n, g).double().norm(dim=-1)
    grid = torch.linspace(0, 6, 60001, dtype=F64)
    density = grid * torch.exp(-0.5 * ((grid - 1.0) / 0.6) ** 2)
    cdf_values = torch.cumsum(density, 0) / density.sum()
    assert _ks(radii, lambda r: torch.from_numpy(
        __import__("numpy").interp(r, grid.numpy(), cdf_values.numpy())).numpy()) > 1e-3


def test_gmm_sampler_component_frequencies():
    g = torch.Generator().manual_seed(2)
    gmm = GaussianMixture(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]), 0.5,
                          weights=torch.tensor([0.25, 0.75]))
    x = gmm.sample(40000, g)
    fraction = float((x[:, 0] > 0).double().mean())
    # Binomial standard error sqrt(.25 * .75 / 40000) = 0.0022; allow 4 of them.
    assert abs(fraction - 0.75) < 4 * math.sqrt(0.25 * 0.75 / 40000)


def test_samples_follow_generator_and_dtype():
    a = Gaussian(torch.zeros(3, dtype=F64), 2.0)
    first = a.sample(5, torch.Generator().manual_seed(3))
    second = a.sample(5, torch.Generator().manual_seed(3))
    assert first.dtype == F64 and torch.equal(first, second)
    assert Ring().sample(7).shape == (7, 2)


def test_energies_follow_input_dtype():
    for target in (Gaussian(torch.zeros(2), 1.0), Ring(), Banana(), Funnel(2),
                   GaussianMixture(torch.zeros(2, 2), 1.0), Bar()):
        for dtype in (torch.float32, F64):
            energy, score = target.energy_and_score(torch.ones(4, 2, dtype=dtype))
            assert energy.dtype == dtype and score.dtype == dtype


# A value outside its own constraint is an ArgumentError; arguments whose shapes do
# not fit each other are a CompositionError (both are ValueErrors).
@pytest.mark.parametrize("build,error,match", [
    (lambda: Gaussian(torch.zeros(2), -1.0), ArgumentError, "scale must be positive"),
    (lambda: Gaussian(torch.zeros(2), torch.ones(3)), CompositionError, "does not broadcast"),
    (lambda: MultivariateGaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]])),
     ArgumentError, "positive definite"),
    (lambda: MultivariateGaussian(torch.zeros(2)), ArgumentError, "exactly one"),
    (lambda: GaussianMixture(torch.zeros(2, 2), 1.0, weights=torch.ones(3)), CompositionError,
     "weights must be"),
    (lambda: Ring(radius=0.0), ArgumentError, "radius must be positive"),
    (lambda: Funnel(1), ArgumentError, "dim must be"),
    (lambda: Gaussian(torch.tensor([float("nan")]), 1.0), ArgumentError, "must be finite"),
])
def test_bad_parameters_are_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


def _every_target():
    return [Gaussian(torch.zeros(3, 4, dtype=F64), 2.0), MultivariateGaussian(
        torch.zeros(2), torch.eye(2)), Bar(), GaussianMixture(torch.zeros(3, 2), 1.0),
        Banana(), Funnel(3), Ring()]


@pytest.mark.parametrize("target", _every_target(), ids=repr)
def test_sampling_nothing_gives_an_empty_batch(target):
    draws = target.sample(0, torch.Generator().manual_seed(0))
    assert draws.shape == (0, *target.event_shape)
    assert draws.dtype == next(target.buffers()).dtype


def test_a_mixture_samples_nothing_and_components_that_get_no_draw():
    ring, far = Ring(), Gaussian(torch.full((2,), 50.0), 1.0)
    mixture = ring.normalized() | 1e-12 * far.normalized()
    assert mixture.sample(0).shape == (0, 2)
    # Every draw comes from `far` only with probability 1e-12: `ring` is asked for 0 draws
    # first, then `far`.
    assert (1e-12 * ring.normalized() | far.normalized()).sample(5).shape == (5, 2)
    assert mixture.sample(5).norm(dim=-1).max() < 10


# Ranges of leaves() keep energies ≤ ~1e8 on |x| ≤ 1e3, where float64 round-off in the two
# ways of summing the gradient (closed form, autograd) stays far below 1e-9 relative.
@settings(max_examples=300, deadline=None)
@given(st.one_of(leaves((2,)), leaves((3,))).flatmap(
    lambda leaf: st.tuples(st.just(leaf), points_at_all_scales(leaf.event_shape))))
def test_analytic_scores_are_the_gradient_of_the_energy_at_every_scale(leaf_and_points):
    # Points span 1e-300 … 1e3 in magnitude and include exact zeros: the ring's cone point,
    # its neighbourhood (where ‖x‖ underflows), and the far tails.
    leaf, x = leaf_and_points
    assert_score_is_gradient(leaf, x)


@pytest.mark.parametrize("target", _every_target(), ids=repr)
def test_analytic_scores_are_the_gradient_near_zero_and_far_out(target):
    # The fixed cases behind the property above, in every target's own event shape.
    magnitudes = torch.tensor([1e-300, 1e-160, 1e-20, 1e-8, 0.5, 3.0, 40.0], dtype=F64)
    size = math.prod(target.event_shape)
    directions = torch.randn(len(magnitudes), size, generator=torch.Generator().manual_seed(1),
                             dtype=F64)
    x = (magnitudes[:, None] * directions / directions.norm(dim=1, keepdim=True))
    assert_score_is_gradient(target.to(F64), x.reshape(-1, *target.event_shape))


def test_score_check_catches_a_score_that_is_not_the_gradient():
    ring = Ring()
    x = torch.tensor([[1e-20, 0.0], [1.0, 1.0]], dtype=F64)
    assert_score_is_gradient(ring, x)
    with pytest.raises(AssertionError, match=r"score of 2 \* ring is not −∇E"):
        assert_score_is_gradient(_Doubled(ring), x)
    # At the centre the energy has a cone point: autograd gives NaN and no score is wrong.
    assert_score_is_gradient(ring, torch.zeros(1, 2, dtype=F64))


class _Doubled(Ring):
    """A ring whose score is twice −∇E: what the check must reject."""

    def __init__(self, ring):
        super().__init__(radius=ring.radius, width=ring.width, name="2 * ring")

    def _energy_and_score(self, x, t, create_graph):
        energy, score = super()._energy_and_score(x, t, create_graph)
        return energy, 2 * score


@pytest.mark.parametrize("build,other", [
    (lambda **kw: Ring(**kw), {"radius": 3.0, "width": 0.5}),
    (lambda **kw: Banana(**kw), {"scale": 1.5, "curvature": -0.25, "noise": 0.5}),
    (lambda **kw: Funnel(3, **kw), {"scale": 1.0}),
], ids=["ring", "banana", "funnel"])
def test_a_loaded_state_dict_sets_the_shape_parameters(build, other):
    # Regression: the buffer took the loaded values while the energy kept the floats of
    # the constructor. A model loaded with another's state must be that other model.
    source, target = build(**other), build()
    target.load_state_dict(source.state_dict())
    x = _points(16, target.event_shape[0])
    for got, expected in zip(target.energy_and_score(x), source.energy_and_score(x),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert {name: getattr(target, name) for name in other} == other
    draws = target.sample(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, source.sample(4, torch.Generator().manual_seed(0)))


def test_a_state_dict_of_the_same_values_keeps_the_exact_floats():
    ring = Ring(radius=0.1, width=0.3)  # 0.1 and 0.3 are rounded in the float32 buffer
    x = _points(8)
    before = ring.energy(x)
    ring.load_state_dict(Ring(radius=0.1, width=0.3).state_dict())
    assert (ring.radius, ring.width) == (0.1, 0.3)
    assert torch.equal(ring.energy(x), before)


def test_a_state_dict_breaking_the_constraints_is_refused_and_changes_nothing():
    ring = Ring(radius=2.0, name="r")
    state = {"hyperparameters": torch.tensor([-1.0, 0.25])}
    with pytest.raises(ArgumentError, match=r"^state_dict entry hyperparameters: r: radius "
                                            r"must be positive, got -1.0$"):
        ring.load_state_dict(state)
    assert ring.radius == 2.0 and ring.hyperparameters.tolist() == [2.0, 0.25]


@pytest.mark.parametrize("target", [*_every_target(), Gaussian(0.5, 2.0)], ids=repr)
def test_an_empty_batch_has_empty_energies_and_scores(target):
    x = torch.zeros(0, *target.event_shape, dtype=next(target.buffers()).dtype)
    energy, score = target.energy_and_score(x)
    assert energy.shape == (0,) and score.shape == x.shape
