"""Kernels compiled ahead of time: ``torch.compile(...).aot_compile`` (experimental in torch 2.13).

A kernel that :mod:`ebmalgebra.jit` compiles with ``torch.compile`` runs each call
through dynamo's frame evaluation, its guards and the call layers of dynamo and AOT
autograd, ~70 µs a call for NUTS's first doublings on eight schools at 100 chains
(of ~290 µs; docs/performance.md). ``aot_compile`` traces the same function with the
same inductor options into a plain callable: the same compiled code, so the same
numbers bit for bit, called without dynamo; its guards are a separate function,
:attr:`Precompiled.check`, ~15 µs there.

Precompiled code keeps the guards that torch can serialize: every input tensor's
dtype, device, shape, strides and ``requires_grad``, global state (grad mode,
autocast, default dtype, ...), and the values, types and attributes that the trace
read, globals included (``guard_filter_fn`` keeps them: torch's default drops the
guards on globals). It drops those it cannot: object identity, class objects,
closures and module objects. :class:`ebmalgebra.jit.SteadyRun` uses precompiled
kernels within sampling runs when ``EBMALGEBRA_JIT_PRECOMPILE=1`` (their artifacts
miss the on-disk caches, so each process compiles them in full): the expression and
its functions cannot change (expression nodes are immutable), so those identities
hold.

An experimental torch feature: anything missing or failing returns ``None`` and the
caller keeps the ``torch.compile`` path.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = ["Precompiled", "precompile", "torch_compile"]


class Precompiled(NamedTuple):
    """A kernel compiled ahead of time.

    Attributes:
        check: ``check(*args)``: whether the kept guards hold for these arguments and
            the global state now (then :attr:`run` computes what the traced function
            would).
        run: ``run(*args)``: the kernel, without checking the guards.
    """

    check: Callable[..., bool]
    run: Callable[..., Any]


def torch_compile(function: Callable, **kwargs: Any) -> Callable:
    """``torch.compile(function, **kwargs)``, leaving torch.distributions' default of
    ``validate_args`` as it was: dynamo's first compile in a process sets it to False
    (``TorchPatcher.patch``), which would silently stop validating every distribution
    the user builds after a ``jit=True`` run."""
    default = torch.distributions.Distribution._validate_args
    try:
        return torch.compile(function, **kwargs)
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)


@functools.cache
def _dropped_guard_types() -> frozenset[str] | None:
    """The guard types precompiled code cannot keep, or ``None`` if torch does not say."""
    try:
        from torch._dynamo.guards import CheckFunctionManager
    except ImportError:
        return None
    types = getattr(CheckFunctionManager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", None)
    return None if types is None else frozenset(types)


def precompile(function: Callable, options: dict[str, Any] | None, args: tuple,
               ) -> Precompiled | None:
    """``function`` compiled ahead of time for ``args`` with inductor ``options``, static
    shapes and no graph breaks, keeping every guard that can be kept; ``None`` where
    torch has no ``aot_compile`` or it fails (the caller then compiles as usual).

    ``function`` should have a code object of its own (:func:`ebmalgebra.jit._own_code`).
    """
    dropped = _dropped_guard_types()
    if dropped is None:
        return None

    def keep(entries: list) -> list[bool]:
        return [entry.guard_type not in dropped for entry in entries]

    compiled = torch_compile(function, fullgraph=True,
                             options={**(options or {}), "guard_filter_fn": keep})
    aot_compile = getattr(compiled, "aot_compile", None)
    if aot_compile is None:
        return None
    try:
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False,
                                        assume_static_by_default=True):
            guarded = aot_compile((args, {}))
        unguarded = copy.copy(guarded)
        unguarded.disable_guard_check()
    except Exception:  # noqa: BLE001 - an experimental path: any failure means "not here"
        return None
    return Precompiled(guarded.guard_check, unguarded)
