"""A ball envelope: the tail that the density of noised bounded data must have.

If the data lie in a ball ‖x₀ − c‖ ≤ R and x = x₀ + σ ε with ε ~ N(0, I), the
noised density p_σ = p_data ∗ N(0, σ² I) obeys, for ‖x − c‖ ≥ R,

    p_σ(x) ≤ max_{‖x₀ − c‖ ≤ R} N(x; x₀, σ² I) = (2πσ²)^(−d/2) exp(−(‖x − c‖ − R)² / (2σ²)),

so log p_σ(x) ≤ −(‖x − c‖ − R)₊² / (2σ²) + const everywhere. A trained energy
E(x, σ) need not respect this far from the data, where it never saw a sample:
the faces zoo's denoiser energies are nearly flat there at small σ, so
exp(−E) puts more mass on far-away images than on faces and cannot be
normalised. The envelope

    E_env(x, σ) = (‖x − c‖ − R)₊² / (2σ²)

is zero inside the ball, where the data are, and adds the tail the truth has
outside it: ``model & ball_envelope(radius=R)`` is the model inside the ball and,
for a model bounded below (denoiser energies are ≥ 0), proper at every σ: its
density is at most exp(−min E) exp(−E_env), whose integral
:meth:`BallEnvelope.log_z_at` gives in closed form. Proper is not the same as
right: inside the ball the model is unchanged and may still put most of its mass
on images that are not data (docs/composition.md measures the face models).

At large σ the noised data themselves lie outside the ball, near
‖x − c‖ ≈ ‖x₀ − c‖ + σ√d in d dimensions, where a trained model already
has the right energy. The radius R + wσ (``noise_width=w``) lowers the bound
(still a valid bound, since E_env only decreases) and keeps the envelope zero
on the noised data at every level for w a little above √d, so that
``model & envelope`` is the model wherever its samples are; ‖ε‖ of
ε ~ N(0, I_d) has mean ≈ √d and standard deviation ≈ 1/√2, so w = √d + 3
leaves out ~1e-5 of the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, TimeLike
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.io import register_leaf
from ebmalgebra.leaves import Leaf, as_event_shape

__all__ = ["BallEnvelope", "ball_envelope", "enclosing_ball"]


@register_leaf("ball_envelope")
class BallEnvelope(Leaf):
    """E(x, σ) = (‖x − c‖ − R_σ)₊² / (2σ²): zero in the ball of radius R_σ = R + wσ about c.

    A noise-conditioned leaf (t is the noise level σ of a variance-exploding
    path, as for the zoo's models). With r = ‖x − c‖ over all event dimensions,

        E(x, σ) = (r − R_σ)₊² / (2σ²),    s(x, σ) = −(r − R_σ)₊ / σ² · (x − c) / r.

    Shapes: x is ``(batch, *event_shape)``; energies are ``(batch,)``; ``t`` is a
    float, a 0-d tensor or one level per row ``(batch,)``.

    Args:
        radius: R ≥ 0, the radius at σ = 0 (where the data are).
        noise_width: w ≥ 0, how fast the radius grows with σ (default 0; see the
            module docstring for w ≈ √d + 3).
        center: c, a tensor of the event shape (default: the origin).
        event_shape: the shape of x; default the center's shape, or any shape when
            no center is given (the envelope then fits into every product).
        name: printed by ``repr``.

    Example:
        >>> envelope = BallEnvelope(10.0)
        >>> proper = zoo.load("glasses") & envelope       # repr: glasses & envelope
        >>> envelope.energy(torch.zeros(2, 16, 16), 0.1)   # tensor([0., 0.]): inside
    """

    noise_conditioned = True
    analytic_score = True

    def __init__(self, radius: float, *, center: Tensor | None = None,
                 noise_width: float = 0.0,
                 event_shape: int | Sequence[int] | None = None,
                 name: str = "envelope") -> None:
        radius = validation.non_negative(f"{name}: radius", radius)
        noise_width = validation.non_negative(f"{name}: noise_width", noise_width)
        shape = None if event_shape is None else as_event_shape(event_shape)
        if center is not None:
            center = validation.finite_entries(
                f"{name}: center", validation.floating_tensor(f"{name}: center", center)
            ).detach().clone()
            if shape is None:
                shape = center.shape
            elif tuple(center.shape) != tuple(shape):
                raise CompositionError(f"{name}: center has shape {tuple(center.shape)}, but "
                                       f"event_shape is {tuple(shape)}")
        super().__init__(shape, name, Capabilities(
            has_energy=True, has_score=True, normalizer_known=False, can_sample=False))
        self.radius = radius
        self.noise_width = noise_width
        self.register_buffer("center", center)
        self._freeze()

    def config(self) -> dict:
        """Constructor arguments for :func:`ebmalgebra.save`."""
        return {"radius": self.radius, "center": self.center, "noise_width": self.noise_width,
                "event_shape": None if self.event_shape is None else list(self.event_shape),
                "name": self.name}

    def sampling_exponent(self) -> float:
        """0: the envelope is flat where samples are, so it does not steepen the energy."""
        return 0.0

    def _offset(self, x: Tensor) -> Tensor:
        return x if self.center is None else x - self.center.to(x)

    def radius_at(self, sigma: float | Tensor) -> float | Tensor:
        """R_σ = R + wσ, the radius of the flat ball at noise level σ."""
        return self.radius + self.noise_width * sigma

    def _distance_excess_variance(self, offset: Tensor, t: TimeLike
                                  ) -> tuple[Tensor, Tensor, Tensor]:
        """(‖x − c‖, (‖x − c‖ − R_σ)₊, σ²), each 0-d or ``(batch,)``, in x's dtype."""
        if t is None:
            raise CompositionError(f"{self!r} is noise-conditioned: give a noise level, "
                                   "energy(x, t=sigma)")
        sigma = torch.as_tensor(t, dtype=offset.dtype, device=offset.device)
        if not torch.compiler.is_compiling() and bool((sigma < 0).any()):
            raise ArgumentError(f"{self!r}: the noise level t must be non-negative, got "
                                f"{sigma.min().item()!r}")
        distance = offset.flatten(1).norm(dim=1)
        excess = (distance - self.radius_at(sigma)).clamp_min(0.0)
        return distance, excess, sigma.square()

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        _, excess, variance = self._distance_excess_variance(self._offset(x), t)
        return _inside_zero(excess, excess.square() / (2.0 * variance))

    def _energy_and_score(self, x: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        offset = self._offset(x)
        distance, excess, variance = self._distance_excess_variance(offset, t)
        energy = _inside_zero(excess, excess.square() / (2.0 * variance))
        # Inside the ball excess = 0, so the clamp only keeps 0/0 out at the center.
        pull = _inside_zero(excess, excess / (variance * distance.clamp_min(
            torch.finfo(x.dtype).tiny)))
        return energy, -pull.reshape(-1, *(1,) * (x.dim() - 1)) * offset

    def log_z_at(self, sigma: float, dim: int | None = None) -> float:
        """log ∫ exp(−E(x, σ)) dx over ℝ^d, in closed form (float64).

        In polar coordinates, with u = r − R outside the ball,

            Z = V_d R^d + S_{d−1} Σ_{k=0}^{d−1} C(d−1, k) R^{d−1−k} I_k   (R = R_σ),
            I_k = ∫_0^∞ u^k e^{−u²/(2σ²)} du = 2^{(k−1)/2} Γ((k+1)/2) σ^{k+1},

        with V_d = π^{d/2}/Γ(d/2 + 1) the volume of the unit ball and
        S_{d−1} = d V_d the area of the unit sphere. The terms are positive and
        are summed in log space. ``dim`` is d (default: the event shape's size).
        """
        sigma = validation.positive(f"{self.name}: log_z_at sigma", sigma)
        if dim is None:
            if self.event_shape is None:
                raise CompositionError(f"{self!r} has no event shape: give dim=")
            dim = math.prod(self.event_shape)
        dim = validation.count(f"{self.name}: log_z_at dim", dim)
        radius = self.radius_at(sigma)
        log_unit_ball = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
        log_sphere = math.log(dim) + log_unit_ball
        terms = []
        if radius > 0.0:
            terms.append(log_unit_ball + dim * math.log(radius))
        for k in range(dim):
            if radius == 0.0 and k < dim - 1:
                continue  # R^{d−1−k} = 0
            log_binomial = (math.lgamma(dim) - math.lgamma(k + 1.0)
                            - math.lgamma(dim - k))
            log_power = 0.0 if k == dim - 1 else (dim - 1 - k) * math.log(radius)
            log_integral = (0.5 * (k - 1) * math.log(2.0) + math.lgamma(0.5 * (k + 1))
                            + (k + 1) * math.log(sigma))
            terms.append(log_sphere + log_binomial + log_power + log_integral)
        return float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))


