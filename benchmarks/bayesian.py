"""Posterior sampling against the JAX samplers: ESS per second and per gradient.

Run from the repository root::

    python benchmarks/bayesian.py            # full run (minutes on one core)
    python benchmarks/bayesian.py --quick    # a tiny run that exercises every path
    pip install ".[bench]"                   # NumPyro and BlackJAX rows (else skipped)

One thread for torch and for XLA, CPU, float32, one process. Targets, each as a
torch function batched over chains and a JAX function of one point (both written
from the same formulas, on the same procedurally generated data):

* ``schools``: eight schools, non-centred, (μ, log τ, θ̃₁…θ̃₈) with μ ~ N(0, 5²),
  τ ~ half-Cauchy(5) and θ̃ ~ N(0, 1); our samplers get the model on (μ, τ, θ̃)
  with its support (``constraints.cat``) and sample it through
  ``ebmalgebra.constraints``, the others the log-τ density with its Jacobian.
* ``logistic``: logistic regression, 25 coefficients with N(0, 1) priors, 1,000
  rows of standard-normal features and labels drawn from the model.
* ``gaussian``: a 100-D Gaussian with scales log-spaced from 0.01 to 1.
* ``volatility``: a stochastic-volatility latent series h₁…h₁₀₀,
  h_t = μ + φ(h_{t−1} − μ) + σ η_t (μ = −1, φ = 0.95, σ = 0.25, stationary
  start), y_t ~ N(0, e^{h_t}), parameters fixed, y simulated once.

Methods, all with ``warmup`` adaptation steps then ``n_steps`` draws per chain:
``ebmalgebra NUTS`` (default ``NUTS()``: Stan's windowed diagonal metric pooled
over chains, dual averaging to 0.8), ``ebmalgebra NUTS jit`` (``NUTS(jit=True)``,
the same with each leaf's update compiled; its whole run includes the compile),
``ebmalgebra HMC`` (``HMC(n_leapfrog=10)``,
the same adaptation), NumPyro ``NUTS`` (``chain_method="vectorized"``, its own
window adaptation per chain) and BlackJAX ``nuts`` after
``window_adaptation`` (vmapped over chains, each chain its own adaptation), and a
hand-written batched unit-mass HMC (``benchmarks/samplers.py``: ε bisected to
80% acceptance and L = ⌈1.5 σ_max / ε⌉ from a pilot on our NUTS draws, neither
timed; its "warmup" steps are plain burn-in).

Reported per target, chain count and method: the minimum bulk ESS over
coordinates (``ebmalgebra.diagnostics.ess``, on the same unconstrained
coordinates for every method), ESS per gradient evaluation (gradients summed
over chains in the sampling phase: NUTS counts each chain's own leapfrog steps),
and ESS per second of the sampling phase and of the whole run (warmup, and
for JAX, compilation included). BlackJAX's functions are compiled ahead of time,
so its sampling phase excludes compilation; NumPyro's sampling phase is timed on
a second sampling run after the first one compiled it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")

import torch  # noqa: E402
from torch.distributions import constraints  # noqa: E402

import ebmalgebra as eb  # noqa: E402
from ebmalgebra.constraints import unconstrain  # noqa: E402
from ebmalgebra.diagnostics import ess  # noqa: E402
from ebmalgebra.samplers import HMC, NUTS  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplers import hand_hmc, tune_step  # noqa: E402

DTYPE = torch.float32
HAS_JAX = all(importlib.util.find_spec(name) is not None
              for name in ("jax", "numpyro", "blackjax"))


# ------------------------------------------------------------------- targets
@dataclass
class Target:
    """One posterior: ``log_density`` on unconstrained coordinates ``(batch, d)``,
    the model our samplers get, and ``jax_log_density`` of one point (or None)."""

    name: str
    dim: int
    log_density: Callable[[torch.Tensor], torch.Tensor]
    model: eb.EnergyModel
    jax_log_density: Callable | None


SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def schools() -> Target:
    y, sigma = torch.tensor(SCHOOLS_Y), torch.tensor(SCHOOLS_SIGMA)

    def on_tau(x: torch.Tensor) -> torch.Tensor:
        mu, tau, raw = x[:, 0], x[:, 1], x[:, 2:]
        theta = mu[:, None] + tau[:, None] * raw
        return (-0.5 * (mu / 5) ** 2 - torch.log1p((tau / 5) ** 2) - 0.5 * (raw**2).sum(-1)
                - 0.5 * (((y - theta) / sigma) ** 2).sum(-1))

    def on_log_tau(u: torch.Tensor) -> torch.Tensor:  # + log|dτ/d log τ| = log τ
        return on_tau(torch.cat([u[:, :1], u[:, 1:2].exp(), u[:, 2:]], 1)) + u[:, 1]

    support = constraints.cat([constraints.real, constraints.positive, constraints.real],
                              dim=-1, lengths=[1, 1, 8])
    model = eb.from_log_prob(on_tau, 10, name="schools", support=support)
    jax_fn = None
    if HAS_JAX:
        import jax.numpy as jnp

        jy, jsigma = jnp.asarray(SCHOOLS_Y), jnp.asarray(SCHOOLS_SIGMA)

        def jax_fn(u):
            mu, log_tau, raw = u[0], u[1], u[2:]
            tau = jnp.exp(log_tau)
            theta = mu + tau * raw
            return (-0.5 * (mu / 5) ** 2 - jnp.log1p((tau / 5) ** 2) - 0.5 * jnp.sum(raw**2)
                    - 0.5 * jnp.sum(((jy - theta) / jsigma) ** 2) + log_tau)
    return Target("schools (10-D)", 10, on_log_tau, model, jax_fn)


def logistic() -> Target:
    data = torch.Generator().manual_seed(2)
    features = torch.randn(1000, 25, generator=data)
    labels = torch.bernoulli(torch.sigmoid(features @ (0.5 * torch.randn(25, generator=data))),
                             generator=data)

    def log_density(beta: torch.Tensor) -> torch.Tensor:
        eta = beta @ features.T
        return ((labels * eta - torch.nn.functional.softplus(eta)).sum(-1)
                - 0.5 * (beta**2).sum(-1))

    jax_fn = None
    if HAS_JAX:
        import jax
        import jax.numpy as jnp

        jx, jl = jnp.asarray(features.numpy()), jnp.asarray(labels.numpy())

        def jax_fn(beta):
            eta = jx @ beta
            return jnp.sum(jl * eta - jax.nn.softplus(eta)) - 0.5 * jnp.sum(beta**2)
    return Target("logistic (25-D, 1000 rows)", 25, log_density,
                  eb.from_log_prob(log_density, 25, name="logistic"), jax_fn)


def gaussian() -> Target:
    scales = torch.logspace(-2, 0, 100)

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x / scales) ** 2).sum(-1)

    jax_fn = None
    if HAS_JAX:
        import jax.numpy as jnp

        jscales = jnp.asarray(scales.numpy())

        def jax_fn(x):
            return -0.5 * jnp.sum((x / jscales) ** 2)
    return Target("gaussian (100-D, 0.01…1)", 100, log_density,
                  eb.from_log_prob(log_density, 100, name="gaussian"), jax_fn)


VOLATILITY = {"mu": -1.0, "phi": 0.95, "sigma": 0.25, "length": 100}


def volatility() -> Target:
    mu, phi, sigma, length = (VOLATILITY[k] for k in ("mu", "phi", "sigma", "length"))
    data = torch.Generator().manual_seed(3)
    h = torch.empty(length)
    h[0] = mu + sigma / math.sqrt(1 - phi**2) * torch.randn((), generator=data)
    for t in range(1, length):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * torch.randn((), generator=data)
    y = (0.5 * h).exp() * torch.randn(length, generator=data)

    def log_density(h: torch.Tensor) -> torch.Tensor:
        innovations = (h[:, 1:] - mu - phi * (h[:, :-1] - mu)) / sigma
        start = (h[:, 0] - mu) ** 2 * (1 - phi**2) / sigma**2
        return (-0.5 * (innovations**2).sum(-1) - 0.5 * start
                - 0.5 * (h + y**2 * (-h).exp()).sum(-1))

    jax_fn = None
    if HAS_JAX:
        import jax.numpy as jnp

        jy = jnp.asarray(y.numpy())

        def jax_fn(h):
            innovations = (h[1:] - mu - phi * (h[:-1] - mu)) / sigma
            start = (h[0] - mu) ** 2 * (1 - phi**2) / sigma**2
            return (-0.5 * jnp.sum(innovations**2) - 0.5 * start
                    - 0.5 * jnp.sum(h + jy**2 * jnp.exp(-h)))
    return Target("volatility (100-D latent)", length, log_density,
                  eb.from_log_prob(log_density, length, name="volatility"), jax_fn)


# ------------------------------------------------------------------- methods
@dataclass
class Row:
    target: str
    n_chains: int
    method: str
    min_ess: float
    gradients: float
    sampling_seconds: float
    total_seconds: float
    longest_tree: float | None = None

    def show(self) -> None:
        print(f"  {self.method:<19} minESS {self.min_ess:8.0f}  ESS/grad "
              f"{self.min_ess / self.gradients:.2e}  ESS/s sampling "
              f"{self.min_ess / self.sampling_seconds:9.1f}  whole run "
              f"{self.min_ess / self.total_seconds:9.1f}  ({self.total_seconds:6.1f} s)"
              + ("" if self.longest_tree is None else
                 f"  longest tree / mean {self.longest_tree:.2f}"), flush=True)


def ours(target: Target, sampler, label: str, x0: torch.Tensor, warmup: int, n_steps: int,
         seed: int = 5) -> tuple[Row, torch.Tensor]:
    marks: dict[str, float] = {}

    def mark(step, state, info):
        if step == warmup - 1:
            marks["warmup"] = time.perf_counter()

    start = time.perf_counter()
    samples = eb.sample(target.model, sampler, x0=x0, n_steps=n_steps, warmup=warmup,
                        generator=torch.Generator().manual_seed(seed), progress=False,
                        callback=mark)
    end = time.perf_counter()
    draws = samples.draws if samples.unconstrained_draws is None else samples.unconstrained_draws
    n_chains = x0.shape[0]
    gradients = float(samples.stats["n_leapfrog"][warmup:].double().sum()) * n_chains
    # Batched NUTS steps every chain until its longest tree is done: the batched
    # evaluations over the mean chain's, in the sampling phase.
    per_chain = samples.chain_stats.get("n_leapfrog")
    longest_tree = None if per_chain is None or "tree_depth" not in samples.stats else float(
        per_chain.max(1).values.double().sum() * n_chains / per_chain.double().sum())
    return Row(target.name, n_chains, label, float(ess(draws).min()), gradients,
               end - marks.get("warmup", start), end - start, longest_tree), draws


def energy_and_score(log_density: Callable) -> Callable:
    def function(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_p = log_density(x)
            (score,) = torch.autograd.grad(log_p.sum(), x)
        return -log_p.detach(), score
    return function


def hand_written(target: Target, pilot: torch.Tensor, x0: torch.Tensor, warmup: int,
                 n_steps: int) -> Row:
    function = energy_and_score(target.log_density)
    start_points = pilot[-1]
    sigma_max = float(pilot.reshape(-1, target.dim).std(0).max())
    step = tune_step(function, start_points, 10)
    n_leapfrog = max(1, math.ceil(1.5 * sigma_max / step))
    step = tune_step(function, start_points, n_leapfrog)
    keep = torch.empty(n_steps, *x0.shape, dtype=DTYPE)
    start = time.perf_counter()
    hand_hmc(function, x0, warmup + n_steps, step, n_leapfrog,
             torch.Generator().manual_seed(5), jitter=0.2, keep=keep)
    elapsed = time.perf_counter() - start
    return Row(target.name, x0.shape[0], f"hand HMC (L={n_leapfrog})", float(ess(keep).min()),
               float(n_steps * n_leapfrog * x0.shape[0]), elapsed * n_steps / (warmup + n_steps),
               elapsed)


def blackjax_row(target: Target, x0: torch.Tensor, warmup: int, n_steps: int,
                 seed: int = 7) -> Row:
    import blackjax
    import jax
    import jax.numpy as jnp

    n_chains = x0.shape[0]
    keys = jax.random.split(jax.random.key(seed), n_chains)
    positions = jnp.asarray(x0.numpy())

    def adapt_one(key, position):
        adaptation = blackjax.window_adaptation(blackjax.nuts, target.jax_log_density)
        (state, parameters), _ = adaptation.run(key, position, num_steps=warmup)
        return state, parameters

    def sample_one(key, state, parameters):
        kernel = blackjax.nuts(target.jax_log_density, **parameters)

        def one_step(state, key):
            state, info = kernel.step(key, state)
            return state, (state.position, info.num_integration_steps)
        _, (draws, steps) = jax.lax.scan(one_step, state, jax.random.split(key, n_steps))
        return draws, steps

    start = time.perf_counter()
    adapt = jax.jit(jax.vmap(adapt_one)).lower(keys, positions).compile()
    states, parameters = jax.block_until_ready(adapt(keys, positions))
    sample_keys = jax.random.split(jax.random.key(seed + 1), n_chains)
    sample = jax.jit(jax.vmap(sample_one)).lower(sample_keys, states, parameters).compile()
    compiled = time.perf_counter()
    draws, steps = jax.block_until_ready(sample(sample_keys, states, parameters))
    end = time.perf_counter()
    draws = torch.from_numpy(jax.device_get(draws).copy()).transpose(0, 1)
    return Row(target.name, n_chains, "BlackJAX NUTS", float(ess(draws).min()),
               float(jax.device_get(steps).sum()), end - compiled, end - start)


def numpyro_row(target: Target, x0: torch.Tensor, warmup: int, n_steps: int) -> Row:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    n_chains = x0.shape[0]
    kernel = NumPyroNUTS(potential_fn=lambda u: -target.jax_log_density(u))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=n_steps, num_chains=n_chains,
                chain_method="vectorized", progress_bar=False)
    start = time.perf_counter()
    mcmc.warmup(jax.random.key(7), init_params=jnp.asarray(x0.numpy()))
    mcmc.run(jax.random.key(8), extra_fields=("num_steps",))
    jax.block_until_ready(mcmc.get_samples())
    first = time.perf_counter()
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(jax.random.key(9), extra_fields=("num_steps",))  # compiled: the sampling phase
    draws = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    end = time.perf_counter()
    steps = mcmc.get_extra_fields()["num_steps"]
    draws = torch.from_numpy(jax.device_get(draws).copy()).transpose(0, 1)
    return Row(target.name, n_chains, "NumPyro NUTS", float(ess(draws).min()),
               float(jax.device_get(steps).sum()), end - first, first - start)


TARGETS = {"schools": schools, "logistic": logistic, "gaussian": gaussian,
           "volatility": volatility}


# ----------------------------------------------------------------------- run
def starts(target: Target, n_chains: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stan-like starts, uniform on (−2, 2) in unconstrained coordinates: ``(u0, x0)``,
    x0 in the model's own (constrained) coordinates."""
    u0 = 4 * torch.rand(n_chains, target.dim, generator=torch.Generator().manual_seed(seed),
                        dtype=DTYPE) - 2
    unconstrained = unconstrain(target.model)
    return u0, (u0 if unconstrained is None else unconstrained.to_constrained(u0))


