"""Compile an expression into one fused ``energy_and_score`` function.

``compile(expr)`` folds the tree once (DESIGN §3):

* weights and temperatures become coefficients, so a product of powers is
  the affine form E = c + Σ_l β_l E_l over the distinct leaves l;
* mixtures become log-sum-exp nodes, E = −logsumexp_j(−(E_j + o_j)), with
  weights folded into the offsets o_j;
* each distinct leaf is evaluated once per call, however often the
  expression mentions it;
* the score is assembled by the chain rule, s = Σ_l c_l(x) s_l(x) with
  c_l = ∂E/∂E_l: leaves with analytic scores contribute directly, and all
  autograd leaves share one reverse pass of Σ_l c_l E_l.

With ``closed_form=True`` Gaussian sub-expressions are first rewritten to
Gaussians / Gaussian mixtures with exact log Z and sampling
(:mod:`ebmalgebra.rewrites`). With ``backend="inductor"`` the fused function
is also compiled by ``torch.compile`` (:mod:`ebmalgebra.jit`); inside any
compiled region the reverse pass goes through ``torch.func`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike
from ebmalgebra.leaves import One
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight


@dataclass(frozen=True)
class LeafRef:
    """The energy of distinct leaf number ``index``."""

    index: int


@dataclass(frozen=True)
class Affine:
    """E = constant + Σ coefficient · E_term."""

    constant: float
    terms: tuple[tuple[float, object], ...]


@dataclass(frozen=True)
class LogSumExp:
    """E = −logsumexp_j(−(E_j + offset_j)) over ``terms = ((offset_j, node_j), ...)``."""

    terms: tuple[tuple[float, object], ...]


Program = LeafRef | Affine | LogSumExp

_ANALYTIC, _AUTOGRAD, _SCORE_ONLY = "analytic", "autograd", "score-only"


def _leaf_kind(leaf: EnergyModel) -> str:
    if not leaf.has_energy:
        return _SCORE_ONLY
    return _ANALYTIC if getattr(leaf, "analytic_score", False) else _AUTOGRAD


class _Folder:
    """Turns an expression tree into a :data:`Program` over its distinct leaves."""

    def __init__(self) -> None:
        self.leaves: list[EnergyModel] = []
        self._index: dict[int, int] = {}

    def fold(self, model: EnergyModel) -> Program:
        if isinstance(model, CompiledEnergy):
            return self.fold(model.expr)
        if isinstance(model, Product):
            return self._affine(0.0, [(1.0, self.fold(c)) for c in model.operands()])
        if isinstance(model, Weight):
            return self._affine(-model.log_weight, [(1.0, self.fold(model.base))])
        if isinstance(model, Power):
            return self._affine(0.0, [(model.exponent, self.fold(model.base))])
        if isinstance(model, Normalized):
            return self._affine(float(model.log_normalizer), [(1.0, self.fold(model.base))])
        if isinstance(model, Mixture):
            return self._log_sum_exp([(0.0, self.fold(c)) for c in model.operands()])
        if isinstance(model, One):
            return Affine(0.0, ())
        if model.operands():
            raise TypeError(f"compile: unknown composite node {type(model).__name__}")
        key = id(model)
        if key not in self._index:
            self._index[key] = len(self.leaves)
            self.leaves.append(model)
        return LeafRef(self._index[key])

    @staticmethod
    def _affine(constant: float, terms: list[tuple[float, Program]]) -> Program:
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
    def _log_sum_exp(terms: list[tuple[float, Program]]) -> Program:
        flat: list[tuple[float, Program]] = []
        for offset, node in terms:
            if isinstance(node, Affine) and len(node.terms) == 1 and node.terms[0][0] == 1.0:
                offset, node = offset + node.constant, node.terms[0][1]
            if isinstance(node, LogSumExp):
                flat.extend((offset + o, n) for o, n in node.terms)
            else:
                flat.append((offset, node))
        return LogSumExp(tuple(flat))


def _has_log_sum_exp(node: Program) -> bool:
    if isinstance(node, LogSumExp):
        return True
    return isinstance(node, Affine) and any(_has_log_sum_exp(n) for _, n in node.terms)


class CompiledEnergy(EnergyModel):
    """A compiled expression: same API as any model, one fused evaluation per call.

    Attributes:
        expr: the expression being evaluated (after closed-form rewrites).
        source: the expression as given.
        program: the folded form (``LeafRef`` / ``Affine`` / ``LogSumExp`` nodes).
        leaf_models: the distinct leaves, each evaluated once per call.
        backend: ``"eager"``, or ``"inductor"`` for :class:`ebmalgebra.jit.InductorEnergy`.
    """

    backend = "eager"

    def __init__(self, expr: EnergyModel, *, closed_form: bool = False) -> None:
        super().__init__()
        if not isinstance(expr, EnergyModel):
            raise TypeError(f"compile expects an EnergyModel, got {type(expr).__name__}")
        source = expr
        if closed_form:
            from ebmalgebra.rewrites import rewrite_closed_forms

            expr = rewrite_closed_forms(expr)
        self.expr = expr
        # The source is for printing and re-compiling only; it is not evaluated, so it is
        # not registered (state_dict keys stay unique).
        object.__setattr__(self, "_source", source)
        self.closed_form = closed_form
        folder = _Folder()
        self.program: Program = folder.fold(expr)
        self.leaf_models: tuple[EnergyModel, ...] = tuple(folder.leaves)
        self._kinds = tuple(_leaf_kind(leaf) for leaf in self.leaf_models)
        self._linear = None if _has_log_sum_exp(self.program) else self._linear_form()
        # Leaves without trainable parameters build no autograd graph on plain inputs,
        # so the no-grad context (a few µs per call) is only entered when it saves work.
        self._needs_no_grad = any(p.requires_grad for p in expr.parameters())
        self._score_only = _SCORE_ONLY in self._kinds
        # A plain attribute, not a registered submodule (state_dict keys stay unique).
        object.__setattr__(self, "_single_analytic", self.leaf_models[0] if isinstance(
            self.program, LeafRef) and self._kinds[0] == _ANALYTIC else None)
        self._freeze()

    def _linear_form(self) -> tuple[float, tuple[float, ...]]:
        """(c, (β_l)) with E = c + Σ β_l E_l, for programs without mixtures."""
        coefficients = [0.0] * len(self.leaf_models)
        if isinstance(self.program, LeafRef):
            coefficients[self.program.index] = 1.0
            return 0.0, tuple(coefficients)
        for coefficient, node in self.program.terms:
            coefficients[node.index] += coefficient
        return self.program.constant, tuple(coefficients)

    # ------------------------------------------------------------------ facts
    @property
    def source(self) -> EnergyModel:
        return self._source

    @property
    def event_shape(self) -> torch.Size | None:
        return self.expr.event_shape

    @property
    def capabilities(self) -> Capabilities:
        return self.expr.capabilities

    @property
    def args(self) -> tuple:
        return (self._source,)

    def operands(self) -> tuple[EnergyModel, ...]:
        return (self.expr,)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self.expr._why_not(capability)

    def _log_z(self) -> Tensor:
        return self.expr._log_z()

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.expr._sample(n, generator)

    def __repr__(self) -> str:
        return f"compile({self._source!r})"

    # ------------------------------------------------------------- evaluation
    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        if torch.compiler.is_compiling():
            # Without the id()-keyed cache below, which torch.compile would guard on.
            from ebmalgebra.jit import traced_energy

            return traced_energy(self, x, t)
        energies = [leaf._energy(x, t) if kind != _SCORE_ONLY else None
                    for leaf, kind in zip(self.leaf_models, self._kinds, strict=True)]
        return self._forward(self.program, energies, x.new_zeros(x.shape[0]), {})

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._evaluate(x, t, create_graph)[1]

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, t, create_graph)

    def _evaluate(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor | None, Tensor]:
        if torch.compiler.is_compiling():
            # torch.compile cannot trace torch.autograd.grad; torch.func.vjp it can.
            from ebmalgebra.jit import traced_energy_and_score

            return traced_energy_and_score(self, x, t, create_graph)
        if self._single_analytic is not None:
            # The whole expression is one analytic leaf: no bookkeeping at all.
            energy, score = self._single_analytic._energy_and_score(x, t, create_graph)
            return (energy, score) if create_graph else (energy.detach(), score.detach())
        if self._linear is not None and not (self._needs_no_grad and not create_graph):
            return self._evaluate_linear(x, t, create_graph)
        return self._evaluate_general(x, t, create_graph)

    def _evaluate_linear(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor | None, Tensor]:
        """E = c + Σ β_l E_l, s = Σ β_l s_l: the lean path for products of powers."""
        constant, coefficients = self._linear
        energy = score = autograd_total = None
        inputs = x
        grad_mode = torch.is_grad_enabled()
        try:
            for leaf, kind, beta in zip(self.leaf_models, self._kinds, coefficients,
                                        strict=True):
                if beta == 0.0:
                    continue
                if kind == _AUTOGRAD:
                    if autograd_total is None:
                        torch.set_grad_enabled(True)
                        if not (create_graph and x.requires_grad):
                            inputs = x.detach().requires_grad_(True)
                    term = leaf._energy(inputs, t)
                    term = term if beta == 1.0 else beta * term
                    autograd_total = term if autograd_total is None else autograd_total + term
                    energy = term if energy is None else energy + term
                    continue
                if kind == _SCORE_ONLY:
                    leaf_energy, leaf_score = None, leaf._score(x, t, create_graph)
                else:
                    leaf_energy, leaf_score = leaf._energy_and_score(x, t, create_graph)
                if beta != 1.0:
                    leaf_score = beta * leaf_score
                    leaf_energy = None if leaf_energy is None else beta * leaf_energy
                score = leaf_score if score is None else score + leaf_score
                if leaf_energy is not None:
                    energy = leaf_energy if energy is None else energy + leaf_energy
            if autograd_total is not None:
                grad = _grad(autograd_total.sum(), inputs, create_graph)
                score = -grad if score is None else score - grad
        finally:
            torch.set_grad_enabled(grad_mode)
        score = torch.zeros_like(x) if score is None else score
        if self._score_only:
            energy = None
        else:
            energy = x.new_zeros(x.shape[0]) if energy is None else energy
            energy = energy + constant if constant != 0.0 else energy
        if not create_graph:
            energy = None if energy is None else energy.detach()
            score = score.detach()
        return energy, score

    def _evaluate_general(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Energy (``None`` if some leaf is score-only) and score, each leaf evaluated once."""
        n = len(self.leaf_models)
        energies: list[Tensor | None] = [None] * n
        scores: list[Tensor | None] = [None] * n
        with torch.set_grad_enabled(create_graph):
            for i, (leaf, kind) in enumerate(zip(self.leaf_models, self._kinds, strict=True)):
                if kind == _ANALYTIC:
                    energies[i], scores[i] = leaf._energy_and_score(x, t, create_graph)
                elif kind == _SCORE_ONLY:
                    scores[i] = leaf._score(x, t, create_graph)
        autograd = [i for i, kind in enumerate(self._kinds) if kind == _AUTOGRAD]
        inputs = x
        if autograd:
            with torch.enable_grad():
                if not (create_graph and x.requires_grad):
                    inputs = x.detach().requires_grad_(True)
                for i in autograd:
                    energies[i] = self.leaf_models[i]._energy(inputs, t)
        with torch.set_grad_enabled(create_graph):
            cache: dict[int, Tensor] = {}
            energy = self._forward(self.program, energies, x.new_zeros(x.shape[0]), cache)
            if self._linear is not None:
                coefficients: list = list(self._linear[1])
            else:
                coefficients = [0.0] * n
                self._backward(self.program, 1.0, cache, coefficients)
            score = self._combine_scores(x, inputs, autograd, energies, scores, coefficients,
                                         create_graph)
        if not create_graph:
            energy = None if energy is None else energy.detach()
            score = score.detach()
        return energy, score

    @staticmethod
    def _combine_scores(x: Tensor, inputs: Tensor, autograd: list[int], energies: list,
                        scores: list, coefficients: list, create_graph: bool) -> Tensor:
        """s = Σ_l c_l s_l, the autograd leaves sharing one reverse pass where they can."""
        score = None
        for i, leaf_score in enumerate(scores):
            if leaf_score is not None and not _is_zero(coefficients[i]):
                term = _broadcast(coefficients[i], leaf_score) * leaf_score
                score = term if score is None else score + term
        score = torch.zeros_like(x) if score is None else score
        if not autograd:
            return score
        with torch.enable_grad():
            if create_graph and any(isinstance(coefficients[i], Tensor) for i in autograd):
                # Mixture weights c_l(x) must stay in the graph of a differentiable score,
                # so each autograd leaf gets its own pass.
                for i in autograd:
                    grad = _grad(energies[i].sum(), inputs, True)
                    score = score - _broadcast(coefficients[i], grad) * grad
                return score
            # Constant (or safely detached) coefficients: one pass for all autograd leaves.
            total = sum((_detached(coefficients[i]) * energies[i]).sum() for i in autograd)
            return score - _grad(total, inputs, create_graph)

    def _forward(self, node: Program, energies: list, zeros: Tensor,
                 cache: dict[int, Tensor]) -> Tensor | None:
        """E of ``node``; ``None`` when it involves a score-only leaf.

        Multiplications by 1 and additions of 0 are skipped: on small batches each
        tensor op costs a dispatch whatever its size.
        """
        if isinstance(node, LeafRef):
            return energies[node.index]
        if isinstance(node, Affine):
            total, missing = None, False
            for coefficient, sub in node.terms:
                energy = self._forward(sub, energies, zeros, cache)
                if energy is None:
                    # Keep going: mixtures in later terms must still cache their logits,
                    # which the score's backward pass needs.
                    missing = True
                    continue
                term = energy if coefficient == 1.0 else coefficient * energy
                total = term if total is None else total + term
            if missing:
                return None
            total = zeros if total is None else total
            return total + node.constant if node.constant != 0.0 else total
        logits = []
        for offset, sub in node.terms:
            energy = self._forward(sub, energies, zeros, cache)
            logits.append(-energy if offset == 0.0 else (-offset) - energy)
        logits = torch.stack(logits)
        cache[id(node)] = logits
        return -torch.logsumexp(logits, dim=0)

    def _backward(self, node: Program, upstream: float | Tensor, cache: dict[int, Tensor],
                  coefficients: list) -> None:
        """Accumulate c_l = ∂E/∂E_l into ``coefficients`` (floats or per-sample tensors)."""
        if isinstance(node, LeafRef):
            current = coefficients[node.index]
            coefficients[node.index] = upstream if _is_zero(current) else current + upstream
        elif isinstance(node, Affine):
            for coefficient, sub in node.terms:
                self._backward(sub, _scale(upstream, coefficient), cache, coefficients)
        else:
            weights = torch.softmax(cache[id(node)], dim=0)
            for weight, (_, sub) in zip(weights, node.terms, strict=True):
                self._backward(sub, _scale(weight, upstream), cache, coefficients)


