"""Can the face models be normalised? SMC log Ẑ of ``model & ball_envelope`` across seeds.

Run from the repository root::

    python benchmarks/proper_faces.py             # 256 particles, seeds 0–2 (~15 minutes)
    python benchmarks/proper_faces.py --quick     # 32 particles, seeds 0–1, 16 samples
    python benchmarks/proper_faces.py --no-envelope --particles 64   # the bare models
    python benchmarks/proper_faces.py --weights /tmp/zoo   # models from train_zoo.py --out

One thread, CPU. The envelope is ``ball_envelope(R, center=c, noise_width=w)`` with
(c, R) the enclosing ball of 64 000 training faces (``datasets.faces``, noise 0.04)
plus ``--margin``. For ``glasses`` and ``hat``:

1. **Reproducibility.** One SMC run per seed down the cards' 60 noise levels
   (σ = 12 → 0.01; ``SMC(n_steps=...)``, MALA moves, bridge levels where the
   conditional ESS would drop below 0.9), as ``normalize(model & envelope,
   noise_levels=..., replicates=...)`` runs them. Printed: log Ẑ(σ) of each seed at
   a few levels, their spread (max − min) and the final particles: surviving
   lineages, median distance to c, attribute rates and realism.
2. **A lower bound from inside the ball.** Z(σ) ≥ ∫_ball exp(−E(x, σ)) dx =
   V_ball · E_U[exp(−E)] for U uniform in the ball (the envelope is zero there);
   log V_ball + logmeanexp(−E(u_i)) over ``--uniform`` points estimates it from below
   (Jensen), and exceeds log Z by t nats with probability ≤ e^(−t) (Markov). When it
   lies above the SMC estimate, the SMC particles missed mass the target has inside
   the ball, on images that are not faces.
3. **The mixture.** ``normalize(glasses & env) | normalize(hat & env)`` with the
   seeds' pooled log Ẑ(σ) (log of the mean Ẑ) at every level, sampled like the demo
   (``zoo.draw``, annealed Langevin, ``DEMO_SAMPLING``), beside each component alone
   and the raw mixture ``(glasses & env) | (hat & env)``. Printed: fractions with
   glasses only, hat only, both, and realistic, and each mixture's weight of the
   glasses component fitted to them by least squares from the components' own
   fractions.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

import ebmalgebra as eb
from ebmalgebra import zoo
from ebmalgebra.datasets import faces
from ebmalgebra.envelope import enclosing_ball
from ebmalgebra.samplers import SMC
from ebmalgebra.targets import Gaussian
from ebmalgebra.zoo.demo import DEMO_SAMPLING
from ebmalgebra.zoo.faces import attribute_rates

MODELS = ("glasses", "hat")
REPORT_SIGMAS = (1.0, 0.3, 0.1, 0.03, 0.01)
"""Levels at which log Ẑ is printed (the nearest of the cards' levels)."""


def fractions(images: torch.Tensor) -> dict[str, float]:
    """Glasses only, hat only, both, realistic."""
    rates = attribute_rates(images)
    return {"glasses only": rates["glasses_no_hat"], "hat only": rates["hat"] - rates["both"],
            "both": rates["both"], "realistic": rates["realistic"]}


def smc_run(model: eb.EnergyModel, levels: list[float], n: int, n_steps: int, seed: int,
            models: list[eb.EnergyModel] | None = None):
    """One SMC run from N(0, σ_max² I), σ_max = ``levels[0]``, float32 particles: down the
    noise ``levels`` of ``model``, or through the given ``models`` and then ``model``."""
    base = Gaussian(torch.zeros(16, 16), levels[0], name="base")
    path = {"noise_levels": levels} if models is None else {"models": models}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SMC: only", category=RuntimeWarning)
        return SMC(n_steps=n_steps).run(model, **path, n_particles=n, base=base,
                                        generator=torch.Generator().manual_seed(seed),
                                        dtype=torch.float32, progress=False)


def uniform_in_ball(center: torch.Tensor, radius: float, n: int, seed: int) -> torch.Tensor:
    """``n`` points uniform in the ball: Gaussian directions, radius R·U^(1/d)."""
    generator = torch.Generator().manual_seed(seed)
    dim = center.numel()
    directions = torch.randn(n, dim, generator=generator)
    directions = directions / directions.norm(dim=1, keepdim=True)
    radii = radius * torch.rand(n, 1, generator=generator) ** (1.0 / dim)
    return (center.reshape(1, -1) + radii * directions).reshape(n, *center.shape)


def ball_lower_bound(model: eb.EnergyModel, points: torch.Tensor, radius: float,
                     sigma: float) -> float:
    """log V_ball + logmeanexp(−E(u_i, σ)): a stochastic lower bound on log Z(σ)."""
    dim = points[0].numel()
    log_volume = (dim * math.log(radius) + 0.5 * dim * math.log(math.pi)
                  - math.lgamma(0.5 * dim + 1.0))
    with torch.no_grad():
        energies = torch.cat([model.energy(chunk, sigma) for chunk in points.split(512)])
    return log_volume + float(torch.logsumexp(-energies.double(), 0)) - math.log(len(points))


def fitted_weight(mixture: dict[str, float], first: dict[str, float],
                  second: dict[str, float]) -> float:
    """w minimising Σ_k (f_k − w a_k − (1 − w) b_k)² over glasses only, hat only, both."""
    keys = ("glasses only", "hat only", "both")
    a = torch.tensor([first[k] for k in keys], dtype=torch.float64)
    b = torch.tensor([second[k] for k in keys], dtype=torch.float64)
    f = torch.tensor([mixture[k] for k in keys], dtype=torch.float64)
    direction = a - b
    return float(((f - b) @ direction) / (direction @ direction))


def add_common_arguments(parser: argparse.ArgumentParser, particles: int) -> None:
    """The arguments of this script and ``benchmarks/face_weights.py``."""
    parser.add_argument("--particles", type=int, default=particles)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=5, help="MALA moves per level")
    parser.add_argument("--margin", type=float, default=0.25)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a zoo weights folder to load glasses and hat from (default: the "
                             "shipped zoo.WEIGHTS)")


