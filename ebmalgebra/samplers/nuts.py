"""The No-U-Turn sampler (NUTS) with multinomial trajectory sampling, batched over chains.

Each step draws a momentum p ~ N(0, M) and grows a trajectory of leapfrog steps
from (x, p) by doubling: at depth j it picks a direction uniformly (forwards,
or backwards with step −ε) and integrates a new subtree of 2ʲ steps from the end
of the trajectory in that direction (Hoffman & Gelman 2014). The doubling stops
when the trajectory makes a U-turn, a subtree diverges, or the tree reaches
``max_depth``.

**Generalised U-turn criterion** (Betancourt 2017, §A.4.2, as Stan ≥ 2.26 and
BlackJAX implement it). A span of points with momenta p_a … p_b and momentum sum
ρ = Σ p keeps going while

    (M⁻¹ p_a) · ρ > 0   and   (M⁻¹ p_b) · ρ > 0.

It is checked for every subtree of 2ᵏ steps (k ≥ 1) as it completes, and for the
whole trajectory after each merge, each time also on the two spans that straddle
the join of the halves: the left half plus the first point of the right half, and
the last point of the left half plus the right half. Those extra checks catch
U-turns that happen exactly between two halves, which the whole-span check misses
on targets like a Gaussian with a short length scale.

**Multinomial sampling.** A point z of the trajectory has weight
w(z) = exp(H₀ − H(z)), H(x, p) = E(x) + ½ pᵀ M⁻¹ p. Within a subtree the
candidate is drawn in proportion to w (progressively: each new point replaces the
candidate with probability w / Σ w so far); when a valid subtree is merged into the
trajectory its candidate replaces the current one with probability
min(1, W_subtree / W_trajectory), the *biased progressive sampling* that favours
the far end (Betancourt 2017, §A.3.2). A subtree that diverges (H − H₀ > 1000, or
a non-finite energy or score) or makes an internal U-turn is discarded whole.

**Statistics.** The acceptance statistic used by warmup is the mean Metropolis
ratio min(1, exp(H₀ − H(z))) over every point integrated in the step, including
those of a discarded subtree (Stan's ``accept_stat__``).

**Batching.** All chains run in one tensor, each with its own tree: directions
and random choices are per chain, and masks record which chains are still
growing. A leapfrog step evaluates the score only at the rows still integrating
(the others are finished), so each chain costs one ``energy_and_score`` row per
leapfrog step of its own tree, and the step as a whole costs max over chains of
n_leapfrog batched calls. With ``jit=True`` the leaves run in compiled blocks over
all rows, the finished chains' results unused: the first three doublings
(subtrees of 1, 2 and 4 leaves) are one kernel, directions, leaves, U-turn checks
and merges (a doubling after every chain has stopped changes nothing); deeper
subtrees run as blocks of 4 leaves with the U-turn checks inside a block
compiled, the longer spans' checks and the merge eager. When the chains still
growing at a deep doubling are few (at most 16 of 64 chains or more, 64 of 256
or more, …), its blocks run on their rows only, gathered into a compact batch,
and one more kernel merges the compact subtree into those rows of the
trajectory, so that the late leaves of uneven trees do not pay for the finished
chains. The random numbers are drawn outside the kernels in the eager order,
for every chain: a kernel's are drawn at once, and the generator is set back to
where the eager loop would have stopped drawing when every chain stops inside
the kernel's leaves, so a seed gives the same trees as with ``jit=False`` up to
float rounding.

Shapes: positions ``(n_chains, *event_shape)``; per-chain info ``(n_chains,)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.distributed import active_shard, any_chain
from ebmalgebra.jit import call_compiled
from ebmalgebra.samplers.base import (
    Potential,
    StepSizeSampler,
    as_chain_values,
    draw_normal,
    draw_uniform,
    expand_to_event,
    select,
    squared_norm,
    sum_event,
)
from ebmalgebra.samplers.integrators import PhasePoint, leapfrog
from ebmalgebra.samplers.metrics import Metric, given_inverse_mass, metric_class

__all__ = ["NUTS", "NUTSInfo", "NUTSState"]

_BLOCK_LEVELS = 2
"""``jit=True`` integrates blocks of up to 2^_BLOCK_LEVELS leaves per kernel call."""


class NUTSState(NamedTuple):
    """NUTS state.

    Attributes:
        position: ``(n_chains, *event_shape)``.
        energy: E(position), ``(n_chains,)``.
        score: s(position) = −∇E, like ``position`` (the first leapfrog step reuses it).
        step_size: ε per chain, ``(n_chains,)``.
        metric: the :class:`~ebmalgebra.samplers.metrics.Metric` (M⁻¹ and the factor of M).
        potential: the compiled model (see :class:`~ebmalgebra.samplers.Potential`).
    """

    position: Tensor
    energy: Tensor
    score: Tensor
    step_size: Tensor
    metric: Metric
    potential: Potential


class NUTSInfo(NamedTuple):
    """Per-step facts, one value per chain.

    Attributes:
        acceptance_rate: mean of min(1, exp(H₀ − H)) over the points integrated.
        energy: the Hamiltonian H = E(x) + ½ pᵀ M⁻¹ p at the selected point (Stan's
            ``energy__``, for energy plots).
        energy_error: H at the selected point minus H₀ at the start.
        divergent: a subtree's energy error exceeded ``max_energy_error``, or was NaN.
        nonfinite: a point of the trajectory had a NaN/inf energy or score (discarded).
        tree_depth: the number of subtrees merged (the trajectory has 2^depth points).
        n_leapfrog: the leapfrog steps, i.e. score evaluations, this chain took.
    """

    acceptance_rate: Tensor
    energy: Tensor
    energy_error: Tensor
    divergent: Tensor
    nonfinite: Tensor
    tree_depth: Tensor
    n_leapfrog: Tensor


class _Candidate(NamedTuple):
    """A selected point: position, energy, score and Hamiltonian."""

    position: Tensor
    energy: Tensor
    score: Tensor
    hamiltonian: Tensor


class _End(NamedTuple):
    """The momentum p and velocity M⁻¹p at one end of a span of the trajectory."""

    momentum: Tensor
    velocity: Tensor


class _Leaves(NamedTuple):
    """What a subtree has gathered from its leaves so far, per chain."""

    log_weight: Tensor     # log Σ w over the leaves
    candidate: _Candidate
    running_sum: Tensor    # ρ, the momentum sum
    n_leapfrog: Tensor
    sum_accept: Tensor
    divergent: Tensor
    nonfinite: Tensor


class _Trajectory(NamedTuple):
    """A step's trajectory so far, per chain, and its statistics."""

    left: PhasePoint       # the backward end
    right: PhasePoint      # the forward end
    candidate: _Candidate
    log_weight: Tensor     # log Σ w over the trajectory
    momentum_sum: Tensor   # ρ over the trajectory
    growing: Tensor        # still doubling
    depth: Tensor
    n_leapfrog: Tensor
    sum_accept: Tensor
    divergent: Tensor
    nonfinite: Tensor


