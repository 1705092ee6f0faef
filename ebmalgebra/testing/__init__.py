"""Property-testing kit: hypothesis strategies for expressions and an equivalence check.

Users property-test their own compositions with it::

    from hypothesis import given
    from ebmalgebra.testing import expressions, points, assert_equivalent

    @given(expressions(max_depth=3), points((2,)))
    def test_my_law(e, x):
        assert_equivalent(e & one, e, x)

Requires ``hypothesis`` (installed with the ``dev`` extra).
"""

from ebmalgebra.testing.assertions import assert_equivalent, assert_score_is_gradient
from ebmalgebra.testing.known import correlated_gaussian
from ebmalgebra.testing.strategies import (
    LEAF_KINDS,
    expressions,
    leaves,
    points,
    points_at_all_scales,
)

__all__ = ["LEAF_KINDS", "assert_equivalent", "assert_score_is_gradient", "correlated_gaussian",
           "expressions", "leaves", "points", "points_at_all_scales"]
