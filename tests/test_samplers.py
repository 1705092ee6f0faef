"""The sampler kernels and ``sample``: shapes, capabilities, non-finite handling,
reproducibility, gradient counts, adaptation and the ``Samples`` record.

Statistical correctness (moments, stationarity, mixing) is in
tests/test_samplers_statistics.py.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import CapabilityError, CompositionError, diagnostics
from ebmalgebra.samplers import (
    HMC,
    MALA,
    ULA,
    AnnealedLangevin,
    NonFiniteError,
    ParallelTempering,
    RandomWalkMH,
    Samples,
)
from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS, mass_windows
from ebmalgebra.samplers.metrics import DenseMetric
from ebmalgebra.targets import Banana, Gaussian, MultivariateGaussian

F64 = torch.float64


def gaussian(dim: int = 3, dtype=F64) -> eb.EnergyModel:
    return Gaussian(torch.zeros(dim, dtype=dtype), 1.0, name="g")


def all_samplers(model=None) -> dict:
    return {
        "rwmh": RandomWalkMH(step_size=0.5),
        "ula": ULA(step_size=0.1),
        "mala": MALA(step_size=0.3),
        "hmc": HMC(step_size=0.3, n_leapfrog=4),
        "hmc_dense": HMC(step_size=0.3, n_leapfrog=4, metric="dense"),
        "annealed": AnnealedLangevin(noise_levels=[1.0, 0.5, 0.1], steps_per_level=2,
                                     step_size=0.05, mala=0.6),
        "tempering": ParallelTempering(betas=[1.0, 0.5, 0.25], sampler=MALA(step_size=0.3)),
        "tempering_rwmh": ParallelTempering(betas=[1.0, 0.3], sampler=RandomWalkMH()),
        "tempering_hmc": ParallelTempering(betas=[1.0, 0.3], sampler=HMC(n_leapfrog=3)),
    }


def noise_conditioned_gaussian(dim: int = 3) -> eb.EnergyModel:
    """E(x, t) = ‖x‖² / (2(1 + t²)): N(0, 1) convolved with N(0, t²)."""
    return eb.from_energy(lambda x, t: 0.5 * (x * x).sum(-1) / (1.0 + t**2), dim,
                          name="noisy", noise_conditioned=True)


def model_for(name: str, dim: int = 3) -> eb.EnergyModel:
    return noise_conditioned_gaussian(dim) if name == "annealed" else gaussian(dim)


SAMPLER_NAMES = tuple(all_samplers())


# ------------------------------------------------------------ kernel contract

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


# ---------------------------------------------------------- capabilities

def denoiser_score():
    return eb.from_score(lambda x: -x, 3, name="denoiser")


@pytest.mark.parametrize("sampler", [
    RandomWalkMH(), MALA(), HMC(), ParallelTempering(betas=[1.0, 0.5]),
    AnnealedLangevin(models=[gaussian()], mala=True),
], ids=lambda s: type(s).__name__)
def test_corrected_samplers_reject_score_only_models_naming_the_part(sampler):
    model = gaussian() & denoiser_score()
    with pytest.raises(CapabilityError, match="'denoiser' is score-only"):
        eb.sample(model, sampler, n_chains=4, n_steps=1)


def test_ula_and_uncorrected_annealing_run_on_score_only_models():
    model = gaussian() & denoiser_score()  # s = −2x: N(0, ½)
    samples = eb.sample(model, ULA(step_size=0.05), n_chains=64, n_steps=300, warmup=100,
                        x0=torch.randn(64, 3, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    assert torch.isnan(samples.state.energy).all()  # no energy to report
    assert 0.4 < float(samples.draws.var()) < 0.7
    noisy = eb.from_score(lambda x, t: -x / (1.0 + t**2), 3, name="noisy_score",
                          noise_conditioned=True)
    annealed = AnnealedLangevin(noise_levels=[2.0, 1.0, 0.1], steps_per_level=20,
                                step_size=0.05)
    samples = eb.sample(noisy, annealed, x0=torch.randn(16, 3, dtype=F64), n_steps=10,
                        warmup=annealed.n_annealing_steps)
    assert samples.state.level == 2


# ----------------------------------------------------------- non-finite

def nan_wall() -> eb.EnergyModel:
    """N(0, 1) in 1-D whose energy and score are NaN for x > 1 (√(1 − x) there)."""
    def energy(x):
        return (0.5 * x * x + 0.0 * torch.sqrt(1.0 - x)).sum(-1)
    return eb.from_energy(energy, 1, name="wall")


def sink() -> eb.EnergyModel:
    """N(0, 1) with a −∞ energy (infinite density) for x > 1: never a valid state."""
    def energy(x):
        e = 0.5 * (x * x).sum(-1)
        return torch.where(x[:, 0] > 1.0, -math.inf, e)
    return eb.from_energy(energy, 1, name="sink")


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


@pytest.mark.parametrize("name", ["ula", "mala", "hmc"])
def test_on_nonfinite_raise_names_step_and_chain(name):
    x0 = torch.zeros(50, 1, dtype=F64)
    with pytest.raises(NonFiniteError, match=r"step \d+ .*chain\(s\) \[\d+"):
        eb.sample(nan_wall(), all_samplers()[name], x0=x0, n_steps=200,
                  on_nonfinite="raise", generator=torch.Generator().manual_seed(0))


def test_nonfinite_starting_points_raise():
    x0 = torch.tensor([[0.0], [2.0]], dtype=F64)
    with pytest.raises(NonFiniteError, match=r"chain\(s\) \[1\]"):
        eb.sample(nan_wall(), MALA(), x0=x0, n_steps=1)


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


# ---------------------------------------------------------- reproducibility

@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_same_seed_gives_identical_draws_and_different_seeds_differ(name):
    def draws(seed):
        return eb.sample(model_for(name), all_samplers()[name], n_chains=8, n_steps=30,
                         warmup=20, generator=torch.Generator().manual_seed(seed)).draws
    first, again, other = draws(7), draws(7), draws(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ------------------------------------------------------------- gradients

class CountingEnergy(torch.nn.Module):
    """½‖x‖² by autograd (not analytic), counting forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 0.5 * (x * x).sum(-1)


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


