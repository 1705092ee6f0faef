"""The demo's rows by annealed Langevin against SMC at equal score evaluations.

Run from the repository root::

    python benchmarks/composition.py            # 256 faces, seeds 0 and 1 (~15 minutes)
    python benchmarks/composition.py --quick    # 16 faces, seed 0, 60 evaluations

One thread, CPU. For each row of :func:`ebmalgebra.zoo.demo.demo_models` and each
seed, SMC (:func:`ebmalgebra.zoo.run_smc`, the demo's plan: one reweighting and 5
MALA moves per level) runs first; the evaluations of the networks are *counted*
(a forward hook on the first zoo network of the expression adds up the rows it
evaluates), and annealed Langevin (:func:`ebmalgebra.zoo.draw`) then gets
round(E_SMC / levels) − 1 steps per level (it evaluates the new level's energy
once per level besides its steps), counted the same way. Reported per row and
method: the rates of the exact detectors (the row's goal rate and realism), the
diversity of the samples (median distance from a sample to its nearest other
sample, beside that of as many real faces: resampling makes near-copies),
evaluations per sample, wall time, and for SMC log Z ± stderr and the median ESS
per level. The figure (``--figure``, default docs/figures/composition_faces.png)
shows the goal rate and realism per row and method, and eight samples of each
negation row by each method.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from ebmalgebra import zoo
from ebmalgebra.zoo.demo import DEMO_SAMPLING, demo_models
from ebmalgebra.zoo.faces import attribute_rates

GOAL = {"glasses": "glasses", "hat": "hat", "glasses & hat": "both",
        "glasses & ~hat": "glasses_no_hat", "glasses & ~hat (stable form)": "glasses_no_hat",
        "glasses | hat": "either"}
METHODS = ("annealed", "smc")


class EvaluationCounter:
    """Rows evaluated by one network (a forward hook), per sample: evaluations per chain."""

    def __init__(self, model) -> None:
        self.rows = 0
        self.handle = next(iter(model.leaves())).module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.rows += inputs[0].shape[0]

    def per_sample(self, n: int) -> float:
        return self.rows / n

    def close(self) -> None:
        self.handle.remove()


def nearest_neighbour(images: torch.Tensor) -> float:
    """Median over samples of the L2 distance to the nearest other sample."""
    flat = images.detach().double().flatten(1)
    distances = torch.cdist(flat, flat)
    distances.fill_diagonal_(float("inf"))
    return float(distances.min(dim=1).values.median())


def measure(model, n: int, seed: int, method: str, plan) -> dict:
    counter = EvaluationCounter(model)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        if method == "smc":
            result = zoo.run_smc(model, n, plan=plan, generator=generator, progress=False)
            samples = result.samples
        else:
            result = None
            samples = zoo.draw(model, n, plan=plan, generator=generator, progress=False)
    finally:
        counter.close()
    facts = {"seconds": time.perf_counter() - start,
             "evaluations": counter.per_sample(n), "samples": samples,
             "rates": attribute_rates(samples), "neighbour": nearest_neighbour(samples)}
    if result is not None:
        facts.update(log_z=result.log_z, stderr=result.stderr,
                     ess=float(result.ess.median()))
    return facts


def run(n: int, seeds: list[int], evaluations: int | None, rows: list[str] | None) -> dict:
    settings = dict(DEMO_SAMPLING)
    results: dict[tuple[str, str], list[dict]] = {}
    for label, model in demo_models(zoo.models()).items():
        if rows is not None and label not in rows:
            continue
        smc_plan = zoo.plan_for(model, **settings)
        if evaluations is not None:
            smc_plan = replace(smc_plan, steps_per_level=max(1, evaluations // smc_plan.n_levels))
        for seed in seeds:
            smc = measure(model, n, seed, "smc", smc_plan)
            steps = max(1, round(smc["evaluations"] / smc_plan.n_levels) - 1)
            annealed = measure(model, n, seed, "annealed",
                               replace(smc_plan, steps_per_level=steps))
            for method, facts in (("smc", smc), ("annealed", annealed)):
                results.setdefault((label, method), []).append(facts)
                rates = facts["rates"]
                print(f"{label:<30} {method:<9} seed {seed}: {GOAL[label]} "
                      f"{rates[GOAL[label]]:.3f}, realistic {rates['realistic']:.3f}, "
                      f"neighbour {facts['neighbour']:.2f}, "
                      f"{facts['evaluations']:.0f} evaluations, {facts['seconds']:.1f} s",
                      flush=True)
    return results


def table(results: dict, n: int, seeds: list[int]) -> str:
    lines = [f"| row | goal rate | method | goal rate (seeds {', '.join(map(str, seeds))}) "
             "| realistic | nearest neighbour | evaluations / sample | wall s / run | "
             "log Z ± stderr | median ESS / level |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (label, method), runs in results.items():
        goal = GOAL[label]
        rate = " / ".join(f"{100 * r['rates'][goal]:.1f}%" for r in runs)
        real = " / ".join(f"{100 * r['rates']['realistic']:.1f}%" for r in runs)
        neighbour = " / ".join(f"{r['neighbour']:.2f}" for r in runs)
        evaluations = statistics.mean(r["evaluations"] for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        if method == "smc":
            log_z = " / ".join(f"{r['log_z']:.0f} ± {r['stderr']:.2g}" for r in runs)
            ess = " / ".join(f"{r['ess']:.0f}" for r in runs) + f" of {n}"
        else:
            log_z = ess = "–"
        escaped = label.replace("|", "\\|")  # a table cell
        lines.append(f"| `{escaped}` | {goal} | {method} | {rate} | {real} | {neighbour} "
                     f"| {evaluations:.0f} "
                     f"| {seconds:.1f} | {log_z} | {ess} |")
    return "\n".join(lines)


def figure(results: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    from ebmalgebra.plotting import save_figure

    labels = list(dict.fromkeys(label for label, _ in results))
    negations = [label for label in labels if label.startswith("glasses & ~hat")]
    fig = Figure(figsize=(10, 8.5))
    bars = fig.subplots(1, 2, gridspec_kw={"left": 0.27, "right": 0.98, "top": 0.9,
                                           "bottom": 0.53, "wspace": 0.08})
    for axes, key, name in ((bars[0], None, "goal rate"), (bars[1], "realistic", "realistic")):
        for offset, method in ((-0.2, "annealed"), (0.2, "smc")):
            values = [statistics.mean(r["rates"][key or GOAL[label]]
                                      for r in results[label, method]) for label in labels]
            axes.barh([i + offset for i in range(len(labels))], values, height=0.38,
                      label="annealed Langevin" if method == "annealed" else "SMC")
        axes.set_xlim(0, 1)
        axes.set_title(name, fontsize=10)
        axes.invert_yaxis()
        axes.set_yticks(range(len(labels)))
        axes.set_yticklabels([f"{label}\n({GOAL[label]})" for label in labels]
                             if key is None else [], fontsize=8)
    bars[1].legend(fontsize=8, loc="lower right")
    grid = fig.subplots(2 * len(negations), 8,
                        gridspec_kw={"left": 0.27, "right": 0.98, "top": 0.44, "bottom": 0.02,
                                     "wspace": 0.05, "hspace": 0.05})
    row = 0
    for label in negations:
        for method in METHODS:
            images = results[label, method][0]["samples"][:8]
            for column, axes in enumerate(grid[row]):
                axes.imshow(images[column].float().clamp(0, 1).numpy(), cmap="gray",
                            vmin=0, vmax=1)
                axes.set_xticks([])
                axes.set_yticks([])
            grid[row][0].set_ylabel(f"{label}\n{method}", rotation=0, ha="right",
                                    va="center", fontsize=7.5)
            row += 1
    models = demo_models(zoo.models())
    fig.text(0.5, 0.475, "  ".join(f"{label} = {models[label]!r};" for label in negations),
             ha="center", fontsize=7.5)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--figure", default="docs/figures/composition_faces.png")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="demo row labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, seeds, evaluations = (16, [0], 120) if args.quick else (256, [0, 1], None)
    load = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    results = run(n, seeds, evaluations, args.rows)
    from ebmalgebra.datasets import faces

    real = nearest_neighbour(faces(n, generator=torch.Generator().manual_seed(0)))
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, n = {n}, seeds {seeds}, one thread, load "
          f"average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}; nearest neighbour among {n} real faces: {real:.2f}\n")
    print(table(results, n, seeds))
    figure(results, Path(args.figure),
           f"Demo rows: annealed Langevin vs SMC at equal evaluations "
           f"({n} samples, seed {seeds[0]} shown, {started:%Y-%m-%d})")
    print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
