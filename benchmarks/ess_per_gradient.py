"""ESS per gradient of our NUTS against BlackJAX NUTS over independent seeds.

Run from the repository root::

    python benchmarks/ess_per_gradient.py --target schools --chains 4 --seeds 10
    python benchmarks/ess_per_gradient.py --quick    # tiny run that exercises every path

Issue 16 asks for ESS per gradient evaluation ≥ BlackJAX NUTS on every target
(parity of algorithm). One run of ``benchmarks/bayesian.py`` gives one draw of
each ratio, and at 4 chains the minimum bulk ESS carries Monte-Carlo noise of
roughly ±10–20%, so a single ratio near 1 decides nothing. This script repeats
the comparison of that benchmark (same targets, 500 warmup + 500 draws, starts
uniform on (−2, 2) in unconstrained coordinates) with seed s = 0 … S−1 for the
starts and for both samplers' random numbers, and reports per seed the minimum
bulk ESS over coordinates, the gradients of the sampling phase, and the ratio
r_s = (ESS/grad)_ours / (ESS/grad)_BlackJAX; then the geometric mean of r_s with
a 95% interval from the spread of log r_s over seeds (mean ± t_{0.975, S−1} sd/√S).
Timing is not measured: ESS per gradient does not depend on the machine's load.
Needs the ``bench`` extra (jax, blackjax).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch
from scipy.stats import t as student_t

from ebmalgebra.samplers import NUTS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bayesian import HAS_JAX, TARGETS, blackjax_row, ours, starts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="schools")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not HAS_JAX:
        print("jax/blackjax not installed (pip install '.[bench]'): nothing to compare")
        return
    torch.set_num_threads(1)
    warmup, n_steps, n_seeds = (40, 40, 2) if args.quick else (500, 500, args.seeds)
    target = TARGETS[args.target]()
    print(f"# {target.name}, {args.chains} chains, {warmup} warmup + {n_steps} draws, "
          f"{n_seeds} seeds")
    log_ratios = []
    for seed in range(n_seeds):
        u0, x0 = starts(target, args.chains, seed=seed)
        mine, _ = ours(target, NUTS(), "ebmalgebra NUTS", x0, warmup, n_steps, seed=seed)
        theirs = blackjax_row(target, u0, warmup, n_steps, seed=1000 + 2 * seed)
        ratio = (mine.min_ess / mine.gradients) / (theirs.min_ess / theirs.gradients)
        log_ratios.append(math.log(ratio))
        print(f"  seed {seed:2d}: ours minESS {mine.min_ess:7.0f} / {mine.gradients:8.0f} grads"
              f" = {mine.min_ess / mine.gradients:.4f}; BlackJAX {theirs.min_ess:7.0f} / "
              f"{theirs.gradients:8.0f} = {theirs.min_ess / theirs.gradients:.4f}; "
              f"ratio {ratio:.3f}", flush=True)
    mean = statistics.fmean(log_ratios)
    half = (student_t.ppf(0.975, n_seeds - 1) * statistics.stdev(log_ratios)
            / math.sqrt(n_seeds))
    print(f"# geometric mean ratio {math.exp(mean):.3f}, 95% interval "
          f"[{math.exp(mean - half):.3f}, {math.exp(mean + half):.3f}]; "
          f"{sum(r >= 0 for r in log_ratios)} of {n_seeds} seeds ≥ 1")


if __name__ == "__main__":
    main()
