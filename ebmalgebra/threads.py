"""How many CPU threads torch uses inside ``sample``, ``zoo.draw``, ``fit``,
``estimate_log_z`` and ``SMC.run``.

The library's work is many small batched operations (chains × a few
coordinates, or a batch through a small network). Spreading one such op
over several threads gains little on an idle machine and costs many-fold
when another process shares the cores: torch's worker threads wait for each
other at every op. On this project's 2-core machine with other processes
busy, torch's default of 2 threads made a short ``zoo.draw``, ``fit`` and
MALA run 16–26× slower than one thread (benchmarks/threads.py; the README
gives the numbers and conditions).

So, for the duration of one call, the library runs on **one thread** when

* the batch is small: at most :data:`SMALL_BATCH` tensor elements per step
  (chains × event size, or batch size × event size), and
* the thread count is still the one torch had when ebmalgebra was imported,
  i.e. neither the program (``torch.set_num_threads`` after the import) nor
  the environment (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) chose one,

and restores the previous count when the call returns, so the user's global
setting is never changed. ``EBMALGEBRA_THREADS`` overrides the policy: a
number is used for every call, ``torch`` leaves torch's setting alone.

Example:
    >>> with ebmalgebra.threads.call_threads(64 * 256):   # what sample() does
    ...     ...
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["ENV", "SMALL_BATCH", "call_threads", "particle_batch", "policy_threads", "threaded",
           "use_threads"]

ENV = "EBMALGEBRA_THREADS"
"""Environment variable overriding the policy: a positive integer, or ``torch``."""

SMALL_BATCH = 1 << 20
"""Largest per-step batch (tensor elements) run on one thread by default: 2^20,
a million coordinates, far beyond the zoo's 64 × 256 or 1000 chains × 100."""

_USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_TORCH_DEFAULT = torch.get_num_threads()
"""torch's count when ebmalgebra was imported: a different count later was the user's choice."""


def policy_threads(batch_elements: int) -> int | None:
    """Threads for a call whose steps touch ``batch_elements`` tensor elements,
    or ``None`` to leave torch's current setting (module docstring).

    Raises:
        ValueError: if ``EBMALGEBRA_THREADS`` is neither a positive integer nor ``torch``.
    """
    override = os.environ.get(ENV, "").strip()
    if override:
        if override.lower() == "torch":
            return None
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{ENV}={override!r}: expected a positive integer or 'torch'")
        return int(override)
    if any(os.environ.get(name) for name in _USER_VARIABLES):
        return None
    if torch.get_num_threads() != _TORCH_DEFAULT or batch_elements > SMALL_BATCH:
        return None
    return 1


def use_threads(batch_elements: int) -> Callable[[], None]:
    """Apply :func:`policy_threads` now; returns the function that restores the count.

    For loops that already have a ``try``/``finally``: ``restore = use_threads(n)``
    before it, ``restore()`` in the ``finally``.
    """
    wanted = policy_threads(batch_elements)
    previous = torch.get_num_threads()
    if wanted is None or wanted == previous:
        return _nothing
    torch.set_num_threads(wanted)
    return lambda: torch.set_num_threads(previous)


@contextmanager
def call_threads(batch_elements: int) -> Iterator[None]:
    """The thread policy for the block: :func:`use_threads` as a context manager."""
    restore = use_threads(batch_elements)
    try:
        yield
    finally:
        restore()


def threaded(batch_elements: Callable[..., int]) -> Callable[[Callable], Callable]:
    """Decorate a function so that it runs under the policy for the batch that
    ``batch_elements(**arguments)`` computes from its bound arguments (defaults applied).

    Example:
        >>> @threaded(particle_batch)
        ... def estimate_log_z(model, *, n_particles=1024): ...
    """
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with call_threads(batch_elements(**bound.arguments)):
                return function(*args, **kwargs)
        return wrapper
    return decorate


def particle_batch(*, model, n_particles: int, **_) -> int:
    """Tensor elements per step of ``n_particles`` particles of ``model``: n × numel(event)."""
    event_shape = getattr(model, "event_shape", None) or ()
    return n_particles * math.prod(event_shape) if isinstance(n_particles, int) else 0


def _nothing() -> None:
    return None
