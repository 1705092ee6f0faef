"""``EnergyModel``: the one type every expression node is, and its capabilities.

A model is an unnormalised density p̃(x) = exp(−E(x)) over x of shape
``event_shape``; Z = ∫ p̃ is generally unknown. Conventions everywhere:
energy E = −log p̃, score s = ∇ₓ log p̃ = −∇ₓ E. Inputs are
``(*batch_shape, *event_shape)``; energies are ``batch_shape``; scores are
shaped like the input.

Each node states its own capabilities; one rule per operator (in
``ops.py``) derives a composite's capabilities from its children, and the
same rule names the smallest sub-expression to blame when a capability is
missing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.constraints import Constraint

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentTypeError, CapabilityError, CompositionError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ebmalgebra.program import ProgramBuilder, ProgramNode

TimeLike = float | Tensor | None
"""Noise level / time ``t`` for noise-conditioned models: a float, a 0-d
tensor or one value per batch element; ``None`` when unused."""

CAPABILITY_NAMES = ("energy", "score", "normalizer", "sample")


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a model can do, as local facts, constructed by keyword only.

    Attributes:
        has_energy: ``energy(x)`` is available (not score-only).
        has_score: ``score(x)`` is available.
        normalizer_known: log Z is known (exactly or as an estimate), so
            ``log_prob`` works and mixtures get true weights.
        can_sample: exact (non-MCMC) sampling via ``sample(n)``.
    """

    has_energy: bool
    has_score: bool
    normalizer_known: bool
    can_sample: bool

    def supports(self, capability: str) -> bool:
        """Whether ``capability`` (one of :data:`CAPABILITY_NAMES`) holds."""
        return getattr(self, _CAPABILITY_FIELDS[capability])


_CAPABILITY_FIELDS = {
    "energy": "has_energy",
    "score": "has_score",
    "normalizer": "normalizer_known",
    "sample": "can_sample",
}


