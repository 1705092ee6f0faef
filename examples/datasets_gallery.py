"""Save a PNG gallery of the data sets: faces for each attribute combination, and the 2-D toys.

Top: one row of faces per combination of (glasses, hat, smile), each row
labelled with what the detectors found on it. Bottom: scatter plots of the
five 2-D toys.

    python examples/datasets_gallery.py --out gallery.png --n 8
"""

from __future__ import annotations

import argparse
import itertools

import torch
from matplotlib.figure import Figure

from ebmalgebra.datasets import (
    bar,
    checkerboard,
    eight_gaussians,
    faces,
    moons,
    rings,
)

TOYS = {
    "rings": rings,
    "eight_gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
    "bar": bar,
}


def gallery(path: str, n: int, seed: int = 0) -> None:
    """Draw n faces per attribute combination and 2,000 points per toy; save to ``path``."""
    generator = torch.Generator().manual_seed(seed)
    combinations = list(itertools.product([False, True], repeat=3))
    # A bare Figure renders with Agg and needs no display or pyplot state.
    figure = Figure(figsize=(max(n, len(TOYS) * 1.6), 11))
    grid = figure.add_gridspec(len(combinations) + 3, max(n, len(TOYS)))

    for row, (glasses, hat, smile) in enumerate(combinations):
        images = faces(n, glasses=glasses, hat=hat, smile=smile, generator=generator)
        found = faces.attributes(images)
        realistic = faces.is_realistic(images).float().mean().item()
        for col in range(n):
            axis = figure.add_subplot(grid[row, col])
            axis.imshow(images[col], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_axis_off()
        label = ", ".join(
            f"{name} {'yes' if wanted else 'no'} ({found[name].float().mean():.0%})"
            for name, wanted in zip(("glasses", "hat", "smile"), (glasses, hat, smile), strict=True)
        )
        figure.axes[-n].set_title(
            f"{label}; realistic {realistic:.0%}", loc="left", fontsize=8, pad=2
        )

    for col, (name, sample) in enumerate(TOYS.items()):
        axis = figure.add_subplot(grid[len(combinations) :, col])
        points = sample(2000, generator=generator)
        axis.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        axis.set_title(name, fontsize=8)
        axis.set_aspect("equal")
        axis.set_xlim(-3.5, 3.5)
        axis.set_ylim(-3.5, 3.5)
        axis.tick_params(labelsize=6)

    figure.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="datasets_gallery.png", help="PNG file to write")
    parser.add_argument("--n", type=int, default=8, help="faces per attribute combination")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")
    gallery(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()
