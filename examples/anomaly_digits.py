"""Anomaly detection on digits by energy and by likelihood ratio.

A noise-conditioned energy model of the digits 0–4 (train split,
``pretrained.load("digits_0to4")``) scores held-out 0–4 (inliers) against four
outlier sets: the digits 5–9, uniform noise, inverted digits 1 − x and dimmed
digits 0.5 x. Three scores, higher = more anomalous, all read at noise level
t = 0.1 (just above the data's 1/16 quantisation step, so the model is asked
about the smoothed density it learned, not about the pixel grid):

* energy E(x, t), i.e. −log p_t(x) up to a constant;
* the ratio E(x, t) − E_pix(x) to a per-pixel Gaussian N(μ, s² + t²) fitted to
  the same data (smoothed by the same t);
* the ratio E(x, t) − E_bg(x, t) to the background model of Ren et al. 2019,
  the same network trained on digits whose pixels are replaced by uniform
  noise with probability 0.2 (``"digits_0to4_background"``).

Both ratios are energies of ``model & ~reference``, whose normalisers cancel
up to a constant. Prints the ROC-AUC table (and a sweep over t), writes the
ROC curves and example images.

    python examples/anomaly_digits.py --out anomaly_digits.png
"""

from __future__ import annotations

import argparse

import torch
from matplotlib.figure import Figure

from ebmalgebra.apps import pretrained
from ebmalgebra.apps.anomaly import LikelihoodRatioDetector, energy_score, plot_roc, roc_auc
from ebmalgebra.datasets import digits
from ebmalgebra.targets import Gaussian

T = 0.1
SWEEP = (0.02, 0.05, 0.1, 0.2, 0.4)


def outlier_sets(inliers: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The four outlier sets against held-out digits 0–4 (``inliers``)."""
    return {
        "digits 5-9": digits(classes=range(5, 10), split="test"),
        "uniform noise": torch.rand(355, 8, 8, generator=torch.Generator().manual_seed(seed)),
        "inverted 1-x": 1.0 - inliers,
        "dimmed 0.5x": 0.5 * inliers,
    }


def pixel_gaussian(train: torch.Tensor, t: float) -> Gaussian:
    """N(μ, s² + t²) per pixel: the data's pixel statistics, smoothed like the model at t."""
    return Gaussian(train.mean(0), (train.var(0) + t**2).sqrt(), name="pixels")


def scores(t: float, inliers, sets, model, background, train):
    """{score name: {set name: (inlier scores, outlier scores)}} at noise level t."""
    scorers = {
        "energy": lambda x: energy_score(model, x, t=t),
        "ratio to pixel Gaussian": LikelihoodRatioDetector(model, pixel_gaussian(train, t),
                                                           t=t).score,
        "ratio to background model": LikelihoodRatioDetector(model, background, t=t).score,
    }
    return {name: {set_name: (score(inliers), score(x)) for set_name, x in sets.items()}
            for name, score in scorers.items()}


def table(results: dict, set_names: list[str]) -> str:
    width = max(map(len, results)) + 2
    lines = ["score".ljust(width) + "".join(f"{name:>16}" for name in set_names)]
    lines.append("-" * len(lines[0]))
    for score_name, by_set in results.items():
        lines.append(score_name.ljust(width) + "".join(
            f"{roc_auc(*by_set[name]):>16.3f}" for name in set_names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="anomaly_digits.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=1, help="seed of the uniform-noise set")
    parser.add_argument("--tiny", action="store_true", help="skip the sweep over t")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model = pretrained.load("digits_0to4")
    background = pretrained.load("digits_0to4_background")
    train = digits(classes=range(5), split="train")
    inliers = digits(classes=range(5), split="test")
    sets = outlier_sets(inliers, args.seed)
    names = list(sets)

    results = scores(T, inliers, sets, model, background, train)
    print(f"ROC-AUC, inliers = {len(inliers)} held-out digits 0-4, t = {T}")
    print(table(results, names))
    if not args.tiny:
        print("\nsweep over the noise level t (energy / ratio to background model)")
        print("t      " + "".join(f"{name:>22}" for name in names))
        for t in SWEEP:
            swept = scores(t, inliers, sets, model, background, train)
            cells = "".join(
                f"{roc_auc(*swept['energy'][n]):>13.3f} / {roc_auc(*swept['ratio to background model'][n]):.3f}"  # noqa: E501
                for n in names)
            print(f"{t:<7g}{cells}")

    figure = Figure(figsize=(13, 6.2))
    grid = figure.add_gridspec(2, len(names), height_ratios=[3, 1.1], hspace=0.3, wspace=0.25,
                               left=0.05, right=0.98, top=0.9, bottom=0.05)
    for column, name in enumerate(names):
        roc = plot_roc({score_name: by_set[name] for score_name, by_set in results.items()},
                       ax=figure.add_subplot(grid[0, column]), title=f"held-out 0-4 vs {name}")
        if column:
            roc.set_ylabel("")
        strip = torch.cat(list(sets[name][:6].clamp(0, 1)), dim=1)
        axis = figure.add_subplot(grid[1, column])
        axis.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_axis_off()
    figure.suptitle(f"Anomaly detection on digits 0-4 (t = {T}): energy vs likelihood ratio")
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
