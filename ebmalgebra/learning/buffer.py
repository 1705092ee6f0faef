"""Replay buffer of MCMC chains for contrastive divergence (Du & Mordatch 2019).

The buffer holds ``capacity`` points that persist across training steps.
Each step draws chain starts from it, replacing a fraction
``reinit_fraction`` (5% by default) by fresh noise so new modes keep being
discovered; short-run MCMC moves the starts, and the results are written
back over the entries they came from (a chain whose end point, energy or
score is NaN or ±inf is re-initialised from noise instead). With
``reinit_fraction=0`` and ``capacity`` equal to the batch size every chain
is reused every step: that is persistent contrastive divergence (Tieleman
2008), built by :meth:`ReplayBuffer.persistent`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentError, ArgumentTypeError
from ebmalgebra.leaves import as_event_shape
from ebmalgebra.samplers.base import is_nonfinite

__all__ = ["ReplayBuffer"]

NoiseFn = Callable[[int, "torch.Generator | None"], Tensor]


class ReplayBuffer:
    """A fixed-size store of chain states, initialised from noise.

    Args:
        capacity: number of stored points.
        event_shape: shape of one point.
        low, high: fresh points are uniform on [low, high] per coordinate,
            finite with low < high (ignored when ``noise`` is given).
        noise: optional ``noise(n, generator) -> (n, *event_shape)`` for fresh
            points, e.g. a Gaussian or a data-shaped prior.
        reinit_fraction: probability that a drawn start is replaced by fresh
            noise (Du & Mordatch use 0.05).
        generator: randomness for the initial fill.
        dtype, device: of the stored points; ``dtype`` must be floating point.

    Example:
        >>> buffer = ReplayBuffer(10_000, 2, low=-4.0, high=4.0)
        >>> starts, index = buffer.draw(128)
        >>> buffer.update(index, negatives)   # after running MCMC from ``starts``
    """

    def __init__(
        self,
        capacity: int,
        event_shape: int | Sequence[int],
        *,
        low: float = -1.0,
        high: float = 1.0,
        noise: NoiseFn | None = None,
        reinit_fraction: float = 0.05,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        validation.count("ReplayBuffer: capacity", capacity)
        reinit_fraction = validation.real("ReplayBuffer: reinit_fraction", reinit_fraction)
        if not 0.0 <= reinit_fraction <= 1.0:
            raise ArgumentError(f"ReplayBuffer: reinit_fraction must be in [0, 1], "
                                f"got {reinit_fraction!r}")
        if noise is None:
            low = validation.real("ReplayBuffer: low", low)
            high = validation.real("ReplayBuffer: high", high)
            if not low < high:
                raise ArgumentError(f"ReplayBuffer: need low < high, got low={low}, high={high}")
        elif not callable(noise):
            raise ArgumentTypeError(f"ReplayBuffer: noise must be callable as noise(n, "
                                    f"generator), got {type(noise).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ArgumentTypeError(f"ReplayBuffer: dtype must be a floating-point "
                                    f"torch.dtype, got {dtype!r}")
        self.event_shape = as_event_shape(event_shape)
        self.reinit_fraction = reinit_fraction
        self._low, self._high, self._noise = float(low), float(high), noise
        self._dtype, self._device = dtype, torch.device(device) if device is not None else None
        self.samples = self.noise(capacity, generator)

    @classmethod
    def persistent(cls, x0: Tensor) -> ReplayBuffer:
        """Persistent chains started at ``x0`` ``(n_chains, *event_shape)``, never re-initialised.

        Draw exactly ``n_chains`` points per step to advance every chain once.
        ``x0`` must be floating point and finite. Only a chain that can no
        longer move (see :meth:`update`) restarts, from uniform noise on [−1, 1].
        """
        if not isinstance(x0, Tensor) or x0.dim() < 1 or x0.shape[0] == 0:
            raise ArgumentError("ReplayBuffer.persistent: x0 must be a non-empty tensor "
                                "(n_chains, *event_shape)")
        if not x0.is_floating_point():
            raise ArgumentTypeError(f"ReplayBuffer.persistent: x0 must be floating point, got "
                                    f"{x0.dtype}; convert it with .float()")
        if not torch.isfinite(x0).all():
            raise ArgumentError("ReplayBuffer.persistent: x0 must be finite; chain(s) "
                                f"{_nonfinite_rows(x0).nonzero().flatten().tolist()[:4]} "
                                "contain NaN or inf")
        buffer = cls.__new__(cls)
        buffer.event_shape = x0.shape[1:]
        buffer.reinit_fraction = 0.0
        buffer._low, buffer._high, buffer._noise = -1.0, 1.0, None
        buffer._dtype, buffer._device = x0.dtype, x0.device
        buffer.samples = x0.detach().clone()
        return buffer

    @property
    def capacity(self) -> int:
        return self.samples.shape[0]

    def __len__(self) -> int:
        return self.capacity

    def __repr__(self) -> str:
        return (f"ReplayBuffer(capacity={self.capacity}, event_shape={tuple(self.event_shape)}, "
                f"reinit_fraction={self.reinit_fraction})")

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh points ``(n, *event_shape)``."""
        if self._noise is not None:
            fresh = self._noise(n, generator)
            if not isinstance(fresh, Tensor) or tuple(fresh.shape) != (n, *self.event_shape):
                got = tuple(fresh.shape) if isinstance(fresh, Tensor) else type(fresh).__name__
                raise ArgumentError(f"ReplayBuffer: noise(n, generator) must return shape "
                                    f"{(n, *self.event_shape)}, got {got}")
            return fresh.to(dtype=self._dtype, device=self._device).detach()
        u = torch.rand((n, *self.event_shape), generator=generator, dtype=self._dtype)
        return (self._low + (self._high - self._low) * u).to(self._device)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` chain starts and the buffer indices they replace.

        Indices are distinct (drawn without replacement), so ``n`` must not
        exceed the capacity; each start is fresh noise with probability
        ``reinit_fraction`` and a stored point otherwise.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= self.capacity:
            raise ArgumentError(f"ReplayBuffer.draw: n must be an int in [1, {self.capacity}] "
                                f"(the capacity), got {n!r}")
        index = torch.randperm(self.capacity, generator=generator)[:n].to(self.samples.device)
        starts = self.samples[index].clone()
        if self.reinit_fraction > 0:
            fresh = torch.rand(n, generator=generator) < self.reinit_fraction
            if fresh.any():
                fresh = fresh.to(starts.device)
                starts[fresh] = self.noise(int(fresh.sum()), generator)
        return starts, index

    def update(
        self,
        index: Tensor,
        x: Tensor,
        *,
        energy: Tensor | None = None,
        score: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Write chain states ``x`` ``(len(index), *event_shape)`` back at ``index``.

        Rows no chain can continue from are replaced by fresh noise (drawn
        with ``generator``) rather than stored: those with a non-finite
        coordinate and, when given, those whose ``energy`` ``(len(index),)``
        or ``score`` (shaped like ``x``) is NaN or ±inf. Pass the values the
        sampler or the loss already computed at ``x``: the check costs no
        model evaluation.
        """
        x = x.detach()
        shape = (len(index), *self.event_shape)
        for value, what, expected in ((x, "x", shape), (energy, "energy", shape[:1]),
                                      (score, "score", shape)):
            if value is not None and tuple(value.shape) != expected:
                raise ArgumentError(f"ReplayBuffer.update: {what} must be shaped {expected}, "
                                    f"got {tuple(value.shape)}")
        bad = _nonfinite_rows(x)
        if energy is not None or score is not None:
            bad = bad | is_nonfinite(None if energy is None else energy.detach(),
                                     None if score is None else score.detach()).to(bad.device)
        if bad.any():
            x = x.clone()
            x[bad] = self.noise(int(bad.sum()), generator).to(x)
        self.samples[index] = x.to(self.samples)


def _nonfinite_rows(x: Tensor) -> Tensor:
    """``(n,)`` mask of the rows of ``x`` ``(n, *event_shape)`` with a NaN or ±inf."""
    return ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
