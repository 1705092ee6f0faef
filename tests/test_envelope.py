"""The ball envelope: its energy, score and closed-form log Z, files, and what it cures."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra.envelope import BallEnvelope, enclosing_ball
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError
from ebmalgebra.samplers import SMC
from ebmalgebra.testing import assert_score_is_gradient

F64 = torch.float64


def _seed(value: int) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def _points_at_distances(center: torch.Tensor, distances: torch.Tensor,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Points c + r·u with random unit vectors u ``(n, *shape)``, and the u."""
    directions = torch.randn(len(distances), *center.shape, generator=generator, dtype=F64)
    directions = directions / directions.flatten(1).norm(dim=1).reshape(-1, *(1,) * center.dim())
    return center + distances.reshape(-1, *(1,) * center.dim()) * directions, directions


@pytest.mark.parametrize("noise_width", [0.0, 2.5])
def test_energy_and_score_by_construction_inside_and_outside(noise_width):
    """At x = c + (R + wσ + u) v with ‖v‖ = 1: E = u₊²/(2σ²) and s = −u₊ v / σ²."""
    center = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=F64)
    radius, sigma = 1.5, 0.3
    envelope = eb.ball_envelope(radius, center=center, noise_width=noise_width)
    excess = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.1, 0.7, 4.0], dtype=F64)
    x, directions = _points_at_distances(center, radius + noise_width * sigma + excess,
                                         _seed(0))
    outside = excess.clamp_min(0.0)
    energy, score = envelope.energy(x, sigma), envelope.score(x, sigma)
    torch.testing.assert_close(energy, outside**2 / (2 * sigma**2))
    torch.testing.assert_close(score, -(outside / sigma**2)[:, None, None] * directions)
    assert torch.equal(energy[excess <= 0], torch.zeros(4, dtype=F64))  # zero in the ball
    assert torch.equal(score[excess <= 0], torch.zeros(4, 2, 2, dtype=F64))


