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

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions.constraints import Constraint

from ebmalgebra import evaluator, validation
from ebmalgebra.base import Capabilities, EnergyModel, TimeLike
from ebmalgebra.errors import ArgumentTypeError
from ebmalgebra.program import (  # noqa: F401 - the program's node types, re-exported
    ANALYTIC,
    Affine,
    Apply,
    LeafRef,
    LogSumExp,
    Program,
    ProgramBuilder,
    ProgramNode,
)


class CompiledEnergy(EnergyModel):
    """A compiled expression: same API as any model, one fused evaluation per call.

    Attributes:
        expr: the expression being evaluated (after closed-form rewrites).
        source: the expression as given.
        lowered: the :class:`~ebmalgebra.program.Program` (its ``root`` is ``program``).
        program: the folded form (``LeafRef`` / ``Affine`` / ``LogSumExp`` / ``Apply``).
        leaf_models: the distinct leaves, each evaluated once per call.
        backend: ``"eager"``, or ``"inductor"`` for :class:`ebmalgebra.jit.InductorEnergy`.

    The program folds buffers such as a normalised node's log Z into constants; when
    one of them has been written (``load_state_dict`` into any module that holds it,
    an in-place change), the next evaluation lowers the expression again, so that it
    uses the new values.
    """

    backend = "eager"

    def __init__(self, expr: EnergyModel, *, closed_form: bool = False) -> None:
        super().__init__()
        if not isinstance(expr, EnergyModel):
            raise ArgumentTypeError(f"compile expects an EnergyModel, got {type(expr).__name__}")
        source = expr
        if closed_form:
            from ebmalgebra.rewrites import rewrite_closed_forms

            expr = rewrite_closed_forms(expr)
        self.expr = expr
        # The source is for printing and re-compiling only; it is not evaluated, so it is
        # not registered (state_dict keys stay unique).
        object.__setattr__(self, "_source", source)
        self.closed_form = closed_form
        self.lowered = Program.build(expr)
        # Leaves without trainable parameters build no autograd graph on plain inputs,
        # so the no-grad context (a few µs per call) is only entered when it saves work.
        self._needs_no_grad = any(p.requires_grad for p in expr.parameters())
        self._freeze()

    def current_program(self) -> Program:
        """``lowered``, built again first if a buffer it folded has changed
        (:meth:`~ebmalgebra.program.Program.stale`; not inside a compiled region, which
        guards on the program it traced)."""
        lowered = self.lowered
        if lowered.folded and not torch.compiler.is_compiling() and lowered.stale():
            lowered = Program.build(self.expr)
            object.__setattr__(self, "lowered", lowered)
        return lowered

    @property
    def program(self) -> ProgramNode:
        """The folded form (``LeafRef`` / ``Affine`` / ``LogSumExp`` / ``Apply`` nodes)."""
        return self.current_program().root

    @property
    def leaf_models(self) -> tuple[EnergyModel, ...]:
        """The distinct leaves, each evaluated once per call."""
        return self.lowered.leaves

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

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.lower(self.expr)

    @property
    def support(self) -> Constraint:
        return self._source.support

    def sampling_exponent(self) -> float:
        return self._source.sampling_exponent()

    def gaussian_form(self, forms: list) -> object | None:
        return forms[0]

    def rewrite(self, rewrite: Callable[[EnergyModel], EnergyModel]) -> EnergyModel:
        return self

    def spec(self) -> dict:
        return {"closed_form": bool(self.closed_form), "backend": self.backend}

    @classmethod
    def rebuild(cls, operands: tuple[EnergyModel, ...], spec: dict) -> EnergyModel:
        (source,) = operands
        return compile(source, **spec)

    # ------------------------------------------------------------- evaluation
    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return evaluator.energy(self.current_program(), x, t)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._evaluate(x, t, create_graph)[1]

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, t, create_graph)

    def _evaluate(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor | None, Tensor]:
        # torch.compile cannot trace torch.autograd.grad; torch.func.vjp it can.
        return evaluator.energy_and_score(self.current_program(), x, t, create_graph,
                                          functional=torch.compiler.is_compiling(),
                                          detach_parameters=self._needs_no_grad)


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
    validation.one_of("compile: backend", backend, BACKENDS)
    if isinstance(expr, CompiledEnergy):
        if expr.closed_form == closed_form and expr.backend == backend:
            return expr
        expr = expr.source
    if backend == "inductor":
        from ebmalgebra.jit import InductorEnergy

        return InductorEnergy(expr, closed_form=closed_form)
    return CompiledEnergy(expr, closed_form=closed_form)
