"""The one evaluator: its eager (autograd.grad) and functional (torch.func.vjp, what the
inductor backend traces) reverse passes give the tree walk's energy and score, including
mixtures, user operators, score-only and autograd leaves, and differentiable scores."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmalgebra as eb
from ebmalgebra import evaluator
from ebmalgebra.program import AUTOGRAD, Program
from ebmalgebra.targets import Gaussian
from ebmalgebra.testing import expressions, leaves, points

F64 = torch.float64


class Wiggle(torch.nn.Module):
    """A small network energy (score by autograd), float64."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=F64))

    def forward(self, x):
        return 0.5 * ((x - self.shift) ** 2).sum(-1) + 0.2 * torch.sin(3 * x).sum(-1)


NETWORK = eb.from_energy(Wiggle(), 2, name="net")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_eager_and_functional_reverse_passes_agree_with_the_tree_walk(data):
    pool = [data.draw(leaves((2,))) for _ in range(2)] + [NETWORK]
    expr = data.draw(expressions(st.sampled_from(pool), max_depth=3))
    x = data.draw(points((2,), batch=5, bound=3.0))
    program = Program.build(expr)
    walk_energy, walk_score = expr.energy_and_score(x)
    for functional in (False, True):
        energy, score = evaluator.energy_and_score(program, x, None, False,
                                                   functional=functional)
        torch.testing.assert_close(energy, walk_energy, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(score, walk_score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(evaluator.energy(program, x, None), walk_energy,
                               rtol=1e-9, atol=1e-9)


def test_a_leaf_used_many_times_is_one_program_leaf_with_summed_coefficients():
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    program = Program.build(a & NETWORK ** 2 & 0.5 * NETWORK)
    assert program.leaves == (a, NETWORK)
    assert program.kinds[1] == AUTOGRAD
    constant, coefficients = program.linear  # E = E_a + 2 E_net + (E_net − log 0.5)
    assert coefficients == (1.0, 3.0) and constant == -math.log(0.5)


def test_score_only_leaves_give_scores_and_no_energy():
    a = Gaussian(torch.zeros(2, dtype=F64), 1.0, name="a")
    denoiser = eb.from_score(lambda x: -2.0 * x, 2, name="denoiser")
    program = Program.build(a ** 0.5 & denoiser & NETWORK)
    x = torch.randn(4, 2, dtype=F64)
    for functional in (False, True):
        energy, score = evaluator.energy_and_score(program, x, None, False,
                                                   functional=functional)
        assert energy is None
        torch.testing.assert_close(score, 0.5 * a.score(x) - 2 * x + NETWORK.score(x))


def test_differentiable_scores_under_mixtures_match_the_tree_walk():
    a = Gaussian(torch.zeros(2, dtype=F64), 1.5, name="a")
    expr = (a | NETWORK) & NETWORK ** 0.5
    program = Program.build(expr)
    x = torch.randn(6, 2, dtype=F64, requires_grad=True)
    _, score = evaluator.energy_and_score(program, x, None, True)
    _, expected = expr.energy_and_score(x, create_graph=True)
    shift = NETWORK.module.shift
    for left, right in ((score, expected),):
        grad_left = torch.autograd.grad(left.pow(2).sum(), (x, shift), retain_graph=True)
        grad_right = torch.autograd.grad(right.pow(2).sum(), (x, shift), retain_graph=True)
        for g, h in zip(grad_left, grad_right, strict=True):
            torch.testing.assert_close(g, h)


def test_scores_are_dense_tensors_even_when_the_reverse_pass_returns_its_seed():
    # The score is one reverse pass seeded with −1 per row. For E = Σ_i x_i that pass
    # hands back the seed broadcast over the event (a stride-0 view), and for E = x on
    # scalar events the seed itself; either must come out as a fresh dense tensor that
    # samplers may update in place.
    linear = eb.from_energy(lambda x: x.sum(-1), 3, name="linear")
    identity = eb.from_energy(lambda x: x.clone(), (), name="identity")
    for model, x in ((linear, torch.randn(4, 3, dtype=F64)), (identity, torch.randn(4, dtype=F64))):
        program = Program.build(model)
        _, score = evaluator.energy_and_score(program, x, None, False)
        torch.testing.assert_close(score, -torch.ones_like(x))
        assert score.is_contiguous()
        score.add_(1.0)  # an in-place update raises on a broadcast view
        _, again = evaluator.energy_and_score(program, x, None, False)
        torch.testing.assert_close(again, -torch.ones_like(x))


def test_inference_mode_gives_the_scores_of_no_grad():
    # The reverse passes must leave inference mode, where enable_grad() records nothing:
    # over autograd leaves in products (the affine path), mixtures and the functional pass,
    # and the one for the coefficients of a non-linear node over analytic leaves alone.
    # Closed form of the network: s = −(x − shift) − 0.6 cos(3x).
    a = Gaussian(torch.zeros(2, dtype=F64), 1.5, name="a")
    b = Gaussian(torch.ones(2, dtype=F64), 0.5, name="b")
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    shift = NETWORK.module.shift.detach()
    network_score = -(x - shift) - 0.6 * torch.cos(3 * x)
    torch.testing.assert_close(NETWORK.score(x), network_score)
    for expr in (a & NETWORK ** 2, a | NETWORK, (a | NETWORK) & NETWORK ** 0.5,
                 eb.without(a, b, a | b)):
        program = Program.build(expr)
        for functional in (False, True):
            with torch.no_grad():
                expected = evaluator.energy_and_score(program, x, None, False,
                                                      functional=functional)
            with torch.inference_mode():
                found = evaluator.energy_and_score(program, x.clone(), None, False,
                                                   functional=functional)
            torch.testing.assert_close(found, expected, rtol=0, atol=0)
    with torch.inference_mode():
        _, score = evaluator.energy_and_score(Program.build(a & NETWORK ** 2), x, None, False)
    torch.testing.assert_close(score, -x / 1.5**2 + 2 * network_score)
