"""The compiled program: an expression folded into arithmetic over its distinct leaves.

``Program.build(expr)`` asks each node for its lowering (``node.lower(builder)``,
DESIGN §10) and folds the result:

* weights and temperatures become coefficients, so a product of powers is the
  affine form E = c + Σ_l β_l E_l over the distinct leaves l (:class:`Affine`);
* mixtures become log-sum-exp nodes, E = −logsumexp_j(−(E_j + o_j)), with
  weights folded into the offsets o_j (:class:`LogSumExp`);
* other operators that combine their children's energies become
  :class:`Apply` nodes, E = f(E_1, …, E_k);
* each distinct leaf (or node that evaluates itself) is one :class:`LeafRef`.

Every program node gives its energy together with the coefficients
c_l = ∂E/∂E_l of the leaves under it (:meth:`energy_and_coefficients`), which
is all :mod:`ebmalgebra.evaluator` needs for the score s = Σ_l c_l s_l.
:func:`format_program` prints a program as a formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel, format_number
from ebmalgebra.operator import combine_with_coefficients, logsumexp_and_softmax

__all__ = ["ANALYTIC", "AUTOGRAD", "SCORE_ONLY", "Affine", "Apply", "LeafRef", "LogSumExp",
           "Program", "ProgramBuilder", "ProgramNode", "format_program", "leaf_kind"]

Coefficients = dict[int, float | Tensor]

ANALYTIC, AUTOGRAD, SCORE_ONLY = "analytic", "autograd", "score-only"
"""How the evaluator gets a leaf's score: from the leaf itself, by one shared reverse
pass over the autograd leaves, or as the only thing a score-only leaf has."""


def leaf_kind(leaf: EnergyModel) -> str:
    """:data:`ANALYTIC`, :data:`AUTOGRAD` or :data:`SCORE_ONLY` for a program leaf."""
    if not leaf.has_energy:
        return SCORE_ONLY
    return ANALYTIC if leaf.analytic_score else AUTOGRAD


def _scale(value: float | Tensor, factor: float | Tensor) -> float | Tensor:
    """``value * factor``, skipping the op when either is the number 1 (on small batches
    each tensor op costs a dispatch whatever its size)."""
    if isinstance(factor, float) and factor == 1.0:
        return value
    if isinstance(value, float) and value == 1.0:
        return factor
    return value * factor


def _accumulate(into: Coefficients, coefficients: Coefficients, factor: float | Tensor) -> None:
    for index, value in coefficients.items():
        value = _scale(value, factor)
        into[index] = into[index] + value if index in into else value


@dataclass(frozen=True)
class LeafRef:
    """The energy of distinct leaf number ``index``."""

    index: int

    def energy_and_coefficients(self, energies: list, like: Tensor, coefficients: bool = True
                                ) -> tuple[Tensor | None, Coefficients]:
        """E of this node (``None`` when a score-only leaf is involved) and c_l = ∂E/∂E_l
        (an empty dict when ``coefficients`` is false). ``like`` gives the batch size,
        dtype and device of a zero energy."""
        return energies[self.index], {self.index: 1.0}

    def render(self, names: list[str]) -> str:
        return f"E_{names[self.index]}"


@dataclass(frozen=True)
class Affine:
    """E = constant + Σ coefficient · E_term."""

    constant: float
    terms: tuple[tuple[float, ProgramNode], ...]

    def energy_and_coefficients(self, energies: list, like: Tensor, coefficients: bool = True
                                ) -> tuple[Tensor | None, Coefficients]:
        wanted = coefficients
        energy, missing = None, False
        coefficients: Coefficients = {}
        for factor, sub in self.terms:
            sub_energy, sub_coefficients = sub.energy_and_coefficients(energies, like, wanted)
            _accumulate(coefficients, sub_coefficients, factor)
            if sub_energy is None:
                missing = True
            elif not missing:
                term = sub_energy if factor == 1.0 else factor * sub_energy
                energy = term if energy is None else energy + term
        if missing:
            return None, coefficients
        energy = like.new_zeros(like.shape[0]) if energy is None else energy
        return (energy + self.constant if self.constant != 0.0 else energy), coefficients

    def render(self, names: list[str]) -> str:
        parts = [_signed(c, f"[{sub.render(names)}]" if isinstance(sub, LogSumExp)
                         else sub.render(names), i == 0)
                 for i, (c, sub) in enumerate(self.terms)]
        if self.constant:
            parts.append(_signed(self.constant, "", not parts))
        return " ".join(parts) or "0"


@dataclass(frozen=True)
class LogSumExp:
    """E = −logsumexp_j(−(E_j + offset_j)) over ``terms = ((offset_j, node_j), ...)``;
    c_l = Σ_j softmax_j · c_l^{(j)}, with softmax_j = 0 where every E_j is +∞
    (:func:`~ebmalgebra.operator.logsumexp_and_softmax`)."""

    terms: tuple[tuple[float, ProgramNode], ...]

    def energy_and_coefficients(self, energies: list, like: Tensor, coefficients: bool = True
                                ) -> tuple[Tensor | None, Coefficients]:
        parts = [sub.energy_and_coefficients(energies, like, coefficients)
                 for _, sub in self.terms]
        logits = torch.stack([-energy if offset == 0.0 else (-offset) - energy
                              for (offset, _), (energy, _) in zip(self.terms, parts,
                                                                  strict=True)])
        found: Coefficients = {}
        if not coefficients:
            return -torch.logsumexp(logits, dim=0), found
        log_total, weights = logsumexp_and_softmax(logits)
        for weight, (_, sub_coefficients) in zip(weights, parts, strict=True):
            _accumulate(found, sub_coefficients, weight)
        return -log_total, found

    def render(self, names: list[str]) -> str:
        arguments = []
        for offset, sub in self.terms:
            inner = sub.render(names)
            if offset:
                inner = f"{inner} {_signed(offset, '', False)}"
            simple = isinstance(sub, LeafRef) and not offset
            arguments.append(f"−{inner}" if simple else f"−({inner})")
        return f"−logsumexp({', '.join(arguments)})"


@dataclass(frozen=True)
class Apply:
    """E = function([E_1, …, E_k]) of sub-programs, per sample; c_l by the chain rule
    with ∂f/∂E_j from one vector-Jacobian product."""

    # Compared too: two nodes of one operator type with other numbers (smin at τ = 1 and
    # at τ = 2) have other functions (bound methods of different nodes) and must not merge.
    function: Callable[[list[Tensor]], Tensor]
    terms: tuple[ProgramNode, ...]
    label: str

    def energy_and_coefficients(self, energies: list, like: Tensor, coefficients: bool = True
                                ) -> tuple[Tensor | None, Coefficients]:
        parts = [sub.energy_and_coefficients(energies, like, coefficients)
                 for sub in self.terms]
        sub_energies = [e for e, _ in parts]
        if not coefficients:
            return self.function(sub_energies), {}
        energy, derivatives = combine_with_coefficients(self.function, _separate(sub_energies))
        found: Coefficients = {}
        for derivative, (_, sub_coefficients) in zip(derivatives, parts, strict=True):
            _accumulate(found, sub_coefficients, derivative)
        return energy, found

    def render(self, names: list[str]) -> str:
        return f"{self.label}({', '.join(sub.render(names) for sub in self.terms)})"


def _separate(energies: list[Tensor]) -> list[Tensor]:
    """Each energy as a fresh view, so that the reverse pass for ∂f/∂E_j follows E_j's
    own edge only: a leaf's energy listed twice (``without(a, a, r)``), or also inside
    another term (``without(a, a ** 2, r)``), otherwise collects both derivatives."""
    with torch.enable_grad():  # a view taken under no_grad would not be a graph node
        return [energy.view_as(energy) if energy.requires_grad else energy
                for energy in energies]


ProgramNode = LeafRef | Affine | LogSumExp | Apply


@dataclass(frozen=True, eq=False)
class FoldedBuffer:
    """A buffer whose value a program folded into a constant, and its version counter
    then (bumped by in-place writes, such as ``load_state_dict``'s copies; expression
    nodes refuse new buffers)."""

    tensor: Tensor
    version: int

    def changed(self) -> bool:
        """Whether the buffer was written since it was folded."""
        return self.tensor._version != self.version


class ProgramBuilder:
    """What ``node.lower(builder)`` builds with: the distinct leaves and folding
    constructors for program nodes."""

    def __init__(self) -> None:
        self.leaves: list[EnergyModel] = []
        self.folded: list[FoldedBuffer] = []
        self._index: dict[int, int] = {}

    def buffer_value(self, buffer: Tensor) -> float:
        """The value of a one-element ``buffer`` as a constant of the program, recorded
        so that the program can tell when the buffer is written (:meth:`Program.stale`)."""
        self.folded.append(FoldedBuffer(buffer, buffer._version))
        return float(buffer)

    def lower(self, model: EnergyModel) -> ProgramNode:
        """The program of ``model``, by its own ``lower``."""
        return model.lower(self)

    def leaf(self, model: EnergyModel) -> LeafRef:
        """``model`` evaluated by itself, once per call however often it appears."""
        key = id(model)
        if key not in self._index:
            self._index[key] = len(self.leaves)
            self.leaves.append(model)
        return LeafRef(self._index[key])

    @staticmethod
    def affine(constant: float, terms: list[tuple[float, ProgramNode]]) -> ProgramNode:
        """constant + Σ coefficient · node, with nested affine forms merged."""
        merged: dict[object, float] = {}
        for coefficient, node in terms:
            if isinstance(node, Affine):
                constant += coefficient * node.constant
                for sub_coefficient, sub in node.terms:
                    merged[sub] = merged.get(sub, 0.0) + coefficient * sub_coefficient
            else:
                merged[node] = merged.get(node, 0.0) + coefficient
        kept = tuple((c, n) for n, c in merged.items() if c != 0.0)
        if constant == 0.0 and len(kept) == 1 and kept[0][0] == 1.0:
            return kept[0][1]
        return Affine(constant, kept)

    @staticmethod
    def log_sum_exp(terms: list[tuple[float, ProgramNode]]) -> ProgramNode:
        """−logsumexp(−(E_j + offset_j)), with shifts and nested log-sum-exps merged."""
        flat: list[tuple[float, ProgramNode]] = []
        for offset, node in terms:
            if isinstance(node, Affine) and len(node.terms) == 1 and node.terms[0][0] == 1.0:
                offset, node = offset + node.constant, node.terms[0][1]
            if isinstance(node, LogSumExp):
                flat.extend((offset + o, n) for o, n in node.terms)
            else:
                flat.append((offset, node))
        return LogSumExp(tuple(flat))

    @staticmethod
    def apply(function: Callable[[list[Tensor]], Tensor], terms: list[ProgramNode],
              label: str) -> ProgramNode:
        """function(E_1, …, E_k) of the sub-programs ``terms``."""
        return Apply(function, tuple(terms), label)


def _linear_form(root: ProgramNode, n_leaves: int) -> tuple[float, tuple[float, ...]] | None:
    """(c, (β_l)) with E = c + Σ β_l E_l when the program is affine in the leaves."""
    coefficients = [0.0] * n_leaves
    if isinstance(root, LeafRef):
        coefficients[root.index] = 1.0
        return 0.0, tuple(coefficients)
    if not isinstance(root, Affine) or not all(isinstance(node, LeafRef)
                                               for _, node in root.terms):
        return None
    for coefficient, node in root.terms:
        coefficients[node.index] += coefficient
    return root.constant, tuple(coefficients)


@dataclass(frozen=True, eq=False)
class Program:
    """A lowered expression.

    Attributes:
        root: the program node whose energy is E(x).
        leaves: the distinct leaves, ``LeafRef(i)`` is ``leaves[i]``.
        kinds: :func:`leaf_kind` of each leaf.
        linear: ``(c, (β_l))`` when E = c + Σ β_l E_l (no mixtures or other
            non-linear nodes), else ``None``: then the coefficients are constants.
        sole_kind: the kind of the one leaf when E is that leaf's energy alone
            (E = E_0), else ``None``: the evaluator's shortcut, decided once here (a
            plain attribute, which ``torch.compile`` reads without tracing code).
        folded: the buffers folded into constants (a normalised node's log Z).
    """

    root: ProgramNode
    leaves: tuple[EnergyModel, ...]
    kinds: tuple[str, ...]
    linear: tuple[float, tuple[float, ...]] | None
    folded: tuple[FoldedBuffer, ...] = ()
    sole_kind: str | None = field(init=False)

    def __post_init__(self) -> None:
        sole = len(self.leaves) == 1 and self.linear == (0.0, (1.0,))
        object.__setattr__(self, "sole_kind", self.kinds[0] if sole else None)

    @classmethod
    def build(cls, expr: EnergyModel) -> Program:
        builder = ProgramBuilder()
        root = builder.lower(expr)
        leaves = tuple(builder.leaves)
        return cls(root, leaves, tuple(leaf_kind(leaf) for leaf in leaves),
                   _linear_form(root, len(leaves)), tuple(builder.folded))

    def stale(self) -> bool:
        """Whether a buffer folded into the program has changed since it was built."""
        return any(buffer.changed() for buffer in self.folded)

    @property
    def autograd(self) -> tuple[int, ...]:
        """Indices of the leaves whose scores come from the shared reverse pass."""
        return tuple(i for i, kind in enumerate(self.kinds) if kind == AUTOGRAD)

    @property
    def score_only(self) -> bool:
        return SCORE_ONLY in self.kinds


    def energy_and_coefficients(self, energies: list, like: Tensor
                                ) -> tuple[Tensor | None, Coefficients]:
        """E and c_l = ∂E/∂E_l from the leaf energies (``None`` for score-only leaves);
        ``like`` gives the batch size, dtype and device of a zero energy."""
        return self.root.energy_and_coefficients(energies, like)

    def render(self) -> str:
        """The program as a formula, e.g. ``E(x) = E_a + 0.5 E_b − 0.6931``."""
        names = [repr(leaf) for leaf in self.leaves]
        noise = any(getattr(leaf, "noise_conditioned", False) for leaf in self.leaves)
        return f"E{'(x, σ)' if noise else '(x)'} = {self.root.render(names)}"


def _signed(value: float, text: str, first: bool) -> str:
    size = format_number(abs(value))
    size = size if len(size) <= 8 else f"{abs(value):.4g}"
    factor = "" if abs(value) == 1.0 and text else size
    body = f"{factor} {text}".strip()
    if first:
        return f"−{body}" if value < 0 else body
    return f"{'−' if value < 0 else '+'} {body}"


def format_program(model: EnergyModel) -> str:
    """The compiled energy as a formula, e.g. ``E(x, σ) = E_glasses + 0.75 E_face − 0.75 E_hat``.

    Weights and temperatures are folded into coefficients (DESIGN §3); a
    mixture shows as ``−logsumexp(−E_a, −E_b + c)``.
    """
    return Program.build(model).render()
