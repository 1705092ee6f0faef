"""Chains and training sharded over 2 processes (gloo on the CPU) against one process.

One pair of worker processes runs every scenario below under
``torch.distributed`` (launched as ``python tests/test_distributed.py RANK ...``
with a fresh port, a process-group timeout and a wall-clock limit, so a hang fails
instead of blocking CI) and saves what each rank saw; the tests compare it with
the same scenario run here in one process, without a process group.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import ebmalgebra
from ebmalgebra import diagnostics
from ebmalgebra.distributed import ChainShard, DistributedObjective, any_chain
from ebmalgebra.learning import MLPEnergy, as_model, denoising_score_matching, fit
from ebmalgebra.normalize import estimate_log_z
from ebmalgebra.samplers import (
    HMC,
    MALA,
    NUTS,
    SMC,
    ULA,
    AnnealedLangevin,
    NonFiniteError,
    ParallelTempering,
    RandomWalkMH,
)
from ebmalgebra.targets import Bar, Gaussian, Ring

WORLD_SIZE = 2
N_CHAINS = 7  # uneven on purpose: rank 0 runs chains 0–3, rank 1 chains 4–6
GROUP_TIMEOUT = timedelta(seconds=60)
WALL_CLOCK_LIMIT = 240.0
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- scenarios
# Each runs identically in one process and on every rank of the group.

def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_mala(group: dist.ProcessGroup | None = None) -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Ring() & Bar(), MALA(step_size=0.05, adapt_step_size=False),
                             n_chains=N_CHAINS, n_steps=40, generator=_seed(0), group=group)


def run_hmc() -> ebmalgebra.samplers.Samples:
    # Jittered path lengths: the draw of L must stay in lockstep across ranks too.
    return ebmalgebra.sample(Gaussian(torch.zeros(2), torch.tensor([0.5, 2.0])),
                             HMC(step_size=0.2, n_leapfrog=5, jitter=0.4, adapt_step_size=False,
                                 adapt_mass=False),
                             n_chains=N_CHAINS, n_steps=30, generator=_seed(1))


def run_nuts() -> ebmalgebra.samplers.Samples:
    # Chains grow trees of different depths: the doubling must stop on all ranks' chains.
    return ebmalgebra.sample(Ring() & Bar(), NUTS(step_size=0.1, adapt_step_size=False,
                                                  adapt_mass=False),
                             n_chains=N_CHAINS, n_steps=8, generator=_seed(12))


def run_ula() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Ring() & Bar(), ULA(step_size=0.01), n_chains=N_CHAINS,
                             n_steps=20, generator=_seed(9))


def run_mh() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Ring() & Bar(), RandomWalkMH(step_size=0.3, adapt_step_size=False),
                             n_chains=N_CHAINS, n_steps=20, generator=_seed(10))


def run_mala_per_chain() -> ebmalgebra.samplers.Samples:
    # One step size per chain of all ranks: each rank takes its own.
    steps = torch.linspace(0.02, 0.08, N_CHAINS)
    return ebmalgebra.sample(Ring() & Bar(), MALA(step_size=steps, adapt_step_size=False),
                             n_chains=N_CHAINS, n_steps=20, generator=_seed(13))


def run_ula_per_chain() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Ring() & Bar(), ULA(step_size=0.01,
                                                 noise_scale=torch.linspace(0.05, 0.2, N_CHAINS)),
                             n_chains=N_CHAINS, n_steps=20, generator=_seed(14))


def run_hmc_dense_adapted() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Bar(length=2.0, width=0.3, angle=0.6), HMC(step_size=0.2,
                             n_leapfrog=4, metric="dense"), n_chains=N_CHAINS, n_steps=10,
                             warmup=120, generator=_seed(11))


def run_hmc_adapted() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Gaussian(torch.zeros(2), torch.tensor([0.5, 2.0])),
                             HMC(step_size=0.3, n_leapfrog=4), n_chains=N_CHAINS, n_steps=10,
                             warmup=120, generator=_seed(2))


def run_mala_adapted() -> ebmalgebra.samplers.Samples:
    return ebmalgebra.sample(Ring() & Bar(), MALA(step_size=0.3), n_chains=N_CHAINS,
                             n_steps=10, warmup=60, generator=_seed(3))


def run_annealed() -> ebmalgebra.samplers.Samples:
    target = Ring() & Bar()
    sampler = AnnealedLangevin(models=[target ** 0.2, target ** 0.5], steps_per_level=6,
                               step_size=0.05, mala=True, adapt_step_size=True)
    return ebmalgebra.sample(target, sampler, n_chains=N_CHAINS, warmup=18, n_steps=12,
                             generator=_seed(4))


def _shell_energy(x: torch.Tensor) -> torch.Tensor:
    """½‖x‖², but NaN on the shell 40 < ‖x‖ < 45."""
    radius = x.norm(dim=-1)
    return torch.where((radius > 40) & (radius < 45), math.nan, 0.5 * radius.square())


def run_nonfinite() -> str:
    """Only chain 6 (on rank 1) starts at ‖x‖ = 45.5: MALA's proposal mean
    x(1 − ε) = 40.95 lands in the NaN shell at the first step; the others stay near 0."""
    x0 = torch.zeros(N_CHAINS, 2)
    x0[6, 0] = 45.5
    model = ebmalgebra.from_energy(_shell_energy, 2, name="shell")
    try:
        ebmalgebra.sample(model, MALA(step_size=0.1, adapt_step_size=False), x0=x0, n_steps=3,
                          generator=_seed(5), on_nonfinite="raise")
    except NonFiniteError as error:
        return str(error)
    return "no error"


def run_tempering() -> str:
    try:
        ebmalgebra.sample(Ring(), ParallelTempering(betas=[1.0, 0.5]), n_chains=N_CHAINS,
                          n_steps=2, generator=_seed(8))
    except ebmalgebra.CompositionError as error:
        return str(error)
    return "no error"


def run_disagreements(rank: int) -> list[str]:
    """A generator seeded with the rank, then an x0 holding only a rank's own chains."""
    messages = []
    for options in ({"n_chains": N_CHAINS, "generator": _seed(rank)},
                    {"x0": torch.zeros(4 - rank, 2), "generator": _seed(0)}):
        try:
            ebmalgebra.sample(Ring() & Bar(), MALA(step_size=0.1), n_steps=1, **options)
        except ValueError as error:
            messages.append(str(error))
        else:
            messages.append("no error")
    return messages


