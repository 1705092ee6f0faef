"""Leaves from callables, modules, score functions and torch distributions."""

import math

import pytest
import torch
from torch import distributions as D

import ebmalgebra as eb
from ebmalgebra import CapabilityError, CompositionError
from ebmalgebra.samplers import HMC, MALA

F64 = torch.float64


def test_from_energy_module_registers_parameters_and_scores_by_autograd():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    leaf = eb.from_energy(net.double(), event_shape=3, name="net")
    x = torch.randn(7, 3, dtype=F64)
    energy, score = leaf.energy_and_score(x)
    assert energy.shape == (7,)  # (batch, 1) outputs are squeezed
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(xg).sum(), xg)
    torch.testing.assert_close(score, -grad)
    assert {id(p) for p in leaf.parameters()} == {id(p) for p in net.parameters()}
    assert not leaf.normalizer_known and not leaf.can_sample


def test_a_module_leaf_fed_another_dtype_names_itself_and_the_fix():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    leaf = eb.from_energy(net, event_shape=2, name="net")
    expr = eb.targets.Gaussian(torch.zeros(2), 1.0, name="g") & leaf
    x64 = torch.randn(3, 2, dtype=F64)
    with pytest.raises(CompositionError, match=r"^net has torch.float32 parameters on cpu but "
                                               r"x is torch.float64 on cpu; move the model"):
        eb.compile(expr).energy_and_score(x64)
    expr.to(F64)  # networks compute in their parameters' dtype: moving them is the fix
    assert eb.compile(expr).energy(x64).dtype == F64


def test_a_parameter_free_module_keeps_its_own_runtime_error():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("the module's own failure")

    with pytest.raises(RuntimeError, match="^the module's own failure$"):
        eb.from_energy(Broken(), event_shape=2, name="broken").energy(torch.zeros(3, 2))


def test_from_energy_with_known_log_z_supports_log_prob():
    quad = eb.from_energy(lambda x: 0.5 * (x**2).sum(-1), 2, name="quad",
                          log_z=torch.log(torch.tensor(2 * torch.pi)))
    x = torch.randn(4, 2, dtype=F64)
    torch.testing.assert_close(quad.log_prob(x), D.Normal(0.0, 1.0).log_prob(x).sum(-1))


def test_from_log_prob_flips_the_sign():
    normal = D.Independent(D.Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1)
    leaf = eb.from_log_prob(normal.log_prob, 2, name="lp", normalized=True)
    x = torch.randn(4, 2, dtype=F64)
    torch.testing.assert_close(leaf.energy(x), -normal.log_prob(x))
    torch.testing.assert_close(leaf.score(x), -x)
    torch.testing.assert_close(leaf.log_prob(x), normal.log_prob(x))


def test_from_score_is_score_only():
    leaf = eb.from_score(lambda x: -x, 2, name="s")
    x = torch.randn(4, 2)
    torch.testing.assert_close(leaf.score(x), -x)
    with pytest.raises(CapabilityError, match="'s' is score-only"):
        leaf.energy(x)
    bad = eb.from_score(lambda x: x[:, 0], 2, name="bad")
    with pytest.raises(CompositionError, match="shaped like x"):
        bad.score(x)


def test_from_distribution_is_normalised_and_samples_reproducibly():
    mvn = D.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.5, 2.0]]))
    leaf = eb.from_distribution(mvn, name="mvn")
    x = torch.randn(5, 2)
    torch.testing.assert_close(leaf.log_prob(x), mvn.log_prob(x))
    first = leaf.sample(10, torch.Generator().manual_seed(4))
    second = leaf.sample(10, torch.Generator().manual_seed(4))
    assert torch.equal(first, second) and first.shape == (10, 2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    leaf.sample(3, torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    mixture = 0.5 * leaf | 0.5 * eb.targets.Ring(name="ring")
    assert mixture.can_sample and mixture.sample(6).shape == (6, 2)


def test_a_point_outside_a_distributions_support_has_infinite_energy():
    gamma = D.Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    leaf = eb.from_distribution(gamma, name="rate")
    x = torch.tensor([-3.0, -1e-12, 0.5, 4.0], dtype=F64)
    energy, score = leaf.energy_and_score(x)
    assert torch.equal(energy[:2], torch.full((2,), torch.inf, dtype=F64))
    assert torch.equal(score[:2], torch.zeros(2, dtype=F64))  # finite: nothing to propagate
    # Inside: E = −log p = −log(x e^{−x}) for Gamma(2, 1), s = 1 − 1/x.
    inside = x[2:]
    torch.testing.assert_close(energy[2:], inside - inside.log())
    torch.testing.assert_close(score[2:], 1.0 / inside - 1.0)
    # Event-shaped supports are checked per sample: the simplex of a Dirichlet.
    simplex = eb.from_distribution(D.Dirichlet(torch.ones(3, dtype=F64)), name="simplex")
    points = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.6, -0.1]], dtype=F64)
    torch.testing.assert_close(simplex.energy(points),
                               torch.tensor([-math.log(2.0), math.inf], dtype=F64))
    assert simplex.energy(points[:0]).shape == (0,) and leaf.energy(x[:0]).shape == (0,)