def ball_envelope(radius: float, *, center: Tensor | None = None, noise_width: float = 0.0,
                  event_shape: int | Sequence[int] | None = None,
                  name: str = "envelope") -> BallEnvelope:
    """The :class:`BallEnvelope` (‖x − c‖ − R − wσ)₊² / (2σ²): makes ``model & envelope`` proper.

    Example:
        >>> center, radius = enclosing_ball(faces(8192), margin=0.25)
        >>> proper = glasses & ball_envelope(radius, center=center, noise_width=16 + 3)
    """
    return BallEnvelope(radius, center=center, noise_width=noise_width,
                        event_shape=event_shape, name=name)


def enclosing_ball(data: Tensor, *, margin: float = 0.0) -> tuple[Tensor, float]:
    """A ball holding every point of ``data`` ``(n, *event_shape)``: (mean, max distance + margin).

    The center is the data mean (not the smallest enclosing ball, but close for
    data spread evenly around it), the radius the largest distance of a point
    from it plus ``margin`` ≥ 0 (room for points the sample did not contain).
    """
    data = validation.floating_tensor("enclosing_ball: data", data)
    if data.dim() < 2 or data.shape[0] == 0:
        raise CompositionError(f"enclosing_ball: data must be shaped (n, *event_shape) with "
                               f"n ≥ 1, got {tuple(data.shape)}")
    margin = validation.non_negative("enclosing_ball: margin", margin)
    center = data.mean(0)
    radius = float((data - center).flatten(1).norm(dim=1).max()) + margin
    return center, radius


def _inside_zero(excess: Tensor, value: Tensor) -> Tensor:
    """``value`` outside the flat ball and 0 inside it (excess = 0), also at σ = 0, where
    the envelope is the hard wall E = 0 inside, +∞ outside, and the formulas give 0/0."""
    return torch.where(excess > 0, value, torch.zeros_like(value))