BATCH, SIGMA = 8, 0.3


def _dsm_setup() -> tuple[MLPEnergy, torch.Tensor]:
    torch.manual_seed(6)
    net = MLPEnergy(2, hidden=(16, 16))
    data = torch.randn(BATCH, 2, generator=_seed(7))
    return net, data


def run_ddp_dsm_step(rank: int) -> dict[str, torch.Tensor | None]:
    """One DDP step of DSM: rank r takes rows [4r, 4r + 4) and noise seeded 100 + r."""
    net, data = _dsm_setup()
    model = as_model(net, name="net")
    objective = DistributedObjective(model, denoising_score_matching, sigma=SIGMA)
    objective(model, data.chunk(WORLD_SIZE)[rank], generator=_seed(100 + rank)).backward()
    return {name: p.grad for name, p in net.named_parameters()}


LEARNING_RATE = 0.1


def run_ddp_fit(rank: int) -> dict[str, torch.Tensor]:
    """``fit`` for one epoch of one batch per rank, plain SGD, generator seeded 200 + r."""
    net, data = _dsm_setup()
    model = as_model(net, name="net")
    objective = DistributedObjective(model, denoising_score_matching, sigma=SIGMA)
    fit(model, data.chunk(WORLD_SIZE)[rank], objective, epochs=1,
        batch_size=BATCH // WORLD_SIZE, optimizer=torch.optim.SGD(net.parameters(),
                                                                  lr=LEARNING_RATE),
        generator=_seed(200 + rank), progress=False)
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def dsm_gradients_by_hand(net: MLPEnergy, rows: torch.Tensor, noise: torch.Tensor,
                          ) -> dict[str, torch.Tensor | None]:
    """∇θ of J = ½ mean ‖s(x + σε) + ε/σ‖², s = −∇ₓE, written out over all rows."""
    noisy = (rows + SIGMA * noise).requires_grad_(True)
    score = -torch.autograd.grad(net(noisy).sum(), noisy, create_graph=True)[0]
    loss = 0.5 * (score + noise / SIGMA).square().sum(1).mean()
    loss.backward()
    return {name: p.grad for name, p in net.named_parameters()}


N_PARTICLES = 33  # rank 0 moves particles 0–16, rank 1 particles 17–32


def _wide_base() -> Gaussian:
    return Gaussian(torch.zeros(2, dtype=torch.float64), 2.5, name="base")


def _particle_run(result) -> dict[str, object]:
    """What a particle run returns that one process must reproduce."""
    keys = ("log_z", "particles", "log_weights", "samples", "eve", "ess", "step_size",
            "acceptance", "resampled", "temperatures", "stderr")
    return {key: getattr(result, key) for key in keys if hasattr(result, key)}