class _Block(NamedTuple):
    """What one kernel call of ``jit=True`` returns: a block of 2^b leaves of every chain."""

    point: PhasePoint      # the last point integrated
    leaves: _Leaves        # the subtree's leaves so far, this block's included
    first: _End            # the block's first point
    last: _End             # its last point
    valid: Tensor          # still growing: no U-turn or divergence up to here
    alive: Tensor          # see _block_update (a bool once read by NUTS._block)


class _Subtree(NamedTuple):
    """A subtree of 2ʲ leapfrog steps grown from one end of the trajectory."""

    end: PhasePoint        # the last point integrated (the new end of the trajectory)
    first: _End            # the point next to the old trajectory
    last: _End             # the last point, as an end
    leaves: _Leaves        # its momentum sum, Σ w, candidate and statistics
    valid: Tensor          # grown in full without U-turn or divergence


def merged_no_u_turn(outer_a: _End, inner_a: _End, sum_a: Tensor, inner_b: _End,
                     outer_b: _End, sum_b: Tensor) -> Tensor:
    """Whether two adjacent spans a and b, joined, keep going, per chain ``(n,)``.

    Each span is given by its outer and inner ends (the inner ends touch) and its
    momentum sum ρ. A span with ends u, w keeps going while (M⁻¹p_u)·ρ > 0 and
    (M⁻¹p_w)·ρ > 0; checked on the joined span, on a plus b's inner point and on b
    plus a's inner point (Stan's checks across merged subtrees): six products, as one
    batched product eagerly (:func:`_turn_products_stacked`), product by product inside
    a compiled kernel (:func:`_turn_products_each`).
    """
    whole = sum_a + sum_b
    a_extended = sum_a + inner_b.momentum
    b_extended = sum_b + inner_a.momentum
    pairs = ((outer_a.velocity, whole), (outer_b.velocity, whole),
             (outer_a.velocity, a_extended), (inner_b.velocity, a_extended),
             (inner_a.velocity, b_extended), (outer_b.velocity, b_extended))
    if torch.compiler.is_compiling():
        return _turn_products_each(pairs)
    return _turn_products_stacked(pairs)


def _turn_products_stacked(pairs: tuple[tuple[Tensor, Tensor], ...]) -> Tensor:
    """Whether every product v · ρ of ``pairs`` (each ``(n, *event_shape)``) is positive,
    per row ``(n,)``, as one batched product over the stacked pairs: the fewest ops
    eagerly."""
    velocities = torch.stack([velocity for velocity, _ in pairs])
    sums = torch.stack([running_sum for _, running_sum in pairs])
    n_rows = velocities.shape[1]
    return ((velocities * sums).reshape(len(pairs), n_rows, -1).sum(-1) > 0).all(0)


def _turn_products_each(pairs: tuple[tuple[Tensor, Tensor], ...]) -> Tensor:
    """:func:`_turn_products_stacked` pair by pair. Compiled, each product is a loop
    over the rows; the stacked form would have inductor write both stacks ``(6n, d)``
    to memory first (on eight schools at 100 chains that cost ~30 µs of the first
    doublings' ~210 µs kernel; docs/performance.md)."""
    keeps = None
    for velocity, running_sum in pairs:
        keep = (_flat(velocity) * _flat(running_sum)).sum(-1) > 0
        keeps = keep if keeps is None else keeps & keep
    return keeps


