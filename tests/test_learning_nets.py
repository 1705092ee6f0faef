"""Energy networks: shapes, noise conditioning, wrapping into leaves."""

import math

import pytest
import torch

from ebmalgebra import CompositionError, compile, targets
from ebmalgebra.learning import (
    ConvEnergy,
    DenoiserEnergy,
    GaussianEnergy,
    MLPEnergy,
    ResidualMLPDenoiser,
    as_model,
)


@pytest.mark.parametrize(
    ("net", "x"),
    [
        (MLPEnergy(3, hidden=(8, 8)), torch.randn(5, 3)),
        (MLPEnergy((4, 4), hidden=(8,)), torch.randn(5, 4, 4)),
        (ConvEnergy((16, 16), channels=(4, 8)), torch.randn(5, 16, 16)),
        (ConvEnergy((2, 8, 8), channels=(4,)), torch.randn(5, 2, 8, 8)),
        (GaussianEnergy(3), torch.randn(5, 3)),
    ],
)
def test_energy_networks_map_batches_to_one_energy_each(net, x):
    assert net(x).shape == (5,)
    model = as_model(net, name="net")
    assert model.energy(x).shape == (5,)
    assert model.score(x).shape == x.shape
    assert set(model.parameters()) == set(net.parameters())


@pytest.mark.parametrize(
    "net",
    [
        MLPEnergy(4, hidden=(8,), noise_conditioned=True),
        ConvEnergy((8, 8), channels=(4,), noise_conditioned=True),
        DenoiserEnergy(ResidualMLPDenoiser((2, 2), width=16, depth=2)),
    ],
)
def test_noise_conditioned_networks_take_scalar_or_per_sample_sigma(net):
    x = torch.randn(3, *net.event_shape)
    per_sample = net(x, torch.tensor([0.1, 0.1, 0.1]))
    torch.testing.assert_close(net(x, 0.1), per_sample)
    assert not torch.allclose(net(x, 0.1), net(x, torch.tensor([0.1, 1.0, 0.1])))
    with pytest.raises(CompositionError, match="noise-conditioned"):
        net(x)
    with pytest.raises(CompositionError, match=r"sigma must be a scalar or shaped \(3,\)"):
        net(x, torch.ones(2))
    # Numbers are checked; tensor values are not (that would synchronise on every call).
    for bad in (0.0, -0.5, float("nan"), math.inf):
        with pytest.raises(ValueError, match="sigma must be positive and finite"):
            net(x, bad)
    model = as_model(net, name="noisy")
    assert model.energy(x, 0.5).shape == (3,)
    assert model.score(x, torch.full((3,), 0.5)).shape == x.shape
    with pytest.raises(CompositionError, match="^noisy is noise-conditioned: give a noise level"):
        (model & model ** 2).energy(x)
    with pytest.raises(ValueError, match="^noisy: .*sigma must be positive"):
        model.energy(x, 0.0)


def test_networks_reject_wrong_shapes_with_the_expected_one():
    with pytest.raises(CompositionError, match=r"\(batch, 16, 16\).*\(2, 256\)"):
        ConvEnergy((16, 16))(torch.zeros(2, 256))
    model = as_model(MLPEnergy(2), name="density")
    with pytest.raises(CompositionError, match="event_shape"):
        model.energy(torch.zeros(4, 3))


def test_gaussian_energy_has_the_score_of_a_gaussian():
    loc = torch.tensor([1.0, -1.0])
    scale_tril = torch.tensor([[1.0, 0.0], [0.3, 0.5]])
    net = GaussianEnergy(2, loc=loc, scale_tril=scale_tril)
    reference = targets.MultivariateGaussian(loc, scale_tril=scale_tril)
    x = torch.randn(6, 2)
    torch.testing.assert_close(as_model(net, name="g").score(x), reference.score(x))
    torch.testing.assert_close(net.covariance().detach(), scale_tril @ scale_tril.T)


def test_denoiser_energy_is_nonnegative_and_starts_as_a_gaussian_prior():
    # Zero-initialised output: D = c_skip x, so E = ‖(1 − c_skip) x‖²/(2σ²)
    # = ‖x‖²/(2(σ² + σ_d²)) · σ²/(σ² + σ_d²), the energy of N(0, (σ² + σ_d²) I)
    # up to the factor σ²/(σ² + σ_d²).
    net = DenoiserEnergy(ResidualMLPDenoiser(3, width=8, depth=1, sigma_data=0.5))
    x, sigma = torch.randn(4, 3), 0.7
    variance = sigma**2 + 0.25
    expected = x.square().sum(1) * sigma**2 / (2 * variance**2)
    torch.testing.assert_close(net(x, sigma), expected)


def test_wrapped_networks_compose_and_compile():
    glasses = as_model(DenoiserEnergy(ResidualMLPDenoiser((4, 4), width=8, depth=1)),
                       name="glasses")
    hat = as_model(DenoiserEnergy(ResidualMLPDenoiser((4, 4), width=8, depth=1)), name="hat")
    expr = glasses & hat ** 0.5
    assert repr(expr) == "glasses & hat ** 0.5"
    x = torch.randn(3, 4, 4)
    expected = glasses.energy(x, 0.3) + 0.5 * hat.energy(x, 0.3)
    torch.testing.assert_close(compile(expr).energy(x, 0.3), expected)


def test_as_model_requires_an_event_shape():
    with pytest.raises(TypeError, match="from_energy"):
        as_model(torch.nn.Linear(2, 1), name="linear")


def test_gaussian_energy_rejects_a_scale_tril_that_is_not_a_cholesky_factor():
    # The upper triangle used to be dropped silently, training from covariance I.
    with pytest.raises(ValueError, match=r"lower triangular.*scale_tril\[0, 1\] = 5.0"):
        GaussianEnergy(2, scale_tril=[[1.0, 5.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="positive diagonal"):
        GaussianEnergy(2, scale_tril=[[1.0, 0.0], [0.5, -1.0]])
    with pytest.raises(ValueError, match="finite"):
        GaussianEnergy(2, loc=[0.0, float("nan")])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GaussianEnergy(True), "dim must be a positive int, got True"),
        (lambda: MLPEnergy(2, hidden=(True,)), r"hidden must be .* positive ints, got \(True,\)"),
        (lambda: MLPEnergy(0), r"event_shape must have positive dimensions, got \(0,\)"),
        (lambda: MLPEnergy((4, 0)), r"event_shape must have positive dimensions, got \(4, 0\)"),
        (lambda: MLPEnergy(True), "event_shape must be an int or a sequence of ints"),
        (lambda: ConvEnergy((0, 8)), r"image_shape must have positive dimensions"),
        (lambda: ResidualMLPDenoiser(0), "event_shape must have positive dimensions"),
    ],
)
def test_networks_reject_bool_and_empty_sizes_naming_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()
