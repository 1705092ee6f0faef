"""One reverse-mode pass (a vector–Jacobian product) at the cost of the pass itself.

``torch.autograd.grad`` spends ~12–16 µs of Python per call before and after the
C++ engine runs (normalising its arguments to tuples, checking every seed's shape
and dtype, looking for ``__torch_function__`` overrides, logging hooks), which on
a small batch is ~14% of a whole energy-and-score evaluation (a 2-D energy of 1000
chains: 111 → 95 µs in a tight loop; docs/performance.md, "Eager overhead").
Scores of autograd leaves take this pass once per evaluation, i.e. once per
sampler step or leapfrog step, so :func:`vector_jacobian` calls the engine
directly where none of that handling can matter:

* plain ``torch.Tensor`` outputs and inputs (no subclass that overrides torch
  functions), seeds made by the caller in the outputs' shapes;
* on the CPU, where the engine runs the pass on the calling thread (on other
  devices ``torch.autograd.grad`` also hands its context to the device threads);
* outside ``torch.compile``'s tracing, which must see ``torch.autograd.grad``;
* with a torch whose engine has ``run_backward`` (every torch ≥ 2.2 this library
  supports; its keyword form is the one ``torch.autograd.grad`` itself calls).

Anything else goes through ``torch.autograd.grad`` with the same arguments, so the
results are the same tensors bit for bit (``tests/test_reverse_pass.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["inference_mode_blocks_autograd", "recordable", "vector_jacobian"]

_run_backward = getattr(getattr(torch.autograd.Variable, "_execution_engine", None),
                        "run_backward", None)


def vector_jacobian(outputs: Sequence[Tensor], cotangents: Sequence[Tensor],
                    inputs: Sequence[Tensor], create_graph: bool = False,
                    ) -> tuple[Tensor | None, ...]:
    """Σ_k v_kᵀ ∂y_k/∂x_i for each input x_i: one reverse pass from ``outputs`` y_k
    seeded with ``cotangents`` v_k (each shaped like its output).

    Returns one gradient per input, shaped like it, or ``None`` for an input the
    outputs do not depend on (``allow_unused``). With ``create_graph`` the result is
    part of the graph (differentiable again), and the graph is kept; otherwise the
    graph is freed, as by ``torch.autograd.grad``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> vector_jacobian(((x * x).sum(1),), (torch.ones(1),), (x,))
        (tensor([[2., 4.]]),)
    """
    if _is_plain_cpu(outputs, inputs) and not torch.compiler.is_compiling():
        return _run_backward(tuple(outputs), tuple(cotangents), keep_graph=create_graph,
                             create_graph=create_graph, inputs=tuple(inputs),
                             allow_unreachable=True, accumulate_grad=False)
    return torch.autograd.grad(outputs, inputs, cotangents, create_graph=create_graph,
                               allow_unused=True)


def _is_plain_cpu(outputs: Sequence[Tensor], inputs: Sequence[Tensor]) -> bool:
    """Whether every tensor is a plain ``torch.Tensor`` on the CPU (and the engine's
    entry point exists): the case in which ``torch.autograd.grad`` only forwards."""
    if _run_backward is None:
        return False
    for tensor in (*outputs, *inputs):
        if type(tensor) is not Tensor or tensor.device.type != "cpu":
            return False
    return True


def inference_mode_blocks_autograd() -> bool:
    """Whether a score by autograd must leave ``torch.inference_mode()`` for its pass.

    Inference mode records no graph even under ``torch.enable_grad()``, so a reverse
    pass there would see a constant energy (a zero score). Callers then recompute under
    ``torch.inference_mode(False)`` on :func:`recordable` inputs; their results are
    ordinary tensors, which code inside inference mode uses as any other. Never true
    while ``torch.compile`` traces (checked first: the mode query is a graph break).
    """
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


def recordable(x: Tensor) -> Tensor:
    """x as a tensor autograd can save for backward (call outside inference mode): a
    copy of an inference tensor, x itself otherwise."""
    return x.clone() if x.is_inference() else x
