"""A user-defined operator, written here and nowhere in the library, works everywhere:
compile (agreeing with the tree walk and with closed forms), MALA and HMC, save/load after
one registration line, explain(), and ebmalgebra.testing."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmalgebra as eb
from ebmalgebra.diagnostics import ess, mcse_mean
from ebmalgebra.expression_parser import parse_expression
from ebmalgebra.io import register_operator
from ebmalgebra.samplers import HMC, MALA
from ebmalgebra.targets import MultivariateGaussian
from ebmalgebra.testing import assert_equivalent, points

F64 = torch.float64
Z_MAX = 4.0


@register_operator("test_extending.smin")
class SoftMin(eb.Operator):
    """smin(a, b; τ): E = −τ log(e^{−E_a/τ} + e^{−E_b/τ})."""

    symbol = "smin"

    def __init__(self, a: eb.EnergyModel, b: eb.EnergyModel, tau: float = 1.0) -> None:
        super().__init__(a, b)
        self.tau = float(tau)

    def params(self) -> dict:
        return {"tau": self.tau}

    def combine(self, energies: list[torch.Tensor]) -> torch.Tensor:
        return -self.tau * torch.logsumexp(-torch.stack(energies) / self.tau, dim=0)


@st.composite
def gaussians(draw):
    """(leaf, mean, covariance) with a well-conditioned random covariance."""
    values = st.floats(-1.0, 1.0, allow_nan=False)
    mean = torch.tensor(draw(st.lists(values, min_size=2, max_size=2)), dtype=F64)
    factor = torch.tensor(draw(st.lists(values, min_size=4, max_size=4)), dtype=F64)
    covariance = factor.reshape(2, 2) @ factor.reshape(2, 2).T + 0.5 * torch.eye(2, dtype=F64)
    return MultivariateGaussian(mean, covariance, name=f"g{draw(st.integers(0, 99))}"), \
        mean, covariance


def gaussian_energy_and_score(mean, covariance, x):
    """−log N(x; μ, Σ) and −Σ⁻¹(x − μ), straight from the density."""
    diff = x - mean
    precision = torch.linalg.inv(covariance)
    _, logdet = torch.linalg.slogdet(covariance)
    energy = 0.5 * ((diff @ precision) * diff).sum(-1) + 0.5 * logdet + math.log(2 * math.pi)
    return energy, -diff @ precision


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(gaussians(), gaussians(), gaussians(), st.floats(0.2, 3.0), st.floats(0.3, 2.0),
       points((2,), batch=6, bound=3.0))
def test_compiled_soft_minimum_matches_the_tree_walk_and_the_closed_form(
        first, second, third, tau, beta, x):
    (a, mean_a, cov_a), (b, mean_b, cov_b), (c, mean_c, cov_c) = first, second, third
    expr = SoftMin(a, b, tau) ** beta & c
    energy_a, score_a = gaussian_energy_and_score(mean_a, cov_a, x)
    energy_b, score_b = gaussian_energy_and_score(mean_b, cov_b, x)
    energy_c, score_c = gaussian_energy_and_score(mean_c, cov_c, x)
    # Ground truth by hand: softmin weights w = softmax(−E/τ), ∂smin/∂E_i = w_i.
    logits = torch.stack([-energy_a / tau, -energy_b / tau])
    smin = -tau * torch.logsumexp(logits, 0)
    weights = torch.softmax(logits, 0)
    energy = beta * smin + energy_c
    score = beta * (weights[0, :, None] * score_a + weights[1, :, None] * score_b) + score_c
    for model in (expr, eb.compile(expr)):
        got_energy, got_score = model.energy_and_score(x)
        torch.testing.assert_close(got_energy, energy, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_score, score, rtol=1e-9, atol=1e-9)
    assert_equivalent(eb.compile(expr), expr, x)


def two_bumps(tau: float = 1.0) -> eb.EnergyModel:
    """smin at τ = 1 of two normalised unit Gaussians at (∓1, 0) is their plain mixture:
    mean 0, variances (1 + 1, 1)."""
    a = eb.targets.Gaussian(torch.tensor([-1.0, 0.0], dtype=F64), 1.0, name="a")
    b = eb.targets.Gaussian(torch.tensor([1.0, 0.0], dtype=F64), 1.0, name="b")
    return SoftMin(a, b, tau)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [MALA(step_size=0.5), HMC(step_size=0.4)],
                         ids=["mala", "hmc"])
def test_soft_minimum_samples_with_mala_and_hmc(sampler):
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(128, 2, generator=generator, dtype=F64)
    run = eb.sample(two_bumps(), sampler, x0=x0, n_steps=300, warmup=200,
                    generator=generator, progress=False)
    draws = run.draws
    mean, variance = torch.zeros(2, dtype=F64), torch.tensor([2.0, 1.0], dtype=F64)
    for values, truth in ((draws, mean), ((draws - mean) ** 2, variance)):
        # z ≤ 4 with the ESS-based Monte-Carlo standard error of the mean.
        assert (ess(values, kind="mean") >= 100).all()
        z = (values.double().mean((0, 1)) - truth) / mcse_mean(values)
        assert z.abs().max() <= Z_MAX, z


def test_soft_minimum_saves_and_loads_after_registration(tmp_path):
    expr = 0.5 * two_bumps(0.7) ** 2 | eb.targets.Ring(name="r")
    eb.save(expr, tmp_path / "smin.safetensors")
    loaded = eb.load(tmp_path / "smin.safetensors")
    assert repr(loaded) == repr(expr) == "0.5 * smin(a, b, tau=0.7) ** 2 | r"
    x = torch.randn(7, 2, dtype=F64)
    assert_equivalent(loaded, expr, x)


def test_soft_minimum_parses_by_its_printed_name_after_registration():
    a, b = two_bumps().operands()
    ring = eb.targets.Ring(name="r")
    expr = parse_expression("smin(a, b, tau=0.7) ** 2 & r", {"a": a, "b": b, "r": ring})
    assert repr(expr) == "smin(a, b, tau=0.7) ** 2 & r"
    x = torch.randn(7, 2, dtype=F64)
    # −τ log(e^{−E_a/τ} + e^{−E_b/τ}) by hand, squared-tempered, plus the ring.
    smin = -0.7 * torch.logaddexp(-a.energy(x) / 0.7, -b.energy(x) / 0.7)
    torch.testing.assert_close(expr.energy(x), 2 * smin + ring.energy(x))


def test_unregistered_operators_say_how_to_register(tmp_path):
    class Unregistered(SoftMin):
        symbol = "other"

    with pytest.raises(eb.SerializationError, match="register_operator"):
        eb.save(Unregistered(*two_bumps().operands()), tmp_path / "x.safetensors")


def test_soft_minimum_appears_in_explain_and_the_program():
    expr = eb.compile(two_bumps(0.5) & eb.targets.Ring(name="r"))
    text = expr.explain()
    assert "smin(a, b, tau=0.5) & r" in text and "\n    smin(a, b, tau=0.5)  [energy, score]" \
        in text
    assert eb.program.format_program(expr) == "E(x) = smin(E_a, E_b) + E_r"


def test_two_soft_minima_of_the_same_children_stay_apart_in_the_program():
    a, b = two_bumps().operands()
    expr = SoftMin(a, b, 1.0) & SoftMin(a, b, 0.25) ** 2
    x = torch.randn(5, 2, dtype=F64)
    by_hand = SoftMin(a, b, 1.0).energy(x) + 2 * SoftMin(a, b, 0.25).energy(x)
    torch.testing.assert_close(eb.compile(expr).energy(x), by_hand)
    assert_equivalent(eb.compile(expr), expr, x)


def test_soft_minimum_is_a_frozen_canonical_node():
    node = two_bumps()
    with pytest.raises(AttributeError, match="immutable"):
        node.tau = 2.0
    assert type(node)(*node.args).structure() == node.structure()
    assert not node.normalizer_known and not node.can_sample
    with pytest.raises(eb.CapabilityError, match="smin"):
        node.log_z()


def test_the_python_blocks_of_docs_extending_run():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    # The documentation test runs these blocks too: the same module name makes this
    # run a redefinition of its classes, as a notebook cell run twice would be.
    namespace: dict = {"__name__": "__doc_snippet__"}
    exec(compile("\n".join(blocks), "docs/extending.md", "exec"), namespace)  # noqa: S102
    assert repr(namespace["soft"]) == "smin(a, b, tau=0.5)"