@pytest.mark.parametrize("sampler", [MALA(step_size=1.0), HMC(step_size=1.0, n_leapfrog=4)],
                         ids=["MALA", "HMC"])
def test_samplers_reject_and_count_proposals_outside_the_support(sampler):
    # Steps of 1 near x ≈ 1 leave (0, ∞) often; those proposals are rejected, not raised.
    gamma = D.Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    leaf = eb.from_distribution(gamma, name="rate")
    # unconstrain=False: sample on (0, ∞) itself, not on log x (tests/test_constraints.py).
    out = eb.sample(leaf, sampler, x0=torch.ones(64, dtype=F64), n_steps=300, warmup=0,
                    generator=torch.Generator().manual_seed(0), progress=False,
                    unconstrain=False)
    assert (out.draws > 0).all()
    assert int(out.n_nonfinite.sum()) > 0
    # Gamma(2, 1) has mean 2 and sd √2; z ≤ 4 with the ESS-based standard error.
    standard_error = math.sqrt(2.0 / float(out.ess()))
    assert abs(float(out.draws.mean()) - 2.0) < 4 * standard_error


def test_checked_values_skip_torchs_validation_with_the_same_energies(monkeypatch):
    # The leaf checks the support itself; torch's validation of the same values (by the
    # Independent's Gamma) is skipped, on copies: the user's distribution keeps validating.
    # validate_args is explicit: once torch.compile has run in the process (a test's own
    # call, not ebmalgebra's, which restores it), dynamo sets torch's global default to
    # False (TorchPatcher.patch).
    gamma = D.Independent(D.Gamma(torch.full((3,), 2.0, dtype=F64),
                                  torch.full((3,), 3.0, dtype=F64), validate_args=True),
                          1, validate_args=True)
    leaf = eb.from_distribution(gamma, name="rates")
    x = torch.tensor([[0.5, 1.0, 2.0], [0.1, 0.2, 0.3], [-1.0, 1.0, 1.0]], dtype=F64)
    validated = []
    original = D.Distribution._validate_sample
    monkeypatch.setattr(D.Distribution, "_validate_sample",
                        lambda self, value: validated.append(type(self)) or original(self, value))
    energy = leaf.energy(x)
    assert validated == []
    # Gamma(2, 3): log p(x) = log 9 + log x − 3x per coordinate.
    inside = x[:2]
    expected = -(math.log(9.0) + inside.log() - 3 * inside).sum(-1)
    torch.testing.assert_close(energy[:2], expected)
    assert energy[2] == math.inf
    assert gamma._validate_args and gamma.base_dist._validate_args
    with pytest.raises(ValueError):
        gamma.log_prob(x)  # the user's distribution still validates…
    assert validated == [D.Gamma]
    # … and a new distribution object is not served by the old copy.
    leaf.distribution = D.Independent(D.Gamma(torch.full((3,), 2.0, dtype=F64),
                                               torch.full((3,), 1.0, dtype=F64)), 1)
    torch.testing.assert_close(leaf.energy(x[:1]), -(-inside[0] + inside[0].log()).sum(-1,
                                                                                    True))


def _shifted_log_normal(dtype):
    def tensor(value):
        return torch.tensor(value).to(dtype)
    # An inverse transform: in torch 2.13 a transform and its inverse refer to each other.
    transforms = [D.AffineTransform(tensor(0.5), tensor(2.0)).inv, D.ExpTransform()]
    return D.TransformedDistribution(D.Normal(tensor(0.1), tensor(1.3)), transforms)


