"""Normalising constants: exact where closed forms exist, annealed importance sampling otherwise.

``estimate_log_z`` runs annealed importance sampling (AIS, Neal 2001) along
the geometric path written with the algebra itself,

    π_β = base ** (1 − β) & model ** β,   0 = β_0 < β_1 < … < β_K = 1,

from a normalised ``base`` with exact samples. Particle i carries the log
weight Σ_k (β_k − β_{k−1}) (E_base(x_i) − E_model(x_i)) accumulated before
each move, and moves by MCMC transitions that leave π_{β_k} invariant
(Metropolis–Hastings-corrected kernels: MALA, random-walk MH, HMC). Then
Ẑ = mean_i exp(log w_i) is unbiased for Z (so E[log Ẑ] ≤ log Z: AIS gives a
stochastic lower bound), and ``normalize`` attaches the result so that
mixtures get their true weights.

Across processes (an initialised ``torch.distributed`` group, or ``group=``) the
particles are sharded in contiguous blocks of the global index as in
:func:`ebmalgebra.sample`, with the noise of all particles drawn on every rank, so
log Ẑ and the particles equal those of one process with the same seed. Per MCMC
step the default kernel all-gathers the acceptance probabilities (8N bytes) for
its population step size; the pilot run all-gathers its energy gaps per
temperature (8N/4 bytes); the end all-gathers the log weights and particles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel, input_options
from ebmalgebra.compile import compile
from ebmalgebra.distributed import ChainShard, all_chains, chain_shard
from ebmalgebra.errors import ArgumentTypeError, CapabilityError, CompositionError
from ebmalgebra.noise_normalized import NoiseNormalized, _floats
from ebmalgebra.ops import Normalized
from ebmalgebra.progress import progress_bar
from ebmalgebra.rewrites import Quadratic, closed_form
from ebmalgebra.samplers import MALA, Sampler, sample
from ebmalgebra.samplers.adaptation import MIN_ADAPTATION_STEPS
from ebmalgebra.samplers.base import check_invariant
from ebmalgebra.samplers.smc import SMC, next_exponent
from ebmalgebra.targets import MultivariateGaussian
from ebmalgebra.threads import particle_batch, threaded

__all__ = ["LogZEstimate", "estimate_log_z", "normalize"]


@dataclass(frozen=True, eq=False)
class LogZEstimate:
    """The result of :func:`estimate_log_z`.

    Attributes:
        log_z: the estimate of log Z, log Ẑ = logmeanexp(log w).
        stderr: standard error of ``log_z`` by the delta method,
            Var(log Ẑ) ≈ Var(w) / (N·mean(w)²) = 1/ESS − 1/N with the Kish ESS
            of the final weights (0 for exact values); ``inf`` when the weights are
            degenerate, ESS < min(N, max(5, N/100)), where the delta method fails.
        ess: Kish effective sample size (Σw)²/Σw² of the final weights.
        method: ``"exact"`` (closed form), ``"ais"`` or ``"smc"``.
        particles: final particles ``(n_particles, *event_shape)`` (``None`` when exact).
        log_weights: their log importance weights ``(n_particles,)``; together they
            are a weighted sample of the model.
        temperatures: the schedule β_0 = 0 < … < β_K = 1 ``(K + 1,)``.
        acceptance: mean MCMC acceptance rate per temperature ``(K,)``.
    """

    log_z: float
    stderr: float
    ess: float
    method: str
    particles: Tensor | None = None
    log_weights: Tensor | None = None
    temperatures: Tensor | None = None
    acceptance: Tensor | None = None

    def __float__(self) -> float:
        return self.log_z

    def __repr__(self) -> str:
        if self.method == "exact":
            return f"LogZEstimate(log_z={self.log_z:.6g}, exact)"
        return (f"LogZEstimate(log_z={self.log_z:.6g} ± {self.stderr:.2g}, ess={self.ess:.0f}, "
                f"{len(self.temperatures) - 1} temperatures)")


def improper_gaussian_part(model: EnergyModel) -> tuple[EnergyModel, float] | None:
    """The smallest part of ``model`` whose Gaussian energy makes ``model`` improper, if any.

    A sub-expression whose energy has the closed form ½ xᵀPx − hᵀx + c (Gaussian
    leaves combined by ``&``, ``**``, weights; see :mod:`ebmalgebra.rewrites`) is
    improper when P is not positive definite: E is unbounded below (or flat) along
    an eigenvector with eigenvalue λ ≤ 0, so ∫ exp(−E) = ∞. Impropriety passes up
    through the nodes that declare ``passes_impropriety`` (mixtures: masses add;
    weights, ``normalized``, powers β > 0), so the search descends through those; a
    product can cure an improper factor (``b & ~a`` with P_b > P_a), so a product is
    judged whole.

    Returns ``(part, λ_min)`` with P's smallest eigenvalue, or ``None`` when no
    such part is found (the model may still be improper in a non-Gaussian way).
    """
    if model.passes_impropriety:
        for child in model.operands():
            found = improper_gaussian_part(child)
            if found is not None:
                return found
    form = closed_form(model)
    if isinstance(form, Quadratic):
        smallest = form.smallest_eigenvalue()
        if smallest <= 0.0:
            return model, smallest
    return None


def _check_transition(sampler: Sampler | None) -> None:
    """Reject AIS transition kernels that do not leave every π_β invariant: AIS is
    unbiased only if each move leaves its π_β exactly invariant."""
    if sampler is not None:
        check_invariant(sampler, "estimate_log_z", "sampler",
                        "MALA, RandomWalkMH, HMC or NUTS (or sampler=None for MALA with a "
                        "tuned step size)")


def exact_log_z(model: EnergyModel) -> float | None:
    """log Z from closed forms (normalised leaves, closed-form rewrites), else ``None``."""
    if model.normalizer_known:
        return float(model.log_z())
    rewritten = compile(model, closed_form=True)
    return float(rewritten.log_z()) if rewritten.normalizer_known else None


def geometric_path(base: EnergyModel, model: EnergyModel, beta: float) -> EnergyModel:
    """π_β = base ** (1 − β) & model ** β, the AIS bridge between base and model."""
    return base ** (1.0 - beta) & model ** beta


def fit_base(model: EnergyModel, *, n_chains: int = 256, n_steps: int = 200,
             widen: float = 1.5, generator: torch.Generator | None = None,
             dtype: torch.dtype | None = None,
             group: dist.ProcessGroup | None = None) -> MultivariateGaussian:
    """A Gaussian base fitted to short-run MALA samples of ``model``, widened by ``widen``.

    Chains start at N(0, I), adapt their step size for ``n_steps`` warmup steps
    and run ``n_steps`` more; the pooled draws give mean μ and covariance Σ, and
    the base is N(μ, widen² Σ) (a base wider than the target keeps importance
    weights bounded). Only vector event shapes ``(d,)`` are supported. The
    chains and the base have ``dtype`` (default :func:`particle_options`: the
    model's own) on the model's device. Under a process group (``group``, or the
    initialised default one) the chains are sharded and their draws all-gathered,
    so every rank fits the same base.
    """
    shape = model.event_shape
    if shape is None or len(shape) != 1:
        raise CompositionError(
            f"fit_base: the default base is a Gaussian over vectors; {model!r} has event_shape "
            f"{None if shape is None else tuple(shape)} — pass base= explicitly")
    options = particle_options(model)
    if dtype is not None:
        options["dtype"] = dtype
    x0 = torch.randn(n_chains, shape[0], generator=generator, dtype=options["dtype"]).to(
        options["device"])
    adapt = n_steps >= MIN_ADAPTATION_STEPS  # shorter runs only burn in, without a warning
    run = sample(model, MALA(step_size=0.1, adapt_step_size=adapt), x0=x0, n_steps=n_steps,
                 warmup=n_steps, generator=generator, progress=False, group=group)
    draws = run.gather(dst=None).reshape(-1, shape[0]).double()
    if not torch.isfinite(draws).all():
        raise CapabilityError(f"fit_base: short-run samples of {model!r} are not finite; "
                              "pass base= explicitly")
    mean = draws.mean(0)
    covariance = torch.cov(draws.T).reshape(shape[0], shape[0])
    covariance = covariance + 1e-6 * covariance.diagonal().mean() * torch.eye(
        shape[0], dtype=covariance.dtype, device=covariance.device)
    return MultivariateGaussian(mean.to(**options), (widen**2 * covariance).to(**options),
                                name="base")


def particle_options(model: EnergyModel) -> dict:
    """``dtype=`` and ``device=`` of AIS particles and fitted bases for ``model``.

    Those of the model's first floating parameter or buffer, so that networks get
    inputs they accept (a float32 network refuses float64 particles); float64 on
    the CPU for models without tensors of their own (functions), where it costs
    nothing and keeps the weights precise.
    """
    options = input_options(model, dtype=torch.float64)
    if options["device"] is None:
        options["device"] = torch.device("cpu")
    return options


def _log_mean_exp(log_w: Tensor) -> float:
    return float(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]))


def _kish_ess(log_w: Tensor) -> float:
    w = torch.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (w * w).sum())


def _reliable_ess(n_particles: int) -> float:
    """The least final ESS whose delta-method stderr is trusted: max(5, N/100).

    A sound run keeps most particles in play (the CESS-controlled schedule loses
    little weight per step; the tests end near ESS ≈ 0.8 N). When a few particles
    carry all the weight, Var(w) is estimated from those few and misses the larger
    weights not yet drawn, so √(1/ESS − 1/N) ≤ 1/√ESS stays near 1 nat however wrong
    log Ẑ is. Below 5 effective particles no variance is estimable at all, and
    below 1 % of N the base and schedule have missed the model's mass at any N.
    Since ESS ≤ N, runs with fewer than 5 particles need equal weights, ESS = N
    (up to rounding).
    """
    return min((1.0 - 1e-9) * n_particles, max(5.0, 0.01 * n_particles))


def _unreliable(model: EnergyModel, ess: float, n_particles: int) -> str:
    """Why an AIS estimate with degenerate weights is not trusted, and what to try."""
    return (f"the AIS estimate of log Z for {model!r} is unreliable: its final importance "
            f"weights are degenerate (ESS {ess:.3g} of {n_particles} particles, below "
            f"max(5, N/100)). The model may be improper (energy unbounded below, as "
            "`a & ~b` often is); if it is not, use more particles (n_particles=), more "
            "temperatures (target_cess= closer to 1, or n_temps=), more steps per "
            "temperature (n_steps=) or a base= closer to the model")


class _Annealer:
    """Runs AIS particles through a schedule; shared by the pilot and the main run."""

    def __init__(self, model: EnergyModel, base: EnergyModel, sampler: Sampler | None,
                 n_steps: int, generator: torch.Generator | None,
                 shard: ChainShard | None) -> None:
        self.model, self.base = compile(model), compile(base)
        self.sampler = sampler
        self.n_steps = n_steps
        self.generator = generator
        self.shard = shard
        self.step_size: Tensor | None = None

    def start(self, n_particles: int) -> Tensor:
        """Exact base samples of all ``n_particles`` (the same on every rank); returns
        this rank's rows, and sets the default kernel's step size from all of them."""
        x = self.base.sample(n_particles, self.generator).to(**particle_options(self.model))
        if self.sampler is None:
            scale = x.var(0).mean().clamp_min(1e-12)
            n_local = n_particles if self.shard is None else self.shard.n_local
            self.step_size = 0.1 * scale.expand(n_local).clone()
        return x if self.shard is None else self.shard.take(x)

    def gap(self, x: Tensor) -> Tensor:
        """E_base(x) − E_model(x): the log-weight increment per unit of β."""
        with torch.no_grad():
            return self.base.energy(x) - self.model.energy(x)

    def move(self, x: Tensor, beta: float) -> tuple[Tensor, float]:
        """``n_steps`` MCMC transitions invariant for π_β; returns (x, mean acceptance)."""
        target = geometric_path(self.base, self.model, beta)
        kernel = self.sampler or MALA(step_size=self.step_size, adapt_step_size=False)
        state = kernel.init(x, target)
        rates = []
        for _ in range(self.n_steps):
            with nullcontext() if self.shard is None else self.shard.activate():
                state, info = kernel.step(state, self.generator)
            rate = getattr(info, "acceptance_rate", None)
            if rate is not None:
                # The mean of all N rates, in one process's order of summation.
                rates.append(all_chains(rate, self.shard).mean())
                if self.sampler is None:
                    # Population-level Robbins–Monro towards MALA's optimal 0.574: the
                    # kernel stays π_β-invariant at every step.
                    self.step_size = self.step_size * torch.exp(rates[-1] - 0.574)
                    state = state._replace(step_size=self.step_size)
        acceptance = float(torch.stack(rates).mean()) if rates else math.nan
        return state.position, acceptance


@threaded(particle_batch)
def estimate_log_z(
    model: EnergyModel,
    *,
    base: EnergyModel | None = None,
    n_particles: int = 1024,
    n_temps: int | None = None,
    target_cess: float = 0.999,
    n_steps: int = 10,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    exact: bool = True,
    method: str = "ais",
    group: dist.ProcessGroup | None = None,
) -> LogZEstimate:
    """Estimate log Z = log ∫ exp(−E(x)) dx of ``model``.

    Exact when a closed form exists (``exact=True``: normalised leaves, known
    weights, and Gaussian sub-expressions via ``compile(..., closed_form=True)``);
    otherwise annealed importance sampling from ``base`` to ``model`` along
    π_β = base ** (1 − β) & model ** β (see the module docstring).

    Schedule: with ``n_temps`` given, β_k = σ-spaced (a sigmoid schedule,
    Grosse et al. 2013, dense at both ends). By default it is chosen by a pilot
    run on ``n_particles // 4`` separate particles, each step as large as keeps
    the conditional ESS fraction (Zhou et al. 2016) ≥ ``target_cess``; the main
    run then uses that fixed schedule, so Ẑ stays unbiased.

    Args:
        model: any expression with energies, over vectors or any event shape.
        base: a normalised model with exact sampling; default a Gaussian fitted to
            short-run MALA samples (:func:`fit_base`, vector event shapes only).
        n_particles: number of AIS particles N.
        n_steps: MCMC transitions per temperature (≥ 0; 0 leaves plain importance weights).
        sampler: the transition kernel, which must leave each π_β invariant (declared
            by ``leaves_target_invariant``: ``MALA``, ``RandomWalkMH``, ``HMC``, ...);
            default MALA whose step size follows the population acceptance rate
            towards 0.574.
        generator: source of all randomness.
        progress: tqdm bar over temperatures (default: when stderr is a terminal).
        method: ``"ais"``, or ``"smc"`` for sequential Monte Carlo along the same path
            (:class:`~ebmalgebra.samplers.SMC`: resampling when the ESS halves, each next β
            chosen on the fly to keep the conditional ESS ≥ ``target_cess``, stderr by
            the Chan & Lai genealogy estimator; ``n_temps`` does not apply).
        group: a ``torch.distributed`` process group to shard the particles over; by
            default the initialised default group, if any (see the module docstring).
            Every rank must call with the same arguments and an equally seeded
            ``generator``, and gets the whole result.

    Returns:
        :class:`LogZEstimate` with ``log_z``, ``stderr`` (delta method:
        √(1/ESS − 1/N); ``inf`` when the weights are degenerate), the final
        weighted particles and diagnostics.

    Raises:
        ValueError: if ``sampler`` does not leave π_β invariant (``ULA``,
            ``AnnealedLangevin``, ``ParallelTempering``, or a kernel of your own).
        CapabilityError: if a Gaussian part of ``model`` has a precision that is not
            positive definite (E unbounded below, Z = ∞); the error names the part.
        CompositionError: if ``model`` is noise-conditioned without a closed-form log Z
            (it has one per noise level: ``normalize(model, noise_levels=...)``).

    Warns:
        RuntimeWarning: when the final weights are degenerate, ESS < min(N, max(5, N/100)):
            the model may be improper, or the run too short; ``stderr`` is then ``inf``.

    Example:
        >>> est = estimate_log_z(from_energy(lambda x: 0.5 * (x ** 2).sum(-1), 2))
        >>> est.log_z  # log 2π ≈ 1.8379
    """
    model.require("energy", "estimate_log_z")
    improper = improper_gaussian_part(model)
    if improper is not None:
        part, smallest = improper
        also = "" if part is model else f", and so is {model!r}"
        raise CapabilityError(
            f"estimate_log_z: {part!r} is improper{also}: its energy ½xᵀPx − hᵀx + c has a "
            f"precision P with eigenvalue {smallest:.3g} ≤ 0, so it is unbounded below (or "
            "flat) and Z = ∞. Weaken the negated part (a & b ** -α needs P_a − α·P_b "
            "positive definite) or add a factor that confines it")
    validation.count("estimate_log_z: n_particles", n_particles, 2)
    if n_temps is not None:
        validation.count("estimate_log_z: n_temps", n_temps)
    validation.count("estimate_log_z: n_steps", n_steps, 0)
    validation.in_interval("estimate_log_z: target_cess", target_cess)
    _check_transition(sampler)
    validation.one_of("estimate_log_z: method", method, ("ais", "smc"))
    if exact:
        value = exact_log_z(model)
        if value is not None:
            return LogZEstimate(value, 0.0, math.inf, "exact")
    _check_not_noise_conditioned(model)
    if base is None:
        base = fit_base(model, generator=generator, group=group)
    else:
        base.require("normalizer", "estimate_log_z base")
        base.require("sample", "estimate_log_z base")
        validation.same_event_shape("estimate_log_z: base", base, model)
    log_z_base = float(base.log_z())
    if method == "smc":
        return _smc_estimate(model, base, n_particles, n_steps, target_cess, sampler,
                             generator, progress, group)

    if n_temps is not None:
        grid = torch.linspace(-6.0, 6.0, n_temps + 1, dtype=torch.float64)
        sigmoid = torch.sigmoid(grid)
        schedule = ((sigmoid - sigmoid[0]) / (sigmoid[-1] - sigmoid[0])).tolist()
    else:
        schedule = _pilot_schedule(model, base, max(n_particles // 4, 64), target_cess,
                                   n_steps, sampler, generator, group)

    shard = _particle_shard(n_particles, group, generator)
    annealer = _Annealer(model, base, sampler, n_steps, generator, shard)
    x = annealer.start(n_particles)
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    acceptance = []
    bar = progress_bar(len(schedule) - 1, progress if shard is None or shard.rank == 0
                       else False, "AIS")
    try:
        for previous, beta in zip(schedule[:-1], schedule[1:], strict=True):
            log_w = log_w + (beta - previous) * annealer.gap(x).double()
            x, rate = annealer.move(x, beta)
            acceptance.append(rate)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log_w = all_chains(torch.nan_to_num(log_w, nan=-math.inf), shard)
    x = all_chains(x, shard)
    ess = _kish_ess(log_w)
    if ess >= _reliable_ess(n_particles):
        stderr = math.sqrt(max(1.0 / ess - 1.0 / n_particles, 0.0))
    else:  # also a NaN ESS, from infinite weights
        stderr = math.inf
        warnings.warn(f"estimate_log_z: {_unreliable(model, ess, n_particles)}. The "
                      "returned stderr is inf", RuntimeWarning,
                      stacklevel=3)  # this function, its @threaded wrapper, the caller
    return LogZEstimate(
        log_z=log_z_base + _log_mean_exp(log_w),
        stderr=stderr,
        ess=ess,
        method="ais",
        particles=x,
        log_weights=log_w,
        temperatures=torch.tensor(schedule, dtype=torch.float64),
        acceptance=torch.tensor(acceptance, dtype=torch.float64),
    )


def _check_not_noise_conditioned(model: EnergyModel) -> None:
    """AIS needs E(x) without a noise level; a noise-conditioned model has one Z per level."""
    leaf = next((leaf for leaf in model.leaves() if getattr(leaf, "noise_conditioned", False)),
                None)
    if leaf is not None:
        part = "" if leaf is model else f" (its part {leaf!r} takes a noise level t)"
        raise CompositionError(
            f"estimate_log_z: {model!r} is noise-conditioned{part}, so its log Z depends on "
            "t; use normalize(model, noise_levels=...), which estimates log Z(t) at every "
            "level by SMC")


def _particle_shard(n_particles: int, group: dist.ProcessGroup | None,
                    generator: torch.Generator | None) -> ChainShard | None:
    shard = chain_shard(n_particles, group, operation="estimate_log_z")
    if shard is not None:
        shard.check_agreement(generator)
    return shard


def _smc_estimate(model: EnergyModel, base: EnergyModel, n_particles: int, n_steps: int,
                  target_cess: float, sampler: Sampler | None,
                  generator: torch.Generator | None, progress: bool | None,
                  group: dist.ProcessGroup | None) -> LogZEstimate:
    """:func:`estimate_log_z` by adaptive tempered SMC from ``base`` to ``model``."""
    result = SMC(kernel=sampler, n_steps=n_steps, target_cess=target_cess).run(
        model, base=base, n_particles=n_particles, generator=generator, progress=progress,
        group=group)
    return LogZEstimate(log_z=result.log_z, stderr=result.stderr,
                        ess=float(1.0 / result.weights.square().sum()),
                        method="smc", particles=result.particles,
                        log_weights=result.log_weights, temperatures=result.temperatures,
                        acceptance=result.acceptance)


def _pilot_schedule(model: EnergyModel, base: EnergyModel, n_particles: int,
                    target_cess: float, n_steps: int, sampler: Sampler | None,
                    generator: torch.Generator | None,
                    group: dist.ProcessGroup | None) -> list[float]:
    """A temperature schedule from a pilot AIS run with CESS-controlled steps; sharded
    like the main run, with the gaps all-gathered so every rank picks the same β."""
    shard = _particle_shard(n_particles, group, generator)
    annealer = _Annealer(model, base, sampler, n_steps, generator, shard)
    x = annealer.start(n_particles)
    log_w = torch.zeros(n_particles, dtype=torch.float64, device=x.device)
    schedule = [0.0]
    while schedule[-1] < 1.0:
        gap = all_chains(torch.nan_to_num(annealer.gap(x).double(), nan=-math.inf), shard)
        beta = next_exponent(log_w - torch.logsumexp(log_w, 0), gap, schedule[-1],
                             target_cess)
        log_w = log_w + (beta - schedule[-1]) * gap
        schedule.append(beta)
        if len(schedule) > 10_000:
            raise CapabilityError(f"estimate_log_z: the schedule for {model!r} needs more than "
                                  "10,000 temperatures; give a closer base= or n_temps=")
        x, _ = annealer.move(x, beta)
    return schedule


_SMC_SETTINGS = ("kernel", "n_steps", "resampling", "ess_threshold", "target_cess")


def normalize(model: EnergyModel, *, log_z: float | Sequence[float] | None = None,
              noise_levels: Sequence[float] | Tensor | None = None,
              **options: object) -> EnergyModel:
    """``model`` divided by its normaliser: E + log Z, so ``log_prob`` works and ``|`` gets
    true weights.

    log Z is taken from ``log_z`` if given (then ``options`` would be unused and are
    refused), else from closed forms, else estimated by :func:`estimate_log_z` with
    ``options`` (e.g. ``n_particles=``, ``generator=``). The node remembers the
    estimate's standard error (``node.log_z_stderr``), shown by ``explain()``.

    **Noise-conditioned models** (``noise_levels`` t_0 > … > t_K given): the result
    is a :class:`~ebmalgebra.noise_normalized.NoiseNormalized` with energy
    E(x, t) + log Z(t), log Z(t_k) = log ∫ exp(−E(x, t_k)) dx estimated at every level
    by one :class:`~ebmalgebra.samplers.SMC` run down the levels: a tempering segment
    from a Gaussian base (default N(0, t_0² I), or ``base=``) to the model at t_0, then
    Z_k / Z_{k−1} from the incremental weights of each level (``SMCResult.path_log_z``,
    with genealogy standard errors ``node.log_z_stderr``). ``options`` go to
    :class:`~ebmalgebra.samplers.SMC` (``kernel``, ``n_steps``, ``resampling``,
    ``ess_threshold``, ``target_cess``) and to its ``run`` (``n_particles``, ``base``,
    ``generator``, ``progress``). On long paths the genealogy of one run coalesces (few
    initial particles keep descendants) and gives no standard error: ``replicates=R``
    runs R independent SMCs, pools Ẑ(t_k) by their mean and takes the stderr from their
    spread. Between levels log Z(t) is interpolated linearly in
    log t; outside [t_K, t_0] the energy raises :class:`~ebmalgebra.CompositionError`.
    Known values may be given instead as ``log_z=[log Z(t_0), …]``.

    Raises:
        CapabilityError: if the estimate is unreliable (degenerate AIS weights, or an
            SMC path whose lineages died out: ``stderr`` inf, often an improper model)
            rather than build a model on it, or if a Gaussian part is improper; see
            :func:`estimate_log_z`.

    Example:
        >>> mixture = 0.25 * normalize(a) | 0.75 * normalize(b)   # weights 0.25 / 0.75
        >>> faces = normalize(glasses, noise_levels=levels) | normalize(hat, noise_levels=levels)
    """
    if log_z is not None and options:
        raise ArgumentTypeError(f"normalize: log_z= was given, so {sorted(options)} "
                                "would be unused")
    if noise_levels is not None:
        return _normalize_noise_path(model, log_z, noise_levels, options)
    if log_z is not None:
        return Normalized(model, log_z)
    estimate = estimate_log_z(model, **options)
    if not math.isfinite(estimate.stderr):
        raise CapabilityError(
            f"normalize: {_unreliable(model, estimate.ess, len(estimate.log_weights))}; or "
            "pass log_z= if it is known")
    # A closed form is exact: no standard error, and explain() must not call it estimated.
    stderr = None if estimate.method == "exact" else estimate.stderr
    return Normalized(model, estimate.log_z, stderr=stderr)


def _normalize_noise_path(model: EnergyModel, log_z: Sequence[float] | None,
                          noise_levels: Sequence[float] | Tensor,
                          options: dict[str, object]) -> EnergyModel:
    """:func:`normalize` over noise levels: known ``log_z`` per level, or SMC runs."""
    levels = _floats(noise_levels, "noise_levels")
    if log_z is not None:
        return NoiseNormalized(model, levels, log_z)
    replicates = options.pop("replicates", 1)
    validation.count("normalize: replicates", replicates)
    settings = {key: options.pop(key) for key in _SMC_SETTINGS if key in options}
    smc = SMC(**settings)
    with warnings.catch_warnings():
        if replicates > 1:
            # The stderr comes from the runs' spread, not from their genealogies.
            warnings.filterwarnings("ignore", "SMC: only", RuntimeWarning)
        runs = [smc.run(model, noise_levels=levels, **options) for _ in range(replicates)]
    if replicates == 1:
        estimate, stderr = runs[0].path_log_z, runs[0].path_stderr
    else:
        estimate, stderr = _pooled(torch.stack([run.path_log_z for run in runs]))
    if not math.isfinite(float(stderr.max())):
        raise CapabilityError(
            f"normalize: the SMC estimates of log Z(t) of {model!r} are unreliable: few "
            f"initial particles have descendants at some levels ({runs[0].n_eves} of "
            f"{len(runs[0].eve)} at the end), so the genealogy gives no standard error, or "
            "the replicates= runs disagree by more than a nat at some level. On long paths "
            "(many levels, high dimension) use replicates= ≥ 4 independent runs; else more "
            "particles (n_particles=), more moves per level (n_steps=) or a base= closer to "
            "the model at the first level. If runs disagree by many nats the model may be "
            "improper at some level (energy lower far from the data)")
    return NoiseNormalized(model, levels, estimate, stderr=stderr)


def _pooled(log_z: Tensor) -> tuple[Tensor, Tensor]:
    """log Ẑ of R independent runs ``(R, K)`` pooled: log of the mean Ẑ (unbiased for Z
    like each run's) and its delta-method stderr sd_r(Ẑ_r)/(√R · mean_r Ẑ_r) ``(K,)``.

    The delta method needs the Ẑ_r to be comparable: where one run dominates (Kish ESS
    of the Ẑ_r below R/2, i.e. log Ẑ_r spread by more than ≈ 0.8 nats) the sample sd
    misses the larger values not yet drawn and stays near 1 however wrong the mean is,
    so the stderr there is ``inf``.
    """
    n_runs = log_z.shape[0]
    relative = torch.exp(log_z - log_z.max(0).values)
    mean = relative.mean(0)
    stderr = relative.std(0) / (math.sqrt(n_runs) * mean)
    ess = relative.sum(0).square() / relative.square().sum(0)
    return log_z.max(0).values + mean.log(), torch.where(ess < n_runs / 2, math.inf, stderr)
