"""The compiler: each distinct leaf once per call, agreement with the tree walk,
differentiable scores for training, and the closed-form Gaussian rewrites."""

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import CapabilityError
from ebmalgebra.compile import Affine, LeafRef, LogSumExp
from ebmalgebra.targets import Banana, Gaussian, GaussianMixture, MultivariateGaussian, Ring
from ebmalgebra.testing import assert_equivalent

F64 = torch.float64


class CountingEnergy(torch.nn.Module):
    def __init__(self, shift: float):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([shift, -shift], dtype=F64))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 0.5 * ((x - self.shift) ** 2).sum(-1) + 0.1 * torch.sin(x).sum(-1)


def test_a_leaf_mentioned_three_times_is_evaluated_once_per_call():
    net = CountingEnergy(1.0)
    a = eb.from_energy(net, 2, name="a")
    b = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="b")
    expr = (a & b) | a ** 2 | (0.5 * a & ~b)
    compiled = eb.compile(expr)
    assert len(compiled.leaf_models) == 2
    x = torch.randn(16, 2, dtype=F64)
    for method in ("energy", "score", "energy_and_score"):
        net.calls = 0
        getattr(compiled, method)(x)
        assert net.calls == 1, method
    net.calls = 0
    expr.energy_and_score(x)
    assert net.calls == 3  # the tree walk visits each mention
    assert_equivalent(compiled, expr, x)


def test_an_autograd_leaf_repeated_inside_a_combine_operator_has_the_true_score():
    # without(a, a, r) and without(a, a ** 2, r) hand the combine function one leaf's
    # energy twice (or once inside another term); ∂f/∂E_j must follow each edge alone.
    a = eb.from_energy(CountingEnergy(1.0), 2, name="a")
    reference = Ring(name="r")
    x = torch.randn(8, 2, dtype=F64)
    for expr in (eb.without(a, a, reference, log_odds=0.5),
                 eb.without(a, a ** 2, reference, log_odds=0.5)):
        inputs = x.clone().requires_grad_(True)
        true_score = -torch.autograd.grad(expr.energy(inputs).sum(), inputs)[0]
        torch.testing.assert_close(eb.compile(expr).score(x), true_score)
        torch.testing.assert_close(eb.compile(expr).energy_and_score(x)[1], true_score)


def test_weights_and_temperatures_fold_into_coefficients():
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    b = Ring(name="b")
    compiled = eb.compile(2.0 * (a ** 2 & b) ** 0.5 & a)
    program = compiled.program
    assert isinstance(program, Affine)
    coefficients = {compiled.leaf_models[node.index].name: c for c, node in program.terms}
    assert coefficients == {"a": 2.0, "b": 0.5}
    assert program.constant == pytest.approx(-math.log(2.0))
    mixture = eb.compile(0.25 * a | 0.75 * (a & b)).program
    assert isinstance(mixture, LogSumExp)
    assert mixture.terms[0] == (pytest.approx(-math.log(0.25)), LeafRef(0))


def test_mixture_scores_are_differentiable_for_training():
    # Exact score matching differentiates the score in x and in parameters; the compiled
    # path must keep the mixture weights in the graph (finite differences are the check).
    net = CountingEnergy(0.5)
    a = eb.from_energy(net, 2, name="a")
    expr = a | Banana(name="b") & Gaussian(torch.zeros(2, dtype=F64), 2.0, name="c")
    compiled = eb.compile(expr)
    x = torch.randn(5, 2, dtype=F64, requires_grad=True)

    def objective(model):
        score = model.score(x, create_graph=True)
        divergence = sum(torch.autograd.grad(score[:, i].sum(), x, create_graph=True)[0][:, i]
                         for i in range(2))
        return (0.5 * (score**2).sum(-1) + divergence).mean()

    grad_compiled = torch.autograd.grad(objective(compiled), net.shift)[0]
    grad_tree = torch.autograd.grad(objective(expr), net.shift)[0]
    torch.testing.assert_close(grad_compiled, grad_tree)
    step = 1e-5
    with torch.no_grad():
        net.shift[0] += step
    up = objective(compiled).item()
    with torch.no_grad():
        net.shift[0] -= 2 * step
    down = objective(compiled).item()
    assert (up - down) / (2 * step) == pytest.approx(float(grad_compiled[0]), rel=1e-5)


def test_sampling_outputs_are_detached_and_energy_keeps_parameter_graph():
    net = CountingEnergy(0.5)
    compiled = eb.compile(eb.from_energy(net, 2, name="a") | Ring(name="r"))
    x = torch.randn(4, 2, dtype=F64)
    energy, score = compiled.energy_and_score(x)
    assert not energy.requires_grad and not score.requires_grad
    assert compiled.energy(x).requires_grad


