"""The built-in composite nodes of the algebra and the operator functions that build them.

=============  =====================  ==============================  ===========================
syntax         density                energy                          score
=============  =====================  ==============================  ===========================
``a & b``      p̃_a · p̃_b              E_a + E_b                       s_a + s_b
``a | b``      p̃_a + p̃_b              −logsumexp(−E_a, −E_b)          softmax(−E)-weighted s
``w * a``      w · p̃_a                E_a − log w                     s_a
``a ** beta``  p̃_a^β                  β E_a                           β s_a
``~a``         1 / p̃_a                −E_a                            −s_a
=============  =====================  ==============================  ===========================

Nodes are immutable and canonical (SymPy-style), whichever way they are
built: each class's ``canonical`` flattens nested products and mixtures,
drops the identity ``one``, merges nested weights and powers, and removes
``** 1`` and ``1 *``, so ``Product(a, one)`` is ``a`` just as ``a & one`` is.
Each class also carries its capability rule, its lowering to the compiled
program, its closed-form rule, its file form and the facts samplers ask of
it (:class:`~ebmalgebra.operator.Operator`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.distributions.constraints import Constraint

from ebmalgebra import validation
from ebmalgebra.base import (
    Capabilities,
    EnergyModel,
    TimeLike,
    format_number,
)
from ebmalgebra.errors import ArgumentError, CapabilityError, CompositionError
from ebmalgebra.operator import (
    ATOM,
    INVERT,
    MIXTURE,
    POWER,
    PRODUCT,
    WEIGHT,
    Operator,
    logsumexp_and_softmax,
)

if TYPE_CHECKING:
    from ebmalgebra.program import ProgramBuilder, ProgramNode

__all__ = ["Mixture", "Normalized", "Power", "Product", "Weight", "mixture", "power",
           "product", "weighted"]


def _flatten(cls: type, models: tuple) -> list:
    flat: list = []
    for model in models:
        flat.extend(model.operands() if type(model) is cls else (model,))
    return flat


def _is_one(model: object) -> bool:
    from ebmalgebra.leaves import One

    return isinstance(model, One)


class Product(Operator):
    """Product of experts p̃ = Π p̃_i, E = Σ E_i, s = Σ s_i.

    Canonical form: nested products flatten (``Product(Product(a, b), c)`` has
    factors a, b, c), ``one`` is dropped, and a product of one factor is that
    factor. The normaliser of a product has no closed form in general, and
    there is no exact sampler (use MCMC, or ``compile(..., closed_form=True)``
    for Gaussians).
    """

    symbol = "&"
    precedence = PRODUCT

    @classmethod
    def canonical(cls, *factors: EnergyModel) -> EnergyModel | None:
        if not factors:
            raise CompositionError("Product needs at least one factor; use `a & b`")
        flat = _flatten(cls, factors)
        kept = [f for f in flat if not _is_one(f)]
        if len(kept) <= 1:
            return kept[0] if kept else flat[0]
        return None if kept == list(factors) else cls(*kept)

    def derive_capabilities(self) -> Capabilities:
        caps = [c.capabilities for c in self.operands()]
        return Capabilities(has_energy=all(c.has_energy for c in caps),
                            has_score=all(c.has_score for c in caps),
                            normalizer_known=False, can_sample=False)

    def factors(self) -> tuple[EnergyModel, ...]:
        return self.operands()

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability in ("energy", "score"):
            return self._first_missing(capability)
        return self._without_closed_forms(capability, "is a product of experts",
                                          "whose normaliser has no closed form")

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return sum(child._energy(x, t) for child in self._children)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return sum(child._score(x, t, create_graph) for child in self._children)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        pairs = [child._energy_and_score(x, t, create_graph) for child in self._children]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(0.0, [(1.0, program.lower(c)) for c in self.operands()])

    def gaussian_form(self, forms: list) -> object | None:
        from ebmalgebra.quadratic import as_quadratic

        quadratics = [as_quadratic(form) for form in forms]
        if any(q is None for q in quadratics):
            return None
        total = quadratics[0]
        for quadratic in quadratics[1:]:
            total = total + quadratic
        return total

    def rewrite(self, rewrite: Callable[[EnergyModel], EnergyModel]) -> EnergyModel:
        """Fold the Gaussian factors into one leaf, and rewrite the other factors."""
        from ebmalgebra.rewrites import rewrite_product

        return rewrite_product(self, rewrite)

    def sampling_exponent(self) -> float:
        return sum(c.sampling_exponent() for c in self.operands())

    def __repr__(self) -> str:
        return " & ".join(c.parenthesized(PRODUCT + 1) for c in self._children)


class Mixture(Operator):
    """Sum of measures p̃ = Σ p̃_i, E = −logsumexp_i(−E_i), s = Σ softmax(−E)_i s_i.

    Where every component has E = +∞ (outside all supports) the responsibilities
    softmax(−E) are 0, and so is the score.

    Because ``|`` adds unnormalised densities, component i carries weight
    w_i·Z_i. Only when every component is normalised (log Z known) does
    ``0.25 * a | 0.75 * b`` mean "a with probability 0.25"; see
    :meth:`component_weights`. Every component needs an energy. Canonical
    form: nested mixtures flatten; a mixture of one component is that component.
    """

    symbol = "|"
    precedence = MIXTURE
    passes_impropriety = True

    @classmethod
    def canonical(cls, *components: EnergyModel) -> EnergyModel | None:
        if not components:
            raise CompositionError("Mixture needs at least one component; use `a | b`")
        flat = _flatten(cls, components)
        if len(flat) == 1:
            return flat[0]
        return None if flat == list(components) else cls(*flat)

    def __init__(self, *components: EnergyModel) -> None:
        super().__init__(*components)
        for component in components:
            blame = component._why_not("energy")
            if blame is not None:
                culprit, reason = blame
                raise CompositionError(
                    f"mixture needs energies of all components, but '{culprit!r}' {reason}"
                )

    def derive_capabilities(self) -> Capabilities:
        caps = [c.capabilities for c in self.operands()]
        known = all(c.normalizer_known for c in caps)
        return Capabilities(has_energy=True, has_score=all(c.has_score for c in caps),
                            normalizer_known=known,
                            can_sample=known and all(c.can_sample for c in caps))

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability == "sample":
            return self._first_missing("normalizer") or self._first_missing("sample")
        return self._first_missing(capability)

    @property
    def support(self) -> Constraint:
        """The union of the components' supports: ℝ if any has it."""
        from ebmalgebra.constraints import unite

        return unite(self, [child.support for child in self.operands()])

    def component_weights(self) -> Tensor:
        """True mixture weights π_i = w_i Z_i / Σ_j w_j Z_j, shape ``(n_components,)``.

        Raises :class:`CapabilityError` naming the components whose normaliser
        is unknown: their weights are then w_i·Z_i with Z_i unknown.
        """
        unknown = [c for c in self._children if not c.normalizer_known]
        if unknown:
            names = ", ".join(repr(c) for c in unknown)
            raise CapabilityError(
                f"component weights of {self!r} are w_i·Z_i, and the normaliser Z of "
                f"{names} is unknown; use normalize(...) on those components so that the "
                "weights you write are the weights you get"
            )
        log_z = torch.stack([c._log_z().double() for c in self._children])
        return torch.softmax(log_z, dim=0)

    def _log_z(self) -> Tensor:
        return torch.logsumexp(torch.stack([c._log_z().double() for c in self._children]), 0)

    def combine(self, energies: list[Tensor]) -> Tensor:
        return -torch.logsumexp(-torch.stack(energies), dim=0)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        pairs = [child._energy_and_score(x, t, create_graph) for child in self._children]
        energies = torch.stack([p[0] for p in pairs])
        scores = torch.stack([p[1] for p in pairs])
        log_total, responsibilities = logsumexp_and_softmax(-energies)
        shape = responsibilities.shape + (1,) * (scores.dim() - 2)
        score = (responsibilities.reshape(shape) * scores).sum(0)
        return -log_total, score

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        probs = self.component_weights()
        # torch.multinomial refuses n = 0; an empty index still asks each child for (0, *event).
        index = (torch.multinomial(probs.float(), n, replacement=True, generator=generator)
                 if n else torch.zeros(0, dtype=torch.long))
        draws = [c._sample(int((index == k).sum()), generator) for k, c in
                 enumerate(self._children)]
        out = torch.empty((n, *draws[0].shape[1:]), dtype=draws[0].dtype,
                          device=draws[0].device)
        for k, draw in enumerate(draws):
            out[(index == k).to(out.device)] = draw
        return out

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.log_sum_exp([(0.0, program.lower(c)) for c in self.operands()])

    def gaussian_form(self, forms: list) -> object | None:
        from ebmalgebra.quadratic import concatenate

        return concatenate(forms)

    def __repr__(self) -> str:
        return " | ".join(c.parenthesized(MIXTURE + 1) for c in self._children)

    def _explain_label(self) -> str:
        try:
            weights = ", ".join(f"{w:.4g}" for w in self.component_weights().tolist())
            return f"{self!r}  (component weights {weights})"
        except CapabilityError:
            return f"{self!r}  (component weights w_i·Z_i: unknown, some Z_i unknown)"


