"""Parallel tempering (replica exchange) over ``model ** beta_k``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, ArgumentTypeError
from ebmalgebra.samplers.adaptation import (
    DualAveraging,
    StepSizeAdaptation,
    long_enough_to_adapt,
)
from ebmalgebra.samplers.base import (
    Potential,
    Sampler,
    as_chain_values,
    expand_to_event,
)
from ebmalgebra.samplers.mala import MALA

__all__ = ["ParallelTempering", "TemperingInfo", "TemperingState"]


class TemperingState(NamedTuple):
    """Parallel-tempering state.

    Attributes:
        replicas: the inner sampler's state over all replicas, ``K · n_chains`` rows,
            replica-major (rows ``k·n … (k+1)·n − 1`` are replica k at β_k); its
            energy and score are those of ``model ** β_k``.
        betas: inverse temperatures ``(K,)``, β₀ = 1 > β₁ > … > 0.
        iteration: steps taken (even and odd steps swap different pairs).
        potential: the compiled target (β = 1).
    """

    replicas: NamedTuple
    betas: Tensor
    iteration: int
    potential: Potential

    @property
    def n_chains(self) -> int:
        return self.replicas.position.shape[0] // self.betas.shape[0]

    @property
    def position(self) -> Tensor:
        """Positions of the β = 1 replica, ``(n_chains, *event_shape)``: the draws."""
        return self.replicas.position[: self.n_chains]

    @property
    def energy(self) -> Tensor:
        """Energies of the β = 1 replica, ``(n_chains,)``."""
        return self.replicas.energy[: self.n_chains]

    @property
    def score(self) -> Tensor | None:
        """Scores of the β = 1 replica (``None`` for a random-walk inner sampler)."""
        score = getattr(self.replicas, "score", None)
        return None if score is None else score[: self.n_chains]

    @property
    def step_size(self) -> Tensor:
        """Step sizes of the β = 1 replica, ``(n_chains,)``."""
        return self.replicas.step_size[: self.n_chains]


class TemperingInfo(NamedTuple):
    """Per-step facts.

    Attributes:
        acceptance_rate: the β = 1 replica's move acceptance probability, per chain.
        nonfinite: a non-finite proposal in any replica of the chain (rejected).
        swap_acceptance: ``(K − 1,)`` swap acceptance probability between replicas
            k and k + 1, averaged over chains (computed for every pair, though each
            step attempts only the even or only the odd pairs).
        replica_acceptance: ``(K,)`` mean move acceptance probability per replica.
        inner: the inner sampler's info over all ``K · n_chains`` rows.
        divergent: the β = 1 replica's divergent transitions per chain, when the inner
            sampler reports divergences (HMC, NUTS), so that ``n_divergent`` and
            ``summary()`` see them; else ``None``.

    ``per_step_fields`` names the tensors that are not per chain, so that
    :func:`ebmalgebra.sample` records them whole even when ``n_chains`` equals K − 1
    or K.
    """

    acceptance_rate: Tensor
    nonfinite: Tensor
    swap_acceptance: Tensor
    replica_acceptance: Tensor
    inner: NamedTuple
    divergent: Tensor | None = None

    per_step_fields = ("swap_acceptance", "replica_acceptance")


class ParallelTempering(Sampler):
    """Parallel tempering: K replicas at p̃^{β_k}, exchanged between neighbours.

    Replica k runs the inner kernel (MALA by default) on ``model ** β_k`` with
    β₀ = 1 > β₁ > … > β_{K−1} > 0; hot replicas (small β) cross energy barriers
    and pass their positions down by swaps. A swap of replicas k and k + 1 of a
    chain is accepted with probability min(1, r),

        log r = (β_k − β_{k+1}) (E(x_k) − E(x_{k+1})),

    which keeps the product of the tempered densities invariant, so the β = 1
    replica samples the target exactly. Swaps alternate deterministically
    between the even pairs (0,1), (2,3), … and the odd pairs (1,2), (3,4), …
    (non-reversible "DEO" scheme, Syed et al. 2022), and reuse the cached
    energies and scores (rescaled by β_k/β_{k+1}), so they cost no evaluation.
    All replicas of all chains are one batch of ``K · n_chains`` rows: one model
    evaluation per step. ``state.position`` is the β = 1 replica.

    Step sizes are per replica: the inner sampler's step size ε becomes
    ε / β_k^a with a the inner sampler's declared ``tempering_step_exponent``: 1 for
    Langevin kernels (the variance of p̃^β grows like 1/β) and ½ for random-walk and
    HMC kernels; with ``adapt_step_size``
    warmup tunes each replica's step size by dual averaging (pooled over chains).

    Args:
        betas: inverse temperatures, starting at 1 and strictly decreasing; a
            geometric ladder down to the β where barriers are about one nat high is
            a good start.
        sampler: the move kernel at each temperature, any sampler that leaves its
            target invariant and declares ``tempering_step_exponent`` (``MALA``,
            ``RandomWalkMH``, ``HMC``, ...); default ``MALA(step_size=0.1)``. Its own
            warmup adaptation is replaced by per-replica step-size adaptation.
        adapt_step_size: tune per-replica step sizes in warmup.

    Example:
        >>> pt = ParallelTempering(betas=torch.logspace(0, -2, 8).tolist())
        >>> samples = ebmalgebra.sample(two_modes, pt, n_chains=100, n_steps=2000, warmup=500)
        >>> samples.stats["swap_acceptance"].mean(0)   # per neighbour pair
    """

    name = "ParallelTempering"
    not_invariant_because = (
        "a step moves its β = 1 chains together with the tempered replicas held in its "
        "state, and leaves the product of the K tempered targets invariant, not the target "
        "on its chains alone")

    def __init__(self, *, betas: Sequence[float] | Tensor, sampler: Sampler | None = None,
                 adapt_step_size: bool = True) -> None:
        values = [float(b) for b in torch.as_tensor(betas, dtype=torch.float64).reshape(-1)]
        if len(values) < 2 or values[0] != 1.0:
            raise ArgumentError(f"{self.name}: betas must start at 1 and have at least two "
                                f"entries, got {values}")
        validation.decreasing(f"{self.name}: betas", values)
        sampler = MALA(step_size=0.1) if sampler is None else sampler
        if not (isinstance(sampler, Sampler) and sampler.leaves_target_invariant
                and sampler.tempering_step_exponent is not None):
            raise ArgumentTypeError(
                f"{self.name}: the inner sampler must leave its target invariant and declare "
                "its tempering_step_exponent (e.g. MALA, RandomWalkMH or HMC), got "
                f"{type(sampler).__name__}")
        self.betas = tuple(values)
        self.sampler = sampler
        self.adapt_step_size = adapt_step_size

    def init(self, x0: Tensor, model: EnergyModel) -> TemperingState:
        inner = self.sampler
        n_chains, n_replicas = x0.shape[0], len(self.betas)
        base_step = as_chain_values(inner.step_size, x0, f"{self.name}: step_size")
        if isinstance(inner.step_size, Tensor) and inner.step_size.dim() > 0:
            # Per-chain step sizes: the inner sampler starts the K·n replica rows.
            inner = copy.copy(inner)
            inner.step_size = base_step.repeat(n_replicas)
        replicas = inner.init(x0.repeat(n_replicas, *([1] * (x0.dim() - 1))), model)
        cold = replicas.potential
        betas = torch.tensor(self.betas, dtype=x0.dtype, device=x0.device)
        row_betas = betas.repeat_interleave(n_chains)
        power = inner.tempering_step_exponent
        changes = {
            "potential": cold.replace(beta=row_betas),
            "energy": replicas.energy * row_betas,
            "step_size": base_step.repeat(n_replicas) / row_betas**power,
        }
        if hasattr(replicas, "score"):
            changes["score"] = replicas.score * expand_to_event(row_betas, replicas.score)
        return TemperingState(replicas._replace(**changes), betas, 0, cold)

    def step(self, state: TemperingState, generator: torch.Generator | None = None,
             ) -> tuple[TemperingState, TemperingInfo]:
        replicas, info = self.sampler.step(state.replicas, generator)
        replicas, swap_probability = self._swap(replicas, state.betas, state.iteration,
                                                generator)
        n_replicas = state.betas.shape[0]
        acceptance = info.acceptance_rate.reshape(n_replicas, -1)
        nonfinite = info.nonfinite.reshape(n_replicas, -1).any(0)
        new_state = TemperingState(replicas, state.betas, state.iteration + 1, state.potential)
        divergent = getattr(info, "divergent", None)
        if divergent is not None:
            divergent = divergent.reshape(n_replicas, -1)[0]
        return new_state, TemperingInfo(acceptance[0], nonfinite, swap_probability,
                                        acceptance.mean(1), info, divergent)

    def _swap(self, replicas: NamedTuple, betas: Tensor, iteration: int,
              generator: torch.Generator | None) -> tuple[NamedTuple, Tensor]:
        """Even/odd neighbour swaps on cached (tempered) energies and scores."""
        n_replicas = betas.shape[0]
        position = replicas.position
        n_chains = position.shape[0] // n_replicas
        column = betas[:, None]
        base_energy = replicas.energy.reshape(n_replicas, n_chains) / column
        log_ratio = (betas[:-1, None] - betas[1:, None]) * (base_energy[:-1] - base_energy[1:])
        probability = torch.nan_to_num(log_ratio.clamp(max=0.0).exp(), nan=0.0)
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype,
                             device=log_ratio.device)
        active = (torch.arange(n_replicas - 1, device=betas.device) % 2 == iteration % 2)
        swap = (uniform < probability) & active[:, None]
        # Replica k takes its new point from k + 1 if pair (k, k+1) swaps, from k − 1 if
        # pair (k−1, k) does; active pairs are disjoint, so this is a permutation.
        offset = torch.zeros((n_replicas, n_chains), dtype=torch.long, device=betas.device)
        offset[:-1] += swap.long()
        offset[1:] -= swap.long()
        source = torch.arange(n_replicas, device=betas.device)[:, None] + offset
        rows = (source * n_chains + torch.arange(n_chains, device=betas.device)).reshape(-1)
        source_beta = betas[source].reshape(-1)
        row_beta = column.expand(n_replicas, n_chains).reshape(-1)
        ratio = row_beta / source_beta
        changes = {"position": position[rows], "energy": replicas.energy[rows] * ratio}
        score = getattr(replicas, "score", None)
        if score is not None:
            changes["score"] = score[rows] * expand_to_event(ratio, score)
        return replicas._replace(**changes), probability.mean(1)

    def adaptation(self, state: TemperingState, n_warmup: int) -> _ReplicaAdaptation | None:
        """Per-replica dual averaging, or ``None`` without ``adapt_step_size`` or with
        fewer than ``MIN_ADAPTATION_STEPS`` warmup steps (which warns)."""
        if not self.adapt_step_size or not long_enough_to_adapt(n_warmup, self.name):
            return None
        return _ReplicaAdaptation(state, self.sampler.target_accept)


class _ReplicaAdaptation:
    """Dual averaging of one step size per replica, pooled over its chains."""

    def __init__(self, state: TemperingState, target_accept: float) -> None:
        self.inner = StepSizeAdaptation(state.replicas, DualAveraging(target_accept),
                                        n_groups=state.betas.shape[0])

    def update(self, state: TemperingState, info: TemperingInfo) -> TemperingState:
        return state._replace(replicas=self.inner.update(state.replicas, info.inner))

    def finish(self, state: TemperingState) -> TemperingState:
        return state._replace(replicas=self.inner.finish(state.replicas))
