"""``without(a, b, reference)``: the Bayes-classifier negation of ebmalgebra.negation."""

from __future__ import annotations

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra.negation import Without, without
from ebmalgebra.samplers import MALA
from ebmalgebra.schedules import VE
from ebmalgebra.targets import Gaussian, GaussianMixture

F64 = torch.float64


def noised_component(loc: list[float], scale: float, name: str):
    return GaussianMixture(torch.tensor([loc], dtype=F64), scale, name=name).noised(VE())


def test_the_energy_is_bounded_below_by_the_kept_model_even_against_an_improper_concept():
    a = Gaussian(torch.zeros(3, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.ones(3, dtype=F64), 0.3, name="b")
    reference = Gaussian(-torch.ones(3, dtype=F64), 2.0, name="r")
    x = 5.0 * torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for concept in (b, ~b, b ** 3):  # ~b alone falls without bound: a & ~b is improper
        node = without(a, concept, reference, log_odds=5.0)
        assert bool((node.energy(x) >= a.energy(x)).all()), concept
    # Where the classifier is sure there is no b, the node is a; where it sees b, it is
    # a & reference & ~b shifted by λ.
    node = without(a, b, reference, log_odds=1.0)
    near_reference, near_b = -torch.ones(1, 3, dtype=F64), torch.ones(1, 3, dtype=F64)
    torch.testing.assert_close(node.energy(near_reference), a.energy(near_reference),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(node.energy(near_b),
                               (a & reference & ~b).energy(near_b) + 1.0, atol=1e-3, rtol=0)


def test_with_exact_normalisers_the_implicit_classifier_is_the_true_posterior():
    """Population π_b N(μ_b, s_b²) + π_r N(μ_r, s_r²), noised: at every σ,
    exp(−(E − E_a)) = P(not b | x_σ) = π_r N_r,σ(x) / p_σ(x), from torch.distributions."""
    loc_b, loc_r, scale_b, scale_r, prior_b = [1.5, 0.0], [-1.0, 0.5], 0.4, 0.8, 0.3
    a = noised_component([0.0, 0.0], 1.0, "a")
    b, reference = noised_component(loc_b, scale_b, "b"), noised_component(loc_r, scale_r, "r")
    node = without(a, b, reference, log_odds=math.log(prior_b / (1 - prior_b)))
    x = 2.0 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=F64)

    def log_joint(loc, scale, prior, sigma):
        normal = torch.distributions.Normal(torch.tensor(loc, dtype=F64),
                                            math.sqrt(scale ** 2 + sigma ** 2))
        return math.log(prior) + normal.log_prob(x).sum(-1)

    for sigma in (0.01, 0.3, 1.0, 5.0):
        joint_b = log_joint(loc_b, scale_b, prior_b, sigma)
        joint_r = log_joint(loc_r, scale_r, 1 - prior_b, sigma)
        no_b = joint_r - torch.logaddexp(joint_b, joint_r)
        torch.testing.assert_close(-(node.energy(x, sigma) - a.energy(x, sigma)), no_b)


def test_sampling_puts_the_mass_off_the_removed_component():
    """a = N(0, 2² I) over two classes b at (2.5, 0) and r at (−2.5, 0) (unit scale, even
    odds): the target a(x) P(r | x) has its mass on the left. Exact P(x₁ > 0) by
    quadrature on a grid; 4000 independent MALA chains give binomial standard error
    √(p(1 − p)/4000) ≤ 0.008, and the test allows 4 of them (plus 0.01 for the
    chains' remaining burn-in and discretisation bias)."""
    a = Gaussian(torch.zeros(2, dtype=F64), 2.0, name="a")
    b = Gaussian(torch.tensor([2.5, 0.0], dtype=F64), 1.0, name="b")
    reference = Gaussian(torch.tensor([-2.5, 0.0], dtype=F64), 1.0, name="r")
    node = without(a, b, reference)

    grid = torch.linspace(-12, 12, 961, dtype=F64)
    points = torch.cartesian_prod(grid, grid)
    density = torch.exp(-node.energy(points))
    exact = float(density[points[:, 0] > 0].sum() / density.sum())
    assert exact < 0.1  # the classifier removes most of a's right half (a alone: 0.5)

    run = eb.sample(node, MALA(step_size=0.5), n_chains=4000, n_steps=1, warmup=400,
                    x0=2.0 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(2),
                                         dtype=F64),
                    generator=torch.Generator().manual_seed(3), progress=False)
    fraction = float((run.draws[-1][:, 0] > 0).double().mean())
    standard_error = math.sqrt(exact * (1 - exact) / 4000)
    assert abs(fraction - exact) <= 4 * standard_error + 0.01, (fraction, exact)


def test_the_node_prints_rebuilds_saves_and_compiles(tmp_path):
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.ones(2, dtype=F64), 1.0, name="b")
    reference = Gaussian(-torch.ones(2, dtype=F64), 1.0, name="r")
    node = without(a, b, reference, log_odds=2.5)
    assert repr(node) == "without(a, b, r, log_odds=2.5)"
    assert isinstance(node, Without) and repr(type(node)(*node.args)) == repr(node)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    path = tmp_path / "without.safetensors"
    eb.save(node, path)
    torch.testing.assert_close(eb.load(path).energy(x), node.energy(x))
    eb.testing.assert_equivalent(eb.compile(node), node, x)
    # The score is s_a + σ(ℓ)(s_ref − s_b).
    weight = torch.sigmoid(reference.energy(x) - b.energy(x) + 2.5)[:, None]
    torch.testing.assert_close(node.score(x), a.score(x) + weight * (reference.score(x)
                                                                     - b.score(x)))
    assert node.sampling_exponent() == 2.0


def test_log_odds_must_be_a_finite_number():
    # Regression: log_odds=nan was accepted, and every energy was NaN.
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=f"without: log_odds must be finite, got {bad}"):
            without(a, a, a, log_odds=bad)