class _Unary(Operator):
    """A node with one child and numbers; capabilities and blame are the child's."""

    @property
    def base(self) -> EnergyModel:
        return self._children[0]

    def derive_capabilities(self) -> Capabilities:
        return self.base.capabilities

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self.base._why_not(capability)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.base._sample(n, generator)

    def sampling_exponent(self) -> float:
        return self.base.sampling_exponent()


def _check_weight(weight: object, base: object) -> float:
    weight = validation.real("weight", weight)
    if weight <= 0:
        raise ArgumentError(f"weight must be positive, got {format_number(weight)} "
                            f"in {format_number(weight)} * {base!r}")
    return weight


def _folded_weight(weight: float) -> float | None:
    """A weight folded from nested ones (w₁·w₂, w**β), or ``None`` where it left the
    normal floats: rounded to 0, a subnormal or ∞, it would misstate E = E_base − log w,
    so the nodes then stay nested, and their log-weights add exactly."""
    return weight if sys.float_info.min <= weight <= sys.float_info.max else None


class Weight(_Unary):
    """w · p̃: E = E_base − log w, same score; log Z = log Z_base + log w.

    ``weight`` must be a positive finite number. Weights give mixture
    components their mass: ``0.25 * a | 0.75 * b``. Canonical form: nested
    weights multiply, ``Weight(1, a)`` is ``a``; a product that would underflow
    or overflow (``1e-300 * (1e-300 * a)``) stays nested.
    """

    symbol = "*"
    precedence = WEIGHT
    passes_impropriety = True

    @classmethod
    def canonical(cls, weight: float, base: EnergyModel) -> EnergyModel | None:
        weight = _check_weight(weight, base)
        if type(base) is cls:
            folded = _folded_weight(weight * base.weight)
            if folded is not None:
                return cls(folded, base.base)
        return base if weight == 1.0 else None

    def __init__(self, weight: float, base: EnergyModel) -> None:
        super().__init__(base)
        self.weight = _check_weight(weight, base)
        self.log_weight = math.log(self.weight)

    @property
    def args(self) -> tuple:
        return (self.weight, self.base)

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight}

    @classmethod
    def rebuild(cls, operands: tuple[EnergyModel, ...], spec: dict[str, Any]) -> EnergyModel:
        (base,) = operands
        return cls(spec["weight"], base)

    def _log_z(self) -> Tensor:
        return self.base._log_z() + self.log_weight

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.base._energy(x, t) - self.log_weight

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self.base._score(x, t, create_graph)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        energy, score = self.base._energy_and_score(x, t, create_graph)
        return energy - self.log_weight, score

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(-self.log_weight, [(1.0, program.lower(self.base))])

    def gaussian_form(self, forms: list) -> object | None:
        return forms[0].shifted(-self.log_weight)

    def __repr__(self) -> str:
        return f"{format_number(self.weight)} * {self.base.parenthesized(INVERT)}"