def test_score_only_leaves_compile_for_scores():
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    denoiser = eb.from_score(lambda x: -2.0 * x, 2, name="denoiser")
    compiled = eb.compile(a & denoiser ** 0.5)
    x = torch.randn(6, 2, dtype=F64)
    torch.testing.assert_close(compiled.score(x), -x - x)
    with pytest.raises(CapabilityError, match="'denoiser' is score-only"):
        compiled.energy(x)


def test_a_score_only_factor_before_a_mixture_compiles_for_scores():
    # The energy is unknown at the score-only factor, but the mixture after it still needs
    # its weights: s = s_denoiser + softmax-weighted (s_a, s_b). Found by test_laws.
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.full((2,), 3.0, dtype=F64), 1.0, name="b")
    denoiser = eb.from_score(lambda x: -2.0 * x, 2, name="denoiser")
    x = torch.randn(6, 2, dtype=F64)
    weight_a = torch.sigmoid(b.energy(x) - a.energy(x))[:, None]
    expected = -2.0 * x + weight_a * a.score(x) + (1 - weight_a) * b.score(x)
    torch.testing.assert_close(eb.compile(denoiser & (a | b)).score(x), expected)


def test_noise_level_is_threaded_to_conditioned_leaves():
    conditioned = eb.from_energy(lambda x, t: 0.5 * (x**2).sum(-1) / t**2, 2, name="e",
                                 noise_conditioned=True)
    expr = eb.compile(conditioned & Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a"))
    x = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    torch.testing.assert_close(expr.score(x, t), -x / t[:, None] ** 2 - x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    a = Gaussian(torch.zeros(2), 1.0, name="a")
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    expr = eb.compile((a | Ring(name="r")) & eb.from_energy(net.to(dtype), 2, name="net"))
    energy, score = expr.energy_and_score(torch.randn(5, 2, dtype=dtype))
    assert energy.dtype == dtype and score.dtype == dtype


def test_compiling_twice_returns_the_same_object():
    a = Gaussian(torch.zeros(2), 1.0, name="a")
    compiled = eb.compile(a & a)
    assert eb.compile(compiled) is compiled
    assert repr(compiled) == "compile(a & a)"


def test_loaded_log_normalizers_reach_the_compiled_program():
    left, right = CountingEnergy(1.0), CountingEnergy(-0.5)
    a = eb.from_energy(left, 2, name="a").normalized(log_z=0.0)
    b = eb.from_energy(right, 2, name="b").normalized(log_z=0.0)
    x = torch.randn(4, 2, dtype=F64)
    with torch.no_grad():
        e_a, e_b = left(x) + 5.0, right(x) - 2.0  # with the log Z loaded below
    for expr, expected in ((a | b, -torch.logaddexp(-e_a, -e_b)), (a & b ** 2, e_a + 2 * e_b)):
        compiled = eb.compile(expr)
        state = compiled.state_dict()
        key_a, key_b = (key for key in state if key.endswith("log_normalizer"))  # a's first
        compiled.load_state_dict({**state, key_a: torch.tensor(5.0), key_b: torch.tensor(-2.0)})
        torch.testing.assert_close(compiled.energy(x), expected)
        torch.testing.assert_close(compiled.energy_and_score(x)[0], expected)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_log_normalizers_changed_outside_the_compiled_model_reach_it(backend):
    # Loaded into the node itself or written in place: the compiled model sees each, for
    # the eager evaluator and the compiled kernels alike (nodes refuse new buffers).
    net = CountingEnergy(1.0)
    node = eb.from_energy(net, 2, name="a").normalized(log_z=0.0)
    compiled = eb.compile(node | eb.from_energy(CountingEnergy(-0.5), 2, name="b"),
                          backend=backend)
    x = torch.randn(4, 2, dtype=F64)
    with torch.no_grad():
        e_a, e_b = net(x), CountingEnergy(-0.5)(x)

    def expected(log_z):
        return -torch.logaddexp(-(e_a + log_z), -e_b)

    torch.testing.assert_close(compiled.energy(x), expected(0.0))
    node.load_state_dict({"log_normalizer": torch.tensor(3.0)}, strict=False)
    torch.testing.assert_close(compiled.energy(x), expected(3.0))
    with torch.no_grad():
        node.log_normalizer.fill_(-1.5)
    torch.testing.assert_close(compiled.energy_and_score(x)[0], expected(-1.5))

# ----------------------------------------------------------------- closed forms
def _x(n=32, seed=0):
    return 2 * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_product_of_gaussians_is_the_textbook_gaussian():
    a = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.full((1,), 2.0, dtype=F64), 1.0, name="b")
    rewritten = eb.compile(a & b, closed_form=True)
    reference = Gaussian(torch.ones(1, dtype=F64), math.sqrt(0.5), name="ref")
    assert_equivalent(rewritten, a & b, _x())
    assert_equivalent(rewritten, reference, _x(), up_to_constant=True)
    # ∫ N(x; 0, 1) N(x; 2, 1) dx = N(2; 0, 2)
    expected = -0.5 * math.log(2 * math.pi * 2) - 4.0 / 4.0
    assert float(rewritten.log_z()) == pytest.approx(expected, abs=1e-12)


def test_a_normaliser_beyond_the_floats_is_kept_exactly():
    # Regression: log Z = log N(60; 0, 2) ≈ −901 made the weight e^{log Z} round to 0,
    # and compile raised "weight must be positive"; e^{+1381} overflowed.
    a = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.full((1,), 60.0, dtype=F64), 1.0, name="b")
    for expr, expected in ((a & b, -0.5 * math.log(2 * math.pi * 2) - 3600.0 / 4.0),
                           (1e300 * (1e300 * a), 600 * math.log(10.0))):
        rewritten = eb.compile(expr, closed_form=True)
        assert float(rewritten.log_z()) == pytest.approx(expected, rel=1e-12)
        torch.testing.assert_close(rewritten.energy(_x()), expr.energy(_x()))


