"""Leaves from the standard diffusion parameterisations: ε, x₀ and v networks, energy heads.

A diffusion model trained on x_t = α_t x₀ + σ_t ε (ε ~ N(0, I)) predicts ε, x₀ or
v = α_t ε − σ_t x₀ from (x_t, t). Each prediction is an estimate of a posterior mean,
and Tweedie's formula, E[x₀ | x_t] = (x_t + σ_t² ∇ log p_t(x_t)) / α_t, turns it into
the score of the noised data density p_t exactly:

* ε-prediction (Ho et al. 2020):    s = −ε̂ / σ_t,
* x₀-prediction:                    s = (α_t x̂₀ − x_t) / σ_t²,
* v-prediction (Salimans & Ho 2022): ε̂ = (α_t v̂ + σ_t x_t) / (α_t² + σ_t²), then s = −ε̂ / σ_t.

For a variance-preserving schedule α_t² + σ_t² = 1, so ε̂ = α_t v̂ + σ_t x_t; for a
variance-exploding one (Song et al. 2021) α_t = 1 and the same formulas hold with
x_t = x₀ + σ_t ε. :func:`prediction_from_score` is the inverse map.

So a network becomes a score-only, noise-conditioned leaf (:func:`from_prediction`),
which composes with ``&``, ``**`` and ``w *`` like any score-only leaf and is sampled by
annealed unadjusted Langevin (no energies, so no Metropolis correction and no SMC
weights). A network with a scalar energy head (:func:`from_energy_network`) has
energies, so MALA, HMC and SMC accept it. :func:`from_diffusers` wraps a ``diffusers``
``UNet2DModel`` and a scheduler with ``alphas_cumprod`` (the optional extra
``pip install ebmalgebra[diffusers]``; this module never imports diffusers).

The noise level ``t`` a leaf takes is the one its :class:`~ebmalgebra.schedules.NoiseSchedule`
takes, as for ``GaussianMixture(...).noised(schedule)``: for ``VE()`` t = σ_t; for
``VP()`` t ∈ [0, 1] is time; for :class:`DiscreteVP` (the diffusers constructor) t = σ_t
again, so noise levels mean the same thing to annealed Langevin and SMC as for the zoo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.leaves import _CallableLeaf, _check_energy_output
from ebmalgebra.schedules import NoiseSchedule, _as_levels

__all__ = [
    "DiffusionEnergy",
    "DiffusionScore",
    "DiscreteVP",
    "from_diffusers",
    "from_energy_network",
    "from_prediction",
    "prediction_from_score",
    "score_from_prediction",
]

Prediction = Literal["epsilon", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "x0", "v")
_DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}


def _check_prediction(prediction: str, what: str) -> str:
    if prediction not in PREDICTIONS:
        raise ArgumentError(f"{what}: prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def _broadcast(scale: Tensor | float, x: Tensor) -> Tensor:
    """A scalar (float or 0-d tensor) or per-row ``(batch,)`` scale as ``(batch, 1, …)``
    against ``x``, in x's dtype and on its device."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return scale.reshape(-1, *([1] * (x.dim() - 1))) if scale.dim() > 0 else scale


def score_from_prediction(output: Tensor, x: Tensor, alpha: Tensor | float,
                          sigma: Tensor | float, prediction: Prediction) -> Tensor:
    """The score ∇ log p_t(x_t) from a network's ε, x₀ or v prediction at (α_t, σ_t).

    s = −ε̂/σ (ε; Ho et al. 2020), s = (α x̂₀ − x)/σ² (x₀), and for v (Salimans & Ho
    2022) ε̂ = (α v̂ + σ x)/(α² + σ²), which is α v̂ + σ x under a VP schedule.

    Args:
        output: the prediction, shaped like ``x`` ``(batch, *event_shape)``.
        x: the noisy input x_t ``(batch, *event_shape)``.
        alpha, sigma: α_t and σ_t > 0, scalars (floats or 0-d tensors) or one per row
            ``(batch,)``.
        prediction: ``"epsilon"``, ``"x0"`` or ``"v"``.

    Returns:
        The score, shaped like ``x``.
    """
    _check_prediction(prediction, "score_from_prediction")
    alpha, sigma = _broadcast(alpha, x), _broadcast(sigma, x)
    if prediction == "x0":
        return (alpha * output - x) / (sigma * sigma)
    if prediction == "v":
        output = (alpha * output + sigma * x) / (alpha * alpha + sigma * sigma)
    return -output / sigma