def _merge(path: _Trajectory, subtree: _Subtree, forward: Tensor, uniform: Tensor,
           metric: Metric) -> _Trajectory:
    """``path`` with the new ``subtree`` (grown ``forward`` or backwards) merged in where
    both are valid, then checked for a U-turn across the join.

    Biased progressive sampling: the subtree's candidate replaces the trajectory's
    with probability min(1, W_subtree / W_trajectory) (``uniform`` ~ U(0, 1) per
    chain). The statistics count every leaf integrated, merged or not.
    """
    grown, growing, left, right = subtree.leaves, path.growing, path.left, path.right
    merge = growing & subtree.valid
    take = merge & (uniform < (grown.log_weight - path.log_weight).exp())
    forward_rows = expand_to_event(forward, right.momentum)
    near = torch.where(forward_rows, right.momentum, left.momentum)
    far = torch.where(forward_rows, left.momentum, right.momentum)
    keeps_going = merged_no_u_turn(
        _End(far, metric.velocity(far)), _End(near, metric.velocity(near)),
        path.momentum_sum, subtree.first, subtree.last, grown.running_sum)
    return _Trajectory(
        _where_point(merge & ~forward, subtree.end, left),
        _where_point(merge & forward, subtree.end, right),
        _where_point(take, grown.candidate, path.candidate),
        torch.where(merge, torch.logaddexp(path.log_weight, grown.log_weight), path.log_weight),
        select(merge, path.momentum_sum + grown.running_sum, path.momentum_sum),
        merge & keeps_going,
        path.depth + merge.long(),
        path.n_leapfrog + grown.n_leapfrog,
        path.sum_accept + grown.sum_accept,
        path.divergent | grown.divergent,
        path.nonfinite | grown.nonfinite)


def _start_path(start: PhasePoint, start_h: Tensor) -> _Trajectory:
    """The trajectory of one point, ``start`` (Hamiltonian ``start_h``), before any doubling."""
    zeros = torch.zeros_like(start_h, dtype=torch.long)
    no_chains = torch.zeros_like(start_h, dtype=torch.bool)
    return _Trajectory(start, start, _Candidate(start.position, start.energy, start.score,
                                                start_h),
                       torch.zeros_like(start_h), start.momentum, ~no_chains, zeros, zeros,
                       torch.zeros_like(start_h), no_chains, no_chains)


def _no_leaves(begin: PhasePoint, start_h: Tensor) -> _Leaves:
    """The leaves of a subtree before its first: Σ w = 0, the candidate ``begin``.

    Every field is a tensor of its own, aliasing neither another field nor ``begin``
    or ``start_h``: compiled kernels guard on which of their inputs alias, and the
    later blocks of a subtree get unaliased leaves, so an alias here would compile
    each block kernel twice.
    """
    def no_chains() -> Tensor:
        return torch.zeros_like(start_h, dtype=torch.bool)

    return _Leaves(torch.full_like(start_h, -math.inf),
                   _Candidate(begin.position.clone(), begin.energy.clone(), begin.score.clone(),
                              start_h.clone()),
                   torch.zeros_like(begin.momentum), torch.zeros_like(start_h, dtype=torch.long),
                   torch.zeros_like(start_h), no_chains(), no_chains())


def _where_point(mask: Tensor, new: NamedTuple, old: NamedTuple) -> NamedTuple:
    """Row-wise ``new`` where ``mask`` else ``old``, field by field."""
    return type(old)(*(select(mask, a, b) if a.dim() > 1 else torch.where(mask, a, b)
                       for a, b in zip(new, old, strict=True)))


