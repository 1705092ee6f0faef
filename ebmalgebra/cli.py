"""Command-line interface: ``python -m ebmalgebra demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ebmalgebra.targets import Bar, Ring

    ring, bar = Ring(name="ring"), Bar(name="bar")
    expressions = {"ring": ring, "bar": bar, "ring & bar": ring & bar,
                   "0.5 * ring | 0.5 * bar": 0.5 * ring | 0.5 * bar}
    axis = torch.linspace(-4, 4, 200)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], -1)
    fig, axes = plt.subplots(1, len(expressions), figsize=(4 * len(expressions), 4))
    for ax, (title, expr) in zip(axes, expressions.items(), strict=True):
        density = torch.exp(-(expr.energy(grid) - expr.energy(grid).min())).reshape(200, 200)
        ax.imshow(density, origin="lower", extent=(-4, 4, -4, 4), cmap="magma")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebmalgebra", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="compose two 2-D models and plot them")
    demo.add_argument("--out", default="ebmalgebra_demo.png", help="PNG file to write")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)
