"""A gallery of 2-D compositions of pretrained zoo models: AND, OR, NOT, temperature.

Each panel shows one expression over the zoo models ``ring``, ``bar``,
``left`` and ``right``: its density exp(−E(x, σ_min)) on a grid (shading) and
samples drawn by annealed Langevin dynamics (dots). Nothing is retrained: the
panels differ only in the algebra.

    python examples/composition_2d.py --out composition_2d.png
    python examples/composition_2d.py --tiny          # a quick, coarse run (CI)
"""

from __future__ import annotations

import argparse
import math

import torch
from matplotlib.figure import Figure

from ebmalgebra import zoo

EXPRESSIONS = {
    "ring": "the data: a circle",
    "bar": "a horizontal bar",
    "ring & bar": "AND: where both are likely",
    "ring & left": "AND: the left arc",
    "left | right": "OR: either blob (weights w·Z)",
    "ring & (left & ~right) ** 2": "NOT right, relative to left",
    "(ring & bar) ** 0.3": "warmer: spread out",
    "ring & bar & left": "three experts",
}


SHADING_SIGMA = 0.15
"""Noise level of the shaded densities: at σ_min they are too sharp to see."""


def density_on_grid(model, sigma: float, resolution: int, extent: float) -> torch.Tensor:
    """exp(−(E − min E)) at noise level σ on a square grid, ``(resolution, resolution)``."""
    axis = torch.linspace(-extent, extent, resolution)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=-1)
    with torch.no_grad():
        energy = torch.cat([model.energy(chunk, sigma) for chunk in points.split(4096)])
    return torch.exp(-(energy - energy.min())).reshape(resolution, resolution)


def gallery(out: str, n: int, resolution: int, seed: int = 0) -> None:
    """Draw every expression of :data:`EXPRESSIONS` into one figure at ``out``."""
    models = zoo.models()
    extent = 4.5
    columns = 4
    rows = math.ceil(len(EXPRESSIONS) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.7 * rows))
    for i, (text, caption) in enumerate(EXPRESSIONS.items()):
        model = zoo.parse(text, models)
        density = density_on_grid(model, SHADING_SIGMA, resolution, extent)
        samples = zoo.draw(model, n, generator=torch.Generator().manual_seed(seed + i))
        axis = figure.add_subplot(rows, columns, i + 1)
        axis.imshow(density.numpy(), origin="lower", extent=(-extent, extent, -extent, extent),
                    cmap="Blues")
        axis.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.5)
        axis.set_xlim(-extent, extent)
        axis.set_ylim(-extent, extent)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{text}\n{caption}", fontsize=9, family="monospace")
    figure.suptitle(f"Composing pretrained 2-D energies (shading: density at σ = "
                    f"{SHADING_SIGMA}; dots: samples)")
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="composition_2d.png", help="PNG file to write")
    parser.add_argument("--n", type=int, default=1000, help="samples per panel")
    parser.add_argument("--tiny", action="store_true", help="few samples, coarse grid")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gallery(args.out, n=32 if args.tiny else args.n, resolution=40 if args.tiny else 200)


if __name__ == "__main__":
    main()
