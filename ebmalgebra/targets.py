"""Analytic targets: normalised densities with closed-form energy, score and log Z.

Every target's energy is E = −log p(x) (so log Z = 0), its score is
analytic (no autograd), and it samples exactly where an exact sampler
exists. Parameters are buffers; computations follow the dtype and device
of the input ``x``.

=========================  ===========  ============================================
target                     event shape  density
=========================  ===========  ============================================
``Gaussian(loc, scale)``   loc.shape    Π N(x_i; μ_i, σ_i²)
``MultivariateGaussian``   (d,)         N(x; μ, Σ)
``GaussianMixture``        (d,)         Σ_k π_k N(x; μ_k, Σ_k)
``Banana``                 (2,)         x₁ ~ N(0, s²), x₂ | x₁ ~ N(b(x₁² − s²), σ²)
``Funnel``                 (d,)         v ~ N(0, s²), x_i | v ~ N(0, eᵛ) (Neal 2003)
``Ring``                   (2,)         ∝ exp(−(‖x‖ − r)² / 2w²)
``Bar``                    (2,)         N(c, R diag(ℓ², w²) Rᵀ), R a rotation by angle
=========================  ===========  ============================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, TimeLike
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.leaves import Leaf

if TYPE_CHECKING:
    from ebmalgebra.noised import NoisedGaussianMixture
    from ebmalgebra.schedules import NoiseSchedule

_LOG_2PI = math.log(2.0 * math.pi)

TensorLike = float | Sequence[float] | Tensor


def _as_tensor(value: TensorLike, what: str, dtype: torch.dtype | None = None) -> Tensor:
    """A detached floating tensor copy; plain numbers take ``dtype`` (default dtype if None)."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=dtype)
    if not tensor.is_floating_point():
        tensor = tensor.to(dtype or torch.get_default_dtype())
    return validation.finite_entries(what, tensor.detach().clone())


def _positive(value: TensorLike, what: str, dtype: torch.dtype | None = None) -> Tensor:
    return validation.positive_entries(what, _as_tensor(value, what, dtype))


def _cholesky(matrix: Tensor, what: str) -> Tensor:
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise CompositionError(f"{what} must be a square matrix, got shape {tuple(matrix.shape)}")
    if not torch.allclose(matrix, matrix.mT, rtol=1e-5, atol=1e-8):
        raise ArgumentError(f"{what} must be symmetric")
    factor, info = torch.linalg.cholesky_ex(matrix)
    if (info != 0).any():
        raise ArgumentError(f"{what} must be positive definite")
    return factor


