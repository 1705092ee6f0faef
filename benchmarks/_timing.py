"""Shared helpers of the benchmark scripts: interleaved repeats (median seconds) and
aten operator counts."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}
"""The scripts' ``--clock`` choices: wall time, or this thread's CPU time, which on a busy
machine estimates the wall time on an idle one (single-threaded work only)."""


def median_times(functions: dict[str, Callable[[], object]], *, repeats: int, inner: int,
                 warmup: int = 3, clock: Callable[[], float] = time.perf_counter,
                 ) -> dict[str, float]:
    """Median wall time per call of each function, measured in interleaved rounds.

    Interleaving (A, B, A, B, ...) exposes every candidate to the same machine
    load, so ratios stay meaningful on a shared 2-core machine. Pass
    ``clock=time.thread_time`` to count this thread's CPU time instead, which on a
    busy machine estimates the wall time on an idle one (single-threaded work only).
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            for _ in range(inner):
                function()
            samples[name].append((clock() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active (on small tensors each costs a
    dispatch of a few µs whatever its size)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(function: Callable[[], object]) -> int:
    """Aten operators dispatched by one call of ``function``."""
    with OpCounter() as counter:
        function()
    return sum(counter.counts.values())
