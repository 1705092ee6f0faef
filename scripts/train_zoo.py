"""Train the faces zoo models ``face``, ``glasses``, ``hat`` and ``smile`` reproducibly from a seed.

Each model is a noise-conditioned energy (FINDINGS, "Faces composition")

    E(x, σ) = ‖x − D(x, σ)‖² / (2σ²),

with D a residual-MLP denoiser conditioned on log σ
(:class:`~ebmalgebra.learning.nets.DenoiserEnergy` around
:class:`~ebmalgebra.learning.nets.ResidualMLPDenoiser`), trained by
multi-noise denoising score matching (σ log-uniform in [0.01, 12], weight
λ(σ) = σ²) on ``faces(n, <attribute>=True)`` with the other attributes
random. Adam with a one-cycle learning-rate schedule; the weights of this
phase are an exponential moving average (decay 0.999) of the iterates.

An optional second phase makes a model proper at small σ (``--proper glasses
hat``, the models of ``normalize(glasses) | normalize(hat)``; docs/composition.md,
"Training the face models to be proper"; the shipped weights are the first
phase's): ``--proper-steps`` more Adam steps (learning rate cosine-decayed to 0,
no averaging) on the DSM loss plus
:func:`~ebmalgebra.learning.off_data_margin`, a hinge that lifts the energy of
off-data images (uniform in the training faces' enclosing ball, noised faces,
blends of two faces) at σ ∈ [0.01, 0.5] above that of noised faces by the gap
the noised data density implies, capped at 1500 nats. Without it the networks
give random images energies only 170–470 nats above faces at σ = 0.01, and exp(−E)
has most of its mass off the faces. It starts from the stored (int8-rounded)
weights of the first phase, whose SHA-256 the card records as
``training.proper.from_sha256``.

Writes, for each model, into ``ebmalgebra/zoo/weights/``:

* ``<name>.safetensors``: the network's state dict (plain safetensors,
  loadable with ``safetensors.torch.load_file``), weight matrices as int8
  with float16 row scales, everything else in float16
  (:func:`ebmalgebra.zoo.state_dict.quantize_int8`; 1.8 MB a model);
* ``<name>.json``: the model card: architecture (registered module types and
  their constructor arguments, rebuilt by :mod:`ebmalgebra.zoo` without
  running code), data, training settings, seed, training time, sampling
  settings for :func:`ebmalgebra.zoo.draw`, the attribute rates and realism
  of 256 samples drawn after training, and the SHA-256 of the safetensors file.

The 2-D zoo models (``ring``, ``bar``, ``left``, ``right``) are trained by
``scripts/train_zoo_2d.py``.

Usage::

    python scripts/train_zoo.py                          # all four, ≈ 8 min each on one free core
    python scripts/train_zoo.py --only glasses hat --seed 1 --out /tmp/zoo
    python scripts/train_zoo.py --only glasses hat --proper glasses hat --out /tmp/zoo
    python scripts/train_zoo.py --only glasses --steps 200 --proper glasses --proper-steps 50 \
        --out /tmp/zoo                                   # smoke test of both phases

Training uses one thread by default (``--threads``), which makes a run
bit-reproducible on the same machine and torch version.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from pathlib import Path

import torch
from _cards import data_scale, provenance, save_weights, training_parser, write_card

from ebmalgebra.datasets import faces
from ebmalgebra.envelope import enclosing_ball
from ebmalgebra.learning import (
    DenoiserEnergy,
    ResidualMLPDenoiser,
    as_model,
    fit,
    multi_noise_dsm,
    off_data_margin,
)

WEIGHTS = Path(__file__).resolve().parent.parent / "ebmalgebra" / "zoo" / "weights"

MODELS: dict[str, tuple[str, dict[str, bool]]] = {
    "face": ("procedural 16x16 faces, every attribute random", {}),
    "glasses": ("faces with glasses (hat and smile random)", {"glasses": True}),
    "hat": ("faces with a hat (glasses and smile random)", {"hat": True}),
    "smile": ("smiling faces (glasses and hat random)", {"smile": True}),
}

ARCHITECTURE = {"width": 384, "depth": 4, "embedding_dim": 128, "sigma_data": 0.5}
N_FACES = 64_000
STEPS = 12_000
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
WARMUP_FRACTION = 0.05
EMA_DECAY = 0.999
SIGMA_MIN, SIGMA_MAX = 0.01, 12.0
SAMPLING = {"sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "n_levels": 60,
            "steps_per_level": 20, "step_size": 1e-5, "mala_below": 0.5, "init_mean": 0.0}
"""Annealed Langevin settings recorded in the card (see ebmalgebra.zoo.SamplingPlan)."""
N_EVALUATION = 256
DATA_NOISE = 0.04
"""The pixel noise of ``datasets.faces`` (its default), σ₀ of the off-data margin."""
PROPER_STEPS = 2000
PROPER_LEARNING_RATE = 2e-4
PROPER_MARGIN = {"cap": 1500.0, "sigma_min": SIGMA_MIN, "sigma_max": 0.5,
                 "data_noise": DATA_NOISE}
"""Settings of :func:`~ebmalgebra.learning.off_data_margin` in the proper phase."""
BALL_MARGIN = 0.25
"""Added to the training faces' largest distance from their mean: the ball's radius."""


def build_network() -> DenoiserEnergy:
    return DenoiserEnergy(ResidualMLPDenoiser((16, 16), **ARCHITECTURE))


def architecture_card() -> dict:
    return {"$module": "DenoiserEnergy",
            "config": {"denoiser": {"$module": "ResidualMLPDenoiser",
                                    "config": {"event_shape": [16, 16], **ARCHITECTURE}}}}


QUANTIZATION = ("tensors of >= 2 dims: int8 codes with one float16 scale per output row, "
                "scale = max|w| / 127 of the float16-rounded weights; others float16")


def train(name: str, seed: int, steps: int, out: Path, evaluate: bool,
          proper_steps: int = 0) -> dict:
    """Train one model, write its weights and card to ``out``; returns the card.

    ``proper_steps`` > 0 adds the proper phase (module docstring) after the first.
    """
    description, attributes = MODELS[name]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    data = faces(N_FACES, **attributes, generator=generator)
    net = build_network()
    model = as_model(net, name=name)
    average = torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(EMA_DECAY))
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps,
                                                    pct_start=WARMUP_FRACTION)
    loss = functools.partial(multi_noise_dsm, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    steps_per_epoch = math.ceil(N_FACES / BATCH_SIZE)

    def after_step(step: int, value: float) -> bool:
        average.update_parameters(net)
        return step >= steps

    cpu_start = time.process_time()
    history = fit(model, data, loss, epochs=math.ceil(steps / steps_per_epoch),
                  batch_size=BATCH_SIZE, optimizer=optimizer, scheduler=scheduler,
                  generator=generator, callback=after_step)
    net.load_state_dict(average.module.state_dict())

    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_weights(net, weights, name, int8=True)
    proper = (proper_phase(model, data, proper_steps, generator, weights)
              if proper_steps > 0 else None)
    if proper is not None:
        save_weights(net, weights, name, int8=True)
    cpu_seconds = time.process_time() - cpu_start

    card = {
        "name": name,
        "description": description,
        "event_shape": [16, 16],
        "noise_conditioned": True,
        "format": "state_dict",
        "dtype": "int8",
        "quantization": QUANTIZATION,
        "architecture": architecture_card(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "training": {
            "data": f"datasets.faces({N_FACES}, {_call_args(attributes)}noise=0.04)",
            "n_faces": N_FACES,
            "loss": "multi_noise_dsm", "weighting": "sigma^2",
            "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
            "steps": history.steps, "batch_size": BATCH_SIZE, "optimizer": "Adam",
            "learning_rate": LEARNING_RATE, "schedule": f"one-cycle, {WARMUP_FRACTION:.0%} warmup",
            "ema_decay": EMA_DECAY, "threads": torch.get_num_threads(),
            "final_loss": round(sum(history.losses[-200:]) / min(200, history.steps), 4),
            **({"proper": proper} if proper is not None else {}),
        },
        "sampling": SAMPLING,
        "data_scale": data_scale(data),
        **provenance(weights, seed=seed, cpu_seconds=cpu_seconds,
                     seconds=history.seconds + (proper["seconds"] if proper else 0.0),
                     script="scripts/train_zoo.py"),
    }
    if evaluate:
        card["evaluation"] = evaluation(model, seed)
    return write_card(out, card)


def proper_phase(model, data: torch.Tensor, steps: int, generator: torch.Generator,
                 weights: Path) -> dict:
    """Fine-tune ``model`` on DSM + the off-data margin; the card's ``training.proper``.

    ``weights`` holds the first phase's stored weights (already loaded into the
    model), whose digest the record keeps.
    """
    center, radius = enclosing_ball(data, margin=BALL_MARGIN)
    margin = functools.partial(off_data_margin, center=center, radius=radius, **PROPER_MARGIN)

    def loss(model, batch, generator=None):
        return (multi_noise_dsm(model, batch, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                generator=generator)
                + margin(model, batch, generator=generator))

    optimizer = torch.optim.Adam(model.parameters(), lr=PROPER_LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    from_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    history = fit(model, data, loss, epochs=math.ceil(steps / math.ceil(len(data) / BATCH_SIZE)),
                  batch_size=BATCH_SIZE, optimizer=optimizer, scheduler=scheduler,
                  generator=generator, callback=lambda step, value: step >= steps)
    return {"loss": "multi_noise_dsm + off_data_margin", "steps": history.steps,
            "learning_rate": PROPER_LEARNING_RATE, "schedule": "cosine to 0",
            "ball": f"enclosing_ball(training faces, margin={BALL_MARGIN}), "
                    f"R = {radius:.3f}",
            **PROPER_MARGIN,
            "final_loss": round(sum(history.losses[-200:]) / min(200, history.steps), 4),
            "seconds": round(history.seconds, 1), "from_sha256": from_sha256}


def evaluation(model, seed: int) -> dict:
    """Attribute rates and realism of samples from the card's annealed-Langevin settings."""
    from ebmalgebra.samplers import AnnealedLangevin, sample

    levels = torch.logspace(math.log10(SAMPLING["sigma_max"]), math.log10(SAMPLING["sigma_min"]),
                            SAMPLING["n_levels"]).tolist()
    sampler = AnnealedLangevin(noise_levels=levels, steps_per_level=SAMPLING["steps_per_level"],
                               step_size=SAMPLING["step_size"], mala=SAMPLING["mala_below"])
    generator = torch.Generator().manual_seed(seed + 1)
    x0 = SAMPLING["sigma_max"] * torch.randn(N_EVALUATION, 16, 16, generator=generator)
    start = time.perf_counter()
    draws = sample(model, sampler, x0=x0, n_steps=1, warmup=sampler.n_annealing_steps - 1,
                   generator=generator, progress=False).draws[-1]
    seconds = time.perf_counter() - start
    found = faces.attributes(draws)
    return {
        "n_samples": N_EVALUATION,
        "sampling_seconds": round(seconds, 1),
        **{name: round(float(flags.float().mean()), 4) for name, flags in found.items()},
        "realistic": round(float(faces.is_realistic(draws).float().mean()), 4),
        "median_realism": round(float(faces.realism(draws).median()), 4),
    }


def _call_args(attributes: dict[str, bool]) -> str:
    return "".join(f"{key}={value}, " for key, value in attributes.items())


def main() -> None:
    parser = training_parser(__doc__, MODELS, WEIGHTS)
    parser.add_argument("--steps", type=int, default=STEPS, help="Adam steps per model")
    parser.add_argument("--proper", nargs="*", choices=sorted(MODELS), default=[],
                        help="models that get the proper phase after the first (default: none)")
    parser.add_argument("--proper-steps", type=int, default=PROPER_STEPS,
                        help="Adam steps of the proper phase")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip sampling 256 faces after training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or MODELS:
        # Each model has its own seed, the same whether trained alone or with the others.
        card = train(name, args.seed + list(MODELS).index(name), args.steps, args.out,
                     args.evaluate, args.proper_steps if name in args.proper else 0)
        size = (args.out / f"{name}.safetensors").stat().st_size / 1e6
        print(f"{name}: {card['seconds']} s ({card['cpu_seconds']} s CPU), "
              f"{card['parameters']:,} parameters, {size:.1f} MB, "
              f"final loss {card['training']['final_loss']}, "
              f"evaluation {card.get('evaluation', 'skipped')}", flush=True)


if __name__ == "__main__":
    main()
