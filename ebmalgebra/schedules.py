"""Noise schedules of diffusion models: x_t = α_t x_0 + σ_t ε with ε ~ N(0, I).

A schedule maps the noise level ``t`` a noise-conditioned model takes to the
signal scale α_t and the noise scale σ_t; if x_0 ~ p then x_t has density
p_t = (p scaled by α_t) ∗ N(0, σ_t² I). Two families (Song et al. 2021):

* :class:`VE` (variance exploding): α_t = 1, σ_t = t, so t *is* the noise
  standard deviation and the zoo's models E(x, σ) fit it directly.
* :class:`VP` (variance preserving) with the linear rate β(s) = β_min + s(β_max − β_min)
  on t ∈ [0, 1]: α_t = exp(−¼ t² (β_max − β_min) − ½ t β_min), σ_t = √(1 − α_t²), so a
  unit-variance x_0 keeps unit variance at every t.

``alpha(t)`` and ``sigma(t)`` accept a float or a tensor (one level per batch row)
and return tensors of t's shape, in t's dtype (float64 for plain floats).

A schedule's file form (:mod:`ebmalgebra.io`) is ``schedule.spec()``, a list
``[kind, *arguments]`` such as ``["vp", 0.1, 20.0]``; :func:`schedule_from_spec`
rebuilds it. Each class declares its ``kind`` and arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import format_number
from ebmalgebra.errors import ArgumentError

__all__ = ["VE", "VP", "NoiseSchedule", "schedule_from_spec"]

def _as_levels(t: float | Tensor) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    return torch.tensor(validation.real("noise level t", t), dtype=torch.float64)

class NoiseSchedule:
    """x_t = α_t x_0 + σ_t ε: subclasses define :meth:`alpha` and :meth:`sigma`, and a
    ``kind`` with :meth:`spec` and :meth:`from_arguments` to be saved."""

    kind: str | None = None
    """The name of the class in files; subclasses with one are registered by it."""

    kinds: dict[str, type[NoiseSchedule]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind is not None:
            NoiseSchedule.kinds[cls.kind] = cls

    def spec(self) -> list:
        """``[kind, *arguments]``: JSON numbers, strings and tensors that rebuild it."""
        return [self.kind]

    @classmethod
    def from_arguments(cls, *arguments: object) -> NoiseSchedule:
        """The schedule from the arguments of its :meth:`spec`."""
        return cls(*arguments)

    def alpha(self, t: float | Tensor) -> Tensor:
        """The signal scale α_t, shaped like ``t``."""
        raise NotImplementedError

    def sigma(self, t: float | Tensor) -> Tensor:
        """The noise standard deviation σ_t, shaped like ``t``."""
        raise NotImplementedError

class VE(NoiseSchedule):
    """Variance exploding: α_t = 1, σ_t = t (t ≥ 0 is the noise standard deviation)."""

    kind = "ve"

    def alpha(self, t: float | Tensor) -> Tensor:
        return torch.ones_like(_as_levels(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return _as_levels(t)

    def __repr__(self) -> str:
        return "VE()"

class VP(NoiseSchedule):
    """Variance preserving with a linear rate on t ∈ [0, 1] (Song et al. 2021, DDPM's limit).

    log α_t = −¼ t² (β_max − β_min) − ½ t β_min,  σ_t = √(1 − α_t²).

    Args:
        beta_min: the rate at t = 0.
        beta_max: the rate at t = 1.
    """

    kind = "vp"

    def __init__(self, *, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = validation.positive("VP: beta_min", beta_min)
        self.beta_max = validation.positive("VP: beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ArgumentError(f"VP: beta_max ({beta_max!r}) must be at least beta_min "
                                f"({beta_min!r})")

    def spec(self) -> list:
        return [self.kind, self.beta_min, self.beta_max]

    @classmethod
    def from_arguments(cls, beta_min: float, beta_max: float) -> VP:
        return cls(beta_min=beta_min, beta_max=beta_max)

    def log_alpha(self, t: float | Tensor) -> Tensor:
        t = _as_levels(t)
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: float | Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: float | Tensor) -> Tensor:
        # 1 − α² = −expm1(2 log α), accurate near t = 0 where α → 1.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def __repr__(self) -> str:
        return (f"VP(beta_min={format_number(self.beta_min)}, "
                f"beta_max={format_number(self.beta_max)})")


def schedule_from_spec(spec: object) -> NoiseSchedule:
    """The schedule a :meth:`NoiseSchedule.spec` list describes.

    Raises:
        ArgumentError: if ``spec`` is not ``[kind, *arguments]`` with a known kind.
    """
    if not isinstance(spec, list) or not spec or spec[0] not in NoiseSchedule.kinds:
        raise ArgumentError(f"a noise schedule must be [kind, *arguments] with kind one of "
                            f"{sorted(NoiseSchedule.kinds)}, got {spec!r:.80}")
    return NoiseSchedule.kinds[spec[0]].from_arguments(*spec[1:])
