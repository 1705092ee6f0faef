"""Chains sharded across the processes of a ``torch.distributed`` group.

When a process group is initialised (``torchrun`` does it through
``torch.distributed.init_process_group``), :func:`ebmalgebra.sample` splits the
``n_chains`` chains into contiguous blocks of the global chain index, one block
per rank: with N chains over P ranks, rank r runs chains
[r·⌊N/P⌋ + min(r, N mod P), …) — the first N mod P ranks get one extra chain,
as ``torch.tensor_split`` does. Each rank steps only its own block.

**Random numbers.** Every rank draws the noise of *all* N chains from its
generator and keeps its own rows (:meth:`ChainShard.take`). All ranks seed the
same generator, so their generators advance in lockstep with the one of a
single process running all N chains, and each chain sees exactly the numbers it
would see in one process: the draws do not depend on the number of processes
(bit-identical on the same device type, dtype and thread count). The price is
that each rank generates P times the noise it uses, O(N · d) per step per rank
instead of O(N · d / P); benchmarks/scaling.py measures it against a step's
other work. A counter-based stream per chain (Philox keyed by the chain index)
would remove that cost but gives different numbers from torch's generators, so
a single process would no longer reproduce today's draws; the global draw keeps
one process as the reference.

**What is communicated** (see docs/scaling.md): during warmup, one float64
all-reduce per step for the pooled dual-averaging statistic and one all-gather
of the Welford moments at the end of each metric window; with
``on_nonfinite="raise"``, one int64 all-reduce per step; at the end, the
per-step statistics; and for diagnostics or :meth:`Samples.gather`, the draws.

The shard in force during :func:`ebmalgebra.sample` is found with
:func:`active_shard`; the random draws of the samplers and the warmup
adaptation consult it, so kernels themselves know nothing of processes.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ebmalgebra.errors import ArgumentError, CompositionError

__all__ = [
    "ChainShard",
    "DistributedObjective",
    "active_shard",
    "all_chains",
    "any_chain",
    "chain_shard",
    "enter_shard",
    "is_leader",
    "launched_group",
    "leave_shard",
    "process_group",
]

_ACTIVE: ContextVar[ChainShard | None] = ContextVar("ebmalgebra_chain_shard", default=None)


def active_shard() -> ChainShard | None:
    """The chain shard of the :func:`ebmalgebra.sample` call in progress, or ``None``."""
    return _ACTIVE.get()


def any_chain(mask: Tensor) -> bool:
    """Whether any chain is flagged in the bool mask ``(n_chains,)``: over the chains of
    all ranks while a shard is active (a collective), else over ``mask``.

    Kernels whose number of random draws depends on their chains (NUTS doubles its
    trajectories until no chain is growing) stop on this, so that every rank draws
    as many numbers as one process would.
    """
    shard = active_shard()
    return bool(mask.any()) if shard is None else shard.any(mask)


def enter_shard(shard: ChainShard | None) -> Token | None:
    """Make ``shard`` the :func:`active_shard` until :func:`leave_shard` is called with
    the returned token (nothing for ``None``). Prefer :meth:`ChainShard.activate`
    where a ``with`` block fits."""
    return None if shard is None else _ACTIVE.set(shard)


def leave_shard(token: Token | None) -> None:
    """Undo the :func:`enter_shard` that returned ``token``."""
    if token is not None:
        _ACTIVE.reset(token)


def process_group(group: dist.ProcessGroup | None = None) -> dist.ProcessGroup | None:
    """``group`` if given, else the default group when one is initialised with more
    than one process, else ``None`` (run in this process alone)."""
    if group is not None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ArgumentError("group: torch.distributed is not initialised; call "
                                "torch.distributed.init_process_group first (torchrun sets "
                                "up the environment for it)")
        return group
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.group.WORLD if dist.get_world_size() > 1 else None


def is_leader() -> bool:
    """Whether this process writes output: rank 0 of an initialised default group, or
    any process when there is no group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextmanager
