"""One progress-bar policy for every long loop: tqdm on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from typing import Any

from ebmalgebra import validation


def show_progress(progress: bool | None) -> bool:
    """``progress`` if given, else whether stderr is attached to a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return validation.flag("progress", progress)


def progress_bar(total: int, progress: bool | None, desc: str, unit: str = "step") -> Any:
    """A tqdm bar over ``total`` items, or ``None`` when progress is off.

    Use as ``bar = progress_bar(...)``; ``if bar: bar.update(1)``; ``bar.close()``.
    """
    if not show_progress(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5)
