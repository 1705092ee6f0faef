"""MCMC samplers for any expression, and the ``sample`` driver (DESIGN §4).

Each sampler is a small kernel with keyword-only hyper-parameters::

    state = sampler.init(x0, model)            # compiles model, caches E and s at x0
    state, info = sampler.step(state, generator)

and :func:`sample` runs one with warmup (adaptation), thinning and diagnostics.
See docs/samplers.md for the math of each sampler.
"""

from ebmalgebra.samplers.annealed import AnnealedInfo, AnnealedLangevin, AnnealedState
from ebmalgebra.samplers.base import NonFiniteError, Potential, Sampler
from ebmalgebra.samplers.driver import Samples, sample
from ebmalgebra.samplers.escape import ImproperTargetWarning
from ebmalgebra.samplers.hmc import HMC, HMCInfo, HMCState
from ebmalgebra.samplers.langevin import ULA, LangevinState, ULAInfo
from ebmalgebra.samplers.mala import MALA, MALAInfo
from ebmalgebra.samplers.mh import MHInfo, MHState, RandomWalkMH
from ebmalgebra.samplers.nuts import NUTS, NUTSInfo, NUTSState
from ebmalgebra.samplers.smc import SMC, SMCResult
from ebmalgebra.samplers.tempering import ParallelTempering, TemperingInfo, TemperingState

__all__ = [
    "AnnealedInfo",
    "AnnealedLangevin",
    "AnnealedState",
    "HMC",
    "HMCInfo",
    "HMCState",
    "ImproperTargetWarning",
    "LangevinState",
    "MALA",
    "MALAInfo",
    "MHInfo",
    "MHState",
    "NUTS",
    "NUTSInfo",
    "NUTSState",
    "NonFiniteError",
    "ParallelTempering",
    "Potential",
    "RandomWalkMH",
    "Sampler",
    "SMC",
    "SMCResult",
    "Samples",
    "TemperingInfo",
    "TemperingState",
    "ULA",
    "ULAInfo",
    "sample",
]
