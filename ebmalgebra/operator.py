"""``Operator``: the public base class of composite nodes (``&``, ``|``, ``w *``, ``**`` and yours).

A node class owns every rule about itself (DESIGN §10), so that compile, io,
the closed-form rewrites, the zoo's sampling plans and ``normalize`` are
generic walks that ask the node:

=========================  ==================================================
rule                       hook (default)
=========================  ==================================================
canonical form             ``canonical(*args, **kwargs)`` classmethod: an
                           equivalent existing model, or ``None`` to build
                           the node as given (runs on *every* construction
                           path, ``Product(a, one)`` as ``a & one``)
capabilities               ``capabilities`` (energy if all children have
                           one; score if all children have energy and score;
                           log Z and exact sampling unknown) and
                           ``_why_not`` naming the culprit
energy                     ``combine(energies)``: E = f(E_1, …, E_k), one
                           value per sample; the score follows by the chain
                           rule s = Σ_l (∂f/∂E_l) s_l. Nodes that change
                           coordinates instead override ``_energy`` and
                           ``_energy_and_score``
lowering                   ``lower(program)``: a program node (the compiled
                           form); default ``program.apply(combine, …)`` for
                           ``combine`` operators, the node itself otherwise
Gaussian closed form       ``gaussian_form(forms)`` (``None``: no rewrite)
file form                  ``spec()`` (JSON numbers besides the children)
                           and ``rebuild(operands, spec)``; save/load needs
                           ``@ebmalgebra.io.register_operator("name")``
sampling exponent          ``sampling_exponent()``: how many energies the
                           node stacks (default: its largest child's)
impropriety                ``passes_impropriety``: whether an improper
                           child makes the node improper (default False)
support                    ``support``: where p̃ > 0 (default: the
                           children's common support, ℝ neutral, as for
                           ``&``; :mod:`ebmalgebra.constraints`)
=========================  ==================================================

Nodes are immutable: the metaclass canonicalises before construction and
freezes the node after ``__init__``, and ``type(node)(*node.args)`` rebuilds
an equal node. See docs/extending.md for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributions.constraints import Constraint

from ebmalgebra.base import (
    Capabilities,
    EnergyModel,
    TimeLike,
    check_same_event_shape,
    format_number,
)
from ebmalgebra.errors import CompositionError
from ebmalgebra.reverse_pass import inference_mode_blocks_autograd, recordable, vector_jacobian

if TYPE_CHECKING:
    from ebmalgebra.program import ProgramBuilder, ProgramNode

__all__ = ["Operator", "logsumexp_and_softmax"]

# Python precedence levels of the printed forms.
MIXTURE, PRODUCT, WEIGHT, INVERT, POWER, ATOM = 1, 2, 3, 4, 5, 6


class _Canonicalizing(type(nn.Module)):
    """Runs ``cls.canonical`` before ``__init__`` and freezes the node after it.

    ``canonical`` may return an existing model (``Product(a, one)`` is ``a``);
    returning it from here, rather than from ``__new__``, keeps Python from
    calling ``__init__`` a second time on an already built module.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> EnergyModel:
        simplified = cls.canonical(*args, **kwargs)
        if simplified is not None:
            return simplified
        node = super().__call__(*args, **kwargs)
        node._freeze()
        return node