def test_a_mixture_component_too_light_for_the_floats_is_kept_apart():
    # Regression: a & b has mass e^{−901} next to a's 1, so its GMM weight was 0 and
    # compile raised; it also dominates far out (x = 100, where a's density is e^{−5000}).
    a = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.full((1,), 60.0, dtype=F64), 1.0, name="b")
    far = Gaussian(torch.full((1,), 100.0, dtype=F64), 1.0, name="far")
    x = torch.cat([_x(), torch.tensor([[30.0], [100.0]], dtype=F64)])
    for expr in ((a & b) | a, a | 1e-300 * (1e-300 * far)):
        rewritten = eb.compile(expr, closed_form=True)
        torch.testing.assert_close(rewritten.energy(x), expr.energy(x))
        torch.testing.assert_close(rewritten.score(x), expr.score(x))


def test_tempered_gaussian_has_variance_over_beta():
    a = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="a")
    rewritten = eb.compile(a ** 0.25, closed_form=True)
    assert_equivalent(rewritten, a ** 0.25, _x())
    samples = rewritten.sample(40000, torch.Generator().manual_seed(0)).double()
    # Var of the sample variance of 40000 normal draws with σ² = 4: 2σ⁴/n → sd 0.028.
    assert float(samples.var()) == pytest.approx(4.0, abs=4 * math.sqrt(2 * 16 / 40000))
    # ∫ N(x; 0, 1)^β dx = (2π)^{(1−β)/2} β^{−1/2}
    expected = 0.5 * (1 - 0.25) * math.log(2 * math.pi) - 0.5 * math.log(0.25)
    assert float(rewritten.log_z()) == pytest.approx(expected, abs=1e-12)


def test_weighted_mixture_of_normalised_gaussians_is_a_gmm():
    a = Gaussian(torch.full((1,), -3.0, dtype=F64), 1.0, name="a")
    b = Gaussian(torch.full((1,), 3.0, dtype=F64), 0.5, name="b")
    expr = 0.25 * a | 0.75 * b
    log_density = torch.logaddexp(
        math.log(0.25) + torch.distributions.Normal(-3.0, 1.0).log_prob(_x()[:, 0]),
        math.log(0.75) + torch.distributions.Normal(3.0, 0.5).log_prob(_x()[:, 0]))
    torch.testing.assert_close(expr.log_prob(_x()), log_density.double())
    rewritten = eb.compile(expr, closed_form=True)
    assert isinstance(rewritten.expr, GaussianMixture)
    torch.testing.assert_close(rewritten.log_prob(_x()), log_density.double())


def test_partial_rewrites_keep_non_gaussian_factors():
    a = MultivariateGaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), name="a")
    b = Gaussian(torch.ones(2, dtype=F64), 2.0, name="b")
    banana = Banana(name="banana")
    expr = (a & banana & b ** 0.5) | (a ** 2 & ~b)
    rewritten = eb.compile(expr, closed_form=True)
    assert "banana" in repr(rewritten.expr)
    assert_equivalent(rewritten, expr, 2 * torch.randn(32, 2, dtype=F64))


def test_improper_gaussian_forms_are_left_alone():
    a = Gaussian(torch.zeros(1, dtype=F64), 2.0, name="a")
    b = Gaussian(torch.zeros(1, dtype=F64), 1.0, name="b")
    expr = a & ~b  # precision 1/4 − 1 < 0: not normalisable
    rewritten = eb.compile(expr, closed_form=True)
    assert rewritten.expr is expr
    assert_equivalent(rewritten, expr, _x())
    proper = eb.compile(b & ~a, closed_form=True)  # precision 1 − 1/4: N(0, 4/3)
    assert proper.normalizer_known
    variance = float(proper.sample(40000, torch.Generator().manual_seed(1)).double().var())
    assert variance == pytest.approx(4 / 3, abs=4 * math.sqrt(2 * (4 / 3) ** 2 / 40000))
