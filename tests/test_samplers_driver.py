"""The ``sample`` driver and the ``Samples`` record (samplers/driver.py).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from sampler_helpers import F64, all_samplers, gaussian, nan_wall

import ebmalgebra as eb
from ebmalgebra import diagnostics
from ebmalgebra.samplers import HMC, MALA, ULA, NonFiniteError, RandomWalkMH, Samples, driver
from ebmalgebra.targets import Gaussian


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


class _WideInfo(NamedTuple):
    acceptance_rate: torch.Tensor
    nonfinite: torch.Tensor
    extra: torch.Tensor


class _ReusedWideInfoMALA(MALA):
    """MALA reporting one ``(n_chains, 2)`` field, the same tensor object every step."""

    def step(self, state, generator=None):
        state, info = super().step(state, generator)
        if not hasattr(self, "_extra"):
            self._extra = torch.arange(2.0, dtype=state.position.dtype).expand(
                len(state.position), 2).clone()
        return state, _WideInfo(info.acceptance_rate, info.nonfinite, self._extra)


def test_a_reused_per_chain_field_with_an_event_dimension_is_recorded():
    # Regression: a block of one repeated (n_chains, k) tensor was expanded as if 1-D.
    samples = eb.sample(gaussian(), _ReusedWideInfoMALA(), n_chains=4, n_steps=70,
                        generator=torch.Generator().manual_seed(0))
    assert samples.stats["extra"].shape == (70, 2)
    assert torch.equal(samples.stats["extra"], torch.tensor([[0.0, 1.0]]).expand(70, 2).to(F64))
    assert torch.equal(samples.chain_stats["extra"][:, :, 1], torch.ones(70, 4, dtype=F64))


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


def test_default_x0_takes_the_dtype_of_a_torch_distributions_parameters():
    # Regression: a distribution's tensors are neither parameters nor buffers, so the
    # standard-normal start of a model that cannot sample was float32 for a float64 model.
    gamma = torch.distributions.Gamma(torch.tensor([2.0, 3.0], dtype=F64),
                                      torch.ones(2, dtype=F64))
    model = eb.from_distribution(torch.distributions.Independent(gamma, 1))
    product = model & eb.from_energy(lambda x: x.square().sum(-1), event_shape=(2,))
    samples = eb.sample(product, RandomWalkMH(step_size=1e-9, adapt_step_size=False),
                        n_chains=4, n_steps=1, generator=torch.Generator().manual_seed(3))
    assert samples.draws.dtype == F64
    # The positive support is sampled through exp: the start is exp of the normal draws.
    expected = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64).exp()
    torch.testing.assert_close(samples.draws[0], expected, atol=1e-6, rtol=0)


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


def test_summary_reports_divergent_transitions_after_warmup():
    """ε = 2.5 on a unit Gaussian is past the leapfrog's stability limit ε < 2, so every
    trajectory of 10 steps grows its energy error ~4²⁰-fold: all transitions diverge,
    warmup included, and the summary counts those after warmup only."""
    sampler = HMC(step_size=2.5, n_leapfrog=10, adapt_step_size=False, adapt_mass=False)
    samples = eb.sample(gaussian(2), sampler, n_chains=4, n_steps=30, warmup=20,
                        generator=torch.Generator().manual_seed(0))
    assert int(samples.n_divergent.sum()) == 120
    lines = str(samples.summary()).splitlines()
    assert lines[0].startswith("divergent: 120 of 120 transitions after warmup (100.00%)")
    assert "target_accept (now 0.8)" in lines[0]
    calm = eb.sample(gaussian(2), HMC(), n_chains=4, n_steps=30, warmup=50,
                     generator=torch.Generator().manual_seed(0))
    assert int(calm.n_divergent.sum()) == 0 and "divergent" not in str(calm.summary())


def test_sample_is_exported():
    assert eb.sample is eb.samplers.sample
    assert "sample" in eb.__all__ and "samplers" in eb.__all__


def sample_nan_wall_seeing(sampler, see, monkeypatch, copy_rows: bool, **options):
    """``sample()`` of the NaN wall from 8 chains at 0, its recorder holding the step
    tensors (``copy_rows`` False, as small runs do) or copying them into reused buffers
    (True, as large runs do); returns the samples and, per step index, ``see(state,
    info)`` as the callback saw it."""
    monkeypatch.setattr(driver, "_RETAIN_MAX_NUMEL", 0 if copy_rows else 10**9)
    seen = {}

    def remember(index, state, info):
        seen[index] = see(state, info)

    samples = eb.sample(nan_wall(), sampler, x0=torch.zeros(8, 1, dtype=F64), callback=remember,
                        generator=torch.Generator().manual_seed(0), **options)
    return samples, seen


@pytest.mark.parametrize("copy_rows", [False, True])
@pytest.mark.parametrize("warmup, thin, n_steps", [(0, 1, 70), (30, 3, 150), (5, 4, 3)])
def test_chain_stats_are_the_infos_and_energies_of_the_kept_draws(warmup, thin, n_steps,
                                                                  copy_rows, monkeypatch):
    # The driver collects them in blocks across warmup and flush boundaries, holding
    # the step tensors (small runs) or copying them into reused buffers (large runs);
    # compare with the infos the callback sees.
    samples, seen = sample_nan_wall_seeing(
        MALA(step_size=0.5), lambda state, info: (
            info.acceptance_rate.clone(), info.is_accepted.clone(), state.step_size.clone(),
            state.energy.clone()),
        monkeypatch, copy_rows, n_steps=n_steps, warmup=warmup, thin=thin)
    rates = torch.stack([seen[i][0] for i in range(warmup + n_steps)])
    assert torch.equal(samples.stats["acceptance_rate"], rates.mean(1))
    kept = [warmup + thin * (k + 1) - 1 for k in range(n_steps // thin)]
    if not kept:
        assert samples.chain_stats == {}
        return
    stats = samples.chain_stats
    for column, name in enumerate(("acceptance_rate", "is_accepted", "step_size")):
        assert torch.equal(stats[name], torch.stack([seen[i][column] for i in kept])), name
    assert torch.equal(stats["lp"], -torch.stack([seen[i][3] for i in kept]))
    assert bool(stats["nonfinite"].any()), "the wall should reject some proposals"


@pytest.mark.parametrize("copy_rows", [False, True])
@pytest.mark.parametrize("warmup, thin, n_steps", [(0, 1, 150), (30, 3, 150)])
def test_info_tensors_repeated_across_steps_are_recorded_step_by_step(warmup, thin, n_steps,
                                                                      copy_rows, monkeypatch):
    # MALA hands back its all-clear frozen mask (the same tensor) as info.nonfinite while
    # every proposal is finite and a new mask when the wall rejects some, so blocks hold
    # runs of one tensor between new ones (and ULA's frozen mask, below, is one tensor all
    # run long). The recorder stores a run once; compare with every step's info as the
    # callback sees it, stacked.
    samples, seen = sample_nan_wall_seeing(
        MALA(step_size=0.2), lambda state, info: (
            info.nonfinite.clone(), state.step_size.clone(), info.nonfinite is state.frozen),
        monkeypatch, copy_rows, n_steps=n_steps, warmup=warmup, thin=thin)
    flags = torch.stack([seen[i][0] for i in range(warmup + n_steps)])
    steps = torch.stack([seen[i][1] for i in range(warmup + n_steps)])
    repeated = sum(seen[i][2] for i in range(warmup + n_steps))
    assert 0 < repeated < warmup + n_steps - 10, "runs of the frozen mask between new masks"
    assert torch.equal(samples.stats["nonfinite"], flags.sum(1))
    # (in warmup the callback sees the step size adapted after the step)
    assert torch.equal(samples.stats["step_size"][warmup:], steps[warmup:].mean(1))
    assert torch.equal(samples.chain_counts["nonfinite"], flags[warmup:].sum(0))
    kept = [warmup + thin * (k + 1) - 1 for k in range(n_steps // thin)]
    assert torch.equal(samples.chain_stats["nonfinite"], flags[kept])
    assert torch.equal(samples.chain_stats["step_size"], steps[kept])

    frozen = eb.sample(gaussian(1), ULA(step_size=0.1), n_chains=8, n_steps=n_steps,
                       warmup=warmup, thin=thin, generator=torch.Generator().manual_seed(0))
    assert torch.equal(frozen.stats["frozen"], torch.zeros(warmup + n_steps, dtype=torch.long))
    assert torch.equal(frozen.chain_stats["frozen"], torch.zeros(n_steps // thin, 8,
                                                                  dtype=torch.bool))
    assert torch.equal(frozen.stats["step_size"], torch.full((warmup + n_steps,), 0.1,
                                                             dtype=F64))


class _FlagInfo(NamedTuple):
    acceptance_rate: torch.Tensor
    divergent: torch.Tensor


class _FlaggingMALA(MALA):
    """MALA whose info flags chains 0 and 2 as divergent at every step: one tensor, handed
    back step after step, as a sampler of one's own may."""

    def step(self, state, generator=None):
        state, info = super().step(state, generator)
        if getattr(self, "flags", None) is None:
            self.flags = torch.zeros(state.energy.shape, dtype=torch.bool)
            self.flags[[0, 2]] = True
        return state, _FlagInfo(info.acceptance_rate, self.flags)