class Power(_Unary):
    """p̃^β (tempering, β = 1/T): E = β E_base, s = β s_base; ``~a`` is β = −1.

    The normaliser ∫ p̃^β is unknown in general (closed form for Gaussians via
    ``compile(..., closed_form=True)``), and there is no exact sampler.
    Canonical form: nested powers multiply, ``a ** 1`` is ``a``, ``a ** 0`` and
    ``one ** β`` are ``one``, and weights pass through as
    ``(w * a) ** β = w**β * a**β`` unless w**β underflows or overflows
    (``(1e-5 * a) ** 100`` stays as written).
    """

    symbol = "**"

    @classmethod
    def canonical(cls, base: EnergyModel, exponent: float) -> EnergyModel | None:
        from ebmalgebra.leaves import one

        exponent = validation.real(f"exponent of {base!r} ** beta", exponent)
        if _is_one(base) or exponent == 0.0:
            return one
        if exponent == 1.0:
            return base
        if isinstance(base, Weight):
            try:
                folded = _folded_weight(base.weight**exponent)
            except OverflowError:
                folded = None
            if folded is not None:
                return Weight(folded, cls(base.base, exponent))
        if type(base) is cls:
            return cls(base.base, exponent * base.exponent)
        return None

    def __init__(self, base: EnergyModel, exponent: float) -> None:
        super().__init__(base)
        self.exponent = validation.real(f"exponent of {base!r} ** beta", exponent)

    @property
    def passes_impropriety(self) -> bool:  # type: ignore[override]
        return self.exponent > 0

    def derive_capabilities(self) -> Capabilities:
        return Capabilities(has_energy=self.base.has_energy, has_score=self.base.has_score,
                            normalizer_known=False, can_sample=False)

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return INVERT if self.exponent == -1.0 else POWER

    @property
    def args(self) -> tuple:
        return (self.base, self.exponent)

    def params(self) -> dict[str, Any]:
        return {"exponent": self.exponent}

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability in ("energy", "score"):
            return self._first_missing(capability)
        return self._without_closed_forms(capability, "is tempered",
                                          "and ∫ p̃^β has no closed form in general")

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.exponent * self.base._energy(x, t)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self.exponent * self.base._score(x, t, create_graph)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        energy, score = self.base._energy_and_score(x, t, create_graph)
        return self.exponent * energy, self.exponent * score

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(0.0, [(self.exponent, program.lower(self.base))])

    def gaussian_form(self, forms: list) -> object | None:
        from ebmalgebra.quadratic import as_quadratic

        quadratic = as_quadratic(forms[0])
        return None if quadratic is None else quadratic.scaled(self.exponent)

    def sampling_exponent(self) -> float:
        return abs(self.exponent) * self.base.sampling_exponent()

    def __repr__(self) -> str:
        if self.exponent == -1.0:
            return f"~{self.base.parenthesized(ATOM)}"
        return f"{self.base.parenthesized(ATOM)} ** {format_number(self.exponent)}"


