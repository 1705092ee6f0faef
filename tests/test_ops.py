"""Construction of expressions: canonical form, printing, capabilities and errors."""

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import ArgumentError, ArgumentTypeError, CapabilityError, CompositionError, one
from ebmalgebra.expression_parser import parse_expression
from ebmalgebra.leaves import Leaf
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight
from ebmalgebra.targets import Gaussian, Ring


@pytest.fixture
def abc():
    return (Gaussian(torch.zeros(2), 1.0, name="a"), Gaussian(torch.ones(2), 2.0, name="b"),
            Ring(name="c"))


def test_products_and_mixtures_flatten(abc):
    a, b, c = abc
    assert isinstance((a & b) & c, Product) and len(((a & b) & c).operands()) == 3
    assert ((a & b) & c).operands() == (a & (b & c)).operands() == (a, b, c)
    assert isinstance((a | b) | c, Mixture) and ((a | b) | c).operands() == (a, b, c)


def test_canonical_identities(abc):
    a, b, _ = abc
    assert (a & one) is a and (one & a) is a
    assert (a ** 1) is a and (1.0 * a) is a and ~~a is a
    assert a ** 0 is one and one ** 3 is one
    assert isinstance((a ** 2) ** 3, Power) and ((a ** 2) ** 3).exponent == 6
    nested = 2 * (3 * a)
    assert isinstance(nested, Weight) and nested.weight == 6
    assert ((2 * a) ** 2).structure() == (4 * a ** 2).structure()


@pytest.mark.parametrize(("build", "log_weight", "exponent"), [
    # (energy of a) · exponent − log_weight, with the log-weights summed by hand
    (lambda a: (1e-5 * a) ** 100, 100 * math.log(1e-5), 100.0),
    (lambda a: (1e200 * a) ** 2, 2 * math.log(1e200), 2.0),
    (lambda a: 1e-300 * (1e-300 * a), 2 * math.log(1e-300), 1.0),
    (lambda a: (1e-300 * a) ** -2, -2 * math.log(1e-300), -2.0),
], ids=["power-underflow", "power-overflow", "product-underflow", "negative-power-overflow"])
def test_weights_beyond_float_range_stay_nested_and_exact(abc, build, log_weight, exponent):
    a, _, _ = abc
    expr = build(a)  # w**β or w₁·w₂ is 0 or inf as a float: nothing to fold into one weight
    x = torch.randn(4, 2, dtype=torch.float64)
    expected = exponent * a.energy(x) - log_weight
    torch.testing.assert_close(expr.energy(x), expected)
    torch.testing.assert_close(eb.compile(expr).energy(x), expected)
    # The printed form parses back to the same tree.
    assert parse_expression(repr(expr), {"a": a}).structure() == expr.structure()


@pytest.mark.parametrize("build,text", [
    (lambda a, b, c: a & b ** 2, "a & b ** 2"),
    (lambda a, b, c: 0.25 * a | 0.75 * b, "0.25 * a | 0.75 * b"),
    (lambda a, b, c: (a | b) & c, "(a | b) & c"),
    (lambda a, b, c: ~a & b, "~a & b"),
    (lambda a, b, c: ~(a & b), "~(a & b)"),
    (lambda a, b, c: (a & b) ** 0.5, "(a & b) ** 0.5"),
    (lambda a, b, c: 2 * (a & b), "2 * (a & b)"),
    (lambda a, b, c: 2 * ~a, "2 * ~a"),
    (lambda a, b, c: a ** -2, "a ** -2"),
    (lambda a, b, c: (a | b) ** 2 | c, "(a | b) ** 2 | c"),
])
def test_repr_is_typeable(abc, build, text):
    a, b, c = abc
    expr = build(a, b, c)
    assert repr(expr) == text
    rebuilt = eval(text, {"a": a, "b": b, "c": c})  # noqa: S307 - the point of the test
    assert rebuilt.structure() == expr.structure()


def test_rebuilding_from_args_gives_an_equal_node(abc):
    a, b, c = abc
    for node in ((a & b) | c, 0.5 * a, a ** 3, ~b, (a | b).normalized(), a.normalized(1.5)):
        assert type(node)(*node.args).structure() == node.structure()


def test_nodes_are_immutable(abc):
    a, b, _ = abc
    node = a & b
    with pytest.raises(AttributeError, match="immutable"):
        node.foo = 1
    with pytest.raises(AttributeError, match="immutable"):
        (2 * a).weight = 3.0
    node.eval()  # nn.Module bookkeeping still works


