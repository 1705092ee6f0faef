"""The unadjusted Langevin algorithm (samplers/langevin.py).
"""

from __future__ import annotations

import torch
from sampler_helpers import F64, Z_MAX, denoiser_score, gaussian, nan_wall, sink, z_scores

import ebmalgebra as eb
from ebmalgebra.samplers import ULA, AnnealedLangevin


def test_ula_and_uncorrected_annealing_run_on_score_only_models():
    model = gaussian() & denoiser_score()  # s = −2x: N(0, ½)
    samples = eb.sample(model, ULA(step_size=0.05), n_chains=64, n_steps=300, warmup=100,
                        x0=torch.randn(64, 3, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    assert torch.isnan(samples.state.energy).all()  # no energy to report
    # ULA's own stationary variance on N(0, σ²) is σ²/(1 − ε/(2σ²)) (AR(1) recursion;
    # see test_samplers_statistics.py): 0.5/0.95 here. E x² within Z_MAX · MCSE (ESS-based).
    z = z_scores(samples.draws**2, 0.5 / (1.0 - 0.05 / (2 * 0.5)))
    assert (z.abs() <= Z_MAX).all(), z
    noisy = eb.from_score(lambda x, t: -x / (1.0 + t**2), 3, name="noisy_score",
                          noise_conditioned=True)
    annealed = AnnealedLangevin(noise_levels=[2.0, 1.0, 0.1], steps_per_level=20,
                                step_size=0.05)
    samples = eb.sample(noisy, annealed, x0=torch.randn(16, 3, dtype=F64), n_steps=10,
                        warmup=annealed.n_annealing_steps)
    assert samples.state.level == 2


def test_ula_freezes_chains_that_hit_nonfinite_values():
    x0 = torch.zeros(200, 1, dtype=F64)
    sampler = ULA(step_size=0.2)
    state = sampler.init(x0, nan_wall())
    generator = torch.Generator().manual_seed(0)
    frozen_at = {}
    for _ in range(100):
        state, info = sampler.step(state, generator)
        for chain in info.nonfinite.nonzero().flatten().tolist():
            frozen_at[chain] = state.position[chain].clone()
    assert frozen_at, "some chains should have crossed the wall"
    assert set(frozen_at) == set(state.frozen.nonzero().flatten().tolist())
    for chain, position in frozen_at.items():  # frozen chains never moved again
        assert torch.equal(state.position[chain], position)
    assert bool((state.position <= 1.0).all()) and torch.isfinite(state.score).all()
    samples = eb.sample(nan_wall(), sampler, x0=x0, n_steps=100,
                        generator=torch.Generator().manual_seed(0))
    assert int(samples.frozen.sum()) == len(frozen_at) and "frozen=" in repr(samples)


def test_ula_noise_scale_given_as_a_float_or_per_chain_replaces_sqrt_two_epsilon():
    # A float noise_scale used to reach torch.addcmul as a number and raise TypeError.
    x0 = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    per_chain = torch.linspace(0.1, 0.5, 5, dtype=F64)
    for noise_scale, sigma in ((0.3, 0.3), (per_chain, per_chain[:, None])):
        sampler = ULA(step_size=0.05, noise_scale=noise_scale)
        state, _ = sampler.step(sampler.init(x0, gaussian()), torch.Generator().manual_seed(2))
        noise = torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
        expected = x0 + 0.05 * -x0 + sigma * noise  # s(x) = −x for N(0, I)
        torch.testing.assert_close(state.position, expected, rtol=0.0, atol=1e-14)


def test_ula_holds_a_chain_frozen_in_place_after_all_clear_steps():
    # ULA remembers that the state's frozen mask is all clear (to skip the row-wise
    # guard); a mask changed in place must be read again.
    sampler = ULA(step_size=0.1)
    generator = torch.Generator().manual_seed(0)
    state, _ = sampler.step(sampler.init(torch.zeros(4, 2, dtype=F64), gaussian(2)), generator)
    state.frozen[1] = True
    held = state.position[1].clone()
    state, info = sampler.step(state, generator)
    assert torch.equal(state.position[1], held)
    assert info.frozen.tolist() == [False, True, False, False]


def test_ula_freezes_chains_at_an_infinite_energy_with_a_finite_score():
    # The fast guard must read the energies too, not only the scores (finite here).
    samples = eb.sample(sink(), ULA(step_size=0.2), x0=torch.zeros(200, 1, dtype=F64),
                        n_steps=100, generator=torch.Generator().manual_seed(0))
    assert bool(samples.frozen.any()) and bool((samples.draws <= 1.0).all())
    assert torch.isfinite(samples.state.energy).all()