@pytest.mark.parametrize("copy_rows", [False, True])
def test_a_flag_repeated_across_steps_is_counted_at_every_step(copy_rows, monkeypatch):
    monkeypatch.setattr(driver, "_RETAIN_MAX_NUMEL", 0 if copy_rows else 10**9)
    warmup, n_steps = 25, 150
    samples = eb.sample(gaussian(1), _FlaggingMALA(step_size=0.5), n_chains=4, n_steps=n_steps,
                        warmup=warmup, thin=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples.chain_counts["divergent"], torch.tensor([n_steps, 0, n_steps, 0]))
    assert torch.equal(samples.n_divergent, torch.tensor([n_steps, 0, n_steps, 0]))
    assert torch.equal(samples.stats["divergent"], torch.full((warmup + n_steps,), 2))
    assert torch.equal(samples.chain_stats["divergent"],
                       torch.tensor([True, False, True, False]).expand(n_steps // 2, 4))


@pytest.mark.parametrize("name", ["rwmh", "ula", "mala", "hmc", "hmc_dense", "nuts",
                                  "tempering"])
def test_sampling_inside_inference_mode_gives_the_same_draws(name):
    # Regression: MALA, HMC and ULA raised "Inference tensors do not track version
    # counter" (their cached step constants read tensor._version).
    model = eb.from_energy(lambda x: 0.5 * x.square().sum(-1), 2, name="q")  # autograd
    x0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))

    def draws():
        return eb.sample(model, all_samplers()[name], x0=x0.clone(), n_steps=5, warmup=30,
                         generator=torch.Generator().manual_seed(1)).draws

    expected = draws()
    with torch.inference_mode():
        found = draws()
    assert torch.equal(found, expected)
