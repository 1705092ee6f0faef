"""Why unnormalised mixtures are Z-weighted, and how ``normalize`` fixes it.

Two bumps with the same shape: a at −3 and b at +3, but b's energy is 2 lower,
so Z_b = e² Z_a. The raw mixture ``a | b`` adds the unnormalised densities and
puts mass Z_a / (Z_a + Z_b) ≈ 0.12 on a; ``normalize(a) | normalize(b)``
estimates each Z by annealed importance sampling and gives 0.5 / 0.5.

Usage: ``python examples/normalization.py [--out FIG.png] [--quick]``
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import ebmalgebra as eb
from ebmalgebra.normalize import normalize
from ebmalgebra.samplers import RandomWalkMH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="normalization.png")
    parser.add_argument("--quick", action="store_true", help="tiny run (for CI)")
    args = parser.parse_args()
    n_chains, n_steps = (100, 50) if args.quick else (1000, 400)

    a = eb.from_energy(lambda x: 0.5 * ((x + 3.0) ** 2).sum(-1), 1, name="a")
    b = eb.from_energy(lambda x: 0.5 * ((x - 3.0) ** 2).sum(-1) - 2.0, 1, name="b")
    generator = torch.Generator().manual_seed(0)
    fair = normalize(a, generator=generator) | normalize(b, generator=generator)
    expressions = {"a | b  (raw: weights ∝ Z)": a | b,
                   "normalize(a) | normalize(b)": fair}

    grid = torch.linspace(-7, 7, 400, dtype=torch.float64)[:, None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (title, model) in zip(axes, expressions.items(), strict=True):
        run = eb.sample(model, RandomWalkMH(step_size=4.0, adapt_step_size=False),
                        x0=4.0 * torch.randn(n_chains, 1, generator=generator,
                                             dtype=torch.float64),
                        n_steps=n_steps, warmup=100, generator=generator, progress=False)
        draws = run.draws.flatten()
        share = float((draws < 0).double().mean())
        density = torch.exp(-model.energy(grid))
        density = density / (density.sum() * (grid[1, 0] - grid[0, 0]))
        ax.hist(draws.numpy(), bins=80, range=(-7, 7), density=True, alpha=0.5,
                label="MH samples")
        ax.plot(grid[:, 0].numpy(), density.numpy(), "k", lw=1.5, label="exp(−E) / ∫")
        ax.set_title(f"{title}\nmass on a: {share:.3f}")
        ax.set_xlabel("x")
        print(f"{title:32s} share of samples near a: {share:.3f}")
    axes[0].legend(loc="upper left")
    print(f"expected: raw {1 / (1 + math.e ** 2):.3f}, normalised 0.500")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