# ------------------------------------------------------------- adaptation

def test_mass_windows_follow_stan():
    assert mass_windows(1000) == ((75, 100), (100, 150), (150, 250), (250, 450), (450, 950))
    assert mass_windows(100) == ((15, 90),)
    assert mass_windows(19) == ()


def test_mass_windows_leave_the_final_step_size_buffer_at_least_five_steps():
    # 10% of 20–49 steps is 2–4 steps, too few for dual averaging after the restart.
    assert mass_windows(20) == ((3, 15),)
    assert mass_windows(49) == ((7, 44),)
    assert mass_windows(50) == ((7, 45),)  # 10% is 5: Stan's split as before


ADAPTING = {
    "mala": lambda adapt: MALA(step_size=0.5, adapt_step_size=adapt),
    "rwmh": lambda adapt: RandomWalkMH(step_size=0.5, adapt_step_size=adapt),
    "hmc": lambda adapt: HMC(step_size=0.5, n_leapfrog=3, adapt_step_size=adapt,
                             adapt_mass=adapt),
    "tempering": lambda adapt: ParallelTempering(
        betas=[1.0, 0.5], sampler=MALA(step_size=0.5), adapt_step_size=adapt),
}


@pytest.mark.parametrize("name", ADAPTING)
@pytest.mark.parametrize("warmup", [1, MIN_ADAPTATION_STEPS - 1])
def test_a_warmup_too_short_to_adapt_only_burns_in_with_one_warning(name, warmup):
    """Dual averaging's first iterates are ~10 ε₀ by design (μ = log 10 ε₀), so the ε̄ of
    a few steps wrecked the step size (MALA, warmup=1: ε 0.5 → 9.4, acceptance 0.006)."""
    def run(adapt):
        return eb.sample(gaussian(2), ADAPTING[name](adapt), n_chains=16, n_steps=10,
                         warmup=warmup, x0=torch.zeros(16, 2, dtype=F64),
                         generator=torch.Generator().manual_seed(0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = run(True)
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    message = str(caught[0].message)
    assert f"warmup={warmup} is too short" in message and "adapt_step_size=False" in message
    assert caught[0].filename == __file__  # points at the sample call
    assert torch.all(short.step_size == 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        burn_in = run(False)  # a burn-in without adaptation does not warn
    assert torch.equal(short.draws, burn_in.draws)


def test_a_short_mala_warmup_keeps_the_acceptance_of_the_initial_step_size():
    def acceptance(warmup):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            samples = eb.sample(Gaussian(torch.zeros(2), 1.0), MALA(step_size=0.5),
                                n_chains=64, n_steps=200, warmup=warmup,
                                generator=torch.Generator().manual_seed(0))
        return float(samples.acceptance_rate[warmup:].mean())

    assert acceptance(1) == pytest.approx(acceptance(0), abs=0.05)  # was 0.006 vs 0.875
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(acceptance(MIN_ADAPTATION_STEPS) - 0.574) < 0.1  # adapts, no warning


def test_hmc_warmup_of_twenty_steps_tunes_the_step_size_for_the_new_metric():
    """The final buffer after the mass window was 2 steps, whose ε̄ accepted nothing."""
    model = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    samples = eb.sample(model, HMC(), n_chains=64, n_steps=50, warmup=20,
                        generator=torch.Generator().manual_seed(0))
    assert float(samples.acceptance_rate[20:].mean()) > 0.6  # target 0.8; was 0.0


def test_step_size_is_fixed_after_warmup_and_acceptance_near_target():
    samples = eb.sample(gaussian(10), MALA(step_size=5.0), n_chains=64, n_steps=200,
                        warmup=300, x0=torch.randn(64, 10, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    after = samples.step_size[samples.warmup:]
    assert torch.all(after == after[0])
    assert after[0] < 5.0
    assert abs(float(samples.acceptance_rate[samples.warmup:].mean()) - 0.574) < 0.1
    assert samples.acceptance_rate.shape == (500,)


def test_dense_hmc_adapts_the_covariance_of_a_correlated_gaussian():
    covariance = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=F64) * 4.0
    model = MultivariateGaussian(torch.zeros(2, dtype=F64), covariance)
    samples = eb.sample(model, HMC(metric="dense", n_leapfrog=5), n_chains=64, n_steps=50,
                        warmup=300, x0=torch.randn(64, 2, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.state.inverse_mass, covariance, rtol=0.15, atol=0.3)
    assert samples.state.mass_factor.shape == (2, 2)


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


class _PairInfo(NamedTuple):
    acceptance_rate: torch.Tensor
    nonfinite: torch.Tensor
    pair: torch.Tensor


class _PairMALA(MALA):
    """MALA whose info has an undeclared ``(2,)`` tensor: neither per chain nor declared."""

    def step(self, state, generator=None):
        state, info = super().step(state, generator)
        return state, _PairInfo(info.acceptance_rate, info.nonfinite,
                                torch.zeros(2, dtype=state.position.dtype))


def test_info_tensors_that_are_not_per_chain_must_be_declared():
    with pytest.raises(ValueError, match=r"_PairInfo\.pair has shape \(2,\).*n_chains=3.*"
                                         r"_PairInfo\.per_step_fields"):
        eb.sample(gaussian(), _PairMALA(), n_chains=3, n_steps=2)
    _PairInfo.per_step_fields = ("pair",)
    try:
        samples = eb.sample(gaussian(), _PairMALA(), n_chains=2, n_steps=2)
    finally:
        del _PairInfo.per_step_fields
    assert samples.stats["pair"].shape == (2, 2)  # recorded whole, though 2 == n_chains


class _OneStepMALA(MALA):
    """MALA whose state reports its step size as one number, as a sampler of one's own may."""

    def step(self, state, generator=None):
        if not isinstance(state.step_size, torch.Tensor):
            state = state._replace(step_size=torch.full_like(state.energy, state.step_size))
        state, info = super().step(state, generator)
        return state._replace(step_size=float(state.step_size[0])), info


def test_a_state_with_one_number_as_step_size_is_recorded_as_it_is():
    samples = eb.sample(gaussian(), _OneStepMALA(step_size=0.3, adapt_step_size=False),
                        n_chains=3, n_steps=4, generator=torch.Generator().manual_seed(0))
    assert samples.stats["step_size"].shape == (4,)
    assert torch.all(samples.stats["step_size"] == 0.3)


def test_tempering_adapts_one_step_size_per_replica():
    sampler = ParallelTempering(betas=[1.0, 0.1, 0.01], sampler=MALA(step_size=0.1))
    samples = eb.sample(gaussian(1), sampler, n_chains=32, n_steps=10, warmup=200,
                        generator=torch.Generator().manual_seed(0))
    steps = samples.state.replicas.step_size.reshape(3, 32)
    assert torch.all(steps == steps[:, :1])  # pooled within a replica
    assert steps[0, 0] < steps[1, 0] < steps[2, 0]  # hotter replicas take larger steps
    assert samples.stats["swap_acceptance"].shape == (210, 2)
    assert samples.state.position.shape == (32, 1)


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


# ------------------------------------------------------------- annealing

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


# ----------------------------------------------------------------- driver

def test_default_x0_exact_draws_when_the_model_can_sample():
    model = Gaussian(torch.full((2,), 50.0, dtype=F64), 0.1, name="far")
    samples = eb.sample(model, MALA(step_size=0.001, adapt_step_size=False), n_chains=16,
                        n_steps=1, generator=torch.Generator().manual_seed(3))
    assert (samples.draws - 50.0).abs().max() < 1.0  # started at exact draws
    product = model & gaussian(2)  # cannot sample: standard normal start, float64 buffers
    state_draws = eb.sample(product, RandomWalkMH(step_size=1e-9, adapt_step_size=False),
                            n_chains=4, n_steps=1, generator=torch.Generator().manual_seed(3))
    assert state_draws.draws.dtype == F64
    expected = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(state_draws.draws[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options, message", [
    ({"x0": torch.zeros(0, 3, dtype=F64)}, r"x0 has shape \(0, 3\): no chains"),
    ({"n_chains": 0, "x0": torch.zeros(0, 3, dtype=F64)}, "n_chains must be a positive int, got 0"),
    ({"n_chains": True, "x0": torch.zeros(1, 3, dtype=F64)}, "n_chains must be a positive int, "
                                                             "got True"),
    ({"n_chains": 4.0, "x0": torch.zeros(4, 3, dtype=F64)}, "n_chains must be a positive int, "
                                                            "got 4.0"),
    ({"n_chains": 4.0}, "n_chains must be a positive int, got 4.0"),
    ({"n_chains": 3, "x0": torch.zeros(4, 3, dtype=F64)}, "disagrees with n_chains=3"),
], ids=["empty x0", "zero", "bool", "float with x0", "float", "disagree"])
def test_n_chains_and_x0_are_checked_together(options, message):
    with pytest.raises(ValueError, match=message):
        eb.sample(gaussian(), MALA(), n_steps=2, **options)


class _MetaEnergy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3, device="meta"))

    def forward(self, x):
        return 0.5 * (self.weight * x * x).sum(-1)


def test_a_generator_on_another_device_type_than_the_run_is_named():
    """'meta' tensors stand in for an accelerator: a CPU generator cannot draw there."""
    cpu = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"generator is on device 'cpu' but x0 is on 'meta'; "
                                         r"pass torch.Generator\(device='meta'\)"):
        eb.sample(gaussian(), MALA(), x0=torch.zeros(4, 3, device="meta"), n_steps=2,
                  generator=cpu)
    model = eb.from_energy(_MetaEnergy(), 3, name="on_meta")  # default x0 goes to 'meta'
    with pytest.raises(ValueError, match=r"generator is on device 'cpu' but the model"):
        eb.sample(model, MALA(), n_chains=4, n_steps=2, generator=cpu)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        eb.sample(gaussian(), MALA(), n_chains=4, n_steps=2, generator=0)


def test_thinning_keeps_every_kth_step():
    def run(thin):
        return eb.sample(gaussian(), MALA(step_size=0.3), n_chains=4, n_steps=12, warmup=20,
                         thin=thin, generator=torch.Generator().manual_seed(0))
    full, thinned = run(1), run(3)
    assert thinned.draws.shape == (4, 4, 3)
    assert torch.equal(thinned.draws, full.draws[2::3])


def test_callback_sees_every_step():
    calls = []
    eb.sample(gaussian(), MALA(adapt_step_size=False), n_chains=2, n_steps=4, warmup=3,
              callback=lambda i, state, info: calls.append((i, state.position.shape)))
    assert [i for i, _ in calls] == list(range(7))


def test_progress_bar_only_when_asked(capsys):
    eb.sample(gaussian(), MALA(), n_chains=2, n_steps=5, progress=True)
    assert "MALA" in capsys.readouterr().err
    eb.sample(gaussian(), MALA(), n_chains=2, n_steps=5)  # stderr is not a terminal here
    eb.sample(gaussian(), MALA(), n_chains=2, n_steps=5, progress=False)
    assert capsys.readouterr().err == ""


def test_samples_delegate_to_diagnostics():
    samples = eb.sample(gaussian(2), HMC(), n_chains=4, n_steps=100, warmup=50,
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(samples, Samples) and samples.draws.shape == (100, 4, 2)
    torch.testing.assert_close(samples.ess(), diagnostics.ess(samples.draws))
    torch.testing.assert_close(samples.ess("tail"), diagnostics.ess(samples.draws, "tail"))
    torch.testing.assert_close(samples.rhat(), diagnostics.rhat(samples.draws))
    assert str(samples.summary("theta")) == str(diagnostics.summary(samples.draws, "theta"))
    assert "HMC: 100 draws x 4 chains" in repr(samples)
    assert samples.stats["n_leapfrog"].shape == (150,)


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


def test_sample_is_exported():
    assert eb.sample is eb.samplers.sample
    assert "sample" in eb.__all__ and "samplers" in eb.__all__
