"""NUTS against the adapted fixed-length HMC: ESS per gradient and per second, and
the banana robustness study of issue 16.

Run from the repository root::

    python benchmarks/nuts.py              # both parts (~10 minutes on one core)
    python benchmarks/nuts.py --quick      # tiny run that exercises every path
    python benchmarks/nuts.py --part ess   # or --part banana, --part jit

One torch thread, CPU, float32, one process; every ratio compares runs in the
same process on the same target.

1. **ESS per gradient and per second** (minimum bulk ESS over coordinates,
   ``ebmalgebra.diagnostics``) of ``NUTS()`` and ``HMC(n_leapfrog=L)`` (L = 10, the
   default, and 24), all with the same warmup adaptation (dual averaging to 0.8,
   Stan's windowed diagonal metric pooled over chains), 100 chains, 500 warmup +
   500 draws, on a 100-D Gaussian with scales log-spaced from 0.01 to 1 and on the
   banana x₀ ~ N(0, 10²), x₁ | x₀ ~ N(0.03(x₀² − 100), 1). Gradients are counted
   per chain (NUTS: each chain's own leapfrog steps; HMC: L per chain and step), over
   the sampling phase. Batched NUTS also pays for the longest tree of each step, so
   the number of batched evaluations (max over chains) is printed too. Seconds are
   wall time of the sampling phase and of the whole run.
2. **Banana robustness** (issue 16): the same banana, 200 chains from N(0, 1), 500
   warmup + 500 draws, five seeds. For each seed: sd(x₁) (truth √19 = 4.36), the
   z-score of E[x₁²] against 19 with its Monte-Carlo standard error
   (``mcse_mean`` of x₁², E[x₁] = 0 exactly), bulk ESS and R̂ of x₁, and the number
   of divergent transitions.
3. **Per-leaf cost, eager and ``jit=True``** (``--part jit``): on the logistic
   regression and the volatility series of ``benchmarks/bayesian.py``, at 4 and 100
   chains, from a state adapted by 200 warmup steps, the time of 10 NUTS steps
   (the same seeded trees for both) divided by their batched leaves (the longest
   tree of each step), as the median of interleaved repeats
   (``benchmarks/_timing.py``) and the ratio eager ÷ jit; the aten ops per leaf of
   the eager step (a ``TorchDispatchMode`` count, energy and score included); the
   compile time of the leaf kernel; and the longest-tree factor, batched leaves
   over the mean chain's leapfrog steps.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ebmalgebra as eb
from ebmalgebra.diagnostics import ess, mcse_mean, rhat
from ebmalgebra.samplers import HMC, NUTS
from ebmalgebra.targets import Banana, Gaussian

try:
    from _timing import median_times
    from bayesian import logistic, volatility
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import median_times
    from benchmarks.bayesian import logistic, volatility

BANANA = {"scale": 10.0, "curvature": 0.03, "noise": 1.0}


def gaussian_100d() -> eb.EnergyModel:
    return Gaussian(torch.zeros(100), torch.logspace(-2, 0, 100))


def gradients(samples: eb.samplers.Samples, n_chains: int) -> tuple[float, float]:
    """Per-chain gradient evaluations and batched evaluations in the sampling phase."""
    per_step = samples.stats["n_leapfrog"][samples.warmup:].double()
    if "tree_depth" in samples.stats:  # NUTS: the mean over chains of each chain's count
        batched = samples.chain_stats["n_leapfrog"].max(1).values.double().sum()
        return float(per_step.sum() * n_chains), float(batched)
    return float(per_step.sum() * n_chains), float(per_step.sum())


def run_ess(name: str, model, sampler, *, n_chains: int, warmup: int, n_steps: int,
            seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n_chains, *model.event_shape), generator=generator)
    marks: dict[str, float] = {}

    def mark_warmup_end(step, state, info):
        if step == warmup - 1:
            marks["warmup"] = time.perf_counter()

    start = time.perf_counter()
    samples = eb.sample(model, sampler, x0=x0, n_steps=n_steps, warmup=warmup,
                        generator=generator, progress=False, callback=mark_warmup_end)
    end = time.perf_counter()
    min_ess = float(samples.ess().min())
    per_chain, batched = gradients(samples, n_chains)
    sampling = end - marks.get("warmup", start)
    print(f"  {name:<10} min bulk ESS {min_ess:8.0f}   ESS/grad {min_ess / per_chain:.2e}   "
          f"grads/draw/chain {per_chain / (n_steps * n_chains):6.1f}   batched evals "
          f"{batched:7.0f}   ESS/s sampling {min_ess / sampling:8.1f}   whole run "
          f"{min_ess / (end - start):8.1f}   ({end - start:.1f} s)", flush=True)


def part_ess(quick: bool) -> None:
    n_chains, warmup, n_steps = (10, 40, 20) if quick else (100, 500, 500)
    targets = {"gaussian 100-D, scales 0.01…1": gaussian_100d(),
               "banana (10, 0.03)": Banana(**BANANA)}
    samplers = {"NUTS": NUTS, "HMC L=10": lambda: HMC(n_leapfrog=10),
                "HMC L=24": lambda: HMC(n_leapfrog=24)}
    for target_name, model in targets.items():
        print(f"\n{target_name}: {n_chains} chains, {warmup} warmup + {n_steps} draws")
        for sampler_name, make in samplers.items():
            run_ess(sampler_name, model, make(), n_chains=n_chains, warmup=warmup,
                    n_steps=n_steps, seed=0)


def part_banana(quick: bool) -> None:
    n_chains, warmup, n_steps, seeds = (20, 40, 20, 2) if quick else (200, 500, 500, 5)
    model = Banana(**BANANA)
    truth = 0.03**2 * 2 * BANANA["scale"] ** 4 + BANANA["noise"] ** 2  # Var x₁ = 2b²s⁴ + σ²
    print(f"\nbanana robustness: {n_chains} chains from N(0, 1), {warmup} warmup + {n_steps} "
          f"draws; truth sd(x1) = {math.sqrt(truth):.3f}")
    for sampler_name, make in {"NUTS": NUTS, "HMC L=24": lambda: HMC(n_leapfrog=24)}.items():
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            x0 = torch.randn(n_chains, 2, generator=generator)
            samples = eb.sample(model, make(), x0=x0, n_steps=n_steps, warmup=warmup,
                                generator=generator, progress=False)
            x1 = samples.draws[..., 1:].double()
            squares = x1**2
            z = float((squares.mean() - truth) / mcse_mean(squares)[0])
            print(f"  {sampler_name:<9} seed {seed}: sd(x1) {float(x1.std()):.3f}  "
                  f"z(E x1²) {z:+6.2f}  bulk ESS {float(ess(x1)[0]):7.0f}  "
                  f"R-hat {float(rhat(x1)[0]):.3f}  divergent "
                  f"{int(samples.n_divergent.sum())}", flush=True)


class _OpCount(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def nuts_steps(sampler: NUTS, state, n_steps: int) -> tuple[int, int]:
    """``n_steps`` steps from ``state`` with a fixed seed: (batched leaves, Σ leapfrog
    steps over chains)."""
    generator = torch.Generator().manual_seed(1)
    batched = per_chain = 0
    for _ in range(n_steps):
        state, info = sampler.step(state, generator)
        batched += int(info.n_leapfrog.max())
        per_chain += int(info.n_leapfrog.sum())
    return batched, per_chain


def part_jit(quick: bool) -> None:
    chain_counts, warmup, n_steps, repeats = ((4,), 30, 2, 2) if quick else ((4, 100), 200,
                                                                            10, 5)
    print("\nper batched leaf: eager and jit=True (median of interleaved repeats)")
    for make in (logistic, volatility):
        target = make()
        for n_chains in chain_counts:
            generator = torch.Generator().manual_seed(0)
            x0 = 4 * torch.rand(n_chains, target.dim, generator=generator) - 2
            state = eb.sample(target.model, NUTS(), x0=x0, n_steps=1, warmup=warmup,
                              generator=generator, progress=False).state
            runs = {flag: partial(nuts_steps, NUTS(jit=flag), state, n_steps)
                    for flag in (False, True)}
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.compile's deprecation chatter
                runs[True]()
            compile_seconds = time.perf_counter() - start
            with _OpCount() as ops:
                batched, per_chain = runs[False]()
            seconds = median_times(runs, repeats=repeats, inner=1, warmup=1)
            eager, jitted = (seconds[flag] / batched * 1e6 for flag in (False, True))
            print(f"  {target.name:<27} {n_chains:>3} chains: eager {eager:6.0f} µs/leaf "
                  f"({ops.count / batched:4.0f} ops), jit {jitted:6.0f} µs/leaf, "
                  f"eager/jit {eager / jitted:4.2f}; compile + first steps "
                  f"{compile_seconds:5.1f} s; longest tree / mean "
                  f"{batched * n_chains / per_chain:4.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("ess", "banana", "jit", "all"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"1 thread")
    if args.part in ("ess", "all"):
        part_ess(args.quick)
    if args.part in ("banana", "all"):
        part_banana(args.quick)
    if args.part in ("jit", "all"):
        part_jit(args.quick)


if __name__ == "__main__":
    main()