def launched_group(backend: str = "gloo") -> Iterator[int]:
    """The default process group of a ``torchrun`` launch, for the ``with`` block.

    When the environment says ``WORLD_SIZE`` > 1 (``torchrun`` sets it, with ``RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``) and no group is initialised yet, initialise
    one with ``backend`` from the environment and destroy it at the end; otherwise do
    nothing. Yields this process's rank (0 when alone).

    Example:
        >>> with launched_group() as rank:   # under torchrun --nproc_per_node=2
        ...     samples = ebmalgebra.sample(model, MALA(), n_chains=10_000)
    """
    starts = (int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
              and not dist.is_initialized())
    if starts:
        dist.init_process_group(backend)
    try:
        yield dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if starts:
            # Every rank done (the leader may still be writing files) before any tears
            # the group down: one rank's teardown while another still works has aborted
            # a gloo process ("terminate called without an active exception").
            dist.barrier()
    finally:
        if starts:
            dist.destroy_process_group()


def chain_shard(n_chains: int, group: dist.ProcessGroup | None = None, *,
                operation: str = "sample") -> ChainShard | None:
    """The shard of ``n_chains`` global chains this rank runs, or ``None`` when not
    distributed (see :func:`process_group`); ``operation`` names the caller in errors."""
    group = process_group(group)
    return None if group is None else ChainShard(n_chains, group, operation=operation)


def all_chains(local: Tensor, shard: ChainShard | None) -> Tensor:
    """The global tensor ``(n_chains, …)`` from this rank's rows ``(n_local, …)``, on
    every rank (:meth:`ChainShard.all_gather`); ``local`` itself when ``shard`` is
    ``None``. A collective when sharded."""
    return local if shard is None else shard.all_gather(local)


