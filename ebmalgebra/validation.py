"""Argument checks shared by every public constructor and entry point.

Each checker takes the argument's ``name`` first, then its ``value``, returns
the value (converted where it says so) and otherwise raises one message form::

    <name> must be <constraint>, got <value>

``name`` is what the user typed, prefixed by the operation or sub-expression it
belongs to when that helps: ``"step_size"``, ``"SMC: n_steps"``,
``"gaussian: scale"``. A wrong value raises :class:`~ebmalgebra.errors.ArgumentError`
(a ``ValueError``), a wrong type :class:`~ebmalgebra.errors.ArgumentTypeError`
(a ``TypeError``); both are :class:`~ebmalgebra.errors.EBMAlgebraError`.

Example:
    >>> positive("step_size", -1)
    Traceback (most recent call last):
    ...
    ebmalgebra.errors.ArgumentError: step_size must be positive, got -1
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable

import torch
from torch import Tensor

from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError

__all__ = [
    "at_least",
    "count",
    "decreasing",
    "fail",
    "finite_entries",
    "flag",
    "floating_tensor",
    "generator",
    "in_interval",
    "instance",
    "non_negative",
    "non_negative_entries",
    "nonzero_entries",
    "one_of",
    "positive",
    "positive_entries",
    "real",
    "same_event_shape",
]


def fail(name: str, constraint: str, value: object) -> ArgumentError:
    """The error for ``value`` of ``name`` breaking ``constraint``, in the one message form."""
    return ArgumentError(f"{name} must be {constraint}, got {value!r}")


def real(name: str, value: object) -> float:
    """``value``, a real number or one-element tensor, as a finite float.

    A bool, string or other type is an :class:`ArgumentTypeError`; a tensor with
    more than one element, NaN or ±inf an :class:`ArgumentError`.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ArgumentError(f"{name} must be a scalar, got a tensor of shape "
                                f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise fail(name, "finite", value)
    return float(value)


def positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0 (see :func:`real` for the accepted types)."""
    number = real(name, value)
    if number <= 0:
        raise fail(name, "positive", value)
    return number


def non_negative(name: str, value: object) -> float:
    """``value`` as a finite float ≥ 0 (see :func:`real` for the accepted types)."""
    number = real(name, value)
    if number < 0:
        raise fail(name, "non-negative", value)
    return number


def at_least(name: str, value: object, minimum: float) -> float:
    """``value`` as a finite float ≥ ``minimum``."""
    number = real(name, value)
    if number < minimum:
        raise fail(name, f"at least {minimum!r}", value)
    return number


def in_interval(name: str, value: object, low: float = 0.0, high: float = 1.0, *,
                closed_low: bool = False, closed_high: bool = False) -> float:
    """``value`` as a float in the interval from ``low`` to ``high``, open by default.

    E.g. ``in_interval("target_accept", 0.8)`` checks 0 < 0.8 < 1, and
    ``closed_low=True, closed_high=True`` checks 0 ≤ value ≤ 1.
    """
    number = real(name, value)
    above = number >= low if closed_low else number > low
    below = number <= high if closed_high else number < high
    if not (above and below):
        interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
        raise fail(name, f"in {interval}", value)
    return number


def decreasing(name: str, values: object, *, allow_zero: bool = False) -> tuple[float, ...]:
    """``values`` (a sequence or tensor of numbers) as a non-empty, strictly decreasing
    tuple of finite floats, each > 0 (≥ 0 with ``allow_zero``).

    E.g. noise levels σ₁ > σ₂ > … > σ_L > 0 of an annealing schedule.
    """
    if isinstance(values, Tensor):
        levels = tuple(values.detach().double().reshape(-1).tolist())
    elif isinstance(values, Iterable):
        levels = tuple(real(f"{name}[{index}]", v) for index, v in enumerate(values))
    else:
        raise ArgumentTypeError(f"{name} must be a sequence of numbers, got "
                                f"{type(values).__name__}")
    sign = "non-negative" if allow_zero else "positive"
    if not levels or any(not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero)
                         for v in levels):
        raise fail(name, f"non-empty, finite and {sign}", list(levels))
    if any(b >= a for a, b in zip(levels, levels[1:], strict=False)):
        raise fail(name, "strictly decreasing", list(levels))
    return levels


def count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int ≥ ``minimum`` (a bool or a float is not).

    Any failure is an :class:`ArgumentError` ("must be a positive int"), since
    a count's constraint is its being a whole number in range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        requirement = "a positive int" if minimum == 1 else f"an int ≥ {minimum}"
        raise fail(name, requirement, value)
    return value


def one_of(name: str, value: object, choices: Collection) -> object:
    """``value`` if it is among ``choices``."""
    if value not in choices:
        raise fail(name, f"one of {tuple(choices)}", value)
    return value


def flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")
    return value


def instance(name: str, value: object, kind: type | tuple[type, ...], description: str
             ) -> object:
    """``value`` if it is an instance of ``kind``; the error says ``description``.

    E.g. ``instance("sample: sampler", s, Sampler, "an ebmalgebra.samplers.Sampler")``.
    """
    if not isinstance(value, kind):
        raise ArgumentTypeError(f"{name} must be {description}, got {type(value).__name__}")
    return value


def same_event_shape(name: str, part: object, model: object) -> None:
    """Raise :class:`CompositionError` unless the model ``part`` (a base, a path's
    intermediate model) has the event shape of ``model``.

    E.g. ``SMC: base g has event_shape (1,), but the model m has (3,)``.
    """
    if tuple(part.event_shape or ()) != tuple(model.event_shape or ()):
        raise CompositionError(f"{name} {part!r} has event_shape {tuple(part.event_shape or ())}"
                               f", but the model {model!r} has {tuple(model.event_shape or ())}")


def generator(name: str, value: object) -> torch.Generator | None:
    """``value`` if it is a ``torch.Generator`` or ``None``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ArgumentTypeError(f"{name} must be a torch.Generator or None, got "
                                f"{type(value).__name__}; seed one with "
                                "torch.Generator().manual_seed(0)")
    return value


def floating_tensor(name: str, value: object) -> Tensor:
    """``value`` if it is a floating-point tensor (float16/32/64, bfloat16)."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise ArgumentTypeError(f"{name} must be a floating-point tensor, got {kind}")
    return value


def finite_entries(name: str, value: Tensor) -> Tensor:
    """``value`` if every entry is finite; else name the first bad entry and how many.

    E.g. ``loc must be finite, got nan at index (2,) (1 of 3 entries)``.
    """
    return _entries(name, value, ~torch.isfinite(value), "finite")


def positive_entries(name: str, value: Tensor) -> Tensor:
    """``value`` if every entry is finite and > 0; else name the first bad entry and how many.

    E.g. ``scale must be positive, got -1.0 at index (1,) (2 of 3 entries)``; a
    one-element tensor reads like a number: ``scale must be positive, got -1.0``.
    """
    finite_entries(name, value)
    return _entries(name, value, value <= 0, "positive")


def non_negative_entries(name: str, value: Tensor) -> Tensor:
    """``value`` if every entry is finite and ≥ 0; else name the first bad entry and how many."""
    finite_entries(name, value)
    return _entries(name, value, value < 0, "non-negative")


def _entries(name: str, value: Tensor, bad: Tensor, constraint: str) -> Tensor:
    if not bool(bad.any()):
        return value
    first = tuple(int(i) for i in bad.nonzero()[0])
    where = "" if value.numel() == 1 else (
        f" at index {first} ({int(bad.sum())} of {bad.numel()} entries)")
    raise ArgumentError(f"{name} must be {constraint}, got {value[first].item()!r}{where}")


def nonzero_entries(name: str, value: Tensor) -> Tensor:
    """``value`` if every entry is finite and ≠ 0; else name the first bad entry and how many.

    E.g. ``AffineTransform scale must be non-zero, got 0.0`` (a map that is not invertible).
    """
    finite_entries(name, value)
    return _entries(name, value, value == 0, "non-zero")
