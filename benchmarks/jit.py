"""Compiled sampler kernels (``jit=True``) against the eager library and hand-written torch.

Run from the repository root::

    python benchmarks/jit.py            # full run (~4 minutes on one core)
    python benchmarks/jit.py --quick    # tiny sizes, exercises every path

For MALA and HMC (L = 10, fixed length, fixed step size) on two targets, one process,
one thread, CPU, float32:

* **banana 2-D**, 1000 chains × 1000 steps (analytic energy and score);
* **three MLP leaves**, ``(a & b ** 0.5) | 2 * c`` over 64-256-256-1 networks
  (``benchmarks/compile_overhead.py``), 4096 chains in 64-D; fewer steps, since one
  evaluation takes tens of milliseconds.

Each row times a Python loop of steps (no draw storage), as the median of interleaved
repeats (``benchmarks/_timing.py``) of this thread's CPU time, which on a shared machine
estimates the wall time on an idle core (``--clock wall`` measures wall time):

* *eager library*: ``sampler.step`` with ``jit=False``;
* *jitted library*: ``sampler.step`` with ``jit=True``, after its first call, whose
  time is reported apart as the compile time (cold: inductor's on-disk caches are
  off for it);
* *hand-written eager*: the textbook batched loops of ``benchmarks/samplers.py``,
  with the score in closed form (banana only) and by ``torch.autograd.grad`` of the
  energy written in torch, as one writes it for an energy without a known gradient.

Compile times are cold (inductor's on-disk caches off). The first ``torch.compile``
in a process also pays a start-up of its own (imports, compiler checks), measured
once on a trivial function and reported apart. A last row times one denoising
score-matching training step (loss, backward, Adam) with ``jit=False`` and ``True``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
import warnings
from functools import partial

import torch

import ebmalgebra as eb
from ebmalgebra import jit
from ebmalgebra.learning.nets import MLPEnergy
from ebmalgebra.learning.score_matching import denoising_score_matching
from ebmalgebra.samplers import HMC, MALA
from ebmalgebra.targets import Banana

try:
    from _timing import median_times
    from compile_overhead import mlp_case
    from samplers import hand_hmc, hand_mala, leaf_function
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import median_times
    from benchmarks.compile_overhead import mlp_case
    from benchmarks.samplers import hand_hmc, hand_mala, leaf_function

torch.set_num_threads(1)

CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def seeded(hand, *args):
    """Run a hand-written loop with the same seed as the library loops."""
    return hand(*args, torch.Generator().manual_seed(1))


def autograd_score(energy):
    """A hand-written energy-and-score: the energy in torch, the score by autograd."""
    def energy_and_score(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = energy(x)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), -grad

    return energy_and_score


def banana_energy(x: torch.Tensor) -> torch.Tensor:
    """``targets.Banana()`` (scale 2, curvature 0.5, noise 1) written out in torch."""
    x1, x2 = x[:, 0], x[:, 1]
    u = x2 - 0.5 * (x1 * x1 - 4.0)
    return 0.5 * (x1 / 2.0) ** 2 + 0.5 * u * u + math.log(2.0) + math.log(2 * math.pi)


def library_loop(sampler, model, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    state = sampler.init(x0, model)
    for _ in range(n_steps):
        state, _ = sampler.step(state, generator)
    return state.position


def cold_seconds(function) -> float:
    """Wall time of ``function()`` with inductor's on-disk caches off, as on a first use."""
    with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dynamo_pgo force disabled": expected here
        start = time.perf_counter()
        function()
        return time.perf_counter() - start


def compile_time(sampler, model, x0: torch.Tensor) -> float:
    """Seconds of the first jitted step (trace and compile)."""
    jit.clear_cache()
    state = sampler.init(x0, model)
    return cold_seconds(partial(sampler.step, state, torch.Generator().manual_seed(1)))


def startup_time() -> float:
    """Seconds of the first torch.compile in this process, on a trivial function."""
    return cold_seconds(partial(torch.compile(lambda x: x * 2.0 + 1.0, dynamic=False),
                                torch.ones(8)))


