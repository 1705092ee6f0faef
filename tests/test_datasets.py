"""Tests for ebmalgebra.datasets: toys, faces (generator, detectors, realism), digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebmalgebra.datasets import (
    bar,
    checkerboard,
    digits,
    eight_gaussians,
    faces,
    moons,
    rings,
)

TOYS = [rings, eight_gaussians, moons, checkerboard, bar]
TOY_IDS = ["rings", "eight_gaussians", "moons", "checkerboard", "bar"]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_blur(images: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """A slight 3×3 Gaussian blur, standing in for a model's smoothing of its samples."""
    taps = torch.exp(-(torch.arange(-1.0, 2.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :])[None, None]
    padded = torch.nn.functional.pad(images[:, None], (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel)[:, 0]


# -- 2-D toys ----------------------------------------------------------------


@pytest.mark.parametrize("sample", TOYS, ids=TOY_IDS)
def test_toy_shape_dtype_and_determinism(sample):
    x = sample(500, generator=seeded(3))
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sample(500, generator=seeded(3)))
    assert not torch.equal(x, sample(500, generator=seeded(4)))
    x64 = sample(7, generator=seeded(3), dtype=torch.float64, device="cpu")
    assert x64.dtype == torch.float64 and x64.device.type == "cpu"


@pytest.mark.parametrize("sample", TOYS, ids=TOY_IDS)
def test_toy_argument_errors(sample):
    with pytest.raises(ValueError, match="n must be positive"):
        sample(0)
    with pytest.raises(TypeError, match="n must be an int"):
        sample(2.5)
    with pytest.raises(TypeError, match="n must be an int"):
        sample(True)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        sample(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sample(3, generator=3)


def test_toy_parameter_errors_name_the_parameter():
    with pytest.raises(ValueError, match="noise"):
        rings(3, noise=-0.1)
    with pytest.raises(ValueError, match="radii"):
        rings(3, radii=())
    with pytest.raises(ValueError, match="radii"):
        rings(3, radii=(1.0, 0.0))
    with pytest.raises(ValueError, match="std"):
        eight_gaussians(3, std=float("nan"))
    with pytest.raises(ValueError, match="scale"):
        moons(3, scale=0.0)
    with pytest.raises(ValueError, match="squares"):
        checkerboard(3, squares=0)
    with pytest.raises(ValueError, match="half_length"):
        bar(3, half_length=-1.0)


def test_rings_lie_on_radii_with_arc_length_weights():
    x = rings(30_000, radii=(1.0, 2.0, 3.0), noise=0.05, generator=seeded())
    radius = x.norm(dim=1)
    ring = (radius.round().clamp(1, 3) - 1).long()
    # Radial noise is N(0, 0.05²); 0.3 is 6σ.
    assert (radius - (ring + 1)).abs().max() < 0.3
    # Weights r / Σr = 1/6, 2/6, 3/6; the binomial standard error at n = 30k is
    # ≤ 0.003, so 0.015 is a 5σ tolerance.
    share = ring.bincount(minlength=3) / len(x)
    assert torch.allclose(share, torch.tensor([1, 2, 3]) / 6, atol=0.015)


def test_eight_gaussians_cover_every_centre():
    centres = eight_gaussians.centers(radius=2.0)
    assert centres.shape == (8, 2)
    assert torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0))
    eighths = torch.atan2(centres[:, 1], centres[:, 0]) / (math.pi / 4)
    assert torch.allclose(eighths, eighths.round(), atol=1e-5)
    x = eight_gaussians(16_000, std=0.15, generator=seeded())
    mode = eight_gaussians.nearest_mode(x)
    assert mode.dtype == torch.int64 and mode.shape == (16_000,)
    # Each mode has 2,000 expected points with sd √(16000·⅛·⅞) ≈ 42; ±250 is 6σ.
    assert (mode.bincount(minlength=8) - 2000).abs().max() < 250
    # Squared distance to the own centre is std²·χ²₂, mean 2·0.15² = 0.045.
    spread = (x - centres[mode]).square().sum(dim=1).mean()
    assert abs(spread.item() - 0.045) < 0.003
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        eight_gaussians.nearest_mode(torch.zeros(5, 3))


