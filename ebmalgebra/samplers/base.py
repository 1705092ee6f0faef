"""What every sampler shares: the ``Sampler`` protocol, the bound ``Potential``,
step-size handling and non-finite bookkeeping.

A sampler is a small kernel (DESIGN §4, BlackJAX-shaped)::

    state = sampler.init(x0, model)          # compiles the model, caches E and s at x0
    state, info = sampler.step(state, generator)

``state`` and ``info`` are NamedTuples of tensors. Positions are
``(n_chains, *event_shape)``, energies ``(n_chains,)``, scores shaped like
positions; every chain lives in one batched tensor whose device and dtype
follow ``x0``.

**Where the model lives.** ``init`` compiles the model once
(:func:`ebmalgebra.compile`) and stores it, wrapped in a :class:`Potential`,
in the returned state (``state.potential``). Sampler objects therefore hold
only hyper-parameters and never change: one sampler can drive any number of
models at once (annealed importance sampling re-initialises at each
intermediate model; parallel tempering runs its inner kernel on tempered
replicas), and a step depends only on ``(state, generator)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, TimeLike
from ebmalgebra.compile import CompiledEnergy, compile
from ebmalgebra.distributed import active_shard
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, CompositionError, NonFiniteError
from ebmalgebra.jit import call_compiled
from ebmalgebra.samplers.adaptation import window_adaptation

__all__ = [
    "NonFiniteError",
    "Potential",
    "Sampler",
    "StepSizeSampler",
    "as_chain_values",
    "local_chain_values",
    "check_invariant",
    "draw_normal",
    "draw_uniform",
    "expand_to_event",
    "expand_to_rank",
    "finite_rows",
    "is_nonfinite",
    "run_update",
    "shared_value",
    "squared_norm",
    "sum_event",
]


class Potential:
    """The compiled model a chain targets, evaluated on a batch of positions.

    Evaluates (β·E(x, t), β·s(x, t)) for positions ``(n, *event_shape)``, with an
    optional noise level ``t`` (float or ``(n,)``) for noise-conditioned models and
    an optional exponent ``beta`` (float or ``(n,)``, one per row) used by
    parallel tempering, so that ``beta=b`` evaluates ``model ** b`` row by row.

    Score-only models (``from_score``) have no energy: :meth:`energy_and_score`
    then returns a NaN energy, and ``has_energy`` is ``False``. Samplers that need
    energies build their potential with ``needs_energy=True``, which raises
    :class:`~ebmalgebra.CapabilityError` naming the score-only part.

    Attributes:
        model: the :class:`~ebmalgebra.CompiledEnergy` being evaluated.
        t: noise level passed to the model (``None`` when unused).
        beta: exponent applied to energy and score (``None`` for 1).
        has_energy: whether energies are available.
    """

    __slots__ = ("model", "t", "beta", "has_energy")

    def __init__(
        self,
        model: EnergyModel,
        *,
        operation: str,
        needs_energy: bool = True,
        needs_score: bool = True,
        t: TimeLike = None,
        beta: float | Tensor | None = None,
    ) -> None:
        if not isinstance(model, EnergyModel):
            raise ArgumentTypeError(f"{operation}: model must be an EnergyModel, got "
                                    f"{type(model).__name__}")
        compiled = model if isinstance(model, CompiledEnergy) else compile(model)
        if needs_energy:
            compiled.require("energy", operation)
        if needs_score:
            compiled.require("score", operation)
        self.model: CompiledEnergy = compiled
        self.t = t
        self.beta = beta
        self.has_energy = compiled.has_energy

    def replace(self, **changes: Any) -> Potential:
        """A copy with ``t`` and/or ``beta`` changed (the compiled model is shared)."""
        new = object.__new__(Potential)
        for name in self.__slots__:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    def check(self, x: Tensor, operation: str) -> None:
        """Validate starting positions: a floating tensor ``(n_chains, *event_shape)``."""
        validation.floating_tensor(f"{operation}: x0", x)
        event_shape = self.model.event_shape
        n_event = x.dim() - 1 if event_shape is None else len(event_shape)
        if x.dim() != n_event + 1:
            raise CompositionError(
                f"{operation}: x0 must be shaped (n_chains, *event_shape) with event_shape "
                f"{tuple(event_shape) if event_shape is not None else '(any)'}; got "
                f"{tuple(x.shape)}"
            )
        self.model._flatten(x, self.t)

    def energy(self, x: Tensor) -> Tensor:
        """β·E(x, t), shape ``(n,)``, detached."""
        with torch.no_grad():
            energy = self.model._energy(x, self.t)
        return energy if self.beta is None else energy * self.beta

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(β·E(x, t), β·s(x, t)); the energy is NaN when the model is score-only."""
        energy, score = self.model._energy_and_score(x, self.t, False)
        if energy is None:
            energy = torch.full(x.shape[:1], math.nan, dtype=x.dtype, device=x.device)
        if self.beta is None:
            return energy, score
        beta = self.beta
        return energy * beta, score * expand_to_event(beta, score)

    def __repr__(self) -> str:
        extras = "".join(
            f", {name}={value!r}" for name, value in (("t", self.t), ("beta", self.beta))
            if value is not None
        )
        return f"Potential({self.model!r}{extras})"