def training(quick: bool, clock) -> dict:
    """One denoising score-matching step (loss, backward, Adam) on a 2-D MLP energy."""
    net = MLPEnergy(2, hidden=(128, 128, 128))
    model = eb.from_energy(net, 2, name="net")
    batch = torch.randn(256 if quick else 1024, 2, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(flag: bool) -> None:
        optimizer.zero_grad()
        denoising_score_matching(model, batch, sigma=0.1, jit=flag).backward()
        optimizer.step()

    jit.clear_cache()
    compile_seconds = cold_seconds(partial(step, True))
    seconds = median_times({"eager": partial(step, False), "jitted": partial(step, True)},
                           repeats=3 if quick else 7, inner=5 if quick else 20, clock=clock)
    eager, jitted = seconds["eager"] * 1e6, seconds["jitted"] * 1e6
    print(f"  DSM training step, MLP 2-D 3x128, batch {batch.shape[0]}: eager {eager:.0f} µs, "
          f"jitted {jitted:.0f} µs ({eager / jitted:.2f}x); compile {compile_seconds:.1f} s",
          flush=True)
    return {"eager": eager, "jitted": jitted, "compile": compile_seconds,
            "batch": batch.shape[0]}


def measure(target: str, algorithm: str, model, x0, n_steps: int, sampler_args: dict,
            hands: dict, repeats: int, clock) -> dict:
    cls = MALA if algorithm == "MALA" else HMC
    eager, jitted = cls(**sampler_args), cls(**sampler_args, jit=True)
    compile_seconds = compile_time(jitted, model, x0)
    check = n_steps if algorithm == "MALA" else min(n_steps, 20)
    difference = (library_loop(jitted, model, x0, check)
                  - library_loop(eager, model, x0, check)).abs().max()
    runs = {"eager library": partial(library_loop, eager, model, x0, n_steps),
            "jitted library": partial(library_loop, jitted, model, x0, n_steps),
            **hands}
    seconds = median_times(runs, repeats=repeats, inner=1, warmup=1, clock=clock)
    per_step = {name: value / n_steps * 1e6 for name, value in seconds.items()}
    row = {"target": target, "algorithm": algorithm, "steps": n_steps,
           "compile": compile_seconds, "difference": float(difference), **per_step}
    jitted_time = per_step["jitted library"]
    ratios = ", ".join(f"{name} {value / jitted_time:.2f}x" for name, value in per_step.items()
                       if name != "jitted library")
    print(f"  {target:12s} {algorithm:4s} " + "  ".join(
        f"{name} {value:9.1f} µs" for name, value in per_step.items()), flush=True)
    print(f"  {'':12s} {'':4s} jitted is faster than: {ratios}; compile {compile_seconds:.1f} s; "
          f"max |jit − eager| after {check} steps {float(difference):.1e}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every path")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="thread CPU time (default) or wall time")
    args = parser.parse_args()
    quick = args.quick
    clock = CLOCKS[args.clock]
    print(f"# ebmalgebra jit benchmark, {datetime.date.today()}, torch {torch.__version__}, "
          f"{_cpu_name()}, threads={torch.get_num_threads()}{', quick' if quick else ''}")
    print(f"# per-step times ({args.clock} clock), median of interleaved repeats; compile "
          "times are wall time")
    print(f"  torch.compile start-up (first compile in this process): {startup_time():.1f} s")
    rows = []

    banana = Banana()
    n_chains, n_steps = (1000, 50) if quick else (1000, 1000)
    x0 = torch.randn(n_chains, 2, generator=torch.Generator().manual_seed(0))
    closed_form, by_autograd = leaf_function(banana), autograd_score(banana_energy)
    mala = dict(step_size=0.05, adapt_step_size=False)
    hmc = dict(step_size=0.1, n_leapfrog=10, jitter=0.0, adapt_step_size=False,
               adapt_mass=False)
    rows.append(measure("banana 2-D", "MALA", banana, x0, n_steps, mala, {
        "hand, closed-form score": partial(seeded, hand_mala, closed_form, x0, n_steps, 0.05),
        "hand, autograd score": partial(seeded, hand_mala, by_autograd, x0, n_steps, 0.05),
    }, repeats=3 if quick else 7, clock=clock))
    rows.append(measure("banana 2-D", "HMC", banana, x0, n_steps, hmc, {
        "hand, closed-form score": partial(seeded, hand_hmc, closed_form, x0, n_steps, 0.1, 10),
        "hand, autograd score": partial(seeded, hand_hmc, by_autograd, x0, n_steps, 0.1, 10),
    }, repeats=3 if quick else 5, clock=clock))

    _, expression, fused = mlp_case(64)
    n_chains = 256 if quick else 4096
    x0 = torch.randn(n_chains, 64, generator=torch.Generator().manual_seed(0))
    mlp_mala, mlp_hmc = (2, 1) if quick else (20, 3)
    rows.append(measure("3 MLPs 64-D", "MALA", expression, x0, mlp_mala,
                        dict(step_size=1e-3, adapt_step_size=False), {
        "hand, autograd score": partial(seeded, hand_mala, fused, x0, mlp_mala, 1e-3),
    }, repeats=2 if quick else 3, clock=clock))
    rows.append(measure("3 MLPs 64-D", "HMC", expression, x0, mlp_hmc,
                        dict(hmc, step_size=1e-2), {
        "hand, autograd score": partial(seeded, hand_hmc, fused, x0, mlp_hmc, 1e-2, 10),
    }, repeats=2 if quick else 3, clock=clock))
    print_table(rows)
    print()
    training(quick, clock)


def print_table(rows: list[dict]) -> None:
    """The rows as a markdown table (µs per step; ratios are time ÷ jitted time)."""
    print("\n| target | sampler | eager library | jitted library | hand, closed-form score "
          "| hand, autograd score | compile (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        jitted = row["jitted library"]

        def cell(name, row=row, jitted=jitted):
            value = row.get(name)
            return "–" if value is None else f"{value:,.0f} ({value / jitted:.2f}×)"

        print(f"| {row['target']} | {row['algorithm']} ({row['steps']} steps) "
              f"| {cell('eager library')} | **{jitted:,.0f}** "
              f"| {cell('hand, closed-form score')} | {cell('hand, autograd score')} "
              f"| {row['compile']:.1f} |")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
