"""Product of experts versus mixture: AND carves, OR adds, and mixture weights are w·Z.

Two normalised experts, a ring and a bar (analytic targets with exact
sampling), combined two ways:

* ``ring & bar`` multiplies densities (energies add): only points that both
  experts find likely survive, two blobs where the bar crosses the ring. No
  exact sampler exists for a product, so it is sampled by MCMC (MALA).
* ``0.5 * ring | 0.5 * bar`` adds densities: every point either expert likes
  survives. Because both components are normalised, the weights written are
  the weights obtained, and the mixture samples exactly.

The last panel is the honest-math caveat of DESIGN §1: ``ring ** 3`` is no
longer normalised, so in ``0.5 * ring ** 3 | 0.5 * bar`` the components weigh
w·Z, with Z unknown to the library; it says so instead of pretending.

    python examples/product_vs_mixture.py --out product_vs_mixture.png
    python examples/product_vs_mixture.py --tiny       # a quick run (CI)
"""

from __future__ import annotations

import argparse

import torch
from matplotlib.figure import Figure

import ebmalgebra as eb
from ebmalgebra.samplers import MALA
from ebmalgebra.targets import Bar, Ring


def draw(model: eb.EnergyModel, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Exact draws when the model has an exact sampler, else the last MALA draw of n chains."""
    if model.can_sample:
        return model.sample(n, generator=generator)
    x0 = 3.0 * torch.randn(n, 2, generator=generator)
    samples = eb.sample(model, MALA(step_size=0.05), x0=x0, n_steps=steps, warmup=steps,
                        generator=generator, progress=False)
    return samples.draws[-1]


def weights(model: eb.EnergyModel) -> str:
    """The mixture's true component weights, or why they are unknown."""
    try:
        return ", ".join(f"{w:.2f}" for w in model.component_weights().tolist())
    except eb.CapabilityError:
        return "unknown (w·Z with Z unknown)"


def story(out: str, n: int, steps: int, seed: int = 0) -> None:
    ring, bar = Ring(radius=2.0, width=0.2, name="ring"), Bar(length=2.5, width=0.2, name="bar")
    panels = {
        "ring": (ring, "expert 1"),
        "bar": (bar, "expert 2"),
        "ring & bar": (ring & bar, "product: AND"),
        "0.5 * ring | 0.5 * bar": (0.5 * ring | 0.5 * bar, "mixture: OR"),
        "0.2 * ring | 0.8 * bar": (0.2 * ring | 0.8 * bar, "weights are honoured"),
        "0.5 * ring ** 3 | 0.5 * bar": (0.5 * ring**3 | 0.5 * bar, "weights are w·Z"),
    }
    generator = torch.Generator().manual_seed(seed)
    figure = Figure(figsize=(3.3 * len(panels), 3.8))
    print(f"{'expression':28} {'sampler':8} {'near the ring':>13}  component weights")
    for i, (text, (model, caption)) in enumerate(panels.items()):
        samples = draw(model, n, steps, generator)
        on_ring = float(((samples.norm(dim=1) - 2.0).abs() < 0.5).float().mean())
        sampler = "exact" if model.can_sample else "MALA"
        mixture = isinstance(model, eb.Mixture)
        print(f"{text:28} {sampler:8} {on_ring:13.2f}  {weights(model) if mixture else '-'}")
        axis = figure.add_subplot(1, len(panels), i + 1)
        axis.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4)
        axis.set_xlim(-4, 4)
        axis.set_ylim(-4, 4)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{text}\n{caption} ({sampler})", fontsize=9, family="monospace")
    figure.suptitle("Product of experts (&) versus mixture (|)")
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="product_vs_mixture.png", help="PNG file to write")
    parser.add_argument("--n", type=int, default=2000, help="samples per panel")
    parser.add_argument("--tiny", action="store_true", help="few samples and steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    story(args.out, n=64 if args.tiny else args.n, steps=20 if args.tiny else 400)


if __name__ == "__main__":
    main()
