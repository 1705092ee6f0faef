"""Denoising digits with the posterior ``prior & GaussianLikelihood(y, 0.3)``.

The 355 test digits (pixels in [0, 1]) get N(0, 0.3²) noise. Estimates:

* Gaussian blur, its width (and whether to clip to [0, 1]) tuned on noisy
  held-out training digits;
* the linear MMSE (Wiener) estimate under a full-covariance Gaussian prior
  fitted to the training digits, μ + Σ(Σ + σ²I)⁻¹(y − μ);
* the energy-based posterior: ``pretrained.load("digits")`` (a noise-
  conditioned energy of the training digits) & the Gaussian likelihood,
  sampled by annealed Langevin with the likelihood's variance σ² + t² at
  noise level t (docs/applications.md); its posterior mean (MMSE) and MAP,
  and, as ablations, annealing from t = 0.3 instead of 3, and a likelihood
  that keeps σ² at every level.

Prints PSNR (mean over images, dB) and time; writes a figure of examples.

    python examples/denoise_digits.py --out denoise_digits.png
    python examples/denoise_digits.py --tiny       # 24 digits, fewer draws
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter

from ebmalgebra.apps import pretrained
from ebmalgebra.apps.inverse import (
    GaussianLikelihood,
    annealed_sampler,
    denoise,
    posterior_estimate,
    psnr,
)
from ebmalgebra.datasets import digits

SIGMA = 0.3
BLUR_WIDTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2)


def blur(images: torch.Tensor, width: float) -> torch.Tensor:
    return torch.from_numpy(np.stack([gaussian_filter(image.numpy(), width, mode="constant")
                                      for image in images]))


def tuned_blur(held_out: torch.Tensor, held_out_noisy: torch.Tensor):
    """(width, clip) maximising the held-out PSNR."""
    def quality(setting):
        width, clip = setting
        out = blur(held_out_noisy, width)
        return float(psnr(out.clamp(0, 1) if clip else out, held_out).mean())

    return max(((w, c) for w in BLUR_WIDTHS for c in (False, True)), key=quality)


def wiener(train: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    flat = train.flatten(1).double()
    mean, covariance = flat.mean(0), torch.cov(flat.T)
    gain = covariance @ torch.linalg.inv(covariance + SIGMA**2 * torch.eye(flat.shape[1]))
    out = mean + (noisy.flatten(1).double() - mean) @ gain.T
    return out.float().reshape(noisy.shape)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="denoise_digits.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=8, help="chains per image")
    parser.add_argument("--draws", type=int, default=200, help="draws per chain after annealing")
    parser.add_argument("--tiny", action="store_true", help="24 digits, few draws")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chains, draws = (2, 10) if args.tiny else (args.chains, args.draws)

    noise = torch.Generator().manual_seed(args.seed + 1)
    clean = digits(split="test")
    clean = clean[:24] if args.tiny else clean
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=noise)
    train = digits(split="train")
    held_out = train[::4]
    held_out_noisy = held_out + SIGMA * torch.randn(held_out.shape, generator=noise)

    prior = pretrained.load("digits")
    rows: list[tuple[str, torch.Tensor, float]] = []

    def report(label: str, estimate: torch.Tensor, seconds: float = 0.0, *, short: str) -> None:
        rows.append((short, estimate, seconds))
        print(f"{label:<52} {float(psnr(estimate, clean).mean()):6.2f} dB"
              + (f"   {seconds:6.1f} s" if seconds else ""), flush=True)

    print(f"{len(clean)} test digits, sigma = {SIGMA}; PSNR (mean over images)")
    report("noisy input y", noisy, short="noisy y")
    width, clip = tuned_blur(held_out, held_out_noisy)
    blurred = blur(noisy, width)
    report(f"Gaussian blur (width {width}, clip {clip}; tuned held-out)",
           blurred.clamp(0, 1) if clip else blurred, short="blur")
    report("Wiener filter (Gaussian prior, linear MMSE)", wiener(train, noisy),
           short="Wiener")

    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    mean = denoise(prior, noisy, SIGMA, n_chains=chains, n_steps=draws, generator=generator)
    report(f"digits & likelihood: posterior mean ({chains}x{draws} draws)", mean,
           time.perf_counter() - start, short="posterior mean")
    report("  ... clipped to [0, 1]", mean.clamp(0, 1), short="  clipped")
    start = time.perf_counter()
    mode = denoise(prior, noisy, SIGMA, method="map", n_steps=400)
    report("digits & likelihood: MAP (annealed descent)", mode, time.perf_counter() - start,
           short="MAP")

    print("ablation: the likelihood's variance during annealing, and where annealing starts")
    for inflated, sigma_max in ((True, 0.3), (False, 3.0), (False, 0.3)):
        start = time.perf_counter()
        likelihood = GaussianLikelihood(noisy, SIGMA, event_shape=(8, 8),
                                        noise_conditioned=inflated)
        sampler = annealed_sampler(prior, sigma_max=sigma_max, n_levels=40 if sigma_max > 1
                                   else 15)
        x0 = noisy.repeat(chains, 1, 1) + sigma_max * torch.randn(
            (chains * len(noisy), 8, 8), generator=generator)
        estimate = posterior_estimate(prior & likelihood, x0, len(noisy), sampler=sampler,
                                      n_steps=draws, generator=generator)
        value = float(psnr(estimate, clean).mean())
        label = (f"  variance {'sigma^2 + t^2' if inflated else 'sigma^2      '}, "
                 f"t from {sigma_max:g}")
        if not (value > 0):  # NaN or absurd: the chains blew up
            print(f"{label:<52} diverged ({value:.0f} dB)")
            continue
        report(label, estimate, time.perf_counter() - start,
               short=f"{'σ² + t²' if inflated else 'σ²'}, t ≤ {sigma_max:g}")

    shown = 10
    figure = Figure(figsize=(1.0 + 0.8 * shown, 0.85 * (len(rows) + 1)))
    grid = figure.add_gridspec(len(rows) + 1, shown, left=0.16, right=0.99, top=0.97,
                               bottom=0.02, wspace=0.05, hspace=0.1)
    for r, (label, images, _) in enumerate([("clean x", clean, 0.0), *rows]):
        for c in range(shown):
            axis = figure.add_subplot(grid[r, c])
            axis.imshow(images[c].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                text = label if r == 0 else (f"{label}\n"
                                             f"{float(psnr(images, clean).mean()):.2f} dB")
                axis.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=7)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
