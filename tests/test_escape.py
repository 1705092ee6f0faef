"""ebmalgebra.samplers.escape: improper targets are flagged at run time, proper ones are not.

Every run here is seeded, so each outcome is deterministic. The margins are
wide: an improper target's chains run off by orders of magnitude (hundreds of
scales), while a chain of a proper target reaching ten times the spread of
exact starting draws is a tail event of probability far below 1e-10 for the
Gaussian-tailed targets used.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import zoo
from ebmalgebra.samplers import HMC, MALA, ULA, ImproperTargetWarning
from ebmalgebra.samplers.escape import CHECK_EVERY, improper_parts
from ebmalgebra.targets import Bar, Gaussian, Ring


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_recording(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    return result, [w for w in caught if issubclass(w.category, ImproperTargetWarning)]


# ------------------------------------------------------------------ improper_parts
def test_improper_parts_names_the_inverse_factor():
    ring, other = Ring(name="ring"), Ring(radius=1.0, name="other")
    assert [repr(p) for p in improper_parts(ring & ~other)] == ["~other"]
    assert [repr(p) for p in improper_parts(ring & other ** -2 & ~ring)] == [
        "other ** -2", "~ring"]
    assert improper_parts(ring & Bar(name="bar")) == []


def test_improper_parts_prefers_a_gaussian_with_an_indefinite_precision():
    # Precisions 1 − 4 = −3 < 0: the Gaussian part is improper as a whole.
    narrow, wide = Gaussian(torch.zeros(2), 0.5, name="narrow"), Gaussian(torch.zeros(2), 1.0,
                                                                          name="wide")
    parts = improper_parts(eb.compile(Ring(name="ring") | (wide & ~narrow)))
    assert [repr(p) for p in parts] == ["wide & ~narrow"]


# ------------------------------------------------------------------- sample()
@pytest.mark.parametrize("sampler", [MALA(step_size=0.05), ULA(step_size=0.01)],
                         ids=["MALA", "ULA"])
def test_an_improper_expression_warns_once_naming_its_inverse(sampler):
    model = Ring(name="ring") & ~Ring(radius=1.0, name="inner")
    samples, caught = run_recording(lambda: eb.sample(
        model, sampler, n_chains=64, n_steps=4 * CHECK_EVERY, generator=seeded()))
    assert len(caught) == 1  # once, although every later check would fire too
    message = str(caught[0].message)
    assert message.startswith("sample: ") and "~inner" in message and "ring & ~inner" in message
    assert samples.draws[-1].abs().max() > 10 * 3  # the symptom the warning reports


def test_a_proper_gaussian_target_with_an_inverse_is_not_flagged():
    # ring & ~N(0, 2²): the ring's steep energy dominates, the product is proper.
    model = Ring(name="ring") & ~Gaussian(torch.zeros(2), 2.0, name="g")
    _, caught = run_recording(lambda: eb.sample(model, MALA(step_size=0.05), n_chains=64,
                                                n_steps=4 * CHECK_EVERY, generator=seeded()))
    assert caught == []


@pytest.mark.parametrize("sampler", [MALA(step_size=0.1), HMC(step_size=0.2),
                                     ULA(step_size=0.01)], ids=["MALA", "HMC", "ULA"])
@pytest.mark.parametrize("model", [
    Gaussian(torch.tensor([3.0, -1.0]), 0.5, name="g"),
    Ring(name="ring") & Bar(name="bar"),
    0.5 * Gaussian(torch.full((2,), -4.0), 1.0, name="a") | 0.5 * Gaussian(
        torch.full((2,), 4.0), 1.0, name="b"),
], ids=["gaussian", "product", "mixture"])
def test_proper_models_do_not_warn(sampler, model):
    _, caught = run_recording(lambda: eb.sample(model, sampler, n_chains=32, n_steps=200,
                                                warmup=100, generator=seeded(1)))
    assert caught == []


def test_chains_started_at_one_point_away_from_the_origin_are_not_flagged():
    # x0 has no spread; the target N(0, 2²) lies 5 away, so chains travel |x − 5| ≈ 5 + 3·2.
    model = Gaussian(torch.zeros(1), 2.0, name="g")
    samples, caught = run_recording(lambda: eb.sample(
        model, MALA(step_size=1.0), x0=torch.full((64, 1), 5.0), n_steps=300,
        generator=seeded()))
    assert (samples.draws - 5.0).abs().max() > 10  # beyond 10× a unit scale
    assert caught == []


def test_a_proper_target_wider_than_the_start_is_not_called_improper():
    # N(0, 10²), unnormalised, from starts of spread ~0.3: the chains pass 10× that and
    # the watch fires, but with no inverse in the model it must not say the draws are
    # garbage.
    model = eb.from_energy(lambda x: 0.005 * x.square().sum(-1), 2, name="wide")
    _, caught = run_recording(lambda: eb.sample(
        model, MALA(step_size=20.0), x0=0.1 * torch.randn(32, 2, generator=seeded()),
        n_steps=CHECK_EVERY, generator=seeded()))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "far wider than the starting points (then the draws are fine" in message
    assert "not samples of a distribution" not in message
    improper = Ring(name="ring") & ~Ring(radius=1.0, name="inner")
    _, caught = run_recording(lambda: eb.sample(improper, MALA(step_size=0.05), n_chains=64,
                                                n_steps=4 * CHECK_EVERY, generator=seeded()))
    assert "The draws are not samples of a distribution" in str(caught[0].message)


def test_normalised_models_under_exact_kernels_are_not_watched():
    # Regression: a Beta(0.5, 0.5), sampled on its logit scale, whose heavy tails reach
    # |u| ≈ 10, was called improper, quoting unconstrained coordinates. A normalised
    # target under an exactly invariant kernel cannot run away.
    beta = eb.from_distribution(torch.distributions.Beta(torch.tensor(0.5), torch.tensor(0.5)))
    samples, caught = run_recording(lambda: eb.sample(
        beta, MALA(step_size=2.0), x0=torch.full((400,), 0.5), n_steps=4 * CHECK_EVERY,
        generator=seeded()))
    assert caught == []
    # The chains started at u = 0 (limit 10 × unit scale) and passed it at a checked step.
    checked = samples.unconstrained_draws[CHECK_EVERY - 1::CHECK_EVERY]
    assert checked.abs().amax() > 10.0
    wide = Gaussian(torch.zeros(2), 10.0, name="wide")  # normalised: ULA is still watched
    _, caught = run_recording(lambda: eb.sample(
        wide, ULA(step_size=30.0), x0=0.1 * torch.randn(32, 2, generator=seeded()),
        n_steps=CHECK_EVERY, generator=seeded()))
    assert len(caught) == 1


def test_the_last_step_is_checked_in_runs_shorter_than_the_check_interval():
    model = ~Gaussian(torch.zeros(2), 1.0, name="g")  # E = −‖x‖²/2: ULA grows x by 1 + ε
    _, caught = run_recording(lambda: eb.sample(
        model, ULA(step_size=0.5), x0=torch.randn(8, 2, generator=seeded()),
        n_steps=CHECK_EVERY // 2, generator=seeded()))
    assert len(caught) == 1 and "~g" in str(caught[0].message)


# --------------------------------------------------------------------- zoo.draw
def test_zoo_draw_of_an_inverse_warns_against_the_card_scale():
    ring = zoo.load("ring")
    positions, caught = run_recording(lambda: zoo.draw(ring ** -1, 16, generator=seeded()))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("zoo.draw: ") and "~ring" in message
    assert positions.abs().max() > 10 * zoo.card("ring")["data_scale"]


def test_zoo_draw_of_proper_compositions_does_not_warn():
    models = zoo.models()
    for text in ("ring", "ring & bar", "0.3 * left | 0.7 * right"):
        _, caught = run_recording(lambda t=text: zoo.draw(zoo.parse(t, models), 16,
                                                          generator=seeded()))
        assert caught == [], text


def test_an_unstable_step_on_a_proper_target_is_reported_as_such():
    # ULA on N(0, 1) with ε = 3: x' = x − 3x + √6 ξ = −2x + …, so |x| doubles per step.
    model = Gaussian(torch.zeros(2), 1.0, name="g")
    _, caught = run_recording(lambda: eb.sample(
        model, ULA(step_size=3.0), x0=torch.randn(16, 2, generator=seeded()),
        n_steps=CHECK_EVERY, generator=seeded()))
    assert len(caught) == 1
    assert "no inverse or negative power" in str(caught[0].message)
    assert "step size may be too large" in str(caught[0].message)


def test_scalar_event_models_are_checked_too():
    # Positions of a model with event_shape () are (n_chains,): the check once
    # failed on them with an IndexError instead of warning.
    from ebmalgebra.samplers.escape import check_final

    leaf = eb.from_distribution(torch.distributions.Normal(0.0, 1.0), name="scalar")
    with pytest.warns(ImproperTargetWarning):
        assert check_final(leaf, torch.tensor([0.5, 100.0]), scale=1.0)
