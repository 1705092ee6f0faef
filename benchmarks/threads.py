"""One thread against torch's default thread count, on the library's typical calls.

Three short workloads, each run inside the library's own calls with the
thread policy forced (``EBMALGEBRA_THREADS``): ``1``, and ``torch`` (torch's
default count, all cores). Interleaved repeats in one run, median wall time;
the ratio default / one thread is what matters (above 1: one thread wins).

* draw: ``zoo.draw(glasses & hat, 64)`` with 2 Langevin steps per noise level;
* fit: 50 steps of sliced score matching of an MLP on 2-D moons (batch 128);
* sample: MALA on ``Ring & Bar``, 1000 chains, 300 steps.

Usage: ``python benchmarks/threads.py [--repeats 3]``. Say what else was
running: the default count suffers most when other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import torch

import ebmalgebra as eb
from ebmalgebra import threads, zoo
from ebmalgebra.datasets import moons
from ebmalgebra.learning import MLPEnergy, as_model, fit, score_matching
from ebmalgebra.samplers import MALA
from ebmalgebra.targets import Bar, Ring

try:
    from _timing import median_times
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import median_times


def workloads() -> dict:
    faces = zoo.models()
    both = faces["glasses"] & faces["hat"]
    plan = zoo.plan_for(both, steps_per_level=2)
    data = moons(6400, generator=torch.Generator().manual_seed(0))
    loss = partial(score_matching, method="sliced")
    model = Ring(name="ring") & Bar(name="bar")

    def draw() -> None:
        zoo.draw(both, 64, plan=plan, generator=torch.Generator().manual_seed(0))

    def train() -> None:
        torch.manual_seed(0)
        fit(as_model(MLPEnergy(2), name="moons"), data, loss, epochs=1, batch_size=128,
            generator=torch.Generator().manual_seed(0))

    def run_mala() -> None:
        eb.sample(model, MALA(step_size=0.05), n_chains=1000, n_steps=300,
                  generator=torch.Generator().manual_seed(0))

    return {"draw": draw, "fit": train, "sample": run_mala}


def forced(setting: str, function):
    def run() -> None:
        os.environ[threads.ENV] = setting
        try:
            function()
        finally:
            del os.environ[threads.ENV]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    default = torch.get_num_threads()
    print(f"torch default: {default} threads; os.cpu_count() = {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, function in workloads().items():
        times = median_times({"one": forced("1", function), "default": forced("torch", function)},
                             repeats=args.repeats, inner=1, warmup=1)
        print(f"{name:7} one thread {times['one']:7.2f} s   {default} threads "
              f"{times['default']:7.2f} s   ratio {times['default'] / times['one']:5.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
