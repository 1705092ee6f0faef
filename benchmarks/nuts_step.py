"""Per-step time of ``NUTS(jit=True)`` on eight schools, through ``ebmalgebra.sample``.

Run from the repository root::

    python benchmarks/nuts_step.py --chains 4 100 --clock thread
    python benchmarks/nuts_step.py --quick

The setting of ``benchmarks/bayesian.py``'s schools rows (the same target, starts
and seed; 500 warmup + 500 draws; one torch thread, CPU, float32): for each chain
count one run, timing its sampling phase (from the end of warmup to the end of the
run, the driver's per-step work included) and dividing by the steps and by the
batched leaves (the longest tree of each step). ``--clock thread`` counts this
thread's CPU time, which on a busy machine estimates the wall time on an idle one.
To compare two versions of the library, run this script alternately with each on
``PYTHONPATH``: it uses only ``ebmalgebra.sample``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import torch

import ebmalgebra as eb
from ebmalgebra.samplers import NUTS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import CLOCKS  # noqa: E402
from bayesian import schools, starts  # noqa: E402


def sampling_phase(n_chains: int, warmup: int, n_steps: int, clock) -> tuple[float, float]:
    """(seconds of the sampling phase, batched leaves per step) of one run."""
    target = schools()
    _, x0 = starts(target, n_chains, seed=4)
    marks = {}

    def mark(step, state, info):
        if step == warmup - 1:
            marks["warmup"] = clock()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.compile's deprecation chatter
        samples = eb.sample(target.model, NUTS(jit=True), x0=x0, n_steps=n_steps,
                            warmup=warmup, generator=torch.Generator().manual_seed(5),
                            progress=False, callback=mark)
    seconds = clock() - marks["warmup"]
    leaves = float(samples.chain_stats["n_leapfrog"].max(1).values.double().mean())
    return seconds, leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 100])
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    warmup, n_steps = (30, 20) if args.quick else (500, 500)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"1 thread, clock {clock.__name__}; ebmalgebra from {os.path.dirname(eb.__file__)}")
    for n_chains in args.chains:
        seconds, leaves = sampling_phase(n_chains, warmup, n_steps, clock)
        per_step = seconds / n_steps * 1e6
        print(f"  schools, {n_chains:>3} chains: {per_step:6.0f} µs/step, "
              f"{per_step / leaves:5.1f} µs per batched leaf ({leaves:.2f} leaves/step)",
              flush=True)


if __name__ == "__main__":
    main()