def run_smc_tempering(group: dist.ProcessGroup | None = None) -> dict[str, object]:
    """Adaptive tempering with MALA moves: CESS bisection and resampling on the
    log weights of all particles, particles moved between ranks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # few lineages among 33 particles
        result = SMC(n_steps=3).run(Ring() & Bar(), base=_wide_base(), n_particles=N_PARTICLES,
                                    generator=_seed(20), group=group)
    return _particle_run(result)


def run_smc_hmc_models() -> dict[str, object]:
    """HMC moves with the mass adapted to all particles' spread, resampling at every
    level, along a user-given path of models."""
    target = Ring() & Bar()
    kernel = HMC(step_size=0.2, n_leapfrog=3, jitter=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = SMC(kernel=kernel, n_steps=2, ess_threshold=1.0, resampling="residual").run(
            target, models=[target ** 0.3], base=_wide_base(), n_particles=N_PARTICLES,
            generator=_seed(21))
    return _particle_run(result)


def run_ais() -> dict[str, object]:
    """AIS with a fixed schedule: the default MALA's step size follows the acceptance
    of all particles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 33 particles, 12 temperatures
        return _particle_run(estimate_log_z(Ring() & Bar(), base=_wide_base(),
                                            n_particles=N_PARTICLES, n_temps=12, n_steps=3,
                                            generator=_seed(22)))


