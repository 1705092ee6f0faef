"""An off-data margin: teach a noise-conditioned energy to rise away from the data at small σ.

Denoising score matching only sees x + σε near the data, so at small σ a
trained energy is unconstrained on images far from every data point, and a
denoiser energy E = ‖x − D(x, σ)‖²/(2σ²) with an EDM-preconditioned D is there
bounded by the size of the network's output (docs/composition.md, "Limits"):
random images get energies not far above the data's, and the volume of the
space outweighs the data's thin neighbourhood, so exp(−E) has most of its mass
on images that are not data. This loss adds what the true noised density implies
there.

Model the data as a low-dimensional set blurred by N(0, σ₀² I) (σ₀ the data's
own pixel noise). Noised by σ, the density is close to a Gaussian tube of
variance v = σ₀² + σ² across the set, so for a point u at distance d from it
and y = x + σε a noised data point (‖y − x‖² ≈ dim · v on average),

    −log p_σ(u) + log p_σ(y) ≈ d² / (2v) − dim / 2.

With d the distance from u to the nearest point of the batch, the margin

    m(u, σ) = min(cap, d² / (2v) − dim / 2)

is demanded as a hinge, one y per u at the same σ:

    L = mean relu(E(y, σ) + m(u, σ) − E(u, σ)) / cap.

Both energies carry gradients, so the loss cannot be met by raising every
energy at once; points already above the margin cost nothing. The cap keeps
the target finite (the ideal gap grows like d²/σ²), and d to the batch rather
than to the whole data set is why the margin is only a guide (it can be too
large for points between two batch points that lie near an unseen data point;
the cap bounds the damage).

The points u (a quarter each, from ``off_data_points``): uniform in the ball
‖u − c‖ ≤ R (all near its surface in high dimension), at a uniform radius in
it (the interior, down to the center c), data noised by σ' log-uniform in
[0.05, 2] (between the data and the ball), and random convex combinations of
two data points (blends of two images).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError
from ebmalgebra.learning._checks import check_batch, check_model

__all__ = ["off_data_margin", "off_data_points"]

NOISED_SIGMA_RANGE = (0.05, 2.0)
"""σ' of the data-noised off-data points, drawn log-uniformly."""


def off_data_points(batch: Tensor, center: Tensor, radius: float, *,
                    generator: torch.Generator | None = None) -> Tensor:
    """Off-data points for a batch ``(n, *event_shape)``: ``(4 ⌊n/4⌋, *event_shape)``.

    Four equal groups: uniform in the ball ‖u − c‖ ≤ R (radius R·U^(1/dim)),
    at a uniform radius R·U in it, ``batch`` rows noised by σ' log-uniform in
    :data:`NOISED_SIGMA_RANGE`, and convex combinations λ xᵢ + (1 − λ) xⱼ with
    λ ~ U(0, 1) and j a random permutation of the batch.
    """
    radius = validation.positive("off_data_points: radius", radius)
    n, shape = batch.shape[0], batch.shape[1:]
    k = n // 4
    if k == 0:
        raise ArgumentError(f"off_data_points: the batch needs at least 4 rows, got {n}")
    flat = batch.flatten(1)
    dim = flat.shape[1]
    options = {"generator": generator, "dtype": flat.dtype, "device": flat.device}
    directions = torch.randn(2 * k, dim, **options)
    directions = directions / directions.norm(dim=1, keepdim=True)
    radii = radius * torch.cat([torch.rand(k, 1, **options) ** (1.0 / dim),
                                torch.rand(k, 1, **options)])
    ball = center.reshape(1, dim).to(flat) + radii * directions
    low, high = (math.log(s) for s in NOISED_SIGMA_RANGE)
    noise_level = torch.exp(low + (high - low) * torch.rand(k, 1, **options))
    noised = flat[:k] + noise_level * torch.randn(k, dim, **options)
    weight = torch.rand(k, 1, **options)
    partner = torch.randperm(n, generator=generator, device=flat.device)[:k]
    blends = weight * flat[k:2 * k] + (1 - weight) * flat[partner]
    return torch.cat([ball, noised, blends]).reshape(4 * k, *shape)


def off_data_margin(
    model: EnergyModel,
    batch: Tensor,
    *,
    center: Tensor,
    radius: float,
    data_noise: float,
    cap: float = 1500.0,
    sigma_min: float = 0.01,
    sigma_max: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The hinge L = mean relu(E(y, σ) + m(u, σ) − E(u, σ)) / cap of the module docstring.

    ``model`` is noise-conditioned (σ is passed as ``t``, one per row), ``batch``
    ``(n, *event_shape)`` clean data with pixel noise ``data_noise`` (σ₀ ≥ 0),
    (``center``, ``radius``) a ball around the data
    (:func:`ebmalgebra.envelope.enclosing_ball`). σ is log-uniform in
    [``sigma_min``, ``sigma_max``], one per off-data point. Returns a 0-d tensor.

    Example:
        >>> center, radius = enclosing_ball(data, margin=0.25)
        >>> loss = off_data_margin(model, data[:128], center=center, radius=radius,
        ...                        data_noise=0.04)
    """
    check_model(model, "off_data_margin", "energy")
    x = check_batch(model, batch, "off_data_margin")
    data_noise = validation.non_negative("off_data_margin: data_noise", data_noise)
    cap = validation.positive("off_data_margin: cap", cap)
    low = math.log(validation.positive("off_data_margin: sigma_min", sigma_min))
    high = math.log(validation.positive("off_data_margin: sigma_max", sigma_max))
    if low > high:
        raise ArgumentError(f"off_data_margin: sigma_min ({sigma_min}) must not exceed "
                            f"sigma_max ({sigma_max})")
    points = off_data_points(x, center, radius, generator=generator)
    m = points.shape[0]
    sigma = torch.exp(low + (high - low) * torch.rand(m, generator=generator, dtype=x.dtype,
                                                      device=x.device))
    per_row = sigma.reshape(m, *([1] * (x.dim() - 1)))
    noised_data = x[:m] + per_row * torch.randn(x[:m].shape, generator=generator,
                                                dtype=x.dtype, device=x.device)
    flat = x.flatten(1)
    distance_sq = torch.cdist(points.flatten(1), flat).square().min(1).values
    variance = sigma.square() + data_noise**2
    margin = (distance_sq / (2 * variance) - flat.shape[1] / 2).clamp(max=cap)
    shortfall = model.energy(noised_data, sigma) + margin - model.energy(points, sigma)
    return torch.relu(shortfall).mean() / cap