def format_number(value: float) -> str:
    """Shortest typeable form of a float: ``2`` for 2.0, ``0.25`` for 0.25."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)





def input_options(module: object, *, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> dict:
    """``dtype=`` and ``device=`` for tensors fed to ``module``.

    Those of its first floating parameter or buffer, else of the first floating
    tensor a node of it holds otherwise (:meth:`EnergyModel.held_tensors`, e.g. a
    torch distribution's parameters); for anything else (not a module, or one
    without floating tensors) ``dtype`` (default: torch's
    default dtype) and ``device``.

    Example:
        >>> zeros = torch.zeros((1, *event_shape), **input_options(classifier))
    """
    if isinstance(module, nn.Module):
        held = (tensor for node in module.modules() if isinstance(node, EnergyModel)
                for tensor in node.held_tensors())
        for tensor in itertools.chain(module.parameters(), module.buffers(), held):
            if tensor.is_floating_point():
                return {"dtype": tensor.dtype, "device": tensor.device}
    return {"dtype": dtype if dtype is not None else torch.get_default_dtype(), "device": device}


class EnergyModel(nn.Module):
    """An unnormalised density p̃(x) = exp(−E(x)); the base of every node.

    Subclasses implement the private, flat-batch hooks (x is
    ``(batch, *event_shape)``): ``_energy``, ``_score``,
    ``_energy_and_score``, ``_log_z`` and ``_sample`` as their capabilities
    allow, plus ``_why_not`` naming the part to blame for a missing
    capability. The public methods validate shapes, flatten batch
    dimensions and turn missing capabilities into :class:`CapabilityError`.

    Operators (see DESIGN §1): ``a & b`` product, ``a | b`` mixture,
    ``w * a`` weight, ``a ** beta`` tempering, ``~a`` inverse.
    """

    # numpy scalars must defer to our reflected operators (``np.float64(2) * a``).
    __array_ufunc__ = None

    _frozen: bool = False

    # ------------------------------------------------------------------ facts
    @property
    def event_shape(self) -> torch.Size | None:
        """Shape of one sample x; ``None`` for shape-free models such as ``one``."""
        raise NotImplementedError

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    @property
    def has_energy(self) -> bool:
        return self.capabilities.has_energy

    @property
    def has_score(self) -> bool:
        return self.capabilities.has_score

    @property
    def normalizer_known(self) -> bool:
        return self.capabilities.normalizer_known

    @property
    def can_sample(self) -> bool:
        return self.capabilities.can_sample

    @property
    def args(self) -> tuple:
        """Constructor arguments: ``type(node)(*node.args)`` rebuilds the node."""
        raise NotImplementedError

    def operands(self) -> tuple[EnergyModel, ...]:
        """Child models in order (empty for leaves)."""
        return ()

    def held_tensors(self) -> Iterator[Tensor]:
        """Tensors this node holds outside its parameters and buffers (none by
        default; a distribution leaf's distribution parameters): they set the
        dtype and device of default inputs (:func:`input_options`)."""
        return iter(())

    def factors(self) -> tuple[EnergyModel, ...]:
        """The experts whose product this model is, p̃ = Π p̃_i: ``(a, b, c)`` for
        ``a & b & c``, and ``(self,)`` for a model that is not a product."""
        return (self,)

    def leaves(self) -> Iterator[EnergyModel]:
        """Distinct leaves in first-appearance order."""
        seen: set[int] = set()
        stack = [self]
        order: list[EnergyModel] = []
        while stack:
            node = stack.pop()
            children = node.operands()
            if not children:
                if id(node) not in seen:
                    seen.add(id(node))
                    order.append(node)
            else:
                stack.extend(reversed(children))
        return iter(order)

    def structure(self) -> tuple:
        """A hashable key equal for structurally equal expressions.

        Leaves are compared by identity (a leaf is a particular model with its
        own parameters); composite nodes by type, numbers and children.
        """
        numbers = tuple(a for a in self.args if not isinstance(a, EnergyModel))
        children = tuple(c.structure() for c in self.operands())
        return (type(self).__name__, numbers, children)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        """``None`` if ``capability`` holds, else (smallest culprit, reason)."""
        raise NotImplementedError

    def require(self, capability: str, operation: str) -> None:
        """Raise :class:`CapabilityError` if ``capability`` is missing.

        The message names ``operation`` and the smallest sub-expression
        lacking the capability, with the reason, e.g.
        ``energy needs energies, but 'denoiser' is score-only``.
        """
        if self.capabilities.supports(capability):
            return
        blame = self._why_not(capability)
        if blame is None:
            return
        culprit, reason = blame
        where = "" if culprit is self else f" (in {self!r})"
        raise CapabilityError(f"{operation}: '{culprit!r}' {reason}{where}")

    # --------------------------------------------------------------- algebra
    def __and__(self, other: EnergyModel) -> EnergyModel:
        from ebmalgebra.ops import Product

        return Product(self, _as_model(other, "&"))

    def __or__(self, other: EnergyModel) -> EnergyModel:
        from ebmalgebra.ops import Mixture

        return Mixture(self, _as_model(other, "|"))

    def __rmul__(self, weight: float) -> EnergyModel:
        from ebmalgebra.ops import Weight

        if isinstance(weight, EnergyModel):
            return NotImplemented
        return Weight(weight, self)

    def __mul__(self, weight: float) -> EnergyModel:
        from ebmalgebra.ops import Weight

        if isinstance(weight, EnergyModel):
            raise CompositionError(
                f"{self!r} * {weight!r}: multiplying two models is ambiguous; "
                "use `a & b` for the product of experts (E = E_a + E_b)"
            )
        return Weight(weight, self)

    def __pow__(self, beta: float) -> EnergyModel:
        from ebmalgebra.ops import Power

        return Power(self, beta)

    def __invert__(self) -> EnergyModel:
        from ebmalgebra.ops import Power

        return Power(self, -1.0)

    def normalized(self, log_z: float | Tensor | None = None) -> EnergyModel:
        """p̃/Z: energy E + log Z, so that ``log_prob`` works and ``|`` gets true weights.

        ``log_z`` defaults to this model's known log normaliser; for unknown
        normalisers estimate one with :func:`ebmalgebra.normalize`.
        """
        from ebmalgebra.ops import Normalized

        return Normalized(self, log_z)

    def pushforward(self, transform: object) -> EnergyModel:
        """The density of y = T(x): E(T⁻¹(y)) + log|det J_T(T⁻¹(y))| for an invertible
        ``torch.distributions.transforms.Transform`` T; log Z and exact sampling carry over
        (:mod:`ebmalgebra.pushforward`)."""
        from ebmalgebra.pushforward import Pushforward

        return Pushforward(self, transform)

    def condition(self, mask: Tensor, values: Tensor | float) -> EnergyModel:
        """The model of the free coordinates given x[mask] = values (``mask`` a bool tensor
        of ``event_shape``, True where clamped); event shape ``(n_free,)``
        (:mod:`ebmalgebra.condition`)."""
        from ebmalgebra.condition import Conditioned

        return Conditioned(self, mask, values)

    # ------------------------------------------- rules a node owns (leaf defaults)
    analytic_score = False
    """True when ``_energy_and_score`` needs no autograd pass by the compiler."""

    passes_impropriety = False
    """Whether an improper child makes this node improper (see ``normalize``)."""

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        """This model in a compiled program: a leaf, evaluated once per call."""
        return program.leaf(self)

    def gaussian_form(self, forms: list) -> object | None:
        """The Gaussian form of the energy (:mod:`ebmalgebra.quadratic`), or ``None``."""
        return None

    def rewrite(self, rewrite: Callable[[EnergyModel], EnergyModel]) -> EnergyModel:
        """This model with ``rewrite`` applied to its children (a leaf has none)."""
        return self

    @property
    def support(self) -> Constraint:
        """Where p̃ > 0, a ``torch.distributions.constraints`` object (ℝ by default);
        :func:`ebmalgebra.sample` samples constrained models in unconstrained space
        (:mod:`ebmalgebra.constraints`)."""
        return constraints.real

    def sampling_exponent(self) -> float:
        """How many energies the model stacks (a leaf counts 1): the zoo divides its
        Langevin step by it, since curvatures add up."""
        return 1.0

    # ------------------------------------------------------------ evaluation
    def energy(self, x: Tensor, t: TimeLike = None) -> Tensor:
        """E(x) of shape ``batch_shape``; differentiable in the model's parameters."""
        self.require("energy", "energy")
        flat, batch_shape, t = self._flatten(x, t)
        return self._energy(flat, t).reshape(batch_shape)

    def score(self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False) -> Tensor:
        """s(x) = −∇ₓE(x), shaped like ``x``.

        With ``create_graph=True`` the result stays differentiable in ``x``
        and the parameters (for score-matching losses); otherwise it is
        detached.
        """
        self.require("score", "score")
        flat, _, t = self._flatten(x, t)
        score = self._score(flat, t, create_graph)
        return (score if create_graph else score.detach()).reshape(x.shape)

    def energy_and_score(
        self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(E(x), s(x))`` computed together; see :meth:`energy` and :meth:`score`."""
        caps = self.capabilities
        if not (caps.has_energy and caps.has_score):
            self.require("energy", "energy_and_score")
            self.require("score", "energy_and_score")
        flat, batch_shape, t = self._flatten(x, t)
        energy, score = self._energy_and_score(flat, t, create_graph)
        if not create_graph:
            energy, score = energy.detach(), score.detach()
        if flat is x:
            return energy, score
        return energy.reshape(batch_shape), score.reshape(x.shape)

    def log_z(self) -> Tensor:
        """log Z = log ∫ exp(−E(x)) dx as a 0-d tensor, where known."""
        self.require("normalizer", "log_z")
        return self._log_z()

    def log_prob(self, x: Tensor, t: TimeLike = None) -> Tensor:
        """log p(x) = −E(x) − log Z, shaped ``batch_shape``; only where log Z is known."""
        self.require("normalizer", "log_prob")
        return -self.energy(x, t) - self._log_z().to(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact independent draws ``(n, *event_shape)``, where exact sampling exists.

        For MCMC on any model use :func:`ebmalgebra.sample` instead.
        """
        self.require("sample", "sample")
        validation.count("sample: n", n, 0)
        return self._sample(n, generator)

    # ---------------------------------------------------- hooks (flat batch)
    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._energy_and_score(x, t, create_graph)[1]

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _log_z(self) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- shapes
    def _flatten(self, x: Tensor, t: TimeLike) -> tuple[Tensor, torch.Size, TimeLike]:
        """Validate ``x`` and reshape ``(*batch, *event)`` to ``(batch, *event)``."""
        if not isinstance(x, Tensor):
            raise ArgumentTypeError(f"{self!r}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ArgumentTypeError(f"{self!r}: x must be a floating-point tensor, got {x.dtype}")
        event_shape = self.event_shape
        if (event_shape is not None and x.dim() == len(event_shape) + 1
                and x.shape[1:] == event_shape and (t is None or not isinstance(t, Tensor)
                                                    or t.dim() == 0 or t.shape == x.shape[:1])):
            return x, x.shape[:1], t  # already (batch, *event_shape): nothing to reshape
        if event_shape is None:
            if x.dim() == 0:
                raise CompositionError(f"{self!r}: x needs a batch dimension, got a 0-d tensor")
            event_shape = x.shape[1:]
        n_event = len(event_shape)
        if x.dim() < n_event or tuple(x.shape[x.dim() - n_event :]) != tuple(event_shape):
            raise CompositionError(
                f"{self!r} has event_shape {tuple(event_shape)}, so x must be shaped "
                f"(*batch, {', '.join(map(str, event_shape))}); got {tuple(x.shape)}"
            )
        batch_shape = x.shape[: x.dim() - n_event]
        flat = x.reshape(math.prod(batch_shape), *event_shape)
        if isinstance(t, Tensor) and t.dim() > 0:
            if tuple(t.shape) != tuple(batch_shape):
                raise CompositionError(
                    f"{self!r}: t must be a scalar or shaped like the batch "
                    f"{tuple(batch_shape)}; got {tuple(t.shape)}"
                )
            t = t.reshape(-1)
        return flat, batch_shape, t

    # ----------------------------------------------------------- immutability
    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: object) -> None:
        if self._frozen and not name.startswith("_") and name != "training":
            raise AttributeError(
                f"{type(self).__name__} nodes are immutable; build a new expression instead "
                f"of setting {name!r}"
            )
        super().__setattr__(name, value)

    # --------------------------------------------------------------- display
    precedence = 6
    """Python operator precedence of the printed form (6 = atom)."""

    def __repr__(self) -> str:
        raise NotImplementedError

    def explain(self) -> str:
        """A multi-line description of the expression tree and each node's capabilities."""
        lines: list[str] = []
        self._explain_into(lines, 0)
        return "\n".join(lines)

    def _explain_into(self, lines: list[str], depth: int) -> None:
        caps = self.capabilities
        facts = [
            name
            for name, ok in (
                ("energy", caps.has_energy),
                ("score", caps.has_score),
                ("log Z known", caps.normalizer_known),
                ("exact sampling", caps.can_sample),
            )
            if ok
        ]
        if not caps.has_energy:
            facts.append("score-only")
        label = self._explain_label()
        lines.append(f"{'  ' * depth}{label}  [{', '.join(facts)}]")
        for child in self.operands():
            child._explain_into(lines, depth + 1)

    def _explain_label(self) -> str:
        return repr(self)

    def parenthesized(self, min_precedence: int) -> str:
        """``repr`` wrapped in parentheses when it binds looser than ``min_precedence``."""
        text = repr(self)
        return f"({text})" if self.precedence < min_precedence else text


def _as_model(other: object, operator: str) -> EnergyModel:
    if not isinstance(other, EnergyModel):
        raise CompositionError(
            f"operator {operator!r} combines two EnergyModels, got {type(other).__name__}; "
            "use `w * a` for weights and `a ** beta` for temperatures"
        )
    return other


def check_same_event_shape(models: tuple[EnergyModel, ...], operator: str) -> torch.Size | None:
    """The common event shape of ``models``; ``None`` if all are shape-free.

    Raises :class:`CompositionError` naming the first two models that disagree.
    """
    shape: torch.Size | None = None
    first: EnergyModel | None = None
    for model in models:
        if model.event_shape is None:
            continue
        if shape is None:
            shape, first = model.event_shape, model
        elif tuple(model.event_shape) != tuple(shape):
            raise CompositionError(
                f"{operator}: event shapes differ: {first!r} has {tuple(shape)} but "
                f"{model!r} has {tuple(model.event_shape)}"
            )
    return shape