class Operator(EnergyModel, metaclass=_Canonicalizing):
    """A composite node: ordered child models and numbers, immutable once built.

    Subclass it to add an operator: call ``super().__init__(*operands)``, set
    plain-number attributes, and give either ``combine`` (energy of the node
    from its children's energies) or ``_energy`` / ``_energy_and_score`` (for
    nodes that evaluate their children elsewhere than at x). ``params()`` lists
    the constructor's keyword arguments besides the children, so that
    ``type(node)(*node.operands(), **node.params())`` rebuilds the node.

    Example (a soft minimum, E = −τ log(e^{−E_a/τ} + e^{−E_b/τ})):
        >>> class SoftMin(Operator):
        ...     symbol = "smin"
        ...     def __init__(self, a, b, tau=1.0):
        ...         super().__init__(a, b)
        ...         self.tau = float(tau)
        ...     def params(self):
        ...         return {"tau": self.tau}
        ...     def combine(self, energies):
        ...         stacked = torch.stack(energies)
        ...         return -self.tau * torch.logsumexp(-stacked / self.tau, dim=0)
    """

    symbol = ""
    """Name in the printed form ``symbol(child, …, key=value)``; default the class name."""

    analytic_score = True
    """Compiled programs use the node's own ``_energy_and_score`` when it is not lowered
    to program arithmetic (nodes that change coordinates)."""

    passes_impropriety = False
    """Whether an improper child (∫ p̃ = ∞) makes this node improper too."""

    def __init__(self, *operands: EnergyModel) -> None:
        super().__init__()
        name = self.symbol or type(self).__name__
        for operand in operands:
            if not isinstance(operand, EnergyModel):
                raise CompositionError(f"{name} expects EnergyModels, got "
                                       f"{type(operand).__name__}")
        self._event_shape = check_same_event_shape(tuple(operands), name)
        self._children = nn.ModuleList(operands)

    # ------------------------------------------------------------ canonical
    @classmethod
    def canonical(cls, *args: Any, **kwargs: Any) -> EnergyModel | None:
        """An existing model equal to ``cls(*args, **kwargs)``, or ``None`` to build it."""
        return None

    # ----------------------------------------------------------------- facts
    @property
    def event_shape(self) -> torch.Size | None:
        return self._event_shape

    def operands(self) -> tuple[EnergyModel, ...]:
        return tuple(self._children)

    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments besides the children (numbers, by name)."""
        return {}

    @property
    def args(self) -> tuple:
        return (*self.operands(), *self.params().values())

    @property
    def capabilities(self) -> Capabilities:
        cached = self.__dict__.get("_capabilities")
        if cached is None:  # nodes are immutable: derive once
            cached = self.derive_capabilities()
            object.__setattr__(self, "_capabilities", cached)
        return cached

    def derive_capabilities(self) -> Capabilities:
        """The node's capabilities from its children's: the operator's one rule.

        Default, for energy-combining operators: an energy if every child has
        one, a score if every child has energy and score (the chain rule needs
        the energies), log Z and exact sampling unknown.
        """
        caps = [c.capabilities for c in self.operands()]
        energies = all(c.has_energy for c in caps)
        return Capabilities(has_energy=energies,
                            has_score=energies and all(c.has_score for c in caps),
                            normalizer_known=False, can_sample=False)

    def _first_missing(self, capability: str) -> tuple[EnergyModel, str] | None:
        for child in self.operands():
            blame = child._why_not(capability)
            if blame is not None:
                return blame
        return None

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if self.capabilities.supports(capability):
            return None
        if capability == "energy":
            return self._first_missing("energy")
        if capability == "score":
            return self._first_missing("energy") or self._first_missing("score")
        return self._without_closed_forms(capability, f"is a {self._name()} node",
                                          "whose normaliser has no closed form")

    def _without_closed_forms(self, capability: str, kind: str,
                              no_closed_form: str) -> tuple[EnergyModel, str] | None:
        """``_why_not`` for the normaliser or exact sampler of a node that has neither:
        ``kind`` says what the node is, ``no_closed_form`` why its normaliser is unknown."""
        if capability == "normalizer":
            return self._first_missing("energy") or (
                self,
                f"{kind}, {no_closed_form}; estimate it with ebmalgebra.normalize(...) (or "
                "compile(..., closed_form=True) for Gaussians)",
            )
        return (self, f"{kind} and has no exact sampler; draw MCMC samples with "
                      "ebmalgebra.sample(model, sampler=...)")

    def _name(self) -> str:
        return self.symbol or type(self).__name__

    # ------------------------------------------------------------ evaluation
    def combine(self, energies: list[Tensor]) -> Tensor:
        """E of this node from its children's energies, each ``(batch,)``."""
        raise NotImplementedError(f"{type(self).__name__} defines neither combine() nor "
                                  "_energy()")

    def _combines(self) -> bool:
        return type(self).combine is not Operator.combine

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.combine([child._energy(x, t) for child in self.operands()])

    def _energy_and_score(self, x: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        pairs = [child._energy_and_score(x, t, create_graph) for child in self.operands()]
        energy, coefficients = combine_with_coefficients(self.combine, [e for e, _ in pairs])
        score = sum(_per_sample(c, s) * s for c, (_, s) in zip(coefficients, pairs, strict=True))
        return energy, score

    # --------------------------------------------------------------- compile
    def lower(self, program: ProgramBuilder) -> ProgramNode:
        """This node in the compiled program (see :mod:`ebmalgebra.program`)."""
        if self._combines():
            return program.apply(self.combine, [program.lower(c) for c in self.operands()],
                                 self._name())
        return program.leaf(self)

    # --------------------------------------------------------------- rewrite
    def gaussian_form(self, forms: list) -> object | None:
        """The Gaussian form of this node from its children's (``None``: no closed form)."""
        return None

    def rewrite(self, rewrite: Callable[[EnergyModel], EnergyModel]) -> EnergyModel:
        """This node with ``rewrite`` applied to its children (``self`` if none changed)."""
        children = self.operands()
        rewritten = [rewrite(child) for child in children]
        if all(new is old for new, old in zip(rewritten, children, strict=True)):
            return self
        return self.with_operands(rewritten)

    def with_operands(self, operands: list[EnergyModel]) -> EnergyModel:
        """The same node over other children."""
        return type(self).rebuild(tuple(operands), self.spec())

    # ------------------------------------------------------------- file form
    def spec(self) -> dict[str, Any]:
        """The node's numbers as JSON values (children are stored apart)."""
        return self.params()

    @classmethod
    def rebuild(cls, operands: tuple[EnergyModel, ...], spec: dict[str, Any]) -> EnergyModel:
        """The node from its children and :meth:`spec`."""
        return cls(*operands, **spec)

    # ----------------------------------------------------------------- facts
    @property
    def support(self) -> Constraint:
        """The children's common support (ℝ is neutral), as for a product."""
        from ebmalgebra.constraints import intersect

        return intersect(self, [child.support for child in self.operands()])

    def sampling_exponent(self) -> float:
        return max(child.sampling_exponent() for child in self.operands())

    # --------------------------------------------------------------- display
    def __repr__(self) -> str:
        parts = [repr(c) for c in self.operands()]
        parts += [f"{key}={format_number(value) if isinstance(value, float) else repr(value)}"
                  for key, value in self.params().items()]
        return f"{self._name()}({', '.join(parts)})"


def combine_with_coefficients(function: Callable[[list[Tensor]], Tensor],
                              energies: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """``f(E_1, …, E_k)`` and the per-sample ∂f/∂E_l, each ``(batch,)``.

    f acts per sample, so the gradient of Σ_batch f is the per-sample
    derivative. Eagerly that is one reverse pass (kept in the graph
    when the energies are part of one, for differentiable scores); inside
    ``torch.compile`` it is ``torch.func.vjp``, which dynamo traces.
    """
    if torch.compiler.is_compiling():
        value, pullback = torch.func.vjp(lambda *inputs: function(list(inputs)), *energies)
        return value, list(pullback(torch.ones_like(value)))
    if inference_mode_blocks_autograd():  # no graph is recorded there, even with grad on
        with torch.inference_mode(False):
            return combine_with_coefficients(function, [recordable(e) for e in energies])
    in_graph = any(energy.requires_grad for energy in energies)
    with torch.enable_grad():
        inputs = [energy if energy.requires_grad else energy.detach().requires_grad_(True)
                  for energy in energies]
        value = function(inputs)
        grads = vector_jacobian((value,), (torch.ones_like(value),), inputs, in_graph)
    grads = [torch.zeros_like(value) if g is None else g for g in grads]
    return (value if in_graph else value.detach()), grads


def logsumexp_and_softmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """log Σ_j e^{z_j} and the weights e^{z_j} / Σ_k e^{z_k} over dim 0 of ``logits``
    ``(k, batch)``: shapes ``(batch,)`` and ``(k, batch)``.

    Where every z_j is −∞ (every mixture component has E = +∞) the weights are 0,
    not the 0/0 = NaN of ``torch.softmax``: no component is responsible, so the
    mixture's score there is 0, eager and compiled alike. NaN logits stay NaN.
    """
    log_total = torch.logsumexp(logits, dim=0)
    # The clamp only moves a −∞ total (finite ones are ≥ the largest finite logit).
    floor = torch.finfo(log_total.dtype).min
    return log_total, torch.exp(logits - log_total.clamp(min=floor))


def _per_sample(coefficient: Tensor, like: Tensor) -> Tensor:
    return coefficient.reshape(coefficient.shape + (1,) * (like.dim() - 1))
