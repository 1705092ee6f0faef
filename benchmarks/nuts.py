"""NUTS against the adapted fixed-length HMC: ESS per gradient and per second, and
the banana robustness study of issue 16.

Run from the repository root::

    python benchmarks/nuts.py              # every part (~20 minutes on one core)
    python benchmarks/nuts.py --quick      # tiny run that exercises every path
    python benchmarks/nuts.py --part ess   # or --part banana, --part fixed, --part jit

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
   warmup + 500 draws, five seeds, for ``NUTS()`` (the default sampler),
   ``NUTS(target_accept=0.95)``, ``HMC(n_leapfrog=24)`` with δ = 0.8 and 0.95, and,
   when installed, BlackJAX and NumPyro NUTS with their window adaptation (per
   chain) from the same starting points. For each seed: sd(x₁) (truth √19 = 4.36)
   with its standard error, and the largest |z| of the four moments (mean and sd of
   x₀ and x₁), with errors from the spread of the 200 chains' own means
   (``mcse_chain_means``: no ESS estimate enters); the smallest bulk ESS, the largest
   R̂, divergences, gradients per draw and whether ``Samples.summary()`` flags the
   run (a divergence line, or R̂ > 1.01).
3. **Fixed ε** (``--part fixed``): the three NUTS implementations with the same fixed
   ε = 0.2 and M⁻¹ = diag(100, 19) from exact draws (same trajectory lengths and the
   same bias mean the same algorithm), then ours for ε from 0.2 down to 0.05: the
   step size below which the banana's tails are sampled.
4. **Per-leaf cost, eager and ``jit=True``** (``--part jit``): on the logistic
   regression and the volatility series of ``benchmarks/bayesian.py``, at 4 and 100
   chains, from a state adapted by 200 warmup steps, the time of 10 NUTS steps
   (the same seeded trees for both) divided by their batched leaves (the longest
   tree of each step), as the median of interleaved repeats
   (``benchmarks/_timing.py``), the jit time per step, and the ratio eager ÷ jit;
   the aten ops per leaf of the eager step (a ``TorchDispatchMode`` count, energy
   and score included); the compile time of the kernels; and the longest-tree
   factor, batched leaves over the mean chain's leapfrog steps. ``--clock thread``
   times this thread's CPU time instead of the wall clock.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import time
import warnings

# One XLA thread, as one torch thread (set before jax is imported).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")
from collections.abc import Callable
from functools import partial

import torch

import ebmalgebra as eb
from ebmalgebra.diagnostics import ess, mcse_chain_means, rhat
from ebmalgebra.samplers import HMC, NUTS, ImproperTargetWarning
from ebmalgebra.targets import Banana, Gaussian

try:
    from _timing import CLOCKS, count_ops, median_times
    from bayesian import logistic, volatility
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import CLOCKS, count_ops, median_times
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


BANANA_SD = (BANANA["scale"], math.sqrt(2 * BANANA["curvature"] ** 2 * BANANA["scale"] ** 4
                                         + BANANA["noise"] ** 2))  # sd x₀, sd x₁ = √19
HAS_JAX = all(importlib.util.find_spec(name) is not None
              for name in ("jax", "numpyro", "blackjax"))


def banana_line(label: str, seed: int, draws: torch.Tensor, facts: str) -> None:
    """sd(x₁) ± its error, the largest |z| of the four moments (mean and sd of x₀ and x₁
    against 0 and BANANA_SD; errors from the chains' own means, no ESS estimate), the
    smallest bulk ESS and the largest R̂."""
    x = draws.double()
    squares = x**2  # E x = 0, so E x² is the variance
    sd = squares.mean((0, 1)).sqrt()
    se_sd = mcse_chain_means(squares) / (2 * sd)  # delta method
    z_sd = (sd - torch.tensor(BANANA_SD, dtype=x.dtype)) / se_sd
    z_mean = x.mean((0, 1)) / mcse_chain_means(x)
    worst = float(torch.cat([z_mean, z_sd]).abs().max())
    print(f"  {label:<17} seed {seed}: sd(x1) {float(sd[1]):.2f} ± {float(se_sd[1]):.2f}  "
          f"z {float(z_sd[1]):+5.1f}  max|z| {worst:4.1f}  min bulk ESS "
          f"{float(ess(draws).min()):6.0f}  max R-hat {float(rhat(draws).max()):.3f}  {facts}",
          flush=True)


def banana_log_density(x):
    """log p of one point of the banana, up to a constant, for the JAX samplers."""
    u = x[1] - BANANA["curvature"] * (x[0] ** 2 - BANANA["scale"] ** 2)
    return -0.5 * (x[0] / BANANA["scale"]) ** 2 - 0.5 * (u / BANANA["noise"]) ** 2


def blackjax_banana(seed: int, x0: torch.Tensor, warmup: int, n_steps: int,
                    step_size: float | None = None, inverse_mass=None):
    """BlackJAX NUTS, each chain with its own window adaptation (or fixed ε and M⁻¹):
    draws ``(n_steps, n_chains, 2)``, divergences, mean leapfrog steps per draw."""
    import blackjax
    import jax
    import jax.numpy as jnp

    def one_chain(key, position):
        warm_key, draw_key = jax.random.split(key)
        if step_size is None:
            adaptation = blackjax.window_adaptation(blackjax.nuts, banana_log_density)
            (state, parameters), _ = adaptation.run(warm_key, position, num_steps=warmup)
        else:
            parameters = {"step_size": step_size, "inverse_mass_matrix": jnp.asarray(inverse_mass)}
            state = blackjax.nuts(banana_log_density, **parameters).init(position)
        kernel = blackjax.nuts(banana_log_density, **parameters)

        def one_step(state, key):
            state, info = kernel.step(key, state)
            return state, (state.position, info.is_divergent, info.num_integration_steps)
        return jax.lax.scan(one_step, state, jax.random.split(draw_key, n_steps))[1]

    keys = jax.random.split(jax.random.key(seed), x0.shape[0])
    draws, divergent, steps = jax.device_get(
        jax.jit(jax.vmap(one_chain))(keys, jnp.asarray(x0.numpy())))
    return (torch.from_numpy(draws.copy()).transpose(0, 1), int(divergent.sum()),
            float(steps.mean()))


def numpyro_banana(seed: int, x0: torch.Tensor, warmup: int, n_steps: int,
                   step_size: float | None = None, inverse_mass=None):
    """NumPyro NUTS, vectorised chains each with its own window adaptation (or fixed ε
    and M⁻¹): draws, divergences, mean leapfrog steps per draw."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    fixed = {} if step_size is None else {
        "step_size": step_size, "inverse_mass_matrix": jnp.asarray(inverse_mass),
        "adapt_step_size": False, "adapt_mass_matrix": False}
    kernel = NumPyroNUTS(potential_fn=lambda x: -banana_log_density(x), **fixed)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=n_steps, num_chains=x0.shape[0],
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), init_params=jnp.asarray(x0.numpy()),
             extra_fields=("diverging", "num_steps"))
    draws = jax.device_get(mcmc.get_samples(group_by_chain=True))
    extra = jax.device_get(mcmc.get_extra_fields())
    return (torch.from_numpy(draws.copy()).transpose(0, 1), int(extra["diverging"].sum()),
            float(extra["num_steps"].mean()))