class NUTS(StepSizeSampler):
    """The No-U-Turn sampler: HMC whose path length adapts to the target, step by step.

    See the module docstring for the algorithm. Needs energies: score-only models
    raise :class:`~ebmalgebra.CapabilityError`. Warmup (``ebmalgebra.sample(...,
    warmup=n)``) tunes ε by dual averaging of the acceptance statistic towards
    ``target_accept`` and M⁻¹ by Stan's windowed scheme, both pooled over chains
    (:func:`~ebmalgebra.samplers.adaptation.window_adaptation`).

    Args:
        step_size: initial ε, a float or one value per chain ``(n_chains,)``.
        max_depth: the largest tree depth: at most 2^max_depth − 1 leapfrog steps per
            step (Stan's 10).
        metric: ``"diag"`` or ``"dense"`` (or a :class:`~ebmalgebra.samplers.metrics.Metric`
            subclass).
        inverse_mass: the initial M⁻¹ (default identity), shaped ``event_shape``
            (diag) or ``(d, d)`` (dense).
        target_accept: δ for step-size adaptation (Stan's 0.8).
        adapt_step_size: tune ε in warmup.
        adapt_mass: tune M⁻¹ in warmup.
        max_energy_error: energy error H − H₀ beyond which a subtree is divergent.
        jit: compile blocks of up to four leaves (leapfrog steps, energy and score,
            weights, candidate selection, statistics, the U-turn checks inside the
            block; the first three doublings, with their merges into the
            trajectory, are one kernel) with ``torch.compile`` (CPU; with chains
            sharded across processes or on other devices, one leaf per kernel); the
            random numbers are drawn outside in the eager order, so a seed gives the
            same chain as ``jit=False`` up to float rounding. The finished chains'
            rows are stepped too (static shapes), unused, except in deep doublings
            where at most a quarter of the chains (16 of 64 or more, …) still grow:
            those run on a compact batch of 16, 64, 256, … rows, two more kernels
            per size (its blocks and its merge). The first steps pay a one-off
            compile of two to four kernels, tens of seconds cold (seconds from
            inductor's on-disk cache); see :mod:`ebmalgebra.jit`.

    Example:
        >>> samples = ebmalgebra.sample(model, NUTS(), n_chains=4, n_steps=1000, warmup=1000)
        >>> samples.stats["tree_depth"]  # mean tree depth over chains, per step
    """

    name = "NUTS"
    leaves_target_invariant = True
    tempering_step_exponent = 0.5
    adaptation_flags = ("adapt_step_size", "adapt_mass")

    def __init__(
        self,
        *,
        step_size: float | Tensor = 0.1,
        max_depth: int = 10,
        metric: str | type[Metric] = "diag",
        inverse_mass: Tensor | None = None,
        target_accept: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass: bool = True,
        max_energy_error: float = 1000.0,
        jit: bool = False,
    ) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept,
                         adapt_step_size=adapt_step_size, jit=jit)
        validation.count("NUTS: max_depth", max_depth)
        self.max_depth = max_depth
        self.metric = metric
        self._metric_class = metric_class(metric, self.name)
        self.inverse_mass = given_inverse_mass(inverse_mass, self.name)
        self.adapt_mass = adapt_mass
        validation.positive("NUTS: max_energy_error", max_energy_error)
        self.max_energy_error = float(max_energy_error)

    # ------------------------------------------------------------------ init
    def init(self, x0: Tensor, model: EnergyModel) -> NUTSState:
        potential = Potential(model, operation=self.name, needs_energy=self.needs_energy)
        potential.check(x0, self.name)
        position = x0.detach()
        energy, score = potential.energy_and_score(position)
        step_size = as_chain_values(self.step_size, position, f"{self.name}: step_size")
        metric = self._metric_class.starting(self.inverse_mass, position, self.name)
        return NUTSState(position, energy, score, step_size, metric, potential)

    # ------------------------------------------------------------------ step
    def step(self, state: NUTSState, generator: torch.Generator | None = None,
             ) -> tuple[NUTSState, NUTSInfo]:
        x, metric = state.position, state.metric
        noise = draw_normal(x, generator)
        momentum = metric.momentum_from_noise(noise)
        # With p = F ξ the kinetic energy ½ pᵀ M⁻¹ p is ½ ‖ξ‖² exactly. Eager with
        # jit=True too: inside a kernel the sum of squares rounds unlike jit=False's.
        start_h = state.energy + 0.5 * squared_norm(noise)
        start = PhasePoint(x, momentum, state.energy, state.score)
        first, growing, stats = 0, True, None
        if self._blocks(x):
            first = min(self.max_depth, _BLOCK_LEVELS + 1)
            path, stats, growing = self._first_doublings(start, first, start_h, state,
                                                         generator)
        else:
            path = _start_path(start, start_h)
        for tree_depth in range(first, self.max_depth):
            if not growing:
                break
            forward = draw_uniform(x, generator) < 0.5
            signed_step = torch.where(forward, state.step_size, -state.step_size)
            begin = _where_point(forward, path.right, path.left)
            subtree, rows = self._grow(begin, signed_step, tree_depth, path.growing,
                                       start_h, state, generator)
            uniform = draw_uniform(x, generator)
            if rows is None:
                path = _merge(path, subtree, forward, uniform, metric)
                growing = any_chain(path.growing)  # over all ranks' chains when sharded
            else:  # a compact batch's subtree: merged into its rows in one kernel call
                path, grows = call_compiled(_merge_rows, state.potential.model, path,
                                            subtree, forward, uniform, metric, rows.index)
                growing = bool(grows)  # blocks, so no shard (see _blocks)
            stats = None  # the first doublings' are not the step's
        if stats is None:
            stats = _step_stats(path, start_h)
        candidate = path.candidate
        new_state = state._replace(position=candidate.position, energy=candidate.energy,
                                   score=candidate.score)
        info = NUTSInfo(stats[0], candidate.hamiltonian, stats[1], path.divergent,
                        path.nonfinite, path.depth, path.n_leapfrog)
        return new_state, info

    def _first_doublings(self, start: PhasePoint, n_doublings: int, start_h: Tensor,
                         state: NUTSState, generator: torch.Generator | None,
                         ) -> tuple[_Trajectory, tuple[Tensor, Tensor], bool]:
        """The trajectory from ``start`` after the first ``n_doublings`` doublings of
        ``jit=True`` (subtrees of 1, 2, …, 2^(n_doublings − 1) leaves, each one block),
        in one kernel call (:func:`_first_doublings_update`), the step's statistics
        should it end there (:func:`_step_stats`), and whether any chain still grows.

        Their uniforms, per doubling the direction's, the leaves' and the merge's, are one
        ``(Σ_j (2^j + 2), n_chains)`` draw (:class:`_UniformRows`). The eager loop stops
        drawing where every chain has stopped: after the first doubling that leaves no
        chain growing, and inside it after the last leaf that began with a chain growing
        (then drawing the merge's next). Only those rows are kept: since no chain merges
        such a subtree, and no later doubling runs, the numbers that moved do not matter.
        """
        sizes = [2**depth + 2 for depth in range(n_doublings)]
        uniform = _UniformRows(sum(sizes), start_h, generator)
        path, stats, status = call_compiled(
            _first_doublings_update, state.potential.model, start, state.step_size,
            uniform.rows, state.metric, state.potential, start_h, self.max_energy_error)
        drawn = 0
        for size, (started, growing) in zip(sizes, status.tolist(), strict=True):
            drawn += 2 + min(started, size - 2)
            if not growing:
                break
        if drawn < uniform.shape[0]:
            uniform.keep(drawn)
        return path, stats, bool(growing)

    def _grow(self, begin: PhasePoint, signed_step: Tensor, tree_depth: int,
              growing: Tensor, start_h: Tensor, state: NUTSState,
              generator: torch.Generator | None) -> tuple[_Subtree, _Rows | None]:
        """Integrate a subtree of 2^tree_depth steps from ``begin`` for the ``growing`` chains.

        U-turns inside the subtree are checked without storing its points (see
        :func:`_close_spans`). Eagerly the leaves come one by one; with ``jit=True``
        in blocks of 2^b (:func:`_block_update`, b = min(tree_depth, ``_BLOCK_LEVELS``)),
        each one kernel call that also checks the spans inside the block, so only
        the spans of more than 2^b leaves are checked here, block by block. When the
        growing chains are few (:func:`_compact_rows`), the blocks run on their rows
        only: the subtree is then that of the compact batch, returned with its
        rows (for :func:`_merge_rows`); else ``None`` with every chain's subtree.
        """
        metric, potential = state.metric, state.potential
        levels = min(tree_depth, _BLOCK_LEVELS) if self._blocks(start_h) else 0
        rows = _compact_rows(growing, start_h) if levels else None
        if rows is None:
            return self._subtree(begin, signed_step, tree_depth, levels, growing, start_h,
                                 metric, potential, generator, None), None
        index = rows.index
        return self._subtree(_take(begin, index), signed_step.index_select(0, index),
                             tree_depth, levels, rows.valid, start_h.index_select(0, index),
                             metric, _rows_of(potential, index), generator, rows), rows

    def _subtree(self, begin: PhasePoint, signed_step: Tensor, tree_depth: int, levels: int,
                 valid: Tensor, start_h: Tensor, metric: Metric, potential: Potential,
                 generator: torch.Generator | None, rows: _Rows | None) -> _Subtree:
        """:meth:`_grow`'s loop over the units of 2^``levels`` leaves, on every chain, or
        on the compact batch ``rows`` (whose uniforms are drawn for every chain)."""
        point, leaves = begin, _no_leaves(begin, start_h)
        previous = _End(begin.momentum, metric.velocity(begin.momentum))
        starts: list[tuple[_End, Tensor, _End]] = [None] * (tree_depth - levels + 1)
        alive = True  # some chain grows: NUTS.step would not have called this otherwise
        for unit in range(2 ** (tree_depth - levels)):
            if not levels:  # over all ranks' chains when sharded: all draw as many numbers
                alive = any_chain(valid)
            if not alive:
                break
            sum_before = leaves.running_sum
            if self.jit:
                block = self._block(point, signed_step, leaves, valid, start_h, previous,
                                    metric, potential, 2 ** levels, generator, rows)
                point, leaves, first, last, valid = block[:5]
            else:
                # Drawn before the leaf's update (which draws nothing).
                uniform = draw_uniform(start_h, generator)
                point = _leapfrog_rows(point, signed_step, metric, potential, valid)
                leaves, last, diverged = _account_leaf(point, metric, leaves, valid, start_h,
                                                       uniform, self.max_energy_error)
                first, valid = last, valid & ~diverged
            valid = _close_spans(starts, unit, first, sum_before, previous, last,
                                 leaves.running_sum, valid)
            if levels:
                alive = block.alive
            previous = last
        return _Subtree(point, starts[-1][0], last, leaves, valid)

    def _blocks(self, like: Tensor) -> bool:
        """Whether ``jit=True`` integrates blocks of leaves per kernel call: on the CPU
        (where a block's uniforms are one draw, taken back in part when the block
        ends early) and with the chains in one process."""
        return self.jit and like.device.type == "cpu" and active_shard() is None

    def _block(self, point: PhasePoint, signed_step: Tensor, leaves: _Leaves, valid: Tensor,
               start_h: Tensor, previous: _End, metric: Metric, potential: Potential,
               n_leaves: int, generator: torch.Generator | None, rows: _Rows | None) -> _Block:
        """``n_leaves`` leaves of every chain (or of the compact batch ``rows``) in one
        kernel call, with their uniforms.

        The uniforms of all the block's leaves are drawn before the call, as one
        ``(n_leaves, n_chains)`` draw (:class:`_UniformRows`) over every chain, of
        which a compact batch takes its chains' columns. When no chain is left
        growing before the block's last leaf, the eager loop would have stopped
        drawing there, so only the rows of the leaves that ran are kept: both paths
        leave the generator as the eager leaf-by-leaf loop does.
        """
        model = potential.model
        if n_leaves == 1:
            return call_compiled(_block_update, model, point, signed_step, metric, potential,
                                 leaves, valid, start_h, draw_uniform(start_h, generator)[None],
                                 previous, self.max_energy_error)
        if rows is None:
            uniform = _UniformRows(n_leaves, start_h, generator)
            columns = uniform.rows
        else:
            uniform = _UniformRows(n_leaves, rows.like, generator)
            columns = uniform.rows.index_select(1, rows.index)
        block = call_compiled(_block_update, model, point, signed_step, metric, potential,
                              leaves, valid, start_h, columns, previous,
                              self.max_energy_error)
        started = int(block.alive)
        if started < n_leaves:
            uniform.keep(started)
        return block._replace(alive=started > n_leaves)


