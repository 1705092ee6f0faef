"""Random-walk Metropolis–Hastings (samplers/mh.py): one step against a hand-written
reference, energies only."""

from __future__ import annotations

import torch
from sampler_helpers import F64, CountingEnergy

import ebmalgebra as eb
from ebmalgebra.samplers import RandomWalkMH


def reference_energy(x):
    """E(x) = ½ ‖x‖² + x₁⁴ / 4, a non-Gaussian target written out for the reference."""
    return 0.5 * (x * x).sum(1) + 0.25 * x[:, 0] ** 4


def test_one_step_matches_a_hand_written_reference():
    """Metropolis et al. (1953): x′ = x + σ ξ, accepted when u < min(1, e^{E(x) − E(x′)})."""
    n_chains = 64
    x0 = torch.randn(n_chains, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    step_size = torch.linspace(0.1, 4.0, n_chains, dtype=F64)
    model = eb.from_energy(reference_energy, 2, name="quartic")
    sampler = RandomWalkMH(step_size=step_size, adapt_step_size=False)
    state, info = sampler.step(sampler.init(x0, model), torch.Generator().manual_seed(2))
    # The kernel draws ξ ~ N(0, I) like x, then u ~ U(0, 1) per chain, from one generator.
    generator = torch.Generator().manual_seed(2)
    proposal = x0 + step_size[:, None] * torch.randn(n_chains, 2, generator=generator,
                                                     dtype=F64)
    uniform = torch.rand(n_chains, generator=generator, dtype=F64)
    probability = torch.exp(reference_energy(x0) - reference_energy(proposal)).clamp(max=1.0)
    accepted = uniform < probability
    assert accepted.any() and not accepted.all()
    torch.testing.assert_close(state.position, torch.where(accepted[:, None], proposal, x0))
    torch.testing.assert_close(info.acceptance_rate, probability)
    assert torch.equal(info.is_accepted, accepted)


def test_needs_no_score_and_one_energy_per_step():
    net = CountingEnergy()
    state = RandomWalkMH().init(torch.randn(5, 3), eb.from_energy(net, 3, name="counted"))
    assert not hasattr(state, "score")
    net.calls = 0
    state, _ = RandomWalkMH().step(state, None)
    assert net.calls == 1
