"""Energy networks: modules mapping ``(batch, *event_shape)`` to energies ``(batch,)``.

=================================  ==========================================================
network                            energy
=================================  ==========================================================
``GaussianEnergy(dim)``            ½ (x − μ)ᵀ (LLᵀ)⁻¹ (x − μ), learnable μ and Cholesky L
``MLPEnergy(event_shape)``         f_θ(x), an MLP on the flattened x (optionally on (x, σ))
``ConvEnergy(image_shape)``        f_θ(x), a small conv net for (H, W) or (C, H, W) images
``DenoiserEnergy(denoiser)``       ‖x − D(x, σ)‖² / (2σ²), noise-conditioned
``ResidualMLPDenoiser(shape)``     D(x, σ) = c_skip x + c_out F(c_in x, log σ) (Karras 2022)
=================================  ==========================================================

Every network exposes ``event_shape`` and ``noise_conditioned`` (whether it
takes a noise level, ``forward(x, sigma)``), so :func:`as_model` can wrap it
into a named leaf of the algebra::

    glasses = as_model(DenoiserEnergy(ResidualMLPDenoiser((16, 16))), name="glasses")

Noise-conditioned networks take ``sigma`` as a float, a 0-d tensor or one
value per sample ``(batch,)``; they are trained with
:func:`ebmalgebra.learning.multi_noise_dsm` and sampled with annealed
Langevin dynamics over decreasing σ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, TimeLike
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError
from ebmalgebra.leaves import as_event_shape, from_energy

__all__ = [
    "ConvEnergy",
    "DenoiserEnergy",
    "GaussianEnergy",
    "MLPEnergy",
    "ResidualMLPDenoiser",
    "as_model",
]


def _check_input(net: nn.Module, x: Tensor) -> Tensor:
    """x shaped ``(batch, *event_shape)``, or a :class:`CompositionError` naming the net."""
    shape = tuple(net.event_shape)
    if not isinstance(x, Tensor) or x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise CompositionError(
            f"{type(net).__name__} expects x of shape (batch, {', '.join(map(str, shape))}), "
            f"got {got}"
        )
    return x


def _sigma_per_sample(sigma: TimeLike, x: Tensor, net: nn.Module) -> Tensor:
    """σ as a positive ``(batch,)`` tensor from a float, a 0-d tensor or a ``(batch,)`` tensor."""
    if sigma is None:
        raise CompositionError(
            f"{type(net).__name__} is noise-conditioned: call it with a noise level, "
            "net(x, sigma), or wrap it with as_model(...) and pass t=sigma"
        )
    if isinstance(sigma, int | float) and not (sigma > 0 and math.isfinite(sigma)):
        # Numbers only: checking tensor values would synchronise on every call.
        raise ArgumentError(f"{type(net).__name__}: the noise level sigma must be positive and "
                            f"finite, got {sigma!r}")
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    if tuple(sigma.shape) != (x.shape[0],):
        raise CompositionError(
            f"{type(net).__name__}: sigma must be a scalar or shaped ({x.shape[0]},), "
            f"got {tuple(sigma.shape)}"
        )
    return sigma


def _event_shape(value: int | Sequence[int], what: str = "event_shape") -> torch.Size:
    """:func:`as_event_shape`, also rejecting empty dimensions and bools (``MLPEnergy(0)``)."""
    if isinstance(value, bool) or (isinstance(value, Sequence)
                                   and any(isinstance(d, bool) for d in value)):
        raise ArgumentError(f"{what} must be an int or a sequence of ints, got {value!r}")
    shape = as_event_shape(value)
    if any(d == 0 for d in shape):
        raise ArgumentError(f"{what} must have positive dimensions, got {tuple(shape)}")
    return shape


def _activation(name: str) -> nn.Module:
    activations = {"silu": nn.SiLU, "softplus": nn.Softplus, "elu": nn.ELU, "tanh": nn.Tanh,
                   "gelu": nn.GELU}
    if name not in activations:
        raise ArgumentError(f"activation must be one of {sorted(activations)}, got {name!r}")
    return activations[name]()


def _float_tensor(value: object) -> Tensor:
    tensor = torch.as_tensor(value).detach()
    return tensor if tensor.is_floating_point() else tensor.to(torch.get_default_dtype())


class NoiseEmbedding(nn.Module):
    """Features of log σ: random Fourier features (fixed) followed by a learned MLP.

    ``(batch,)`` σ → ``(batch, width)``. The frequencies are fixed at
    construction from ``seed`` so that a state_dict fully determines the net.
    """

    def __init__(self, width: int, n_frequencies: int = 16, scale: float = 4.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", scale * torch.randn(n_frequencies, generator=generator))
        self.net = nn.Sequential(nn.Linear(2 * n_frequencies, width), nn.SiLU(),
                                 nn.Linear(width, width))

    def forward(self, sigma: Tensor) -> Tensor:
        # log σ / 4 keeps σ ∈ [0.01, 12] inside roughly [−1.2, 0.6].
        phase = 2 * math.pi * (sigma.log() / 4)[:, None] * self.frequencies
        return self.net(torch.cat([phase.sin(), phase.cos()], dim=1))


class GaussianEnergy(nn.Module):
    """E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) with Σ = L Lᵀ, learnable μ and Cholesky factor L.

    L is lower triangular with a positive diagonal (exp of a free
    parameter), so every parameter value is a valid Gaussian; a given
    ``scale_tril`` must already be of that form (it is not projected). The energy
    omits log Z = ½ log det(2πΣ): score matching never needs it.
    ``(batch, dim)`` → ``(batch,)``.

    Example:
        >>> net = GaussianEnergy(2)
        >>> net.covariance()
        tensor([[1., 0.],
                [0., 1.]], grad_fn=<MmBackward0>)
    """

    noise_conditioned = False

    def __init__(self, dim: int, *, loc: Tensor | None = None, scale_tril: Tensor | None = None):
        super().__init__()
        dim = validation.count("dim", dim)
        self.event_shape = torch.Size([dim])
        loc = _float_tensor(torch.zeros(dim) if loc is None else loc)
        scale_tril = _float_tensor(torch.eye(dim) if scale_tril is None else scale_tril)
        if tuple(loc.shape) != (dim,) or tuple(scale_tril.shape) != (dim, dim):
            raise ArgumentError(f"loc must be ({dim},) and scale_tril ({dim}, {dim}), got "
                                f"{tuple(loc.shape)} and {tuple(scale_tril.shape)}")
        if not (torch.isfinite(loc).all() and torch.isfinite(scale_tril).all()):
            raise ArgumentError("loc and scale_tril must be finite")
        upper = scale_tril.triu(1).nonzero()
        if len(upper):
            i, j = upper[0].tolist()
            raise ArgumentError(f"scale_tril must be lower triangular (a Cholesky factor L), got "
                                f"scale_tril[{i}, {j}] = {scale_tril[i, j].item()} above the "
                                "diagonal")
        if (scale_tril.diagonal() <= 0).any():
            raise ArgumentError("scale_tril must have a positive diagonal")
        self.loc = nn.Parameter(loc.clone())
        self.log_diagonal = nn.Parameter(scale_tril.diagonal().log())
        self.off_diagonal = nn.Parameter(scale_tril.tril(-1).clone())

    @property
    def scale_tril(self) -> Tensor:
        """The Cholesky factor L of Σ."""
        return self.off_diagonal.tril(-1) + torch.diag(self.log_diagonal.exp())

    def covariance(self) -> Tensor:
        """Σ = L Lᵀ."""
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.T

    def forward(self, x: Tensor) -> Tensor:
        x = _check_input(self, x)
        scale_tril = self.scale_tril.to(x)
        residual = (x - self.loc.to(x)).T
        whitened = torch.linalg.solve_triangular(scale_tril, residual, upper=False)
        return 0.5 * whitened.square().sum(0)


class MLPEnergy(nn.Module):
    """E(x) = f_θ(x): an MLP on the flattened x with a scalar output.

    With ``noise_conditioned=True`` the net is E(x, σ) = f_θ(x, e(σ)) / σ: the
    hidden layers are shifted by an embedding of log σ, and dividing by σ
    matches the σ⁻¹ growth of the score of Gaussian-smoothed data (Song &
    Ermon 2019), so one net serves all noise levels. Smooth activations
    (default SiLU) keep the score and the Hessian used by score matching
    well defined.

    Args:
        event_shape: shape of one sample (flattened internally).
        hidden: widths of the hidden layers.
        activation: ``"silu"``, ``"softplus"``, ``"elu"``, ``"gelu"`` or ``"tanh"``.
        noise_conditioned: take σ as a second argument.

    Example:
        >>> net = MLPEnergy(2, hidden=(64, 64))
        >>> net(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        *,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "silu",
        noise_conditioned: bool = False,
    ) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape)
        self.noise_conditioned = bool(noise_conditioned)
        hidden = tuple(hidden)
        if not hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                             for w in hidden):
            raise ArgumentError(f"hidden must be a non-empty sequence of positive ints, "
                                f"got {hidden}")
        widths = (math.prod(self.event_shape), *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = _activation(activation)
        self.output = nn.Linear(widths[-1], 1)
        if self.noise_conditioned:
            self.embedding = NoiseEmbedding(max(hidden))
            self.shifts = nn.ModuleList(nn.Linear(max(hidden), w) for w in hidden)

    def forward(self, x: Tensor, sigma: TimeLike = None) -> Tensor:
        h = _check_input(self, x).flatten(1)
        if self.noise_conditioned:
            sigma = _sigma_per_sample(sigma, x, self)
            features = self.embedding(sigma)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.noise_conditioned:
                h = h + self.shifts[i](features)
            h = self.activation(h)
        energy = self.output(h).squeeze(1)
        return energy / sigma if self.noise_conditioned else energy


class ConvEnergy(nn.Module):
    """E(x) = f_θ(x): a small conv net for images ``(batch, H, W)`` or ``(batch, C, H, W)``.

    Stride-2 3×3 convolutions with SiLU halve the resolution per layer, then
    a linear layer maps the features to one energy. With
    ``noise_conditioned=True`` each layer's channels are shifted by an
    embedding of log σ and the output is divided by σ (as in
    :class:`MLPEnergy`).

    Example:
        >>> net = ConvEnergy((16, 16))
        >>> net(torch.randn(3, 16, 16)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        channels: Sequence[int] = (32, 64, 64),
        activation: str = "silu",
        noise_conditioned: bool = False,
    ) -> None:
        super().__init__()
        self.event_shape = _event_shape(image_shape, "image_shape")
        if len(self.event_shape) not in (2, 3):
            raise ArgumentError(f"image_shape must be (H, W) or (C, H, W), got "
                                f"{tuple(self.event_shape)}")
        self.noise_conditioned = bool(noise_conditioned)
        in_channels = 1 if len(self.event_shape) == 2 else self.event_shape[0]
        height, width = self.event_shape[-2:]
        convs = []
        for out_channels in channels:
            convs.append(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1))
            in_channels = out_channels
            height, width = (height + 1) // 2, (width + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.activation = _activation(activation)
        self.output = nn.Linear(in_channels * height * width, 1)
        if self.noise_conditioned:
            self.embedding = NoiseEmbedding(max(channels))
            self.shifts = nn.ModuleList(nn.Linear(max(channels), c) for c in channels)

    def forward(self, x: Tensor, sigma: TimeLike = None) -> Tensor:
        h = _check_input(self, x)
        if len(self.event_shape) == 2:
            h = h[:, None]
        if self.noise_conditioned:
            sigma = _sigma_per_sample(sigma, x, self)
            features = self.embedding(sigma)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if self.noise_conditioned:
                h = h + self.shifts[i](features)[:, :, None, None]
            h = self.activation(h)
        energy = self.output(h.flatten(1)).squeeze(1)
        return energy / sigma if self.noise_conditioned else energy


class _ResidualBlock(nn.Module):
    """h + W₂ SiLU((1 + a) ⊙ W₁ SiLU(LayerNorm(h)) + b), with (a, b) = FiLM(e(σ)).

    The FiLM projection starts at zero, so a fresh block is h + W₂ SiLU(W₁ …).
    """

    def __init__(self, width: int, embedding_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.film = nn.Linear(embedding_dim, 2 * width)
        self.outer = nn.Linear(width, width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: Tensor, features: Tensor) -> Tensor:
        scale, shift = self.film(features).chunk(2, dim=1)
        inner = self.inner(nn.functional.silu(self.norm(h))) * (1 + scale) + shift
        return h + self.outer(nn.functional.silu(inner))


class ResidualMLPDenoiser(nn.Module):
    """A denoiser D(x, σ) ≈ E[x₀ | x = x₀ + σε]: a residual MLP conditioned on log σ.

    Preconditioned as in Karras et al. 2022 (EDM) so that the network F sees
    unit-scale inputs and targets at every σ:

        D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, log σ),
        c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),
        c_in = 1 / √(σ² + σ_d²),

    with σ_d = ``sigma_data`` the data's standard deviation. F is
    ``depth`` residual blocks of width ``width`` on the flattened x, each
    modulated (scale and shift, "FiLM") by an ``embedding_dim``-dimensional
    embedding of log σ. Use it inside :class:`DenoiserEnergy`.
    ``(batch, *event_shape)`` and σ → ``(batch, *event_shape)``.
    """

    noise_conditioned = True

    def __init__(
        self,
        event_shape: int | Sequence[int],
        *,
        width: int = 512,
        depth: int = 4,
        embedding_dim: int = 128,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape)
        for value, what in ((width, "width"), (depth, "depth"), (embedding_dim, "embedding_dim")):
            validation.count(what, value)
        if not sigma_data > 0:
            raise ArgumentError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        size = math.prod(self.event_shape)
        self.embedding = NoiseEmbedding(embedding_dim)
        self.input = nn.Linear(size, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, embedding_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, size)
        # Start as D ≈ c_skip x, the optimal denoiser of N(0, σ_d² I) data.
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (weights excluded)."""
        return {"event_shape": list(self.event_shape), "width": self.input.out_features,
                "depth": len(self.blocks), "embedding_dim": self.embedding.net[-1].out_features,
                "sigma_data": self.sigma_data}

    def forward(self, x: Tensor, sigma: TimeLike = None) -> Tensor:
        x = _check_input(self, x)
        sigma = _sigma_per_sample(sigma, x, self)
        flat = x.flatten(1)
        variance = sigma.square() + self.sigma_data**2
        c_skip = (self.sigma_data**2 / variance)[:, None]
        c_out = (sigma * self.sigma_data / variance.sqrt())[:, None]
        c_in = variance.rsqrt()[:, None]
        features = self.embedding(sigma)
        h = self.input(c_in * flat)
        for block in self.blocks:
            h = block(h, features)
        correction = self.output(nn.functional.silu(self.norm(h)))
        return (c_skip * flat + c_out * correction).reshape(x.shape)