class _Rows(NamedTuple):
    """The growing chains of a deep doubling of ``jit=True``, as a compact batch.

    ``index`` ``(size,)`` holds their rows in the full batch, in order, padded to one
    of a few sizes (:data:`_COMPACT_SIZES`) with the rows of chains not growing, also
    in order, so that a few static-shape kernels serve every count and each row
    appears once; ``valid`` ``(size,)`` is False on the padding, whose results go
    unused; ``like`` is a float ``(n_chains,)`` tensor of the full batch, whose
    length and dtype every chain's uniforms are drawn with.
    """

    index: Tensor
    valid: Tensor
    like: Tensor


_COMPACT_SIZES = (16, 64, 256, 1024, 4096)
"""The sizes of compact batches: up to 16 rows a block kernel costs little more than
its fixed overhead (on the volatility series, 1.3x that of one row against 3.6x at
100 rows; docs/performance.md), and each size is one more kernel to compile, so the
sizes grow fourfold."""


def _compact_rows(growing: Tensor, like: Tensor) -> _Rows | None:
    """The ``growing`` chains ``(n_chains,)`` as a compact batch, when the smallest
    size of :data:`_COMPACT_SIZES` that holds them is at most a quarter of the batch
    (else ``None``: the kernels then run on every row, which costs less than
    gathering). ``like`` is a float ``(n_chains,)`` tensor (see :class:`_Rows`)."""
    n_chains = growing.shape[0]
    count = int(growing.sum())
    size = next((size for size in _COMPACT_SIZES if size >= count), None)
    if size is None or 4 * size > n_chains:
        return None
    # The growing rows first, then the others (a stable sort keeps each in order).
    index = growing.sort(descending=True, stable=True).indices[:size]
    return _Rows(index, growing.index_select(0, index), like)


