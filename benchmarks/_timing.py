"""Shared timing helper for the benchmark scripts: interleaved repeats, median seconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_times(functions: dict[str, Callable[[], object]], *, repeats: int, inner: int,
                 warmup: int = 3) -> dict[str, float]:
    """Median wall time per call of each function, measured in interleaved rounds.

    Interleaving (A, B, A, B, ...) exposes every candidate to the same machine
    load, so ratios stay meaningful on a shared 2-core machine.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(inner):
                function()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}
