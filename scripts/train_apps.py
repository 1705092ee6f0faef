"""Train the applications' pretrained models reproducibly from a seed (ebmalgebra.apps.pretrained).

* ``digits``, ``digits_0to4``: noise-conditioned denoiser energies
  E(x, t) = ‖x − D(x, t)‖² / (2t²) (:class:`~ebmalgebra.learning.DenoiserEnergy`
  around a :class:`~ebmalgebra.learning.ResidualMLPDenoiser`), trained by
  multi-noise denoising score matching (t log-uniform in [0.01, 3], weight t²)
  on the train split of scikit-learn's digits (all ten classes / 0–4).
* ``digits_0to4_background``: the same network and loss on digits 0–4 in which
  every pixel is, independently with probability 0.2, replaced by U(0, 1)
  noise, redrawn every batch. Perturbing the input destroys the digit's
  shape but keeps the background statistics (dark surround, ink intensity),
  so the model learns those only: the reference of Ren et al. 2019's
  likelihood ratio.
* ``glasses_classifier``: a noise-conditioned
  :class:`~ebmalgebra.apps.guidance.MLPClassifier` predicting "glasses" from
  x + t ε on procedural faces with random attributes (t log-uniform in
  [0.01, 12], the faces zoo's range), cross-entropy.

Each model is written to ``ebmalgebra/apps/weights/`` as ``<name>.safetensors``
(float16 state dict) and ``<name>.json`` (architecture, data, settings, seed,
time, metrics measured on the float16 weights, sampling settings, sha256).

Usage::

    python scripts/train_apps.py                           # all four, ≈ 1 min each on one thread
    python scripts/train_apps.py --only digits --seed 1 --out /tmp/apps
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch
from _cards import provenance, save_weights, training_parser, write_card

from ebmalgebra.apps.guidance import MLPClassifier
from ebmalgebra.apps.inverse import psnr
from ebmalgebra.datasets import digits, faces
from ebmalgebra.learning import (
    DenoiserEnergy,
    History,
    ResidualMLPDenoiser,
    as_model,
    fit,
    multi_noise_dsm,
)

WEIGHTS = Path(__file__).resolve().parent.parent / "ebmalgebra" / "apps" / "weights"

DIGITS_ARCHITECTURE = {"width": 256, "depth": 3, "embedding_dim": 64, "sigma_data": 0.4}
DIGITS_SIGMA = (0.01, 3.0)
DIGITS_STEPS = 3000
DIGITS_SAMPLING = {"sigma_max": 3.0, "sigma_min": 0.01, "n_levels": 40, "steps_per_level": 10,
                   "step_size": 1e-4, "mala_below": 0.5, "init_mean": 0.0}
"""Annealed Langevin settings for the digits priors (fields of ebmalgebra.zoo.SamplingPlan)."""
BACKGROUND_RATE = 0.2

CLASSIFIER_ARCHITECTURE = {"hidden": [256, 256], "sigma_data": 0.5}
CLASSIFIER_SIGMA = (0.01, 12.0)
CLASSIFIER_STEPS = 3000
N_FACES = 32_000

BATCH_SIZE = 128
LEARNING_RATE = 2e-3

MODELS = {
    "digits": "energy of the digits 0-9 (train split), noise-conditioned",
    "digits_0to4": "energy of the digits 0-4 (train split), noise-conditioned",
    "digits_0to4_background": "energy of the digits 0-4 with 20% of pixels replaced by "
                              "U(0, 1) noise: the likelihood-ratio reference",
    "glasses_classifier": "p(glasses | x_t, t) on 16x16 faces at noise level t (class 1 = "
                          "glasses)",
}


def _module_card(name: str, config: dict) -> dict:
    return {"$module": name, "config": config}


def digits_network() -> DenoiserEnergy:
    return DenoiserEnergy(ResidualMLPDenoiser((8, 8), **DIGITS_ARCHITECTURE))


def perturb(batch: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each pixel, independently with probability ``rate``, by U(0, 1) noise."""
    replace = torch.rand(batch.shape, generator=generator) < rate
    return torch.where(replace, torch.rand(batch.shape, generator=generator), batch)


def background_loss(model, batch, *, generator=None):
    """Multi-noise DSM on perturbed digits (see the module docstring)."""
    return multi_noise_dsm(model, perturb(batch, BACKGROUND_RATE, generator),
                           sigma_min=DIGITS_SIGMA[0], sigma_max=DIGITS_SIGMA[1],
                           generator=generator)


def one_cycle(parameters, steps: int):
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps,
                                                    pct_start=0.05)
    return optimizer, scheduler