class Sampler:
    """Base class of the samplers: keyword-only hyper-parameters, ``init`` and ``step``.

    Subclasses implement :meth:`init` and :meth:`step`. Samplers with tunable
    parameters override :meth:`adaptation`, which :func:`ebmalgebra.sample` uses
    during warmup.

    **Declared facts.** Each sampler class states what other parts of the library
    need to know about it, so that nothing keeps a list of sampler classes and a
    new sampler is added in one file:

    - ``leaves_target_invariant``: every step leaves the target exactly invariant
      (a Metropolis–Hastings-corrected kernel). Annealed importance sampling
      (:func:`ebmalgebra.estimate_log_z`) accepts only such transitions.
    - ``not_invariant_because``: for the others, why not (shown in that error).
    - ``tempering_step_exponent``: a in ε_β = ε · β^(−a), how the step size of a
      kernel targeting p^β should grow as β falls (the target's scale grows like
      β^(−1/2)): 1 for Langevin proposals (ε is a variance), ½ for random-walk
      and Hamiltonian ones (ε is a length). ``None``: the sampler cannot run inside
      :class:`~ebmalgebra.samplers.ParallelTempering`, which needs an invariant
      kernel with a known exponent.
    - ``needs_energy``: the kernel evaluates energies (so score-only models cannot
      use it); ``False`` for kernels driven by the score alone.
    - ``adaptation_flags``: the warmup switches the sampler has
      (``"adapt_step_size"``, ``"adapt_mass"``), which callers that run short
      warmups turn off.
    - ``noise_levels``: the decreasing noise levels t₁ > … > t_L the sampler
      anneals a noise-conditioned model through, or ``None``.
    - ``n_annealing_steps``: the number of steps of its annealing phase, after
      which the chains target the model itself (the warmup to give
      :func:`ebmalgebra.sample`), or ``None`` for samplers that do not anneal.

    A sampler that leaves its target invariant is also a move of
    :class:`~ebmalgebra.samplers.SMC`, which re-targets its state at every level by
    :meth:`retarget` and adapts the state's ``step_size`` (towards the sampler's
    ``target_accept``) and, with ``adapt_mass``, its ``metric`` where the state has them.
    """

    name: str = "sampler"
    leaves_target_invariant: bool = False
    not_invariant_because: str = ("it does not declare that it leaves its target invariant "
                                  "(leaves_target_invariant)")
    tempering_step_exponent: float | None = None
    needs_energy: bool = True
    adaptation_flags: tuple[str, ...] = ()
    noise_levels: tuple[float, ...] | None = None
    n_annealing_steps: int | None = None

    def init(self, x0: Tensor, model: EnergyModel) -> NamedTuple:
        """Compile ``model``, evaluate it at ``x0`` ``(n_chains, *event_shape)`` and
        return the initial state."""
        raise NotImplementedError

    def step(self, state: NamedTuple, generator: torch.Generator | None = None,
             ) -> tuple[NamedTuple, NamedTuple]:
        """One transition of every chain: ``(new_state, info)``."""
        raise NotImplementedError

    def retarget(self, state: NamedTuple, potential: Potential, position: Tensor,
                 energy: Tensor, score: Tensor) -> NamedTuple:
        """``state`` moved to ``position`` ``(n_chains, *event_shape)`` under another
        ``potential``, whose ``energy`` ``(n_chains,)`` and ``score`` there are known: how
        sequential Monte Carlo re-initialises its move at every level without evaluating
        again. Hyper-parameters in the state (step size, metric) carry over.

        Default: the state's ``position``, ``energy``, ``potential`` and (if it has one)
        ``score`` fields replaced. Samplers whose state holds other facts about its
        target override this.

        Raises:
            CompositionError: if the state lacks one of those fields.
        """
        missing = [name for name in ("position", "energy", "potential")
                   if name not in state._fields]
        if missing:
            raise CompositionError(
                f"{self.name}: its state {type(state).__name__} has no {', '.join(missing)} "
                "field, so it cannot be re-targeted between levels; override "
                "Sampler.retarget")
        changes = {"position": position, "energy": energy, "potential": potential}
        if "score" in state._fields:
            changes["score"] = score
        return state._replace(**changes)

    def adaptation(self, state: NamedTuple, n_warmup: int):
        """An object with ``update(state, info) -> state`` and ``finish(state) -> state``
        that tunes the state's parameters over ``n_warmup`` steps, or ``None``.

        Dual-averaging adaptations return ``None`` for warmups shorter than
        :data:`~ebmalgebra.samplers.adaptation.MIN_ADAPTATION_STEPS`, with a warning
        (:func:`~ebmalgebra.samplers.adaptation.long_enough_to_adapt`).
        """
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items()
                           if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class StepSizeSampler(Sampler):
    """A sampler with a step size that warmup tunes by dual averaging (pooled over chains).

    Holds the shared hyper-parameters ``step_size`` (a float, or a tensor with one
    value per chain, validated at ``init``), ``target_accept``,
    ``adapt_step_size`` and ``jit`` (see :func:`run_update`). Its warmup is
    :func:`~ebmalgebra.samplers.adaptation.window_adaptation`, which also tunes
    ``state.metric`` for subclasses with an ``adapt_mass`` switch.
    """

    adaptation_flags = ("adapt_step_size",)

    def __init__(self, *, step_size: float | Tensor, target_accept: float,
                 adapt_step_size: bool, jit: bool = False) -> None:
        self.step_size = check_step_size(step_size, f"{self.name}: step_size")
        self.target_accept = validation.in_interval(f"{self.name}: target_accept", target_accept)
        self.adapt_step_size = adapt_step_size
        self.jit = validation.flag(f"{self.name}: jit", jit)

    def adaptation(self, state: NamedTuple, n_warmup: int):
        """Dual averaging of the step size (and windowed metric estimation where the
        sampler has ``adapt_mass``), or ``None`` with every switch off or with fewer
        than ``MIN_ADAPTATION_STEPS`` warmup steps (which warns)."""
        return window_adaptation(self, state, n_warmup)


