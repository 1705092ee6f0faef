"""Leaves: models built from user functions, modules and distributions.

Every leaf has a ``name`` (printed by ``repr``, so expressions print back as
``glasses & hat ** 2``). A leaf states its capabilities; energies given as
callables get their score by autograd, analytic leaves (``targets.py``)
provide it in closed form.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, constraints

from ebmalgebra.base import Capabilities, EnergyModel, TimeLike, input_options
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.reverse_pass import inference_mode_blocks_autograd, recordable, vector_jacobian

if TYPE_CHECKING:
    from ebmalgebra.program import ProgramBuilder, ProgramNode

_REASONS = {
    "energy": "is score-only (it has no energy)",
    "score": "has no score",
    "normalizer": "has an unknown normaliser Z; estimate it with ebmalgebra.normalize(...) "
    "or pass log_z= when you know it",
    "sample": "has no exact sampler; draw MCMC samples with ebmalgebra.sample(model, sampler=...)",
}


def autograd_energy_and_score(
    energy_fn: Callable[[Tensor, TimeLike], Tensor],
    x: Tensor,
    t: TimeLike,
    create_graph: bool,
) -> tuple[Tensor, Tensor]:
    """``(E(x), −∇ₓE(x))`` for an energy function by one reverse-mode pass
    (:func:`autograd_score`).

    With ``create_graph`` the score stays differentiable (in x when x requires
    grad, and in parameters); otherwise both outputs are detached. Under
    ``torch.inference_mode()`` the pass runs outside it (:func:`inference_mode_blocks_autograd`).
    """
    if inference_mode_blocks_autograd():
        with torch.inference_mode(False):
            return autograd_energy_and_score(energy_fn, recordable(x), t, create_graph)
    with torch.enable_grad():
        inputs = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        energy = energy_fn(inputs, t)
        score = autograd_score(energy, inputs, create_graph)
    # Without create_graph the pass's result is already outside any graph.
    return (energy, score) if create_graph else (energy.detach(), score)


def autograd_score(energy: Tensor, inputs: Tensor, create_graph: bool) -> Tensor:
    """s = −∇ₓ Σ_n E_n of per-row energies ``(n,)`` with respect to ``inputs``
    ``(n, *event_shape)`` (rows independent, so row n of s is −∇E_n), contiguous; zeros
    where E does not depend on ``inputs``.

    One reverse pass seeded with −1 per row: the vector–Jacobian product with −𝟙 is the
    score itself, without the sum, its backward's expand, the seed of the scalar and the
    negation that −∇(Σ E) costs (four ops a call, ~6% of a small ULA step).
    """
    if not energy.requires_grad:
        return torch.zeros_like(inputs)
    (score,) = vector_jacobian((energy,), (torch.full_like(energy, -1.0),), (inputs,),
                               create_graph)
    if score is None:
        return torch.zeros_like(inputs)
    # A reverse pass may hand back a broadcast view of the seed (E = Σ_i x_i); samplers
    # keep scores as dense tensors.
    return score.contiguous()


def call_leaf_function(leaf: EnergyModel, fn: Callable, x: Tensor, t: TimeLike,
                       noise_conditioned: bool) -> Tensor:
    """``fn(x, t)`` if ``noise_conditioned`` else ``fn(x)``, with errors that name ``leaf``.

    A noise-conditioned leaf called without ``t`` and a module whose parameters
    have another dtype or device than ``x`` (networks compute in their own
    dtype; move them with ``.to(...)``) raise :class:`CompositionError`
    instead of the function's own error; a plain ``ValueError`` or an
    :class:`ArgumentError` gets the leaf's name.
    """
    if noise_conditioned and t is None:
        raise CompositionError(
            f"{leaf!r} is noise-conditioned: give a noise level, energy(x, t=sigma), or sample "
            "it with AnnealedLangevin over noise levels (ebmalgebra.zoo.draw does for zoo models)"
        )
    try:
        return fn(x, t) if noise_conditioned else fn(x)
    except ValueError as error:
        if type(error) not in (ValueError, ArgumentError):  # e.g. CompositionError: keep it
            raise
        raise ArgumentError(f"{leaf!r}: {error}") from error
    except RuntimeError as error:
        tensors = (*fn.parameters(), *fn.buffers()) if isinstance(fn, nn.Module) else ()
        options = input_options(fn) if any(t.is_floating_point() for t in tensors) else None
        if options is not None and (options["dtype"], options["device"]) != (x.dtype, x.device):
            raise CompositionError(
                f"{leaf!r} has {options['dtype']} parameters on {options['device']} but x is "
                f"{x.dtype} on {x.device}; move the model (expr.to(x.dtype) or .to(device)) or "
                "convert x"
            ) from error
        raise


def as_event_shape(event_shape: int | Sequence[int] | torch.Size) -> torch.Size:
    """``torch.Size`` from an int or a sequence of non-negative ints."""
    if isinstance(event_shape, int):
        event_shape = (event_shape,)
    try:
        shape = torch.Size(event_shape)
    except TypeError:
        raise CompositionError(
            f"event_shape must be an int or a sequence of ints, got {event_shape!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise CompositionError(f"event_shape must be non-negative, got {tuple(shape)}")
    return shape


class Leaf(EnergyModel):
    """Base class of leaves: a named model with fixed capabilities.

    Subclasses implement ``_energy`` and, when they can do better than
    autograd, ``_score`` / ``_energy_and_score`` with ``analytic_score = True``;
    normalised leaves implement ``_log_z`` and exact samplers ``_sample``.
    """

    analytic_score = False
    """True when ``_energy_and_score`` is closed-form (no autograd needed)."""

    noise_conditioned = False
    """True when the energy depends on the noise level / time ``t``."""

    def __init__(self, event_shape: torch.Size | None, name: str, capabilities: Capabilities):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise CompositionError(f"name must be a non-empty string, got {name!r}")
        self._event_shape = event_shape
        self._name = name
        self._capabilities = capabilities

    @property
    def name(self) -> str:
        return self._name

    @property
    def event_shape(self) -> torch.Size | None:
        return self._event_shape

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def args(self) -> tuple:
        return ()

    def structure(self) -> tuple:
        return ("leaf", id(self))

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return None if self._capabilities.supports(capability) else (self, _REASONS[capability])

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._energy_and_score(x, t, create_graph)[1]

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        return autograd_energy_and_score(self._energy, x, t, create_graph)

    def __repr__(self) -> str:
        return self._name


class One(Leaf):
    """The identity of ``&``: E = 0 on any event shape (p̃ = 1, not normalisable)."""

    analytic_score = True

    def __init__(self) -> None:
        super().__init__(None, "one", Capabilities(has_energy=True, has_score=True,
                                                   normalizer_known=False, can_sample=False))
        self._freeze()

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        if capability == "normalizer":
            return (self, "is the identity (E = 0), whose integral diverges")
        return super()._why_not(capability)

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return x.new_zeros(x.shape[0])

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        return x.new_zeros(x.shape[0]), torch.zeros_like(x)

    def lower(self, program: ProgramBuilder) -> ProgramNode:
        return program.affine(0.0, [])

    def sampling_exponent(self) -> float:
        return 0.0


one = One()
"""The identity model: ``a & one`` is ``a``."""


def _check_energy_output(leaf: Leaf, x: Tensor, energy: object) -> Tensor:
    if not isinstance(energy, Tensor):
        raise CompositionError(f"{leaf!r}: the function must return a Tensor, "
                               f"got {type(energy).__name__}")
    if energy.dim() == 2 and energy.shape[1] == 1:
        energy = energy.squeeze(1)
    if tuple(energy.shape) != (x.shape[0],):
        raise CompositionError(
            f"{leaf!r}: the function must return one value per sample, shape ({x.shape[0]},), "
            f"for x of shape {tuple(x.shape)}; got {tuple(energy.shape)}"
        )
    return energy


class _CallableLeaf(Leaf):
    """A leaf around a user callable; an ``nn.Module`` is registered as a submodule."""

    def __init__(
        self,
        fn: Callable,
        event_shape: int | Sequence[int],
        name: str,
        capabilities: Capabilities,
        noise_conditioned: bool,
    ) -> None:
        if not callable(fn):
            raise CompositionError(f"{name!r}: expected a callable or nn.Module, got "
                                   f"{type(fn).__name__}")
        super().__init__(as_event_shape(event_shape), name, capabilities)
        if isinstance(fn, nn.Module):
            self.module = fn
        else:
            self._fn = fn
        self.noise_conditioned = bool(noise_conditioned)

    def _call(self, x: Tensor, t: TimeLike) -> Tensor:
        fn = self.module if "module" in self._modules else self._fn
        return call_leaf_function(self, fn, x, t, self.noise_conditioned)


class EnergyFunction(_CallableLeaf):
    """A leaf E(x) (or E(x, t)) from a callable or module; score by autograd.

    ``sign=-1`` turns a log-density function into an energy. ``support`` (a
    ``torch.distributions.constraints`` object, ℝ by default) says where p̃ > 0;
    samplers then work in unconstrained coordinates (:mod:`ebmalgebra.constraints`).
    """

    def __init__(
        self,
        fn: Callable,
        event_shape: int | Sequence[int],
        *,
        name: str = "energy",
        log_z: float | Tensor | None = None,
        noise_conditioned: bool = False,
        sign: float = 1.0,
        support: constraints.Constraint = constraints.real,
    ) -> None:
        if not isinstance(support, constraints.Constraint):
            raise CompositionError(f"{name!r}: support must be a torch.distributions."
                                   f"constraints.Constraint, got {type(support).__name__}")
        caps = Capabilities(has_energy=True, has_score=True, normalizer_known=log_z is not None,
                            can_sample=False)
        super().__init__(fn, event_shape, name, caps, noise_conditioned)
        self._sign = sign
        self._support = support
        if log_z is not None:
            value = torch.as_tensor(log_z, dtype=torch.float64).detach()
            if value.numel() != 1 or not torch.isfinite(value):
                raise CompositionError(f"{name!r}: log_z must be a finite scalar, got {log_z!r}")
            self.register_buffer("log_normalizer", value.reshape(()))

    @property
    def support(self) -> constraints.Constraint:
        return self._support

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        energy = _check_energy_output(self, x, self._call(x, t))
        return energy if self._sign == 1.0 else self._sign * energy

    def _log_z(self) -> Tensor:
        return self.log_normalizer


class ScoreFunction(_CallableLeaf):
    """A score-only leaf s(x) (or s(x, t)): usable in ``&``, ``**``, ``w *`` and with ULA."""

    def __init__(
        self,
        fn: Callable,
        event_shape: int | Sequence[int],
        *,
        name: str = "score",
        noise_conditioned: bool = False,
    ) -> None:
        super().__init__(fn, event_shape, name,
                         Capabilities(has_energy=False, has_score=True, normalizer_known=False,
                                      can_sample=False), noise_conditioned)

    def _score(self, x: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        score = self._call(x, t)
        if not isinstance(score, Tensor) or score.shape != x.shape:
            shape = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise CompositionError(
                f"{self!r}: the score function must return a tensor shaped like x "
                f"{tuple(x.shape)}; got {shape}"
            )
        return score


class DistributionLeaf(Leaf):
    """A normalised leaf from a ``torch.distributions.Distribution``: E = −log p(x).

    Exact sampling uses the distribution's sampler with a seed drawn from
    the given generator, so draws are reproducible.
    """

    def __init__(self, distribution: Distribution, *, name: str = "distribution") -> None:
        if not isinstance(distribution, Distribution):
            raise CompositionError(f"{name!r}: expected a torch.distributions.Distribution, "
                                   f"got {type(distribution).__name__}")
        if distribution.batch_shape != torch.Size():
            raise CompositionError(
                f"{name!r}: the distribution must have an empty batch_shape (one density), got "
                f"batch_shape {tuple(distribution.batch_shape)}; wrap it in "
                "torch.distributions.Independent to turn batch dims into event dims"
            )
        super().__init__(distribution.event_shape, name,
                         Capabilities(has_energy=True, has_score=True, normalizer_known=True,
                                      can_sample=True))
        self.distribution = distribution

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        # Outside the support p = 0, so E = +∞: samplers reject such proposals and count
        # them, where log_prob itself would raise (validate_args) or return NaN. log_prob
        # sees an in-support stand-in there, so that neither it nor its gradient meets them.
        inside = self._in_support(x)
        if inside is None:
            return -self._log_prob(x)
        mask = inside.reshape(-1, *(1,) * (x.dim() - 1))
        stand_in = self._point_in_support().to(x)
        energy = -self._log_prob(torch.where(mask, x, stand_in), checked=True)
        return torch.where(inside, energy, torch.full_like(energy, torch.inf))

    @property
    def support(self) -> constraints.Constraint:
        return self.distribution.support

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DistributionLeaf:
        """``.to(dtype/device)``, ``.double()``, … also convert the distribution's
        tensors (it is not a module): the leaf gets a converted copy."""
        super()._apply(fn, recurse)
        object.__setattr__(self, "distribution", _map_tensors(self.distribution, fn))
        self.__dict__.pop("_support_point", None)
        return self

    def held_tensors(self) -> Iterator[Tensor]:
        """The tensors of the distribution, of the distributions it wraps and of
        their transforms (a ``TransformedDistribution``'s ``AffineTransform``)."""
        pending: list[object] = [self.distribution]
        seen: set[int] = set()
        while pending:
            value = pending.pop()
            if isinstance(value, Tensor):
                yield value
            elif isinstance(value, (Distribution, Transform)) and id(value) not in seen:
                seen.add(id(value))
                pending.extend(reversed(list(vars(value).values())))
            elif isinstance(value, (list, tuple)):
                pending.extend(reversed(value))

    def _log_prob(self, x: Tensor, checked: bool = False) -> Tensor:
        """log p(x); ``checked``: every row of x lies in the support (:meth:`_energy` put
        its stand-in elsewhere), so torch's own validation of x, which repeats that check
        (in the innermost distribution of an ``Independent``), is skipped: ~30 µs of a
        10-D Gamma's 75 µs log_prob."""
        if x.shape[0] == 0:  # torch's event sums cannot reshape an empty batch
            return (x.flatten(1) if x.dim() > 1 else x[:, None]).sum(1)
        distribution = self.distribution
        if checked:
            distribution = self._unvalidated()
        try:
            return distribution.log_prob(x)
        except ValueError as error:
            raise ArgumentError(f"{self!r}: {error}") from error

    def _unvalidated(self) -> Distribution:
        """The distribution with torch's argument validation off, through its wrapped
        distributions: shallow copies sharing its tensors, made once per distribution
        object (the leaf's distribution is treated as immutable, as torch's cached
        properties already require)."""
        cached = self.__dict__.get("_without_validation")
        if cached is None or cached[0] is not self.distribution:
            if torch.compiler.is_compiling():
                # Copies are made eagerly (every sampler evaluates its start so): a
                # trace keeps the user's distribution, whose validation then breaks
                # the graph where it raises on values.
                return self.distribution
            cached = (self.distribution, _without_validation(self.distribution))
            self.__dict__["_without_validation"] = cached
        return cached[1]

    def _in_support(self, x: Tensor) -> Tensor | None:
        """Whether each x lies in the support, ``(batch,)``; None where torch cannot tell."""
        # Non-finite events are outside, and checked at the stand-in instead: torch's
        # positive_definite.check answers only symmetry for the whole batch as soon as one
        # matrix (e.g. one with a NaN) is not symmetric.
        finite = torch.isfinite(x.flatten(1) if x.dim() > 1 else x[:, None]).all(1)
        if x.shape[0] == 0:  # torch's checks of event dims cannot reshape an empty batch
            return finite
        # Compiled, the stand-in is put in unconditionally: reading the mask on the host
        # would break the graph.
        if torch.compiler.is_compiling() or not bool(finite.all()):
            mask = finite.reshape(-1, *(1,) * (x.dim() - 1))
            x = torch.where(mask, x, self._point_in_support().to(x))
        try:
            inside = self.distribution.support.check(x)
        except (NotImplementedError, ValueError):  # e.g. constraints.dependent
            return None
        return (inside.flatten(1).all(1) if inside.dim() > 1 else inside) & finite

    def _point_in_support(self) -> Tensor:
        """One fixed draw of the distribution (seeded, cached): a point where log p is finite."""
        point = getattr(self, "_support_point", None)
        if point is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                point = self.distribution.sample().detach()
            self._support_point = point
        return point

    def _log_z(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.distribution.sample((n,))


def _without_validation(distribution: Distribution) -> Distribution:
    """A shallow copy of ``distribution`` and of the distributions it wraps (an
    ``Independent``'s base, a mixture's components) with ``validate_args`` off."""
    unvalidated = copy.copy(distribution)
    unvalidated._validate_args = False
    for name, value in vars(distribution).items():
        if isinstance(value, Distribution):
            setattr(unvalidated, name, _without_validation(value))
    return unvalidated


def _map_tensors(value: object, fn: Callable[[Tensor], Tensor],
                 memo: dict[int, object] | None = None) -> object:
    """``value`` with ``fn`` applied to every tensor of a distribution or transform,
    through the distributions and transforms it holds: shallow copies, each made
    once (a transform and its cached inverse refer to each other)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, fn, memo) for item in value)
    if isinstance(value, weakref.ref):  # a cached inverse: rebuilt on demand
        return None
    if not isinstance(value, (Distribution, Transform)):
        return value
    memo = {} if memo is None else memo
    if id(value) not in memo:
        converted = memo[id(value)] = copy.copy(value)
        for name, item in vars(value).items():
            setattr(converted, name, _map_tensors(item, fn, memo))
    return memo[id(value)]


def from_energy(
    fn: Callable[..., Tensor],
    event_shape: int | Sequence[int],
    *,
    name: str = "energy",
    log_z: float | Tensor | None = None,
    noise_conditioned: bool = False,
    support: constraints.Constraint = constraints.real,
) -> EnergyModel:
    """A model with energy ``fn(x)`` (or ``fn(x, t)`` when ``noise_conditioned``).

    Args:
        fn: callable or ``nn.Module`` mapping ``(batch, *event_shape)`` to
            ``(batch,)`` (``(batch, 1)`` is squeezed). Module parameters are
            registered, so ``.parameters()`` of any expression using the leaf
            includes them.
        event_shape: shape of one sample.
        name: printed by ``repr``.
        log_z: log ∫ exp(−fn(x)) dx when known.
        support: where p̃ > 0 (a ``torch.distributions.constraints`` object, e.g.
            ``constraints.positive``); :func:`ebmalgebra.sample` then samples in
            unconstrained coordinates and returns constrained draws.

    Example:
        >>> quad = from_energy(lambda x: 0.5 * (x**2).sum(-1), event_shape=2, name="quad")
    """
    return EnergyFunction(fn, event_shape, name=name, log_z=log_z,
                          noise_conditioned=noise_conditioned, support=support)


def from_log_prob(
    fn: Callable[..., Tensor],
    event_shape: int | Sequence[int],
    *,
    name: str = "log_prob",
    normalized: bool = False,
    noise_conditioned: bool = False,
    support: constraints.Constraint = constraints.real,
) -> EnergyModel:
    """A model with energy E = −fn(x); ``normalized=True`` declares ∫ exp(fn) = 1.

    ``support`` (default ℝ) says where fn > −∞, e.g. ``constraints.positive`` for a
    scale: :func:`ebmalgebra.sample` samples such models in unconstrained coordinates
    (:mod:`ebmalgebra.constraints`) and returns draws in the support.

    Example:
        >>> scale = from_log_prob(lambda x: -x.sum(-1), 1, support=constraints.positive)
    """
    return EnergyFunction(fn, event_shape, name=name, log_z=0.0 if normalized else None,
                          noise_conditioned=noise_conditioned, sign=-1.0, support=support)


def from_score(
    fn: Callable[..., Tensor],
    event_shape: int | Sequence[int],
    *,
    name: str = "score",
    noise_conditioned: bool = False,
) -> EnergyModel:
    """A score-only model s(x) = ∇ₓ log p̃(x) (e.g. a diffusion model's denoiser).

    Works in ``&``, ``**``, ``w *`` and with unadjusted Langevin samplers; it has no
    energy, so ``|``, ``energy`` and Metropolis-corrected samplers reject it.
    """
    return ScoreFunction(fn, event_shape, name=name, noise_conditioned=noise_conditioned)


def from_distribution(distribution: Distribution, *, name: str = "distribution") -> EnergyModel:
    """A normalised model with exact sampling from a ``torch.distributions`` object.

    Outside the distribution's support E = +∞ (score 0): Metropolis-corrected
    samplers reject and count proposals there instead of failing.
    """
    return DistributionLeaf(distribution, name=name)
