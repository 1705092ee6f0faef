"""What every sampler kernel shares (samplers/base.py): the init/step contract, shapes,
dtypes, cached energies and scores, capabilities, rejection of non-finite proposals,
reproducibility, one evaluation per step, declared sampler facts.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampler_helpers import (
    F64,
    SAMPLER_NAMES,
    CountingEnergy,
    PreconditionedWalk,
    all_samplers,
    denoiser_score,
    gaussian,
    model_for,
    nan_wall,
    sink,
)

import ebmalgebra as eb
from ebmalgebra import CapabilityError, CompositionError
from ebmalgebra.samplers import (
    HMC,
    MALA,
    ULA,
    AnnealedLangevin,
    ParallelTempering,
    RandomWalkMH,
    Sampler,
)
from ebmalgebra.targets import Banana, Gaussian


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_init_and_step_keep_shapes_dtype_and_device(name, dtype):
    sampler = all_samplers()[name]
    x0 = torch.randn(5, 3, dtype=dtype)
    state = sampler.init(x0, model_for(name))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        state, info = sampler.step(state, generator)
    assert state.position.shape == (5, 3) and state.position.dtype == dtype
    assert state.energy.shape == (5,) and state.energy.dtype == dtype
    if getattr(state, "score", None) is not None:
        assert state.score.shape == (5, 3) and state.score.dtype == dtype
    assert state.step_size.shape == (5,)
    assert info.nonfinite.shape == (5,) and info.nonfinite.dtype == torch.bool
    assert isinstance(state, tuple) and isinstance(info, tuple)  # NamedTuples


@pytest.mark.parametrize("name", ["mala", "hmc", "ula"])
def test_state_caches_energy_and_score_at_the_position(name):
    model = gaussian()
    sampler = all_samplers()[name]
    state = sampler.init(torch.randn(6, 3, dtype=F64), model)
    state, _ = sampler.step(state, torch.Generator().manual_seed(1))
    energy, score = model.energy_and_score(state.position)
    torch.testing.assert_close(state.energy, energy)
    torch.testing.assert_close(state.score, score)


def test_model_lives_in_the_state_so_one_sampler_serves_two_models():
    sampler = MALA(step_size=0.2)
    a, b = gaussian(), Gaussian(torch.full((3,), 5.0, dtype=F64), 1.0, name="b")
    state_a = sampler.init(torch.zeros(4, 3, dtype=F64), a)
    state_b = sampler.init(torch.zeros(4, 3, dtype=F64), b)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        state_a, _ = sampler.step(state_a, generator)
        state_b, _ = sampler.step(state_b, generator)
    # Means over 4 chains × 3 coordinates of N(0, 1) and N(5, 1): sd ≈ 1/√12 ≈ 0.29 before
    # autocorrelation, so 1.5 sits over 5 sd from both.
    assert state_a.position.mean() < 1.5 < state_b.position.mean()
    assert isinstance(state_a.potential.model, eb.CompiledEnergy)


def test_per_chain_step_sizes():
    step = torch.tensor([0.01, 0.1, 1.0, 2.0], dtype=F64)
    state = MALA(step_size=step).init(torch.zeros(4, 3, dtype=F64), gaussian())
    torch.testing.assert_close(state.step_size, step)
    with pytest.raises(CompositionError, match="one value per chain"):
        MALA(step_size=step).init(torch.zeros(5, 3, dtype=F64), gaussian())
    with pytest.raises(ValueError, match="positive"):
        MALA(step_size=torch.tensor([0.1, -1.0, 0.1, 0.1])).init(torch.zeros(4, 3), gaussian())


def test_bad_hyper_parameters_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="step_size"):
        MALA(step_size=0.0)
    with pytest.raises(ValueError, match="n_leapfrog"):
        HMC(n_leapfrog=0)
    with pytest.raises(ValueError, match="metric"):
        HMC(metric="full")
    with pytest.raises(ValueError, match="betas"):
        ParallelTempering(betas=[0.5, 0.25])
    with pytest.raises(ValueError, match="decreasing"):
        AnnealedLangevin(noise_levels=[0.1, 1.0])
    with pytest.raises(ValueError, match="exactly one"):
        AnnealedLangevin()
    with pytest.raises(CompositionError, match="event_shape"):
        MALA().init(torch.zeros(4, 2), gaussian())
    with pytest.raises(TypeError, match="floating"):
        MALA().init(torch.zeros(4, 3, dtype=torch.long), gaussian())
    with pytest.raises(ValueError, match="n_chains or x0"):
        eb.sample(gaussian(), MALA(), n_steps=10)
    with pytest.raises(TypeError, match="x0 must be a tensor"):
        eb.sample(gaussian(), MALA(), n_steps=10, x0=[[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="on_nonfinite"):
        eb.sample(gaussian(), MALA(), n_chains=2, n_steps=10, on_nonfinite="ignore")


@pytest.mark.parametrize("sampler", [
    RandomWalkMH(), MALA(), HMC(), ParallelTempering(betas=[1.0, 0.5]),
    AnnealedLangevin(models=[gaussian()], mala=True),
], ids=lambda s: type(s).__name__)
def test_corrected_samplers_reject_score_only_models_naming_the_part(sampler):
    model = gaussian() & denoiser_score()
    with pytest.raises(CapabilityError, match="'denoiser' is score-only"):
        eb.sample(model, sampler, n_chains=4, n_steps=1)


def test_nan_wall_is_nan_in_energy_and_score():
    energy, score = nan_wall().energy_and_score(torch.tensor([[0.5], [1.5]], dtype=F64))
    assert torch.isfinite(energy[0]) and torch.isfinite(score[0]).all()
    assert torch.isnan(energy[1]) and torch.isnan(score[1]).all()


@pytest.mark.parametrize("target", [nan_wall, sink], ids=["nan", "-inf"])
@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc", "tempering"])
def test_corrected_samplers_reject_and_count_nonfinite_proposals(name, target):
    sampler = {"tempering": ParallelTempering(betas=[1.0, 0.5], sampler=MALA(step_size=0.5))
               }.get(name) or all_samplers()[name]
    x0 = torch.zeros(200, 1, dtype=F64)
    samples = eb.sample(target(), sampler, x0=x0, n_steps=100,
                        generator=torch.Generator().manual_seed(0))
    assert bool((samples.draws <= 1.0).all())
    assert torch.isfinite(samples.state.energy).all()
    assert int(samples.n_nonfinite.sum()) > 0
    assert samples.n_nonfinite.shape == (200,)
    assert int(samples.stats["nonfinite"].sum()) == int(samples.n_nonfinite.sum())


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_same_seed_gives_identical_draws_and_different_seeds_differ(name):
    def draws(seed):
        return eb.sample(model_for(name), all_samplers()[name], n_chains=8, n_steps=30,
                         warmup=20, generator=torch.Generator().manual_seed(seed)).draws
    first, again, other = draws(7), draws(7), draws(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", ["ula", "mala", "rwmh", "tempering"])
def test_langevin_and_mh_use_one_evaluation_per_step(name):
    net = CountingEnergy()
    model = eb.from_energy(net, 3, name="counted")
    sampler = all_samplers()[name]
    state = sampler.init(torch.randn(10, 3), model)
    net.calls = 0
    for _ in range(5):
        state, _ = sampler.step(state, None)
    assert net.calls == 5  # tempering: all replicas in one batch


@pytest.mark.slow  # dynamo traces four kernels: ~13 s
def test_updates_trace_into_one_graph_for_torch_compile():
    """With the random numbers drawn outside, a whole step is one torch.compile graph."""
    from ebmalgebra.samplers.langevin import ula_update
    from ebmalgebra.samplers.mala import mala_update

    model = Banana() & gaussian(2, torch.float32) ** 0.5
    state = MALA().init(torch.randn(10, 2), model)
    noise, uniform = torch.randn(10, 2), torch.rand(10)
    hmc, mh = HMC(jitter=0.0), RandomWalkMH()
    for update, args in [
        (mala_update, (state, noise, uniform)),
        (ula_update, (state, noise)),
        (hmc.update, (hmc.init(torch.randn(10, 2), model), noise, uniform, 3)),
        (mh.update, (mh.init(torch.randn(10, 2), model), noise, uniform)),
    ]:
        explanation = torch._dynamo.explain(update)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


# ------------------------------------------------------------- declared facts

@pytest.mark.parametrize("sampler, invariant, exponent, needs_energy, flags", [
    (RandomWalkMH(), True, 0.5, True, ("adapt_step_size",)),
    (MALA(), True, 1.0, True, ("adapt_step_size",)),
    (HMC(), True, 0.5, True, ("adapt_step_size", "adapt_mass")),
    (ULA(), False, None, False, ()),
    (AnnealedLangevin(models=[gaussian()], mala=False), False, None, False, ()),
    (AnnealedLangevin(models=[gaussian()], mala=True), False, None, True, ()),
    (ParallelTempering(betas=[1.0, 0.5]), False, None, True, ()),
], ids=lambda value: type(value).__name__ if isinstance(value, Sampler) else "")
def test_samplers_declare_their_facts(sampler, invariant, exponent, needs_energy, flags):
    """Facts other modules read instead of lists of classes. The exponents: p̃^β has
    scale ∝ β^(−1/2), so a step that is a length (random walk, leapfrog) grows like
    β^(−1/2) and a Langevin step, a variance, like β^(−1)."""
    assert sampler.leaves_target_invariant is invariant
    assert sampler.tempering_step_exponent == exponent
    assert sampler.needs_energy is needs_energy
    assert sampler.adaptation_flags == flags
    if not invariant:
        assert sampler.not_invariant_because != Sampler.not_invariant_because


def test_samplers_declare_whether_they_anneal():
    """apps.inverse reads these instead of asking for the AnnealedLangevin class."""
    by_levels = AnnealedLangevin(noise_levels=[1.0, 0.5, 0.1], steps_per_level=4)
    assert by_levels.noise_levels == (1.0, 0.5, 0.1) and by_levels.n_annealing_steps == 12
    by_models = AnnealedLangevin(models=[gaussian()], steps_per_level=4)
    assert by_models.noise_levels is None and by_models.n_annealing_steps == 8
    for sampler in (RandomWalkMH(), MALA(), HMC(), ULA(), ParallelTempering(betas=[1.0, 0.5])):
        assert sampler.noise_levels is None and sampler.n_annealing_steps is None


def test_a_sampler_of_ones_own_runs_in_tempering_and_ais_from_its_declared_facts():
    """PreconditionedWalk (tests/sampler_helpers.py) is known to no library module."""
    model = Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    tempering = ParallelTempering(betas=[1.0, 0.25], sampler=PreconditionedWalk(step_size=0.4))
    state = tempering.init(torch.zeros(8, 2, dtype=F64), model)
    # ε_β = ε · β^(−½) for its declared exponent ½.
    torch.testing.assert_close(state.replicas.step_size,
                               torch.tensor([0.4] * 8 + [0.8] * 8, dtype=F64))
    unnormalised = 3.0 * model  # log Z = log 3
    walk = PreconditionedWalk(step_size=0.8, adapt_step_size=False, adapt_mass=False)
    estimate = eb.estimate_log_z(unnormalised, base=Gaussian(torch.zeros(2, dtype=F64), 3.0),
                                 n_particles=256, sampler=walk, exact=False,
                                 generator=torch.Generator().manual_seed(0))
    # 4 stderr: the reported stderr is calibrated (tests/test_normalize.py).
    assert abs(estimate.log_z - math.log(3.0)) < 4 * estimate.stderr


def test_kernels_that_do_not_declare_invariance_are_refused_by_tempering_and_ais():
    with pytest.raises(TypeError, match="must leave its target invariant.*got ULA"):
        ParallelTempering(betas=[1.0, 0.5], sampler=ULA())
    with pytest.raises(ValueError, match="no Metropolis–Hastings correction"):
        eb.estimate_log_z(gaussian() & gaussian(), sampler=ULA(), exact=False)


def test_derived_values_are_recomputed_when_their_tensor_changes():
    from ebmalgebra.samplers.base import Derived

    calls = []

    def double(tensor):
        calls.append(tensor)
        return 2 * tensor

    derived = Derived(double)
    step_size = torch.tensor([0.1, 0.2])
    assert torch.equal(derived(step_size), 2 * step_size)
    assert torch.equal(derived(step_size), 2 * step_size) and len(calls) == 1  # cached
    step_size.mul_(2.0)  # in place: the version counter moves
    assert torch.equal(derived(step_size), torch.tensor([0.4, 0.8])) and len(calls) == 2
    assert torch.equal(derived(step_size.clone()), torch.tensor([0.4, 0.8])) and len(calls) == 3


def test_derived_values_are_recomputed_when_an_extra_argument_changes():
    from ebmalgebra.samplers.base import Derived
    from ebmalgebra.samplers.langevin import langevin_scales

    derived = Derived(langevin_scales)
    step_size = torch.tensor([0.5, 2.0])
    epsilon, sigma = derived(step_size, 2)
    assert epsilon.shape == (2, 1) and torch.equal(sigma, torch.tensor([[1.0], [2.0]]))
    assert derived(step_size, 2)[0] is epsilon  # cached
    assert derived(step_size, 3)[0].shape == (2, 1, 1)  # another position rank


def test_shared_value_is_the_step_size_every_chain_has():
    from ebmalgebra.samplers.base import shared_value

    shared = shared_value(torch.full((5,), 0.25, dtype=F64))
    assert shared.shape == () and shared.dtype == F64 and float(shared) == 0.25
    assert shared_value(torch.tensor([0.25, 0.25, 0.5])) is None
    assert shared_value(torch.full((3, 1), 0.25)) is None  # not one value per chain


@pytest.mark.parametrize("dim", [1, 2, 7])
def test_kernels_with_a_shared_step_size_give_the_per_chain_results(dim):
    # ULA, MALA and HMC scale by a 0-d step size when every chain has the same one; an
    # (n, 1, …, 1) factor computes each coordinate as the same product, so the states
    # must agree bit for bit.
    from ebmalgebra.samplers.base import shared_value
    from ebmalgebra.samplers.langevin import langevin_scales, shared_langevin_scales, ula_update
    from ebmalgebra.samplers.mala import mala_update

    generator = torch.Generator().manual_seed(0)
    model = Banana() if dim == 2 else gaussian(dim, torch.float32)
    x0 = 3.0 * torch.randn(200, dim, generator=generator)
    noise = torch.randn(200, dim, generator=generator)
    uniform = torch.rand(200, generator=generator)
    state = MALA(step_size=0.037).init(x0, model)
    column = langevin_scales(state.step_size, 2)
    shared = shared_langevin_scales(state.step_size, 2)
    assert shared.step_size.dim() == 0 and column.step_size.shape == (200, 1)
    for per_chain, common in zip(ula_update(state, noise, column),
                                 ula_update(state, noise, shared), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(per_chain[:5], common[:5], strict=True))
    for per_chain, common in zip(mala_update(state, noise, uniform, column),
                                 mala_update(state, noise, uniform, shared), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(per_chain[:5], common[:5], strict=True))

    hmc = HMC(step_size=0.137, n_leapfrog=5)
    state = hmc.init(x0, model)
    per_chain = hmc.update(state, noise, uniform, 5)
    common = hmc.update(state, noise, uniform, 5, shared_value(state.step_size))
    for a, b in zip((*per_chain[0][:4], *per_chain[1][:5]), (*common[0][:4], *common[1][:5]),
                    strict=True):
        assert torch.equal(a, b)
