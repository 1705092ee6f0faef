"""The leapfrog integrator: closed-form steps, reversibility, O(ε²) energy error, cost."""

from __future__ import annotations

import pytest
import torch

from ebmalgebra.samplers.integrators import PhasePoint, integrate, leapfrog
from ebmalgebra.samplers.metrics import DenseMetric, DiagonalMetric

F64 = torch.float64


def gaussian_energy_and_score(precision: torch.Tensor):
    """E(x) = ½ xᵀ P x and s(x) = −P x, with a call counter."""
    calls = []

    def energy_and_score(x):
        calls.append(x.shape[0])
        px = x @ precision
        return 0.5 * (x * px).sum(1), -px

    return energy_and_score, calls


def start(x, p, energy_and_score):
    return PhasePoint(x, p, *energy_and_score(x))


def hamiltonian(point, metric):
    return point.energy + metric.kinetic_energy(point.momentum)


def test_one_step_matches_the_closed_form_linear_map():
    # E = x²/2, M = 1: a leapfrog step is x' = (1 − ε²/2) x + ε p,
    # p' = −ε (1 − ε²/4) x + (1 − ε²/2) p (Neal 2011, §5.4.1 for the harmonic oscillator).
    energy_and_score, _ = gaussian_energy_and_score(torch.eye(1, dtype=F64))
    x = torch.tensor([[1.0], [-0.5], [2.0]], dtype=F64)
    p = torch.tensor([[0.3], [1.2], [-0.7]], dtype=F64)
    epsilon = torch.tensor([0.1, 0.4, -0.25], dtype=F64)
    end = leapfrog(start(x, p, energy_and_score), epsilon, DiagonalMetric(torch.ones(1, dtype=F64)),
                   energy_and_score)
    e = epsilon[:, None]
    torch.testing.assert_close(end.position, (1 - e**2 / 2) * x + e * p)
    torch.testing.assert_close(end.momentum, -e * (1 - e**2 / 4) * x + (1 - e**2 / 2) * p)
    torch.testing.assert_close(end.energy, 0.5 * end.position[:, 0] ** 2)
    torch.testing.assert_close(end.score, -end.position)


def test_diagonal_mass_step_matches_the_closed_form():
    # Same map with velocity m p for M⁻¹ = m: x' = x + ε m (p − (ε/2) x).
    energy_and_score, _ = gaussian_energy_and_score(torch.eye(2, dtype=F64))
    m = torch.tensor([0.5, 3.0], dtype=F64)
    x = torch.tensor([[1.0, -1.0]], dtype=F64)
    p = torch.tensor([[0.2, 0.4]], dtype=F64)
    end = leapfrog(start(x, p, energy_and_score), 0.2, DiagonalMetric(m), energy_and_score)
    half_p = p - 0.1 * x
    x_end = x + 0.2 * m * half_p
    torch.testing.assert_close(end.position, x_end)
    torch.testing.assert_close(end.momentum, half_p - 0.1 * x_end)


@pytest.mark.parametrize("metric", [DiagonalMetric(torch.tensor([0.5, 2.0, 1.5], dtype=F64)),
                                    DenseMetric(torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, 0.5],
                                                              [0.0, 0.5, 1.0]], dtype=F64))],
                         ids=["diag", "dense"])
def test_reversible_by_negating_momentum_or_step_size(metric):
    precision = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 4.0]], dtype=F64)
    energy_and_score, _ = gaussian_energy_and_score(precision)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=generator, dtype=F64)
    point = start(x, metric.sample_momentum(x, generator), energy_and_score)
    forward = integrate(point, 0.2, metric, energy_and_score, 7)
    back = integrate(forward._replace(momentum=-forward.momentum), 0.2, metric, energy_and_score, 7)
    torch.testing.assert_close(back.position, point.position)
    torch.testing.assert_close(-back.momentum, point.momentum)
    backwards = integrate(forward, -0.2, metric, energy_and_score, 7)
    torch.testing.assert_close(backwards.position, point.position)
    torch.testing.assert_close(backwards.momentum, point.momentum)
    torch.testing.assert_close(backwards.score, point.score)


def test_energy_error_is_second_order_in_the_step_size():
    # At a fixed integration time the leapfrog conserves a shadow Hamiltonian
    # H + ε² H₂ + O(ε⁴), so the energy error is ε² ΔH₂ + O(ε⁴): halving ε quarters it.
    precision = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64)
    energy_and_score, _ = gaussian_energy_and_score(precision)
    metric = DenseMetric(torch.tensor([[1.0, 0.2], [0.2, 0.5]], dtype=F64))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, generator=generator, dtype=F64)
    point = start(x, metric.sample_momentum(x, generator), energy_and_score)
    errors = []
    for n_steps in (100, 200, 400):  # ε = 0.01, 0.005, 0.0025 over time 1
        end = integrate(point, 1.0 / n_steps, metric, energy_and_score, n_steps)
        errors.append((hamiltonian(end, metric) - hamiltonian(point, metric)).abs().mean())
    # The O(ε⁴) remainder moves the ratio by ~ε² relative: 4 ± 0.05 at these steps.
    assert 3.95 < errors[0] / errors[1] < 4.05
    assert 3.95 < errors[1] / errors[2] < 4.05


def test_each_step_costs_one_energy_and_score_call():
    energy_and_score, calls = gaussian_energy_and_score(torch.eye(2, dtype=F64))
    metric = DiagonalMetric(torch.ones(2, dtype=F64))
    x = torch.zeros(3, 2, dtype=F64)
    point = start(x, torch.ones(3, 2, dtype=F64), energy_and_score)
    calls.clear()
    point = leapfrog(point, 0.1, metric, energy_and_score)
    assert len(calls) == 1
    integrate(point, 0.1, metric, energy_and_score, 9)
    assert len(calls) == 10


def test_fused_trajectory_equals_repeated_steps_and_per_chain_sizes():
    precision = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=F64)
    energy_and_score, _ = gaussian_energy_and_score(precision)
    metric = DiagonalMetric(torch.tensor([0.7, 1.3], dtype=F64))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, generator=generator, dtype=F64)
    point = start(x, torch.randn(4, 2, generator=generator, dtype=F64), energy_and_score)
    step_sizes = torch.tensor([0.05, 0.1, -0.2, 0.3], dtype=F64)
    stepped = point
    for _ in range(5):
        stepped = leapfrog(stepped, step_sizes, metric, energy_and_score)
    fused = integrate(point, step_sizes, metric, energy_and_score, 5)
    for got, want in zip(fused, stepped, strict=True):
        torch.testing.assert_close(got, want)
    for chain in range(4):  # each chain moves with its own ε, as if alone
        alone = integrate(PhasePoint(*(t[chain:chain + 1] for t in point)),
                          float(step_sizes[chain]), metric, energy_and_score, 5)
        torch.testing.assert_close(alone.position, fused.position[chain:chain + 1])


def test_rejects_a_trajectory_without_steps():
    energy_and_score, _ = gaussian_energy_and_score(torch.eye(1, dtype=F64))
    point = start(torch.zeros(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64), energy_and_score)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        integrate(point, 0.1, DiagonalMetric(torch.ones(1, dtype=F64)), energy_and_score, 0)
