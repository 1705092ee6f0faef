"""The two tiers of errors an expression can raise.

``CompositionError`` is raised while an expression is being built (or fed
input of the wrong shape): the parts do not fit together. ``CapabilityError``
is raised when an operation is asked of an expression that some part of it
cannot support, e.g. ``log_prob`` of a model whose normaliser is unknown.
Both name the smallest sub-expression at fault.
"""

from __future__ import annotations


class EBMAlgebraError(Exception):
    """Base class of every error this library raises on purpose."""


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
