"""The one evaluator of compiled programs: energy, and score by the chain rule.

For a :class:`~ebmalgebra.program.Program` over leaves l with energies E_l,
E(x) comes from the program and the score is

    s(x) = Σ_l c_l(x) s_l(x),   c_l = ∂E/∂E_l,

where leaves with their own (analytic) scores and score-only leaves
contribute c_l s_l directly, and all autograd leaves share one reverse pass
of Σ_l c_l E_l. The coefficients are constants β_l for affine programs
(products of powers: the lean special case, no bookkeeping per call) and
per-sample tensors when mixtures or other non-linear operators are involved.

The reverse pass has two implementations with the same maths: eager
autograd (``functional=False``, :func:`ebmalgebra.reverse_pass.vector_jacobian`,
``torch.autograd.grad``'s engine), and ``torch.func.vjp`` with
the cotangents c_l (``functional=True``), which ``torch.compile`` traces whole
and which writes no ``.grad`` into leaf parameters. The eager backend uses the
first, the inductor backend (:mod:`ebmalgebra.jit`) the second.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra.base import TimeLike
from ebmalgebra.leaves import autograd_energy_and_score, autograd_score
from ebmalgebra.program import ANALYTIC, AUTOGRAD, SCORE_ONLY, Program
from ebmalgebra.reverse_pass import inference_mode_blocks_autograd, recordable

__all__ = ["energy", "energy_and_score"]


def energy(program: Program, x: Tensor, t: TimeLike) -> Tensor | None:
    """E(x) ``(batch,)`` of ``program`` at x ``(batch, *event_shape)``; ``None`` when a
    leaf is score-only."""
    energies = [leaf._energy(x, t) if kind != SCORE_ONLY else None
                for leaf, kind in zip(program.leaves, program.kinds, strict=True)]
    if program.linear is not None:
        return _affine_energy(program.linear, energies, x)
    return program.root.energy_and_coefficients(energies, x, coefficients=False)[0]


def energy_and_score(program: Program, x: Tensor, t: TimeLike, create_graph: bool, *,
                     functional: bool = False, detach_parameters: bool = False,
                     ) -> tuple[Tensor | None, Tensor]:
    """(E(x), s(x)) of ``program``: energy ``(batch,)`` (``None`` when a leaf is
    score-only) and score shaped like x.

    Args:
        create_graph: keep both differentiable in x and the parameters (training
            losses); otherwise they are detached.
        functional: take the reverse pass with ``torch.func.vjp`` (traceable by
            ``torch.compile``) instead of eager autograd.
        detach_parameters: the leaves have trainable parameters; evaluate without
            recording their graph when it is not wanted (saves work, costs a few µs).
    """
    sole = program.sole_kind
    if sole == ANALYTIC:
        # The whole expression is one analytic leaf: no bookkeeping at all.
        energy, score = program.leaves[0]._energy_and_score(x, t, create_graph)
        return (energy, score) if create_graph else (energy.detach(), score.detach())
    if sole == AUTOGRAD and not create_graph and not functional:
        return _sole_autograd(program.leaves[0], x, t)
    if inference_mode_blocks_autograd() and (program.autograd or program.linear is None):
        # The reverse passes (over autograd leaves, and for the coefficients ∂E/∂E_l of
        # non-linear nodes) leave inference mode; as under no_grad, each enables grad.
        with torch.inference_mode(False), torch.no_grad():
            return energy_and_score(program, recordable(x), t, create_graph,
                                    functional=functional, detach_parameters=detach_parameters)
    if detach_parameters and not create_graph and not functional:
        with torch.no_grad():
            return _evaluate(program, x, t, create_graph, functional)
    if program.linear is not None and not functional:
        return _evaluate_affine(program, x, t, create_graph)
    return _evaluate(program, x, t, create_graph, functional)


def _sole_autograd(leaf, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
    """E = E_leaf of one autograd leaf (a Python function or module): its energy and one
    reverse pass, detached, as a hand-written loop computes them (the sampling hot path,
    where on small batches every extra op and call is felt)."""
    return autograd_energy_and_score(leaf._energy, x, t, False)


def _evaluate_affine(program: Program, x: Tensor, t: TimeLike, create_graph: bool
                     ) -> tuple[Tensor | None, Tensor]:
    """The lean special case E = c + Σ β_l E_l, s = Σ β_l s_l (products of powers): the
    coefficients are the constants β_l, so the terms are summed as they come, and the
    autograd leaves' weighted sum is both their part of E and the input of the one
    reverse pass."""
    constant, betas = program.linear
    energy = score = autograd_total = None
    inputs = x
    grad_mode = torch.is_grad_enabled()
    try:
        for leaf, kind, beta in zip(program.leaves, program.kinds, betas, strict=True):
            if beta == 0.0:
                continue
            if kind == AUTOGRAD:
                if autograd_total is None:
                    torch.set_grad_enabled(True)
                    if not (create_graph and x.requires_grad):
                        inputs = x.detach().requires_grad_(True)
                term = leaf._energy(inputs, t)
                term = term if beta == 1.0 else beta * term
                autograd_total = term if autograd_total is None else autograd_total + term
                energy = term if energy is None else energy + term
                continue
            if kind == SCORE_ONLY:
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
            pulled = autograd_score(autograd_total, inputs, create_graph)
            score = pulled if score is None else score + pulled
    finally:
        torch.set_grad_enabled(grad_mode)
    score = torch.zeros_like(x) if score is None else score
    if program.score_only:
        energy = None
    else:
        energy = x.new_zeros(x.shape[0]) if energy is None else energy
        energy = energy + constant if constant != 0.0 else energy
    if not create_graph:
        energy = None if energy is None else energy.detach()
        score = score.detach()
    return energy, score


def _evaluate(program: Program, x: Tensor, t: TimeLike, create_graph: bool, functional: bool
              ) -> tuple[Tensor | None, Tensor]:
    leaves, kinds = program.leaves, program.kinds
    n = len(leaves)
    energies: list[Tensor | None] = [None] * n
    scores: list[Tensor | None] = [None] * n
    for i, (leaf, kind) in enumerate(zip(leaves, kinds, strict=True)):
        if kind == ANALYTIC:
            energies[i], scores[i] = leaf._energy_and_score(x, t, create_graph)
        elif kind == SCORE_ONLY:
            scores[i] = leaf._score(x, t, create_graph)
    autograd = program.autograd
    reverse = _Reverse(program, autograd, x, t, create_graph, functional, energies)

    if program.linear is not None:
        energy = _affine_energy(program.linear, energies, x)
        coefficients: list = list(program.linear[1])
    else:
        energy, found = program.root.energy_and_coefficients(energies, x)
        coefficients = [found.get(i, 0.0) for i in range(n)]
    score = None
    for i, leaf_score in enumerate(scores):
        coefficient = coefficients[i]
        if leaf_score is not None and not _is_zero(coefficient):
            term = leaf_score if _is_one(coefficient) else _broadcast(coefficient,
                                                                      leaf_score) * leaf_score
            score = term if score is None else score + term
    pulled = reverse.pullback(coefficients) if autograd else None
    if pulled is not None:
        score = pulled if score is None else score + pulled
    score = torch.zeros_like(x) if score is None else score
    energy = None if program.score_only else energy
    if not create_graph:
        energy = None if energy is None else energy.detach()
        score = score.detach()
    return energy, score


class _Reverse:
    """Energies of the autograd leaves, and the pullback −∇ₓ Σ_l c_l E_l over them."""

    def __init__(self, program: Program, autograd: tuple[int, ...], x: Tensor, t: TimeLike,
                 create_graph: bool, functional: bool, energies: list) -> None:
        self.autograd, self.create_graph = autograd, create_graph
        self.functional, self.energies = functional, energies
        if not autograd:
            return
        leaves = program.leaves
        if functional:
            def autograd_energies(inputs: Tensor) -> tuple[Tensor, ...]:
                return tuple(leaves[i]._energy(inputs, t) for i in autograd)

            values, self._vjp = torch.func.vjp(autograd_energies, x)
        else:
            with torch.enable_grad():
                inputs = x if (create_graph and x.requires_grad) else \
                    x.detach().requires_grad_(True)
                values = [leaves[i]._energy(inputs, t) for i in autograd]
            self.inputs = inputs
        for i, value in zip(autograd, values, strict=True):
            energies[i] = value

    def pullback(self, coefficients: list) -> Tensor | None:
        """−∇ₓ Σ_l c_l E_l(x) over the autograd leaves (their part of the score)."""
        autograd, energies = self.autograd, self.energies
        if self.functional:
            cotangents = tuple(
                -coefficients[i] if isinstance(coefficients[i], Tensor)
                else torch.full_like(energies[i], -coefficients[i]) for i in autograd)
            (score,) = self._vjp(cotangents)
            return score
        with torch.enable_grad():
            if self.create_graph and any(isinstance(coefficients[i], Tensor) for i in autograd):
                # Mixture weights c_l(x) must stay in the graph of a differentiable score,
                # so each autograd leaf gets its own pass.
                total = None
                for i in autograd:
                    score = autograd_score(energies[i], self.inputs, True)
                    term = _broadcast(coefficients[i], score) * score
                    total = term if total is None else total + term
                return total
            # Constant (or safely detached) coefficients: one pass for all autograd leaves.
            total = None
            for i in autograd:
                if _is_zero(coefficients[i]):
                    continue
                term = energies[i] if _is_one(coefficients[i]) else \
                    _detached(coefficients[i]) * energies[i]
                total = term if total is None else total + term
            if total is None:
                return None
            return autograd_score(total, self.inputs, self.create_graph)


def _affine_energy(linear: tuple[float, tuple[float, ...]], energies: list, x: Tensor
                   ) -> Tensor | None:
    """c + Σ β_l E_l, skipping multiplications by 1 and additions of 0."""
    constant, betas = linear
    total = None
    for beta, leaf_energy in zip(betas, energies, strict=True):
        if beta == 0.0:
            continue
        if leaf_energy is None:
            return None
        term = leaf_energy if beta == 1.0 else beta * leaf_energy
        total = term if total is None else total + term
    total = x.new_zeros(x.shape[0]) if total is None else total
    return total + constant if constant != 0.0 else total


def _is_zero(coefficient: float | Tensor) -> bool:
    return isinstance(coefficient, float) and coefficient == 0.0


def _is_one(coefficient: float | Tensor) -> bool:
    return isinstance(coefficient, float) and coefficient == 1.0


def _detached(coefficient: float | Tensor) -> float | Tensor:
    return coefficient.detach() if isinstance(coefficient, Tensor) else coefficient


def _broadcast(coefficient: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(coefficient, Tensor):
        return coefficient.reshape(coefficient.shape + (1,) * (like.dim() - 1))
    return coefficient