def prediction_from_score(score: Tensor, x: Tensor, alpha: Tensor | float,
                          sigma: Tensor | float, prediction: Prediction) -> Tensor:
    """The ε, x₀ or v prediction that a score corresponds to: the inverse of
    :func:`score_from_prediction`, by Tweedie's formula.

    x̂₀ = E[x₀ | x_t] = (x + σ² s)/α, ε̂ = E[ε | x_t] = −σ s, v̂ = α ε̂ − σ x̂₀.
    Shapes as in :func:`score_from_prediction`.
    """
    _check_prediction(prediction, "prediction_from_score")
    alpha, sigma = _broadcast(alpha, x), _broadcast(sigma, x)
    epsilon = -sigma * score
    if prediction == "epsilon":
        return epsilon
    x0 = (x + sigma * sigma * score) / alpha
    return x0 if prediction == "x0" else alpha * epsilon - sigma * x0


class DiscreteVP(NoiseSchedule):
    """The VP schedule of a discrete-time model (DDPM, DDIM), indexed by its noise level.

    A scheduler's ᾱ_n (``alphas_cumprod``, n = 0 … T−1) gives x_n = √ᾱ_n x₀ + √(1 − ᾱ_n) ε.
    The library's noise level is t = σ = √(1 − ᾱ) (as for ``VE()`` and the zoo), so
    α_t = √(1 − t²), σ_t = t; the network is called at the timestep whose σ_n equals t:

    * ``timesteps="interpolate"``: the fractional timestep τ linearly interpolated in
      the increasing grid σ_0 < … < σ_{T−1} (networks with sinusoidal time embeddings,
      such as ``UNet2DModel``, accept it); α_t, σ_t are exactly those of t.
    * ``timesteps="nearest"``: the integer timestep n whose σ_n is nearest to t, and
      then α_t = √ᾱ_n, σ_t = σ_n, so the prediction is converted at the level the
      network was asked about (t is snapped to the grid).

    Noise levels must lie in [σ_0, σ_{T−1}], where the network was trained.

    Args:
        alphas_cumprod: ᾱ ``(T,)``, strictly decreasing in (0, 1) (ᾱ = 1 would give
            σ = 0, which the conversions divide by).
        timesteps: ``"interpolate"`` or ``"nearest"``.
    """

    kind = "discrete_vp"

    def __init__(self, alphas_cumprod: Tensor | Sequence[float], *,
                 timesteps: Literal["interpolate", "nearest"] = "interpolate") -> None:
        cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().reshape(-1)
        if cumprod.numel() < 2 or not bool(((cumprod > 0) & (cumprod < 1)).all()):
            raise ArgumentError("DiscreteVP: alphas_cumprod must hold at least 2 values in (0, 1)")
        sigmas = torch.sqrt(1.0 - cumprod)
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ArgumentError("DiscreteVP: alphas_cumprod must be strictly decreasing")
        if timesteps not in ("interpolate", "nearest"):
            raise ArgumentError(f"DiscreteVP: timesteps must be 'interpolate' or 'nearest', got "
                                f"{timesteps!r}")
        self.sigmas = sigmas
        self.timesteps = timesteps

    def spec(self) -> list:
        """``["discrete_vp", ᾱ (T,), timesteps]`` (ᾱ = 1 − σ², float64)."""
        return [self.kind, (1.0 - self.sigmas) * (1.0 + self.sigmas), self.timesteps]

    @classmethod
    def from_arguments(cls, alphas_cumprod: Tensor, timesteps: str) -> DiscreteVP:
        return cls(alphas_cumprod, timesteps=timesteps)

    def _checked(self, t: float | Tensor) -> Tensor:
        levels = _as_levels(t)
        low, high = float(self.sigmas[0]), float(self.sigmas[-1])
        if not bool(((levels >= low * (1 - 1e-6)) & (levels <= high * (1 + 1e-6))).all()):
            raise ArgumentError(f"DiscreteVP: noise level t (= σ) must lie in the scheduler's "
                                f"range [{low:.4g}, {high:.4g}], got {t!r}")
        return levels

    def timestep(self, t: float | Tensor) -> Tensor:
        """The scheduler timestep for noise level t (fractional or nearest), like ``t``."""
        levels = self._checked(t)
        sigmas = self.sigmas.to(levels.device)
        flat = levels.double().reshape(-1).clamp(sigmas[0], sigmas[-1])
        upper = torch.searchsorted(sigmas, flat).clamp(1, sigmas.numel() - 1)
        below, above = sigmas[upper - 1], sigmas[upper]
        fraction = (flat - below) / (above - below)
        if self.timesteps == "nearest":
            return (upper - 1 + (fraction > 0.5).long()).reshape(levels.shape)
        return (upper - 1 + fraction).to(levels.dtype).reshape(levels.shape)

    def sigma(self, t: float | Tensor) -> Tensor:
        levels = self._checked(t)
        if self.timesteps == "interpolate":
            return levels
        return self.sigmas.to(levels.device)[self.timestep(levels)].to(levels.dtype)

    def alpha(self, t: float | Tensor) -> Tensor:
        sigma = self.sigma(t)
        return torch.sqrt((1.0 - sigma) * (1.0 + sigma))

    def __repr__(self) -> str:
        return f"DiscreteVP(T={self.sigmas.numel()}, timesteps={self.timesteps!r})"