def test_parameters_are_shared_through_expressions():
    net = torch.nn.Linear(2, 1)
    leaf = eb.from_energy(net, 2, name="net")
    expr = leaf & leaf ** 2 | leaf
    assert len(list(expr.parameters())) == 2
    expr.to(torch.float64)
    assert net.weight.dtype == torch.float64


def test_capability_rules(abc):
    a, b, c = abc
    score_only = eb.from_score(lambda x: -x, 2, name="denoiser")
    assert (a | b).capabilities.normalizer_known and (a | b).can_sample
    assert not (a & b).normalizer_known and not (a & b).can_sample
    assert not (a ** 2).can_sample and (2 * a).can_sample and (2 * a).normalizer_known
    assert (a & b).normalized(1.0).normalizer_known
    assert not (a & score_only).has_energy and (a & score_only).has_score
    assert (a & b).normalized(0.0).log_z() == 0
    torch.testing.assert_close((0.25 * a | 0.75 * b).component_weights(),
                               torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close((2 * a).log_z(), torch.log(torch.tensor(2.0)).double())


@pytest.mark.parametrize(("build", "p_right"), [
    (lambda a, b: 0.25 * a | 0.75 * b, 0.75),
    # The weights are w_i·Z_i: a doubled left component has 0.25·2 / (0.25·2 + 0.75) = 0.4.
    (lambda a, b: 0.25 * (2 * a) | 0.75 * b, 0.6),
    (lambda a, b: eb.compile(0.25 * a | 0.75 * b), 0.75),
], ids=["weights", "weight-times-Z", "compiled"])
def test_exact_mixture_samples_follow_the_component_weights(build, p_right):
    a = Gaussian(torch.full((2,), -10.0), 1.0, name="left")
    b = Gaussian(torch.full((2,), 10.0), 1.0, name="right")
    n = 20000
    draws = build(a, b).sample(n, torch.Generator().manual_seed(5))
    fraction = float((draws[:, 0] > 0).double().mean())  # the modes are 10 sd from 0
    # Binomial standard error √(p(1 − p)/n) ≤ 0.0035; z ≤ 4. Equal weights (0.5) are 70 off.
    assert abs(fraction - p_right) < 4 * (p_right * (1 - p_right) / n) ** 0.5


class _Box(Leaf):
    """E = 0 on [low, low + 1]^2, +∞ outside; analytic score 0."""

    analytic_score = True

    def __init__(self, low: float, name: str) -> None:
        super().__init__(torch.Size([2]), name, eb.Capabilities(
            has_energy=True, has_score=True, normalizer_known=False, can_sample=False))
        self.low = low

    def _energy(self, x, t):
        inside = ((x >= self.low) & (x <= self.low + 1)).all(-1)
        return torch.where(inside, 0.0, torch.inf).to(x.dtype)

    def _energy_and_score(self, x, t, create_graph):
        return self._energy(x, t), torch.zeros_like(x)


def test_mixture_score_is_zero_where_every_component_has_infinite_energy():
    D = torch.distributions
    uniform = eb.from_distribution(
        D.Independent(D.Uniform(torch.zeros(2), torch.ones(2)), 1), name="u")
    gamma_distribution = D.Independent(D.Gamma(2 * torch.ones(2), torch.ones(2)), 1)
    gamma = eb.from_distribution(gamma_distribution, name="ga")
    # Autograd leaves (from distributions) and analytic ones (boxes) take different paths.
    for mixture in (0.5 * uniform | 0.5 * gamma, _Box(0.0, "left") | _Box(5.0, "right")):
        outside = torch.tensor([[-0.5, 0.5], [-2.0, -3.0]])  # in no component's support
        for model in (mixture, eb.compile(mixture)):
            energy, score = model.energy_and_score(outside)
            assert torch.equal(energy, torch.full((2,), torch.inf))
            assert torch.equal(score, torch.zeros(2, 2))
    # Inside one support the responsibilities are 0 and 1: the score is that component's.
    inside = torch.tensor([[2.0, 3.0]], requires_grad=True)
    (expected,) = torch.autograd.grad(gamma_distribution.log_prob(inside).sum(), inside)
    for model in (0.5 * uniform | 0.5 * gamma, eb.compile(0.5 * uniform | 0.5 * gamma)):
        torch.testing.assert_close(model.score(inside.detach()), expected)


def test_errors_name_the_smallest_offending_subexpression(abc):
    a, b, c = abc
    score_only = eb.from_score(lambda x: -x, 2, name="denoiser")
    with pytest.raises(CompositionError, match="mixture needs energies.*'denoiser' is score-only"):
        _ = a | (b & score_only)
    with pytest.raises(CapabilityError, match=r"energy: 'denoiser' is score-only.*in a & denoiser"):
        (a & score_only).energy(torch.zeros(3, 2))
    with pytest.raises(CapabilityError, match=r"log_prob: 'a & b' is a product of experts"):
        (a & b).log_prob(torch.zeros(3, 2))
    unknown = eb.from_energy(lambda x: x.pow(2).sum(-1), 2, name="quad")
    with pytest.raises(CapabilityError, match=r"'quad' has an unknown normaliser"):
        (a | unknown).log_prob(torch.zeros(3, 2))
    with pytest.raises(CapabilityError, match=r"component weights .* 'quad'|of quad is unknown"):
        (a | unknown).component_weights()
    with pytest.raises(CapabilityError, match=r"sample: 'a \*\* 2' is tempered"):
        (a ** 2 | b).sample(3)


@pytest.mark.parametrize("build,match", [
    (lambda a, b, c: a & Gaussian(torch.zeros(3), 1.0, name="d"), r"event shapes differ.*d"),
    (lambda a, b, c: a | Gaussian(torch.zeros(3), 1.0, name="d"), r"event shapes differ"),
    (lambda a, b, c: a * b, "use `a & b`"),
    (lambda a, b, c: a & 3, "combines two EnergyModels"),
])
def test_composition_errors(abc, build, match):
    a, b, c = abc
    with pytest.raises(CompositionError, match=match):
        build(a, b, c)


def test_factors_of_a_product_and_of_anything_else(abc):
    a, b, c = abc
    assert (a & b & c).factors() == (a, b, c)
    mixture = a | b
    assert (mixture & c).factors() == (mixture, c)
    assert mixture.factors() == (mixture,) and a.factors() == (a,)


@pytest.mark.parametrize("build,error,match", [
    (lambda a: 0 * a, ArgumentError, "weight must be positive"),
    (lambda a: -2.0 * a, ArgumentError, "weight must be positive"),
    (lambda a: float("inf") * a, ArgumentError, "weight must be finite"),
    (lambda a: a ** float("nan"), ArgumentError, "exponent of a \\*\\* beta must be finite"),
    (lambda a: a ** "2", ArgumentTypeError, "must be a real number"),
])
def test_bad_weights_and_exponents_are_argument_errors(abc, build, error, match):
    with pytest.raises(error, match=match):
        build(abc[0])


def test_input_validation(abc):
    a, _, _ = abc
    with pytest.raises(CompositionError, match=r"event_shape \(2,\).*got \(4, 3\)"):
        a.energy(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        a.energy([[0.0, 0.0]])
    with pytest.raises(TypeError, match="floating-point"):
        a.energy(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(CompositionError, match="t must be a scalar"):
        a.energy(torch.zeros(4, 2), t=torch.zeros(3))


def test_batch_dimensions_are_flattened_and_restored(abc):
    a, b, c = abc
    expr = (a & c) | b
    x = torch.randn(3, 5, 2)
    energy, score = expr.energy_and_score(x)
    assert energy.shape == (3, 5) and score.shape == x.shape
    torch.testing.assert_close(energy[1], expr.energy(x[1]))


def test_normalized_requires_known_or_given_log_z(abc):
    a, b, _ = abc
    with pytest.raises(CapabilityError, match=r"normalized\(\) without log_z"):
        (a & b).normalized()
    node = (a & b).normalized(log_z=2.5)
    assert isinstance(node, Normalized)
    x = torch.randn(4, 2)
    torch.testing.assert_close(node.log_prob(x), -(a & b).energy(x) - 2.5)
    assert repr(node) == "normalized(a & b, log_z=2.5)"


def test_explain_reports_capabilities_and_weights(abc):
    a, b, _ = abc
    unknown = eb.from_energy(lambda x: x.pow(2).sum(-1), 2, name="quad")
    text = (0.25 * a | 0.75 * b).explain()
    assert "component weights 0.25, 0.75" in text
    assert "unknown" in (a | unknown).explain()
    assert "score-only" in (a & eb.from_score(lambda x: -x, 2, name="s")).explain()
