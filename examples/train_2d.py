"""Train 2-D energy models two ways and plot their energy landscapes and samples.

* ``eight_gaussians`` by contrastive divergence: an MLP energy, negatives from
  20 ULA steps started from a replay buffer (95% stored chains, 5% fresh
  uniform noise), energy-magnitude regulariser α = 0.01 (Du & Mordatch 2019).
  CD sharpens slowly: 40 epochs give a ring through the modes, 150 separate them.
* ``moons`` by sliced score matching: the same MLP, no sampling during training.

Afterwards fresh MALA chains started from uniform noise sample each learned
model. The figure shows, per data set, the data, the learned density
exp(−E) on a grid (normalised on the grid for display), and the samples.

Run::

    python examples/train_2d.py --out train_2d.png          # ≈ 2 minutes on one core
    python examples/train_2d.py --out train_2d.png --tiny  # a few seconds (CI)
    torchrun --nproc_per_node=2 examples/train_2d.py --tiny  # data parallel (DDP)

Under ``torchrun`` each rank trains on an equal share of the data with a batch of
128 / P rows (so the averaged gradient is that of a 128-row batch), its loss
wrapped in :class:`~ebmalgebra.distributed.DistributedObjective`, its own replay
buffer and random stream; the MALA chains afterwards are sharded across the ranks;
rank 0 prints and writes the figure.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ebmalgebra.datasets import eight_gaussians, moons  # noqa: E402
from ebmalgebra.distributed import (  # noqa: E402
    DistributedObjective,
    is_leader,
    launched_group,
)
from ebmalgebra.learning import (  # noqa: E402
    MLPEnergy,
    ReplayBuffer,
    as_model,
    contrastive_divergence,
    fit,
    score_matching,
)
from ebmalgebra.samplers import MALA, ULA, sample  # noqa: E402

LIMIT = 4.0
BATCH_SIZE = 128


def this_rank(data: torch.Tensor, generator: torch.Generator):
    """(data, generator) for training: as given in one process; under ``torchrun`` this
    rank's equal share of the rows and a generator of its own, seeded from ``generator``
    (which stays in step on all ranks)."""
    if not dist.is_initialized():
        return data, generator
    rank, world = dist.get_rank(), dist.get_world_size()
    per_rank = data.shape[0] // world
    seed = int(torch.randint(2**62, (), generator=generator))
    return (data[rank * per_rank:(rank + 1) * per_rank],
            torch.Generator().manual_seed(seed + rank))


def objective(model, loss):
    """``loss``, wrapped for DDP (gradients averaged over ranks) under ``torchrun``."""
    return DistributedObjective(model, loss) if dist.is_initialized() else loss


def batch_size() -> int:
    return BATCH_SIZE // (dist.get_world_size() if dist.is_initialized() else 1)


def train_eight_gaussians(epochs: int, generator: torch.Generator):
    data = eight_gaussians(4000, generator=generator)
    model = as_model(MLPEnergy(2, hidden=(128, 128)), name="eight_gaussians")
    data, generator = this_rank(data, generator)
    buffer = ReplayBuffer(5000, 2, low=-LIMIT, high=LIMIT, generator=generator)
    # A small α: the regulariser bounds |E|, and sharp modes need large energy gaps.
    loss = partial(contrastive_divergence, sampler=ULA(step_size=0.01), n_steps=20,
                   buffer=buffer, alpha=0.01)
    # β₁ = 0 as in Du & Mordatch: CD gradients are noisy and momentum lags them.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    history = fit(model, data, objective(model, loss), epochs=epochs, batch_size=batch_size(),
                  optimizer=optimizer, generator=generator)
    return data, model, history


def train_moons(epochs: int, generator: torch.Generator):
    data = moons(4000, generator=generator)
    model = as_model(MLPEnergy(2, hidden=(128, 128)), name="moons")
    loss = partial(score_matching, method="sliced", n_projections=4)
    data, generator = this_rank(data, generator)
    history = fit(model, data, objective(model, loss), epochs=epochs, batch_size=batch_size(),
                  generator=generator)
    return data, model, history


def energy_grid(model, resolution: int = 200):
    axis = torch.linspace(-LIMIT, LIMIT, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        energy = model.energy(grid).reshape(resolution, resolution)
    density = torch.softmax(-energy.flatten(), 0).reshape(resolution, resolution)
    return density


def main() -> None:
    with launched_group():  # a process group under torchrun, else nothing
        run()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="train_2d.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    epochs = {"cd": 2 if args.tiny else 150, "sm": 2 if args.tiny else 40}
    say = print if is_leader() else (lambda *_: None)

    runs = []
    for name, train, n_epochs in (("eight_gaussians (CD + replay buffer)", train_eight_gaussians,
                                   epochs["cd"]),
                                  ("moons (sliced score matching)", train_moons, epochs["sm"])):
        start = time.perf_counter()
        data, model, history = train(n_epochs, generator)
        x0 = 2 * LIMIT * torch.rand(1000, 2, generator=generator) - LIMIT
        samples = sample(model, MALA(step_size=0.01), x0=x0, n_steps=1,
                         warmup=50 if args.tiny else 500, generator=generator)
        seconds = time.perf_counter() - start
        say(f"{name}: {history.steps} steps, final loss {history.smoothed()[-1]:.3f}, "
              f"{seconds:.1f} s including sampling")
        runs.append((name, data, model, samples.gather(dst=None)[-1], history))

    draws = runs[0][3]
    covered = eight_gaussians.nearest_mode(draws).bincount(minlength=8) / len(draws)
    distance = (draws[:, None] - eight_gaussians.centers()[None]).norm(dim=-1).amin(dim=1)
    if not is_leader():
        return
    print("eight_gaussians: share of samples per mode", [round(float(c), 3) for c in covered],
          f"; within 0.5 of a mode centre: {float((distance < 0.5).float().mean()):.1%}")

    figure, axes = plt.subplots(len(runs), 4, figsize=(16, 4 * len(runs)))
    for row, (name, data, model, draws, history) in zip(axes, runs, strict=True):
        extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
        row[0].scatter(*data[:2000].T, s=1, alpha=0.5)
        row[0].set_title(f"data: {name.split()[0]}")
        row[1].imshow(energy_grid(model), origin="lower", extent=extent, cmap="magma")
        row[1].set_title("learned density exp(−E) on the grid")
        row[2].scatter(*draws.T, s=1, alpha=0.5, color="C1")
        row[2].set_title("MALA samples of the learned model")
        for ax in row[:3]:
            ax.set_xlim(-LIMIT, LIMIT)
            ax.set_ylim(-LIMIT, LIMIT)
            ax.set_aspect("equal")
        history.plot(ax=row[3])
        row[3].set_title(name)
    figure.tight_layout()
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
