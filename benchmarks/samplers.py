"""Sampler benchmarks: per-step overhead, ESS per second, gradients per leapfrog step.

Run from the repository root::

    python benchmarks/samplers.py            # full run (~2 minutes on one core)
    python benchmarks/samplers.py --quick    # a tiny run that exercises every path

Everything runs on one thread, on the CPU, in float32, in one process, and
every ratio compares runs on the same target in the same run:

1. **Per-step overhead** of ``ULA``, ``MALA`` and ``HMC`` against a hand-written
   batched torch loop of the same algorithm with a hand-written energy and score,
   on a 2-D banana and a 100-D Gaussian with 1000 chains. Both call the target's
   own analytic energy and score, the hand-written loop directly, the library
   through ``ebmalgebra.compile`` (whose cost per evaluation is printed too).
   ``kernel`` is a Python loop of ``sampler.step``, compared with the bare
   hand-written loop; ``sample()`` adds the driver (draw storage and per-step
   statistics) and is compared with the hand-written loop storing every draw in a
   preallocated tensor. Each timing is the median of interleaved repeats
   (``benchmarks/_timing.py``). The hand-written loops are the textbook ones and skip what
   the library adds: non-finite guards, per-chain step sizes, acceptance
   probabilities.
2. **ESS per second** (minimum bulk ESS over coordinates, ``ebmalgebra.diagnostics``)
   of ``HMC`` with warmup adaptation against a hand-written fixed-step batched
   HMC (step size bisected to 80% acceptance on a pilot run, leapfrog count
   L = ⌈1.5 σ_max / ε⌉ from the known largest scale; the pilot is not timed) on the
   same analytic energy, and
   against torchebm's HMC (same ε and L) and Pyro's NUTS (one chain, its own
   adaptation) when installed (``pip install torchebm pyro-ppl``). Targets: a 2-D
   Gaussian with correlation 0.95 and a 100-D Gaussian with scales 0.01 … 1.
   ESS/s is reported for the whole run (warmup included) and for the sampling
   phase alone.
3. **Gradients per leapfrog step**, counted by an energy module that counts its
   forward calls (each call is one reverse-mode gradient).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import platform
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch

import ebmalgebra as eb

try:
    from _timing import median_times
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import median_times
from ebmalgebra.diagnostics import ess
from ebmalgebra.samplers import HMC, MALA, ULA
from ebmalgebra.targets import Banana, Gaussian, MultivariateGaussian

torch.set_num_threads(1)
DTYPE = torch.float32
EnergyAndScore = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------ targets

def leaf_function(model: eb.EnergyModel) -> EnergyAndScore:
    """The target's own analytic energy and score, called directly (no compile, no
    checks): what a hand-written loop on the same target would call."""
    return lambda x: model._energy_and_score(x, None, False)


def diagonal_gaussian(scales: torch.Tensor) -> eb.EnergyModel:
    return Gaussian(torch.zeros_like(scales), scales, name="gaussian")


def correlated_gaussian(rho: float = 0.95) -> eb.EnergyModel:
    covariance = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=DTYPE)
    return MultivariateGaussian(torch.zeros(2, dtype=DTYPE), covariance, name="correlated")


# ----------------------------------------------------- hand-written loops

def hand_ula(energy_and_score: EnergyAndScore, x: torch.Tensor, n_steps: int, step: float,
             generator: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """ULA; stores every position in ``keep`` (``(n_steps, n_chains, d)``) if given."""
    _, score = energy_and_score(x)
    noise_scale = math.sqrt(2.0 * step)
    for index in range(n_steps):
        x = x + step * score + noise_scale * torch.randn(x.shape, generator=generator)
        _, score = energy_and_score(x)
        if keep is not None:
            keep[index] = x
    return x


def hand_mala(energy_and_score: EnergyAndScore, x: torch.Tensor, n_steps: int, step: float,
              generator: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """MALA; stores every position in ``keep`` if given."""
    energy, score = energy_and_score(x)
    noise_scale = math.sqrt(2.0 * step)
    for index in range(n_steps):
        noise = torch.randn(x.shape, generator=generator)
        proposal = x + step * score + noise_scale * noise
        new_energy, new_score = energy_and_score(proposal)
        backward = x - proposal - step * new_score
        log_ratio = (energy - new_energy + 0.5 * (noise * noise).sum(-1)
                     - (backward * backward).sum(-1) / (4.0 * step))
        accept = torch.log(torch.rand(x.shape[0], generator=generator)) < log_ratio
        x = torch.where(accept[:, None], proposal, x)
        energy = torch.where(accept, new_energy, energy)
        score = torch.where(accept[:, None], new_score, score)
        if keep is not None:
            keep[index] = x
    return x


def hand_hmc(energy_and_score: EnergyAndScore, x: torch.Tensor, n_steps: int, step: float,
             n_leapfrog: int, generator: torch.Generator, jitter: float = 0.0,
             keep: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Fixed-step, unit-mass HMC; L uniform on [L(1 − j), L(1 + j)]. Stores positions
    in ``keep`` (``(n_keep, n_chains, d)``, the last steps) and returns the acceptance."""
    energy, score = energy_and_score(x)
    lowest = max(1, round(n_leapfrog * (1 - jitter)))
    highest = max(lowest, round(n_leapfrog * (1 + jitter)))
    accepted_total = torch.zeros((), dtype=torch.long)
    first_kept = n_steps - (0 if keep is None else keep.shape[0])
    for index in range(n_steps):
        length = int(torch.randint(lowest, highest + 1, (), generator=generator))
        momentum = torch.randn(x.shape, generator=generator)
        p = momentum + 0.5 * step * score
        y = x
        for leap in range(length):
            y = y + step * p
            new_energy, new_score = energy_and_score(y)
            p = p + (step if leap < length - 1 else 0.5 * step) * new_score
        log_ratio = (energy + 0.5 * (momentum * momentum).sum(-1)
                     - new_energy - 0.5 * (p * p).sum(-1))
        accept = torch.log(torch.rand(x.shape[0], generator=generator)) < log_ratio
        x = torch.where(accept[:, None], y, x)
        energy = torch.where(accept, new_energy, energy)
        score = torch.where(accept[:, None], new_score, score)
        accepted_total = accepted_total + accept.sum()
        if index >= first_kept:
            keep[index - first_kept] = x
    return x, float(accepted_total) / max(n_steps * x.shape[0], 1)