def _take(fields: NamedTuple | Tensor, index: Tensor) -> NamedTuple | Tensor:
    """The rows ``index`` of every tensor of ``fields``, through nested named tuples."""
    if isinstance(fields, Tensor):
        return fields.index_select(0, index)
    return type(fields)(*(_take(field, index) for field in fields))


def _put(old: NamedTuple | Tensor, index: Tensor, new: NamedTuple | Tensor
         ) -> NamedTuple | Tensor:
    """``old`` with its rows ``index`` replaced by the rows of ``new``, tensor by tensor
    through nested named tuples; the inverse of :func:`_take`."""
    if isinstance(old, Tensor):
        return old.index_copy(0, index, new)
    return type(old)(*(_put(a, index, b) for a, b in zip(old, new, strict=True)))


class _UniformRows:
    """``n_rows`` uniforms per chain drawn at once on the CPU, ``rows`` ``(n_rows, n_chains)``:
    the same numbers as ``n_rows`` draws of one per chain in turn (the CPU generator fills
    a tensor in order). :meth:`keep` takes back all but the first rows, so that the
    generator stands as if only those had been drawn, as the eager loop leaves it."""

    def __init__(self, n_rows: int, like: Tensor, generator: torch.Generator | None) -> None:
        self.generator = torch.default_generator if generator is None else generator
        self.saved = self.generator.get_state()
        self.shape, self.dtype = (n_rows, like.shape[0]), like.dtype
        self.rows = torch.rand(self.shape, generator=self.generator, dtype=self.dtype)

    def keep(self, n_rows: int) -> None:
        """Leave the generator as if only the first ``n_rows`` rows had been drawn."""
        self.generator.set_state(self.saved)
        torch.rand((n_rows, self.shape[1]), generator=self.generator, dtype=self.dtype)