class AnalyticTarget(Leaf):
    """A normalised leaf (log Z = 0) with an analytic score; ``E = −log p``."""

    analytic_score = True

    def __init__(self, event_shape: torch.Size, name: str, can_sample: bool = True):
        super().__init__(torch.Size(event_shape), name, Capabilities(
            has_energy=True, has_score=True, normalizer_known=True, can_sample=can_sample))

    def _log_z(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self._energy_and_score(x, t, False)[0]

    def _randn(self, n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
        """Standard normal draws on this target's device and dtype."""
        reference = next(self.buffers())
        return torch.randn(n, *shape, generator=generator, dtype=reference.dtype,
                           device=reference.device)


class _ShapeParameterTarget(AnalyticTarget):
    """A target whose shape parameters are Python floats (constants of its closed forms
    and of compiled kernels), mirrored in the ``hyperparameters`` buffer so that
    ``state_dict`` carries them.

    Loading a state dict makes its values the model's own, as for any ``nn.Module``
    (a Ring(radius=1) loaded with a radius-3 state evaluates radius 3); values that
    break the constructor's constraints are refused before anything changes.
    Subclasses name the floats in ``shape_parameters``, check them in
    :meth:`_check_shape_parameters` and set them, with what derives from them, in
    :meth:`_set_shape_parameters`.
    """

    shape_parameters: tuple[str, ...] = ()

    def _check_shape_parameters(self, values: Sequence[float]) -> None:
        """Raise :class:`ArgumentError` unless ``values`` fit the constructor's constraints."""

    def _set_shape_parameters(self, values: Sequence[float]) -> None:
        # Nodes are immutable to users; a loaded state is the one sanctioned update.
        for name, value in zip(self.shape_parameters, values, strict=True):
            object.__setattr__(self, name, float(value))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        loaded = state_dict.get(prefix + "hyperparameters")
        if isinstance(loaded, Tensor) and loaded.shape == self.hyperparameters.shape:
            try:
                self._check_shape_parameters(loaded.tolist())
            except ArgumentError as error:
                raise ArgumentError(f"state_dict entry {prefix}hyperparameters: {error}"
                                    ) from None
        before = self.hyperparameters.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # Unchanged values keep their exact floats (the buffer holds them rounded).
        if not torch.equal(self.hyperparameters, before):
            self._set_shape_parameters(self.hyperparameters.tolist())


class Gaussian(AnalyticTarget):
    """Diagonal Gaussian over any event shape: p(x) = Π_i N(x_i; μ_i, σ_i²).

    E(x) = ½ Σ ((x − μ)/σ)² + Σ log σ + (d/2) log 2π,  s(x) = −(x − μ)/σ².

    Args:
        loc: mean μ; its shape is the event shape (a float gives event shape ``()``).
        scale: standard deviations σ > 0, broadcastable to ``loc``.

    Example:
        >>> a = Gaussian(torch.zeros(2), 1.0, name="a")
    """

    def __init__(self, loc: TensorLike, scale: TensorLike = 1.0, *, name: str = "gaussian"):
        loc = _as_tensor(loc, f"{name}: loc")
        scale = _positive(scale, f"{name}: scale", loc.dtype).to(loc.dtype)
        try:
            scale = torch.broadcast_to(scale, loc.shape).clone()
        except RuntimeError:
            raise CompositionError(
                f"{name}: scale of shape {tuple(scale.shape)} does not broadcast to loc of shape "
                f"{tuple(loc.shape)}"
            ) from None
        super().__init__(loc.shape, name)
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)
        self.register_buffer("precision", scale**-2)
        self.register_buffer("log_constant", scale.log().sum() + 0.5 * loc.numel() * _LOG_2PI)
        self._freeze()

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        diff = x - self.loc.to(x)
        precision_diff = diff * self.precision.to(x)
        # Rows of the event's size, not -1: an empty batch has no size to infer.
        squares = (diff * precision_diff).reshape(len(x), self.loc.numel())
        energy = 0.5 * squares.sum(1) + self.log_constant.to(x)
        return energy, -precision_diff

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.loc + self.scale * self._randn(n, generator, *self.loc.shape)

    def gaussian_parameters(self) -> tuple[Tensor, Tensor]:
        """``(mean (d,), covariance (d, d))`` for closed-form rewrites (1-D event shapes)."""
        return self.loc.reshape(-1), torch.diag(self.scale.reshape(-1) ** 2)

    def gaussian_form(self, forms: list) -> object | None:
        """E as a quadratic form over vectors (other event shapes have none here)."""
        from ebmalgebra.quadratic import from_gaussian

        return from_gaussian(*self.gaussian_parameters()) if len(self.event_shape) == 1 \
            else None


class MultivariateGaussian(AnalyticTarget):
    """Full-covariance Gaussian N(μ, Σ) over vectors, event shape ``(d,)``.

    E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) + Σ log L_ii + (d/2) log 2π with Σ = L Lᵀ,
    s(x) = −Σ⁻¹ (x − μ). Give exactly one of ``covariance``, ``scale_tril``,
    ``precision``.
    """

    def __init__(
        self,
        loc: TensorLike,
        covariance: TensorLike | None = None,
        *,
        scale_tril: TensorLike | None = None,
        precision: TensorLike | None = None,
        name: str = "mvn",
    ):
        loc = _as_tensor(loc, f"{name}: loc")
        if loc.dim() != 1:
            raise CompositionError(f"{name}: loc must be a vector (d,), got {tuple(loc.shape)}")
        given = [v is not None for v in (covariance, scale_tril, precision)]
        if sum(given) != 1:
            raise ArgumentError(f"{name}: give exactly one of covariance, scale_tril, precision")
        if covariance is not None:
            tril = _cholesky(_as_tensor(covariance, f"{name}: covariance", loc.dtype).to(loc.dtype),
                             f"{name}: covariance")
        elif scale_tril is not None:
            tril = _as_tensor(scale_tril, f"{name}: scale_tril", loc.dtype).to(loc.dtype)
            if tril.dim() != 2 or (torch.diagonal(tril) <= 0).any():
                raise CompositionError(f"{name}: scale_tril must be lower triangular with a "
                                       "positive diagonal")
            tril = torch.tril(tril)
        else:
            precision_tensor = _as_tensor(precision, f"{name}: precision", loc.dtype).to(loc.dtype)
            covariance_tensor = torch.cholesky_inverse(
                _cholesky(precision_tensor, f"{name}: precision"))
            tril = _cholesky(0.5 * (covariance_tensor + covariance_tensor.mT),
                             f"{name}: inverse of precision")
        if tril.shape != (loc.shape[0], loc.shape[0]):
            raise CompositionError(
                f"{name}: covariance must be ({loc.shape[0]}, {loc.shape[0]}) to match loc, "
                f"got {tuple(tril.shape)}"
            )
        super().__init__(loc.shape, name)
        self.register_buffer("loc", loc)
        self.register_buffer("scale_tril", tril)
        self.register_buffer("precision", torch.cholesky_inverse(tril))
        self.register_buffer(
            "log_constant", torch.diagonal(tril).log().sum() + 0.5 * loc.shape[0] * _LOG_2PI
        )
        self._freeze()

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        diff = x - self.loc.to(x)
        precision_diff = diff @ self.precision.to(x)
        energy = 0.5 * (diff * precision_diff).sum(-1) + self.log_constant.to(x)
        return energy, -precision_diff

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.loc + self._randn(n, generator, self.loc.shape[0]) @ self.scale_tril.mT

    def gaussian_parameters(self) -> tuple[Tensor, Tensor]:
        """``(mean (d,), covariance (d, d))`` for closed-form rewrites."""
        return self.loc, self.scale_tril @ self.scale_tril.mT

    def gaussian_form(self, forms: list) -> object | None:
        """E as a quadratic form (:mod:`ebmalgebra.quadratic`)."""
        from ebmalgebra.quadratic import from_gaussian

        return from_gaussian(*self.gaussian_parameters())


class Bar(MultivariateGaussian):
    """A 2-D elongated Gaussian "bar": N(c, R diag(ℓ², w²) Rᵀ), R rotating by ``angle``.

    Args:
        length: standard deviation ℓ along the bar.
        width: standard deviation w across it.
        angle: orientation in radians (0 = horizontal).
        center: the bar's centre c.
    """

    def __init__(
        self,
        *,
        length: float = 2.0,
        width: float = 0.25,
        angle: float = 0.0,
        center: TensorLike = (0.0, 0.0),
        name: str = "bar",
    ):
        for value, what in ((length, "length"), (width, "width")):
            _positive(value, f"{name}: {what}")
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
        covariance = rotation @ torch.diag(torch.tensor([length**2, width**2],
                                                        dtype=torch.float64)) @ rotation.T
        loc = _as_tensor(center, f"{name}: center")
        super().__init__(loc, covariance.to(loc.dtype), name=name)


class GaussianMixture(AnalyticTarget):
    """Mixture of K Gaussians over vectors: p(x) = Σ_k π_k N(x; μ_k, Σ_k).

    E(x) = −logsumexp_k(log π_k + log N(x; μ_k, Σ_k)),
    s(x) = Σ_k r_k(x) (−Σ_k⁻¹ (x − μ_k)) with responsibilities r = softmax.

    Args:
        locs: component means ``(K, d)``.
        scales: isotropic ``(K,)`` / float or diagonal ``(K, d)`` standard deviations,
            or give ``covariances`` ``(K, d, d)`` instead.
        weights: mixture weights ``(K,)`` (normalised here); uniform by default.
    """

    def __init__(
        self,
        locs: TensorLike,
        scales: TensorLike | None = None,
        *,
        covariances: TensorLike | None = None,
        weights: TensorLike | None = None,
        name: str = "gmm",
    ):
        locs = _as_tensor(locs, f"{name}: locs")
        if locs.dim() != 2:
            raise CompositionError(f"{name}: locs must be (K, d), got {tuple(locs.shape)}")
        n_components, dim = locs.shape
        if (scales is None) == (covariances is None):
            raise ArgumentError(f"{name}: give exactly one of scales, covariances")
        if covariances is not None:
            covs = _as_tensor(covariances, f"{name}: covariances", locs.dtype).to(locs.dtype)
            if covs.shape != (n_components, dim, dim):
                raise CompositionError(f"{name}: covariances must be ({n_components}, {dim}, "
                                       f"{dim}), got {tuple(covs.shape)}")
            tril = _cholesky(covs, f"{name}: covariances")
        else:
            scale = _positive(scales, f"{name}: scales", locs.dtype).to(locs.dtype)
            if scale.dim() == 1 and scale.shape[0] == n_components:
                scale = scale[:, None]
            try:
                scale = torch.broadcast_to(scale, (n_components, dim))
            except RuntimeError:
                raise CompositionError(f"{name}: scales of shape {tuple(scale.shape)} do not "
                                       f"fit locs of shape {tuple(locs.shape)}") from None
            tril = torch.diag_embed(scale)
        if weights is None:
            weights = torch.full((n_components,), 1.0 / n_components, dtype=locs.dtype)
        weights = _positive(weights, f"{name}: weights", locs.dtype).to(locs.dtype)
        if weights.shape != (n_components,):
            raise CompositionError(f"{name}: weights must be ({n_components},), got "
                                   f"{tuple(weights.shape)}")
        super().__init__(torch.Size([dim]), name)
        self.register_buffer("locs", locs)
        self.register_buffer("scale_trils", tril)
        self.register_buffer("precisions", torch.cholesky_inverse(tril))
        log_norm = torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1) + 0.5 * dim * _LOG_2PI
        self.register_buffer("log_weights", (weights / weights.sum()).log() - log_norm)
        self.register_buffer("weights", weights / weights.sum())
        self._freeze()

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        diff = x[:, None, :] - self.locs.to(x)  # (batch, K, d)
        precision_diff = torch.einsum("kij,bkj->bki", self.precisions.to(x), diff)
        log_joint = self.log_weights.to(x) - 0.5 * (diff * precision_diff).sum(-1)
        energy = -torch.logsumexp(log_joint, dim=1)
        responsibilities = torch.softmax(log_joint, dim=1)
        return energy, -(responsibilities[..., None] * precision_diff).sum(1)

    def gaussian_form(self, forms: list) -> object | None:
        """E as Gaussian components with masses π_k (:mod:`ebmalgebra.quadratic`)."""
        from ebmalgebra.quadratic import Components

        trils = self.scale_trils.double()
        return Components(self.weights.double().log(), self.locs.double(), trils @ trils.mT)

    def noised(self, schedule: NoiseSchedule) -> NoisedGaussianMixture:
        """This mixture diffused by ``schedule`` (``VE()`` or ``VP()``): the noise-conditioned
        leaf p_t = Σ_k π_k N(α_t μ_k, α_t² Σ_k + σ_t² I), exact at every noise level t
        (see :mod:`ebmalgebra.noised`)."""
        from ebmalgebra.noised import NoisedGaussianMixture

        return NoisedGaussianMixture(self.locs, self.scale_trils @ self.scale_trils.mT,
                                     self.weights, schedule, name=self.name)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        # torch.multinomial refuses n = 0, which must give an empty (0, d) batch.
        component = (torch.multinomial(self.weights.float(), n, replacement=True,
                                       generator=generator) if n
                     else torch.zeros(0, dtype=torch.long)).to(self.locs.device)
        noise = self._randn(n, generator, self.locs.shape[1])
        return self.locs[component] + torch.einsum(
            "bij,bj->bi", self.scale_trils[component], noise)


