"""``assert_equivalent``: two models agree in energy and score on given points;
``assert_score_is_gradient``: a model's score is −∇ₓ of its own energy."""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel, TimeLike


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
    t: TimeLike = None,
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
    Each model's fused ``energy_and_score`` must also agree with its own
    ``energy`` and ``score`` (they are separate code paths in every node).

    Args:
        x: points shaped ``(batch, *event_shape)``; use float64 for tight tolerances.
        t: noise level for noise-conditioned leaves (a number or ``(batch,)``).

    Raises:
        AssertionError: naming both expressions and the worst entry.
    """
    if a.has_energy != b.has_energy:
        raise AssertionError(f"one model has an energy and the other not:\n  a = {a!r}\n"
                             f"  b = {b!r}")
    score_a, score_b = a.score(x, t), b.score(x, t)
    if a.has_energy:
        energy_a, energy_b = a.energy(x, t).detach(), b.energy(x, t).detach()
        if up_to_constant:
            gap = energy_a - energy_b
            scale = torch.maximum(energy_a.abs(), energy_b.abs())
            _close("energies (up to a constant)", gap - gap.mean(), torch.zeros_like(gap),
                   0.0, atol + rtol * float(scale.max()), a, b)
        else:
            _close("energies", energy_a, energy_b, rtol, atol, a, b)
        for model, energy, score in ((a, energy_a, score_a), (b, energy_b, score_b)):
            fused_energy, fused_score = model.energy_and_score(x, t)
            _close("energy_and_score's energy and energy", fused_energy, energy, rtol, atol,
                   model, model)
            _close("energy_and_score's score and score", fused_score, score, rtol, atol,
                   model, model)
    _close("scores", score_a, score_b, rtol, atol, a, b)


def assert_score_is_gradient(
    model: EnergyModel,
    x: Tensor,
    t: TimeLike = None,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-9,
) -> None:
    """Assert that ``model.score(x, t)`` equals −∇ₓE(x, t) computed by autograd through ``energy``.

    The check covers every point where the energy is differentiable in
    floating point: E(x) finite and its autograd gradient finite (at a cone
    point such as a ring's centre autograd gives NaN and the score may be any
    subgradient). Entries are compared as in :func:`assert_equivalent`,
    |s − (−∇E)| ≤ atol + rtol·max(|s|, |∇E|). Analytic scores (closed-form
    leaves, the compiler's coefficient sums) are thereby checked against
    the energy they claim to differentiate.

    Args:
        x: points ``(batch, *event_shape)``; use float64 for tight tolerances.

    Raises:
        AssertionError: naming the model, the worst point and both values.
    """
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        energy = model.energy(inputs, t)
        (gradient,) = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
    if gradient is None:  # the energy does not depend on x at all
        gradient = torch.zeros_like(inputs)
    score = model.score(x, t).detach()
    rows = (torch.isfinite(energy.detach()).reshape(-1)
            & torch.isfinite(gradient).flatten(1).all(1))
    expected = -gradient[rows]
    actual = score[rows]
    error = (actual - expected).abs()
    bound = atol + rtol * torch.maximum(actual.abs(), expected.abs())
    bad = ~(error <= bound)
    if bad.any():
        worst = int(torch.argmax(torch.where(bad, error / bound, torch.zeros_like(error))))
        point = int(worst // max(actual[0].numel(), 1))
        raise AssertionError(
            f"the score of {model!r} is not −∇E at {int(bad.flatten(1).any(1).sum())} of "
            f"{int(rows.sum())} points; worst at x = {x[rows][point].tolist()}: "
            f"score {float(actual.flatten()[worst]):.10g} vs −∇E "
            f"{float(expected.flatten()[worst]):.10g}"
        )
