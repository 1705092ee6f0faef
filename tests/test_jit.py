"""Compiled kernels (``ebmalgebra.jit``): inductor agrees with eager on energies, scores
and sampler runs for the same seed, kernels are cached and never recompile across steps,
and every failure to compile falls back to the eager path with one warning.

Compilation dominates the run time (1-8 s per kernel, ~25 s for a training kernel),
so each test compiles as few kernels as it can; the slowest are marked ``slow``.

Tolerances: compiled kernels reorder and fuse float64 arithmetic, which moves results by
a few ulps per operation. 1e-9 relative for single evaluations, and 1e-7 for chains of
10-20 steps, where rounding differences compound from step to step, are thousands of
times looser than that and far tighter than any real disagreement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from sampler_helpers import eager_and_compiled_draws
from torch._dynamo.utils import counters

import ebmalgebra as eb
from ebmalgebra import jit
from ebmalgebra.jit import DISABLE_ENV, InductorEnergy, JitFallbackWarning
from ebmalgebra.precompile import _dropped_guard_types
from ebmalgebra.samplers import HMC, MALA, NUTS, ULA, RandomWalkMH
from ebmalgebra.targets import Banana, Funnel, Gaussian, Ring
from ebmalgebra.testing import assert_equivalent, expressions, points

F64 = torch.float64


@pytest.fixture(autouse=True)
def fresh_jit():
    """Each test starts without cached kernels, availability checks or shown warnings."""
    jit.clear_cache()
    yield
    jit.clear_cache()


def mlp(dim: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.SiLU(),
                               torch.nn.Linear(16, 1)).to(F64)


def network_mixture(dim: int = 3):
    """(a & b ** 0.5) | 2 * c over three small networks, as in the compile benchmark."""
    nets = [mlp(dim, seed) for seed in range(3)]
    a, b, c = (eb.from_energy(net, dim, name=name) for net, name in zip(nets, "abc",
                                                                           strict=True))
    return nets, (a & b ** 0.5) | 2.0 * c


def run(sampler, model, x0, n_steps=20, seed=1):
    return eb.sample(model, sampler, x0=x0, n_steps=n_steps,
                     generator=torch.Generator().manual_seed(seed), progress=False)


# ----------------------------------------------------------------- energies

@settings(max_examples=3)
@given(expressions(max_depth=2), points((2,), batch=16))
def test_inductor_agrees_with_eager_on_random_expressions(expr, x):
    compiled = eb.compile(expr, backend="inductor")
    assert isinstance(compiled, InductorEnergy)
    assert_equivalent(compiled, eb.compile(expr), x, rtol=1e-9, atol=1e-9)


def test_network_leaves_use_a_functional_reverse_pass():
    nets, expr = network_mixture()
    compiled = eb.compile(expr, backend="inductor")
    x = torch.randn(32, 3, dtype=F64)
    energy, score = compiled.energy_and_score(x)
    expected_energy, expected_score = eb.compile(expr).energy_and_score(x)
    assert energy.shape == (32,) and not energy.requires_grad  # per-sample, detached
    torch.testing.assert_close(energy, expected_energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score, expected_score, rtol=1e-9, atol=1e-9)
    # torch.func.vjp, unlike .backward(), leaves the parameters' gradients alone.
    assert all(p.grad is None for net in nets for p in net.parameters())
    assert len(jit.compile_seconds()) == 1


def test_noise_levels_share_one_kernel():
    model = eb.from_energy(lambda x, t: 0.5 * (x * x).sum(-1) / (1.0 + t**2), 2,
                           name="noisy", noise_conditioned=True)
    compiled = eb.compile(model, backend="inductor")
    x = torch.randn(16, 2, dtype=F64)
    for t in (0.1, 0.5, 2.0):
        for actual, expected in zip(compiled.energy_and_score(x, t),
                                    eb.compile(model).energy_and_score(x, t), strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    assert len(jit.compile_seconds()) == 1


def test_an_integer_noise_level_stays_an_integer():
    # Regression: t=2 reached the kernel as a float tensor, so an energy indexing a table
    # of levels with it failed ("tensors used as indices must be long…").
    sigmas = torch.tensor([1.0, 0.5, 0.25, 0.1], dtype=F64)
    model = eb.from_energy(lambda x, t: 0.5 * (x**2).sum(-1) / sigmas[t] ** 2, 2,
                           name="indexed", noise_conditioned=True)
    x = torch.randn(5, 2, dtype=F64)
    expected = 0.5 * (x**2).sum(-1) / 0.25**2
    torch.testing.assert_close(eb.compile(model, backend="inductor").energy(x, t=2), expected)


def test_differentiable_evaluations_stay_eager():
    """Training needs scores differentiable in the parameters; those run the eager path."""
    nets, expr = network_mixture()
    compiled = eb.compile(expr, backend="inductor")
    x = torch.randn(8, 3, dtype=F64)
    score = compiled.score(x, create_graph=True)
    assert score.requires_grad
    energy = compiled.energy(x)
    energy.sum().backward()
    assert all(p.grad is not None for p in nets[0].parameters())
    assert jit.compile_seconds() == []


def test_parameters_unfrozen_after_compiling_get_gradients():
    # Regression: whether parameters need grad was read once, at compile(); unfrozen
    # afterwards, the inductor backend returned energies detached from them (zero
    # gradients, silently). The reference is the eager backend's gradient.
    nets, expr = network_mixture()
    for net in nets:
        net.requires_grad_(False)
    compiled = eb.compile(expr, backend="inductor")
    for net in nets:
        net.requires_grad_(True)
    x = torch.randn(8, 3, dtype=F64)
    gradients = []
    for model in (compiled, eb.compile(expr)):
        nets[0].zero_grad()
        model.energy(x).sum().backward()
        gradients.append(nets[0][0].weight.grad.clone())
    assert gradients[1].abs().sum() > 0
    torch.testing.assert_close(gradients[0], gradients[1])


def test_a_first_call_inside_vmap_does_not_give_the_kernel_up():
    # Regression: dynamo cannot trace inside a torch.func transform; the failed first call
    # marked the kernel uncompilable for good (with a misleading fallback warning).
    model = Banana() & Ring() ** 0.5
    compiled = eb.compile(model, backend="inductor")
    x = torch.randn(5, 2, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jit.JitFallbackWarning)
        in_vmap = torch.func.vmap(lambda row: compiled.score(row[None])[0])(x)
        torch.testing.assert_close(in_vmap, model.score(x))
        torch.testing.assert_close(compiled.score(x[:1]), model.score(x[:1]))
        assert len(jit.compile_seconds()) == 1  # the plain call compiled the kernel
        again = torch.func.vmap(lambda row: compiled.score(row[None])[0])(x)  # traced now
        torch.testing.assert_close(again, in_vmap)


def test_backend_argument():
    model = Banana()
    inductor = eb.compile(model, backend="inductor")
    assert repr(inductor) == "compile(banana, backend='inductor')"
    assert eb.compile(inductor) is inductor  # None keeps the backend
    assert eb.compile(inductor, backend="eager").backend == "eager"
    assert eb.compile(model).backend == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        eb.compile(model, backend="tvm")
    with pytest.raises(TypeError, match="jit must be True or False"):
        MALA(jit=1)


# ----------------------------------------------------------------- samplers

def test_mala_jit_matches_eager_and_never_recompiles():
    model = Banana() & Ring() ** 0.5
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    eager = run(MALA(step_size=0.05), model, x0)
    run(MALA(step_size=0.05, jit=True), model, x0, n_steps=1)  # compiles the kernel
    with torch.compiler.set_stance("fail_on_recompile"):
        # A new sampler object on the same expression and shapes reuses the kernel.
        compiled = run(MALA(step_size=0.05, jit=True), model, x0)
    torch.testing.assert_close(compiled.draws, eager.draws, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(compiled.acceptance_rate, eager.acceptance_rate, rtol=1e-7,
                               atol=1e-9)
    assert [label for label, _ in jit.compile_seconds()] == [
        "mala_update on banana & ring ** 0.5"]


def test_hmc_jit_matches_eager_on_network_leaves():
    _, expr = network_mixture()
    x0 = torch.randn(32, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    sampler = dict(step_size=0.1, n_leapfrog=3, jitter=0.0)
    eager = run(HMC(**sampler), expr, x0, n_steps=10)
    run(HMC(**sampler, jit=True), expr, x0, n_steps=1)  # compiles the kernel
    with torch.compiler.set_stance("fail_on_recompile"):
        # A new run compiles the expression anew (new program nodes, same kernel).
        compiled = run(HMC(**sampler, jit=True), expr, x0, n_steps=10)
    torch.testing.assert_close(compiled.draws, eager.draws, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(compiled.stats["energy_error"], eager.stats["energy_error"],
                               rtol=1e-6, atol=1e-9)


def test_ula_jit_runs_score_only_models():
    drift = eb.from_score(lambda x: -x, 2, name="drift")
    model = Gaussian(torch.ones(2, dtype=F64), 2.0, name="g") & drift ** 0.5
    x0 = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    eager = run(ULA(step_size=0.05), model, x0)
    compiled = run(ULA(step_size=0.05, jit=True), model, x0)
    torch.testing.assert_close(compiled.draws, eager.draws, rtol=1e-7, atol=1e-9)
    assert torch.isnan(compiled.state.energy).all()


@pytest.mark.slow
def test_hmc_jit_with_jitter_and_warmup_matches_eager():
    """One kernel per trajectory length, plus step-size and mass adaptation in warmup.

    On a Gaussian the leapfrog map is linear and stable, so rounding differences stay at
    rounding level; on the banana with the large steps early warmup tries, trajectories
    are chaotic and amplify them ~3x per step (eager runs with reordered arithmetic
    part ways the same), so paths there agree only for a few steps.
    """
    model = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    runs = [eb.sample(model, HMC(step_size=0.2, n_leapfrog=5, jit=flag), x0=x0, n_steps=20,
                      warmup=40, generator=torch.Generator().manual_seed(3), progress=False)
            for flag in (False, True)]
    torch.testing.assert_close(runs[1].draws, runs[0].draws, rtol=1e-6, atol=1e-8)
    lengths = {int(n) for n in runs[1].stats["n_leapfrog"]}
    assert len(jit.compile_seconds()) == len(lengths) > 1


def test_nuts_jit_matches_eager_through_warmup_and_never_recompiles(monkeypatch):
    """One kernel per block size (and compact batch size), compiled once, serves every
    leaf, tree depth, chain mask and adapted metric.

    Eager NUTS evaluates only the growing chains once they are at most half of them,
    the kernels step every row of their batch: the agreement also checks that the
    masked rows' results go unused. On the funnel the 64 chains' trees are uneven, so
    the deep doublings of the few chains still growing run as a compact batch of 16
    rows. The trees (n_leapfrog per chain and step) must be the same; a rounding
    difference could in principle flip one uniform comparison, which at 1e-16
    relative differences has probability ~1e-13 per comparison.
    """
    model = Funnel(4, scale=1.5)
    x0 = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0))

    def nuts_run(flag: bool) -> eb.samplers.Samples:
        return eb.sample(model, NUTS(step_size=0.3, jit=flag), x0=x0, n_steps=10,
                         warmup=25, generator=torch.Generator().manual_seed(2),
                         progress=False)

    eager = nuts_run(False)
    counters.clear()
    precompiled = []
    precompile = jit.precompile

    def counting(*args):
        precompiled.append(1)
        return precompile(*args)

    monkeypatch.setattr(jit, "precompile", counting)
    nuts_run(True)  # compiles the kernels (ahead of time where torch can)
    # Each kernel traced once, whichever block of a tree its first call was (dynamo
    # guards on aliasing between inputs: a first block's must match the later ones').
    traced = [kernel.traced for table in jit._kernels.values() for kernel in table.values()]
    assert counters["frames"]["total"] == sum(traced)
    assert len(precompiled) + sum(traced) == len(jit.compile_seconds())
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled = nuts_run(True)
    assert torch.equal(compiled.chain_stats["n_leapfrog"], eager.chain_stats["n_leapfrog"])
    torch.testing.assert_close(compiled.draws, eager.draws, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(compiled.acceptance_rate, eager.acceptance_rate, rtol=1e-7,
                               atol=1e-9)
    # The first three doublings (1, 2 and 4 leaves) one kernel, then blocks of 4 over
    # all 64 chains and over the compact batch, whose subtree one more kernel merges.
    assert sorted(label for label, _ in jit.compile_seconds()) == [
        *["_block_update on funnel"] * 2, "_first_doublings_update on funnel",
        "_merge_rows on funnel"]


@pytest.mark.slow
@pytest.mark.skipif(
    _dropped_guard_types() is None or not hasattr(torch.compile(lambda x: x), "aot_compile"),
    reason="needs torch.compile(...).aot_compile")
def test_nuts_precompiled_kernels_give_dynamos_draws_bit_for_bit(monkeypatch):
    """Inside ``sample``, on request, the kernels are compiled ahead of time and called
    without dynamo (``ebmalgebra.precompile``); through dynamo instead (the default) the run is
    the same to the bit: draws, per-step and per-chain statistics, tuned step size and
    metric, and the generator's state. On the funnel's uneven trees every kernel runs
    (first doublings, full and compact blocks, the compact merge)."""
    model = Funnel(4, scale=1.5)
    x0 = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0))

    def nuts_run() -> tuple[eb.samplers.Samples, torch.Tensor]:
        generator = torch.Generator().manual_seed(2)
        samples = eb.sample(model, NUTS(step_size=0.3, jit=True), x0=x0, n_steps=10,
                            warmup=25, generator=generator, progress=False)
        return samples, generator.get_state()

    monkeypatch.setenv(jit.PRECOMPILE_ENV, "1")
    precompiled, precompiled_state = nuts_run()
    kernels = [kernel for table in jit._kernels.values() for kernel in table.values()]
    assert kernels and all(kernel.precompiled is not None for kernel in kernels)
    jit.clear_cache()
    monkeypatch.delenv(jit.PRECOMPILE_ENV)
    dynamo, dynamo_state = nuts_run()
    assert not any(kernel.precompiled is not None for table in jit._kernels.values()
                   for kernel in table.values())
    assert torch.equal(precompiled.draws, dynamo.draws)
    assert torch.equal(precompiled_state, dynamo_state)
    for found, expected in ((precompiled.stats, dynamo.stats),
                            (precompiled.chain_stats, dynamo.chain_stats)):
        assert found.keys() == expected.keys()
        assert all(torch.equal(found[name], expected[name]) for name in found)
    assert torch.equal(precompiled.state.step_size, dynamo.state.step_size)
    assert torch.equal(precompiled.state.metric.inverse_mass, dynamo.state.metric.inverse_mass)


def test_nuts_rejects_a_jit_flag_that_is_not_a_bool():
    with pytest.raises(TypeError, match="jit must be True or False"):
        NUTS(jit="yes")


@pytest.mark.slow
def test_random_walk_jit_matches_eager():
    model = Banana()
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    eager = run(RandomWalkMH(step_size=0.5), model, x0)
    compiled = run(RandomWalkMH(step_size=0.5, jit=True), model, x0)
    torch.testing.assert_close(compiled.draws, eager.draws, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------- fallback

def exact_fallback_checks(model, x) -> None:
    """Fallback results are the eager results, bit for bit."""
    compiled = eb.compile(model, backend="inductor")
    expected = eb.compile(model).energy_and_score(x)
    actual = compiled.energy_and_score(x)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))
    x0 = x[:16]
    eager = run(MALA(step_size=0.05), model, x0, n_steps=5)
    fallback = run(MALA(step_size=0.05, jit=True), model, x0, n_steps=5)
    assert torch.equal(fallback.draws, eager.draws)
    assert jit.compile_seconds() == []


def test_environment_variable_forces_the_eager_path_with_one_warning(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert jit.unavailable_reason() == f"{DISABLE_ENV} is set"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact_fallback_checks(Banana(), torch.randn(32, 2, dtype=F64))
    messages = [str(w.message) for w in caught if issubclass(w.category, JitFallbackWarning)]
    assert len(messages) == 1 and DISABLE_ENV in messages[0]


def test_missing_cpp_compiler_falls_back():
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}), \
            pytest.warns(JitFallbackWarning, match="no working C\\+\\+ compiler"):
        exact_fallback_checks(Ring(), torch.randn(32, 2, dtype=F64))


def test_untraceable_leaf_falls_back_with_a_warning_naming_it():
    def energy(x):
        # .item() reads a value on the host: dynamo must break the graph there.
        return 0.5 * (x * x).sum(-1) * (1.0 + 0.0 * x.sum().item())

    model = eb.from_energy(energy, 2, name="host_sync") & Banana()
    x = torch.randn(16, 2, dtype=F64)
    with pytest.warns(JitFallbackWarning, match="could not compile .* on host_sync & banana"):
        energy_value, score = eb.compile(model, backend="inductor").energy_and_score(x)
    expected = eb.compile(model).energy_and_score(x)
    assert torch.equal(energy_value, expected[0]) and torch.equal(score, expected[1])


# ----------------------------------------------------------------- training

@pytest.mark.slow
def test_denoising_score_matching_jit_matches_eager_loss_and_gradients():
    """The training kernel (forward with the functional reverse pass, and its backward)
    gives the eager loss and parameter gradients; its cold compile takes ~25 s."""
    from ebmalgebra.learning.score_matching import denoising_score_matching

    nets, expr = network_mixture()
    x = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    gradients = []
    for flag in (False, True):
        for net in nets:
            net.zero_grad()
        loss = denoising_score_matching(expr, x, sigma=0.3, jit=flag,
                                        generator=torch.Generator().manual_seed(1))
        loss.backward()
        gradients.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                          for net in nets for p in net.parameters()])
        gradients[-1].append(loss.detach())
    for compiled, eager in zip(gradients[1], gradients[0], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)
    assert [label for label, _ in jit.compile_seconds()] == [
        "_denoising_objective on a & b ** 0.5 | 2 * c (training)"]


def test_models_with_a_support_compile_their_pulled_back_score():
    """A model on (0, ∞) is sampled through its pushforward to ℝ, whose score is pulled
    back with ``torch.autograd.grad`` eagerly, which dynamo cannot trace; compiled, the
    pushforward differentiates its energy with ``torch.func.vjp``. The step must
    compile (no fallback warning) and agree with the eager chain. A second ``sample()``
    of the model runs the same pushforward, so its kernel is reused, not traced again."""
    shape = torch.tensor([2.0, 5.0], dtype=F64)
    model = eb.from_log_prob(lambda x: ((shape - 1) * x.log() - x).sum(-1), 2, name="gamma",
                             support=torch.distributions.constraints.positive)
    x0 = 1.0 + torch.rand(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    runs = []
    for flag in (False, True, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", JitFallbackWarning)
            runs.append(run(MALA(step_size=0.3, jit=flag), model, x0))
    torch.testing.assert_close(runs[1].draws, runs[0].draws, rtol=1e-7, atol=1e-9)
    assert torch.equal(runs[2].draws, runs[1].draws)
    assert len(jit.compile_seconds()) == 1


def test_distribution_leaves_compile_without_graph_breaks():
    """A validating torch distribution on (0, ∞), sampled through its bijection: the
    leaf's support check and torch's validation of values would each read a mask on the
    host (a graph break, so a fallback to eager); compiled, neither does, and the draws
    are the eager chain's."""
    gamma = torch.distributions.Independent(torch.distributions.Gamma(
        torch.tensor([2.0, 5.0], dtype=F64), torch.tensor([3.0, 1.0], dtype=F64),
        validate_args=True), 1, validate_args=True)
    model = eb.from_distribution(gamma, name="gamma")
    x0 = 1.0 + torch.rand(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    eager, compiled = eager_and_compiled_draws(model, 0.3, seed=1, x0=x0, n_steps=20)
    torch.testing.assert_close(compiled, eager, rtol=1e-7, atol=1e-9)
    assert gamma._validate_args and gamma.base_dist._validate_args


def test_compiling_leaves_torchs_default_validation_of_distributions_as_it_was():
    # Dynamo's first compile in a process sets torch.distributions' default validate_args
    # to False; a jit=True run must not silently switch off validation of the user's
    # later distributions. A fresh process, since torch patches once per process.
    script = (
        "import torch, ebmalgebra as eb\n"
        "from ebmalgebra.samplers import MALA\n"
        "from ebmalgebra.targets import Gaussian\n"
        "assert torch.distributions.Distribution._validate_args\n"
        "eb.sample(Gaussian(torch.zeros(2), 1.0), MALA(step_size=0.1, jit=True),\n"
        "          x0=torch.zeros(4, 2), n_steps=3, progress=False)\n"
        "print(torch.distributions.Distribution._validate_args)\n"
        "torch.distributions.Normal(0.0, -1.0)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, env={**os.environ, DISABLE_ENV: ""})
    assert result.stdout.strip() == "True", result.stderr
    assert "ValueError" in result.stderr and "scale" in result.stderr


def _distribution_models():
    D = torch.distributions
    ones = torch.ones(3, dtype=F64)
    gamma = eb.from_distribution(D.Independent(D.Gamma(2 * ones, ones), 1), name="g")
    return {
        "beta": eb.from_distribution(D.Independent(D.Beta(2 * ones, 3 * ones), 1)),
        "dirichlet": eb.from_distribution(D.Dirichlet(torch.ones(4, dtype=F64))),
        "mvn": eb.from_distribution(D.MultivariateNormal(0 * ones, torch.eye(3, dtype=F64))),
        "lognormal": eb.from_distribution(D.Independent(D.Normal(0 * ones, ones), 1)
                                          ).pushforward(D.transforms.ExpTransform()),
        "product": gamma & eb.from_distribution(D.Independent(D.Gamma(3 * ones, ones), 1)),
    }


@pytest.mark.parametrize("name", sorted(_distribution_models()))
def test_models_of_torch_distributions_compile_to_the_eager_chain(name):
    # Constrained supports (through their bijections), torch's own bijections and
    # products of such leaves all compile without a fallback to eager.
    eager, compiled = eager_and_compiled_draws(_distribution_models()[name], 0.05, seed=4,
                                               n_chains=8, n_steps=8)
    # Default starts are float32 draws: compiled arithmetic rounds differently there.
    tolerance = 1e-5 if eager.dtype == torch.float32 else 1e-8
    torch.testing.assert_close(compiled, eager, rtol=tolerance, atol=tolerance)
