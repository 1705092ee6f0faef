"""Input validation shared by the losses and ``fit``: clear errors before any math runs."""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError


def check_model(model: object, operation: str, *capabilities: str) -> EnergyModel:
    """``model`` if it is an EnergyModel with ``capabilities``, else a clear error.

    A missing capability raises :class:`~ebmalgebra.CapabilityError` naming
    the smallest sub-expression that lacks it.
    """
    if not isinstance(model, EnergyModel):
        hint = ""
        if isinstance(model, torch.nn.Module):
            hint = ("; wrap the network first, e.g. ebmalgebra.learning.as_model(net, "
                    "name=...) or ebmalgebra.from_energy(net, event_shape, name=...)")
        raise ArgumentTypeError(f"{operation}: model must be an EnergyModel, got "
                                f"{type(model).__name__}{hint}")
    for capability in capabilities:
        model.require(capability, operation)
    return model


def check_batch(model: EnergyModel, batch: object, operation: str) -> Tensor:
    """``batch`` as ``(n, *event_shape)`` floating-point, finite, non-empty; else an error.

    Wrong shapes raise :class:`~ebmalgebra.CompositionError`; non-floating
    or non-tensor input raises ``TypeError``; NaN or ±inf raises ``ValueError``
    with the count of bad entries.
    """
    validation.instance(f"{operation}: data", batch, Tensor, "a torch.Tensor")
    if not batch.is_floating_point():
        raise ArgumentTypeError(f"{operation}: data must be floating point, got {batch.dtype}; "
                                "convert it with .float()")
    event_shape = model.event_shape
    if event_shape is not None:
        expected = (len(event_shape) + 1, tuple(event_shape))
        if batch.dim() != expected[0] or tuple(batch.shape[1:]) != expected[1]:
            raise CompositionError(
                f"{operation}: {model!r} has event_shape {tuple(event_shape)}, so data must be "
                f"shaped (n, {', '.join(map(str, event_shape))}); got {tuple(batch.shape)}"
            )
    elif batch.dim() < 2:
        raise CompositionError(f"{operation}: data must be shaped (n, *event_shape), got "
                               f"{tuple(batch.shape)}")
    if batch.shape[0] == 0:
        raise ArgumentError(f"{operation}: data is empty (shape {tuple(batch.shape)})")
    finite = torch.isfinite(batch)
    if not finite.all():
        bad = int((~finite).sum())
        first = int((~finite).flatten(1).any(1).nonzero()[0])
        raise ArgumentError(f"{operation}: data contains {bad} non-finite value(s) (NaN or inf), "
                            f"the first in sample {first}; clean or drop them before training")
    return batch