def run(quick: bool, chain_counts: list[int], names: list[str]) -> list[Row]:
    warmup, n_steps = (40, 40) if quick else (500, 500)
    rows = []
    for name in names:
        target = TARGETS[name]()
        for n_chains in chain_counts:
            print(f"\n{target.name}: {n_chains} chains, {warmup} warmup + {n_steps} draws",
                  flush=True)
            u0, x0 = starts(target, n_chains, seed=4)
            nuts, pilot = ours(target, NUTS(), "ebmalgebra NUTS", x0, warmup, n_steps)
            nuts_jit, _ = ours(target, NUTS(jit=True), "ebmalgebra NUTS jit", x0, warmup,
                               n_steps)
            hmc, _ = ours(target, HMC(n_leapfrog=10), "ebmalgebra HMC", x0, warmup, n_steps)
            found = [nuts, nuts_jit, hmc, hand_written(target, pilot, u0, warmup, n_steps)]
            if HAS_JAX:
                found += [numpyro_row(target, u0, warmup, n_steps),
                          blackjax_row(target, u0, warmup, n_steps)]
            for row in found:
                row.show()
            rows += found
    if not HAS_JAX:
        print("\njax/numpyro/blackjax not installed (pip install '.[bench]'): rows skipped")
    return rows


def ratios(rows: list[Row]) -> None:
    """Our NUTS (eager and jit) against BlackJAX, NumPyro and the hand-written HMC, per
    target and chain count."""
    keys = sorted({(row.target, row.n_chains) for row in rows}, key=str)
    for ours_name in ("ebmalgebra NUTS", "ebmalgebra NUTS jit"):
        print(f"\n{ours_name} / other: ESS/grad, sampling ESS/s, whole-run ESS/s")
        for target, n_chains in keys:
            group = {row.method.split(" (")[0]: row for row in rows
                     if (row.target, row.n_chains) == (target, n_chains)}
            nuts = group[ours_name]
            for other in ("BlackJAX NUTS", "NumPyro NUTS", "hand HMC"):
                if other not in group:
                    continue
                them = group[other]
                per_grad = (nuts.min_ess / nuts.gradients) / (them.min_ess / them.gradients)
                sampling = ((nuts.min_ess / nuts.sampling_seconds)
                            / (them.min_ess / them.sampling_seconds))
                whole = ((nuts.min_ess / nuts.total_seconds)
                         / (them.min_ess / them.total_seconds))
                print(f"  {target:<27} {n_chains:>3} chains vs {other:<13} {per_grad:5.2f}  "
                      f"{sampling:5.2f}  {whole:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 100])
    parser.add_argument("--targets", nargs="+", default=["schools", "logistic", "gaussian",
                                                        "volatility"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    versions = f"torch {torch.__version__}"
    if HAS_JAX:
        import blackjax
        import jax
        import numpyro

        versions += (f", jax {jax.__version__}, numpyro {numpyro.__version__}, "
                     f"blackjax {blackjax.__version__}")
    print(f"{versions}; {platform.processor() or platform.machine()}, 1 thread")
    ratios(run(args.quick, args.chains, args.targets))


if __name__ == "__main__":
    main()
