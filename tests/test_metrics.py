"""Euclidean metrics: kinetic energy, velocity and momentum law against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import ArgumentTypeError, CompositionError
from ebmalgebra.samplers import HMC, NUTS
from ebmalgebra.samplers.metrics import DenseMetric, DiagonalMetric, metric_class
from ebmalgebra.targets import Gaussian

F64 = torch.float64


def spd(dim: int, seed: int = 0) -> torch.Tensor:
    """A random symmetric positive-definite matrix with condition number ≲ 10."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=F64))
    eigenvalues = torch.linspace(0.3, 3.0, dim, dtype=F64)
    return (q * eigenvalues) @ q.T


def test_diagonal_kinetic_energy_and_velocity_closed_form():
    inverse_mass = torch.tensor([[0.5, 2.0, 1.0], [4.0, 0.25, 3.0]], dtype=F64)
    metric = DiagonalMetric(inverse_mass)
    p = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = 0.5 * (p * p * inverse_mass).sum((1, 2))
    torch.testing.assert_close(metric.kinetic_energy(p), expected)
    torch.testing.assert_close(metric.velocity(p), inverse_mass * p)


def test_dense_kinetic_energy_and_velocity_closed_form():
    inverse_mass = spd(6)
    metric = DenseMetric(inverse_mass)
    p = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    flat = p.reshape(5, 6)
    expected = 0.5 * torch.einsum("ni,ij,nj->n", flat, inverse_mass, flat)
    torch.testing.assert_close(metric.kinetic_energy(p), expected)
    torch.testing.assert_close(metric.velocity(p).reshape(5, 6), flat @ inverse_mass.T)


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_momentum_from_noise_has_kinetic_energy_half_squared_noise(kind):
    inverse_mass = torch.tensor([0.5, 2.0, 7.0], dtype=F64) if kind == "diag" else spd(3)
    metric = metric_class(kind, "test")(inverse_mass)
    noise = torch.randn(11, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    p = metric.momentum_from_noise(noise)
    torch.testing.assert_close(metric.kinetic_energy(p), 0.5 * (noise * noise).sum(1))


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_momentum_covariance_is_the_mass_matrix(kind):
    inverse_mass = torch.tensor([0.25, 1.0, 4.0], dtype=F64) if kind == "diag" else spd(3, 4)
    metric = metric_class(kind, "test")(inverse_mass)
    n = 100_000
    p = metric.sample_momentum(torch.zeros(n, 3, dtype=F64), torch.Generator().manual_seed(5))
    mass = torch.diag(1.0 / inverse_mass) if kind == "diag" else torch.linalg.inv(inverse_mass)
    covariance = p.T @ p / n  # the mean is known to be 0
    # Var of the sample second moment of a centred Gaussian: (M_ii M_jj + M_ij²) / n;
    # allow z ≤ 4 entrywise (9 entries).
    standard_error = ((torch.outer(mass.diagonal(), mass.diagonal()) + mass**2) / n).sqrt()
    assert ((covariance - mass).abs() <= 4 * standard_error).all()
    assert (p.mean(0).abs() <= 4 * (mass.diagonal() / n).sqrt()).all()


def test_sample_momentum_follows_position_dtype_and_generator():
    metric = DiagonalMetric(torch.ones(2, 3))
    position = torch.zeros(4, 2, 3)
    first = metric.sample_momentum(position, torch.Generator().manual_seed(9))
    second = metric.sample_momentum(position, torch.Generator().manual_seed(9))
    assert first.shape == (4, 2, 3) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert metric.to(torch.zeros(1, dtype=F64)).inverse_mass.dtype == F64


def test_dense_equals_diagonal_for_a_diagonal_matrix():
    variances = torch.tensor([0.5, 2.0, 3.0], dtype=F64)
    diag, dense = DiagonalMetric(variances), DenseMetric(torch.diag(variances))
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    p_diag, p_dense = diag.momentum_from_noise(noise), dense.momentum_from_noise(noise)
    torch.testing.assert_close(p_dense, p_diag)
    torch.testing.assert_close(dense.kinetic_energy(p_diag), diag.kinetic_energy(p_diag))
    x = torch.zeros(8, 3, dtype=F64)
    epsilon = torch.full((8, 1), 0.3, dtype=F64)
    torch.testing.assert_close(dense.drift(x, p_diag, dense.drift_scale(epsilon)),
                               diag.drift(x, p_diag, diag.drift_scale(epsilon)))


def test_identity_metrics_and_shape_checks():
    position = torch.zeros(3, 2, 2, dtype=F64)
    assert torch.equal(DiagonalMetric.identity(position).inverse_mass, torch.ones(2, 2, dtype=F64))
    assert torch.equal(DenseMetric.identity(position).inverse_mass, torch.eye(4, dtype=F64))
    with pytest.raises(CompositionError, match=r"inverse_mass .* shaped \(4, 4\)"):
        DenseMetric(torch.eye(3, dtype=F64)).check(position, "HMC")
    with pytest.raises(CompositionError, match=r"shaped \(2, 2\)"):
        DiagonalMetric(torch.ones(4, dtype=F64)).check(position, "HMC")


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([1.0, -1.0]), "positive"),
    (torch.tensor([1.0, float("inf")]), r"must be finite, got inf at index \(1,\)"),
])
def test_diagonal_rejects_bad_inverse_mass(bad, match):
    with pytest.raises(ValueError, match=match):
        DiagonalMetric(bad)