def set_up(args: argparse.Namespace) -> list[int]:
    """Load the zoo from ``--weights``, one torch thread; the seeds, after saying which
    weights are used (``--quick``'s settings are applied by the caller first)."""
    if args.weights is not None:
        zoo.WEIGHTS = args.weights
    torch.set_num_threads(1)
    print(f"weights from {zoo.WEIGHTS}")
    return [int(s) for s in args.seeds.split(",")]


def face_ball(margin: float) -> tuple[torch.Tensor, float]:
    """The enclosing ball of 64 000 noised faces, radius widened by ``margin``."""
    data = faces(64000, noise=0.04, generator=torch.Generator().manual_seed(12345))
    return enclosing_ball(data, margin=margin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, particles=256)
    parser.add_argument("--noise-width", type=float, default=0.0)
    parser.add_argument("--no-envelope", action="store_true",
                        help="the bare models (the ball bound still bounds their log Z)")
    parser.add_argument("--uniform", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    if args.quick:
        args.particles, args.seeds, args.uniform, args.samples = 32, "0,1", 512, 16
    seeds = set_up(args)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.particles} particles, "
          f"seeds {seeds}, {args.steps} MALA moves per level, noise_width {args.noise_width}")

    center, radius = face_ball(args.margin)
    envelope = (eb.one if args.no_envelope
                else eb.ball_envelope(radius, center=center, noise_width=args.noise_width))
    print(f"envelope: R = {radius:.3f} about the mean face (norm {float(center.norm()):.2f})")
    models = {name: zoo.load(name) for name in MODELS}
    levels = zoo.plan_for(models["glasses"]).noise_levels()
    shown = [min(range(len(levels)), key=lambda i, s=s: abs(math.log(levels[i] / s)))
             for s in REPORT_SIGMAS]
    points = uniform_in_ball(center, radius, args.uniform, seed=0)

    pooled = {}
    for name, model in models.items():
        proper = model & envelope
        paths = []
        print(f"\n{proper!r}: log Ẑ(σ) at σ = "
              + ", ".join(f"{levels[i]:.3g}" for i in shown))
        for seed in seeds:
            start = time.process_time()
            run = smc_run(proper, levels, args.particles, args.steps, seed)
            paths.append(run.path_log_z)
            distance = (run.samples - center).flatten(1).norm(dim=1)
            rates = attribute_rates(run.samples)
            print(f"  seed {seed}: " + "  ".join(f"{float(run.path_log_z[i]):8.1f}"
                                                for i in shown)
                  + f"   lineages {int(run.eve.unique().numel())}, {len(run.levels)} levels, "
                  f"distance to c {float(distance.median()):.2f}, glasses "
                  f"{rates['glasses']:.2f}, hat {rates['hat']:.2f}, realistic "
                  f"{rates['realistic']:.2f}, {time.process_time() - start:.0f} s CPU")
        paths = torch.stack(paths).double()
        spread = paths.max(0).values - paths.min(0).values
        print("  spread:  " + "  ".join(f"{float(spread[i]):8.1f}" for i in shown))
        bounds = [ball_lower_bound(model, points, radius, levels[i]) for i in shown]
        print("  ball ≥:  " + "  ".join(f"{bound:8.1f}" for bound in bounds))
        pooled[name] = (torch.logsumexp(paths, 0) - math.log(len(seeds))).tolist()

    difference = pooled["glasses"][-1] - pooled["hat"][-1]
    print(f"\npooled log Ẑ(σ_min): glasses {pooled['glasses'][-1]:.1f}, hat "
          f"{pooled['hat'][-1]:.1f}: raw mixture weight of glasses "
          f"{1.0 / (1.0 + math.exp(-difference)):.3g}")
    plan = replace(zoo.plan_for(models["glasses"]), **DEMO_SAMPLING)
    products = {name: models[name] & envelope for name in MODELS}
    normalized = {name: eb.normalize(products[name], noise_levels=levels, log_z=pooled[name])
                  for name in MODELS}
    rows = [products["glasses"], products["hat"], normalized["glasses"] | normalized["hat"],
            products["glasses"] | products["hat"]]
    measured = {}
    for index, expression in enumerate(rows):
        label = repr(expression).replace(", noise_levels=<60 levels>", "")
        images = zoo.draw(expression, args.samples, plan=plan, progress=False,
                          generator=torch.Generator().manual_seed(100 + index))
        measured[label] = fractions(images)
        print(f"  {label}: " + ", ".join(f"{key} {value:.3f}"
                                         for key, value in measured[label].items()))
    first, second, *mixtures = measured.values()
    print("  fitted weight of glasses: normalised mixture "
          + ", raw mixture ".join(f"{fitted_weight(mixture, first, second):.2f}"
                                  for mixture in mixtures))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