def test_one_noise_level_per_row_and_the_center_itself():
    envelope = eb.ball_envelope(1.0)                       # any event shape, center 0
    x = torch.tensor([[3.0, 0.0], [0.0, -2.0], [0.0, 0.0]], dtype=F64)
    sigma = torch.tensor([1.0, 0.5, 0.1], dtype=F64)
    torch.testing.assert_close(envelope.energy(x, sigma),
                               torch.tensor([2.0**2 / 2, 1.0 / (2 * 0.25), 0.0], dtype=F64))
    score = envelope.score(x, sigma)
    assert torch.isfinite(score).all() and torch.equal(score[2], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(score[:2], torch.tensor([[-2.0, 0.0], [0.0, 4.0]], dtype=F64))


@pytest.mark.parametrize("shape", [(3,), (4, 4)])
def test_score_is_the_gradient_of_the_energy(shape):
    center = torch.randn(shape, generator=_seed(1), dtype=F64)
    envelope = eb.ball_envelope(2.0, center=center, noise_width=1.5)
    distances = torch.linspace(0.5, 9.0, 12, dtype=F64)
    x, _ = _points_at_distances(center, distances, _seed(2))
    for sigma in (0.05, 1.0, torch.linspace(0.1, 3.0, 12, dtype=F64)):
        assert_score_is_gradient(envelope, x, sigma)
        assert_score_is_gradient(eb.compile(envelope ** 2.0), x, sigma)


def test_log_z_closed_form_against_known_cases_and_quadrature():
    sigma = 0.4
    # d = 1: an interval of length 2R and two half-Gaussian tails.
    assert math.isclose(BallEnvelope(1.5).log_z_at(sigma, dim=1),
                        math.log(3.0 + sigma * math.sqrt(2 * math.pi)), rel_tol=1e-12)
    # R = 0: the Gaussian N(0, σ² I), log Z = (d/2) log 2πσ².
    assert math.isclose(BallEnvelope(0.0).log_z_at(sigma, dim=7),
                        3.5 * math.log(2 * math.pi * sigma**2), rel_tol=1e-12)
    # d = 2 by a Riemann sum on a 0.005 grid (the integrand is smooth; the sum converges
    # like the grid spacing squared: 1e-5 nats here).
    spacing = 0.005
    axis = torch.arange(-4.0, 4.0, spacing, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    for envelope in (eb.ball_envelope(1.2, event_shape=2),
                     eb.ball_envelope(0.4, noise_width=2.0, event_shape=2)):  # R_σ = 1.2
        quadrature = (float(torch.logsumexp(-envelope.energy(grid, sigma), 0))
                      + 2 * math.log(spacing))
        assert abs(envelope.log_z_at(sigma) - quadrature) < 1e-4
    # d = 256, radial: log ∫ S_{d−1} r^{d−1} exp(−E) dr by the trapezoid rule in log space.
    dim, radius = 256, 5.8
    for sigma in (0.01, 0.3, 12.0):
        r = torch.linspace(1e-6, radius + 40 * sigma + 40.0 * (sigma > 1), 400_001, dtype=F64)
        log_area = math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
        log_f = (dim - 1) * r.log() - (r - radius).clamp_min(0.0) ** 2 / (2 * sigma**2)
        step = float(r[1] - r[0])
        log_trapezoid = torch.logsumexp(torch.stack([log_f[:-1], log_f[1:]]), 0) - math.log(2.0)
        radial = log_area + float(torch.logsumexp(log_trapezoid, 0)) + math.log(step)
        closed = BallEnvelope(radius).log_z_at(sigma, dim=dim)
        assert abs(closed - radial) < 1e-6 * abs(closed), (sigma, closed, radial)


def test_a_bounded_energy_becomes_proper_and_smc_finds_its_log_z():
    """E = −3 exp(−‖x − μ‖²/(2(0.25 + σ²))) is bounded, so exp(−E) ≥ 1 everywhere and has no
    integral; with the envelope it has one, and SMC down the noise levels estimates it at
    every level (checked against a Riemann sum on a grid of spacing 0.01·max(1, σ) over
    the ball and 12σ beyond it; halving the spacing moves the sum by < 2e-6 nats)."""
    mu = torch.tensor([1.0, 0.0], dtype=F64)

    def bump(x: torch.Tensor, sigma) -> torch.Tensor:
        variance = 0.25 + torch.as_tensor(sigma, dtype=x.dtype) ** 2
        return -3.0 * torch.exp(-((x - mu) ** 2).sum(-1) / (2 * variance))

    model = eb.from_energy(bump, 2, name="bump", noise_conditioned=True)
    envelope = eb.ball_envelope(2.0, event_shape=2)
    proper = model & envelope
    levels = torch.logspace(math.log10(3.0), math.log10(0.05), 20, dtype=F64)
    result = SMC(n_steps=5).run(proper, noise_levels=levels, n_particles=2000,
                                generator=_seed(3))
    for index in (0, 10, 19):
        sigma = float(levels[index])
        half, spacing = 2.0 + 12 * sigma, 0.01 * max(1.0, sigma)
        axis = torch.arange(-half, half, spacing, dtype=F64)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            log_density = -proper.energy(grid, sigma)
        quadrature = float(torch.logsumexp(log_density, 0)) + 2 * math.log(spacing)
        estimate, stderr = float(result.path_log_z[index]), float(result.path_stderr[index])
        assert math.isfinite(stderr) and stderr < 0.05, (sigma, estimate, stderr)
        assert abs(estimate - quadrature) <= 4 * stderr, (sigma, estimate, quadrature, stderr)


def test_round_trip_through_a_file_alone_and_in_a_product():
    center = torch.randn(3, generator=_seed(4), dtype=F64)
    envelope = eb.ball_envelope(0.75, center=center, noise_width=2.0, name="ball")
    other = eb.targets.Gaussian(torch.zeros(3, dtype=F64), 2.0, name="g")
    x = torch.randn(6, 3, generator=_seed(5), dtype=F64) * 2
    for expr in (envelope, other & envelope, eb.ball_envelope(1.0)):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "envelope.safetensors"
            eb.save(expr, path)
            loaded = eb.load(path)
        assert repr(loaded) == repr(expr)
        assert torch.equal(loaded.energy(x, 0.3), expr.energy(x, 0.3))
        assert torch.equal(loaded.score(x, 0.3), expr.score(x, 0.3))
    assert loaded.event_shape is None


def test_enclosing_ball_holds_the_data_and_adds_the_margin():
    data = torch.randn(500, 4, 4, generator=_seed(6), dtype=F64) + 3.0
    center, radius = enclosing_ball(data, margin=0.25)
    distances = (data - data.mean(0)).flatten(1).norm(dim=1)
    torch.testing.assert_close(center, data.mean(0))
    assert math.isclose(radius, float(distances.max()) + 0.25)
    assert torch.equal(eb.ball_envelope(radius, center=center).energy(data, 0.01),
                       torch.zeros(500, dtype=F64))


def test_the_envelope_does_not_change_sampling_plans():
    model = eb.from_energy(lambda x, t: (x**2).sum(-1), 2, name="m", noise_conditioned=True)
    assert (model & eb.ball_envelope(1.0)).sampling_exponent() == model.sampling_exponent()


def test_bad_arguments_name_the_argument_and_the_constraint():
    with pytest.raises(ArgumentError, match="envelope: radius must be non-negative, got -1"):
        eb.ball_envelope(-1.0)
    with pytest.raises(ArgumentError, match="noise_width must be non-negative, got -2"):
        eb.ball_envelope(1.0, noise_width=-2)
    with pytest.raises(ArgumentTypeError, match="center must be a floating-point tensor"):
        eb.ball_envelope(1.0, center=[0.0, 1.0])
    with pytest.raises(CompositionError, match=r"center has shape \(2,\), but event_shape is"):
        eb.ball_envelope(1.0, center=torch.zeros(2), event_shape=3)
    with pytest.raises(CompositionError, match="noise-conditioned"):
        eb.ball_envelope(1.0).energy(torch.zeros(2, 2))
    with pytest.raises(ArgumentError, match="margin must be non-negative"):
        enclosing_ball(torch.zeros(3, 2), margin=-0.1)
    # Regression: a negative noise level shrank the ball silently.
    with pytest.raises(ArgumentError, match="noise level t must be non-negative, got -0.5"):
        eb.ball_envelope(1.0).energy(torch.zeros(2, 2), -0.5)


def test_at_zero_noise_the_envelope_is_a_hard_wall():
    # Regression: 0/0 made the energy and score NaN inside the ball at σ = 0.
    envelope = eb.ball_envelope(1.0, noise_width=2.0)
    x = torch.tensor([[0.0, 0.0], [0.6, 0.0], [3.0, 0.0]], dtype=F64)
    energy, score = envelope.energy_and_score(x, 0.0)
    assert torch.equal(energy, torch.tensor([0.0, 0.0, math.inf], dtype=F64))
    assert torch.equal(envelope.energy(x, 0.0), energy)
    assert torch.equal(score[:2], torch.zeros(2, 2, dtype=F64))


def test_it_confines_a_face_model_at_small_noise():
    """At σ = 0.01 the zoo's ``glasses`` gives random images far from the faces a lower
    energy than faces (docs/composition.md, Limits); inside the training faces' ball the
    envelope leaves it unchanged, and outside it outweighs that by orders of magnitude."""
    glasses = eb.zoo.load("glasses")
    faces = eb.datasets.faces(512, glasses=True, generator=_seed(7))
    center, radius = enclosing_ball(faces, margin=0.25)
    envelope = eb.ball_envelope(radius, center=center)
    far, _ = _points_at_distances(center.double(), torch.full((16,), 150.0, dtype=F64), _seed(8))
    far, faces = far.float(), faces[:16]
    with torch.no_grad():
        assert glasses.energy(far, 0.01).max() < glasses.energy(faces, 0.01).min()
        assert torch.equal((glasses & envelope).energy(faces, 0.01), glasses.energy(faces, 0.01))
        assert (glasses & envelope).energy(far, 0.01).min() > 1e3 * glasses.energy(faces,
                                                                                   0.01).max()