def test_converting_a_distribution_leaf_converts_its_distribution():
    # Regression: the distribution is not a module, so .double() / .to(dtype) left its
    # tensors (and the default start of a sampling run) in float32.
    user_distribution = _shifted_log_normal(torch.float32)
    model = eb.from_distribution(user_distribution) & eb.from_energy(
        lambda x: 0.01 * x.square(), event_shape=())
    model.to(torch.float64)
    leaf = model.operands()[0]
    x = torch.tensor([1.5, 0.3, 4.0], dtype=torch.float64)
    expected = -_shifted_log_normal(torch.float64).log_prob(x)
    assert torch.equal(leaf.energy(x), expected)
    assert leaf.distribution.transforms[0].inv.loc.dtype == torch.float64
    assert user_distribution.base_dist.loc.dtype == torch.float32  # the user's is not changed
    samples = eb.sample(model, MALA(step_size=0.1), n_chains=3, n_steps=2,
                        generator=torch.Generator().manual_seed(0))
    assert samples.draws.dtype == torch.float64


def test_an_error_of_a_distributions_log_prob_names_the_leaf():
    class Picky(D.Normal):
        def log_prob(self, value):
            raise ValueError("picky about its values")

    leaf = eb.from_distribution(Picky(torch.tensor(0.0), torch.tensor(1.0)), name="picky")
    with pytest.raises(ValueError, match="^picky: picky about its values"):
        leaf.energy(torch.zeros(3))


@pytest.mark.parametrize("build,match", [
    (lambda: eb.from_distribution(D.Normal(torch.zeros(3), 1.0)), "empty batch_shape"),
    (lambda: eb.from_distribution("normal"), "Distribution"),
    (lambda: eb.from_energy(3.0, 2), "callable"),
    (lambda: eb.from_energy(lambda x: x, (2, "a")), "event_shape"),
    (lambda: eb.from_energy(lambda x: x, 2, name=""), "name"),
    (lambda: eb.from_energy(lambda x: x, 2, log_z=float("nan")), "log_z"),
])
def test_bad_leaf_arguments(build, match):
    with pytest.raises(CompositionError, match=match):
        build()


def test_energy_functions_must_return_one_value_per_sample():
    leaf = eb.from_energy(lambda x: x, 2, name="wrong")
    with pytest.raises(CompositionError, match=r"'wrong'|wrong: the function must return one"):
        leaf.energy(torch.zeros(4, 2))


def test_one_is_shape_free():
    x = torch.randn(3, 5)
    assert torch.equal(eb.one.energy(x), torch.zeros(3))
    assert torch.equal(eb.one.score(x), torch.zeros(3, 5))
    with pytest.raises(CapabilityError, match="identity"):
        eb.one.log_z()


def test_autograd_scores_are_exact_under_inference_mode():
    # torch.enable_grad() does not lift inference mode, which used to make every autograd
    # score silently zero there. Closed forms: E = ½‖x‖² has s = −x, and the N(1, 2²)
    # log-density has s = −(x − 1)/4.
    quadratic = eb.from_energy(lambda x: 0.5 * (x**2).sum(-1), 2, name="q")
    normal = eb.from_distribution(D.Independent(D.Normal(torch.ones(2, dtype=F64),
                                                         2 * torch.ones(2, dtype=F64)), 1))
    constant = eb.from_energy(lambda x: x.new_full((x.shape[0],), 3.0), 2, name="c")
    outside = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    with torch.inference_mode():
        x = outside.clone()  # an inference tensor, which autograd cannot save for backward
        for points in (x, outside):
            energy, score = quadratic.energy_and_score(points)
            torch.testing.assert_close(score, -outside)
            torch.testing.assert_close(energy, 0.5 * (outside**2).sum(-1))
            torch.testing.assert_close(quadratic.score(points), -outside)
            torch.testing.assert_close(normal.score(points), -(outside - 1.0) / 4.0)
        assert torch.equal(constant.score(x), torch.zeros_like(x))
        torch.testing.assert_close(x + quadratic.score(x), torch.zeros_like(x))  # usable here


@pytest.mark.parametrize("distribution", [
    D.Independent(D.Normal(torch.zeros(3, dtype=F64), 1.0), 1),
    D.Dirichlet(torch.ones(3, dtype=F64)),
    D.Gamma(torch.tensor(2.0, dtype=F64), 1.0),
], ids=["independent", "dirichlet", "gamma"])
def test_distribution_leaves_take_empty_batches(distribution):
    # torch's event-dim sums and support checks cannot reshape a batch of none.
    model = eb.from_distribution(distribution)
    x = torch.zeros(0, *distribution.event_shape, dtype=F64)
    energy, score = model.energy_and_score(x)
    assert energy.shape == (0,) and energy.dtype == F64
    assert score.shape == x.shape
    assert model.energy(x).shape == (0,) and model.score(x).shape == x.shape
