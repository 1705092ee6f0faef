"""Can the weights of ``normalize(glasses) | normalize(hat)`` be measured? log Z ratios at σ_min.

Run from the repository root::

    python benchmarks/face_weights.py --weights DIR              # 1024 particles, seeds 0–2
    python benchmarks/face_weights.py --weights DIR --quick      # 32 particles, seeds 0–1

``DIR`` holds ``glasses`` and ``hat`` weights (``scripts/train_zoo.py --out DIR``, e.g.
with ``--proper glasses hat``). One thread, CPU. Both models are taken ``& envelope``,
the ball envelope of ``benchmarks/proper_faces.py`` (the enclosing ball of 64 000
training faces plus ``--margin``).

A mixture of two normalised components at σ_min needs only the ratio
r = log Z_hat(σ_min) − log Z_glasses(σ_min). Two estimators of it, from the same runs:

1. **Difference of noise paths.** One SMC run per seed carries N particles from
   N(0, σ_max² I) down the cards' 60 noise levels of the first model (MALA moves,
   bridge levels where the conditional ESS would drop below 0.9), as
   ``proper_faces.py`` and ``normalize(..., noise_levels=...)`` do: log Ẑ_first(σ)
   at every level. Its spread over seeds is that of the noise-path estimate; r is the
   difference of the two models' (seed-pooled) estimates at σ_min.
2. **A direct bridge at σ_min.** The same run continues from the first model's
   particles at σ_min to the second model at σ_min through the geometric path
   first ** (1 − β) & second ** β (both ``& envelope``), each next β chosen by
   bisection on the conditional ESS (``SMC(models=...)`` bridges two consecutive
   models so). The product of the bridge's mean incremental weights estimates
   Z_second/Z_first (Del Moral, Doucet & Jasra 2006). ``--directions`` runs it
   glasses → hat (forward) and hat → glasses (reverse): consistent estimates give
   forward ≈ −reverse.

The noise path and the bridge are one ``SMC.run(at_noise(second, σ_min),
models=[at_noise(first, σ) for σ in levels])``, where ``at_noise`` fixes a
noise-conditioned model's level; on the first model's levels it reproduces
``SMC.run(first, noise_levels=levels)`` number for number (same generator).
Printed per run: log Ẑ_first at a few levels, the bridge's estimate of r, its
number of steps, the final particles' surviving lineages and attribute rates, and
CPU time; then per direction the seeds' spread of each estimate.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import ebmalgebra as eb
from ebmalgebra import zoo
from ebmalgebra.operator import Operator
from ebmalgebra.zoo.faces import attribute_rates

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proper_faces import (  # noqa: E402
    REPORT_SIGMAS,
    add_common_arguments,
    face_ball,
    set_up,
    smc_run,
)

DIRECTIONS = {"forward": ("glasses", "hat"), "reverse": ("hat", "glasses")}


class AtNoise(Operator):
    """A noise-conditioned model held at one level t: E'(x) = E(x, t), s'(x) = s(x, t)."""

    symbol = "at_noise"

    def __init__(self, base: eb.EnergyModel, t: float) -> None:
        super().__init__(base)
        self.t = float(t)

    def params(self) -> dict[str, float]:
        return {"t": self.t}

    def _energy(self, x: torch.Tensor, t: object) -> torch.Tensor:
        return self._children[0]._energy(x, self.t)

    def _energy_and_score(self, x: torch.Tensor, t: object, create_graph: bool,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._children[0]._energy_and_score(x, self.t, create_graph)


def bridge_run(first: eb.EnergyModel, second: eb.EnergyModel, levels: list[float], n: int,
               n_steps: int, seed: int):
    """Noise path of ``first`` from N(0, σ_max² I), then a bridge to ``second`` at σ_min."""
    return smc_run(AtNoise(second, levels[-1]), levels, n, n_steps, seed,
                   models=[AtNoise(first, sigma) for sigma in levels])


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def pooled(values: list[float]) -> float:
    """log of the mean Ẑ over seeds (each run's Ẑ is unbiased)."""
    return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0)) - math.log(
        len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, particles=1024)
    parser.add_argument("--directions", default="forward,reverse")
    args = parser.parse_args()
    if args.quick:
        args.particles, args.seeds = 32, "0,1"
    seeds = set_up(args)
    directions = args.directions.split(",")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.particles} particles, seeds "
          f"{seeds}, {args.steps} MALA moves per level")

    center, radius = face_ball(args.margin)
    envelope = eb.ball_envelope(radius, center=center)
    models = {name: zoo.load(name) & envelope for name in ("glasses", "hat")}
    levels = zoo.plan_for(zoo.load("glasses")).noise_levels()
    shown = [min(range(len(levels)), key=lambda i, s=s: abs(math.log(levels[i] / s)))
             for s in REPORT_SIGMAS]

    noise_path: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for direction in directions:
        first, second = DIRECTIONS[direction]
        print(f"\n{direction}: noise path of {first} & envelope, then a bridge to {second} at "
              f"σ = {levels[-1]:.3g}; log Ẑ_{first}(σ) at σ = "
              + ", ".join(f"{levels[i]:.3g}" for i in shown))
        for seed in seeds:
            start = time.thread_time()
            run = bridge_run(models[first], models[second], levels, args.particles,
                             args.steps, seed)
            at_min, after = float(run.path_log_z[-2]), float(run.path_log_z[-1])
            noise_path.setdefault(first, []).append(at_min)
            # r = log Z_hat − log Z_glasses, whichever way the bridge went.
            ratio = (after - at_min) * (1 if direction == "forward" else -1)
            ratios.setdefault(direction, []).append(ratio)
            bridge_steps = bridge_length(run.levels)
            rates = attribute_rates(run.samples)
            print(f"  seed {seed}: " + "  ".join(f"{float(run.path_log_z[i]):8.1f}"
                                                for i in shown)
                  + f"   r = {ratio:8.2f} ({bridge_steps} bridge steps, min ESS "
                  f"{float(run.ess[-bridge_steps:].min()):.0f})   final: lineages "
                  f"{run.n_eves}, glasses {rates['glasses']:.2f}, hat {rates['hat']:.2f}, "
                  f"realistic {rates['realistic']:.2f}; {time.thread_time() - start:.0f} s CPU",
                  flush=True)
        print(f"  spread: log Ẑ_{first}(σ_min) {spread(noise_path[first]):.2f}, "
              f"r {spread(ratios[direction]):.2f}")

    print("\nr = log Z_hat(σ_min) − log Z_glasses(σ_min):")
    if {"glasses", "hat"} <= noise_path.keys():
        difference = pooled(noise_path["hat"]) - pooled(noise_path["glasses"])
        print(f"  difference of pooled noise paths: {difference:.2f}")
    for direction, values in ratios.items():
        print(f"  bridge {direction}: " + ", ".join(f"{v:.2f}" for v in values)
              + f" (mean {sum(values) / len(values):.2f}, spread {spread(values):.2f})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def bridge_length(descriptions: tuple[str, ...]) -> int:
    """Steps after the last noise level: each fixed target's last step reads "model"."""
    anchors = [i for i, text in enumerate(descriptions) if text == "model"]
    return len(descriptions) - 1 - anchors[-2]


if __name__ == "__main__":
    main()
