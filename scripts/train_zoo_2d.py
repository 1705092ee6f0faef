"""Train the 2-D zoo models ``ring``, ``bar``, ``left`` and ``right``, reproducibly from a seed.

Each is a noise-conditioned MLP energy E(x, σ) (:class:`~ebmalgebra.learning.nets.MLPEnergy`,
hidden widths 64-64-64, ≈27k parameters) trained by multi-noise denoising
score matching (σ log-uniform in [0.03, 4]) on 20,000 points for 40 epochs
(3,160 Adam steps, learning rate 2·10⁻³ with cosine decay, batch 256). About
9 s per model on one CPU thread.

Writes ``ebmalgebra/zoo/weights/<name>.safetensors`` (``ebmalgebra.save`` of the
named leaf) and ``<name>.json`` (card: data, architecture, training settings,
seed, time, sampling settings and the SHA-256 of the weights).

    python scripts/train_zoo_2d.py                 # all four
    python scripts/train_zoo_2d.py --only ring --seed 1 --out /tmp/zoo
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from _cards import data_scale, provenance, training_parser, write_card

import ebmalgebra
from ebmalgebra.datasets import bar, rings
from ebmalgebra.learning.fit import fit
from ebmalgebra.learning.nets import MLPEnergy, as_model
from ebmalgebra.learning.score_matching import multi_noise_dsm

WEIGHTS = Path(__file__).resolve().parent.parent / "ebmalgebra" / "zoo" / "weights"

N_POINTS = 20_000
EPOCHS = 40
BATCH_SIZE = 256
LEARNING_RATE = 2e-3
SIGMA_MIN, SIGMA_MAX = 0.03, 4.0
HIDDEN = (64, 64, 64)
SAMPLING = {"sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "n_levels": 40,
            "steps_per_level": 10, "step_size": 5e-4, "mala_below": 0.3, "init_mean": 0.0}


def _blob(center: float) -> Callable[..., torch.Tensor]:
    def draw(n: int, *, generator: torch.Generator) -> torch.Tensor:
        scale = torch.tensor([1.0, 1.5])
        return torch.tensor([center, 0.0]) + scale * torch.randn(n, 2, generator=generator)

    return draw


DATA: dict[str, tuple[str, str, Callable[..., torch.Tensor]]] = {
    "ring": ("a noisy circle of radius 2",
             "datasets.rings(radii=(2.0,), noise=0.1)",
             lambda n, generator: rings(n, radii=(2.0,), noise=0.1, generator=generator)),
    "bar": ("a thin horizontal bar, |x1| <= 3",
            "datasets.bar(half_length=3.0, std=0.15)",
            lambda n, generator: bar(n, half_length=3.0, std=0.15, generator=generator)),
    "left": ("a broad blob left of the origin", "N((-2, 0), diag(1, 1.5)^2)", _blob(-2.0)),
    "right": ("a broad blob right of the origin", "N((2, 0), diag(1, 1.5)^2)", _blob(2.0)),
}


def train(name: str, seed: int, out: Path) -> dict:
    """Train one model and write its weights and card to ``out``; returns the card."""
    description, source, data_fn = DATA[name]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    data = data_fn(N_POINTS, generator=generator)
    net = MLPEnergy(2, hidden=HIDDEN, noise_conditioned=True)
    model = as_model(net, name=name)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps = EPOCHS * -(-N_POINTS // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss = functools.partial(multi_noise_dsm, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    history = fit(model, data, loss, epochs=EPOCHS, batch_size=BATCH_SIZE,
                  optimizer=optimizer, scheduler=scheduler, generator=generator)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    ebmalgebra.save(model, weights)
    return write_card(out, {
        "name": name,
        "description": description,
        "event_shape": [2],
        "noise_conditioned": True,
        "format": "ebmalgebra.save",
        "architecture": {"$module": "MLPEnergy",
                         "config": {"event_shape": [2], "hidden": list(HIDDEN),
                                    "activation": "silu", "noise_conditioned": True}},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {"data": source, "n_points": N_POINTS,
                     "loss": "multi_noise_dsm", "sigma_min": SIGMA_MIN,
                     "sigma_max": SIGMA_MAX, "epochs": EPOCHS, "batch_size": BATCH_SIZE,
                     "steps": history.steps, "optimizer": "Adam",
                     "learning_rate": LEARNING_RATE, "schedule": "cosine",
                     "final_loss": round(sum(history.losses[-100:]) / 100, 5)},
        "sampling": SAMPLING,
        "data_scale": data_scale(data),
        **provenance(weights, seed=seed, seconds=history.seconds,
                     script="scripts/train_zoo_2d.py"),
    })


def main() -> None:
    args = training_parser(__doc__, DATA, WEIGHTS).parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or DATA:
        card = train(name, args.seed, args.out)
        print(f"{name}: {card['seconds']} s, final loss {card['training']['final_loss']}, "
              f"sha256 {card['sha256'][:12]}")


if __name__ == "__main__":
    main()