def _block_update(point: PhasePoint, signed_step: Tensor, metric: Metric, potential: Potential,
                  leaves: _Leaves, valid: Tensor, start_h: Tensor, uniform: Tensor,
                  previous: _End, max_energy_error: float) -> _Block:
    """2^b leaves of every chain: leapfrog steps with :func:`_account_leaf`, and the
    U-turn checks of the spans inside the block (:func:`_close_spans`).

    ``uniform`` ``(2^b, n_chains)`` holds each leaf's uniforms and ``previous`` the
    end before the block. The unit that ``jit=True`` compiles, one kernel per b and
    batch size (static shapes: the chains not growing are stepped too, their results
    unused; see :class:`_Rows` for the compact batches of deep doublings).
    ``alive`` counts the leaves that began with some chain growing, plus one if one
    still grows after the block (validity only ever drops, so this is where the
    eager loop would have stopped).
    """
    n_leaves = uniform.shape[0]
    starts: list[tuple[_End, Tensor, _End]] = [None] * (n_leaves.bit_length())
    alive = valid.any().long()
    for leaf in range(n_leaves):
        sum_before = leaves.running_sum
        point = leapfrog(point, signed_step, metric, potential.energy_and_score)
        leaves, last, diverged = _account_leaf(point, metric, leaves, valid, start_h,
                                               uniform[leaf], max_energy_error)
        if leaf == 0:
            first = last
        valid = _close_spans(starts, leaf, last, sum_before, previous, last,
                             leaves.running_sum, valid & ~diverged)
        alive = alive + valid.any()
        previous = last
    return _Block(point, leaves, first, last, valid, alive)


def _merge_rows(path: _Trajectory, subtree: _Subtree, forward: Tensor, uniform: Tensor,
                metric: Metric, index: Tensor) -> tuple[_Trajectory, Tensor]:
    """:func:`_merge` of the subtree of a compact batch (:class:`_Rows`) into the rows
    ``index`` ``(size,)`` of ``path``, ``forward`` and ``uniform`` ``(n_chains,)``: the unit
    that ``jit=True`` compiles for a compact deep doubling's merge, one kernel per
    batch size. The other chains do not grow, so merging would leave their rows as
    they are: those outside ``index`` are not touched, and the padding's, stepped as
    not growing, come back unchanged (each row appears once in ``index``). Returns the
    merged path and whether any of its chains still grows, ``()``.
    """
    merged = _merge(_take(path, index), subtree, forward.index_select(0, index),
                    uniform.index_select(0, index), metric)
    path = _put(path, index, merged)
    return path, path.growing.any()


def _doubling_update(path: _Trajectory, forward: Tensor, step_size: Tensor, uniform: Tensor,
                     metric: Metric, potential: Potential, start_h: Tensor,
                     max_energy_error: float) -> tuple[_Trajectory, Tensor]:
    """A doubling whose subtree is one block: its 2^b leaves (:func:`_block_update`,
    uniforms ``uniform[:-1]``) from the end of ``path`` in the direction ``forward``,
    merged (:func:`_merge`, uniform ``uniform[-1]``); ``jit=True`` compiles the first
    doublings together (:func:`_first_doublings_update`). Returns the new trajectory
    and ``(2,)``: the block's ``alive`` count and whether any chain still grows.
    """
    signed_step = torch.where(forward, step_size, -step_size)
    begin = _where_point(forward, path.right, path.left)
    block = _block_update(begin, signed_step, metric, potential, _no_leaves(begin, start_h),
                          path.growing, start_h, uniform[:-1],
                          _End(begin.momentum, metric.velocity(begin.momentum)),
                          max_energy_error)
    subtree = _Subtree(block.point, block.first, block.last, block.leaves, block.valid)
    path = _merge(path, subtree, forward, uniform[-1], metric)
    return path, torch.stack([block.alive, path.growing.any().long()])


def _first_doublings_update(start: PhasePoint, step_size: Tensor, uniform: Tensor,
                            metric: Metric, potential: Potential, start_h: Tensor,
                            max_energy_error: float,
                            ) -> tuple[_Trajectory, tuple[Tensor, Tensor], Tensor]:
    """The first doublings of a step from ``start`` (:func:`_start_path`), each
    :func:`_doubling_update` (subtrees of 1, 2, 4, … leaves): the unit that ``jit=True``
    compiles for them. ``uniform`` holds per doubling of 2^j leaves 2^j + 2 rows, the
    direction's (forwards where < ½), the leaves' and the merge's,
    ``(Σ_j (2^j + 2), n_chains)``. A doubling after the trajectories have all stopped
    changes nothing: no chain grows, so none merges, and every statistic adds zero.
    Returns the trajectory, the step's statistics should it end there
    (:func:`_step_stats`: a division and a difference, which round as eagerly) and,
    per doubling, its status ``(n_doublings, 2)``.
    """
    path, status, row, n_leaves = _start_path(start, start_h), [], 0, 1
    while row < uniform.shape[0]:
        rows = uniform[row:row + n_leaves + 2]
        path, doubling = _doubling_update(path, rows[0] < 0.5, step_size, rows[1:], metric,
                                          potential, start_h, max_energy_error)
        status.append(doubling)
        row, n_leaves = row + n_leaves + 2, 2 * n_leaves
    return path, _step_stats(path, start_h), torch.stack(status)


def _step_stats(path: _Trajectory, start_h: Tensor) -> tuple[Tensor, Tensor]:
    """A finished trajectory's acceptance statistic (the mean of min(1, w) over its
    leapfrog steps) and energy error H − H₀ at the selected point, ``(n_chains,)`` each."""
    sum_accept = path.sum_accept
    return (sum_accept / path.n_leapfrog.to(sum_accept.dtype),
            path.candidate.hamiltonian - start_h)


