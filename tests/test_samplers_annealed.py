"""Annealed Langevin over noise levels or models (samplers/annealed.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from sampler_helpers import F64, gaussian, noise_conditioned_gaussian

import ebmalgebra as eb
from ebmalgebra import CompositionError
from ebmalgebra.samplers import AnnealedLangevin


def test_annealed_freezes_chains_that_become_nonfinite_at_a_new_level():
    def energy(x, t):
        e = 0.5 * (x * x).sum(-1)
        return torch.where((x[:, 0] > 1.0) & (t < 0.5), torch.full_like(e, math.nan), e)
    model = eb.from_energy(energy, 1, name="late_wall", noise_conditioned=True)
    x0 = torch.tensor([[-1.5], [-0.5], [0.5], [1.5], [2.5]], dtype=F64)
    sampler = AnnealedLangevin(noise_levels=[1.0, 0.1], steps_per_level=1, step_size=1e-8)
    state = sampler.init(x0, model)
    state, info = sampler.step(state, None)
    assert not info.nonfinite.any()
    state, info = sampler.step(state, None)
    assert torch.equal(info.nonfinite, x0[:, 0] > 1.0)
    assert torch.equal(state.frozen, info.nonfinite)


def test_annealing_walks_the_levels_and_scales_step_sizes():
    levels = [4.0, 2.0, 1.0, 0.1]
    sampler = AnnealedLangevin(noise_levels=levels, steps_per_level=3, step_size=0.01,
                               mala=0.5)
    state = sampler.init(torch.randn(5, 3, dtype=F64), noise_conditioned_gaussian())
    seen = []
    for _ in range(14):
        state, info = sampler.step(state, torch.Generator().manual_seed(0))
        seen.append((info.level, float(state.step_size[0]), bool((info.acceptance_rate < 1)
                                                                 .any())))
    assert [level for level, _, _ in seen] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 5
    for level, step, _ in seen[:9]:
        assert step == pytest.approx(0.01 * (levels[level] / 0.1) ** 2)
    assert not any(corrected for level, _, corrected in seen if level < 3)
    assert state.potential.t == 0.1
    assert sampler.n_annealing_steps == 12


def test_annealing_needs_a_noise_conditioned_model():
    with pytest.raises(CompositionError, match="noise-conditioned"):
        AnnealedLangevin(noise_levels=[1.0, 0.1]).init(torch.zeros(2, 3),
                                                       gaussian(3, torch.float32))


def test_annealed_per_chain_adaptation_shrinks_steps_that_are_too_large():
    sampler = AnnealedLangevin(models=[gaussian()], steps_per_level=50, mala=True,
                               step_size=torch.tensor([0.1, 5.0], dtype=F64),
                               adapt_step_size=True)
    state = sampler.init(torch.zeros(2, 3, dtype=F64), gaussian())
    generator = torch.Generator().manual_seed(0)
    for _ in range(sampler.n_annealing_steps + 5):
        state, _ = sampler.step(state, generator)
    assert float(state.step_size[1]) < 2.0
    before = state.step_size.clone()
    state, _ = sampler.step(state, generator)
    assert torch.equal(state.step_size, before)  # no adaptation after annealing


def test_annealed_adaptation_cannot_grow_steps_without_bound_on_a_flat_energy():
    """A denoiser far from its data is nearly flat: MALA accepts almost every move, so
    ε ← ε · exp(½(α − δ)) grows by ≈ e^0.21 a step; uncapped, these 300 steps end
    ×10¹⁴ larger (where the 10¹² variance finally lowers acceptance). The step
    stops at max_step_growth × its initial value instead."""
    flat = eb.from_energy(lambda x, t: 0.5 * (x * x).sum(-1) / (1e12 + t**2), 3,
                          name="flat", noise_conditioned=True)
    sampler = AnnealedLangevin(noise_levels=[1.0, 0.5, 0.1], steps_per_level=100, mala=True,
                               step_size=torch.tensor([1e-3, 1e-2], dtype=F64),
                               adapt_step_size=True, max_step_growth=50.0)
    state = sampler.init(torch.zeros(2, 3, dtype=F64), flat)
    generator = torch.Generator().manual_seed(0)
    for _ in range(sampler.n_annealing_steps):
        state, _ = sampler.step(state, generator)
    torch.testing.assert_close(state.base_step_size,
                               torch.tensor([5e-2, 5e-1], dtype=F64), rtol=1e-12, atol=0)
    assert torch.isfinite(state.position).all()
    with pytest.raises(ValueError, match="max_step_growth must be at least 1"):
        AnnealedLangevin(models=[gaussian()], max_step_growth=0.5)


def test_an_infinite_max_step_growth_removes_the_ceiling():
    # Regression: the documented math.inf was refused as "must be finite". On the flat
    # energy above, 300 accepted steps grow ε far beyond any finite ceiling used there.
    flat = eb.from_energy(lambda x, t: 0.5 * (x * x).sum(-1) / (1e12 + t**2), 3,
                          name="flat", noise_conditioned=True)
    sampler = AnnealedLangevin(noise_levels=[1.0, 0.5, 0.1], steps_per_level=100, mala=True,
                               step_size=1e-3, adapt_step_size=True, max_step_growth=math.inf)
    state = sampler.init(torch.zeros(2, 3, dtype=F64), flat)
    generator = torch.Generator().manual_seed(0)
    for _ in range(sampler.n_annealing_steps):
        state, _ = sampler.step(state, generator)
    assert (state.base_step_size > 1e3 * 1e-3).all()


def test_step_sizes_follow_the_models_noise_schedule():
    """ε_k = ε (σ(t_k)/σ(t_{K−1}))²: for VP() the level t is time, and σ(t) is far from t
    (σ(1) ≈ 1, σ(0.05) ≈ 0.17), so (t_k/t_{K−1})² would give 400 where σ² gives ≈ 34."""
    from ebmalgebra.schedules import VE, VP
    from ebmalgebra.targets import GaussianMixture

    mixture = GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0)
    levels = [1.0, 0.3, 0.05]
    x0 = torch.zeros(3, 2, dtype=F64)
    for model, schedule, expected in (
        (mixture.noised(VP()), None, VP().sigma(torch.tensor(levels, dtype=F64))),
        (mixture.noised(VE()), None, torch.tensor(levels, dtype=F64)),
        (mixture.noised(VE()), VP(), VP().sigma(torch.tensor(levels, dtype=F64))),
    ):
        sampler = AnnealedLangevin(noise_levels=levels, steps_per_level=1, step_size=1e-3,
                                   schedule=schedule)
        state = sampler.init(x0, model)
        ratios = (expected / expected[-1]) ** 2
        for level in range(3):
            state, info = sampler.step(state, torch.Generator().manual_seed(level))
            assert info.level == level
            torch.testing.assert_close(state.step_size, torch.full((3,), 1e-3 * float(
                ratios[level]), dtype=F64))
    assert 30 < float(ratios[0]) < 40  # the VP case, not 400
    with pytest.raises(CompositionError, match="different noise schedules"):
        AnnealedLangevin(noise_levels=levels).init(x0, mixture.noised(VP()) & mixture.noised(VE()))
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        AnnealedLangevin(noise_levels=levels, schedule="vp")