class _NoiseConditionedNetwork(_CallableLeaf):
    """Shared part of the diffusion leaves: a network called as ``network(x, τ(t))``."""

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                 event_shape: int | Sequence[int], name: str, capabilities: Capabilities,
                 network_time: Callable[[Tensor], Tensor] | None) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise CompositionError(f"{name!r}: schedule must be a NoiseSchedule (VE(), VP() or "
                                   f"DiscreteVP(...)), got {type(schedule).__name__}")
        if network_time is not None and not callable(network_time):
            raise CompositionError(f"{name!r}: network_time must be callable, got "
                                   f"{type(network_time).__name__}")
        super().__init__(network, event_shape, name, capabilities, noise_conditioned=True)
        self.schedule = schedule
        self._network_time = network_time

    def _scales(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor, Tensor]:
        """(levels, α_t, σ_t), each ``(batch,)`` on x's device and dtype."""
        if t is None:
            raise CompositionError(f"{self!r} is noise-conditioned: give a noise level, "
                                   "score(x, t=...), or sample it with AnnealedLangevin or "
                                   "SMC over noise levels")
        # A float level goes straight to x's dtype: through float32 it would be off by ~1e-8.
        levels = (t.to(x) if isinstance(t, Tensor)
                  else torch.tensor(float(t), dtype=x.dtype, device=x.device))
        levels = levels.expand(x.shape[0]) if levels.dim() == 0 else levels
        sigma = self.schedule.sigma(levels).to(x)
        if not bool((sigma > 0).all()):
            raise ArgumentError(f"{self!r}: the noise level t must give σ_t > 0 (the conversion "
                                f"divides by σ_t); got t = {t!r}")
        return levels, self.schedule.alpha(levels).to(x), sigma

    def _call_network(self, x: Tensor, levels: Tensor) -> Tensor:
        return self._call(x, levels if self._network_time is None else self._network_time(levels))


