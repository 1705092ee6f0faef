"""The algebra's laws (DESIGN §1) as hypothesis properties, in energy and score.

Each law is checked on ≥ 200 random expressions of analytic leaves, evaluated in float64
to a relative tolerance of 1e-9 (float64 round-off on energies of magnitude ≤ ~1e4 is
~1e-12, so a genuine violation, even by a constant of 1e-6, fails).
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmalgebra as eb
from ebmalgebra import one
from ebmalgebra.ops import Power, Product, Weight
from ebmalgebra.testing import assert_equivalent, expressions, points

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