class ChainShard:
    """This rank's block ``[start, stop)`` of ``n_chains`` global chains, and the
    collectives over the chains of all ranks.

    Tensors called *local* have this rank's ``n_local`` chains along their chain
    dimension; *global* ones all ``n_chains``. Every method that communicates is a
    collective: all ranks of the group must call it, in the same order.

    Args:
        n_chains: the global number of chains N (at least the group's size).
        group: the process group the chains are spread over.
        operation: the caller named in errors (``"sample"``, ``"SMC"``, …).

    Example (on each of 2 ranks, N = 5):
        >>> shard = ChainShard(5, dist.group.WORLD)
        >>> shard.start, shard.stop      # (0, 3) on rank 0, (3, 5) on rank 1
    """

    def __init__(self, n_chains: int, group: dist.ProcessGroup, *,
                 operation: str = "sample") -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.operation = operation
        if n_chains < self.world_size:
            raise ArgumentError(f"{operation}: n_chains={n_chains} is smaller than the number of "
                                f"processes ({self.world_size}); every rank needs a chain")
        self.n_chains = n_chains
        base, extra = divmod(n_chains, self.world_size)
        self.counts = [base + (r < extra) for r in range(self.world_size)]
        self.start = sum(self.counts[:self.rank])
        self.stop = self.start + self.counts[self.rank]

    @property
    def n_local(self) -> int:
        """Chains on this rank."""
        return self.stop - self.start

    def __repr__(self) -> str:
        return (f"ChainShard(chains {self.start}:{self.stop} of {self.n_chains}, "
                f"rank {self.rank} of {self.world_size})")

    @contextmanager
    def activate(self) -> Iterator[ChainShard]:
        """Make this the :func:`active_shard` inside the ``with`` block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # ------------------------------------------------------------ random draws
    def take(self, full: Tensor, dim: int = 0) -> Tensor:
        """This rank's rows of a global tensor (along ``dim``)."""
        if full.shape[dim] != self.n_chains:
            raise CompositionError(f"expected {self.n_chains} chains along dimension {dim}, "
                                   f"got shape {tuple(full.shape)}")
        return full.narrow(dim, self.start, self.n_local)

    def global_shape(self, local_shape: torch.Size, operation: str) -> tuple[int, ...]:
        """The shape of the global draw whose rows ``local_shape`` keeps.

        Raises:
            CompositionError: if ``local_shape`` does not have one row per local chain
                (a kernel that draws per replica or per particle cannot be sharded).
        """
        if len(local_shape) == 0 or local_shape[0] != self.n_local:
            raise CompositionError(
                f"{operation}: this rank runs {self.n_local} chains, but a random draw of "
                f"shape {tuple(local_shape)} was asked for; only samplers that draw one row "
                "per chain can be sharded across processes"
            )
        return (self.n_chains, *local_shape[1:])

    def check_agreement(self, generator: torch.Generator | None) -> None:
        """Raise on every rank unless all ranks asked for the same number of chains and
        hold generators in the same state (one all-gather of 16 bytes per rank).

        Sharded draws rely on every rank drawing the same global noise: a generator
        seeded with the rank (a common habit) would silently give other chains, and
        an ``x0`` holding only a rank's own chains would split a different total.
        """
        state = (generator if generator is not None else torch.default_generator).get_state()
        facts = torch.tensor([self.n_chains, zlib.crc32(state.numpy().tobytes())],
                             dtype=torch.int64)
        chains, checksums = self.stack_ranks(facts).cpu().T.tolist()
        if len(set(chains)) > 1:
            raise ArgumentError(f"{self.operation}: the ranks ask for different numbers of "
                                f"chains, {chains}; pass the same n_chains, or the same x0 "
                                "holding all chains, on every rank")
        if len(set(checksums)) > 1:
            raise ArgumentError(
                f"{self.operation}: the generator's state differs between ranks; seed it with "
                "the same seed on every rank (chains get distinct numbers from their global "
                "index)"
            )

    # -------------------------------------------------------------- reductions
    def sum(self, values: Tensor) -> Tensor:
        """Sum over all ranks of ``values`` (any shape), in float64 for floats,
        returned in ``values``' dtype and device."""
        total = values.detach().to(torch.float64 if values.is_floating_point() else torch.int64)
        total = self._to_comm(total.clone())
        dist.all_reduce(total, group=self.group)
        return total.to(device=values.device, dtype=values.dtype)

    def mean(self, local: Tensor) -> Tensor:
        """Mean over all global chains of per-chain values ``(n_local,)``: a 0-d
        tensor in ``local``'s dtype, summed in float64."""
        total = local.detach().to(torch.float64).sum().reshape(1)
        return (self.sum(total) / self.n_chains).to(local.dtype).reshape(())

    def any(self, local: Tensor) -> bool:
        """Whether any chain of any rank is flagged in the bool mask ``(n_local,)``."""
        return bool(self.sum(local.sum().reshape(1).to(torch.int64)) > 0)

    def merge_moments(self, count: int, mean: Tensor, m2: Tensor, *, dense: bool,
                      ) -> tuple[int, Tensor, Tensor]:
        """Pool running moments (count n, mean, sum of squared deviations M₂) of all
        ranks into those of the union of their rows (Chan, Golub & LeVeque 1979):

            n = n_a + n_b,  δ = x̄_b − x̄_a,  x̄ = x̄_a + δ n_b / n,
            M₂ = M₂_a + M₂_b + δ δᵀ n_a n_b / n

        (δ² elementwise for a diagonal M₂, ``dense=False``). Ranks are merged in rank
        order, so every rank gets the same result.
        """
        packed = torch.cat([torch.tensor([float(count)], dtype=torch.float64,
                                         device=mean.device),
                            mean.reshape(-1).to(torch.float64), m2.reshape(-1).to(torch.float64)])
        every = self.stack_ranks(packed).to(mean.device)
        total, pooled_mean, pooled_m2 = 0, None, None
        for row in every:
            n = int(row[0])
            rank_mean = row[1:1 + mean.numel()].reshape(mean.shape)
            rank_m2 = row[1 + mean.numel():].reshape(m2.shape)
            if n == 0:
                continue
            if pooled_mean is None:
                total, pooled_mean, pooled_m2 = n, rank_mean, rank_m2
                continue
            delta = rank_mean - pooled_mean
            merged = total + n
            pooled_mean = pooled_mean + delta * (n / merged)
            correction = torch.outer(delta, delta) if dense else delta * delta
            pooled_m2 = pooled_m2 + rank_m2 + correction * (total * n / merged)
            total = merged
        return total, pooled_mean, pooled_m2

    # ---------------------------------------------------------------- gathers
    def stack_ranks(self, local: Tensor) -> Tensor:
        """Stack one equally shaped tensor per rank: ``(world_size, *local.shape)``."""
        local = self._to_comm(local.detach().contiguous())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.group)
        return torch.stack(parts)

    def all_gather(self, local: Tensor, dim: int = 0) -> Tensor:
        """The global tensor from every rank's local block along chain dimension ``dim``,
        on every rank."""
        parts = self._exchange(local, dim, dst=None)
        return self._join(parts, local, dim)

    def gather(self, local: Tensor, dim: int = 0, dst: int = 0) -> Tensor | None:
        """The global tensor on rank ``dst`` of the group (``None`` on the others)."""
        parts = self._exchange(local, dim, dst=dst)
        return None if parts is None else self._join(parts, local, dim)

    def _exchange(self, local: Tensor, dim: int, dst: int | None) -> list[Tensor] | None:
        if local.shape[dim] != self.n_local:
            raise CompositionError(f"expected {self.n_local} local chains along dimension "
                                   f"{dim}, got shape {tuple(local.shape)}")
        # Collectives need equal shapes: pad every block to the largest rank's count.
        rows = local.detach().movedim(dim, 0)
        kind = rows.dtype
        if kind == torch.bool:
            rows = rows.to(torch.uint8)
        padded = rows.new_zeros((max(self.counts), *rows.shape[1:]))
        padded[:self.n_local] = rows
        padded = self._to_comm(padded)
        if dst is None:
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded, group=self.group)
        else:
            if not 0 <= dst < self.world_size:
                raise ArgumentError(f"dst must be a rank of the group, 0 … {self.world_size - 1}; "
                                    f"got {dst}")
            parts = ([torch.empty_like(padded) for _ in range(self.world_size)]
                     if self.rank == dst else None)
            dist.gather(padded, parts, dst=dist.get_global_rank(self.group, dst),
                        group=self.group)
            if parts is None:
                return None
        return [part[:count].to(kind) for part, count in zip(parts, self.counts, strict=True)]

    @staticmethod
    def _join(parts: list[Tensor], local: Tensor, dim: int) -> Tensor:
        return torch.cat(parts).to(local.device).movedim(0, dim)

    def _to_comm(self, tensor: Tensor) -> Tensor:
        """Gloo works on CPU tensors, NCCL on CUDA ones: move to the backend's device."""
        backend = dist.get_backend(self.group)
        device = "cuda" if backend == dist.Backend.NCCL else "cpu"
        if device == "cuda" and tensor.device.type == "cuda":
            return tensor
        return tensor.to(device)