class DiffusionScore(_NoiseConditionedNetwork):
    """A score-only noise-conditioned leaf from an ε, x₀ or v network.

    s(x, t) = :func:`score_from_prediction` (network(x, τ(t)), x, α_t, σ_t): the exact
    conversion (see the module docstring). Shapes: x ``(batch, *event_shape)``; the
    network gets x and one noise conditioning per row ``(batch,)`` (t itself, or
    ``network_time(t)``) and returns a prediction shaped like x.
    """

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                 *, prediction: Prediction, event_shape: int | Sequence[int],
                 name: str = "diffusion",
                 network_time: Callable[[Tensor], Tensor] | None = None) -> None:
        caps = Capabilities(has_energy=False, has_score=True, normalizer_known=False,
                            can_sample=False)
        super().__init__(network, schedule, event_shape, name, caps, network_time)
        self.prediction = _check_prediction(prediction, repr(name))
        self._freeze()

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        levels, alpha, sigma = self._scales(x, t)
        with torch.set_grad_enabled(create_graph):
            output = self._call_network(x, levels)
        if not isinstance(output, Tensor) or output.shape != x.shape:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise CompositionError(f"{self!r}: the network must return a {self.prediction} "
                                   f"prediction shaped like x {tuple(x.shape)}; got {shape}")
        return score_from_prediction(output, x, alpha, sigma, self.prediction)


class DiffusionEnergy(_NoiseConditionedNetwork):
    """A noise-conditioned leaf with a scalar energy head f(x, t); score by autograd.

    * ``parameterization="energy"``: E(x, t) = f(x, t), trained so that −∇ₓE is the
      score of p_t (the zoo's face models);
    * ``parameterization="epsilon"``: ∇ₓ f is the ε-prediction, ε̂ = ∇ₓ f (Salimans &
      Ho 2021; Du et al. 2023), so s = −ε̂/σ_t and E(x, t) = f(x, t) / σ_t.

    It has energies, so Metropolis-corrected samplers (MALA, HMC) and SMC weights work.
    Shapes: x ``(batch, *event_shape)``; f returns ``(batch,)`` (``(batch, 1)`` is squeezed).
    """

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                 *, event_shape: int | Sequence[int],
                 parameterization: Literal["energy", "epsilon"] = "energy",
                 name: str = "diffusion_energy",
                 network_time: Callable[[Tensor], Tensor] | None = None) -> None:
        if parameterization not in ("energy", "epsilon"):
            raise ArgumentError(f"{name!r}: parameterization must be 'energy' or 'epsilon', got "
                                f"{parameterization!r}")
        caps = Capabilities(has_energy=True, has_score=True, normalizer_known=False,
                            can_sample=False)
        super().__init__(network, schedule, event_shape, name, caps, network_time)
        self.parameterization = parameterization
        self._freeze()

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        levels, _, sigma = self._scales(x, t)
        energy = _check_energy_output(self, x, self._call_network(x, levels))
        return energy / sigma if self.parameterization == "epsilon" else energy


def from_prediction(network: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, *,
                    prediction: Prediction, event_shape: int | Sequence[int],
                    name: str = "diffusion",
                    network_time: Callable[[Tensor], Tensor] | None = None) -> EnergyModel:
    """A score-only noise-conditioned leaf from a network predicting ε, x₀ or v.

    Args:
        network: callable or ``nn.Module`` ``(x (batch, *event_shape), τ (batch,)) ->``
            prediction shaped like x.
        schedule: the schedule it was trained with, ``VE()``, ``VP(...)`` or ``DiscreteVP``.
        prediction: ``"epsilon"``, ``"x0"`` or ``"v"``.
        event_shape: shape of one sample.
        name: printed name.
        network_time: maps the library's noise level t ``(batch,)`` to the network's
            conditioning τ (default: t itself).

    Example:
        >>> eps_net = lambda x, t: torch.zeros_like(x)
        >>> leaf = from_prediction(eps_net, VE(), prediction="epsilon", event_shape=2)
        >>> leaf.score(torch.zeros(4, 2), t=0.5)
    """
    return DiffusionScore(network, schedule, prediction=prediction, event_shape=event_shape,
                          name=name, network_time=network_time)


