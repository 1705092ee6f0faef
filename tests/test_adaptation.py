"""Warmup adaptation (samplers/adaptation.py): dual averaging against an independent
implementation of Hoffman & Gelman (2014), Stan's windows and regularised metric, and
the generic window adaptation.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from sampler_helpers import (
    F64,
    PreconditionedWalk,
    WindowRecorder,
    assert_window_metric,
    gaussian,
)

import ebmalgebra as eb
from ebmalgebra.samplers import HMC, MALA, ULA, MALAInfo, ParallelTempering, RandomWalkMH
from ebmalgebra.samplers.adaptation import (
    MIN_ADAPTATION_STEPS,
    DualAveraging,
    StepSizeAdaptation,
    WelfordCovariance,
    WindowAdaptation,
    mass_windows,
    window_adaptation,
)
from ebmalgebra.samplers.metrics import DiagonalMetric
from ebmalgebra.targets import Gaussian, MultivariateGaussian


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


# -------------------------------------------- dual averaging, replayed independently

def replay_dual_averaging(initial_step: float, accept_means: list[float], target: float,
                          restarts: tuple[int, ...] = ()) -> tuple[list[float], float]:
    """Hoffman & Gelman (2014), Algorithm 5's adaptation, written out with Stan's
    constants (t₀ = 10, γ = 0.05, κ = 0.75), restarting from the current ε after the
    steps whose index + 1 is in ``restarts`` (the ends of the metric windows).

    Returns the iterates ε_t and the final averaged ε̄.
    """
    log_step = math.log(initial_step)
    mu, error_avg, log_avg, t = log_step + math.log(10.0), 0.0, 0.0, 0
    iterates = []
    for index, accept in enumerate(accept_means):
        t += 1
        error_avg = (1 - 1 / (t + 10)) * error_avg + (target - accept) / (t + 10)
        log_step = mu - math.sqrt(t) / 0.05 * error_avg
        eta = t ** -0.75
        log_avg = eta * log_step + (1 - eta) * log_avg
        iterates.append(math.exp(log_step))
        if index + 1 in restarts:
            mu, error_avg, log_avg, t = log_step + math.log(10.0), 0.0, 0.0, 0
    return iterates, math.exp(log_avg)


def warmup_trace(sampler, model, warmup: int, n_chains: int = 16):
    """Run a warmup, recording each step's pooled acceptance and the step size after it."""
    accepts, steps = [], []

    def record(index, state, info):
        accepts.append(float(torch.nan_to_num(info.acceptance_rate, nan=0.0).mean()))
        steps.append(state.step_size.clone())

    samples = eb.sample(model, sampler, n_chains=n_chains, n_steps=1, warmup=warmup,
                        callback=record, generator=torch.Generator().manual_seed(0))
    return samples, accepts[:warmup], steps[:warmup]


REPLAYED = {  # sampler, its documented target, restarts of dual averaging
    "mala": (lambda: MALA(step_size=0.5), 0.574, ()),
    "rwmh": (lambda: RandomWalkMH(step_size=0.5), 0.234, ()),
    "hmc": (lambda: HMC(step_size=0.3, n_leapfrog=3, adapt_mass=False), 0.8, ()),
    # mass_windows(150) = ((75, 100),): dual averaging restarts after step 99.
    "hmc_windows": (lambda: HMC(step_size=0.3, n_leapfrog=3), 0.8, (100,)),
}


@pytest.mark.parametrize("name", REPLAYED)
def test_warmup_follows_dual_averaging_and_ends_on_the_averaged_step(name):
    """The adaptation state, checked exactly against an independent replay fed with the
    same acceptance statistics: each warmup step uses ε_t, warmup ends on ε̄ (not the
    last iterate), and the target is the sampler's documented default (0.8 for HMC,
    0.574 for MALA, 0.234 for random-walk MH)."""
    make, target, restarts = REPLAYED[name]
    sampler = make()
    warmup = 150
    assert mass_windows(warmup) == ((75, 100),)
    model = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    samples, accepts, steps = warmup_trace(sampler, model, warmup)
    iterates, averaged = replay_dual_averaging(sampler.step_size, accepts, target, restarts)
    for index in range(warmup - 1):  # the last step's state already holds ε̄
        torch.testing.assert_close(steps[index], torch.full((16,), iterates[index], dtype=F64),
                                   rtol=1e-10, atol=0)
    final = samples.state.step_size
    torch.testing.assert_close(final, torch.full((16,), averaged, dtype=F64), rtol=1e-10, atol=0)
    # ε̄ and the last iterate differ by far more than the tolerance, so ending on either
    # is told apart.
    assert abs(math.log(averaged / iterates[-1])) > 1e-3


@pytest.mark.parametrize("target", [0.234, 0.574, 0.65, 0.8])
def test_dual_averaging_settles_where_the_acceptance_equals_the_target(target):
    """With a noiseless acceptance α(ε) = 1 / (1 + ε²), the fixed point is
    ε* = √(1/δ − 1). ε̄ after 2000 iterations is within 1% of it, while neighbouring
    targets (0.574 vs 0.65, 0.8 vs 0.7 or 0.9) move ε* by ≥ 16%."""
    dual_averaging = DualAveraging(target_accept=target)
    state = dual_averaging.init(torch.tensor([3.0], dtype=F64))
    for _ in range(2000):
        state = dual_averaging.update(state, 1.0 / (1.0 + state.log_step.exp() ** 2))
    expected = math.sqrt(1.0 / target - 1.0)
    assert abs(float(state.log_step_avg) - math.log(expected)) < 0.01