def check_invariant(sampler: object, operation: str, argument: str, instead: str) -> None:
    """Refuse a ``sampler`` that does not declare ``leaves_target_invariant``: ``ArgumentError``
    naming the ``argument`` of ``operation``, the sampler's own reason
    (``not_invariant_because``) and what to use ``instead``."""
    if isinstance(sampler, Sampler) and sampler.leaves_target_invariant:
        return
    why = getattr(sampler, "not_invariant_because", Sampler.not_invariant_because)
    raise ArgumentError(f"{operation}: {argument}={sampler!r} must leave each target exactly "
                        f"invariant, and it does not: {why}; use {instead}")


def _short(value: object) -> str:
    if isinstance(value, Tensor) and value.numel() > 4:
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value)


# ----------------------------------------------------------------- helpers


def as_chain_values(value: float | Tensor, like: Tensor, what: str, *,
                    positive: bool = True) -> Tensor:
    """A hyper-parameter as one value per chain: ``(n_chains,)`` on ``like``'s device/dtype.

    Accepts a float, a 0-d tensor or a tensor ``(n_chains,)``; in a sharded run
    (:func:`~ebmalgebra.distributed.active_shard`), for ``like`` of this rank's chains,
    the tensor has one value per chain of all ranks and this rank's are returned. Validated
    once, at ``init``: it must be finite (and positive unless ``positive=False``).
    """
    shard = active_shard()
    if shard is not None and like.shape[0] != shard.n_local:
        shard = None  # not this rank's chains (e.g. tempering's replica rows)
    n_chains = like.shape[0] if shard is None else shard.n_chains
    if isinstance(value, bool) or not isinstance(value, int | float | Tensor):
        raise ArgumentTypeError(f"{what} must be a float or a tensor of shape ({n_chains},), got "
                                f"{type(value).__name__}")
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.dim() == 0:
        tensor = tensor.expand(n_chains)
    if tuple(tensor.shape) != (n_chains,):
        raise CompositionError(f"{what} must be a float or one value per chain, shape "
                               f"({n_chains},); got shape {tuple(tensor.shape)}")
    bad = ~torch.isfinite(tensor) | ((tensor <= 0) if positive else torch.zeros_like(
        tensor, dtype=torch.bool))
    if bad.any():
        kind = "positive and finite" if positive else "finite"
        raise ArgumentError(f"{what} must be {kind}, got {tensor[bad][0].item()!r} for chain "
                            f"{int(bad.nonzero()[0])}")
    return (tensor if shard is None else shard.take(tensor)).clone()


