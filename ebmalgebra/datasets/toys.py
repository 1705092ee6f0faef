"""Two-dimensional toy distributions: rings, eight Gaussians, moons, checkerboard, bar.

Every sampler has the signature ``f(n, *, <shape parameters>, generator=None,
dtype=torch.float32, device=None) -> Tensor (n, 2)`` and draws i.i.d. points.
All randomness comes from ``torch`` with the given ``generator``, so the same
seed gives the same points (for the same ``dtype``). Random numbers are drawn on
the generator's device and the result is then moved to ``device``; a CPU
generator therefore works for any target device.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.errors import ArgumentError, ArgumentTypeError

__all__ = ["bar", "checkerboard", "eight_gaussians", "moons", "rings"]


def _check_n(n: object) -> int:
    """Validate a sample count: a positive Python or NumPy integer, never a bool."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ArgumentTypeError(f"n must be an int, got {type(n).__name__}")
    if n <= 0:
        raise ArgumentError(f"n must be positive, got {n}")
    return int(n)


def _check_nonnegative(name: str, value: object) -> float:
    """Validate a finite real parameter that must be >= 0 (noise levels, widths)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def _check_positive(name: str, value: object) -> float:
    """Validate a finite real parameter that must be > 0 (radii, lengths)."""
    value = _check_nonnegative(name, value)
    if value == 0:
        raise ArgumentError(f"{name} must be > 0, got {value}")
    return value


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Device on which random numbers are drawn: the generator's, or the CPU.

    Also validates ``generator``, which every sampler passes through here.
    """
    if validation.generator("datasets: generator", generator) is None:
        return torch.device("cpu")
    return generator.device