def train_digits(name: str, generator: torch.Generator, steps: int) -> tuple:
    classes = None if name == "digits" else range(5)
    data = digits(classes=classes, split="train")
    net = digits_network()
    model = as_model(net, name=name)
    loss = background_loss if name.endswith("background") else functools.partial(
        multi_noise_dsm, sigma_min=DIGITS_SIGMA[0], sigma_max=DIGITS_SIGMA[1])
    optimizer, scheduler = one_cycle(net.parameters(), steps)
    epochs = math.ceil(steps / math.ceil(len(data) / BATCH_SIZE))
    history = fit(model, data, loss, epochs=epochs, batch_size=BATCH_SIZE, optimizer=optimizer,
                  scheduler=scheduler, generator=generator,
                  callback=lambda step, value: step >= steps)
    training = {
        "data": f"datasets.digits(classes={'all' if classes is None else '0-4'}, "
                f"split='train'), {len(data)} images",
        "loss": "multi_noise_dsm" + (f" on perturb(x, rate={BACKGROUND_RATE})"
                                     if name.endswith("background") else ""),
        "sigma_min": DIGITS_SIGMA[0], "sigma_max": DIGITS_SIGMA[1],
    }
    architecture = _module_card("DenoiserEnergy", {"denoiser": _module_card(
        "ResidualMLPDenoiser", {"event_shape": [8, 8], **DIGITS_ARCHITECTURE})})
    return net, history, training, architecture, {"sampling": DIGITS_SAMPLING}


def train_classifier(generator: torch.Generator, steps: int) -> tuple:
    images, attributes = faces(N_FACES, return_attributes=True, generator=generator)
    labels = attributes["glasses"].long()
    net = MLPClassifier((16, 16), 2, noise_conditioned=True, **CLASSIFIER_ARCHITECTURE)
    low, high = map(math.log, CLASSIFIER_SIGMA)
    optimizer, scheduler = one_cycle(net.parameters(), steps)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, N_FACES, (BATCH_SIZE,), generator=generator)
        sigma = torch.exp(low + (high - low) * torch.rand(BATCH_SIZE, generator=generator))
        noisy = images[index] + sigma[:, None, None] * torch.randn(BATCH_SIZE, 16, 16,
                                                                   generator=generator)
        loss = torch.nn.functional.cross_entropy(net(noisy, sigma), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    history = History(losses=losses, epochs=0, seconds=time.perf_counter() - start)
    training = {"data": f"datasets.faces({N_FACES}, noise=0.04), attributes random; label = "
                        "glasses; input x + t*eps",
                "loss": "cross_entropy", "sigma_min": CLASSIFIER_SIGMA[0],
                "sigma_max": CLASSIFIER_SIGMA[1]}
    return net, history, training, _module_card("MLPClassifier", net.config()), {}


def evaluate_digits(name: str, net: DenoiserEnergy) -> dict:
    """Denoising PSNR by Tweedie's formula at t = 0.3 on the test split (a quick check)."""
    classes = None if name == "digits" else range(5)
    clean = digits(classes=classes, split="test")
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    model = as_model(net, name=name)
    tweedie = noisy + 0.09 * model.score(noisy, 0.3)
    return {"test_images": len(clean), "noisy_psnr_db": round(float(psnr(noisy, clean).mean()), 3),
            "tweedie_psnr_db_at_sigma_0.3": round(float(psnr(tweedie, clean).mean()), 3)}


def evaluate_classifier(net: MLPClassifier) -> dict:
    """Accuracy on fresh faces (own seed) at a few noise levels."""
    generator = torch.Generator().manual_seed(12345)
    images, attributes = faces(2000, return_attributes=True, generator=generator)
    result = {}
    with torch.no_grad():
        for sigma in (0.01, 0.3, 1.0, 3.0):
            noisy = images + sigma * torch.randn(images.shape, generator=generator)
            correct = net(noisy, sigma).argmax(1) == attributes["glasses"].long()
            result[f"accuracy_at_t_{sigma:g}"] = round(float(correct.float().mean()), 4)
    return result


def train(name: str, seed: int, steps: int | None, out: Path) -> dict:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    if name == "glasses_classifier":
        net, history, training, architecture, extra = train_classifier(
            generator, steps or CLASSIFIER_STEPS)
        kind = "classifier"
    else:
        net, history, training, architecture, extra = train_digits(
            name, generator, steps or DIGITS_STEPS)
        kind = "energy"

    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_weights(net, weights, name)
    net.eval()
    metrics = evaluate_classifier(net) if kind == "classifier" else evaluate_digits(name, net)
    return write_card(out, {
        "name": name,
        "kind": kind,
        "description": MODELS[name],
        "noise_conditioned": True,
        "format": "state_dict",
        "dtype": "float16",
        "architecture": architecture,
        "parameters": sum(p.numel() for p in net.parameters()),
        "training": {**training, "steps": history.steps, "batch_size": BATCH_SIZE,
                     "optimizer": "Adam", "learning_rate": LEARNING_RATE,
                     "schedule": "one-cycle, 5% warmup", "threads": torch.get_num_threads(),
                     "final_loss": round(sum(history.losses[-200:]) / 200, 4)},
        "metrics": metrics,
        **extra,
        **provenance(weights, seed=seed, seconds=history.seconds,
                     script="scripts/train_apps.py"),
    })


def main() -> None:
    parser = training_parser(__doc__, MODELS, WEIGHTS)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or MODELS:
        card = train(name, args.seed + list(MODELS).index(name), args.steps, args.out)
        size = (args.out / f"{name}.safetensors").stat().st_size / 1e6
        print(f"{name}: {card['seconds']} s, {card['parameters']:,} parameters, {size:.2f} MB, "
              f"final loss {card['training']['final_loss']}, metrics {card['metrics']}",
              flush=True)


if __name__ == "__main__":
    main()