def local_chain_values(values: Tensor) -> Tensor:
    """This rank's entries of per-chain ``values`` given for the chains of all ranks
    ``(n_chains,)``, while a shard is active; ``values`` itself otherwise (a scalar, or
    no shard)."""
    shard = active_shard()
    if shard is None or values.dim() == 0 or values.shape[0] != shard.n_chains:
        return values
    return shard.take(values)


def run_update(update: Callable, jit: bool, state: NamedTuple, *args: Any,
               ) -> tuple[NamedTuple, NamedTuple]:
    """``update(state, *args)``: a kernel's deterministic update given its random numbers.

    With ``jit`` the whole update runs as one kernel compiled by ``torch.compile``
    for this model, these shapes, dtype and device, cached across steps and runs
    (:func:`ebmalgebra.jit.call_compiled`; eager with one warning where compilation
    is unavailable). The random numbers in ``args`` are drawn by the caller, so a
    seed gives the same chain either way, up to float rounding.
    """
    if jit:
        return call_compiled(update, state.potential.model, state, *args)
    return update(state, *args)


class Derived:
    """A value derived from one tensor of a sampler's state, e.g. σ = √(2ε) from the
    step size, recomputed only when that tensor (or an extra argument) changes.

    Between warmup updates a state carries the same step-size tensor from step to
    step (and the same all-clear ``frozen`` mask while no chain freezes), so caching
    such values takes their ops out of the step (on small batches each op costs a
    dispatch whatever its size) without changing a bit of the result. The tensor is
    recognised by identity and by its in-place version counter; extra arguments
    (plain values such as a number of dimensions) by equality.

    Args:
        function: maps the tensor and the extra arguments to the derived value; a
            module-level function, so that samplers holding this stay picklable.
    """

    __slots__ = ("function", "source", "version", "arguments", "value")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.source: Tensor | None = None
        self.version = -1
        self.arguments: tuple = ()
        self.value: Any = None

    def __call__(self, tensor: Tensor, *arguments: Any) -> Any:
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor keeps no version counter: no cache
            return self.function(tensor, *arguments)
        if tensor is not self.source or version != self.version or arguments != self.arguments:
            self.value = self.function(tensor, *arguments)
            self.source, self.version, self.arguments = tensor, version, arguments
        return self.value