class DenoiserEnergy(nn.Module):
    """E(x, σ) = ‖x − D(x, σ)‖² / (2σ²), a noise-conditioned energy from a denoiser D.

    When D is the ideal denoiser of data smoothed by N(0, σ² I), Tweedie's
    formula gives the smoothed score (D − x)/σ²; the energy's own score
    s = −∇ₓE = (I − ∂D/∂x)ᵀ (D − x)/σ² is conservative by construction and
    is what :func:`~ebmalgebra.learning.multi_noise_dsm` trains. E ≥ 0 and
    vanishes where D(x) = x. This is the parameterisation the faces zoo uses.

    Training constrains only the score, so after training D itself need not
    be a good denoiser; denoise with Tweedie's formula x + σ² s(x, σ) instead.

    Example:
        >>> net = DenoiserEnergy(ResidualMLPDenoiser(4, width=32, depth=1))
        >>> net(torch.randn(3, 4), 0.5).shape
        torch.Size([3])
    """

    noise_conditioned = True

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        if not hasattr(denoiser, "event_shape"):
            raise ArgumentTypeError("denoiser must be an nn.Module with an event_shape attribute")
        self.denoiser = denoiser
        self.event_shape = torch.Size(denoiser.event_shape)

    def forward(self, x: Tensor, sigma: TimeLike = None) -> Tensor:
        x = _check_input(self, x)
        sigma = _sigma_per_sample(sigma, x, self)
        residual = (x - self.denoiser(x, sigma)).flatten(1)
        return residual.square().sum(1) / (2 * sigma.square())


def as_model(net: nn.Module, *, name: str, log_z: float | None = None) -> EnergyModel:
    """Wrap an energy network into a named leaf of the algebra.

    Reads ``net.event_shape`` and ``net.noise_conditioned``; the leaf's
    parameters are the net's, so training the leaf trains the net.

    Example:
        >>> model = as_model(MLPEnergy(2), name="density")
        >>> model
        density
    """
    if not isinstance(net, nn.Module) or not hasattr(net, "event_shape"):
        raise ArgumentTypeError(
            f"as_model expects an nn.Module with an event_shape attribute, got "
            f"{type(net).__name__}; use ebmalgebra.from_energy(fn, event_shape, name=...) instead"
        )
    return from_energy(net, net.event_shape, name=name, log_z=log_z,
                       noise_conditioned=bool(getattr(net, "noise_conditioned", False)))