def test_dense_rejects_bad_inverse_mass():
    with pytest.raises(ValueError, match="positive definite"):
        DenseMetric(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        DenseMetric(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(CompositionError, match="square"):
        DenseMetric(torch.ones(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        DenseMetric(torch.eye(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="metric must be one of"):
        metric_class("riemannian", "HMC")


def test_dense_float32_mass_factor_of_an_ill_conditioned_estimate():
    # Regression: the float32 inverse of a warmup-like estimate (eigenvalues 1e-4 … 7, as
    # a window of few draws in 60-D gives) was not symmetric enough for the Cholesky, so
    # dense-metric warmup raised "must be symmetric positive definite".
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(60, 60, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(-4, math.log10(7.0), 60, dtype=torch.float64)
    inverse_mass = (basis * eigenvalues) @ basis.T
    metric = DenseMetric(inverse_mass.float())
    assert metric.mass_factor.dtype == torch.float32
    mass = (basis / eigenvalues) @ basis.T  # M, the exact inverse of M⁻¹
    factor = metric.mass_factor.double()
    relative = (factor @ factor.T - mass).norm() / mass.norm()
    assert relative < 1e-4, relative  # float32 rounding of M⁻¹ times κ = 7e4, with room


def test_dense_warmup_of_a_single_float32_chain_in_60_dimensions():
    model = Gaussian(torch.zeros(60), 1.0)
    samples = eb.sample(model, HMC(metric="dense"), n_chains=1, n_steps=10, warmup=200,
                        generator=torch.Generator().manual_seed(0))
    assert samples.draws.dtype == torch.float32 and torch.isfinite(samples.draws).all()


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_metric_methods_trace_without_graph_breaks(kind):
    metric = metric_class(kind, "test")(torch.ones(3) if kind == "diag" else torch.eye(3))

    def kinetic_after_drift(x, p):
        x = metric.drift(x, p, metric.drift_scale(0.1))
        return x, metric.kinetic_energy(metric.momentum_from_noise(p))

    compiled = torch.compile(kinetic_after_drift, backend="eager", fullgraph=True)
    x, p = torch.randn(4, 3), torch.randn(4, 3)
    for got, want in zip(compiled(x, p), kinetic_after_drift(x, p), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("sampler", [HMC, NUTS])
def test_a_list_inverse_mass_is_taken_in_the_positions_dtype(sampler):
    # A list of numbers failed with "'list' object has no attribute 'detach'".
    state = sampler(inverse_mass=[0.1, 3.0]).init(torch.zeros(4, 2, dtype=F64),
                                                   Gaussian(torch.zeros(2, dtype=F64), 1.0))
    assert state.metric.inverse_mass.dtype == F64
    assert state.metric.inverse_mass.tolist() == [0.1, 3.0]
    with pytest.raises(ArgumentTypeError, match="inverse_mass"):
        sampler(inverse_mass="diag")
