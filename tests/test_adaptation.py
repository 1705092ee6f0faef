"""Warmup adaptation (samplers/adaptation.py): dual averaging against an independent
implementation of Hoffman & Gelman (2014), Stan's windows and regularised metric, and
the generic window adaptation.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sampler_helpers import F64, gaussian

import ebmalgebra as eb
from ebmalgebra.samplers import HMC, MALA, ParallelTempering, RandomWalkMH
from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS, mass_windows


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