def library_loop(sampler, model, x: torch.Tensor, n_steps: int,
                 generator: torch.Generator) -> torch.Tensor:
    state = sampler.init(x, model)
    for _ in range(n_steps):
        state, _ = sampler.step(state, generator)
    return state.position


# ------------------------------------------------------------------- timing

def overhead(quick: bool) -> list[dict]:
    n_chains, n_steps = 1000, (30 if quick else 300)
    repeats = 2 if quick else 9
    cases = [("banana 2-D", Banana(), 2, 0.05, 0.1),
             ("gaussian 100-D", diagonal_gaussian(torch.logspace(-2, 0, 100, dtype=DTYPE)), 100,
              5e-5, 0.005)]
    rows = []
    for target, model, dim, langevin_step, hmc_step in cases:
        x0 = torch.randn(n_chains, dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
        function = leaf_function(model)
        compiled = eb.compile(model)
        evaluation = median_times({"leaf": partial(function, x0),
                                   "compiled": partial(compiled.energy_and_score, x0)},
                                  repeats=repeats, inner=100)
        print(f"  {target}: one energy-and-score evaluation {evaluation['leaf'] * 1e6:.1f} µs "
              f"direct, {evaluation['compiled'] * 1e6:.1f} µs compiled "
              f"({evaluation['compiled'] / evaluation['leaf']:.2f}x)")
        algorithms = {
            "ULA": (ULA(step_size=langevin_step),
                    partial(hand_ula, function, x0, n_steps, langevin_step)),
            "MALA": (MALA(step_size=langevin_step, adapt_step_size=False),
                     partial(hand_mala, function, x0, n_steps, langevin_step)),
            "HMC": (HMC(step_size=hmc_step, n_leapfrog=10, jitter=0.0, adapt_step_size=False,
                        adapt_mass=False),
                    partial(hand_hmc, function, x0, n_steps, hmc_step, 10)),
        }
        for name, (sampler, hand) in algorithms.items():
            runs = {
                "hand": partial(_seeded, hand),
                "hand_store": partial(_seeded, partial(_store_draws, hand, x0, n_steps)),
                "kernel": partial(_seeded, partial(library_loop, sampler, model, x0, n_steps)),
                "sample": partial(_seeded, partial(_run_sample, sampler, model, x0, n_steps)),
            }
            best = median_times(runs, repeats=repeats, inner=1, warmup=1)
            per_step = {k: v / n_steps * 1e6 for k, v in best.items()}
            rows.append({"algorithm": name, "target": target, **per_step,
                         "kernel_ratio": best["kernel"] / best["hand"],
                         "sample_ratio": best["sample"] / best["hand_store"]})
            print(f"  {name:5s} {target:15s} hand {per_step['hand']:8.1f} µs/step, "
                  f"kernel {per_step['kernel']:8.1f} ({rows[-1]['kernel_ratio']:.2f}x) | "
                  f"hand storing draws {per_step['hand_store']:8.1f}, "
                  f"sample() {per_step['sample']:8.1f} ({rows[-1]['sample_ratio']:.2f}x)",
                  flush=True)
    return rows


def _store_draws(hand, x0: torch.Tensor, n_steps: int, generator: torch.Generator) -> object:
    keep = torch.empty((n_steps, *x0.shape), dtype=x0.dtype)
    return hand(generator, keep=keep)


def _seeded(run: Callable[[torch.Generator], object]) -> object:
    return run(torch.Generator().manual_seed(1))


def _run_sample(sampler, model, x0, n_steps, generator) -> eb.samplers.Samples:
    return eb.sample(model, sampler, x0=x0, n_steps=n_steps, generator=generator,
                     progress=False)


# ------------------------------------------------------------------ ESS / s

def min_ess(draws: torch.Tensor) -> float:
    """Smallest bulk ESS over coordinates of ``(n_draws, n_chains, d)`` draws."""
    return float(ess(draws).min())


def tune_step(hand_fn: EnergyAndScore, x: torch.Tensor, n_leapfrog: int,
              target: float = 0.8) -> float:
    """Bisect log ε so that a short unit-mass HMC pilot accepts ≈ ``target``."""
    low, high = math.log(1e-4), math.log(2.0)
    for _ in range(14):
        middle = 0.5 * (low + high)
        _, accept = hand_hmc(hand_fn, x, 10, math.exp(middle), n_leapfrog,
                             torch.Generator().manual_seed(2))
        low, high = (middle, high) if accept > target else (low, middle)
    return math.exp(low)


def ess_per_second(quick: bool) -> list[dict]:
    n_chains = 100
    warmup, n_steps = (100, 100) if quick else (500, 1000)
    cases = [("correlated 2-D", correlated_gaussian(), 2, math.sqrt(1.95)),
             ("ill-conditioned 100-D", diagonal_gaussian(torch.logspace(-2, 0, 100,
                                                                        dtype=DTYPE)), 100, 1.0)]
    rows = []
    for target, model, dim, sigma_max in cases:
        hand_fn = leaf_function(model)
        x0 = torch.randn(n_chains, dim, generator=torch.Generator().manual_seed(3),
                         dtype=DTYPE)
        exact = model.sample(n_chains, generator=torch.Generator().manual_seed(4)).to(DTYPE)
        ours = [("ebmalgebra HMC (diag, adapted)", HMC(n_leapfrog=10))]
        if dim == 2:
            ours.append(("ebmalgebra HMC (dense, adapted)", HMC(n_leapfrog=10, metric="dense")))
        for label, sampler in ours:
            marks = {}

            def mark(index, state, info, marks=marks):
                if index == warmup - 1:
                    marks["warmup_end"] = time.perf_counter()

            start = time.perf_counter()
            samples = eb.sample(model, sampler, x0=x0, n_steps=n_steps, warmup=warmup,
                                generator=torch.Generator().manual_seed(5), progress=False,
                                callback=mark)
            end = time.perf_counter()
            gradients = int(samples.stats["n_leapfrog"].sum())
            rows.append(_ess_row(target, label, samples.draws, end - start,
                                 end - marks["warmup_end"], gradients,
                                 float(samples.acceptance_rate[warmup:].mean())))

        # Hand-written fixed-step HMC, tuned on a pilot from exact draws (not timed).
        step = tune_step(hand_fn, exact, 10)
        n_leapfrog = max(1, math.ceil(1.5 * sigma_max / step))
        step = tune_step(hand_fn, exact, n_leapfrog)
        keep = torch.empty(n_steps, n_chains, dim, dtype=DTYPE)
        start = time.perf_counter()
        _, accept = hand_hmc(hand_fn, x0, warmup + n_steps, step, n_leapfrog,
                             torch.Generator().manual_seed(5), jitter=0.2, keep=keep)
        elapsed = time.perf_counter() - start
        rows.append(_ess_row(target, f"hand-written HMC (ε={step:.3g}, L={n_leapfrog})", keep,
                             elapsed, elapsed * n_steps / (warmup + n_steps),
                             (warmup + n_steps) * n_leapfrog, accept))
        if importlib.util.find_spec("torchebm") is not None:
            rows.append(_torchebm_row(target, model, hand_fn, x0, warmup, n_steps, step,
                                      n_leapfrog))
        else:
            print("  torchebm not installed: skipped")
        if importlib.util.find_spec("pyro") is not None:
            rows.append(_pyro_row(target, model, x0[0], quick))
        else:
            print("  pyro-ppl not installed: skipped")
    return rows


def _ess_row(target, label, draws, total, sampling, gradients, accept) -> dict:
    value = min_ess(draws)
    row = {"target": target, "method": label, "min_ess": value, "seconds": total,
           "ess_per_s": value / total, "sampling_ess_per_s": value / sampling,
           "gradients": gradients, "acceptance": accept}
    print(f"  {target:22s} {label:42s} minESS {value:9.1f}  time {total:7.2f}s  "
          f"ESS/s {row['ess_per_s']:10.2f}  sampling ESS/s {row['sampling_ess_per_s']:10.2f}  "
          f"accept {accept:.2f}", flush=True)
    return row


def _torchebm_row(target, model, hand_fn, x0, warmup, n_steps, step, n_leapfrog) -> dict:
    from torchebm.core import BaseModel
    from torchebm.samplers import HamiltonianMonteCarlo

    class Energy(BaseModel):
        """The same analytic energy and gradient as the hand-written loop."""

        def forward(self, x):
            return hand_fn(x)[0]

        def gradient(self, x, model_kwargs=None):
            return -hand_fn(x)[1]

    sampler = HamiltonianMonteCarlo(Energy(), step_size=step, n_leapfrog_steps=n_leapfrog,
                                    dtype=DTYPE, device="cpu")
    start = time.perf_counter()
    trajectory = sampler.sample(x=x0.clone(), n_steps=warmup + n_steps, return_trajectory=True,
                                generator=torch.Generator().manual_seed(5))
    elapsed = time.perf_counter() - start
    draws = trajectory[:, warmup:].transpose(0, 1)
    return _ess_row(target, f"torchebm HMC (ε={step:.3g}, L={n_leapfrog})", draws, elapsed,
                    elapsed * n_steps / (warmup + n_steps),
                    2 * (warmup + n_steps) * n_leapfrog, math.nan)


def _pyro_row(target, model, start_point, quick) -> dict:
    import pyro
    from pyro.infer import MCMC, NUTS

    compiled = eb.compile(model)
    warmup, n_samples = (20, 20) if quick else (200, 300)
    pyro.set_rng_seed(6)
    kernel = NUTS(potential_fn=lambda params: compiled.energy(params["x"][None])[0],
                  adapt_step_size=True, adapt_mass_matrix=True, full_mass=False)
    marks = {}

    def hook(kernel, samples, stage, index):
        if stage == "Sample" and "sampling_start" not in marks:
            marks["sampling_start"] = time.perf_counter()

    mcmc = MCMC(kernel, num_samples=n_samples, warmup_steps=warmup,
                initial_params={"x": start_point.clone()}, disable_progbar=True, hook_fn=hook)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run()
    end = time.perf_counter()
    draws = mcmc.get_samples()["x"][:, None, :]
    return _ess_row(target, f"Pyro NUTS (1 chain, {warmup}+{n_samples})", draws, end - start,
                    end - marks.get("sampling_start", start), -1, math.nan)


# --------------------------------------------------------------- gradients

class CountingEnergy(torch.nn.Module):
    """½‖x‖² through autograd, counting forward calls (one gradient each)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 0.5 * (x * x).sum(-1)


def gradients_per_leapfrog() -> dict:
    net = CountingEnergy()
    model = eb.from_energy(net, 2, name="counted")
    sampler = HMC(step_size=0.1, n_leapfrog=10)
    state = sampler.init(torch.randn(100, 2), model)
    net.calls, leapfrogs = 0, 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        state, info = sampler.step(state, generator)
        leapfrogs += info.n_leapfrog
    ours = net.calls / leapfrogs
    print(f"  ebmalgebra HMC: {net.calls} gradient evaluations / {leapfrogs} leapfrog steps "
          f"= {ours:.3f}")
    row = {"ebmalgebra": ours}
    if importlib.util.find_spec("torchebm") is not None:
        from torchebm.core import BaseModel
        from torchebm.samplers import HamiltonianMonteCarlo

        counts = {"energy": 0, "gradient": 0}

        class Counted(BaseModel):
            def forward(self, x):
                counts["energy"] += 1
                return 0.5 * (x * x).sum(-1)

            def gradient(self, x, model_kwargs=None):
                counts["gradient"] += 1
                return x

        HamiltonianMonteCarlo(Counted(), step_size=0.1, n_leapfrog_steps=10).sample(
            x=torch.randn(100, 2), n_steps=50)
        row["torchebm"] = counts["gradient"] / (50 * 10)
        print(f"  torchebm HMC: {counts['gradient']} gradients and {counts['energy']} energies "
              f"for 500 leapfrog steps = {row['torchebm']:.3f} gradients per step")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, exercises every path")
    parser.add_argument("--only", choices=("overhead", "ess", "gradients"),
                        help="run one section")
    args = parser.parse_args()
    print(f"# ebmalgebra sampler benchmarks, {datetime.date.today()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads={torch.get_num_threads()}"
          f"{', quick' if args.quick else ''}")
    if args.only in (None, "gradients"):
        print("\n## Gradients per leapfrog step")
        gradients_per_leapfrog()
    if args.only in (None, "overhead"):
        print("\n## Per-step time vs hand-written batched torch loops (1000 chains)")
        overhead(args.quick)
    if args.only in (None, "ess"):
        print("\n## ESS per second, HMC (100 chains unless noted)")
        ess_per_second(args.quick)


if __name__ == "__main__":
    main()
