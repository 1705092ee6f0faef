"""A noise-conditioned model divided by its normaliser at every noise level.

A noise-conditioned model E(x, t) has a normaliser Z(t) = ∫ exp(−E(x, t)) dx per
level, and mixing two of them at level t by ``|`` weighs component i by Z_i(t).
:class:`NoiseNormalized` adds log Z(t) to the energy,

    E'(x, t) = E(x, t) + log Z(t),

from values log Z(t_k) known (or estimated, see :func:`ebmalgebra.normalize`) at
levels t_1 < … < t_K. Between two levels log Z is interpolated linearly in log t
(exact at the levels; Z(t) of a noised density varies smoothly with log t, and the
sampling schedules are geometric in t). A level outside [t_1, t_K] raises
:class:`~ebmalgebra.CompositionError`: extrapolation would guess the mixture weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike, format_number
from ebmalgebra.errors import ArgumentTypeError, CompositionError
from ebmalgebra.leaves import Leaf
from ebmalgebra.operator import ATOM, Operator

if TYPE_CHECKING:
    from ebmalgebra.program import ProgramBuilder, ProgramNode

__all__ = ["LogZPath", "NoiseNormalized"]


def _floats(values: Sequence[float] | Tensor, what: str) -> list[float]:
    """``values`` (a sequence or tensor, one number per noise level) as a list of floats."""
    if isinstance(values, Tensor):
        values = values.detach().double().reshape(-1).tolist()
    try:
        result = [float(v) for v in values]
    except TypeError:
        raise ArgumentTypeError(f"normalized over noise levels: {what} must be a sequence of "
                                f"numbers, one per noise level, got {values!r:.80}") from None
    if not result or not all(math.isfinite(v) for v in result):
        raise CompositionError(f"normalized over noise levels: {what} must be a non-empty "
                               f"sequence of finite numbers, got {result}")
    return result


class LogZPath(Leaf):
    """log Z(t) as a noise-conditioned energy, constant in x: ``(batch,)``, score 0.

    Interpolates the values ``log_z`` at increasing ``levels`` linearly in log t;
    a level outside [levels[0], levels[-1]] raises :class:`CompositionError`.
    Not normalisable on its own (it is flat in x): it only shifts the energy of
    the model it belongs to (:class:`NoiseNormalized`).
    """

    noise_conditioned = True
    analytic_score = True

    def __init__(self, levels: list[float], log_z: list[float], event_shape: torch.Size | None,
                 name: str) -> None:
        super().__init__(event_shape, name, Capabilities(
            has_energy=True, has_score=True, normalizer_known=False, can_sample=False))
        self.register_buffer("log_levels", torch.tensor(levels, dtype=torch.float64).log())
        self.register_buffer("values", torch.tensor(log_z, dtype=torch.float64))
        self._freeze()

    def at(self, t: TimeLike) -> Tensor:
        """log Z(t) for a float, a 0-d tensor or one level per row ``(batch,)``, float64."""
        if t is None:
            raise CompositionError(f"{self!r} is noise-conditioned: give a noise level t")
        log_t = torch.as_tensor(t, dtype=torch.float64, device=self.log_levels.device).log()
        low, high = self.log_levels[0], self.log_levels[-1]
        # A level given as a float32 tensor differs from its float64 value by ~6e-8.
        slack = 1e-6
        outside = (log_t < low - slack) | (log_t > high + slack) | torch.isnan(log_t)
        if bool(outside.any()):
            bad = float(torch.as_tensor(t).reshape(-1)[outside.reshape(-1)][0])
            raise CompositionError(
                f"{self!r}: noise level t={bad:.6g} lies outside the levels it was "
                f"normalised at, [{math.exp(float(low)):.6g}, {math.exp(float(high)):.6g}]; "
                "normalize over noise_levels that cover it")
        if len(self.values) == 1:
            return self.values[0].expand(log_t.shape)
        log_t = log_t.clamp(low, high)
        right = torch.searchsorted(self.log_levels, log_t).clamp(1, len(self.values) - 1)
        left = right - 1
        fraction = (log_t - self.log_levels[left]) / (self.log_levels[right]
                                                      - self.log_levels[left])
        return self.values[left] + fraction * (self.values[right] - self.values[left])

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.at(t).to(x).expand(x.shape[0])

    def _energy_and_score(self, x: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        return self._energy(x, t), torch.zeros_like(x)


class NoiseNormalized(Operator):
    """p̃(·, t) / Z(t) at every noise level t: E(x, t) + log Z(t), log Z of the result 0.

    Args:
        base: a noise-conditioned model.
        levels: noise levels t_k > 0 (any order; stored increasing).
        log_z: log Z(t_k) at each level.
        stderr: standard errors of the estimated ``log_z`` (``None`` when known).

    The interpolation between levels and the error outside them are described in
    :mod:`ebmalgebra.noise_normalized`. Build it with
    ``normalize(model, noise_levels=...)``, which estimates log Z(t_k) by SMC.

    Example:
        >>> model = NoiseNormalized(noisy, levels=[0.1, 1.0], log_z=[2.0, 3.5])
        >>> model.energy(x, t=0.5)   # E(x, 0.5) + 2 + 1.5·log(5)/log(10)
    """

    symbol = "noise_normalized"
    passes_impropriety = True

    def __init__(self, base: EnergyModel, levels: Sequence[float] | Tensor,
                 log_z: Sequence[float] | Tensor,
                 stderr: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(base)
        levels = _floats(levels, "levels")
        log_z = _floats(log_z, "log_z")
        if len(log_z) != len(levels):
            raise CompositionError(f"normalized over noise levels: log_z has {len(log_z)} "
                                   f"values for {len(levels)} levels")
        if any(t <= 0 for t in levels) or len(set(levels)) != len(levels):
            raise CompositionError(f"normalized over noise levels: levels must be distinct and "
                                   f"positive, got {levels}")
        if not any(getattr(leaf, "noise_conditioned", False) for leaf in base.leaves()):
            raise CompositionError(f"normalized over noise levels: no part of {base!r} is "
                                   "noise-conditioned; use normalize(model) without "
                                   "noise_levels")
        order = sorted(range(len(levels)), key=levels.__getitem__)
        self._levels = [levels[i] for i in order]
        self._values = [log_z[i] for i in order]
        self._stderr = None
        if stderr is not None:
            stderr = [float(s) for s in (stderr.tolist() if isinstance(stderr, Tensor)
                                         else stderr)]
            if len(stderr) != len(levels):
                raise CompositionError(f"normalized over noise levels: stderr has "
                                       f"{len(stderr)} values for {len(levels)} levels")
            self._stderr = [stderr[i] for i in order]
        self.path = LogZPath(self._levels, self._values, base.event_shape,
                             f"log Z_{base.parenthesized(ATOM)}(t)")

    def derive_capabilities(self) -> Capabilities:
        caps = self.base.capabilities
        return Capabilities(has_energy=caps.has_energy, has_score=caps.has_score,
                            normalizer_known=True, can_sample=False)

    @property
    def base(self) -> EnergyModel:
        return self._children[0]

    @property
    def levels(self) -> Tensor:
        """The noise levels, increasing ``(K,)`` (float64)."""
        return torch.tensor(self._levels, dtype=torch.float64)

    @property
    def log_z_values(self) -> Tensor:
        """log Z at the (increasing) levels ``(K,)`` (float64)."""
        return torch.tensor(self._values, dtype=torch.float64)

    @property
    def log_z_stderr(self) -> Tensor | None:
        """Standard errors of log Z at the (increasing) levels ``(K,)``, or ``None``."""
        return None if self._stderr is None else torch.tensor(self._stderr, dtype=torch.float64)

    def log_z_at(self, t: TimeLike) -> Tensor:
        """The interpolated log Z(t) of the base (float64; see the module docstring)."""
        return self.path.at(t)

    def params(self) -> dict[str, Any]:
        return {"levels": list(self._levels), "log_z": list(self._values),
                "stderr": None if self._stderr is None else list(self._stderr)}

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability == "normalizer":
            return None
        if capability == "sample":
            return (self, "has no exact sampler")
        return self.base._why_not(capability)

    def _log_z(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self.base._energy(x, t) + self.path._energy(x, t)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        # log Z(t) is flat in x: the base's score, so score-only bases keep theirs; the
        # level is still checked against the normalised range, as for the energy.
        self.path.at(t)
        return self.base._score(x, t, create_graph)

    def _energy_and_score(self, x: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        energy, score = self.base._energy_and_score(x, t, create_graph)
        return energy + self.path._energy(x, t), score

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(0.0, [(1.0, program.lower(self.base)),
                                    (1.0, program.leaf(self.path))])

    def sampling_exponent(self) -> float:
        return self.base.sampling_exponent()

    def _explain_label(self) -> str:
        low, high = self._levels[0], self._levels[-1]
        return (f"{self.base!r} normalised at {len(self._levels)} noise levels in "
                f"[{format_number(low)}, {format_number(high)}]")

    def __repr__(self) -> str:
        return f"normalize({self.base!r}, noise_levels=<{len(self._levels)} levels>)"