def part_banana(quick: bool) -> None:
    """Issue 16: 200 chains from N(0, 1), 500 warmup + 500 draws, five seeds."""
    n_chains, warmup, n_steps, seeds = (20, 40, 20, 2) if quick else (200, 500, 500, 5)
    model = Banana(**BANANA)
    print(f"\nbanana robustness: {n_chains} chains from N(0, 1), {warmup} warmup + {n_steps} "
          f"draws; truth sd(x1) = {BANANA_SD[1]:.3f}; 'flagged': the summary prints "
          "divergences or an R-hat > 1.01")
    ours = {"NUTS": NUTS, "NUTS delta=0.95": lambda: NUTS(target_accept=0.95),
            "HMC L=24": lambda: HMC(n_leapfrog=24),
            "HMC L=24 delta=.95": lambda: HMC(n_leapfrog=24, target_accept=0.95)}
    for label, make in ours.items():
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            x0 = torch.randn(n_chains, 2, generator=generator)
            start = time.perf_counter()
            with warnings.catch_warnings():  # the chains go 10× further out than they start
                warnings.simplefilter("ignore", ImproperTargetWarning)
                samples = eb.sample(model, make(), x0=x0, n_steps=n_steps, warmup=warmup,
                                    generator=generator, progress=False)
            seconds = time.perf_counter() - start
            summary = samples.summary()
            flagged = "divergent:" in str(summary) or bool((summary.r_hat > 1.01).any())
            grads = samples.stats["n_leapfrog"][warmup:].double().mean()
            banana_line(label, seed, samples.draws,
                        f"divergent {int(samples.n_divergent.sum()):5d}  "
                        f"eps {float(samples.state.step_size.mean()):.3f}  grads/draw "
                        f"{float(grads):5.1f}  flagged {flagged}  ({seconds:.0f} s)")
    if not HAS_JAX:
        print("  (jax, numpyro or blackjax missing: no BlackJAX / NumPyro rows)")
        return
    for label, run in {"BlackJAX NUTS": blackjax_banana, "NumPyro NUTS": numpyro_banana}.items():
        for seed in range(seeds):
            x0 = torch.randn(n_chains, 2, generator=torch.Generator().manual_seed(seed))
            draws, divergent, steps = run(seed, x0, warmup, n_steps)
            flagged = divergent > 0 or bool((rhat(draws) > 1.01).any())
            banana_line(label, seed, draws, f"divergent {divergent:5d}  grads/draw "
                        f"{steps:5.1f}  flagged {flagged}")