def shared_value(values: Tensor) -> Tensor | None:
    """The value every chain has in ``values`` ``(n_chains,)``, as a 0-d tensor, or ``None``
    when they differ, and off the CPU or under ``torch.compile`` (where the read would
    synchronise or break the graph). One host read: samplers cache it per step-size
    tensor (:class:`Derived`).

    A per-chain factor shaped ``(n, 1, …, 1)`` splits an elementwise op into one short
    loop per chain row; a 0-d factor gives the same results in one loop over all
    coordinates, which on small events is much faster (an ``addcmul`` at 1000 × 2:
    2.9 µs with the ``(n, 1)`` factor, 1.25 µs with a 0-d one; 15 vs 12 µs at 1000 × 100).
    """
    if values.dim() != 1 or values.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    first = values[0]
    return first.clone() if bool((values == first).all()) else None


def check_step_size(value: float | Tensor, what: str) -> float | Tensor:
    """Check a float step size at construction (tensors are checked at ``init``)."""
    if isinstance(value, Tensor):
        return value.detach()
    return validation.positive(what, value)


def expand_to_event(values: Tensor | float, like: Tensor) -> Tensor | float:
    """Reshape per-chain ``(n,)`` values to ``(n, 1, …, 1)`` to broadcast against ``like``."""
    return expand_to_rank(values, like.dim())


def expand_to_rank(values: Tensor | float, rank: int) -> Tensor | float:
    """Reshape per-chain ``(n,)`` values to ``(n, 1, …, 1)`` with ``rank`` dimensions."""
    if not isinstance(values, Tensor) or values.dim() == 0:
        return values
    return values.reshape(values.shape + (1,) * (rank - values.dim()))


def sum_event(x: Tensor) -> Tensor:
    """Sum over the event dimensions: ``(n, *event_shape)`` → ``(n,)``."""
    return x.sum(1) if x.dim() == 2 else x.reshape(x.shape[0], -1).sum(1)


def squared_norm(x: Tensor) -> Tensor:
    """‖x‖² over the event dimensions, ``(n,)``, in one pass."""
    flat = x if x.dim() == 2 else x.reshape(x.shape[0], -1)
    return torch.linalg.vecdot(flat, flat)


def finite_rows(energy: Tensor | None, score: Tensor | None) -> Tensor:
    """``(n,)`` mask of rows whose energy and every score coordinate are finite.

    One reduction: NaN and ±inf propagate through the sum (a sum that overflows the
    dtype's range from finite terms also counts, which no chain would survive
    anyway). Pass ``energy=None`` for score-only models.
    """
    total = energy if score is None else (
        sum_event(score) if energy is None else sum_event(score) + energy)
    # t − t is 0 exactly for finite t and NaN for ±inf and NaN: two small ops, where
    # torch.isfinite takes four on the CPU.
    return (total - total) == 0


def all_finite_eagerly(energy: Tensor | None, score: Tensor) -> bool:
    """Whether every energy (``None`` for score-only models) and score coordinate is
    finite, answered only in eager mode on the CPU (False otherwise, like
    :func:`none_set_eagerly`).

    Two whole-tensor sums read as Python floats: NaN and ±inf propagate through them.
    On the CPU that costs a third of the row-wise :func:`finite_rows` (a reduction
    over one dimension is much slower than over all). A False answer is no verdict:
    a sum may overflow from finite entries, and the caller's exact row-wise check
    then decides.
    """
    return sum_is_finite_eagerly(score) and (energy is None or sum_is_finite_eagerly(energy))


