"""``assert_equivalent``: two models agree in energy and score on given points."""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel


def _close(name: str, left: Tensor, right: Tensor, rtol: float, atol: float,
           a: EnergyModel, b: EnergyModel) -> None:
    error = (left - right).abs()
    bound = atol + rtol * torch.maximum(left.abs(), right.abs())
    finite = torch.isfinite(left) & torch.isfinite(right)
    same_nonfinite = (~torch.isfinite(left)) & (left == right)
    bad = ~((finite & (error <= bound)) | same_nonfinite)
    if bad.any():
        worst = int(torch.argmax(torch.where(bad, error / bound.clamp_min(1e-300),
                                             torch.zeros_like(error))).item())
        raise AssertionError(
            f"{name} differ between\n  a = {a!r}\n  b = {b!r}\n"
            f"at {int(bad.sum())} of {bad.numel()} entries; worst: {left.flatten()[worst]!r} vs "
            f"{right.flatten()[worst]!r} (|diff| {error.flatten()[worst]:.3g}, "
            f"allowed {bound.flatten()[worst]:.3g})"
        )


def assert_equivalent(
    a: EnergyModel,
    b: EnergyModel,
    x: Tensor,
    *,
    up_to_constant: bool = False,
    rtol: float = 1e-9,
    atol: float = 1e-9,
) -> None:
    """Assert that ``a`` and ``b`` define the same density on the points ``x``.

    Compares energies (|E_a − E_b| ≤ atol + rtol·max(|E_a|, |E_b|) elementwise)
    and scores the same way. With ``up_to_constant=True`` energies may differ
    by one constant over the batch (the same unnormalised density up to Z):
    E_a − E_b − mean(E_a − E_b) is compared with zero, relative to the energy
    scale. Models without energies (score-only) are compared on scores only.

    Args:
        x: points shaped ``(batch, *event_shape)``; use float64 for tight tolerances.

    Raises:
        AssertionError: naming both expressions and the worst entry.
    """
    if a.has_energy != b.has_energy:
        raise AssertionError(f"one model has an energy and the other not:\n  a = {a!r}\n"
                             f"  b = {b!r}")
    if a.has_energy:
        energy_a, energy_b = a.energy(x).detach(), b.energy(x).detach()
        if up_to_constant:
            gap = energy_a - energy_b
            scale = torch.maximum(energy_a.abs(), energy_b.abs())
            _close("energies (up to a constant)", gap - gap.mean(), torch.zeros_like(gap),
                   0.0, atol + rtol * float(scale.max()), a, b)
        else:
            _close("energies", energy_a, energy_b, rtol, atol, a, b)
    _close("scores", a.score(x), b.score(x), rtol, atol, a, b)