class DistributedObjective(torch.nn.Module):
    """A training loss run under ``DistributedDataParallel``: each rank's
    ``backward()`` leaves the gradient of the loss averaged over all ranks.

    Score-based losses differentiate the energy network inside the loss
    (``torch.autograd.grad`` for the score), which a network wrapped in
    ``DistributedDataParallel`` does not support: DDP takes that inner gradient
    for the backward pass and never averages the parameter gradients. Wrapping
    the *loss* instead makes the loss's backward DDP's backward. Parameters a loss
    does not reach (an energy's additive constant has no score) are found by
    ``find_unused_parameters=True``.

    It is itself a loss of ``(model, batch, **options)``, so it goes wherever one
    does, :func:`ebmalgebra.learning.fit` included. With equal local batches on
    the P ranks, the averaged gradient is that of the loss on the concatenated
    batch, for losses that are means over rows (all of
    :mod:`ebmalgebra.learning`'s). Random numbers in the loss come from each
    rank's own ``generator``. Every rank must take the same number of steps.

    Args:
        model: the model being trained; DDP broadcasts its parameters from rank 0.
        loss: ``loss(model, batch, **options) -> scalar``, e.g.
            :func:`~ebmalgebra.learning.denoising_score_matching`.
        group: the process group (default: the default group).
        **options: keyword options for ``loss`` fixed at construction.

    Example:
        >>> objective = DistributedObjective(model, denoising_score_matching, sigma=0.1)
        >>> objective(model, local_batch, generator=g).backward()  # then optimizer.step()
        >>> fit(model, local_data, objective, generator=g)         # or let fit drive it
    """

    def __init__(self, model: torch.nn.Module, loss: Callable[..., Tensor], *,
                 group: dist.ProcessGroup | None = None, **options: Any) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel

        self.parallel = DistributedDataParallel(_Objective(model, loss, options),
                                                find_unused_parameters=True,
                                                process_group=group)

    def forward(self, model: torch.nn.Module, batch: Tensor, **options: Any) -> Tensor:
        """The loss of ``model`` (the one given at construction) on this rank's
        ``batch``; its backward averages the gradients over ranks."""
        if model is not self.parallel.module.model:
            raise ArgumentError("DistributedObjective: model is not the model this objective "
                                "was built for; build one DistributedObjective per model")
        return self.parallel(batch, **options)


class _Objective(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, loss: Callable[..., Tensor],
                 options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.options = options

    def forward(self, batch: Tensor, **options: Any) -> Tensor:
        return self.loss(self.model, batch, **self.options, **options)