def _scale(value: float | Tensor, factor: float | Tensor) -> float | Tensor:
    """``value * factor``, skipping the op when ``factor`` is the number 1."""
    if isinstance(factor, float) and factor == 1.0:
        return value
    return value * factor


def _is_zero(coefficient) -> bool:
    return isinstance(coefficient, float) and coefficient == 0.0


def _detached(coefficient):
    return coefficient.detach() if isinstance(coefficient, Tensor) else coefficient


def _broadcast(coefficient, like: Tensor):
    if isinstance(coefficient, Tensor):
        return coefficient.reshape(coefficient.shape + (1,) * (like.dim() - 1))
    return coefficient


def _grad(total: Tensor, inputs: Tensor, create_graph: bool) -> Tensor:
    if not total.requires_grad:
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(total, inputs, create_graph=create_graph, allow_unused=True)
    return torch.zeros_like(inputs) if grad is None else grad


BACKENDS = ("eager", "inductor")


def compile(expr: EnergyModel, *, closed_form: bool = False,  # noqa: A001
            backend: str | None = None) -> CompiledEnergy:
    """Compile ``expr`` into a :class:`CompiledEnergy` with the same API, built once.

    Args:
        expr: any expression.
        closed_form: rewrite Gaussian sub-expressions (Gaussian & Gaussian,
            Gaussian ** β, mixtures of weighted Gaussians) into Gaussians /
            Gaussian mixtures with exact log Z and exact sampling.
        backend: ``"eager"`` (PyTorch eager autograd) or ``"inductor"``: the fused
            energy-and-score is also compiled by ``torch.compile``, once per input
            shape, dtype and device, falling back to eager with one warning where
            compilation is unavailable (:mod:`ebmalgebra.jit`). ``None`` keeps the
            backend of an already compiled ``expr`` and is ``"eager"`` otherwise.

    Example:
        >>> model = compile(ring & bar)
        >>> energy, score = model.energy_and_score(torch.randn(1000, 2))
    """
    if backend is None:
        backend = expr.backend if isinstance(expr, CompiledEnergy) else "eager"
    if backend not in BACKENDS:
        raise ValueError(f"compile: backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(expr, CompiledEnergy):
        if expr.closed_form == closed_form and expr.backend == backend:
            return expr
        expr = expr.source
    if backend == "inductor":
        from ebmalgebra.jit import InductorEnergy

        return InductorEnergy(expr, closed_form=closed_form)
    return CompiledEnergy(expr, closed_form=closed_form)