def _close_spans(starts: list, unit: int, first: _End, sum_before: Tensor, previous: _End,
                 last: _End, running_sum: Tensor, valid: Tensor) -> Tensor:
    """Record ``unit`` (a leaf, or an aligned block of 2^b leaves) where spans begin, and
    check the spans that it completes; ``valid`` and-ed with their checks, ``(n,)``.

    ``starts[k]`` holds, for the current span of 2ᵏ units (k = 0 … len − 1), its
    first end, the momentum sum ρ before it and the end just before it; a unit at
    index i begins the spans with i divisible by 2ᵏ. The unit's first and last ends
    are ``first`` and ``last``, ``sum_before`` is ρ before it and ``running_sum``
    after it. When i + 1 is divisible by 2ᵏ (k ≥ 1), the span of 2ᵏ units ends here:
    its halves [first … before_middle] and [middle … last] are checked with
    :func:`merged_no_u_turn`.
    """
    for k in range(len(starts)):
        if unit % 2**k:
            break
        starts[k] = (first, sum_before, previous)
    for k in range(1, len(starts)):
        if (unit + 1) % 2**k:
            break
        span_first, sum_before_span, _ = starts[k]
        middle, sum_before_middle, before_middle = starts[k - 1]
        valid = valid & merged_no_u_turn(
            span_first, before_middle, sum_before_middle - sum_before_span,
            middle, last, running_sum - sum_before_middle)
    return valid


def _account_leaf(point: PhasePoint, metric: Metric, leaves: _Leaves, valid: Tensor,
                  start_h: Tensor, uniform: Tensor, max_energy_error: float,
                  ) -> tuple[_Leaves, _End, Tensor]:
    """Add the new leaf ``point`` of the ``valid`` chains to ``leaves``.

    Its weight is w = exp(H₀ − H) (0 for a non-finite point and for the other
    chains), it replaces the candidate with probability w / Σ w (``uniform`` ~ U(0, 1)
    per chain) and adds min(1, w) to the acceptance sum. Returns the new leaves, the
    leaf as an end (p, M⁻¹p) and whether it diverged, each ``(n_chains, …)``.
    """
    velocity = metric.velocity(point.momentum)
    hamiltonian = torch.add(point.energy, torch.linalg.vecdot(
        _flat(point.momentum), _flat(velocity)), alpha=0.5)
    energy_error = hamiltonian - start_h
    # One check for energy, kinetic energy and score: NaN/inf propagate to the sum.
    check = energy_error + sum_event(point.score)
    finite = (check - check) == 0  # fewer ops than isfinite
    counted = valid & finite
    # −∞ for the other chains: their Σ w stays as it was (logaddexp(a, −∞) = a exactly),
    # and neither u < 0 nor a NaN comparison takes their point.
    leaf_weight = torch.where(counted, -energy_error, -math.inf)
    log_weight = torch.logaddexp(leaves.log_weight, leaf_weight)
    take = uniform < (leaf_weight - log_weight).exp()
    candidate = _where_point(take, _Candidate(point.position, point.energy, point.score,
                                              hamiltonian), leaves.candidate)
    # NaN errors (∞ − ∞) count as divergent too.
    diverged = valid & ~(energy_error <= max_energy_error)
    new_leaves = _Leaves(
        log_weight, candidate,
        select(valid, leaves.running_sum + point.momentum, leaves.running_sum),
        leaves.n_leapfrog + valid,
        leaves.sum_accept + leaf_weight.clamp(max=0.0).exp(),
        leaves.divergent | diverged,
        leaves.nonfinite | (valid ^ counted))  # valid and not finite
    return new_leaves, _End(point.momentum, velocity), diverged


def _flat(x: Tensor) -> Tensor:
    return x if x.dim() == 2 else x.reshape(x.shape[0], -1)


def _leapfrog_rows(point: PhasePoint, signed_step: Tensor, metric: Metric,
                   potential: Potential, rows: Tensor) -> PhasePoint:
    """One leapfrog step of the chains in ``rows`` (``(n,)`` bool).

    When they are at most half of the chains only they are evaluated (the others
    stay put), so finished chains cost no score evaluations; otherwise every row is
    stepped, which is cheaper than gathering, and the other rows' results are unused.
    """
    n_rows = int(rows.sum())
    if n_rows == 0:  # a rank whose chains have all finished while others' grow
        return point
    if 2 * n_rows > rows.shape[0]:
        return leapfrog(point, signed_step, metric, potential.energy_and_score)
    index = rows.nonzero().squeeze(1)
    moved = leapfrog(_take(point, index), signed_step.index_select(0, index), metric,
                     _rows_of(potential, index).energy_and_score)
    return _put(point, index, moved)


def _rows_of(potential: Potential, index: Tensor) -> Potential:
    """The potential of the chains ``index``: per-chain noise levels ``t`` and exponents
    ``beta`` (parallel tempering's replicas) are selected with them."""
    changes = {name: value.index_select(0, index) for name in ("t", "beta")
               if isinstance(value := getattr(potential, name), Tensor) and value.dim() > 0}
    return potential.replace(**changes) if changes else potential
