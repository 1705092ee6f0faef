"""HMC (samplers/hmc.py): one step against a hand-written reference leapfrog and
accept, gradient counts, diagonal and dense metrics, divergences.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampler_helpers import F64, CountingEnergy

import ebmalgebra as eb
from ebmalgebra.samplers import HMC
from ebmalgebra.samplers.metrics import DenseMetric
from ebmalgebra.targets import Gaussian, MultivariateGaussian


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_hmc_uses_one_gradient_per_leapfrog_step(jitter):
    net = CountingEnergy()
    model = eb.from_energy(net, 2, name="counted")
    sampler = HMC(step_size=0.1, n_leapfrog=7, jitter=jitter)
    state = sampler.init(torch.randn(10, 2), model)
    assert net.calls == 1
    generator = torch.Generator().manual_seed(0)
    lengths = set()
    for _ in range(20):
        net.calls = 0
        state, info = sampler.step(state, generator)
        assert net.calls == info.n_leapfrog
        lengths.add(info.n_leapfrog)
    assert lengths == {7} if jitter == 0 else len(lengths) > 1
    assert all(4 <= n <= 10 for n in lengths)


def test_hmc_warmup_of_twenty_steps_tunes_the_step_size_for_the_new_metric():
    """The final buffer after the mass window was 2 steps, whose ε̄ accepted nothing."""
    model = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    samples = eb.sample(model, HMC(), n_chains=64, n_steps=50, warmup=20,
                        generator=torch.Generator().manual_seed(0))
    assert float(samples.acceptance_rate[20:].mean()) > 0.6  # target 0.8; was 0.0


def test_dense_hmc_adapts_the_covariance_of_a_correlated_gaussian():
    covariance = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=F64) * 4.0
    model = MultivariateGaussian(torch.zeros(2, dtype=F64), covariance)
    samples = eb.sample(model, HMC(metric="dense", n_leapfrog=5), n_chains=64, n_steps=50,
                        warmup=300, x0=torch.randn(64, 2, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.state.inverse_mass, covariance, rtol=0.15, atol=0.3)
    assert samples.state.mass_factor.shape == (2, 2)


def test_hmc_reports_divergences():
    model = Gaussian(torch.zeros(2, dtype=F64), 0.01, name="narrow")
    sampler = HMC(step_size=1.0, n_leapfrog=3, adapt_step_size=False)
    samples = eb.sample(model, sampler, n_chains=8, n_steps=5,
                        generator=torch.Generator().manual_seed(0))
    assert int(samples.n_divergent.sum()) == 40
    assert float(samples.acceptance_rate.max()) == 0.0


def test_hmc_counts_a_nan_energy_error_as_a_divergence_with_acceptance_zero(monkeypatch):
    """A dense metric's ½ pᵀM⁻¹p can overflow to +∞ − ∞ = NaN for finite momenta; such a
    step must be reported, not slip through as a NaN acceptance probability."""
    monkeypatch.setattr(DenseMetric, "kinetic_energy", lambda self, p: torch.full(
        p.shape[:1], math.nan, dtype=p.dtype))
    sampler = HMC(step_size=0.1, n_leapfrog=2, metric="dense", adapt_step_size=False)
    samples = eb.sample(Gaussian(torch.zeros(2, dtype=F64), 1.0, name="g"), sampler,
                        n_chains=4, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert int(samples.n_divergent.sum()) == 12
    assert torch.equal(samples.acceptance_rate, torch.zeros(3, dtype=F64))  # per step