def test_moons_checkerboard_and_bar_supports():
    m = moons(20_000, noise=0.0, generator=seeded())
    assert m.mean(dim=0).abs().max() < 0.05  # centred; sd of the mean ≈ 0.01
    assert m[:, 0].abs().max() <= 3.0 + 1e-5 and m[:, 1].abs().max() <= 1.5 + 1e-5

    c = checkerboard(20_000, squares=4, half_width=2.0, generator=seeded())
    assert c.abs().max() <= 2.0
    cell = ((c + 2.0) // 1.0).long().clamp(0, 3)
    assert ((cell.sum(dim=1) % 2) == 0).all()
    assert len(torch.unique(cell, dim=0)) == 8

    b = bar(20_000, half_length=3.0, std=0.15, generator=seeded())
    assert b[:, 0].abs().max() <= 3.0
    assert b[:, 0].min() < -2.9 and b[:, 0].max() > 2.9
    # The sample sd of 20k normals has relative error ≈ 0.5%; 5% is generous.
    assert abs(b[:, 1].std().item() - 0.15) < 0.0075


# -- faces: generator ----------------------------------------------------------


def test_faces_shape_dtype_range_and_determinism():
    x = faces(64, generator=seeded())
    assert x.shape == (64, *faces.image_shape) == (64, 16, 16)
    assert x.dtype == torch.float32
    clean = faces(256, noise=0.0, generator=seeded())
    assert clean.min() >= 0.0 and clean.max() <= 1.0
    assert torch.equal(x, faces(64, generator=seeded()))
    assert not torch.equal(x, faces(64, generator=seeded(1)))
    assert faces(3, dtype=torch.float64).dtype == torch.float64


def test_faces_fixed_and_random_attributes():
    x, attrs = faces(400, glasses=True, hat=False, return_attributes=True, generator=seeded())
    assert set(attrs) == {"glasses", "hat", "smile"}
    assert all(a.dtype == torch.bool and a.shape == (400,) for a in attrs.values())
    assert attrs["glasses"].all() and not attrs["hat"].any()
    # smile was left random: Bernoulli(½) over 400 faces, sd 10; 200 ± 60 is 6σ.
    assert 140 < attrs["smile"].sum() < 260
    assert faces.has_glasses(x).all() and not faces.has_hat(x).any()
    assert torch.equal(faces.has_smile(x), attrs["smile"])


@pytest.mark.parametrize("glasses, hat, smile", list(itertools.product([False, True], repeat=3)))
def test_each_attribute_combination_is_detected(glasses, hat, smile):
    x = faces(50, glasses=glasses, hat=hat, smile=smile, noise=0.06, generator=seeded())
    found = faces.attributes(x)
    assert (found["glasses"] == glasses).all()
    assert (found["hat"] == hat).all()
    assert (found["smile"] == smile).all()


@pytest.mark.parametrize("noise", [0.03, 0.06])
def test_detector_accuracy_on_generated_faces(noise):
    x, truth = faces(2000, noise=noise, return_attributes=True, generator=seeded(11))
    found = faces.attributes(x)
    for name in ("glasses", "hat", "smile"):
        accuracy = (found[name] == truth[name]).float().mean().item()
        assert accuracy >= 0.99, f"{name} accuracy {accuracy:.4f} at noise {noise}"


def test_detectors_survive_blur_contrast_changes_and_input_layouts():
    x, truth = faces(1000, noise=0.05, return_attributes=True, generator=seeded(5))
    for variant in (gaussian_blur(x), 1.2 * x - 0.1, 0.8 * x + 0.15):
        found = faces.attributes(variant)
        for name in truth:
            assert (found[name] == truth[name]).float().mean() >= 0.99, name
    flat = faces.attributes(x.reshape(1000, 256))
    channel = faces.attributes(x[:, None])
    double = faces.attributes(x.double())
    for name in truth:
        assert torch.equal(flat[name], channel[name])
        assert torch.equal(flat[name], double[name])
    assert torch.equal(faces.has_hat(x), flat["hat"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_detectors_and_realism_read_low_precision_images(dtype):
    """Read in float32: rounding to 8 (bfloat16) or 11 (float16) significant bits moves
    pixels by < 0.004, far inside the detectors' margins, so no decision changes."""
    x = faces(200, noise=0.06, generator=seeded(3))
    low = x.to(dtype)
    found, expected = faces.attributes(low), faces.attributes(x)
    for name in expected:
        assert torch.equal(found[name], expected[name]), name
    assert torch.equal(faces.has_glasses(low), expected["glasses"])
    score = faces.realism(low)
    assert score.dtype == torch.float32
    torch.testing.assert_close(score, faces.realism(x), atol=1e-3, rtol=0)
    assert torch.equal(faces.is_realistic(low), score <= faces.realism_threshold)


def test_detectors_accept_an_empty_batch():
    empty = torch.zeros(0, 16, 16)
    for detector in (faces.has_glasses, faces.has_hat, faces.has_smile, faces.is_realistic):
        found = detector(empty)
        assert found.dtype == torch.bool and found.shape == (0,), detector.__name__
    assert all(found.shape == (0,) for found in faces.attributes(empty.half()).values())
    assert faces.realism(empty).shape == (0,)


def test_faces_argument_errors():
    with pytest.raises(TypeError, match="glasses must be True, False or None"):
        faces(4, glasses=1)
    with pytest.raises(TypeError, match="hat must be True, False or None"):
        faces(4, hat="yes")
    with pytest.raises(ValueError, match="n must be positive"):
        faces(-1)
    with pytest.raises(ValueError, match="noise"):
        faces(4, noise=-0.01)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        faces(4, generator=3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 16, 16\)"):
        faces.has_glasses(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        faces.realism(torch.zeros(4, 255))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        faces.attributes([[0.0] * 256])


# -- faces: realism ------------------------------------------------------------


def test_real_faces_are_realistic():
    threshold = faces.realism_threshold
    assert 0 < threshold < 0.1
    for noise in (0.0, 0.04, 0.06):
        x = faces(1000, noise=noise, generator=seeded(21))
        rate = faces.is_realistic(x).float().mean().item()
        assert rate >= 0.98, f"pass rate {rate:.3f} at noise {noise}"
    score = faces.realism(x[:5, None])
    assert score.shape == (5,) and torch.equal(score <= threshold, faces.is_realistic(x[:5]))


def test_garbage_is_not_realistic():
    g = seeded(22)
    uniform = torch.rand(500, 16, 16, generator=g)
    constant = torch.linspace(0, 1, 11)[:, None, None].expand(11, 16, 16)
    heavy = faces(500, noise=0.3, generator=g)
    upside_down = faces(500, generator=g).flip(1)
    assert not faces.is_realistic(uniform).any()
    assert not faces.is_realistic(constant).any()
    assert not faces.is_realistic(heavy).any()
    assert faces.is_realistic(upside_down).float().mean() < 0.01
    # Detectors alone would call some noise images "glasses"; realism must not.
    assert (faces.realism(uniform) > 3 * faces.realism_threshold).all()


# -- digits --------------------------------------------------------------------


def test_digits_full_set():
    x, y = digits(return_labels=True)
    assert x.shape == (1797, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # Pixels are counts 0…16 divided by 16.
    assert torch.equal(x * 16, (x * 16).round())
    assert torch.equal(torch.unique(y), torch.arange(10))


def test_digits_classes_and_split():
    x, y = digits(classes=[0, 1, 2, 3, 4], split="train", return_labels=True)
    assert set(y.tolist()) == {0, 1, 2, 3, 4} and len(x) == len(y)
    train = digits(split="train")
    test = digits(split="test")
    assert len(train) + len(test) == 1797
    _, y_test = digits(split="test", return_labels=True)
    _, y_all = digits(return_labels=True)
    # Stratified: each class keeps ⌊count / 5⌋ test images.
    assert torch.equal(y_test.bincount(minlength=10), y_all.bincount(minlength=10) // 5)
    test_images = {tuple(img.flatten().tolist()) for img in test}
    overlap = sum(tuple(img.flatten().tolist()) in test_images for img in train)
    assert overlap < 5  # the raw data holds a handful of duplicate images
    assert torch.equal(digits(classes=7), digits(classes=[7]))
    assert torch.equal(test, digits(split="test"))
    assert digits(classes=range(3), dtype=torch.float64).dtype == torch.float64


def test_digits_argument_errors():
    with pytest.raises(ValueError, match="classes must be digits 0-9, got 10"):
        digits(classes=[3, 10])
    with pytest.raises(ValueError, match="classes must not be empty"):
        digits(classes=[])
    with pytest.raises(TypeError, match="classes must contain ints"):
        digits(classes=[1.5])
    with pytest.raises(TypeError, match="classes must be None, an int or an iterable"):
        digits(classes="3")
    with pytest.raises(ValueError, match="split must be None, 'train' or 'test'"):
        digits(split="validation")
