"""The composite-node base: canonical form on every construction path, rebuilding,
immutability, and the rules each node class owns."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions.transforms import AffineTransform

import ebmalgebra as eb
from ebmalgebra import one
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight
from ebmalgebra.pushforward import Pushforward
from ebmalgebra.targets import Gaussian, Ring

F64 = torch.float64
POOL = (Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a"),
        Gaussian(torch.ones(2, dtype=F64), 2.0, name="b"), Ring(name="c"), one)


def test_class_constructors_canonicalise_like_the_operators():
    a, b, _, _ = POOL
    assert Product(a, one) is a and Product(one, a, one) is a
    assert Product(one, one) is one and Mixture(a) is a
    assert Power(Power(a, 2), 3).structure() == ((a ** 2) ** 3).structure()
    assert Power(Power(a, 2), 3).exponent == 6
    assert Weight(2, Weight(3, a)).structure() == (2 * (3 * a)).structure()
    assert Weight(2, Weight(3, a)).weight == 6
    assert Power(Weight(4.0, a), 0.5).structure() == (2.0 * a ** 0.5).structure()
    assert Power(a, 1) is a and Weight(1, a) is a and Power(a, 0) is one
    assert Product(Product(a, b), Product(b, a)).operands() == (a, b, b, a)


def test_canonicalising_never_touches_existing_nodes():
    # The canonical form is returned before __init__ runs, so an existing node that the
    # constructor hands back is not re-initialised (its numbers stay its own).
    a = POOL[0]
    inner = Weight(3, a)
    outer = Weight(2, inner)
    assert inner.weight == 3 and outer.weight == 6 and outer.base is a
    squared = a ** 2
    assert Power(squared, 1) is squared and squared.exponent == 2


@pytest.mark.parametrize("build", [
    lambda a, b, c: (a & b) | c, lambda a, b, c: 0.5 * a, lambda a, b, c: a ** 3,
    lambda a, b, c: ~b, lambda a, b, c: (a | b).normalized(),
    lambda a, b, c: a.normalized(1.5), lambda a, b, c: Normalized(a, 2.0, 0.1),
])
def test_type_of_node_rebuilds_an_equal_node_from_its_args(build):
    node = build(*POOL[:3])
    rebuilt = type(node)(*node.args)
    assert type(rebuilt) is type(node) and rebuilt.structure() == node.structure()
    assert rebuilt.with_operands(list(node.operands())).structure() == node.structure()


def _recipes():
    """Expression recipes: a leaf index, or (operator, number, sub-recipes)."""
    leaf = st.integers(0, len(POOL) - 1)
    number = st.floats(0.25, 4.0, allow_nan=False)
    return st.recursive(leaf, lambda sub: st.one_of(
        st.tuples(st.sampled_from(["&", "|"]), st.just(0.0), st.lists(sub, min_size=2,
                                                                         max_size=3)),
        st.tuples(st.sampled_from(["*", "**", "~", "push"]), number,
                  st.lists(sub, min_size=1, max_size=1)),
    ), max_leaves=8)


_TRANSFORMS: dict[float, object] = {}


def _transform(number: float):
    """One shared affine transform per number (transforms compare by identity)."""
    return _TRANSFORMS.setdefault(number, AffineTransform(number, 2.0))


def _by_operators(recipe):
    if isinstance(recipe, int):
        return POOL[recipe]
    op, number, subs = recipe
    parts = [_by_operators(s) for s in subs]
    if op == "&":
        out = parts[0]
        for part in parts[1:]:
            out = out & part
        return out
    if op == "|":
        out = parts[0]
        for part in parts[1:]:
            out = out | part
        return out
    return {"*": lambda m: number * m, "**": lambda m: m ** number, "~": lambda m: ~m,
            "push": lambda m: m.pushforward(_transform(number))}[op](parts[0])


def _by_classes(recipe):
    if isinstance(recipe, int):
        return POOL[recipe]
    op, number, subs = recipe
    parts = [_by_classes(s) for s in subs]
    return {"&": lambda: Product(*parts), "|": lambda: Mixture(*parts),
            "*": lambda: Weight(number, parts[0]), "**": lambda: Power(parts[0], number),
            "~": lambda: Power(parts[0], -1.0),
            "push": lambda: Pushforward(parts[0], _transform(number))}[op]()


@given(_recipes())
def test_canonical_form_is_the_same_on_every_construction_path(recipe):
    by_operators = _by_operators(recipe)
    by_classes = _by_classes(recipe)
    assert by_classes.structure() == by_operators.structure()
    # And the canonical form is a fixed point: rebuilding a node changes nothing.
    if by_classes.operands():
        assert type(by_classes)(*by_classes.args).structure() == by_classes.structure()


def test_nodes_are_frozen_after_construction():
    node = POOL[0] & POOL[1]
    with pytest.raises(AttributeError, match="immutable"):
        node.factor = 2


def test_each_node_states_its_sampling_exponent_and_impropriety_rule():
    a, b, c, _ = POOL
    expr = eb.compile((a & b ** 2) | 3 * c ** -0.5)
    assert expr.sampling_exponent() == 3.0 and one.sampling_exponent() == 0.0
    assert Mixture(a, b).passes_impropriety and Weight(2, a).passes_impropriety
    assert (a ** 2).passes_impropriety and not (a ** -1).passes_impropriety
    assert not Product(a, b).passes_impropriety


def test_program_formula_lives_next_to_the_program():
    from ebmalgebra.cli import format_program as cli_format_program
    from ebmalgebra.program import format_program

    a, b, _, _ = POOL
    assert cli_format_program is format_program
    assert format_program(2 * a | b) == f"E(x) = −logsumexp(−(E_a − {math.log(2):.4g}), −E_b)"


def test_eager_nonlinear_operators_score_under_inference_mode():
    # Regression: the reverse pass for ∂f/∂E_l of an eager non-linear operator raised
    # "element 0 of tensors does not require grad" inside torch.inference_mode().
    a = Gaussian(torch.zeros(2, dtype=F64), 1.5, name="a")
    b = Gaussian(torch.ones(2, dtype=F64), 0.5, name="b")
    expr = eb.without(a, b, a | b)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    inputs = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(expr.energy(inputs).sum(), inputs)
    with torch.inference_mode():
        energy, score = expr.energy_and_score(x.clone())
    torch.testing.assert_close(score, -gradient)
    torch.testing.assert_close(energy, expr.energy(x))
