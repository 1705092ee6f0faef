"""Eager per-draw overhead with energies given as Python functions (score by autograd).

Issue 14's measurement: ``sample()`` with ``from_energy`` leaves against a
hand-written batched torch loop of the same algorithm, same target, same fixed
step size, in the same run (targets: per draw ≤ 1.10×, MALA on the 2-D banana
≤ 1.25×). ``benchmarks/samplers.py`` measures the same samplers on analytic
scores; here every score is an autograd pass over a plain Python energy, which
is what users of ``from_energy`` and of networks pay.

For each sampler (ULA, MALA, HMC with L = 10) and target (a 2-D banana and a
100-D Gaussian with scales 0.01 … 1), 1000 chains, float32, one thread:

* ``hand``: the textbook loop of ``benchmarks/samplers.py`` storing every draw
  in a preallocated tensor, calling ``energy_and_score`` = energy plus one
  ``torch.autograd.grad``;
* ``sample()``: ``ebmalgebra.sample(from_energy(fn), sampler, ...)`` with the
  same x0, step size and number of steps, no warmup, no progress bar;
* ``hand`` with its reverse pass taken as ``sample()`` takes it, the autograd
  engine called directly (``ebmalgebra.reverse_pass``: ``torch.autograd.grad``
  spends ~15 µs of Python a call around it), to tell the library's own overhead
  from what that shortcut saves;
* for ULA also ``hand`` plus what ``sample()`` does besides the algorithm (the
  non-finite guard's two sums read on the host, each draw's energy stored), to
  tell that work from the library's own overhead.

It also counts the aten operators dispatched per step by each (a
``TorchDispatchMode`` counter; the difference between 11 and 1 steps, over 10),
since on small tensors each operator costs a dispatch (2–3 µs) whatever its size.

Usage: ``python benchmarks/eager_overhead.py [--quick] [--clock wall|thread]``.
Timings are medians of interleaved repeats (``benchmarks/_timing.py``); ratios
are only meaningful within one run. ``--clock thread`` counts this thread's CPU
time, which on a busy shared machine estimates the idle wall time better than
the wall clock does. The run ends with a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
from functools import partial

import torch

import ebmalgebra as eb

try:
    from _timing import CLOCKS, count_ops, median_times
    from samplers import hand_hmc, hand_mala, hand_ula
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import CLOCKS, count_ops, median_times
    from benchmarks.samplers import hand_hmc, hand_mala, hand_ula
from ebmalgebra.reverse_pass import vector_jacobian
from ebmalgebra.samplers import HMC, MALA, ULA

torch.set_num_threads(1)
DTYPE = torch.float32
N_CHAINS = 1000


def banana_energy(x: torch.Tensor) -> torch.Tensor:
    """x₀ ~ N(0, 10²), x₁ | x₀ ~ N(0.03 (x₀² − 100), 1), as a plain function."""
    bend = x[:, 1] - 0.03 * (x[:, 0] * x[:, 0] - 100.0)
    return 0.005 * x[:, 0] * x[:, 0] + 0.5 * bend * bend


SCALES = torch.logspace(-2, 0, 100, dtype=DTYPE)
PRECISION = 1.0 / (SCALES * SCALES)


def gaussian_energy(x: torch.Tensor) -> torch.Tensor:
    """A 100-D Gaussian with scales 0.01 … 1, as a plain function."""
    return 0.5 * (x * x * PRECISION).sum(-1)


def engine_grad(total: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor | None]:
    """``torch.autograd.grad(total, inputs)`` taken as ``sample()`` takes its reverse pass:
    the autograd engine called directly, without ``torch.autograd.grad``'s Python
    argument handling (``ebmalgebra.reverse_pass``); the same ops and bits."""
    return vector_jacobian((total,), (torch.ones_like(total),), (inputs,))


def autograd_energy_and_score(energy, grad=torch.autograd.grad):
    """What a hand-written loop on a Python energy computes: E and −∇E by one reverse pass,
    ``grad`` (``torch.autograd.grad``, as users write it, or :func:`engine_grad`)."""
    def energy_and_score(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            inputs = x.detach().requires_grad_(True)
            value = energy(inputs)
            (gradient,) = grad(value.sum(), inputs)
        return value.detach(), -gradient
    return energy_and_score


def ops_per_step(run) -> float:
    """Aten operators per step of ``run(n_steps)``: (ops(11) − ops(1)) / 10."""
    return (count_ops(partial(run, 11)) - count_ops(partial(run, 1))) / 10


def hand_hmc_fixed_length(energy_and_score, x0, n_steps, step, generator, keep=None):
    """The hand-written HMC with L = 10 leapfrog steps, no jitter."""
    return hand_hmc(energy_and_score, x0, n_steps, step, 10, generator, keep=keep)


def hand_ula_bookkept(energy_and_score, x, n_steps, step, generator, keep=None):
    """ULA as the hand loop, plus the two things ``sample()`` does besides the algorithm:
    the non-finite guard (a chain whose energy or score turns NaN/±inf freezes; checked
    by one whole-tensor sum of each, read on the host) and the energy of every draw
    (``chain_stats["lp"]``). Its time tells how much of the ULA ratio is that work."""
    energy, score = energy_and_score(x)
    energies = torch.empty((n_steps, x.shape[0]), dtype=x.dtype)
    noise_scale = math.sqrt(2.0 * step)
    for index in range(n_steps):
        proposal = x + step * score + noise_scale * torch.randn(x.shape, generator=generator)
        new_energy, new_score = energy_and_score(proposal)
        if not (math.isfinite(float(new_score.sum())) and math.isfinite(float(new_energy.sum()))):
            finite = torch.isfinite(new_energy) & torch.isfinite(new_score).all(-1)
            proposal = torch.where(finite[:, None], proposal, x)
            new_energy = torch.where(finite, new_energy, energy)
            new_score = torch.where(finite[:, None], new_score, score)
        x, energy, score = proposal, new_energy, new_score
        if keep is not None:
            keep[index] = x
            energies[index] = energy
    return x


def run_hand(hand, x0: torch.Tensor, step: float, n_steps: int):
    """A hand-written loop of ``n_steps`` storing every draw, seeded as the library run."""
    keep = torch.empty((n_steps, *x0.shape), dtype=x0.dtype)
    return hand(n_steps, step, torch.Generator().manual_seed(1), keep=keep)


def run_sample(model, sampler, x0: torch.Tensor, n_steps: int):
    """``ebmalgebra.sample`` of ``n_steps`` from ``x0``, no warmup or progress bar."""
    return eb.sample(model, sampler, x0=x0, n_steps=n_steps, progress=False,
                     generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run of every path")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall time, or this thread's CPU time (for a busy machine)")
    arguments = parser.parse_args()
    n_steps, repeats = (20, 2) if arguments.quick else (200, 7)
    print(f"# eager overhead, {datetime.date.today()}, torch {torch.__version__}, "
          f"{platform.machine()}, 1 thread, {N_CHAINS} chains, {n_steps} steps per run, "
          f"{arguments.clock} clock, load average {os.getloadavg()[0]:.1f} at the start")
    targets = [("banana 2-D", banana_energy, 2, 0.05, 0.1),
               ("gaussian 100-D", gaussian_energy, 100, 5e-5, 0.005)]
    rows = []
    for target, energy, dim, langevin_step, hmc_step in targets:
        x0 = torch.randn(N_CHAINS, dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
        function = autograd_energy_and_score(energy)
        engine_function = autograd_energy_and_score(energy, engine_grad)
        model = eb.from_energy(energy, event_shape=dim, name="target")
        algorithms = {
            "ULA": (ULA(step_size=langevin_step), hand_ula),
            "MALA": (MALA(step_size=langevin_step, adapt_step_size=False), hand_mala),
            "HMC": (HMC(step_size=hmc_step, n_leapfrog=10, jitter=0.0, adapt_step_size=False,
                        adapt_mass=False), hand_hmc_fixed_length),
        }
        for name, (sampler, loop) in algorithms.items():
            step = hmc_step if name == "HMC" else langevin_step
            hand_run = partial(run_hand, partial(loop, function, x0), x0, step)
            library_run = partial(run_sample, model, sampler, x0)
            runs = {"hand": partial(hand_run, n_steps), "sample": partial(library_run, n_steps),
                    "engine": partial(run_hand, partial(loop, engine_function, x0), x0, step,
                                      n_steps)}
            if name == "ULA":
                runs["bookkept"] = partial(run_hand, partial(hand_ula_bookkept, function, x0),
                                           x0, step, n_steps)
            best = median_times(runs, repeats=repeats, inner=1, warmup=1,
                                clock=CLOCKS[arguments.clock])
            ratio = best["sample"] / best["hand"]
            ops = {"hand": ops_per_step(hand_run), "sample": ops_per_step(library_run)}
            rows.append((name, target, best["hand"] / n_steps, best["sample"] / n_steps,
                         ratio, ops))
            print(f"  {name:5s} {target:15s} hand {best['hand'] / n_steps * 1e6:8.1f} µs/draw, "
                  f"sample() {best['sample'] / n_steps * 1e6:8.1f} µs/draw ({ratio:.2f}x); "
                  f"aten ops/step hand {ops['hand']:.0f}, sample() {ops['sample']:.0f}",
                  flush=True)
            print(f"  {'':5s} {'':15s} hand with the engine's pass "
                  f"{best['engine'] / n_steps * 1e6:8.1f} µs/draw: sample() is "
                  f"{best['sample'] / best['engine']:.2f}x of it", flush=True)
            if "bookkept" in best:
                print(f"  {'':5s} {'':15s} hand with the guard and lp "
                      f"{best['bookkept'] / n_steps * 1e6:8.1f} µs/draw: sample() is "
                      f"{best['sample'] / best['bookkept']:.2f}x of it", flush=True)
    ratios = [row[4] for row in rows]
    print(f"# worst per-draw ratio {max(ratios):.2f}x (target ≤ 1.10x); geometric mean "
          f"{math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}x; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print_table(rows)


def print_table(rows: list) -> None:
    """The results as the Markdown table of docs/performance.md."""
    print("\n| sampler | target | hand µs/draw | `sample()` µs/draw | ratio "
          "| aten ops/step hand | `sample()` |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, target, hand, library, ratio, ops in rows:
        label = "HMC (L = 10)" if name == "HMC" else name
        kind, dim = target.split()
        print(f"| {label} | {kind.capitalize()} {dim} | {hand * 1e6:.1f} | {library * 1e6:.1f} "
              f"| {ratio:.2f}× | {ops['hand']:.0f} | {ops['sample']:.0f} |")


if __name__ == "__main__":
    main()
