"""Pictures of samples, image grids and curves: the one place the library touches matplotlib.

matplotlib is imported inside the functions, so ``import ebmalgebra`` never
pays for it. Figures meant for a file are bare ``matplotlib.figure.Figure``
objects, never pyplot's: saving a picture does not change the user's backend
or add to pyplot's list of open figures.

* :func:`check_picture_path` refuses a file name matplotlib cannot write,
  before any expensive work.
* :func:`new_axes` and :func:`save_figure` are what ``History.plot`` and
  ``apps.anomaly.plot_roc`` draw with.
* :func:`image_rows` draws labelled rows of images (the demo's grid);
  :func:`samples_figure` draws a batch of samples, images ``(n, h, w)`` as a
  grid and points ``(n, 2)`` as a scatter plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from ebmalgebra.errors import ArgumentError

__all__ = ["check_picture_path", "image_rows", "new_axes", "picture_formats", "samples_figure",
           "save_figure"]


def picture_formats() -> list[str]:
    """File suffixes matplotlib can write (``".png"``, ``".pdf"``, ``".svg"``, …), sorted."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(f".{name}" for name in FigureCanvasBase.get_supported_filetypes())


def check_picture_path(path: str | Path, what: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, if matplotlib can write a picture with its suffix.

    Raises:
        ValueError: naming ``what`` and the formats matplotlib writes.
    """
    path = Path(path)
    formats = picture_formats()
    if path.suffix.lower() not in formats:
        raise ArgumentError(f"{what} {str(path)!r}: cannot write a picture with suffix "
                            f"{path.suffix or '(none)'!r}; use one of {', '.join(formats)}")
    return path


def new_axes(path: str | Path | None = None, *, figsize: tuple[float, float] = (6, 3.5)) -> Any:
    """Fresh matplotlib Axes: on a bare Figure when the picture goes to ``path``, else pyplot's.

    pyplot only when nothing is saved, so that a notebook user sees the plot.
    """
    if path is not None:
        from matplotlib.figure import Figure

        return Figure(figsize=figsize).subplots()
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def save_figure(figure: Any, path: str | Path, *, dpi: int = 120, tight: bool = False) -> Path:
    """Write ``figure`` to ``path`` (parent folders created); returns the path.

    Raises:
        ValueError: if matplotlib cannot write ``path``'s suffix (:func:`check_picture_path`).
    """
    path = check_picture_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path


def image_rows(figure: Any, rows: list[tuple[str, Tensor]], columns: int, *,
               top: float = 0.92, bottom: float = 0.03) -> None:
    """Draw rows of grey-scale images into a matplotlib ``figure``, each row labelled on the left.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        rows: ``(label, images (k, h, w))`` pairs; the first ``columns`` images
            of each row are shown, pixel values clipped to [0, 1].
        columns: images per row.
        top, bottom: the vertical extent of the grid, as figure fractions.
    """
    grid = figure.add_gridspec(len(rows), columns, left=0.3, right=0.98, top=top,
                               bottom=bottom, wspace=0.05, hspace=0.1)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            axis = figure.add_subplot(grid[r, c])
            if c < len(images):
                axis.imshow(images[c].detach().float().clamp(0, 1).numpy(), cmap="gray", vmin=0,
                            vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8,
                                family="monospace")


def samples_figure(samples: Tensor, title: str, *, max_columns: int = 16,
                   extent: float = 5.0) -> Any:
    """A figure of ``samples``: images ``(n, h, w)`` (h, w > 2) as a grid, points ``(n, 2)``
    as a scatter plot over [−extent, extent]².

    Raises:
        ValueError: for any other sample shape.
    """
    from matplotlib.figure import Figure

    samples = samples.detach().cpu().float()  # NumPy has no bfloat16
    shape = tuple(samples.shape[1:])
    if len(shape) == 2 and min(shape) > 2:
        columns = max(1, min(len(samples), max_columns))  # an empty figure for no samples
        n_rows = max(1, math.ceil(len(samples) / columns))
        figure = Figure(figsize=(columns * 0.6, n_rows * 0.6 + 0.6))
        grid = figure.add_gridspec(n_rows, columns, wspace=0.05, hspace=0.05, top=0.9)
        for i, image in enumerate(samples):
            axis = figure.add_subplot(grid[i // columns, i % columns])
            axis.imshow(image.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1,
                        interpolation="nearest")
            axis.set_axis_off()
        figure.suptitle(title, family="monospace")
        return figure
    if shape == (2,):
        figure = Figure(figsize=(4.5, 4.5))
        axis = figure.add_subplot()
        points = samples.numpy()
        axis.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
        axis.set_aspect("equal")
        axis.set_xlim(-extent, extent)
        axis.set_ylim(-extent, extent)
        axis.set_title(title, family="monospace")
        return figure
    raise ArgumentError(f"cannot draw samples of shape {shape} as a picture: only images "
                        "(h, w) and 2-D points")
