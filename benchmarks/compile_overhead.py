"""Compiled expressions vs hand-written fused torch functions (DESIGN §3 target: ≤ 1.05×).

Two workloads, each measured in one run with interleaved repeats:

(a) 2-D analytic expressions, batch 1000: the compiled ``energy_and_score`` against a
    hand-written function computing the same energy and its gradient in closed form;
(b) an expression of three MLP leaves (batch 4096, dim 64): the compiled function
    against a hand-written function that sums the three networks' energies as the
    expression prescribes and takes one autograd pass.

Each row also gives the aten operators one call dispatches, compiled and hand-written.

Usage: ``python benchmarks/compile_overhead.py [--quick] [--threads N]``
"""

from __future__ import annotations

import argparse
import math

import torch

import ebmalgebra as eb
from ebmalgebra.targets import Banana, Gaussian, Ring

try:
    from _timing import count_ops, median_times
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import count_ops, median_times


def analytic_cases():
    """(name, expression, hand-written energy_and_score) for 2-D analytic expressions."""
    ring = Ring(radius=2.0, width=0.25, name="ring")
    bar = eb.targets.Bar(length=2.0, width=0.25, name="bar")
    banana = Banana(name="banana")
    gauss = Gaussian(torch.zeros(2), 1.5, name="gauss")
    precision, center = bar.precision.clone(), bar.loc.clone()
    bar_const = float(bar.log_constant)
    ring_const = ring.log_normalizer
    gauss_const = math.log(1.5) * 2 + math.log(2 * math.pi)

    def ring_terms(x):
        rho = x.norm(dim=-1)
        gap = (rho - 2.0) / 0.25
        direction = x / rho.clamp_min(torch.finfo(x.dtype).eps)[:, None]
        return 0.5 * gap * gap + ring_const, (gap / 0.25)[:, None] * direction

    def bar_terms(x):
        diff = x - center
        px = diff @ precision
        return 0.5 * (diff * px).sum(-1) + bar_const, px

    def ring_and_bar(x):
        e1, g1 = ring_terms(x)
        e2, g2 = bar_terms(x)
        return e1 + e2, -(g1 + g2)

    def banana_terms(x):
        x1, x2 = x[:, 0], x[:, 1]
        u = x2 - 0.5 * (x1 * x1 - 4.0)
        energy = 0.5 * (x1 / 2.0) ** 2 + 0.5 * u * u + math.log(2.0) + math.log(2 * math.pi)
        return energy, torch.stack([x1 / 4.0 - x1 * u, u], dim=-1)

    def mixture_tempered(x):
        e1, g1 = ring_terms(x)
        e2, g2 = banana_terms(x)
        e1, e2 = e1 - math.log(0.3), e2 - math.log(0.7)
        stacked = torch.stack([-e1, -e2])
        weights = torch.softmax(stacked, dim=0)
        e_mix = -torch.logsumexp(stacked, dim=0)
        g_mix = weights[0][:, None] * g1 + weights[1][:, None] * g2
        e3 = 0.5 * (x * x).sum(-1) / 2.25 + gauss_const
        return e_mix + 0.5 * e3, -(g_mix + 0.5 * x / 2.25)

    return [
        ("ring & bar", ring & bar, ring_and_bar),
        ("(0.3 * ring | 0.7 * banana) & gauss ** 0.5",
         (0.3 * ring | 0.7 * banana) & gauss ** 0.5, mixture_tempered),
    ]


def mlp(dim: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.SiLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                               torch.nn.Linear(hidden, 1))


def mlp_case(dim: int):
    nets = [mlp(dim, 256, seed) for seed in range(3)]
    a, b, c = (eb.from_energy(net, dim, name=name) for net, name in zip(nets, "abc", strict=True))
    expr = (a & b ** 0.5) | 2.0 * c

    def fused(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e_ab = nets[0](x)[:, 0] + 0.5 * nets[1](x)[:, 0]
            e_c = nets[2](x)[:, 0] - math.log(2.0)
            energy = -torch.logsumexp(torch.stack([-e_ab, -e_c]), dim=0)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), -grad

    return "(a & b ** 0.5) | 2 * c  [3 MLPs 64-256-256-1]", expr, fused


def run(quick: bool) -> list[tuple[str, float, float, int, int]]:
    """(name, compiled s, hand-written s, compiled aten ops, hand-written aten ops) per
    workload, the ops counted over one call."""
    rows = []
    for batch in (1000, 10000):
        x2 = torch.randn(batch, 2)
        for name, expr, fused in analytic_cases():
            compiled = eb.compile(expr)
            torch.testing.assert_close(compiled.energy_and_score(x2), fused(x2), rtol=1e-4,
                                       atol=1e-4)
            times = median_times({"compiled": lambda c=compiled, x=x2: c.energy_and_score(x),
                                  "fused": lambda f=fused, x=x2: f(x)},
                                 repeats=5 if quick else 30, inner=20 if quick else 200)
            rows.append((f"(a) {name}, batch {batch}", times["compiled"], times["fused"],
                         count_ops(lambda c=compiled, x=x2: c.energy_and_score(x)),
                         count_ops(lambda f=fused, x=x2: f(x))))
    name, expr, fused = mlp_case(64)
    x64 = torch.randn(4096, 64)
    compiled = eb.compile(expr)
    torch.testing.assert_close(compiled.energy_and_score(x64), fused(x64), rtol=1e-4, atol=1e-4)
    times = median_times({"compiled": lambda: compiled.energy_and_score(x64),
                          "fused": lambda: fused(x64)},
                         repeats=3 if quick else 15, inner=2 if quick else 10)
    rows.append((f"(b) {name}, batch 4096", times["compiled"], times["fused"],
                 count_ops(lambda: compiled.energy_and_score(x64)), count_ops(lambda: fused(x64))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'expression':62s} {'compiled':>11s} {'hand-written':>13s} {'ratio':>7s} "
          f"{'aten ops':>9s} {'hand ops':>9s}")
    for name, compiled, fused, ops, fused_ops in run(args.quick):
        print(f"{name:62s} {compiled * 1e6:9.1f}µs {fused * 1e6:11.1f}µs {compiled / fused:7.3f} "
              f"{ops:9d} {fused_ops:9d}")


if __name__ == "__main__":
    main()
