"""Shared timing helper for the benchmark scripts: interleaved repeats, median seconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
