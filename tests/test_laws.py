"""The algebra's laws (DESIGN §1) as hypothesis properties, in energy and score.

Each law is checked on ≥ 200 random expressions of analytic leaves, evaluated in float64
to a relative tolerance of 1e-9 (float64 round-off on energies of magnitude ≤ ~1e4 is
~1e-12, so a genuine violation, even by a constant of 1e-6, fails).

Laws compare expressions built from the same node methods, so they are backed by ground
truth: each operator against its closed form in its operands' values, scores against
autograd through the energy, and the compiler against the tree walk, over networks,
score-only and noise-conditioned leaves as well (``leaves(kinds=LEAF_KINDS)``).
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmalgebra as eb
from ebmalgebra import one
from ebmalgebra.ops import Power, Product, Weight
from ebmalgebra.testing import (
    LEAF_KINDS,
    assert_equivalent,
    assert_score_is_gradient,
    expressions,
    leaves,
    points,
)

EXAMPLES = settings(max_examples=200)
exprs = expressions(max_depth=2)
weights = st.floats(0.1, 10)
betas = st.floats(-2, 2).filter(lambda b: abs(b) > 0.1)


@EXAMPLES
@given(exprs, exprs, points())
def test_product_commutes(a, b, x):
    assert_equivalent(a & b, b & a, x)


@EXAMPLES
@given(exprs, exprs, points())
def test_mixture_commutes(a, b, x):
    assert_equivalent(a | b, b | a, x)


@EXAMPLES
@given(exprs, exprs, exprs, points())
def test_product_associates(a, b, c, x):
    # Construction flattens both sides; the unflattened node checks the semantics too.
    assert_equivalent((a & b) & c, a & (b & c), x)
    assert_equivalent(Product(Product(a, b), c), a & (b & c), x)


@EXAMPLES
@given(exprs, exprs, exprs, points())
def test_mixture_associates(a, b, c, x):
    assert_equivalent((a | b) | c, a | (b | c), x)


@EXAMPLES
@given(exprs, exprs, exprs, points())
def test_product_distributes_over_mixture(a, b, c, x):
    assert_equivalent(a & (b | c), (a & b) | (a & c), x)


@EXAMPLES
@given(exprs, exprs, betas, points())
def test_power_distributes_over_product(a, b, beta, x):
    assert_equivalent((a & b) ** beta, a ** beta & b ** beta, x)


@EXAMPLES
@given(exprs, betas, betas, points())
def test_powers_multiply(a, beta, gamma, x):
    assert_equivalent((a ** beta) ** gamma, a ** (beta * gamma), x)
    assert_equivalent(Power(Power(a, beta), gamma), a ** (beta * gamma), x)


@EXAMPLES
@given(exprs, points())
def test_double_inverse(a, x):
    assert_equivalent(~~a, a, x)
    assert_equivalent(Power(Power(a, -1.0), -1.0), a, x)


@EXAMPLES
@given(exprs, points())
def test_self_mixture_doubles(a, x):
    assert_equivalent(a | a, 2 * a, x)


@EXAMPLES
@given(exprs, exprs, weights, points())
def test_weight_distributes_over_mixture(a, b, w, x):
    assert_equivalent(w * (a | b), w * a | w * b, x)


@EXAMPLES
@given(exprs, exprs, weights, points())
def test_weight_pulls_out_of_product(a, b, w, x):
    assert_equivalent((w * a) & b, w * (a & b), x)


@EXAMPLES
@given(exprs, weights, betas, points())
def test_power_of_weight(a, w, beta, x):
    assert_equivalent((w * a) ** beta, w ** beta * a ** beta, x)
    assert_equivalent(Power(Weight(w, a), beta), Weight(w ** beta, Power(a, beta)), x)


@EXAMPLES
@given(exprs, points())
def test_one_is_the_identity(a, x):
    assert_equivalent(a & one, a, x)
    assert_equivalent(Product(a, one), a, x)


@settings(max_examples=200)
@given(expressions(max_depth=4), points())
def test_compile_agrees_with_the_tree_walk(e, x):
    assert_equivalent(eb.compile(e), e, x)


def test_laws_can_fail():
    # The checker rejects a false law (a & b ≢ a | b) and a constant shift without
    # up_to_constant, so the properties above are not vacuous.
    a = eb.targets.Gaussian(torch.zeros(2), 1.0, name="a")
    b = eb.targets.Gaussian(torch.ones(2), 1.0, name="b")
    x = torch.randn(8, 2, dtype=torch.float64)
    for left, right in ((a & b, a | b), (2 * a, a)):
        try:
            assert_equivalent(left, right, x)
        except AssertionError:
            continue
        raise RuntimeError(f"assert_equivalent accepted {left!r} ≡ {right!r}")
    assert_equivalent(2 * a, a, x, up_to_constant=True)


# ------------------------------------------------------------------ ground truth
# The laws compare two expressions evaluated by the same node methods, so a node that
# forgets to flip or scale a score passes them. Here each operator is checked against its
# row of the DESIGN §1 table, computed from its operands' values, on operands that are any
# expressions over every kind of leaf (networks and noise-conditioned leaves use autograd).

every_kind = leaves(kinds=LEAF_KINDS)
any_exprs = expressions(every_kind, max_depth=2)
energy_exprs = any_exprs.filter(lambda e: e.has_energy)
noise_levels = st.one_of(st.floats(0.0, 2.0), st.just(None))
# Fewer examples than the laws: each one compiles and evaluates every path, with networks.
GROUND_TRUTH = settings(max_examples=60, deadline=None)


def _values(model, x, t):
    energy = model.energy(x, t).detach() if model.has_energy else None
    return energy, model.score(x, t)


def _check_against(model, x, t, energy, score):
    """The tree walk (energy, score, energy_and_score) and the compiled program agree with
    the reference values."""
    for evaluated in (model, eb.compile(model)):
        if energy is not None:
            torch.testing.assert_close(evaluated.energy(x, t), energy, rtol=1e-9, atol=1e-9)
            fused_energy, fused_score = evaluated.energy_and_score(x, t)
            torch.testing.assert_close(fused_energy, energy, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(fused_score, score, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(evaluated.score(x, t), score, rtol=1e-9, atol=1e-9)


def _time(t, model):
    # Noise-conditioned leaves need a level; other expressions are checked with t = None too.
    needs_t = any(getattr(leaf, "noise_conditioned", False) for leaf in model.leaves())
    return 0.5 if (t is None and needs_t) else t


@GROUND_TRUTH
@given(any_exprs, any_exprs, noise_levels, points())
def test_product_is_the_sum_of_energies_and_scores(a, b, t, x):
    t = _time(t, a & b)
    (energy_a, score_a), (energy_b, score_b) = _values(a, x, t), _values(b, x, t)
    energy = None if energy_a is None or energy_b is None else energy_a + energy_b
    _check_against(a & b, x, t, energy, score_a + score_b)


@GROUND_TRUTH
@given(energy_exprs, energy_exprs, noise_levels, points())
def test_mixture_is_logsumexp_with_softmax_weighted_scores(a, b, t, x):
    t = _time(t, a | b)
    (energy_a, score_a), (energy_b, score_b) = _values(a, x, t), _values(b, x, t)
    energy = -torch.logaddexp(-energy_a, -energy_b)
    weight_a = torch.sigmoid(energy_b - energy_a)[:, None]  # p̃_a / (p̃_a + p̃_b)
    _check_against(a | b, x, t, energy, weight_a * score_a + (1 - weight_a) * score_b)


@GROUND_TRUTH
@given(any_exprs, weights, noise_levels, points())
def test_weight_shifts_the_energy_and_keeps_the_score(a, w, t, x):
    t = _time(t, a)
    energy, score = _values(a, x, t)
    _check_against(w * a, x, t, None if energy is None else energy - math.log(w), score)


@GROUND_TRUTH
@given(any_exprs, betas, noise_levels, points())
def test_power_scales_energy_and_score(a, beta, t, x):
    t = _time(t, a)
    energy, score = _values(a, x, t)
    _check_against(a ** beta, x, t, None if energy is None else beta * energy, beta * score)


@GROUND_TRUTH
@given(any_exprs, noise_levels, points())
def test_inverse_flips_energy_and_score(a, t, x):
    t = _time(t, a)
    energy, score = _values(a, x, t)
    _check_against(~a, x, t, None if energy is None else -energy, -score)


@GROUND_TRUTH
@given(energy_exprs, st.floats(-5, 5), noise_levels, points())
def test_normalized_adds_log_z_and_keeps_the_score(a, log_z, t, x):
    t = _time(t, a)
    energy, score = _values(a, x, t)
    _check_against(a.normalized(log_z), x, t, energy + log_z, score)


@GROUND_TRUTH
@given(expressions(every_kind, max_depth=3).filter(lambda e: e.has_energy), points())
def test_scores_are_gradients_of_energies_through_every_operator(e, x):
    # Independent of any node's score code: autograd through the energy.
    t = _time(None, e)
    assert_score_is_gradient(e, x, t)
    assert_score_is_gradient(eb.compile(e), x, t)


@GROUND_TRUTH
@given(expressions(every_kind, max_depth=3), noise_levels, points())
def test_compile_agrees_with_the_tree_walk_on_every_kind_of_leaf(e, t, x):
    assert_equivalent(eb.compile(e), e, x, _time(t, e))