class Normalized(_Unary):
    """p̃ / Z: E = E_base + log Z, log Z of the result is 0.

    ``log_z`` defaults to the base's known log normaliser; give it explicitly
    (e.g. from :func:`ebmalgebra.estimate_log_z`) for models whose Z is unknown,
    with its standard error ``stderr`` when estimated. It is stored as a buffer,
    so it moves with ``.to()`` and is saved. Prints in the call form
    ``normalized(a, log_z=1.5)``, which :func:`~ebmalgebra.expression_parser.parse_expression`
    reads back.
    """

    symbol = "normalized"
    passes_impropriety = True

    def __init__(self, base: EnergyModel, log_z: float | Tensor | None = None,
                 stderr: float | None = None) -> None:
        super().__init__(base)
        self._given = log_z is not None
        self.log_z_stderr = None if stderr is None else validation.non_negative("stderr",
                                                                                stderr)
        if log_z is None:
            base.require("normalizer", "normalized() without log_z")
            value = base._log_z().detach()
        else:
            value = torch.as_tensor(validation.real("log_z", log_z), dtype=torch.float64)
        self.register_buffer("log_normalizer", value.reshape(()).double())

    def derive_capabilities(self) -> Capabilities:
        return Capabilities(has_energy=self.base.has_energy, has_score=self.base.has_score,
                            normalizer_known=True, can_sample=self.base.can_sample)

    @property
    def args(self) -> tuple:
        return (self.base, *self.params().values())

    def params(self) -> dict[str, Any]:
        return {"log_z": float(self.log_normalizer) if self._given else None,
                "stderr": self.log_z_stderr}

    def with_operands(self, operands: list[EnergyModel]) -> EnergyModel:
        (base,) = operands
        keep_default = not self._given and base.normalizer_known
        return Normalized(base, None if keep_default else float(self.log_normalizer),
                          self.log_z_stderr)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability == "normalizer":
            return None
        return self.base._why_not(capability)

    def _log_z(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.log_normalizer.device)

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.base._energy(x, t) + self.log_normalizer.to(x.dtype)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self.base._score(x, t, create_graph)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        energy, score = self.base._energy_and_score(x, t, create_graph)
        return energy + self.log_normalizer.to(x.dtype), score

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(program.buffer_value(self.log_normalizer),
                              [(1.0, program.lower(self.base))])

    def gaussian_form(self, forms: list) -> object | None:
        return forms[0].shifted(self.log_normalizer.double())

    def _explain_label(self) -> str:
        if self.log_z_stderr is None:
            return repr(self)
        return (f"{self!r}  (log Z = {float(self.log_normalizer):.4g} ± "
                f"{self.log_z_stderr:.2g}, estimated)")

    def __repr__(self) -> str:
        # The call form, as other operators print, which parse_expression reads back.
        if not self._given:
            return f"normalized({self.base!r})"
        return f"normalized({self.base!r}, log_z={format_number(float(self.log_normalizer))})"


# ------------------------------------------------------------------ operators
def product(*factors: EnergyModel) -> EnergyModel:
    """``a & b & ...``: the canonical :class:`Product` (flattened, ``one`` dropped)."""
    return Product(*factors)


def mixture(*components: EnergyModel) -> EnergyModel:
    """``a | b | ...``: the canonical :class:`Mixture` (flattened; one component is itself)."""
    return Mixture(*components)


def weighted(weight: float, model: EnergyModel) -> EnergyModel:
    """``w * a``: the canonical :class:`Weight` (nested weights multiply; ``1 * a`` is ``a``)."""
    return Weight(weight, model)


def power(model: EnergyModel, beta: float) -> EnergyModel:
    """``a ** beta``: the canonical :class:`Power` (nested powers multiply, ``a ** 1`` is
    ``a``, ``a ** 0`` is ``one``, ``(w * a) ** β = w**β * a**β``)."""
    return Power(model, beta)
