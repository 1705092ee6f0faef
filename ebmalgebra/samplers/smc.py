"""Sequential Monte Carlo samplers (Del Moral, Doucet & Jasra 2006) along a path of targets.

N weighted particles (x_i, W_i) are carried through targets π_0 → π_1 → … → π_K,
π_k ∝ exp(−E_k). Moving from level k to k + 1 costs three operations:

1. **reweight** with the incremental weight w_i = π̃_{k+1}(x_i)/π̃_k(x_i)
   = exp(E_k(x_i) − E_{k+1}(x_i)): the particles, which targeted π_k, become an
   importance sample of π_{k+1};
2. **resample** when the effective sample size ESS = 1/Σ W_i² falls below
   ``ess_threshold``·N (systematic resampling by default, see
   :mod:`ebmalgebra.samplers.resampling`); weights are then reset to 1/N;
3. **move** every particle by ``n_steps`` Metropolis-Hastings-corrected transitions
   (MALA, HMC, NUTS or any sampler that declares ``leaves_target_invariant``) that
   leave π_{k+1} invariant, with one step size shared by all
   particles and adapted after every step from the mean acceptance rate,
   ε ← ε·exp(ᾱ − α*), so the kernel is invariant at every step and tracks the
   scale of each level.

The product of the weighted mean increments, Ẑ_K/Ẑ_0 = Π_k Σ_i W_i^{(k)} w_i^{(k+1)},
estimates Z_K/Z_0 without bias (for a fixed path) and consistently for the adaptive
tempering segments below; the run starts from a normalised ``base`` with exact
samples, so ``log_z`` is the final target's log Z.

Paths (one :class:`SMC` runs them all):

* **noise levels** of a noise-conditioned expression: π_k ∝ exp(−E(x, t_k)) for
  decreasing t_0 > … > t_K (``noise_levels=``). The targets are the expression at each
  noise level, so the final particles target the composition at t_K whether or not
  the noisy composition equals the noised one (Du et al. 2023);
* **tempering** from ``base`` to the model, π_β = base ** (1 − β) & model ** β built
  with the algebra, each next β the largest that keeps the conditional ESS
  (Zhou, Johansen & Aston 2016) above ``target_cess``, found by bisection;
* **models**: a user-given sequence m_0, …, m_{K−1} before the model (``models=``).

Noise and model paths begin with such a tempering segment from ``base`` to their
first target (one step when the base is already close), unless the first model is
itself normalised with exact samples. Between two consecutive fixed targets a and b
the particles go in one step when the conditional ESS of the increments
E_a − E_b stays above ``target_cess``, and otherwise through adaptive geometric
bridges π_β ∝ exp(−(1 − β) E_a − β E_b) (:class:`BridgePotential`), chosen like the
tempering steps. In high dimension this is what keeps the weights alive: between
noise levels σ and σ/r the increment of a d-dimensional Gaussian-like target has
variance ≈ (d/2)(r² − 1)², 9.5 nats² for d = 256 and r = 1.13 (the zoo faces'
sixty levels), where one reweighting would leave one particle in ~10⁴ with weight.
``path_log_z`` holds log Ẑ at each fixed target.

Standard error of log Ẑ: the genealogy ("Eve") estimator of Chan & Lai (2013). With
E_i the index of particle i's ancestor at level 0 and S_j = Σ_{i : E_i = j} W_i the
final weight descending from initial particle j, Var(Ẑ/Z) ≈ Σ_j (S_j − 1/N)², and by
the delta method stderr(log Ẑ) = √(Σ_j (S_j − 1/N)²). Without resampling it is the
familiar √(1/ESS − 1/N). It fails when few lineages survive (``n_eves`` small).

Across processes (an initialised ``torch.distributed`` group, or ``group=``), rank r
moves the particles of its contiguous block of the global index
(:class:`~ebmalgebra.distributed.ChainShard`), drawing the noise of all N particles
and keeping its rows, so every particle sees the numbers it would in one process.
Every rank holds the full log weights ``(N,)``, the genealogy ``(N,)`` and the step
size: per level it all-gathers the local increments (8N bytes in float64), computes
ESS, CESS bisection, log Ẑ and the ancestor indices identically, and after a
resampling takes its new particles from an all-gather of positions, energies and
scores, N·(2d + 1)·8 bytes in float64 for d coordinates. Each MCMC step all-gathers the
acceptance probabilities (8N bytes) so the adapted step size is that of one
process; HMC with ``adapt_mass`` all-gathers the positions per level (8Nd bytes).
The result holds all particles on every rank: log Ẑ and the particles equal those of
one process with the same seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.distributed import ChainShard, all_chains, chain_shard
from ebmalgebra.errors import ArgumentError, CapabilityError, CompositionError
from ebmalgebra.progress import progress_bar
from ebmalgebra.samplers.base import Potential, Sampler, check_invariant
from ebmalgebra.samplers.mala import MALA
from ebmalgebra.samplers.resampling import RESAMPLING, resample
from ebmalgebra.threads import particle_batch, threaded

__all__ = ["SMC", "BridgePotential", "SMCResult", "conditional_ess", "next_exponent"]

_MAX_TEMPERING_STEPS = 10_000


@dataclass(frozen=True, eq=False)
class SMCResult:
    """What an SMC run returns.

    Attributes:
        particles: final particles ``(N, *event_shape)``, weighted by ``log_weights``.
        log_weights: their normalised log weights ``(N,)`` (logsumexp = 0).
        samples: ``(N, *event_shape)`` equally weighted, by a last resampling of
            ``particles``.
        log_z: log Ẑ of the final target (from the normalised base, see module docs).
        stderr: its standard error by the Chan & Lai (2013) genealogy estimator; ``inf``
            (with a ``RuntimeWarning``) when fewer than max(5, N/100) initial particles
            have descendants at the end.
        ess: ESS 1/Σ W² after each level's reweighting, before resampling ``(L,)``.
        acceptance: mean acceptance rate of the moves at each level ``(L,)``.
        step_size: the adapted step size at the end of each level ``(L,)``.
        resampled: whether each level resampled ``(L,)`` (bool).
        levels: a description of each level, e.g. ``"beta=0.25"``, ``"t=0.5"``.
        temperatures: the tempering segment's schedule β_0 = 0 < … < β_T = 1 ``(T + 1,)``
            (just ``[0]`` when the run starts at the first model).
        eve: each final particle's ancestor among the initial particles ``(N,)``.
        n_evaluations: energy-and-score evaluations per particle over the run.
        path_log_z: log Ẑ_a of each fixed target of the path ``(A,)``: the model at each
            noise level, or each of ``models`` and then ``model`` (just ``model`` on a
            tempering path); ``path_log_z[-1]`` is ``log_z``. Each ratio Ẑ_a/Ẑ_{a−1} is
            the product of the mean incremental weights between the two targets.
        path_stderr: the genealogy standard error of each ``path_log_z`` ``(A,)``, from
            the weights and ancestors at that target (``inf`` where few lineages survive).
    """

    particles: Tensor
    log_weights: Tensor
    samples: Tensor
    log_z: float
    stderr: float
    ess: Tensor
    acceptance: Tensor
    step_size: Tensor
    resampled: Tensor
    levels: tuple[str, ...]
    temperatures: Tensor
    eve: Tensor
    n_evaluations: int
    path_log_z: Tensor
    path_stderr: Tensor

    @property
    def weights(self) -> Tensor:
        """Normalised weights W ``(N,)``."""
        return self.log_weights.exp()

    @property
    def n_eves(self) -> int:
        """Distinct initial ancestors of the final particles (the stderr needs many)."""
        return int(torch.unique(self.eve).numel())

    def expectation(self, fn: Callable[[Tensor], Tensor]) -> tuple[float, float]:
        """E_π[f] ≈ Σ W_i f(x_i) and its standard error by the genealogy estimator,
        √(Σ_j (Σ_{i : E_i = j} W_i (f(x_i) − f̂))²) (Chan & Lai 2013).

        ``fn`` maps particles ``(N, *event_shape)`` to values ``(N,)``.
        """
        values = fn(self.particles).to(self.log_weights)
        if tuple(values.shape) != tuple(self.log_weights.shape):
            raise CompositionError(f"SMCResult.expectation: fn must return one value per "
                                   f"particle, shape {tuple(self.log_weights.shape)}; got "
                                   f"{tuple(values.shape)}")
        weights = self.weights
        mean = (weights * values).sum()
        per_eve = torch.zeros_like(weights).index_add_(0, self.eve, weights * (values - mean))
        return float(mean), float(per_eve.square().sum().sqrt())

    def __repr__(self) -> str:
        return (f"SMCResult(log_z={self.log_z:.6g} ± {self.stderr:.2g}, {len(self.levels)} "
                f"levels, {int(self.resampled.sum())} resamplings, final ess="
                f"{float(self.ess[-1]) if len(self.ess) else math.nan:.0f})")


def conditional_ess(log_w: Tensor, increment: Tensor) -> Tensor:
    """CESS fraction (Σ W u)² / Σ W u² of normalised log weights and log increments
    (Zhou, Johansen & Aston 2016); 1 when the increments are constant."""
    log_u = torch.nan_to_num(increment, nan=-math.inf)
    return torch.exp(2.0 * torch.logsumexp(log_w + log_u, 0)
                     - torch.logsumexp(log_w + 2.0 * log_u, 0))


def next_exponent(log_w: Tensor, gap: Tensor, beta: float, target_cess: float) -> float:
    """The largest β' ∈ (β, 1] whose increments (β' − β)·gap keep CESS ≥ ``target_cess``.

    ``gap`` = E_base − E_model per particle, the log weight per unit of β. The CESS
    falls monotonically in β' − β (Zhou et al. 2016), so bisection finds the step.
    """
    if float(conditional_ess(log_w, (1.0 - beta) * gap)) >= target_cess:
        return 1.0
    low, high = beta, 1.0
    for _ in range(50):
        middle = 0.5 * (low + high)
        if float(conditional_ess(log_w, (middle - beta) * gap)) >= target_cess:
            low = middle
        else:
            high = middle
    return max(low, beta + 1e-9)


def _describe(t: float | None, beta: float | None) -> str:
    parts = [] if beta is None else [f"beta={beta:.4g}"]
    if t is not None:
        parts.append(f"t={t:.4g}")
    return " ".join(parts) or "model"


class SMC:
    """Sequential Monte Carlo sampler: weighted particles along a path of targets.

    See the module docstring for the algorithm and the standard error.

    Args:
        kernel: the move: any sampler that declares ``leaves_target_invariant``
            (``MALA``, ``HMC``, ``NUTS``, ``RandomWalkMH`` or one of your own), re-targeted
            at every level by its :meth:`~ebmalgebra.samplers.Sampler.retarget`. Its
            ``step_size`` is the first level's step and its ``target_accept`` the aim of
            the per-step adaptation. Default MALA starting from 0.1 × the mean variance of
            the initial particles. With ``adapt_mass`` (HMC, NUTS) the diagonal (or dense)
            inverse mass is set at every level to the particles' weighted variance
            (covariance). The kernel's own warmup adaptation is not used: SMC adapts
            between steps instead.
        n_steps: MCMC transitions per level.
        resampling: ``"systematic"``, ``"stratified"``, ``"residual"`` or ``"multinomial"``.
        ess_threshold: resample when ESS < ``ess_threshold``·N (0 never, 1 always).
        target_cess: conditional ESS fraction each tempering step keeps.
        adapt_step_size: adapt ε from the acceptance rate after every step.

    Example:
        >>> result = SMC(n_steps=5).run(a & b, noise_levels=torch.logspace(1, -2, 40),
        ...                             n_particles=1024, generator=generator)
        >>> result.samples, result.log_z, result.stderr
    """

    def __init__(self, *, kernel: Sampler | None = None, n_steps: int = 5,
                 resampling: str = "systematic", ess_threshold: float = 0.5,
                 target_cess: float = 0.9, adapt_step_size: bool = True) -> None:
        if kernel is not None:
            check_invariant(kernel, "SMC", "kernel", "MALA, HMC, NUTS, RandomWalkMH or a "
                            "sampler of your own that declares leaves_target_invariant")
        validation.count("SMC: n_steps", n_steps, 0)
        validation.one_of("SMC: resampling", resampling, RESAMPLING)
        validation.in_interval("SMC: ess_threshold", ess_threshold, closed_low=True,
                               closed_high=True)
        validation.in_interval("SMC: target_cess", target_cess)
        self.kernel = kernel
        self.n_steps = n_steps
        self.resampling = resampling
        self.ess_threshold = float(ess_threshold)
        self.target_cess = float(target_cess)
        self.adapt_step_size = bool(adapt_step_size)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"SMC({fields})"

    @threaded(particle_batch)
    def run(
        self,
        model: EnergyModel,
        *,
        n_particles: int = 1024,
        noise_levels: Sequence[float] | Tensor | None = None,
        models: Sequence[EnergyModel] | None = None,
        base: EnergyModel | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        dtype: torch.dtype | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> SMCResult:
        """Carry ``n_particles`` from ``base`` to ``model`` along the chosen path.

        Args:
            model: the final target (any expression with energies and scores).
            noise_levels: decreasing noise levels t_0 > … > t_K: the path is ``model`` at
                each level (``model`` must be noise-conditioned).
            models: intermediate models m_0, …, m_{K−1} before ``model``.
            base: a normalised model with exact samples where the run starts. Default:
                N(0, t_0² I) on a noise path (the VE prior; ≈ N(0, I) for VP at t_0 = 1);
                ``models[0]`` itself when it is normalised with exact samples; else a
                Gaussian fitted to short MALA runs (:func:`ebmalgebra.normalize.fit_base`,
                vector event shapes).
            n_particles: N.
            generator: the source of all randomness: same generator, same result.
            progress: a progress bar over levels (default: when stderr is a terminal).
            dtype: dtype of the default base (a given ``base`` sets its own); default:
                the model's (:func:`ebmalgebra.normalize.particle_options`: its first
                floating tensor's, float64 for models without tensors).
            group: a ``torch.distributed`` process group to shard the particles over;
                by default the initialised default group, if any (see the module
                docstring). Every rank must call ``run`` with the same arguments and an
                equally seeded ``generator``; every rank gets the whole result.
        """
        validation.count("SMC: n_particles", n_particles, 2)
        validation.generator("SMC: generator", generator)
        if noise_levels is not None and models is not None:
            raise ArgumentError("SMC: give at most one of noise_levels, models")
        anchors = _anchors(model, noise_levels, models)
        first_model, first_t = anchors[0]
        start_at_first = base is None and noise_levels is None and models is not None and (
            first_model.normalizer_known and first_model.can_sample)
        if start_at_first:
            base, anchors = first_model, anchors[1:]
        elif base is None:
            base = _default_base(first_model, first_t, dtype, generator, group)
        base.require("normalizer", "SMC base")
        base.require("sample", "SMC base")
        validation.same_event_shape("SMC: base", base, model)
        shard = chain_shard(n_particles, group, operation="SMC")
        if shard is not None:
            shard.check_agreement(generator)
        run = _Run(self, base, n_particles, generator, shard)
        if shard is not None and shard.rank != 0:
            progress = False
        bar = progress_bar(len(anchors), progress, "SMC", unit="level")
        try:
            if start_at_first:
                run.mark_anchor()
            else:
                run.temper(base, first_model, first_t)
                run.mark_anchor()
                anchors = anchors[1:]
                if bar is not None:
                    bar.update(1)
            for anchor_model, t in anchors:
                run.advance_to(Potential(anchor_model, operation="SMC", t=t), _describe(t, None))
                run.mark_anchor()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return run.result()


def _anchors(model: EnergyModel, noise_levels: Sequence[float] | Tensor | None,
             models: Sequence[EnergyModel] | None) -> list[tuple[EnergyModel, float | None]]:
    """The fixed targets of the path as (model, noise level) pairs."""
    validation.instance("SMC: model", model, EnergyModel, "an EnergyModel")
    if noise_levels is not None:
        levels = validation.decreasing("SMC: noise_levels", noise_levels, allow_zero=True)
        if not any(getattr(leaf, "noise_conditioned", False) for leaf in model.leaves()):
            raise CompositionError(f"SMC: noise_levels were given but no part of {model!r} is "
                                   "noise-conditioned")
        return [(model, t) for t in levels]
    if models is not None:
        for index, intermediate in enumerate(models):
            validation.instance(f"SMC: models[{index}]", intermediate, EnergyModel,
                                "an EnergyModel")
            if intermediate.event_shape is not None:  # shape-free models fit any shape
                validation.same_event_shape(f"SMC: models[{index}]", intermediate, model)
        return [(m, None) for m in (*models, model)]
    return [(model, None)]


def _default_base(model: EnergyModel, t: float | None, dtype: torch.dtype | None,
                  generator: torch.Generator | None,
                  group: dist.ProcessGroup | None) -> EnergyModel:
    from ebmalgebra.normalize import fit_base, particle_options
    from ebmalgebra.targets import Gaussian

    if t is not None:
        shape = model.event_shape
        if shape is None:
            raise CompositionError(f"SMC: {model!r} has no fixed event_shape; pass base=")
        options = particle_options(model)
        if dtype is not None:
            options["dtype"] = dtype
        return Gaussian(torch.zeros(shape, **options), max(t, 1e-3), name="base")

    return fit_base(model, generator=generator, dtype=dtype, group=group)


class BridgePotential(Potential):
    """The geometric bridge between two levels: (1 − β) E_start + β E_end, and the same mix
    of scores; what SMC moves under between two targets that are too far apart for one
    reweighting (two noise levels of one model, or two models)."""

    __slots__ = ("start", "end", "fraction")

    def __init__(self, start: Potential, end: Potential, fraction: float) -> None:
        self.start, self.end, self.fraction = start, end, fraction
        self.model, self.t, self.beta, self.has_energy = end.model, end.t, None, True

    def energy(self, x: Tensor) -> Tensor:
        return (1.0 - self.fraction) * self.start.energy(x) + self.fraction * self.end.energy(x)

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        start_energy, start_score = self.start.energy_and_score(x)
        end_energy, end_score = self.end.energy_and_score(x)
        fraction = self.fraction
        return ((1.0 - fraction) * start_energy + fraction * end_energy,
                (1.0 - fraction) * start_score + fraction * end_score)

    def __repr__(self) -> str:
        return f"BridgePotential({self.start!r} -> {self.end!r}, beta={self.fraction:.4g})"


class _Run:
    """The particle system of one SMC run and its records.

    With a ``shard``, ``state`` holds this rank's particles ``(n_local, …)`` while
    ``log_w``, ``eve`` and the step size are global and equal on every rank.
    """

    def __init__(self, smc: SMC, base: EnergyModel, n_particles: int,
                 generator: torch.Generator | None, shard: ChainShard | None) -> None:
        self.smc = smc
        self.generator = generator
        self.n = n_particles
        self.shard = shard
        self.n_local = n_particles if shard is None else shard.n_local
        x = base.sample(n_particles, generator)  # all N on every rank: the same numbers
        if not x.is_floating_point():
            raise CompositionError(f"SMC: base {base!r} samples {x.dtype}, not floating point")
        if smc.kernel is None:
            scale = x.reshape(n_particles, -1).var(0).mean().clamp_min(1e-12)
            self.kernel: Sampler = MALA(step_size=float(0.1 * scale), adapt_step_size=False)
        else:
            self.kernel = smc.kernel
        self.state = self.kernel.init(x if shard is None else shard.take(x), base)
        # One step size for all particles, adapted between steps, where the kernel has one.
        self.step_size = (self.state.step_size[:1].clone()
                          if "step_size" in self.state._fields else None)
        # float64 whatever the particles' dtype: float32 log weights of energies in the
        # hundreds normalise only to ~1e-5, which the resampling check rejects.
        self.log_w = torch.full((n_particles,), -math.log(n_particles), dtype=torch.float64,
                                device=x.device)
        self.log_z = float(base.log_z())
        self.eve = torch.arange(n_particles, device=x.device)
        self.records: dict[str, list] = {k: [] for k in ("ess", "acceptance", "step_size",
                                                         "resampled", "levels")}
        self.temperatures = [0.0]
        self.n_evaluations = 1
        self.anchors: dict[str, list[float]] = {"log_z": [], "stderr": []}

    # --------------------------------------------------------------- levels
    def temper(self, base: EnergyModel, model: EnergyModel, t: float | None) -> None:
        """Adaptive tempering from ``base`` (where the particles are) to ``model`` at ``t``."""
        betas = self.bridge(Potential(base, operation="SMC base"),
                            Potential(model, operation="SMC", t=t), lambda beta: _describe(t, beta))
        self.temperatures.extend(betas)

    def advance_to(self, potential: Potential, description: str) -> None:
        """From the current level to ``potential``'s: one reweight, resample and move when
        that keeps the CESS ≥ ``target_cess``, else through adaptive bridges."""
        self.bridge(self.state.potential, potential,
                    lambda beta: description if beta == 1.0 else f"{description} beta={beta:.4g}")

    def bridge(self, start: Potential, end: Potential, describe: Callable[[float], str],
               ) -> list[float]:
        """Carry the particles from ``start``'s target (where they are) to ``end``'s along
        π_β ∝ exp(−(1 − β) E_start − β E_end), each next β the largest that keeps the
        conditional ESS ≥ ``target_cess`` (:func:`next_exponent`); returns the β's.

        The increment per unit of β is E_start − E_end at the particles, so the bisection
        costs no evaluations; each bridge step evaluates start and end once. At β = 0
        E_start is the state's own energy, so a level that needs no bridge costs one
        evaluation of ``end``, as a plain reweighting would.
        """
        betas: list[float] = []
        # At β = 0 the particles sit at start's level: its energy is the state's own.
        beta, start_energy, start_score = 0.0, self.state.energy, None
        while beta < 1.0:
            if len(betas) >= _MAX_TEMPERING_STEPS:
                raise CapabilityError(f"SMC: bridging to {end.model!r} needs more than "
                                      f"{_MAX_TEMPERING_STEPS} steps; give a closer base= or "
                                      "closer levels")
            x = self.state.position
            if start_energy is None:
                start_energy, start_score = start.energy_and_score(x)
                self.n_evaluations += 1
            end_energy, end_score = end.energy_and_score(x)
            gap = all_chains(start_energy - end_energy, self.shard)
            new_beta = next_exponent(self.log_w, gap, beta, self.smc.target_cess)
            if new_beta == 1.0:
                target, energy, score = end, end_energy, end_score
            else:
                if start_score is None:
                    start_energy, start_score = start.energy_and_score(x)
                    self.n_evaluations += 1
                target = BridgePotential(start, end, new_beta)
                energy = (1.0 - new_beta) * start_energy + new_beta * end_energy
                score = (1.0 - new_beta) * start_score + new_beta * end_score
            self._step(target, (new_beta - beta) * gap, energy, score, describe(new_beta))
            beta, start_energy = new_beta, None
            betas.append(beta)
        return betas

    def mark_anchor(self) -> None:
        """Record log Ẑ and its genealogy stderr at a fixed target of the path."""
        self.anchors["log_z"].append(self.log_z)
        self.anchors["stderr"].append(self._stderr())

    # ---------------------------------------------------------------- steps
    def _step(self, potential: Potential, increment: Tensor, energy: Tensor, score: Tensor,
              description: str) -> None:
        """Reweight by the global log ``increment`` ``(N,)``, resample, move; ``energy`` and
        ``score`` are the new level's at this rank's particles."""
        self.n_evaluations += 1
        increment = torch.nan_to_num(increment.to(self.log_w), nan=-math.inf)
        unnormalised = self.log_w + increment
        log_mean = torch.logsumexp(unnormalised, 0)
        if not torch.isfinite(log_mean):
            raise CapabilityError(f"SMC: every particle has zero or non-finite weight at level "
                                  f"{description} ({potential.model!r}); use a closer base, "
                                  "more levels or a higher target_cess")
        self.log_z += float(log_mean)
        self.log_w = unnormalised - log_mean
        ess = float(torch.exp(-torch.logsumexp(2.0 * self.log_w, 0)))
        x = self.state.position
        resampled = ess < self.smc.ess_threshold * self.n
        if resampled:
            ancestors = resample(self.log_w.exp(), self.generator, method=self.smc.resampling)
            x, energy, score = self._inherit(ancestors, x, energy, score)
            self.eve = self.eve[ancestors]
            self.log_w = torch.full_like(self.log_w, -math.log(self.n))
        self.state = self._retarget(x, energy, score, potential)
        acceptance = self._move()
        for key, value in (("ess", ess), ("acceptance", acceptance),
                           ("step_size", math.nan if self.step_size is None
                            else float(self.step_size[0])), ("resampled", resampled),
                           ("levels", description)):
            self.records[key].append(value)

    def _inherit(self, ancestors: Tensor, *local: Tensor) -> list[Tensor]:
        """This rank's rows of each particle tensor after resampling: row i of the new
        system is row ``ancestors[i]`` of the old, which may live on another rank. All
        ranks all-gather the old rows, then keep their block of the new ones."""
        if self.shard is None:
            return [values[ancestors] for values in local]
        mine = ancestors[self.shard.start:self.shard.stop]
        return [self.shard.all_gather(values)[mine] for values in local]

    def _retarget(self, x: Tensor, energy: Tensor, score: Tensor, potential: Potential):
        """The kernel's state at the new level (:meth:`Sampler.retarget`), with the shared
        step size and, under ``adapt_mass``, the particles' weighted spread as M⁻¹."""
        state = self.kernel.retarget(self.state, potential, x, energy, score)
        changes = {}
        if self.step_size is not None:
            changes["step_size"] = self.step_size.expand(self.n_local).clone()
        if getattr(self.kernel, "adapt_mass", False) and "metric" in state._fields:
            inverse_mass = _weighted_spread(all_chains(x, self.shard), self.log_w.exp(),
                                            state.metric.dense)
            changes["metric"] = state.metric.replace(inverse_mass)
        return state._replace(**changes)

    def _move(self) -> float:
        """``n_steps`` transitions at the current level; returns the mean acceptance."""
        rates = []
        target = getattr(self.kernel, "target_accept", None)
        adapt = self.smc.adapt_step_size and self.step_size is not None and target is not None
        for _ in range(self.smc.n_steps):
            with nullcontext() if self.shard is None else self.shard.activate():
                self.state, info = self.kernel.step(self.state, self.generator)
            # Leapfrog steps per chain (HMC: a number, NUTS: one per chain), else one.
            self.n_evaluations += float(torch.as_tensor(getattr(info, "n_leapfrog", 1),
                                                        dtype=torch.float64).mean())
            # The mean of all N rates, in one process's order of summation.
            rate = all_chains(info.acceptance_rate, self.shard).mean()
            rates.append(rate)
            if adapt:
                self.step_size = self.step_size * torch.exp(rate - target)
                self.state = self.state._replace(
                    step_size=self.step_size.expand(self.n_local).clone())
        return float(torch.stack(rates).mean()) if rates else math.nan

    # --------------------------------------------------------------- result
    def _stderr(self) -> float:
        """The Chan & Lai genealogy stderr of the current log Ẑ: √(Σ_j (S_j − 1/N)²);
        ``inf`` when fewer than max(5, N/100) initial particles have descendants (the
        estimator averages over surviving lineages, and with a handful it is
        meaningless: with one it is ≈ 1 nat whatever the error)."""
        if int(torch.unique(self.eve).numel()) < min(self.n, max(5, self.n // 100)):
            return math.inf
        per_eve = torch.zeros_like(self.log_w).index_add_(0, self.eve, self.log_w.exp())
        return math.sqrt(float((per_eve - 1.0 / self.n).square().sum()))

    def result(self) -> SMCResult:
        weights = self.log_w.exp()
        stderr = self._stderr()
        n_eves = int(torch.unique(self.eve).numel())
        if not math.isfinite(stderr):
            warnings.warn(f"SMC: only {n_eves} of {self.n} initial particles have descendants "
                          "at the end, so the weights degenerated along the path and log_z "
                          "and expectations are unreliable (stderr inf); use more particles, "
                          "more levels, more n_steps or a closer base", RuntimeWarning,
                          stacklevel=4)  # here, SMC.run, its @threaded wrapper, the caller
        final = resample(weights, self.generator, method=self.smc.resampling)
        particles = all_chains(self.state.position, self.shard)
        records = {key: torch.tensor(values, dtype=torch.bool if key == "resampled" else
                                     torch.float64)
                   for key, values in self.records.items() if key != "levels"}
        return SMCResult(
            particles=particles,
            log_weights=self.log_w,
            samples=particles[final],
            log_z=self.log_z,
            stderr=stderr,
            ess=records["ess"],
            acceptance=records["acceptance"],
            step_size=records["step_size"],
            resampled=records["resampled"],
            levels=tuple(self.records["levels"]),
            temperatures=torch.tensor(self.temperatures, dtype=torch.float64),
            eve=self.eve,
            n_evaluations=round(self.n_evaluations),
            path_log_z=torch.tensor(self.anchors["log_z"], dtype=torch.float64),
            path_stderr=torch.tensor(self.anchors["stderr"], dtype=torch.float64),
        )


def _weighted_spread(x: Tensor, weights: Tensor, dense: bool) -> Tensor:
    """Weighted variance (event-shaped) or covariance ``(d, d)`` of the particles, with a
    small ridge so that a collapsed coordinate still gives a valid metric."""
    flat = x.reshape(x.shape[0], -1)
    centred = flat - (weights[:, None] * flat).sum(0)
    if dense:
        covariance = (weights[:, None] * centred).T @ centred
        ridge = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
        return covariance + ridge * torch.eye(flat.shape[1], dtype=x.dtype, device=x.device)
    variance = (weights[:, None] * centred.square()).sum(0)
    return (variance + 1e-6 * variance.mean().clamp_min(1e-12)).reshape(x.shape[1:])
