"""File form of supports (``torch.distributions.constraints``) of function leaves.

A support is stored as a JSON list ``[kind, *arguments]``: ``["real"]``,
``["positive"]``, ``["nonnegative"]``, ``["unit_interval"]``,
``["interval", lower, upper]``, ``["greater_than", lower]``,
``["greater_than_eq", lower]``, ``["less_than", upper]`` and
``["independent", base, reinterpreted_batch_ndims]``. A bound is a number, or a
tensor (per-coordinate bounds, as a ``Uniform``'s). Other constraints cannot be
saved; the error names them.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import constraints as c

from ebmalgebra.io.registry import SerializationError

__all__ = ["decode", "encode"]

_PLAIN = {"real": c.real, "positive": c.positive, "nonnegative": c.nonnegative,
          "unit_interval": c.unit_interval}
_BOUNDED = {"interval": (c.interval, ("lower_bound", "upper_bound")),
            "greater_than": (c.greater_than, ("lower_bound",)),
            "greater_than_eq": (c.greater_than_eq, ("lower_bound",)),
            "less_than": (c.less_than, ("upper_bound",))}


def encode(support: c.Constraint, where: object) -> list:
    """``support`` as a list for the file; ``where`` names the leaf in errors."""
    for name, constraint in _PLAIN.items():
        if support is constraint:
            return [name]
    for name, (cls, fields) in _BOUNDED.items():
        if type(support) is cls:
            return [name, *(_bound(getattr(support, field)) for field in fields)]
    if isinstance(support, c.independent):
        return ["independent", encode(support.base_constraint, where),
                support.reinterpreted_batch_ndims]
    raise SerializationError(f"cannot save {where!r}: its support {support!r} has no file form "
                             f"({', '.join([*_PLAIN, *_BOUNDED, 'independent'])} do)")


def decode(value: object) -> c.Constraint:
    """The constraint a list written by :func:`encode` describes."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise SerializationError(f"a support must be a list [kind, ...], got {value!r:.80}")
    kind, arguments = value[0], value[1:]
    if kind in _PLAIN and not arguments:
        return _PLAIN[kind]
    if kind in _BOUNDED and len(arguments) == len(_BOUNDED[kind][1]):
        for argument in arguments:
            if not ((isinstance(argument, int | float) and not isinstance(argument, bool))
                    or (isinstance(argument, Tensor) and argument.is_floating_point())):
                raise SerializationError(f"support {kind!r}: a bound must be a number or a "
                                         f"floating tensor, got {argument!r:.80}")
        return _BOUNDED[kind][0](*arguments)
    if kind == "independent" and len(arguments) == 2:
        return c.independent(decode(arguments[0]), arguments[1])
    raise SerializationError(f"unknown support {value!r:.80}; known kinds: "
                             f"{', '.join([*_PLAIN, *_BOUNDED, 'independent'])}")


def _bound(value: object) -> float | Tensor:
    """A bound for the file: a number, or the tensor itself when it has one per coordinate."""
    return value if isinstance(value, Tensor) and value.dim() > 0 else float(value)