def test_step_size_adaptation_pools_groups_of_chains():
    """n_groups = 2: chains 0–1 and 2–3 each follow their own replay."""
    state = MALA(step_size=0.5).init(torch.zeros(4, 2, dtype=F64), gaussian(2))
    adaptation = StepSizeAdaptation(state, DualAveraging(target_accept=0.6), n_groups=2)
    rates = torch.tensor([[0.9, 0.7, 0.1, 0.3], [1.0, 0.8, 0.2, 0.2]], dtype=F64)
    for rate in rates:
        state = adaptation.update(state, MALAInfo(rate, rate > 0.5, rate < 0))
    state = adaptation.finish(state)
    for group, chains in enumerate(((0, 1), (2, 3))):
        _, averaged = replay_dual_averaging(0.5, rates[:, chains].mean(1).tolist(), 0.6)
        torch.testing.assert_close(state.step_size[2 * group:2 * group + 2],
                                   torch.full((2,), averaged, dtype=F64), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="n_groups must divide n_chains = 4"):
        StepSizeAdaptation(state, DualAveraging(), n_groups=3)


@pytest.mark.parametrize("field, value", [("target_accept", 1.0), ("t0", 0.0),
                                          ("gamma", -1.0), ("kappa", math.nan)])
def test_dual_averaging_rejects_bad_hyper_parameters(field, value):
    with pytest.raises(ValueError, match=field):
        DualAveraging(**{field: value})


# ------------------------------------------------------------ metric estimation

@pytest.mark.parametrize("dense", [False, True])
def test_welford_pooled_covariance_matches_torch_cov(dense):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=generator, dtype=F64) * torch.tensor([0.1, 1.0, 5.0],
                                                                                  dtype=F64)
               for n in (7, 1, 30)]
    estimator = WelfordCovariance(dense=dense)
    for batch in batches:
        estimator.add(batch)
    rows = torch.cat(batches)
    n = rows.shape[0]
    covariance = torch.cov(rows.T) if dense else rows.var(0)
    identity = torch.eye(3, dtype=F64) if dense else torch.ones(3, dtype=F64)
    torch.testing.assert_close(estimator.regularized(),
                               n / (n + 5) * covariance + 1e-3 * 5 / (n + 5) * identity)


@pytest.mark.parametrize("metric", ["diag", "dense"])
def test_each_window_installs_the_regularised_covariance_of_its_pooled_draws(metric):
    """Stan's rule: after window [a, b) the metric is n/(n+5) · Σ̂ + 10⁻³ · 5/(n+5) · I,
    Σ̂ the covariance of the positions after steps a … b−1 of all chains (n of them)."""
    windows = mass_windows(200)
    positions, metrics = [], []

    def record(index, state, info):
        positions.append(state.position.clone())
        metrics.append(state.inverse_mass.clone())

    model = MultivariateGaussian(torch.zeros(2, dtype=F64),
                                 torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=F64))
    eb.sample(model, HMC(n_leapfrog=3, metric=metric), n_chains=8, n_steps=1, warmup=200,
              callback=record, generator=torch.Generator().manual_seed(1))
    for start, end in windows:
        rows = torch.cat(positions[start:end])
        n = rows.shape[0]
        covariance = torch.cov(rows.T)
        expected = n / (n + 5) * covariance + 1e-3 * 5 / (n + 5) * torch.eye(2, dtype=F64)
        if metric == "diag":
            expected = expected.diagonal()
        torch.testing.assert_close(metrics[end - 1], expected)
        torch.testing.assert_close(metrics[end - 2], metrics[start - 1])  # fixed inside


# ------------------------------------------------ generic over samplers

def test_window_adaptation_tunes_a_sampler_it_does_not_know():
    """A sampler of one's own (tests/sampler_helpers.py) with a step size and a metric
    gets dual averaging towards its target (checked against the replay) and the
    windowed diagonal metric (the last window's variances within Z_MAX · MCSE of the
    truth, as :func:`sampler_helpers.assert_window_metric` derives)."""
    scales = torch.tensor([0.1, 10.0], dtype=F64)
    model = Gaussian(torch.zeros(2, dtype=F64), scales)
    warmup = 400
    window = WindowRecorder(mass_windows(warmup)[-1])
    accepts = []

    def record(index, state, info):
        accepts.append(float(torch.nan_to_num(info.acceptance_rate, nan=0.0).mean()))
        window(index, state, info)

    samples = eb.sample(model, PreconditionedWalk(step_size=0.5, target_accept=0.3),
                        n_chains=64, n_steps=1, warmup=warmup, callback=record,
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(samples.state.metric, DiagonalMetric)
    restarts = tuple(end for _, end in mass_windows(warmup))
    _, averaged = replay_dual_averaging(0.5, accepts[:warmup], 0.3, restarts)
    torch.testing.assert_close(samples.state.step_size, torch.full((64,), averaged, dtype=F64),
                               rtol=1e-10, atol=0)
    assert_window_metric(samples.state.metric.inverse_mass, window.draws(), scales**2)


def test_window_adaptation_is_none_with_every_switch_off():
    state = HMC().init(torch.zeros(4, 2, dtype=F64), gaussian(2))
    off = HMC(adapt_step_size=False, adapt_mass=False)
    assert window_adaptation(off, state, 500) is None
    assert window_adaptation(ULA(), state, 500) is None  # no switches at all
    only_mass = window_adaptation(HMC(adapt_step_size=False), state, 500)
    assert only_mass.step_size is None and only_mass.windows == dict(mass_windows(500))
    with pytest.raises(TypeError, match="adapt_mass needs a state with a metric"):
        WindowAdaptation(MALA().init(torch.zeros(4, 2, dtype=F64), gaussian(2)), 500,
                         target_accept=0.5, adapt_mass=True)
