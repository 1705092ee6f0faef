"""Parallel tempering (samplers/tempering.py).
"""

from __future__ import annotations

import pytest
import torch
from sampler_helpers import gaussian

import ebmalgebra as eb
from ebmalgebra.samplers import HMC, MALA, SMC, ParallelTempering


@pytest.mark.parametrize("n_chains", [2, 3])
def test_tempering_records_pair_and_replica_statistics_whole_for_any_number_of_chains(
        n_chains):
    """With n_chains = K − 1 (or K) the (K − 1,) swap (or (K,) replica) acceptances used to
    pass for per-chain values and were averaged away."""
    sampler = ParallelTempering(betas=[1.0, 0.5, 0.25], sampler=MALA(step_size=0.3))
    samples = eb.sample(gaussian(2), sampler, n_chains=n_chains, n_steps=10,
                        generator=torch.Generator().manual_seed(0))
    assert samples.stats["swap_acceptance"].shape == (10, 2)
    assert samples.stats["replica_acceptance"].shape == (10, 3)
    assert samples.stats["acceptance_rate"].shape == (10,)
    assert samples.n_nonfinite.shape == (n_chains,)


def test_tempering_adapts_one_step_size_per_replica():
    sampler = ParallelTempering(betas=[1.0, 0.1, 0.01], sampler=MALA(step_size=0.1))
    samples = eb.sample(gaussian(1), sampler, n_chains=32, n_steps=10, warmup=200,
                        generator=torch.Generator().manual_seed(0))
    steps = samples.state.replicas.step_size.reshape(3, 32)
    assert torch.all(steps == steps[:, :1])  # pooled within a replica
    assert steps[0, 0] < steps[1, 0] < steps[2, 0]  # hotter replicas take larger steps
    assert samples.stats["swap_acceptance"].shape == (210, 2)
    assert samples.state.position.shape == (32, 1)


@pytest.mark.parametrize("inner", [MALA, HMC])
def test_tempering_takes_per_chain_step_sizes(inner):
    # Regression: the inner sampler's init checked the (n,) step sizes against the K·n
    # replica rows and raised.
    steps = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    sampler = ParallelTempering(betas=[1.0, 0.25], sampler=inner(step_size=steps))
    samples = eb.sample(gaussian(2), sampler, n_chains=3, n_steps=5,
                        generator=torch.Generator().manual_seed(0))
    exponent = inner().tempering_step_exponent  # hot replicas' steps are h / β^exponent
    expected = torch.cat([steps, steps / 0.25 ** exponent])
    torch.testing.assert_close(samples.state.replicas.step_size, expected)


def test_tempering_reports_the_cold_replicas_divergences():
    # Regression: the inner HMC's divergences stayed inside info.inner, so n_divergent was 0
    # and summary() never warned. The count must equal what a callback sees in β = 1 rows.
    model = eb.from_log_prob(lambda x: -0.5 * x.square().sum(-1) - 0.25 * x.pow(4).sum(-1),
                             2, name="quartic")
    inner = HMC(step_size=1.2, adapt_step_size=False, adapt_mass=False)
    seen = []
    samples = eb.sample(model, ParallelTempering(betas=[1.0, 0.5], sampler=inner), n_chains=8,
                        n_steps=100, generator=torch.Generator().manual_seed(0),
                        callback=lambda i, state, info: seen.append(info.inner.divergent[:8]))
    expected = torch.stack(seen).sum(0)
    assert expected.sum() > 0
    assert torch.equal(samples.n_divergent, expected)
    assert "divergent" in samples.summary().header


def test_tempering_refused_as_a_transition_gives_the_true_reason():
    # Regression: the reason said the hot replicas restart from the particles at every
    # temperature, which is what annealing does, not tempering.
    with pytest.raises(ValueError, match="tempered replicas held in its state") as raised:
        SMC(kernel=ParallelTempering(betas=[1.0, 0.5]))
    assert "restart" not in str(raised.value)
