"""``sample``: run a sampler on a model, with warmup, thinning and bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ebmalgebra import diagnostics, validation
from ebmalgebra.base import EnergyModel, input_options
from ebmalgebra.compile import compile
from ebmalgebra.constraints import Unconstrained, check_continuous, unconstrain
from ebmalgebra.distributed import ChainShard, chain_shard, enter_shard, leave_shard
from ebmalgebra.errors import ArgumentError, CapabilityError, CompositionError
from ebmalgebra.jit import SteadyRun
from ebmalgebra.progress import progress_bar
from ebmalgebra.samplers.base import NonFiniteError, Sampler, is_nonfinite
from ebmalgebra.samplers.escape import EscapeWatch
from ebmalgebra.threads import use_threads

__all__ = ["Samples", "sample"]

ON_NONFINITE = ("reject", "raise")

_FLUSH_EVERY = 64
"""Per-step records are reduced in blocks, so the loop adds one op per field per step."""

_RETAIN_MAX_NUMEL = 16384
"""Largest batch (chains × event size) whose per-step info tensors the recorder holds
until a block is reduced; larger runs copy them into a reused block buffer instead."""


@dataclass(frozen=True, eq=False)
class Samples:
    """Draws and per-step statistics of an MCMC run (returned by :func:`sample`).

    Attributes:
        draws: ``(n_draws, n_chains, *event_shape)``, the positions after warmup,
            every ``thin``-th step.
        state: the final sampler state (continue with ``sampler.step(state, g)``;
            it holds the tuned step size and metric after warmup).
        sampler: the sampler that produced the draws.
        warmup: number of warmup steps (discarded) before the draws.
        thin: keep every ``thin``-th step.
        stats: per-step statistics over all ``warmup + n_steps`` steps, one entry
            per field of the sampler's info: the mean over chains for per-chain
            values (``acceptance_rate``, ``energy_error``), the number of chains
            for per-chain flags (``divergent``, ``nonfinite``, ``frozen``), the value
            itself for numbers (``n_leapfrog``) and for the tensors the info type
            lists in ``per_step_fields`` (``swap_acceptance`` of tempering is
            ``(n_steps, n_replicas − 1)``); plus ``step_size``, the mean over chains.
            Every other tensor field of an info is per chain, ``(n_chains, …)``.
        chain_counts: per-chain totals of each flag over the sampling phase
            (after warmup), e.g. ``chain_counts["divergent"]`` is ``(n_chains,)``.
        chain_stats: the per-chain info values of the transitions that produced the
            draws, ``(n_draws, n_chains)`` each, plus ``step_size`` and ``lp`` (the
            unnormalised log density −E of each draw in the coordinates the chains ran
            in: for a constrained model, of the unconstrained u, log|det J_T(u)|
            included, as Stan's ``lp__``); see :meth:`to_arviz`.
        default_sampler: why the sampler was chosen, when :func:`sample` chose it.
        unconstrained: for a model with a constrained support, the bijection
            T: ℝᵏ → support the chains ran through (:mod:`ebmalgebra.constraints`);
            ``None`` otherwise.
        unconstrained_draws: the chains' positions u ``(n_draws, n_chains, k…)``
            with ``draws = T(u)``; ``None`` for unconstrained models. ``state``
            holds unconstrained positions too.
        shard: for a run sharded across processes (:mod:`ebmalgebra.distributed`),
            the block of global chains this rank ran; ``None`` otherwise. ``draws``,
            ``state`` and ``chain_counts`` then hold this rank's chains only, while
            ``stats`` are over all chains, and :meth:`ess`, :meth:`rhat`,
            :meth:`summary` and :meth:`gather` are collectives over all ranks.
    """

    draws: Tensor
    state: NamedTuple
    sampler: Sampler
    warmup: int
    thin: int
    stats: dict[str, Tensor] = field(repr=False)
    chain_counts: dict[str, Tensor] = field(repr=False)
    chain_stats: dict[str, Tensor] = field(default_factory=dict, repr=False)
    default_sampler: str | None = None
    shard: ChainShard | None = field(default=None, repr=False)
    unconstrained: Unconstrained | None = field(default=None, repr=False)
    unconstrained_draws: Tensor | None = field(default=None, repr=False)

    @property
    def n_chains(self) -> int:
        """Chains in ``draws``: those of this rank when the run is sharded."""
        return self.draws.shape[1]

    @property
    def acceptance_rate(self) -> Tensor | None:
        """Mean acceptance probability over chains, per step ``(warmup + n_steps,)``;
        ``None`` for samplers without an accept step (ULA)."""
        return self.stats.get("acceptance_rate")

    @property
    def step_size(self) -> Tensor | None:
        """Mean step size over chains, per step ``(warmup + n_steps,)``."""
        return self.stats.get("step_size")

    @property
    def n_divergent(self) -> Tensor:
        """Divergent transitions per chain after warmup, ``(n_chains,)`` (zeros if none)."""
        return self._count("divergent")

    @property
    def n_nonfinite(self) -> Tensor:
        """Non-finite proposals per chain after warmup, ``(n_chains,)``: rejected by
        corrected samplers, freezing the chain for unadjusted ones."""
        return self._count("nonfinite")

    @property
    def frozen(self) -> Tensor:
        """Chains frozen by a non-finite step (unadjusted samplers), ``(n_chains,)``."""
        frozen = getattr(self.state, "frozen", None)
        if frozen is None:
            return torch.zeros(self.n_chains, dtype=torch.bool, device=self.draws.device)
        return frozen

    def _count(self, name: str) -> Tensor:
        counts = self.chain_counts.get(name)
        if counts is None:
            return torch.zeros(self.n_chains, dtype=torch.long, device=self.draws.device)
        return counts

    def ess(self, kind: str = "bulk") -> Tensor:
        """Effective sample size per coordinate, shaped ``event_shape``
        (:func:`ebmalgebra.diagnostics.ess`), over the chains of all ranks."""
        return diagnostics.ess(self.gather(dst=None), kind=kind)

    def rhat(self) -> Tensor:
        """Rank-normalised split-R̂ per coordinate (:func:`ebmalgebra.diagnostics.rhat`),
        over the chains of all ranks."""
        return diagnostics.rhat(self.gather(dst=None))

    def summary(self, names: str | list[str] | None = None) -> diagnostics.Summary:
        """Mean, sd, quantiles, MCSE, ESS and R̂ per coordinate
        (:func:`ebmalgebra.diagnostics.summary`), over the chains of all ranks;
        ``print`` it for a table.

        Above the table: the default sampler's name, the support of a constrained
        model, and the number of divergent transitions after warmup, if any: the one
        warning left when every chain misses the same region, which R̂ and the ESS do
        not show (docs/samplers.md).
        """
        lines = [f"sampler: {self.default_sampler}"] if self.default_sampler else []
        if self.unconstrained is not None:
            lines.append(f"support: {self.unconstrained.transform.codomain}, sampled in "
                         "unconstrained coordinates (Samples.unconstrained_draws)")
        divergences = self._divergence_line()
        if divergences:
            lines.append(divergences)
        header = "\n".join(lines)
        return diagnostics.summary(self.gather(dst=None), names=names, header=header)

    def _divergence_line(self) -> str:
        """A line on the divergent transitions after warmup over all chains, or ``""``.

        A divergence is a trajectory whose energy error blew up: the step size is
        unstable where it went (the leapfrog needs ε·√λ_max < 2 for the largest
        eigenvalue λ_max of the whitened Hessian of E). Rejecting such trajectories
        keeps chains out of those regions, so the draws miss them, and every chain
        misses them alike: R̂ stays near 1 and the ESS, which measures mixing where
        the chains did go, can be large (docs/samplers.md, "When the diagnostics look
        fine and the draws are off"). The count is the warning that remains.
        """
        per_step = self.stats.get("divergent")
        if per_step is None:
            return ""
        count = int(per_step[self.warmup:].sum())
        if not count:
            return ""
        n_chains = self.n_chains if self.shard is None else self.shard.n_chains
        total = (per_step.shape[0] - self.warmup) * n_chains
        target = getattr(self.sampler, "target_accept", None)
        advice = (f"raise target_accept (now {target}) for a smaller step size"
                  if target is not None else "use a smaller step size")
        return (f"divergent: {count} of {total} transitions after warmup ({count / total:.2%}): "
                "the draws may miss the regions where the step size is unstable, in every "
                f"chain alike, which R-hat and ESS do not show; {advice}, or reparameterise")

    def to_arviz(self, var_name: str = "x"):
        """The draws and sample stats as ``arviz.InferenceData``
        (:func:`ebmalgebra.arviz_export.to_arviz`; needs arviz)."""
        from ebmalgebra.arviz_export import to_arviz

        return to_arviz(self, var_name=var_name)

    def gather(self, dst: int | None = 0) -> Tensor | None:
        """The draws of all chains, ``(n_draws, n_chains_global, *event_shape)``.

        Rank ``dst`` of the run's group gets them and the other ranks ``None``;
        ``dst=None`` gives them to every rank. The draws themselves when the run is
        not sharded. A collective: every rank must call it.
        """
        if self.shard is None:
            return self.draws
        if dst is None:
            return self.shard.all_gather(self.draws, dim=1)
        return self.shard.gather(self.draws, dim=1, dst=dst)

    def __repr__(self) -> str:
        n_draws, n_chains = self.draws.shape[:2]
        chains = (f"{n_chains} chains" if self.shard is None else
                  f"{n_chains} of {self.shard.n_chains} chains on rank {self.shard.rank}")
        parts = [f"{n_draws} draws x {chains}", f"event_shape="
                 f"{tuple(self.draws.shape[2:])}", f"warmup={self.warmup}"]
        rate = self.acceptance_rate
        if rate is not None and rate.numel() > self.warmup:
            parts.append(f"acceptance={float(rate[self.warmup:].mean()):.3f}")
        for name in ("divergent", "nonfinite"):
            if name in self.chain_counts:
                parts.append(f"{name}={int(self.chain_counts[name].sum())}")
        if "frozen" in self.stats:
            parts.append(f"frozen={int(self.frozen.sum())}")
        return f"Samples({type(self.sampler).__name__}: {', '.join(parts)})"


class _Recorder:
    """Collects per-step info cheaply: per-step values are gathered in blocks of
    :data:`_FLUSH_EVERY` steps, reduced to the per-step statistics, and the rows of
    the kept draws (after warmup, every ``thin``-th step) kept as per-chain statistics.

    Which fields are recorded (numbers and tensors) and which of them are per chain is
    decided once, from the first info (see :func:`_per_chain_fields`), never from the
    shape of a block: an info type keeps the types of its fields from step to step.

    Memory, not ops, sets how a block is gathered. Step tensors held across steps sit
    among the next steps' temporaries and fragment the heap, so that large
    temporaries keep needing fresh pages: holding every kept step's info to the end
    of a run cost ~12% per draw at 100-D with 1000 chains, and even holding them for
    a block ~20% for MALA (benchmarks/eager_overhead.py). So with ``copy_rows`` (runs
    above :data:`_RETAIN_MAX_NUMEL` elements) each tensor is copied into a row of a
    buffer reused block after block, one op per field per step; smaller runs, whose
    temporaries are small, hold the tensors and stack them, which costs no op per step.
    A tensor that stays the same object all block long (ULA's and MALA's all-clear
    ``frozen`` mask, the step size between warmup updates) is reduced and kept from one
    row, whatever the block's length, and copied once per block.
    The rows of the kept draws go straight into ``(n_draws, n_chains, …)`` tensors made
    once (allocating and later concatenating blocks touches fresh pages every time, which
    costs more than the copies). The caller copies the energies of the kept draws into
    ``energies``, negated in place at the end (``lp`` = −E).
    """

    def __init__(self, n_chains: int, warmup: int, thin: int, n_draws: int,
                 energies: Tensor | None, shard: ChainShard | None = None,
                 copy_rows: bool = False) -> None:
        self.n_chains = n_chains
        self.warmup = warmup
        self.thin = thin
        self.n_draws = n_draws
        self.energies = energies
        self.shard = shard
        self.copy_rows = copy_rows
        self.rows: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = {}
        self.last: dict[str, tuple[Tensor, int]] = {}
        self.per_chain: frozenset[str] | None = None
        self.columns: list[tuple[int, str, list]] = []
        self.pending: dict[str, list] = {}
        self.done: dict[str, list[Tensor]] = {}
        self.kept: dict[str, Tensor] = {}
        self.n_kept = 0
        self.counts: dict[str, Tensor] = {}
        self.step = 0
        self.block_start = 0

    def add(self, state: NamedTuple, info: NamedTuple) -> None:
        values = (*info, getattr(state, "step_size", None))
        if self.per_chain is None:
            self._start(info, values)
        if self.copy_rows:
            self._copy(values)
        else:
            for index, _, pending in self.columns:
                pending.append(values[index])
        self.step += 1
        if self.step % _FLUSH_EVERY == 0 or self.step == self.warmup:
            self.flush()

    def _start(self, info: NamedTuple, values: tuple) -> None:
        """Fix, from the first step, which values are recorded (numbers and tensors, the
        step size last) and which of them are per chain: :meth:`add` then does no per-field
        bookkeeping."""
        # The library's samplers keep one step size per chain; a sampler of one's own
        # may keep a number, recorded as it is.
        step_size = values[-1]
        per_chain_step = (isinstance(step_size, Tensor) and step_size.dim() > 0
                          and step_size.shape[0] == self.n_chains)
        self.per_chain = _per_chain_fields(info, self.n_chains) | (
            {"step_size"} if per_chain_step else set())
        names = (*info._fields, "step_size")
        self.columns = [(index, name, self.pending.setdefault(name, []))
                        for index, (name, value) in enumerate(zip(names, values, strict=True))
                        if isinstance(value, Tensor | int | float)]

    def _copy(self, values: tuple) -> None:
        """Record a step by copying each tensor into its row of the field's block buffer.

        A tensor repeated from the previous step (the same object, not changed in place) is
        not copied again: its entry is the row holding it, which :meth:`_block` copies
        forward if the block needs every row.
        """
        for index, name, pending in self.columns:
            value = values[index]
            if isinstance(value, Tensor):
                last = self.last.get(name)
                if pending and last is not None and value is last[0] and value._version == last[1]:
                    value = pending[-1]
                else:
                    self.last[name] = value, value._version
                    value = self._copy_row(name, value, len(pending))
            pending.append(value)

    def _copy_row(self, name: str, value: Tensor, index: int) -> Tensor:
        """``value`` copied into row ``index`` of the field's block buffer; returns the row."""
        if name not in self.rows:
            buffer = value.new_empty((_FLUSH_EVERY, *value.shape))
            self.rows[name] = buffer, buffer.unbind(0)
        row = self.rows[name][1][index]
        row.copy_(value)
        return row

    def _block(self, name: str, values: list) -> Tensor:
        """This block's values of one field, ``(steps, …)``; a view of a reused buffer
        when its rows were copied."""
        if name in self.rows:
            buffer, rows = self.rows[name]
            for row, value in zip(rows, values, strict=False):  # rows ≥ values
                if value is not row:  # a repeat: the row where its run was copied
                    row.copy_(value)
            return buffer[:len(values)]
        return torch.stack(values) if isinstance(values[0], Tensor) else torch.as_tensor(values)

    def flush(self) -> None:
        sampling = self.step > self.warmup
        # Rows of this block whose step is kept: step i (0-based) is kept when
        # i − warmup + 1 is a positive multiple of thin.
        kept_rows = slice((self.warmup - 1 - self.block_start) % self.thin, None, self.thin)
        self.block_start = self.step
        n_kept = 0
        for name, values in self.pending.items():
            if not values:
                continue
            first = values[0]
            if isinstance(first, Tensor) and all(value is first for value in values):
                # One tensor all block long: its row stands for every step.
                block, repeats = first.unsqueeze(0), len(values)
            else:
                block, repeats = self._block(name, values), 1
            values.clear()
            if name in self.per_chain:
                if sampling:
                    rows = (block[kept_rows] if repeats == 1 else
                            block.expand(len(range(repeats)[kept_rows]), *block.shape[1:]))
                    n_kept = self._keep(name, rows)
                reduced = self._reduce(name, block, repeats if sampling else 0)
                reduced = (reduced if repeats == 1 else
                           reduced.expand(repeats, *reduced.shape[1:]))
            else:
                reduced = (block if repeats == 1 else
                           block.expand(repeats, *block.shape[1:])).clone()
            self.done.setdefault(name, []).append(reduced)
        self.n_kept += n_kept

    def _reduce(self, name: str, block: Tensor, counted: int) -> Tensor:
        """A per-chain field's per-step statistic over ``block`` ``(steps, n_chains, …)``;
        flags are also added ``counted`` times to the per-chain counts (0 in warmup)."""
        if block.dtype == torch.bool:
            if counted:
                flags = block.sum(0) if counted == 1 else block.sum(0) * counted
                total = self.counts.get(name)
                self.counts[name] = flags if total is None else total + flags
            return block.sum(1)
        if self.shard is not None:
            # Summed over ranks in result(): this rank's share of the global mean.
            return block.sum(1) / self.shard.n_chains
        if block.is_floating_point():
            return block.mean(1)
        return block.double().mean(1)  # integer counts per chain (NUTS's tree depth)

    def _keep(self, name: str, rows: Tensor) -> int:
        """Copy this block's ``rows`` of the kept draws into the field's per-draw tensor."""
        kept = self.kept.get(name)
        if kept is None:
            kept = self.kept[name] = rows.new_empty((self.n_draws, *rows.shape[1:]))
        kept[self.n_kept:self.n_kept + len(rows)].copy_(rows)
        return len(rows)

    def result(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Per-step statistics, per-chain flag counts and the per-chain statistics of the
        kept draws (``{}`` when no draw is kept); called once, at the end of the run."""
        self.flush()
        stats = {name: torch.cat(blocks) for name, blocks in self.done.items()}
        if self.shard is not None:
            for name in sorted(self.per_chain or ()):
                if name in stats:
                    stats[name] = self.shard.sum(stats[name])
        kept = dict(self.kept)
        if self.energies is not None:
            kept["lp"] = self.energies.neg_()
        if not self.n_draws:
            kept = {}
        return stats, self.counts, kept


def _per_chain_fields(info: NamedTuple, n_chains: int) -> frozenset[str]:
    """The per-chain fields of a sampler's info: every tensor with at least one
    dimension, except those its type lists in ``per_step_fields``.

    Raises:
        CompositionError: if such a tensor is not ``(n_chains, …)``, i.e. the info type
            should list it in ``per_step_fields``.
    """
    info_type = type(info)
    per_step = frozenset(getattr(info_type, "per_step_fields", ()))
    names = set()
    for name, value in zip(info._fields, info, strict=True):
        if not isinstance(value, Tensor) or value.dim() == 0 or name in per_step:
            continue
        if value.shape[0] != n_chains:
            raise CompositionError(
                f"sample: {info_type.__name__}.{name} has shape {tuple(value.shape)}, but "
                f"per-chain info values are shaped (n_chains, …) with n_chains={n_chains}; "
                f"list per-step fields in {info_type.__name__}.per_step_fields"
            )
        names.add(name)
    return frozenset(names)


def default_x0(model: EnergyModel, n_chains: int, generator: torch.Generator | None) -> Tensor:
    """Starting points: exact draws if the model can sample, else standard normal.

    The standard-normal draws take the device and dtype of the model's first
    floating parameter or buffer (float32 on the CPU for models without any).
    """
    if model.can_sample:
        return model.sample(n_chains, generator=generator).detach()
    event_shape = model.event_shape
    if event_shape is None:
        raise CompositionError(f"sample: {model!r} has no event shape; pass x0")
    return torch.randn((n_chains, *event_shape), generator=generator,
                       **input_options(model, device=torch.device("cpu")))


def _check_generator(generator: torch.Generator | None, device: torch.device,
                     what: str) -> None:
    """Random numbers are drawn on the run's device, so the generator must live there."""
    if generator is not None and generator.device.type != device.type:
        raise ArgumentError(
            f"sample: generator is on device {generator.device.type!r} but {what} is on "
            f"{str(device)!r}; pass torch.Generator(device={device.type!r})"
        )


def _first_nonfinite(info: NamedTuple, shard: ChainShard | None) -> Tensor | None:
    """Global indices of the chains flagged ``nonfinite``, the same on every rank."""
    flags = getattr(info, "nonfinite", None)
    if flags is None:
        return None
    if shard is not None:
        if not shard.any(flags):
            return None
        flags = shard.all_gather(flags)
    elif not bool(flags.any()):
        return None
    return flags.nonzero().flatten()


def sample(
    model: EnergyModel,
    sampler: Sampler | None = None,
    *,
    n_chains: int | None = None,
    x0: Tensor | None = None,
    n_steps: int,
    warmup: int = 0,
    thin: int = 1,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    callback: Callable[[int, NamedTuple, NamedTuple], Any] | None = None,
    on_nonfinite: str = "reject",
    group: torch.distributed.ProcessGroup | None = None,
    unconstrain: bool = True,
) -> Samples:
    """Draw MCMC samples of ``model`` with ``sampler``; all chains run batched.

    Runs ``warmup`` steps (adapting the sampler's step size and metric where it
    supports it, then discarded) followed by ``n_steps`` steps, keeping every
    ``thin``-th position. The model is compiled once (``ebmalgebra.compile``).

    Args:
        model: any expression (score-only models only with ``ULA`` /
            ``AnnealedLangevin`` without correction).
        sampler: e.g. ``MALA(step_size=0.05)`` or ``HMC()``; ``None`` picks ``NUTS()``
            for models with energies (and says so in ``Samples.summary()``).
        n_chains: number of chains (an int ≥ 1), when ``x0`` is not given; if both
            are given they must agree.
        x0: starting points ``(n_chains, *event_shape)`` with n_chains ≥ 1; device
            and dtype of the run follow it. Default: exact draws when
            ``model.can_sample``, else standard normal draws (see :func:`default_x0`).
        n_steps: steps after warmup; ``n_steps // thin`` draws are kept.
        warmup: adaptation / burn-in steps before the draws. Adapting a step size
            takes at least ``MIN_ADAPTATION_STEPS`` = 20 steps
            (:mod:`ebmalgebra.samplers.adaptation`); a shorter warmup keeps the
            sampler's initial step size (and metric) and only burns in, with a
            ``RuntimeWarning``.
        thin: keep every ``thin``-th step.
        generator: source of all randomness; the same seed gives bit-identical
            draws. ``None`` uses torch's global generator. It must be on the
            device type of the run (``x0``'s, or the model's for default starts).
        progress: show a tqdm progress bar; ``None`` shows it when stderr is a
            terminal.
        callback: called as ``callback(step, state, info)`` after every step
            (``step`` counts from 0 over warmup and sampling). With a ``jit=True``
            sampler it may change or replace the model's parameters and buffers, change
            other tensors its functions read in place (same dtype, shape and strides), but
            not replace those nor change plain Python values they read (see
            :mod:`ebmalgebra.jit`, "Guards", and :class:`ebmalgebra.jit.SteadyRun`).
        on_nonfinite: ``"reject"`` (default): NaN/inf proposals are rejected and
            counted (unadjusted samplers freeze the chain); ``"raise"``: raise
            :class:`NonFiniteError` naming the step and the chains.
        group: a ``torch.distributed`` process group to shard the chains over; by
            default the default group when one is initialised with several processes
            (e.g. under ``torchrun``). Each rank then runs a contiguous block of the
            ``n_chains`` chains, and the draws of every chain are those one process
            would give for the same seed (:mod:`ebmalgebra.distributed`). Pass the
            same arguments on every rank: the same seed, and ``x0`` for all chains.
        unconstrain: for a model whose support is constrained (``model.support``,
            e.g. a Gamma's (0, ∞)), run the chains on its pushforward to ℝᵏ by a
            bijection T⁻¹ (log-Jacobian included) and return ``draws = T(u)``, with
            ``x0`` given in the constrained space (:mod:`ebmalgebra.constraints`).
            ``False`` samples the model as it is (proposals outside the support
            are rejected); discrete supports are refused either way.

    Returns:
        :class:`Samples` with ``draws`` ``(n_steps // thin, n_chains, *event_shape)``.

    Raises:
        ArgumentTypeError: (a ``TypeError``) if ``sampler``, ``x0`` or ``generator``
            is not of its type.
        ArgumentError: (a ``ValueError``) for a bad count (``n_chains``, ``n_steps``,
            ``warmup``, ``thin``), an ``x0`` without chains or disagreeing with
            ``n_chains``, or a ``generator`` on another device type than the run.
        NonFiniteError: if a starting point has a non-finite energy or score, or
            (with ``on_nonfinite="raise"``) when a step produces one.

    Warns:
        ImproperTargetWarning: once, if chains run beyond ten times the size of
            ``x0``, its spread or its distance from the origin
            (:mod:`ebmalgebra.samplers.escape`): the target is probably improper,
            and the warning names its inverse or negative-power parts.

    Example:
        >>> from ebmalgebra.targets import Gaussian
        >>> model = Gaussian(torch.zeros(1), 1.0) & Gaussian(torch.full((1,), 2.0), 1.0)
        >>> samples = ebmalgebra.sample(model, HMC(), n_chains=64, n_steps=500, warmup=200,
        ...                             generator=torch.Generator().manual_seed(0))
        >>> samples.draws.shape
        torch.Size([500, 64, 1])
    """
    if sampler is not None:
        validation.instance("sample: sampler", sampler, Sampler,
                            "an ebmalgebra.samplers.Sampler")
    validation.one_of("sample: on_nonfinite", on_nonfinite, ON_NONFINITE)
    if progress is not None:
        validation.flag("sample: progress", progress)
    validation.count("sample: n_steps", n_steps, 0)
    validation.count("sample: warmup", warmup, 0)
    validation.count("sample: thin", thin, 1)
    if n_chains is not None:
        validation.count("sample: n_chains", n_chains, 1)
    validation.generator("sample: generator", generator)
    if isinstance(model, EnergyModel) and not unconstrain:
        _check_continuous(model)
    unconstrained = _unconstrain(model) if unconstrain else None
    if unconstrained is not None:
        model = unconstrained.model
        if isinstance(x0, Tensor):
            x0 = unconstrained.to_unconstrained(x0)
    compiled = compile(model)
    default_sampler = None
    if sampler is None:
        sampler, default_sampler = _default_sampler(compiled)
    if x0 is None:
        if n_chains is None:
            raise ArgumentError("sample: give n_chains or x0")
        device = input_options(compiled, device=torch.device("cpu"))["device"]
        _check_generator(generator, device, "the model (so the default x0)")
        x0 = default_x0(compiled, n_chains, generator)
    else:
        validation.instance("sample: x0", x0, Tensor, "a tensor (n_chains, *event_shape)")
        if n_chains is not None and x0.shape[:1] != (n_chains,):
            raise ArgumentError(f"sample: x0 has shape {tuple(x0.shape)}, which disagrees with "
                                f"n_chains={n_chains}")
        if x0.shape[:1] == (0,):
            raise ArgumentError(f"sample: x0 has shape {tuple(x0.shape)}: no chains; it must "
                                "be (n_chains, *event_shape) with n_chains ≥ 1")
        _check_generator(generator, x0.device, "x0")
    shard = chain_shard(x0.shape[0], group)
    if shard is not None:
        shard.check_agreement(generator)
        x0 = shard.take(x0)

    with nullcontext() if shard is None else shard.activate():  # per-chain hyper-parameters
        state = sampler.init(x0, compiled)
    _check_start(state, shard)
    n_total = warmup + n_steps
    n_draws = n_steps // thin
    position = state.position
    draws = torch.empty((n_draws, *position.shape), dtype=position.dtype, device=position.device)
    has_energy = getattr(getattr(state, "potential", None), "has_energy", False)
    # E of each kept draw, for chain_stats["lp"].
    energies = (torch.empty((n_draws, position.shape[0]), dtype=state.energy.dtype,
                            device=position.device) if has_energy else None)
    recorder = _Recorder(position.shape[0], warmup, thin, n_draws, energies, shard,
                         copy_rows=position.numel() > _RETAIN_MAX_NUMEL)
    escape = EscapeWatch(model, position, n_steps=n_total, exact=(
        compiled.normalizer_known and sampler.leaves_target_invariant))
    with nullcontext() if shard is None else shard.activate():  # pools the initial ε
        adaptation = sampler.adaptation(state, warmup) if warmup else None
    # One bar per run, not one per rank.
    show = progress if shard is None or shard.rank == 0 else False
    bar = progress_bar(n_total, show, type(sampler).__name__)
    restore_threads = use_threads(position.numel())  # one thread for small batches
    token = enter_shard(shard)  # random draws and adaptation see the shard
    steady = SteadyRun(compiled).start()  # compiled kernels check most guards once a run
    try:
        for index in range(n_total):
            state, info = sampler.step(state, generator)
            recorder.add(state, info)  # before adaptation: the step size this step used
            escape.update(index, state.position)
            if on_nonfinite == "raise":
                chains = _first_nonfinite(info, shard)
                if chains is not None:
                    phase = "warmup" if index < warmup else "sampling"
                    raise NonFiniteError(
                        f"{type(sampler).__name__} step {index} ({phase}): non-finite energy "
                        f"or score in chain(s) {chains[:10].tolist()}"
                        f"{' …' if len(chains) > 10 else ''}; pass on_nonfinite='reject' to "
                        "reject (or, for unadjusted samplers, freeze) such chains instead"
                    )
            if index < warmup:
                if adaptation is not None:
                    state = adaptation.update(state, info)
                    if index == warmup - 1:
                        state = adaptation.finish(state)
            else:
                after = index - warmup + 1
                if after % thin == 0:
                    draws[after // thin - 1] = state.position
                    if energies is not None:
                        energies[after // thin - 1] = state.energy
            if callback is not None:
                callback(index, state, info)
                steady.check()  # the callback may have changed the model's parameters or buffers
            if bar is not None:
                bar.update(1)
    finally:
        steady.stop()
        leave_shard(token)
        restore_threads()
        if bar is not None:
            bar.close()
    stats, counts, chain_stats = recorder.result()
    unconstrained_draws = None
    if unconstrained is not None:
        unconstrained_draws, draws = draws, unconstrained.to_constrained(draws)
    return Samples(draws, state, sampler, warmup, thin, stats, counts, chain_stats,
                   default_sampler, shard=shard,
                   unconstrained=unconstrained, unconstrained_draws=unconstrained_draws)


def _check_continuous(model: EnergyModel) -> None:
    """Refuse a discrete support; mixed supports are left to the samplers' rejections."""
    try:
        support = model.support
    except CapabilityError:
        return
    check_continuous(support)


def _unconstrain(model: EnergyModel) -> Unconstrained | None:
    """The model on ℝᵏ when its support is constrained (``None`` for ℝ or non-models)."""
    if not isinstance(model, EnergyModel):
        return None  # compile names the wrong type
    return unconstrain(model)


def _default_sampler(model: EnergyModel) -> tuple[Sampler, str]:
    """NUTS with Stan's adaptation for models with energies; others need a choice."""
    from ebmalgebra.samplers.nuts import NUTS

    model.require("energy", "sample with the default sampler (NUTS; pass "
                  "sampler=ULA(step_size=...) for score-only models)")
    return NUTS(), "NUTS (the default for models with energies)"


def _check_start(state: NamedTuple, shard: ChainShard | None) -> None:
    score = getattr(state, "score", None)
    energy = state.energy if state.potential.has_energy else None
    bad = is_nonfinite(energy, score)
    if shard is not None:
        bad = shard.all_gather(bad) if shard.any(bad) else bad[:0]
    if bad.any():
        chains = bad.nonzero().flatten()
        raise NonFiniteError(
            f"sample: the starting point of chain(s) {chains[:10].tolist()} has a non-finite "
            "energy or score; start those chains elsewhere (pass x0)"
        )