def from_energy_network(network: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, *,
                        event_shape: int | Sequence[int],
                        parameterization: Literal["energy", "epsilon"] = "energy",
                        name: str = "diffusion_energy",
                        network_time: Callable[[Tensor], Tensor] | None = None) -> EnergyModel:
    """A noise-conditioned leaf with energies from a scalar energy head (see
    :class:`DiffusionEnergy` for ``parameterization``); arguments as in
    :func:`from_prediction`, but ``network`` returns ``(batch,)``."""
    return DiffusionEnergy(network, schedule, event_shape=event_shape,
                           parameterization=parameterization, name=name,
                           network_time=network_time)


class _DiffusersUNet(nn.Module):
    """``unet(x, timestep).sample`` as a plain ``(x, τ) -> Tensor`` module."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        output = self.unet(x, timestep)
        return output.sample if hasattr(output, "sample") else output[0]


def from_diffusers(unet: nn.Module, scheduler: object, *, prediction: str | None = None,
                   timesteps: Literal["interpolate", "nearest"] = "interpolate",
                   name: str = "diffusion") -> EnergyModel:
    """A score-only leaf from a ``diffusers`` ``UNet2DModel`` and its scheduler.

    The scheduler gives ᾱ (``alphas_cumprod``: DDPMScheduler, DDIMScheduler, …) and, unless
    ``prediction`` is given, the parameterisation (``config.prediction_type``:
    ``"epsilon"``, ``"sample"`` = x₀, ``"v_prediction"`` = v). The leaf's noise level is
    t = σ = √(1 − ᾱ), mapped to the scheduler's timestep as :class:`DiscreteVP` says
    (``timesteps="interpolate"``: fractional timestep, exact α_t and σ_t; ``"nearest"``:
    the nearest trained timestep). Nothing is downloaded: pass models you built or loaded.

    Shapes: x ``(batch, in_channels, H, W)`` with ``(H, W)`` the UNet's ``sample_size``.

    Example:
        >>> from diffusers import DDPMScheduler, UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
        ...                    block_out_channels=(8, 16), norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> leaf = from_diffusers(unet, DDPMScheduler(num_train_timesteps=1000))
        >>> leaf.score(torch.randn(2, 1, 8, 8), t=0.5).shape
        torch.Size([2, 1, 8, 8])
    """
    if not isinstance(unet, nn.Module) or not hasattr(unet, "config"):
        raise CompositionError(f"from_diffusers: unet must be a diffusers model such as "
                               f"UNet2DModel, got {type(unet).__name__}")
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise CompositionError(f"from_diffusers: scheduler must have alphas_cumprod (e.g. "
                               f"DDPMScheduler, DDIMScheduler), got {type(scheduler).__name__}")
    if prediction is None:
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type",
                                  "epsilon")
        if prediction_type not in _DIFFUSERS_PREDICTIONS:
            raise ArgumentError(f"from_diffusers: scheduler.config.prediction_type "
                                f"{prediction_type!r} is not one of "
                                f"{tuple(_DIFFUSERS_PREDICTIONS)}; pass prediction=")
        prediction = _DIFFUSERS_PREDICTIONS[prediction_type]
    config = unet.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if config.out_channels != config.in_channels:
        raise CompositionError(f"from_diffusers: the unet must predict as many channels as it "
                               f"takes; got in_channels={config.in_channels}, "
                               f"out_channels={config.out_channels}")
    schedule = DiscreteVP(alphas_cumprod, timesteps=timesteps)
    return DiffusionScore(_DiffusersUNet(unet), schedule, prediction=prediction,
                          event_shape=(config.in_channels, height, width), name=name,
                          network_time=schedule.timestep)
