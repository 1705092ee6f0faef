"""MALA (samplers/mala.py): one step against a hand-written reference, adaptation.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sampler_helpers import F64, gaussian

import ebmalgebra as eb
from ebmalgebra.samplers import MALA
from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS
from ebmalgebra.targets import Gaussian


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


def test_step_size_is_fixed_after_warmup_and_acceptance_near_target():
    samples = eb.sample(gaussian(10), MALA(step_size=5.0), n_chains=64, n_steps=200,
                        warmup=300, x0=torch.randn(64, 10, dtype=F64),
                        generator=torch.Generator().manual_seed(0))
    after = samples.step_size[samples.warmup:]
    assert torch.all(after == after[0])
    assert after[0] < 5.0
    assert abs(float(samples.acceptance_rate[samples.warmup:].mean()) - 0.574) < 0.1
    assert samples.acceptance_rate.shape == (500,)
