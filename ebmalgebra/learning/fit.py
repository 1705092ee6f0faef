"""``fit``: a small, reproducible training loop for any loss of ``(model, batch)``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, ArgumentTypeError
from ebmalgebra.learning._checks import check_batch, check_model
from ebmalgebra.progress import progress_bar
from ebmalgebra.threads import use_threads

__all__ = ["History", "fit"]

Loss = Callable[..., Tensor]
"""``loss(model, batch, *, generator) -> 0-d tensor``; fix other options with functools.partial."""


@dataclass
class History:
    """What :func:`fit` did: the loss of every optimiser step, and timing.

    Attributes:
        losses: loss value per step, in order.
        epochs: completed epochs.
        seconds: wall-clock time of the loop.
        stopped_early: a callback asked to stop.
    """

    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def steps(self) -> int:
        return len(self.losses)

    def smoothed(self, window: int = 50) -> list[float]:
        """Moving average of the loss over the last ``window`` steps (fewer at the start)."""
        validation.count("History.smoothed: window", window)
        out, total = [], 0.0
        for i, value in enumerate(self.losses):
            total += value
            if i >= window:
                total -= self.losses[i - window]
            out.append(total / min(i + 1, window))
        return out

    def plot(self, path: str | Path | None = None, *, ax=None, window: int = 50):
        """Plot the loss per step (raw and smoothed); save to ``path`` if given.

        Returns the matplotlib Axes.
        """
        validation.count("History.plot: window", window)
        from ebmalgebra.plotting import new_axes, save_figure

        if ax is None:
            ax = new_axes(path, figsize=(6, 3.5))
        ax.plot(self.losses, lw=0.5, alpha=0.4, label="loss")
        ax.plot(self.smoothed(window), lw=1.5, label=f"moving average ({window})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        if path is not None:
            save_figure(ax.figure, path, tight=True)
        return ax


def fit(
    model: EnergyModel,
    data: Tensor,
    loss: Loss,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    plot: str | Path | None = None,
) -> History:
    """Minimise ``loss`` over mini-batches of ``data``; returns the :class:`History`.

    Each epoch visits ``data`` once in a random order (from ``generator``) in
    batches of ``batch_size`` (the last one may be smaller). Each step calls
    ``loss(model, batch, generator=generator)``, back-propagates and steps the
    optimiser. With the same generator seed, data and initial parameters,
    the run is reproducible.

    Args:
        model: the expression to train (its parameters are optimised).
        data: ``(n, *event_shape)``, finite; checked once up front.
        loss: e.g. ``functools.partial(score_matching, method="sliced")``.
        epochs, batch_size: passes over the data and batch size.
        optimizer: defaults to ``torch.optim.Adam(model.parameters(), lr=1e-3)``.
        scheduler: a learning-rate scheduler stepped after every step; it must
            have been built on ``optimizer`` (so pass both).
        max_grad_norm: clip the global gradient norm to this positive value
            (``None``: no clipping; ``math.inf``: compute the norm, never clip).
        generator: a ``torch.Generator`` for shuffling and for the loss.
        progress: tqdm bar; ``None`` shows it only when stderr is a terminal.
        callback: ``callback(step, loss)`` after every step (steps count
            from 1); returning ``True`` stops training.
        plot: save the loss curve to this file at the end.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the message gives
            the step, counted from 1 as for ``callback``).

    Example:
        >>> history = fit(model, x, partial(score_matching, method="exact"), epochs=20)
        >>> history.losses[-1]
    """
    check_model(model, "fit")
    data = check_batch(model, data, "fit")
    validation.count("fit: epochs", epochs)
    validation.count("fit: batch_size", batch_size)
    if not callable(loss):
        raise ArgumentTypeError(f"fit: loss must be callable as loss(model, batch, generator=...), "
                                f"got {type(loss).__name__}")
    if callback is not None and not callable(callback):
        raise ArgumentTypeError(f"fit: callback must be callable as callback(step, loss) or None, "
                                f"got {type(callback).__name__}")
    if max_grad_norm is not None and max_grad_norm != math.inf:  # inf: measure, never clip
        max_grad_norm = validation.positive("fit: max_grad_norm", max_grad_norm)
    validation.generator("fit: generator", generator)
    if plot is not None:  # before training, not after it
        from ebmalgebra.plotting import check_picture_path

        plot = check_picture_path(plot, "fit: plot")
    _check_scheduler(scheduler, optimizer)
    if optimizer is None:
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ArgumentError(f"fit: {model!r} has no trainable parameters")
        optimizer = torch.optim.Adam(parameters, lr=1e-3)

    n = data.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    history = History()
    bar = progress_bar(epochs * steps_per_epoch, progress, "fit")
    start = time.perf_counter()
    restore_threads = use_threads(min(batch_size, n) * data[0].numel())
    finished = False
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(data.device)
            for begin in range(0, n, batch_size):
                batch = data[order[begin:begin + batch_size]]
                value = loss(model, batch, generator=generator)
                if not isinstance(value, Tensor) or value.numel() != 1:
                    what = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                    raise ArgumentTypeError(f"fit: the loss must return a 0-d tensor, got {what}")
                if not torch.isfinite(value.detach()):
                    raise FloatingPointError(
                        f"fit: the loss is {float(value.detach())} at step "
                        f"{history.steps + 1} (epoch {epoch + 1}); lower the learning rate, "
                        "set max_grad_norm, or check the model's output scale"
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for group in optimizer.param_groups for p in group["params"]],
                        max_grad_norm,
                    )
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                history.losses.append(float(value.detach()))
                if bar is not None:
                    bar.update()
                    if history.steps % 10 == 0:
                        bar.set_postfix(loss=f"{history.smoothed(10)[-1]:.4g}")
                if callback is not None and callback(history.steps, history.losses[-1]):
                    history.stopped_early = True
                    history.epochs = epoch + (begin + batch_size >= n)  # completed ones
                    finished = True
                    return history
            history.epochs = epoch + 1
        finished = True
    finally:
        restore_threads()
        history.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if plot is not None and history.losses:
            try:
                history.plot(plot)
            except Exception:
                if finished:  # else the error that stopped training is the one to see
                    raise
    return history


def _check_scheduler(scheduler: object, optimizer: torch.optim.Optimizer | None) -> None:
    """A scheduler must step the learning rate of the optimiser ``fit`` steps."""
    if scheduler is None:
        return
    if optimizer is None:
        raise ArgumentError("fit: scheduler needs the optimizer it was built on; pass both, e.g. "
                            "opt = torch.optim.Adam(model.parameters()); "
                            "fit(..., optimizer=opt, scheduler=StepLR(opt, 100))")
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ArgumentError("fit: scheduler was built on a different optimizer than optimizer=, "
                            "so it would not change the learning rate fit uses")
