"""SMC against AIS: the spread of log Ẑ at an equal budget of evaluations per particle.

Run from the repository root::

    python benchmarks/smc.py            # 20 seeds per method and target (~5 minutes)
    python benchmarks/smc.py --quick    # 3 seeds, to exercise every path

One thread, CPU, float64, one process. For each target, adaptive tempered SMC
(``SMC(n_steps=5, target_cess=c)``, MALA moves, systematic resampling when the ESS
halves) runs first; its mean number of energy-and-score evaluations per particle E
sets the AIS budget: ``estimate_log_z(..., n_temps=⌈E/6⌉, n_steps=5)`` (a sigmoid
schedule of fixed length, 5 MALA steps and one reweighting evaluation per
temperature), with the same particles N and the same base. Reported per method:
bias and standard deviation of log Ẑ over seeds, the mean reported stderr, and
the mean thread (CPU) time per run; then Var_AIS / Var_SMC.

Targets (exact log Z known):

* ``gaussian-20d``: unnormalised N(μ, Σ) with Σ_ij = 0.9^|i−j| (condition number ≈ 360)
  from the base N(0, 1.5² I);
* ``modes-2d``: a 2-D mixture of three well separated narrow Gaussians (weights
  0.2 / 0.3 / 0.5, σ = 0.5 at distance 4 to 5.7), shifted by log Z = 2, from the base
  N(0, 4² I).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

import ebmalgebra as eb
from ebmalgebra.samplers import SMC
from ebmalgebra.targets import Gaussian, GaussianMixture
from ebmalgebra.testing.known import correlated_gaussian

F64 = torch.float64


def gaussian_20d():
    model, truth = correlated_gaussian(20, 0.9)
    return model, Gaussian(torch.zeros(20, dtype=F64), 1.5, name="base"), truth


def modes_2d():
    gmm = GaussianMixture(torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=F64), 0.5,
                          weights=torch.tensor([0.2, 0.3, 0.5], dtype=F64))
    model = eb.from_energy(lambda x: gmm.energy(x) - 2.0, 2, name="modes")
    return model, Gaussian(torch.zeros(2, dtype=F64), 4.0, name="base"), 2.0


TARGETS = {"gaussian-20d": (gaussian_20d, 2000, 0.99), "modes-2d": (modes_2d, 2000, 0.9)}


def timed(function, *args, **kwargs):
    start = time.thread_time()
    value = function(*args, **kwargs)
    return value, time.thread_time() - start


def run_smc(model, base, n_particles, target_cess, seed):
    return SMC(n_steps=5, target_cess=target_cess).run(
        model, base=base, n_particles=n_particles, generator=torch.Generator().manual_seed(seed))


def run_ais(model, base, n_particles, n_temps, seed):
    return eb.estimate_log_z(model, base=base, n_particles=n_particles, n_temps=n_temps,
                             n_steps=5, generator=torch.Generator().manual_seed(seed),
                             progress=False)


def summarise(name, errors, stderrs, seconds):
    sd = statistics.stdev(errors) if len(errors) > 1 else math.nan
    print(f"  {name:4s} bias {statistics.mean(errors):+.4f}  sd {sd:.4f}  mean stderr "
          f"{statistics.mean(stderrs):.4f}  {statistics.mean(seconds):.2f} s/run")
    return sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 20")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = range(3 if args.quick else 20)
    print(f"# benchmarks/smc.py  torch {torch.__version__}  {platform.processor() or 'cpu'}  "
          f"1 thread  seeds={len(seeds)}")
    for name, (build, n_particles, target_cess) in TARGETS.items():
        model, base, truth = build()
        results = [timed(run_smc, model, base, n_particles, target_cess, seed) for seed in seeds]
        evaluations = statistics.mean(r.n_evaluations for r, _ in results)
        n_temps = math.ceil(evaluations / 6)
        print(f"{name}: N={n_particles}, SMC target_cess={target_cess}: "
              f"{statistics.mean(len(r.levels) for r, _ in results):.1f} levels, "
              f"{evaluations:.0f} evaluations per particle; AIS n_temps={n_temps}")
        smc_sd = summarise("SMC", [r.log_z - truth for r, _ in results],
                           [r.stderr for r, _ in results], [s for _, s in results])
        ais = [timed(run_ais, model, base, n_particles, n_temps, seed) for seed in seeds]
        ais_sd = summarise("AIS", [r.log_z - truth for r, _ in ais],
                           [r.stderr for r, _ in ais], [s for _, s in ais])
        print(f"  Var_AIS / Var_SMC = {(ais_sd / smc_sd) ** 2:.2f}")


if __name__ == "__main__":
    main()
