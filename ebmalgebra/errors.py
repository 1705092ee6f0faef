"""Every error this library raises on purpose, in one hierarchy.

All derive from :class:`EBMAlgebraError`, and each also derives from the
built-in exception a plain Python user would catch for the same mistake::

    EBMAlgebraError
    ├── ArgumentError          (ValueError)   an argument has a bad value
    ├── ArgumentTypeError      (TypeError)    an argument has the wrong type
    ├── CompositionError       (ValueError)   parts of an expression do not fit
    ├── CapabilityError        (TypeError)    a sub-expression lacks what is asked
    ├── ExpressionError        (ValueError)   an expression string does not parse
    ├── SerializationError     (ValueError)   an expression cannot be saved/loaded
    │   └── ZooError           (KeyError)     unknown zoo name, bad shipped file
    └── NonFiniteError         (FloatingPointError)  a chain produced NaN/inf

Argument errors are raised by :mod:`ebmalgebra.validation` with one message
form, ``"<argument> must be <constraint>, got <value>"``, where the argument is
prefixed by the sub-expression or operation it belongs to when that helps, e.g.
``"HMC: step_size must be positive, got -1"`` or
``"gaussian: scale must be positive, got -1.0"``. Composition and capability
errors name the smallest sub-expression at fault.
"""

from __future__ import annotations


class EBMAlgebraError(Exception):
    """Base class of every error this library raises on purpose."""


class ArgumentError(EBMAlgebraError, ValueError):
    """An argument has a value outside its constraint.

    Example: ``HMC(step_size=-1)`` raises ``HMC: step_size must be positive, got -1``
    and ``Gaussian(0.0, -1.0)`` raises ``gaussian: scale must be positive, got -1.0``.
    """


class ArgumentTypeError(EBMAlgebraError, TypeError):
    """An argument has the wrong type.

    Example: ``sample(model, generator=0)``: ``sample: generator must be a
    torch.Generator or None, got int``.
    """


class CompositionError(EBMAlgebraError, ValueError):
    """Parts of an expression (or an input) do not fit together.

    Example: ``ring & Gaussian(torch.zeros(3), 1.0)`` mixes event shapes
    ``(2,)`` and ``(3,)``.
    """


class CapabilityError(EBMAlgebraError, TypeError):
    """An operation needs something that a sub-expression lacks.

    Example: ``(a & b).log_prob(x)`` when the normaliser of ``a & b`` is
    unknown, or ``energy`` of an expression containing a score-only leaf.
    """


class ExpressionError(EBMAlgebraError, ValueError):
    """A syntax error, unknown name or ill-typed operation in an expression string.

    Attributes:
        text: the expression.
        position: index of the offending character in ``text``.
        reason: the message without the caret display.
    """

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason, self.text, self.position = reason, text, position
        super().__init__(f"{reason}\n  {text}\n  {' ' * position}^")


class SerializationError(EBMAlgebraError, ValueError):
    """An expression cannot be saved, or a file cannot be loaded as one.

    The message names the part at fault: the leaf that is not serialisable,
    the unknown type, the tensor whose shape, dtype or checksum is off, the
    malformed JSON field.
    """


class ZooError(SerializationError, KeyError):
    """An unknown zoo name, or a shipped file that is missing or fails its checksum."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class NonFiniteError(EBMAlgebraError, FloatingPointError):
    """A chain produced a NaN or infinite energy or score.

    Raised by :func:`ebmalgebra.sample` with ``on_nonfinite="raise"`` (naming the
    step and the chain indices), and for starting points whose energy or score
    is already non-finite.
    """
