"""File form of ``torch.distributions`` transforms, for ``a.pushforward(T)`` nodes.

A transform is stored as a JSON list ``[kind, *arguments]`` (lists and tensors
being what :mod:`ebmalgebra.io` already stores): ``["exp"]``, ``["sigmoid"]``,
``["tanh"]``, ``["softplus"]``, ``["power", exponent]``, ``["affine", loc,
scale, event_dim]``, ``["inverse", part]`` and ``["compose", part, ...]``.
Other transforms cannot be saved; the error names them.
"""

from __future__ import annotations

from collections.abc import Callable

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
        "affine": lambda loc, scale, event_dim: tt.AffineTransform(loc, scale, event_dim),
        "power": lambda exponent: tt.PowerTransform(exponent),
    }
    if kind not in builders:
        raise SerializationError(f"unknown transform kind {kind!r}; known: "
                                 f"{', '.join(sorted(builders))}")
    try:
        return builders[kind](*arguments)
    except TypeError as error:
        raise SerializationError(f"transform {kind!r}: {error}") from None
