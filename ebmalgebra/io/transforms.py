"""File form of ``torch.distributions`` transforms, for ``a.pushforward(T)`` nodes.

A transform is stored as a JSON list ``[kind, *arguments]`` (lists and tensors
being what :mod:`ebmalgebra.io` already stores): ``["exp"]``, ``["sigmoid"]``,
``["tanh"]``, ``["softplus"]``, ``["power", exponent]``, ``["affine", loc,
scale, event_dim]``, ``["inverse", part]`` and ``["compose", part, ...]``.
Other transforms cannot be saved; the error names them. Loading checks the
arguments, so that a bad file fails there and not when the model is evaluated:
``loc``, ``scale`` and ``exponent`` are numbers or floating tensors, finite,
``scale`` and ``exponent`` nonzero, and ``event_dim`` a non-negative integer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import transforms as tt

from ebmalgebra.io.registry import SerializationError

__all__ = ["decode", "encode"]

_PLAIN: dict[str, type] = {"exp": tt.ExpTransform, "sigmoid": tt.SigmoidTransform,
                           "tanh": tt.TanhTransform, "softplus": tt.SoftplusTransform}


def encode(transform: tt.Transform, where: object) -> list:
    """``transform`` as a list for the file; ``where`` names the node in errors."""
    for name, cls in _PLAIN.items():
        if type(transform) is cls:
            return [name]
    if isinstance(transform, tt.ComposeTransform):
        return ["compose", *(encode(part, where) for part in transform.parts)]
    if type(transform).__name__ == "_InverseTransform":
        return ["inverse", encode(transform.inv, where)]
    if type(transform) is tt.AffineTransform:
        return ["affine", transform.loc, transform.scale, transform.event_dim]
    if type(transform) is tt.PowerTransform:
        return ["power", transform.exponent]
    raise SerializationError(f"cannot save {where!r}: transform {transform!r} has no file "
                             "form (exp, sigmoid, tanh, softplus, power, affine, their "
                             "inverses and compositions do)")


def decode(value: object) -> tt.Transform:
    """The transform a list written by :func:`encode` describes."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise SerializationError(f"a transform must be a list [kind, ...], got {value!r:.80}")
    kind, arguments = value[0], value[1:]
    builders: dict[str, Callable[..., tt.Transform]] = {
        **{name: cls for name, cls in _PLAIN.items()},
        "compose": lambda *parts: tt.ComposeTransform([decode(p) for p in parts]),
        "inverse": lambda part: decode(part).inv,
        "affine": lambda loc, scale, event_dim: tt.AffineTransform(
            _coefficient("affine", "loc", loc), _coefficient("affine", "scale", scale, True),
            _event_dim(event_dim)),
        "power": lambda exponent: tt.PowerTransform(
            _coefficient("power", "exponent", exponent, True)),
    }
    if kind not in builders:
        raise SerializationError(f"unknown transform kind {kind!r}; known: "
                                 f"{', '.join(sorted(builders))}")
    try:
        return builders[kind](*arguments)
    except TypeError as error:
        raise SerializationError(f"transform {kind!r}: {error}") from None


def _coefficient(kind: str, field: str, value: object, nonzero: bool = False
                 ) -> float | Tensor:
    """``value`` checked as a finite (and, for a scale or exponent, nonzero) number or
    floating tensor: anything else would only fail when the model is evaluated."""
    if isinstance(value, Tensor):
        valid = value.is_floating_point() and bool(torch.isfinite(value).all()) and not (
            nonzero and bool((value == 0).any()))
    else:
        valid = (isinstance(value, int | float) and not isinstance(value, bool)
                 and math.isfinite(value) and not (nonzero and value == 0))
    if not valid:
        wanted = "finite and nonzero" if nonzero else "finite"
        shown = (f"a tensor of dtype {str(value.dtype).removeprefix('torch.')}"
                 if isinstance(value, Tensor) else f"{value!r:.80}")
        raise SerializationError(f"transform {kind!r}: {field} must be a number or a floating "
                                 f"tensor, {wanted}, got {shown}")
    return value


def _event_dim(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SerializationError(f"transform 'affine': event_dim must be a non-negative "
                                 f"integer, got {value!r:.80}")
    return value