def _finish(x: Tensor, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    return x.to(device=device if device is not None else x.device, dtype=dtype)


def rings(
    n: int,
    *,
    radii: tuple[float, ...] = (1.0, 2.0, 3.0),
    noise: float = 0.08,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Concentric noisy circles.

    A point picks ring k with probability r_k / Σ r_j (so the density per unit
    arc length is the same on every ring), an angle θ ~ U[0, 2π), and is
    x = r_k (cos θ, sin θ) + noise · ξ with ξ ~ N(0, I₂).

    Returns a tensor of shape (n, 2).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> rings(500, radii=(1.0, 2.0), generator=g).shape
        torch.Size([500, 2])
    """
    n = _check_n(n)
    dtype = _check_dtype(dtype)
    noise = _check_nonnegative("noise", noise)
    try:
        radii = tuple(_check_positive("radii", r) for r in radii)
    except TypeError as err:
        raise ArgumentTypeError(f"radii must be a sequence of positive numbers: {err}") from None
    if not radii:
        raise ArgumentError("radii must contain at least one radius")
    where = _draw_device(generator)
    radius = torch.tensor(radii, dtype=dtype, device=where)
    ring = torch.multinomial(radius, n, replacement=True, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=where)
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    eps = torch.randn(n, 2, generator=generator, dtype=dtype, device=where)
    return _finish(radius[ring, None] * circle + noise * eps, dtype, device)


class EightGaussians:
    """Eight isotropic Gaussians with equal weight, centred on a circle.

    Calling the object samples; :meth:`centers` gives the mode centres and
    :meth:`nearest_mode` assigns points to them (to check mode coverage).
    """

    n_modes = 8

    def __call__(
        self,
        n: int,
        *,
        radius: float = 2.0,
        std: float = 0.15,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Sample the mixture ⅛ Σₖ N(cₖ, std² I₂), cₖ = radius (cos 2πk/8, sin 2πk/8).

        Returns a tensor of shape (n, 2).

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> x = eight_gaussians(1000, generator=g)
            >>> eight_gaussians.nearest_mode(x).bincount().shape
            torch.Size([8])
        """
        n = _check_n(n)
        dtype = _check_dtype(dtype)
        std = _check_nonnegative("std", std)
        where = _draw_device(generator)
        centres = self.centers(radius=radius, dtype=dtype, device=where)
        mode = torch.randint(self.n_modes, (n,), generator=generator, device=where)
        eps = torch.randn(n, 2, generator=generator, dtype=dtype, device=where)
        return _finish(centres[mode] + std * eps, dtype, device)

    def centers(
        self,
        *,
        radius: float = 2.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The eight mode centres cₖ = radius (cos 2πk/8, sin 2πk/8), shape (8, 2)."""
        radius = _check_positive("radius", radius)
        angle = torch.arange(self.n_modes, dtype=torch.float64) * (2 * math.pi / self.n_modes)
        centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return centres.to(dtype=_check_dtype(dtype), device=device)

    def nearest_mode(self, x: Tensor, *, radius: float = 2.0) -> Tensor:
        """Index k ∈ {0..7} of the nearest centre for each point; x (n, 2) → int64 (n,).

        Example:
            >>> eight_gaussians.nearest_mode(torch.tensor([[2.0, 0.1]]))
            tensor([0])
        """
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ArgumentError(f"x must be a tensor of shape (n, 2), got {shape}")
        centres = self.centers(radius=radius, dtype=x.dtype, device=x.device)
        return torch.cdist(x, centres).argmin(dim=1)

    def __repr__(self) -> str:
        return "eight_gaussians"


eight_gaussians = EightGaussians()


def moons(
    n: int,
    *,
    noise: float = 0.1,
    scale: float = 2.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Two interleaving half circles, centred at the origin.

    Each point picks a moon with probability ½ and t ~ U[0, π]; the upper moon
    is (cos t, sin t), the lower one (1 − cos t, ½ − sin t). Both are shifted by
    (−½, −¼) so the pair is centred, multiplied by ``scale`` (default spans
    x ∈ [−3, 3], y ∈ [−1.5, 1.5]) and get N(0, noise² I₂) added.

    Returns a tensor of shape (n, 2).

    Example:
        >>> moons(300, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([300, 2])
    """
    n = _check_n(n)
    dtype = _check_dtype(dtype)
    noise = _check_nonnegative("noise", noise)
    scale = _check_positive("scale", scale)
    where = _draw_device(generator)
    lower = torch.rand(n, generator=generator, dtype=dtype, device=where) < 0.5
    t = math.pi * torch.rand(n, generator=generator, dtype=dtype, device=where)
    upper_moon = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower_moon = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    points = torch.where(lower[:, None], lower_moon, upper_moon)
    points = scale * (points - torch.tensor([0.5, 0.25], dtype=dtype, device=where))
    eps = torch.randn(n, 2, generator=generator, dtype=dtype, device=where)
    return _finish(points + noise * eps, dtype, device)


def checkerboard(
    n: int,
    *,
    squares: int = 4,
    half_width: float = 2.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform density on the dark cells of a checkerboard.

    The square [−h, h]² (h = ``half_width``) is cut into ``squares`` × ``squares``
    cells of side 2h/squares; cell (i, j) is dark when i + j is even. A point
    picks a dark cell uniformly and a uniform position inside it, so the
    density is 2 / (2h)² on dark cells (for even ``squares``) and 0 elsewhere.

    Returns a tensor of shape (n, 2).

    Example:
        >>> checkerboard(200, generator=torch.Generator().manual_seed(0)).abs().max() <= 2
        tensor(True)
    """
    n = _check_n(n)
    dtype = _check_dtype(dtype)
    if isinstance(squares, bool) or not isinstance(squares, numbers.Integral):
        raise ArgumentTypeError(f"squares must be an int, got {type(squares).__name__}")
    if squares < 1:
        raise ArgumentError(f"squares must be >= 1, got {squares}")
    half_width = _check_positive("half_width", half_width)
    where = _draw_device(generator)
    grid = torch.cartesian_prod(torch.arange(squares), torch.arange(squares)).to(where)
    dark = grid[(grid.sum(dim=1) % 2) == 0]
    cell = dark[torch.randint(len(dark), (n,), generator=generator, device=where)]
    offset = torch.rand(n, 2, generator=generator, dtype=dtype, device=where)
    side = 2 * half_width / squares
    return _finish((cell.to(dtype) + offset) * side - half_width, dtype, device)


def bar(
    n: int,
    *,
    half_length: float = 3.0,
    std: float = 0.15,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A thin horizontal bar: x₁ ~ U[−half_length, half_length], x₂ ~ N(0, std²).

    Returns a tensor of shape (n, 2).

    Example:
        >>> bar(100, generator=torch.Generator().manual_seed(0))[:, 0].abs().max() <= 3
        tensor(True)
    """
    n = _check_n(n)
    dtype = _check_dtype(dtype)
    half_length = _check_positive("half_length", half_length)
    std = _check_nonnegative("std", std)
    where = _draw_device(generator)
    along = torch.rand(n, generator=generator, dtype=dtype, device=where)
    across = torch.randn(n, generator=generator, dtype=dtype, device=where)
    points = torch.stack([(2 * along - 1) * half_length, std * across], dim=1)
    return _finish(points, dtype, device)