def sum_is_finite_eagerly(values: Tensor) -> bool:
    """Whether the sum of ``values`` is finite (one sum read as a Python float), answered
    only in eager mode on the CPU (False otherwise, like :func:`all_finite_eagerly`).

    True means every entry is finite (NaN and ±∞ propagate through the sum); False is no
    verdict, since the sum may overflow from finite entries.
    """
    if values.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return math.isfinite(float(values.sum()))


def any_set(mask: Tensor) -> bool:
    """Whether some entry of ``mask`` is True (one host read)."""
    return bool(mask.any())


def is_nonfinite(energy: Tensor | None, score: Tensor | None) -> Tensor:
    """``(n,)`` mask of rows whose energy or some score coordinate is NaN or ±inf."""
    return ~finite_rows(energy, score)


def draw_normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped, typed and placed like ``like``.

    With chains sharded across processes (:mod:`ebmalgebra.distributed`) the noise of
    all chains is drawn and this rank's rows kept, so each chain gets the numbers it
    would get in one process.
    """
    shard = active_shard()
    shape = like.shape if shard is None else shard.global_shape(like.shape, "draw_normal")
    noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return noise if shard is None else shard.take(noise)


def draw_uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) draws, one per chain: shape ``(n,)`` for ``like`` of shape ``(n, …)``;
    sharded like :func:`draw_normal`."""
    shard = active_shard()
    shape = like.shape[:1] if shard is None else shard.global_shape(like.shape[:1],
                                                                    "draw_uniform")
    uniform = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return uniform if shard is None else shard.take(uniform)


def metropolis_accept(log_ratio: Tensor, finite: Tensor | None, uniform: Tensor, *,
                      ratios_finite: bool = False) -> tuple[Tensor, Tensor]:
    """Accept with probability min(1, exp(log_ratio)) using ``uniform`` ~ U(0, 1);
    proposals that are not finite never.

    Returns ``(accepted (n,) bool, acceptance probability (n,))``; the probability
    of a non-finite proposal is 0 (``finite`` also catches −∞ energies, whose ratio
    would be +∞), and so is that of a NaN ratio (an overflow of finite terms).
    ``finite=None`` states that every proposal is finite; ``ratios_finite`` that every
    log ratio is too (the caller read their sum), which skips the NaN guard.
    """
    if not ratios_finite:
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    probability = log_ratio.clamp(max=0.0).exp()
    if finite is not None:
        probability = torch.where(finite, probability, 0.0)
    return uniform < probability, probability


def none_set_eagerly(mask: Tensor) -> bool:
    """Whether ``mask`` is all False, answered only in eager mode on the CPU.

    A shortcut for kernels whose rows rarely need a fix-up (ULA's frozen chains):
    on the CPU reading one bool is cheaper than a row-wise select, and skipping the
    select gives bit-identical results. Under ``torch.compile`` or on accelerators
    (where the read would synchronise) it answers False, so the branch-free path runs.
    """
    if mask.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not bool(mask.any())


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Row-wise ``new`` where ``mask`` else ``old``; ``mask`` is ``(n,)`` bool, or already
    shaped ``(n, 1, …, 1)`` like ``new`` (a caller selecting several tensors reshapes once).

    Small tensors use ``torch.where``. Large ones use lerp(old, new, mask) with the
    non-finite entries of ``new`` zeroed first, which is exact for weights 0 and 1
    (old + 0·(new − old) = old, and new − (new − old)·0 = new) and, on the CPU,
    about 1.5× faster than ``torch.where`` with a broadcast mask from ~10⁴ entries
    on; this runs once or twice per step. Selected rows of ``new`` must be finite
    (they are: only finite proposals are taken).
    """
    rows = mask if mask.dim() == new.dim() else expand_to_event(mask, new)
    if new.numel() <= _WHERE_MAX_NUMEL:
        return torch.where(rows, new, old)
    weight = rows.to(new.dtype)
    return torch.lerp(old, torch.nan_to_num(new, nan=0.0, posinf=0.0, neginf=0.0), weight)


_WHERE_MAX_NUMEL = 16384
"""Below this size ``torch.where`` is the cheaper select (one dispatch instead of three)."""
