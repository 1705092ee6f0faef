"""Scoring face samples: attribute rates by the exact detectors, and realism.

The faces zoo (``face``, ``glasses``, ``hat``, ``smile``) is judged by
:data:`ebmalgebra.datasets.faces`: its detectors read each attribute off the
pixels exactly, and its realism check says whether a sample looks like a real
face at all (detectors also fire on garbage), so composition success is a
number.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FACE_SHAPE",
    "RATE_COLUMNS",
    "TABLE_COLUMNS",
    "attribute_rates",
    "is_face_model",
    "rates_table",
]

FACE_SHAPE = (16, 16)

RATE_COLUMNS = {
    "glasses": "glasses",
    "hat": "hat",
    "both": "glasses and hat",
    "glasses_no_hat": "glasses without hat",
    "either": "at least one of glasses, hat",
    "smile": "smile",
    "realistic": "looks like a real face (realism check)",
}
"""Keys of :func:`attribute_rates` and what each measures."""


def attribute_rates(images: Tensor) -> dict[str, float]:
    """Fractions of ``images`` ``(n, 16, 16)`` with each attribute combination.

    Keys (see :data:`RATE_COLUMNS`): ``glasses``, ``hat``, ``both``,
    ``glasses_no_hat``, ``either``, ``smile``, ``realistic``. Non-finite
    images count as having no attribute and as unrealistic.

    Example:
        >>> rates = attribute_rates(faces(256, glasses=True, hat=True))
        >>> rates["both"]
        1.0
    """
    from ebmalgebra.datasets import faces

    images = images.detach().float().reshape(-1, *FACE_SHAPE)
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    safe = torch.where(finite[:, None, None], images, torch.zeros_like(images))
    found = {name: flags & finite for name, flags in faces.attributes(safe).items()}
    realistic = faces.is_realistic(safe) & finite
    glasses, hat = found["glasses"], found["hat"]
    flags = {
        "glasses": glasses,
        "hat": hat,
        "both": glasses & hat,
        "glasses_no_hat": glasses & ~hat,
        "either": glasses | hat,
        "smile": found["smile"],
        "realistic": realistic,
    }
    return {name: float(value.float().mean()) for name, value in flags.items()}


def is_face_model(model) -> bool:
    """Whether ``model`` lives on 16×16 images (so the face detectors apply)."""
    shape = model.event_shape
    return shape is not None and tuple(shape) == FACE_SHAPE


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("glasses", "glasses"),
    ("hat", "hat"),
    ("both", "both"),
    ("glasses_no_hat", "glasses, no hat"),
    ("either", "either"),
    ("realistic", "realistic"),
)
"""(rate key, column title) pairs of :func:`rates_table`."""


def rates_table(rows: list[tuple[str, int, dict[str, float]]],
                columns: tuple[tuple[str, str], ...] = TABLE_COLUMNS, *,
                runs: list | None = None) -> str:
    """A plain-text table of attribute rates: one row per ``(expression, n, rates)``.

    ``runs``, one per row, adds the columns ``log Z`` (± its standard error) and
    ``ESS`` (the median over levels of the effective sample size after
    reweighting) from the :class:`~ebmalgebra.samplers.smc.SMCResult` of rows
    sampled by SMC, and "–" for rows sampled otherwise (``None``).

    Example:
        >>> print(rates_table([("glasses & hat", 256, attribute_rates(images))]))
        expression       n  glasses     hat    both  glasses, no hat  either  realistic
        ...
    """
    header = ["expression", "n"] + [title for _, title in columns]
    body = [[label, str(n)] + [f"{100 * rates[key]:.1f}%" for key, _ in columns]
            for label, n, rates in rows]
    if runs is not None:
        header += ["log Z", "ESS"]
        for cells, run in zip(body, runs, strict=True):
            cells += (["–", "–"] if run is None else
                      [f"{run.log_z:.1f} ± {run.stderr:.2g}", f"{float(run.ess.median()):.0f}"])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in body)])
