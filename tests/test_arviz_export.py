"""Samples.to_arviz: the exported data give ArviZ the same diagnostics, and the
sample statistics line up with the draws."""

from __future__ import annotations

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra.samplers import HMC, NUTS
from ebmalgebra.targets import Gaussian

az = pytest.importorskip("arviz")

F64 = torch.float64


@pytest.fixture(scope="module")
def model():
    return Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))


@pytest.fixture(scope="module")
def samples(model):
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    return eb.sample(model, NUTS(), x0=x0, n_steps=300, warmup=200, thin=2,
                     generator=torch.Generator().manual_seed(1), progress=False)


def test_arviz_diagnostics_equal_the_built_in_ones(samples):
    idata = samples.to_arviz()
    for method, kind in (("bulk", "bulk"), ("tail", "tail"), ("mean", "mean")):
        theirs = torch.as_tensor(az.ess(idata, method=method)["x"].values)
        assert torch.allclose(theirs, samples.ess(kind), rtol=1e-6, atol=0), method
    rhat = torch.as_tensor(az.rhat(idata, method="rank")["x"].values)
    assert torch.allclose(rhat, samples.rhat(), rtol=1e-6, atol=0)


def test_float32_draws_give_arviz_the_built_in_diagnostics():
    # Regression: float32 draws were exported as float32, and ArviZ's R-hat (computed in
    # the data's precision) was 2e-4 from the built-in one.
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    model = Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    samples = eb.sample(model, NUTS(), x0=x0, n_steps=300, warmup=200,
                        thin=2, generator=torch.Generator().manual_seed(1), progress=False)
    assert samples.draws.dtype == torch.float32
    rhat = torch.as_tensor(az.rhat(samples.to_arviz(), method="rank")["x"].values)
    assert torch.allclose(rhat, samples.rhat().double(), rtol=1e-6, atol=0)


def test_sample_stats_have_arviz_names_and_line_up_with_the_draws(samples, model):
    stats = samples.to_arviz().sample_stats
    for name in ("diverging", "tree_depth", "energy", "acceptance_rate", "step_size", "lp",
                 "n_steps"):
        assert stats[name].shape == (4, 150), name
    assert stats["diverging"].dtype == bool
    # With thin=2 each kept draw must carry its own −E: recompute it from the draws.
    draws = samples.draws.transpose(0, 1)  # (chain, draw, 2)
    log_density = -model.energy(draws.reshape(-1, 2)).reshape(4, 150)
    assert torch.allclose(torch.as_tensor(stats["lp"].values), log_density, atol=1e-12)
    # The Hamiltonian E + ½ pᵀM⁻¹p is at least the potential energy −lp.
    assert (stats["energy"].values >= -stats["lp"].values - 1e-12).all()
    # The step size after warmup is the tuned one, the same for every draw.
    assert torch.allclose(torch.as_tensor(stats["step_size"].values),
                          samples.state.step_size.expand(150, 4).T)
    az.bfmi(samples.to_arviz())  # needs the energy statistic


def test_samplers_without_tree_statistics_export_what_they_have(model):
    samples = eb.sample(model, HMC(), n_chains=3, n_steps=20, warmup=0,
                        generator=torch.Generator().manual_seed(2), progress=False)
    stats = samples.to_arviz().sample_stats
    assert "diverging" in stats and "tree_depth" not in stats
    assert stats["acceptance_rate"].shape == (3, 20)
