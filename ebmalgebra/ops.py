"""Composite nodes of the algebra and the operators that build them.

=============  =====================  ==============================  ===========================
syntax         density                energy                          score
=============  =====================  ==============================  ===========================
``a & b``      p̃_a · p̃_b              E_a + E_b                       s_a + s_b
``a | b``      p̃_a + p̃_b              −logsumexp(−E_a, −E_b)          softmax(−E)-weighted s
``w * a``      w · p̃_a                E_a − log w                     s_a
``a ** beta``  p̃_a^β                  β E_a                           β s_a
``~a``         1 / p̃_a                −E_a                            −s_a
=============  =====================  ==============================  ===========================

Nodes are immutable and canonical (SymPy-style): the operator functions
flatten nested products and mixtures, drop the identity ``one``, merge
nested weights and powers, and remove ``** 1`` and ``1 *``. Each node class
carries the one rule that derives its capabilities from its children.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebmalgebra.base import (
    Capabilities,
    EnergyModel,
    TimeLike,
    as_finite_float,
    check_same_event_shape,
    format_number,
)
from ebmalgebra.errors import CapabilityError, CompositionError

# Python precedence levels of the printed forms.
_MIXTURE, _PRODUCT, _WEIGHT, _INVERT, _POWER, _ATOM = 1, 2, 3, 4, 5, 6


class _Composite(EnergyModel):
    """Shared plumbing of composite nodes: ordered children, shape, freezing."""

    def __init__(self, children: tuple[EnergyModel, ...], operator: str) -> None:
        super().__init__()
        for child in children:
            if not isinstance(child, EnergyModel):
                raise CompositionError(
                    f"{operator} expects EnergyModels, got {type(child).__name__}"
                )
        self._event_shape = check_same_event_shape(children, operator)
        self._children = nn.ModuleList(children)

    @property
    def event_shape(self) -> torch.Size | None:
        return self._event_shape

    def operands(self) -> tuple[EnergyModel, ...]:
        return tuple(self._children)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def args(self) -> tuple:
        return self.operands()

    def _first_missing(self, capability: str) -> tuple[EnergyModel, str] | None:
        for child in self._children:
            blame = child._why_not(capability)
            if blame is not None:
                return blame
        return None

    def _why_not_without_closed_forms(self, capability: str, kind: str,
                                      no_closed_form: str) -> tuple[EnergyModel, str] | None:
        """``_why_not`` of a node whose energy and score follow from its children's but
        whose normaliser and exact sampler do not (products, powers): ``kind`` says
        what the node is, ``no_closed_form`` why its normaliser is unknown."""
        if capability in ("energy", "score"):
            return self._first_missing(capability)
        if capability == "normalizer":
            return self._first_missing("energy") or (
                self,
                f"{kind}, {no_closed_form}; estimate it with ebmalgebra.normalize(...) (or "
                "compile(..., closed_form=True) for Gaussians)",
            )
        return (self, f"{kind} and has no exact sampler; draw MCMC samples with "
                      "ebmalgebra.sample(model, sampler=...)")


class Product(_Composite):
    """Product of experts p̃ = Π p̃_i, E = Σ E_i, s = Σ s_i.

    Nested products flatten: ``Product(Product(a, b), c)`` has factors a, b, c.
    The normaliser of a product has no closed form in general, and there is no
    exact sampler (use MCMC, or ``compile(..., closed_form=True)`` for Gaussians).
    """

    precedence = _PRODUCT

    def __init__(self, *factors: EnergyModel) -> None:
        flat: list[EnergyModel] = []
        for factor in factors:
            flat.extend(factor.operands() if isinstance(factor, Product) else (factor,))
        if len(flat) < 2:
            raise CompositionError("Product needs at least two factors; use `a & b`")
        super().__init__(tuple(flat), "&")
        caps = [c.capabilities for c in flat]
        self._capabilities = Capabilities(
            has_energy=all(c.has_energy for c in caps),
            has_score=all(c.has_score for c in caps),
            normalizer_known=False,
            can_sample=False,
        )
        self._freeze()

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self._why_not_without_closed_forms(capability, "is a product of experts",
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

    def __repr__(self) -> str:
        return " & ".join(c.parenthesized(_PRODUCT + 1) for c in self._children)


class Mixture(_Composite):
    """Sum of measures p̃ = Σ p̃_i, E = −logsumexp_i(−E_i), s = Σ softmax(−E)_i s_i.

    Because ``|`` adds unnormalised densities, component i carries weight
    w_i·Z_i. Only when every component is normalised (log Z known) does
    ``0.25 * a | 0.75 * b`` mean "a with probability 0.25"; see
    :meth:`component_weights`. Every component needs an energy.
    """

    precedence = _MIXTURE

    def __init__(self, *components: EnergyModel) -> None:
        flat: list[EnergyModel] = []
        for component in components:
            flat.extend(component.operands() if isinstance(component, Mixture) else (component,))
        if len(flat) < 2:
            raise CompositionError("Mixture needs at least two components; use `a | b`")
        for component in flat:
            blame = component._why_not("energy")
            if blame is not None:
                culprit, reason = blame
                raise CompositionError(
                    f"mixture needs energies of all components, but '{culprit!r}' {reason}"
                )
        super().__init__(tuple(flat), "|")
        caps = [c.capabilities for c in flat]
        known = all(c.normalizer_known for c in caps)
        self._capabilities = Capabilities(
            has_energy=True,
            has_score=all(c.has_score for c in caps),
            normalizer_known=known,
            can_sample=known and all(c.can_sample for c in caps),
        )
        self._freeze()

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability == "sample":
            return self._first_missing("normalizer") or self._first_missing("sample")
        return self._first_missing(capability)

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

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        energies = torch.stack([child._energy(x, t) for child in self._children])
        return -torch.logsumexp(-energies, dim=0)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        pairs = [child._energy_and_score(x, t, create_graph) for child in self._children]
        energies = torch.stack([p[0] for p in pairs])
        scores = torch.stack([p[1] for p in pairs])
        responsibilities = torch.softmax(-energies, dim=0)
        shape = responsibilities.shape + (1,) * (scores.dim() - 2)
        score = (responsibilities.reshape(shape) * scores).sum(0)
        return -torch.logsumexp(-energies, dim=0), score

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

    def __repr__(self) -> str:
        return " | ".join(c.parenthesized(_MIXTURE + 1) for c in self._children)

    def _explain_label(self) -> str:
        try:
            weights = ", ".join(f"{w:.4g}" for w in self.component_weights().tolist())
            return f"{self!r}  (component weights {weights})"
        except CapabilityError:
            return f"{self!r}  (component weights w_i·Z_i: unknown, some Z_i unknown)"


class _Unary(_Composite):
    """A node with one child and numbers."""

    def __init__(self, base: EnergyModel, operator: str) -> None:
        super().__init__((base,), operator)
        self._capabilities = base.capabilities

    @property
    def base(self) -> EnergyModel:
        return self._children[0]

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self.base._why_not(capability)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.base._sample(n, generator)


class Weight(_Unary):
    """w · p̃: E = E_base − log w, same score; log Z = log Z_base + log w.

    ``weight`` must be a positive finite number. Weights give mixture
    components their mass: ``0.25 * a | 0.75 * b``.
    """

    precedence = _WEIGHT

    def __init__(self, weight: float, base: EnergyModel) -> None:
        weight = as_finite_float(weight, "weight")
        if weight <= 0:
            raise CompositionError(f"weight must be positive, got {format_number(weight)} "
                                   f"in {format_number(weight)} * {base!r}")
        super().__init__(base, "*")
        self.weight = weight
        self.log_weight = math.log(weight)
        self._freeze()

    @property
    def args(self) -> tuple:
        return (self.weight, self.base)

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

    def __repr__(self) -> str:
        return f"{format_number(self.weight)} * {self.base.parenthesized(_INVERT)}"


class Power(_Unary):
    """p̃^β (tempering, β = 1/T): E = β E_base, s = β s_base; ``~a`` is β = −1.

    The normaliser ∫ p̃^β is unknown in general (closed form for Gaussians via
    ``compile(..., closed_form=True)``), and there is no exact sampler.
    """

    def __init__(self, base: EnergyModel, exponent: float) -> None:
        exponent = as_finite_float(exponent, f"exponent of {base!r} ** beta")
        super().__init__(base, "**")
        self.exponent = exponent
        self._capabilities = Capabilities(
            has_energy=base.has_energy,
            has_score=base.has_score,
            normalizer_known=False,
            can_sample=False,
        )
        self._freeze()

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return _INVERT if self.exponent == -1.0 else _POWER

    @property
    def args(self) -> tuple:
        return (self.base, self.exponent)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self._why_not_without_closed_forms(capability, "is tempered",
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

    def __repr__(self) -> str:
        if self.exponent == -1.0:
            return f"~{self.base.parenthesized(_ATOM)}"
        return f"{self.base.parenthesized(_ATOM)} ** {format_number(self.exponent)}"


class Normalized(_Unary):
    """p̃ / Z: E = E_base + log Z, log Z of the result is 0.

    ``log_z`` defaults to the base's known log normaliser; give it explicitly
    (e.g. from :func:`ebmalgebra.estimate_log_z`) for models whose Z is unknown,
    with its standard error ``stderr`` when estimated. It is stored as a buffer,
    so it moves with ``.to()`` and is saved.
    """

    def __init__(self, base: EnergyModel, log_z: float | Tensor | None = None,
                 stderr: float | None = None) -> None:
        super().__init__(base, "normalized")
        self._given = log_z is not None
        self.log_z_stderr = None if stderr is None else as_finite_float(stderr, "stderr")
        if log_z is None:
            base.require("normalizer", "normalized() without log_z")
            value = base._log_z().detach()
        else:
            value = torch.as_tensor(as_finite_float(log_z, "log_z"), dtype=torch.float64)
        self.register_buffer("log_normalizer", value.reshape(()).double())
        self._capabilities = Capabilities(
            has_energy=base.has_energy,
            has_score=base.has_score,
            normalizer_known=True,
            can_sample=base.can_sample,
        )
        self._freeze()

    @property
    def args(self) -> tuple:
        return (self.base, float(self.log_normalizer) if self._given else None,
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

    def _explain_label(self) -> str:
        if self.log_z_stderr is None:
            return repr(self)
        return (f"{self!r}  (log Z = {float(self.log_normalizer):.4g} ± "
                f"{self.log_z_stderr:.2g}, estimated)")

    def __repr__(self) -> str:
        base = self.base.parenthesized(_ATOM)
        if not self._given:
            return f"{base}.normalized()"
        return f"{base}.normalized(log_z={format_number(float(self.log_normalizer))})"


# ------------------------------------------------------------------ operators
def product(*factors: EnergyModel) -> EnergyModel:
    """``a & b & ...``: flattened, with the identity ``one`` dropped."""
    from ebmalgebra.leaves import One

    kept = [f for f in factors if not isinstance(f, One)]
    if not kept:
        return factors[0]
    check_same_event_shape(tuple(kept), "&")
    return kept[0] if len(kept) == 1 else Product(*kept)


def mixture(*components: EnergyModel) -> EnergyModel:
    """``a | b | ...``: flattened (a mixture of one component is that component)."""
    return components[0] if len(components) == 1 else Mixture(*components)


def weighted(weight: float, model: EnergyModel) -> EnergyModel:
    """``w * a``: nested weights multiply; ``1 * a`` is ``a``."""
    weight = as_finite_float(weight, "weight")
    if weight <= 0:
        raise CompositionError(f"weight must be positive, got {format_number(weight)} "
                               f"in {format_number(weight)} * {model!r}")
    if isinstance(model, Weight):
        weight, model = weight * model.weight, model.base
    return model if weight == 1.0 else Weight(weight, model)


def power(model: EnergyModel, beta: float) -> EnergyModel:
    """``a ** beta``: nested powers multiply, ``a ** 1`` is ``a``, ``a ** 0`` is ``one``.

    Weights pass through as ``(w * a) ** β = w**β * a**β``, keeping the tree canonical.
    """
    from ebmalgebra.leaves import One, one

    beta = as_finite_float(beta, f"exponent of {model!r} ** beta")
    if isinstance(model, One) or beta == 0.0:
        return one
    if isinstance(model, Weight):
        return weighted(model.weight**beta, power(model.base, beta))
    if isinstance(model, Power):
        beta, model = beta * model.exponent, model.base
        if beta == 0.0:
            return one
    return model if beta == 1.0 else Power(model, beta)
