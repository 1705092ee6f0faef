"""Conditioning: ``a.condition(mask, values)`` clamps coordinates and models the rest.

For a model p̃(x) over ``event_shape`` and a boolean ``mask`` of that shape (True
= clamped), the conditioned model is the unnormalised conditional density of
the free coordinates,

    p̃(x_F | x_C = v_C) ∝ p̃(x_F, v_C),   E(x_F) = E(embed(x_F, v_C)),   s(x_F) = s(·)_F,

over vectors of the n_F free coordinates (event shape ``(n_F,)``, in the
row-major order of ``mask``). It composes with ``&`` like any model over those
coordinates: inpainting is ``prior.condition(mask, observed) & likelihood``.
Its normaliser is the marginal density p̃_C(v_C), unknown in general; for
Gaussian (mixture) models ``compile(..., closed_form=True)`` gives the exact
conditional, a Gaussian mixture whose component weights are the posterior
weights π_k N(v_C; μ_kC, Σ_kCC) / Σ_j π_j N(v_C; μ_jC, Σ_jCC).

Canonical form: an empty mask is the model itself, and conditioning twice is
one conditioning on the union of the clamped coordinates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions.constraints import Constraint

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike, input_options
from ebmalgebra.errors import CompositionError
from ebmalgebra.operator import ATOM, Operator

__all__ = ["Conditioned", "condition"]


def _tensor(value: object, what: str, base: EnergyModel, **options: Any) -> Tensor:
    """``torch.as_tensor(value)``, with an error naming ``what`` for non-numeric data."""
    try:
        return torch.as_tensor(value, **options)
    except (TypeError, ValueError, RuntimeError):
        raise CompositionError(f"condition of {base!r}: {what} must be a tensor or nested "
                               f"lists of numbers, got {value!r:.80}") from None


def _as_mask(mask: object, base: EnergyModel) -> Tensor:
    shape = base.event_shape
    if shape is None:
        raise CompositionError(f"condition: {base!r} has no event shape to clamp")
    mask = _tensor(mask, "mask", base)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise CompositionError(f"condition of {base!r}: mask must be a bool tensor of the "
                               f"event shape {tuple(shape)}, got {mask.dtype} "
                               f"{tuple(mask.shape)}")
    return mask


def _as_values(values: object, mask: Tensor, base: EnergyModel) -> Tensor:
    # Numbers take the base's dtype and device: clamped in the default float32, a float64
    # model's conditional would be off by the values' rounding. A floating tensor is kept.
    if not isinstance(values, Tensor):
        values = _tensor(values, "values", base, **input_options(base))
    elif not values.is_floating_point():
        values = values.to(input_options(base)["dtype"])
    try:
        values = torch.broadcast_to(values, mask.shape)
    except RuntimeError:
        raise CompositionError(f"condition of {base!r}: values of shape {tuple(values.shape)} "
                               f"do not broadcast to the event shape {tuple(mask.shape)}"
                               ) from None
    if not torch.isfinite(values[mask]).all():
        raise CompositionError(f"condition of {base!r}: clamped values must be finite")
    # Only the clamped entries matter; zeros elsewhere make embedding one addition.
    return torch.where(mask.to(values.device), values, torch.zeros_like(values))


class Conditioned(Operator):
    """``base`` with the coordinates where ``mask`` is True clamped to ``values``.

    Args:
        base: a model over ``event_shape``.
        mask: bool tensor of ``event_shape``, True where clamped.
        values: clamped values, broadcastable to ``event_shape`` (entries where
            ``mask`` is False are ignored).

    x of the conditioned model is ``(batch, n_free)``; energies ``(batch,)``.

    Example:
        >>> posterior = prior.condition(torch.tensor([True, False]), torch.tensor([1.5, 0.0]))
        >>> posterior.event_shape
        torch.Size([1])
    """

    symbol = "condition"

    @classmethod
    def canonical(cls, base: EnergyModel, mask: object, values: object) -> EnergyModel | None:
        mask = _as_mask(mask, base)
        values = _as_values(values, mask, base)
        if not mask.any():
            return base
        if type(base) is cls:
            # Clamp the inner model's free coordinates that this mask clamps as well.
            inner_free = (~base.mask).flatten().nonzero().squeeze(1)
            merged_mask = base.mask.flatten().clone()
            merged_values = base.values.flatten().clone()
            merged_mask[inner_free[mask]] = True
            merged_values[inner_free[mask]] = values[mask].to(merged_values)
            return cls(base.base, merged_mask.reshape(base.mask.shape),
                       merged_values.reshape(base.mask.shape))
        return None

    def __init__(self, base: EnergyModel, mask: object, values: object) -> None:
        super().__init__(base)
        mask = _as_mask(mask, base)
        self.register_buffer("mask", mask)
        self.register_buffer("values", _as_values(values, mask, base))
        free = (~mask).flatten().nonzero().squeeze(1)
        self.register_buffer("free", free)
        self._event_shape = torch.Size([free.numel()])
        # _embed gathers each coordinate from [x, clamped values]: source[i] is its column.
        clamped = mask.flatten().nonzero().squeeze(1)
        source = torch.empty(mask.numel(), dtype=torch.long)
        source[free] = torch.arange(free.numel())
        source[clamped] = free.numel() + torch.arange(clamped.numel())
        self.register_buffer("_source", source, persistent=False)
        self.register_buffer("_clamped", self.values.flatten()[clamped], persistent=False)

    @property
    def base(self) -> EnergyModel:
        return self._children[0]

    @property
    def args(self) -> tuple:
        return (self.base, self.mask, self.values)

    def params(self) -> dict[str, Any]:
        return {"mask": self.mask, "values": self.values}

    @property
    def support(self) -> Constraint:
        """The base's support on the free coordinates; only elementwise ones split."""
        from ebmalgebra.constraints import elementwise_support

        return elementwise_support(self, self.base.support, ~self.mask)

    def structure(self) -> tuple:
        return ("Conditioned", (tuple(self.mask.flatten().tolist()),
                                tuple(self.values.flatten().tolist())), (self.base.structure(),))

    def derive_capabilities(self) -> Capabilities:
        caps = self.base.capabilities
        return Capabilities(has_energy=caps.has_energy, has_score=caps.has_score,
                            normalizer_known=False, can_sample=False)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability in ("energy", "score"):
            return self.base._why_not(capability)
        return self._without_closed_forms(
            capability, "is conditioned",
            "whose normaliser is the marginal density at the clamped values")

    @property
    def analytic_score(self) -> bool:
        """Whether compiled programs take this node's own ``_energy_and_score`` (the
        base's score at the embedded point, its free coordinates): only when every
        leaf of the base scores without autograd. Otherwise the node is an autograd
        leaf of the program: E over the free coordinates is differentiated whole, one
        reverse pass, which ``torch.compile`` traces (the base's own
        ``torch.autograd.grad`` it cannot)."""
        return all(leaf.analytic_score for leaf in self.base.leaves())

    # ------------------------------------------------------------- evaluation
    def _embed(self, x: Tensor) -> Tensor:
        """(batch, n_free) → (batch, *event_shape) with the clamped values filled in.

        A gather, not a scatter into the expanded values: inductor (torch 2.13)
        miscompiles ``index_add`` into an expanded tensor (wrong values in float32 and,
        inside MALA's kernel, in float64 too) or fails to compile it."""
        columns = torch.cat([x, self._clamped.to(x).expand(x.shape[0], -1)], 1)
        full = columns.index_select(1, self._source.to(x.device))
        return full.reshape(x.shape[0], *self.mask.shape)

    def _free(self, score: Tensor) -> Tensor:
        return score.reshape(score.shape[0], -1).index_select(1, self.free.to(score.device))

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.base._energy(self._embed(x), t)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._free(self.base._score(self._embed(x), t, create_graph))

    def _energy_and_score(self, x: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        energy, score = self.base._energy_and_score(self._embed(x), t, create_graph)
        return energy, self._free(score)

    # ------------------------------------------------------------------ rules
    def gaussian_form(self, forms: list) -> object | None:
        """The conditional of a quadratic form: (P_FF, h_F − P_FC v_C, c + ½ v_CᵀP_CC v_C
        − h_Cᵀ v_C); a Gaussian mixture conditions component by component."""
        from ebmalgebra.quadratic import Components, Quadratic, concatenate, from_gaussian

        form = forms[0]
        if isinstance(form, Quadratic):
            return self._condition(form)
        parts = [self._condition(from_gaussian(mean, covariance).shifted(-log_mass))
                 for log_mass, mean, covariance in zip(form.log_masses, form.means,
                                                       form.covariances, strict=True)]
        result = concatenate(parts)
        return result if isinstance(result, Components) else None

    def _condition(self, form: object) -> object:
        from ebmalgebra.quadratic import Quadratic

        clamped = self.mask.flatten().to(form.precision.device)
        free, fixed = ~clamped, clamped
        value = self.values.flatten().to(form.precision)[fixed]
        precision = form.precision
        return Quadratic(precision[free][:, free],
                         form.shift[free] - precision[free][:, fixed] @ value,
                         form.constant + 0.5 * value @ precision[fixed][:, fixed] @ value
                         - form.shift[fixed] @ value)

    def spec(self) -> dict[str, Any]:
        return {"mask": self.mask, "values": self.values}

    def __repr__(self) -> str:
        clamped = ", ".join(f"{index}={value:.4g}" for index, value in zip(
            self.mask.flatten().nonzero().squeeze(1).tolist(),
            self.values.flatten()[self.mask.flatten()].tolist(), strict=True))
        return f"{self.base.parenthesized(ATOM)}.condition({clamped})"


def condition(model: EnergyModel, mask: object, values: object) -> EnergyModel:
    """``model.condition(mask, values)``: clamp the coordinates where ``mask`` is True."""
    return Conditioned(model, mask, values)