class Banana(_ShapeParameterTarget):
    """Twisted Gaussian (Haario et al. 1999): x₁ ~ N(0, s²), x₂ | x₁ ~ N(b(x₁² − s²), σ²).

    With u = x₂ − b(x₁² − s²):
    E = x₁²/(2s²) + u²/(2σ²) + log s + log σ + log 2π,
    ∂E/∂x₁ = x₁/s² − 2b x₁ u/σ², ∂E/∂x₂ = u/σ².
    """

    shape_parameters = ("scale", "curvature", "noise")

    def __init__(self, *, scale: float = 2.0, curvature: float = 0.5, noise: float = 1.0,
                 name: str = "banana"):
        super().__init__(torch.Size([2]), name)
        self._check_shape_parameters((scale, curvature, noise))
        self.register_buffer("hyperparameters", torch.tensor([scale, curvature, noise]))
        self._set_shape_parameters((scale, curvature, noise))
        self._freeze()

    def _check_shape_parameters(self, values: Sequence[float]) -> None:
        scale, curvature, noise = values
        for value, what in ((scale, "scale"), (noise, "noise")):
            _positive(value, f"{self.name}: {what}")
        _as_tensor(curvature, f"{self.name}: curvature")

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        s, b, sigma = self.scale, self.curvature, self.noise
        x1, x2 = x[:, 0], x[:, 1]
        u = x2 - b * (x1 * x1 - s * s)
        energy = 0.5 * (x1 / s) ** 2 + 0.5 * (u / sigma) ** 2 + math.log(s * sigma) + _LOG_2PI
        grad1 = x1 / s**2 - 2.0 * b * x1 * u / sigma**2
        grad2 = u / sigma**2
        return energy, -torch.stack([grad1, grad2], dim=-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = self._randn(n, generator, 2)
        x1 = self.scale * z[:, 0]
        x2 = self.curvature * (x1 * x1 - self.scale**2) + self.noise * z[:, 1]
        return torch.stack([x1, x2], dim=-1)


class Funnel(_ShapeParameterTarget):
    """Neal's funnel over (v, x₁ … x_{d−1}): v ~ N(0, s²), x_i | v ~ N(0, eᵛ).

    E = v²/(2s²) + log s + Σ_i (x_i² e^{−v}/2 + v/2) + (d/2) log 2π,
    ∂E/∂v = v/s² − ½ e^{−v} Σ x_i² + (d − 1)/2, ∂E/∂x_i = x_i e^{−v}.
    """

    shape_parameters = ("scale",)

    def __init__(self, dim: int = 2, *, scale: float = 3.0, name: str = "funnel"):
        validation.count(f"{name}: dim", dim, 2)
        super().__init__(torch.Size([dim]), name)
        self._check_shape_parameters((scale,))
        self.register_buffer("hyperparameters", torch.tensor([float(scale)]))
        self._set_shape_parameters((scale,))
        self._freeze()

    def _check_shape_parameters(self, values: Sequence[float]) -> None:
        _positive(values[0], f"{self.name}: scale")

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        v, rest = x[:, 0], x[:, 1:]
        dim = x.shape[1]
        inv_var = torch.exp(-v)
        squares = (rest * rest).sum(-1)
        energy = (0.5 * (v / self.scale) ** 2 + math.log(self.scale) + 0.5 * inv_var * squares
                  + 0.5 * (dim - 1) * v + 0.5 * dim * _LOG_2PI)
        grad_v = v / self.scale**2 - 0.5 * inv_var * squares + 0.5 * (dim - 1)
        grad_rest = rest * inv_var[:, None]
        return energy, -torch.cat([grad_v[:, None], grad_rest], dim=-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = self._randn(n, generator, self.event_shape[0])
        v = self.scale * z[:, :1]
        return torch.cat([v, z[:, 1:] * torch.exp(0.5 * v)], dim=-1)


class Ring(_ShapeParameterTarget):
    """A 2-D ring: p(x) ∝ exp(−(‖x‖ − r)²/(2w²)), normalised exactly.

    Z = 2π [w² e^{−r²/2w²} + r w √(2π) Φ(r/w)], E = (‖x‖ − r)²/(2w²) + log Z,
    s(x) = −(‖x‖ − r)/w² · x/‖x‖. Exact sampling by rejection from the
    envelope (r + |ρ − r|) e^{−(ρ−r)²/2w²}, a mixture of a Gaussian and a
    two-sided Rayleigh in the radius ρ.
    """

    shape_parameters = ("radius", "width")

    def __init__(self, *, radius: float = 2.0, width: float = 0.25, name: str = "ring"):
        super().__init__(torch.Size([2]), name)
        self._check_shape_parameters((radius, width))
        self.register_buffer("hyperparameters", torch.tensor([radius, width]))
        self._set_shape_parameters((radius, width))
        self._freeze()

    def _check_shape_parameters(self, values: Sequence[float]) -> None:
        for value, what in zip(values, ("radius", "width"), strict=True):
            _positive(value, f"{self.name}: {what}")

    def _set_shape_parameters(self, values: Sequence[float]) -> None:
        super()._set_shape_parameters(values)
        r, w = self.radius, self.width
        phi = 0.5 * math.erfc(-r / (w * math.sqrt(2.0)))
        log_z = math.log(2.0 * math.pi) + math.log(
            w * w * math.exp(-0.5 * (r / w) ** 2) + r * w * math.sqrt(2.0 * math.pi) * phi)
        object.__setattr__(self, "log_normalizer", log_z)

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        # hypot does not underflow (x.norm() is 0 for |x| ≲ 1e-154 in float64), so x/ρ is
        # the unit vector it should be however close x is to the origin.
        rho = torch.hypot(x[:, 0], x[:, 1])
        gap = (rho - self.radius) / self.width
        energy = 0.5 * gap * gap + self.log_normalizer
        # At the origin itself (a cone point) this gives the zero subgradient instead of 0/0.
        direction = torch.where(rho[:, None] > 0, x / rho[:, None], torch.zeros_like(x))
        return energy, -(gap / self.width)[:, None] * direction

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        r, w = self.radius, self.width
        mass_gaussian = r * w * math.sqrt(2.0 * math.pi)
        p_gaussian = mass_gaussian / (mass_gaussian + 2.0 * w * w)
        dtype, device = self.hyperparameters.dtype, self.hyperparameters.device
        # Seeded with an empty tensor so that n = 0 gives an empty (0, 2) batch.
        accepted = [torch.empty(0, dtype=dtype, device=device)]
        total = 0
        while total < n:
            m = max(2 * (n - total), 16)
            u = torch.rand(m, 4, generator=generator, dtype=dtype, device=device)
            normal = self._randn(m, generator)
            rayleigh = w * torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))
            sign = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
            gap = torch.where(u[:, 2] < p_gaussian, w * normal, sign * rayleigh)
            rho = r + gap
            keep = (rho > 0) & (u[:, 3] * (r + gap.abs()) < rho)
            accepted.append(rho[keep])
            total += int(keep.sum())
        rho = torch.cat(accepted)[:n]
        angle = 2.0 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=device)
        return rho[:, None] * torch.stack([angle.cos(), angle.sin()], dim=-1)