def run_ais_fitted() -> dict[str, object]:
    """AIS with the defaults: a base fitted to sharded MALA chains and a pilot schedule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _particle_run(estimate_log_z(Ring() & Bar(), n_particles=N_PARTICLES,
                                            n_steps=2, target_cess=0.9,
                                            generator=_seed(23)))


PARTICLE_SCENARIOS = {"smc_tempering": run_smc_tempering, "smc_hmc_models": run_smc_hmc_models,
                      "ais": run_ais, "ais_fitted": run_ais_fitted}

SAMPLER_SCENARIOS = {"mala": run_mala, "hmc": run_hmc, "annealed": run_annealed,
                     "nuts": run_nuts,
                     "ula": run_ula, "mh": run_mh, "hmc_adapted": run_hmc_adapted,
                     "hmc_dense_adapted": run_hmc_dense_adapted,
                     "mala_adapted": run_mala_adapted, "mala_per_chain": run_mala_per_chain,
                     "ula_per_chain": run_ula_per_chain}


def worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=GROUP_TIMEOUT)
    results: dict[str, object] = {}
    for name, scenario in SAMPLER_SCENARIOS.items():
        samples = scenario()
        results[name] = {
            "draws": samples.draws, "shard": (samples.shard.start, samples.shard.stop),
            "step_size": samples.state.step_size,
            "inverse_mass": getattr(samples.state, "inverse_mass", None),
            "gathered": samples.gather(), "everywhere": samples.gather(dst=None),
            "ess": samples.ess(), "rhat": samples.rhat(), "stats": samples.stats,
            "repr": repr(samples),
        }
    for name, scenario in PARTICLE_SCENARIOS.items():
        results[name] = scenario()
    results["nonfinite"] = run_nonfinite()
    results["tempering"] = run_tempering()
    results["disagreements"] = run_disagreements(rank)
    with ChainShard(N_CHAINS, dist.group.WORLD).activate():
        flagged_on_rank_1 = torch.full((4 - rank,), rank == 1)
        results["any_chain"] = (any_chain(flagged_on_rank_1),
                                any_chain(torch.zeros(4 - rank, dtype=torch.bool)))
    own_groups = [dist.new_group([r]) for r in range(WORLD_SIZE)]
    results["own_group"] = run_mala(group=own_groups[rank]).draws
    results["smc_own_group"] = run_smc_tempering(group=own_groups[rank])
    results["ddp"] = run_ddp_dsm_step(rank)
    results["fit"] = run_ddp_fit(rank)
    dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


# --------------------------------------------------------------------- runner

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    env = _worker_env()
    processes = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for rank in range(WORLD_SIZE)]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=WALL_CLOCK_LIMIT)[0].decode())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    failed = [(rank, log) for rank, (process, log) in enumerate(zip(processes, logs,
                                                                     strict=True))
              if process.returncode != 0]
    assert not failed, "\n".join(f"rank {rank} failed:\n{log}" for rank, log in failed)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single() -> Iterator[dict]:
    """The same scenarios in this process, with no process group."""
    assert not dist.is_initialized()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: reductions may split by thread count
    try:
        yield {name: scenario() for name, scenario in {**SAMPLER_SCENARIOS,
                                                       **PARTICLE_SCENARIOS}.items()}
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------- tests

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mala", "hmc", "annealed", "nuts", "ula", "mh",
                                  "mala_per_chain", "ula_per_chain"])
def test_draws_of_two_processes_are_bit_identical_to_one(ranks, single, name):
    assert [rank[name]["shard"] for rank in ranks] == [(0, 4), (4, 7)]
    sharded = torch.cat([rank[name]["draws"] for rank in ranks], dim=1)
    assert torch.equal(sharded, single[name].draws)
    assert torch.equal(ranks[0][name]["gathered"], single[name].draws)
    assert ranks[1][name]["gathered"] is None
    for index, rank in enumerate(ranks):
        assert torch.equal(rank[name]["everywhere"], single[name].draws)
        assert f"of {N_CHAINS} chains on rank {index}" in rank[name]["repr"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hmc_adapted", "hmc_dense_adapted", "mala_adapted"])
def test_pooled_adaptation_gives_every_rank_the_step_size_and_metric_of_one_process(
        ranks, single, name):
    # Pooled means are summed in float64 and differ from one process's only in the
    # order of summation (~1e-16 relative) before rounding to float32.
    expected = single[name].state
    for rank in ranks:
        local = slice(*rank[name]["shard"])
        torch.testing.assert_close(rank[name]["step_size"], expected.step_size[local],
                                   rtol=1e-6, atol=0)
        if name.startswith("hmc"):
            torch.testing.assert_close(rank[name]["inverse_mass"], expected.inverse_mass,
                                       rtol=1e-6, atol=0)
    # Warmup did adapt: the first step ran at the initial step size.
    assert expected.step_size[0] != single[name].stats["step_size"][0]
    # Rounded to float32, the float64 pooled values agree bit for bit (a mismatch has
    # odds of order 1e-16 / 6e-8 per value), so the draws after warmup do too.
    sharded = torch.cat([rank[name]["draws"] for rank in ranks], dim=1)
    assert torch.equal(sharded, single[name].draws)


@pytest.mark.slow
def test_step_statistics_are_over_all_chains(ranks, single):
    # The acceptance rate of a step is a mean over all chains on every rank.
    for rank in ranks:
        torch.testing.assert_close(rank["mala"]["stats"]["acceptance_rate"],
                                   single["mala"].stats["acceptance_rate"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_ess_and_rhat_of_a_sharded_run_are_those_of_all_draws(ranks, single, name):
    draws = single[name].draws
    for rank in ranks:
        torch.testing.assert_close(rank[name]["ess"], diagnostics.ess(draws), rtol=0, atol=0)
        torch.testing.assert_close(rank[name]["rhat"], diagnostics.rhat(draws), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smc_tempering", "smc_hmc_models", "ais"])
def test_smc_and_ais_with_two_processes_equal_one_process(ranks, single, name):
    # Same seed, same numbers: every rank holds the result of the whole run, and it is
    # that of one process bit for bit (tolerance 0, well inside the 1e-10 asked for).
    expected = single[name]
    if name.startswith("smc"):
        assert bool(expected["resampled"].any())  # particles did move between ranks
    for rank in ranks:
        assert rank[name].keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(rank[name][key], value), key
            else:
                assert rank[name][key] == value, key


@pytest.mark.slow
def test_estimate_log_z_fits_the_same_base_on_every_rank(ranks, single):
    # The base is fitted to MALA chains sharded across the ranks: each rank sees the
    # draws of all chains (without gathering them each rank fitted its own base and
    # the ranks disagreed). The pooled step size is a float64 mean summed per rank,
    # so it may differ from one process's in the last bit: 1e-10 on log Z.
    expected = single["ais_fitted"]
    for rank in ranks:
        assert abs(rank["ais_fitted"]["log_z"] - expected["log_z"]) < 1e-10
        torch.testing.assert_close(rank["ais_fitted"]["particles"], expected["particles"],
                                   rtol=1e-6, atol=1e-6)
    assert torch.equal(ranks[0]["ais_fitted"]["particles"], ranks[1]["ais_fitted"]["particles"])


@pytest.mark.slow
def test_smc_in_a_group_of_one_runs_all_particles_on_its_rank(ranks, single):
    for rank in ranks:
        assert rank["smc_own_group"]["log_z"] == single["smc_tempering"]["log_z"]
        assert torch.equal(rank["smc_own_group"]["particles"],
                           single["smc_tempering"]["particles"])


@pytest.mark.slow
def test_a_nonfinite_chain_on_one_rank_raises_on_every_rank_with_one_message(ranks):
    messages = [rank["nonfinite"] for rank in ranks]
    assert messages[0] == messages[1]
    assert "MALA step 0" in messages[0] and "chain(s) [6]" in messages[0]
    assert run_nonfinite() == messages[0]


@pytest.mark.slow
def test_one_ddp_step_of_dsm_matches_one_process_on_the_concatenated_batch(ranks):
    # Independent reference: the DSM loss written out over all 8 rows, with each
    # half's noise drawn as that rank drew it.
    net, data = _dsm_setup()
    noise = torch.cat([torch.randn(BATCH // WORLD_SIZE, 2, generator=_seed(100 + rank))
                       for rank in range(WORLD_SIZE)])
    expected = dsm_gradients_by_hand(net, data, noise)
    for rank in ranks:
        for name, gradient in expected.items():
            if gradient is None:  # the output bias: a constant in E has no score
                assert rank["ddp"][name] is None
            else:
                torch.testing.assert_close(rank["ddp"][name], gradient, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_fit_with_a_distributed_objective_takes_the_step_of_the_concatenated_batch(ranks):
    # fit shuffles each rank's rows with its generator, then the loss draws the noise.
    net, data = _dsm_setup()
    rows, noise = [], []
    for rank, shard in enumerate(data.chunk(WORLD_SIZE)):
        generator = _seed(200 + rank)
        rows.append(shard[torch.randperm(shard.shape[0], generator=generator)])
        noise.append(torch.randn(shard.shape, generator=generator))
    gradients = dsm_gradients_by_hand(net, torch.cat(rows), torch.cat(noise))
    for rank in ranks:
        for name, parameter in net.named_parameters():
            step = 0.0 if gradients[name] is None else LEARNING_RATE * gradients[name]
            torch.testing.assert_close(rank["fit"][name], parameter.detach() - step, rtol=0,
                                       atol=1e-6)


@pytest.mark.slow
def test_any_chain_looks_at_the_chains_of_every_rank(ranks):
    assert [rank["any_chain"] for rank in ranks] == [(True, False), (True, False)]


@pytest.mark.slow
def test_a_group_of_one_runs_all_chains_on_its_rank(ranks, single):
    for rank in ranks:
        assert torch.equal(rank["own_group"], single["mala"].draws)


@pytest.mark.slow
def test_ranks_that_disagree_on_the_seed_or_the_chains_are_refused_on_every_rank(ranks):
    for rank in ranks:
        seed, chains = rank["disagreements"]
        assert "generator's state differs between ranks" in seed
        assert "different numbers of chains, [4, 3]" in chains


@pytest.mark.slow
def test_a_sampler_that_draws_per_replica_is_refused_on_every_rank(ranks):
    # Parallel tempering draws one row per chain and replica, which no block of
    # global chains can hold; it runs in one process (tests/test_samplers.py).
    for rank in ranks:
        assert "only samplers that draw one row per chain" in rank["tempering"]


def _worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_the_cli_under_torchrun_writes_once_the_samples_of_one_process(tmp_path):
    # `-m --`: torchrun's own parser would take the CLI's `--n` for an abbreviation of
    # its `--nnodes` / `--nproc_per_node` and stop.
    from safetensors.torch import load_file

    command = ["sample", "ring & bar", "--n", "65", "--steps", "40", "--seed", "3", "--out"]
    launches = {
        "one": [sys.executable, "-m", "ebmalgebra"],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={WORLD_SIZE}", "-m", "--", "ebmalgebra"],
    }
    outputs = {}
    for name, launch in launches.items():
        out = tmp_path / f"{name}.safetensors"
        done = subprocess.run([*launch, *command, str(out)], env=_worker_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=WALL_CLOCK_LIMIT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("wrote ") == 1, done.stdout  # rank 0 reports and writes
        outputs[name] = load_file(out)["samples"]
    assert outputs["one"].shape == (65, 2)
    assert torch.equal(outputs["two"], outputs["one"])


@pytest.mark.slow
def test_the_training_example_runs_under_torchrun(tmp_path):
    # DDP over 2 ranks; its single-process run is tests/test_learning_examples.py's.
    out = tmp_path / "train_2d.png"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD_SIZE}", str(ROOT / "examples" /
                                                                 "train_2d.py"),
                           "--tiny", "--out", str(out)], env=_worker_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=WALL_CLOCK_LIMIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("share of samples per mode") == 1, done.stdout  # rank 0 only
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