def part_fixed(quick: bool) -> None:
    """The three NUTS implementations with the same fixed ε and M⁻¹, started at exact
    draws: equal trajectories and equal bias mean equal algorithms; then ours over ε."""
    n_chains, n_steps = (20, 20) if quick else (200, 500)
    model = Banana(**BANANA)
    inverse_mass = [BANANA_SD[0] ** 2, BANANA_SD[1] ** 2]
    x0 = model.sample(n_chains, generator=torch.Generator().manual_seed(0))
    print(f"\nfixed step size and metric M^-1 = diag{tuple(inverse_mass)}, {n_chains} chains "
          f"from exact draws, {n_steps} steps, no warmup")
    for step_size in (0.2, 0.15, 0.1, 0.07, 0.05):
        sampler = NUTS(step_size=step_size, inverse_mass=torch.tensor(inverse_mass),
                       adapt_step_size=False, adapt_mass=False)
        samples = eb.sample(model, sampler, x0=x0, n_steps=n_steps,
                            generator=torch.Generator().manual_seed(1), progress=False)
        banana_line(f"ours eps={step_size}", 0, samples.draws,
                    f"divergent {int(samples.n_divergent.sum()):5d}  grads/draw "
                    f"{float(samples.stats['n_leapfrog'].double().mean()):5.1f}  acceptance "
                    f"{float(samples.acceptance_rate.mean()):.3f}")
        if HAS_JAX and step_size == 0.2:
            for label, run in {"BlackJAX": blackjax_banana, "NumPyro": numpyro_banana}.items():
                draws, divergent, steps = run(0, x0, 0, n_steps, step_size, inverse_mass)
                banana_line(f"{label} eps={step_size}", 0, draws,
                            f"divergent {divergent:5d}  grads/draw {steps:5.1f}")


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


def part_jit(quick: bool, clock: Callable[[], float]) -> None:
    chain_counts, warmup, n_steps, repeats = ((4,), 30, 2, 2) if quick else ((4, 100), 200,
                                                                            10, 5)
    print(f"\nper batched leaf: eager and jit=True (median of interleaved repeats, "
          f"clock {clock.__name__})")
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
            batched, per_chain = runs[False]()
            ops = count_ops(runs[False])
            seconds = median_times(runs, repeats=repeats, inner=1, warmup=1, clock=clock)
            eager, jitted = (seconds[flag] / batched * 1e6 for flag in (False, True))
            print(f"  {target.name:<27} {n_chains:>3} chains: eager {eager:6.0f} µs/leaf "
                  f"({ops / batched:4.0f} ops), jit {jitted:6.0f} µs/leaf, "
                  f"{seconds[True] / n_steps * 1e6:7.0f} µs/step ({batched / n_steps:5.1f} "
                  f"leaves), eager/jit {eager / jitted:4.2f}; compile + first steps "
                  f"{compile_seconds:5.1f} s; longest tree / mean "
                  f"{batched * n_chains / per_chain:4.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("ess", "banana", "fixed", "jit", "all"), default="all")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="--part jit: wall time, or this thread's CPU time (on a busy "
                        "machine, an estimate of the wall time on an idle one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"1 thread")
    if args.part in ("ess", "all"):
        part_ess(args.quick)
    if args.part in ("banana", "all"):
        part_banana(args.quick)
    if args.part in ("fixed", "all"):
        part_fixed(args.quick)
    if args.part in ("jit", "all"):
        part_jit(args.quick, CLOCKS[args.clock])


if __name__ == "__main__":
    main()
