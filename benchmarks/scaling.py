"""Scale-out benchmarks: chains sharded over processes with torch.distributed.

Run from the repository root::

    python benchmarks/scaling.py            # ~1–2 minutes
    python benchmarks/scaling.py --quick    # a tiny run that exercises every path

Every process runs one torch thread, on the CPU, in float32; the 1- and
2-process runs are both launched by ``torchrun`` (``python -m
torch.distributed.run``) with the gloo backend and interleaved (1, 2, 1, 2, …)
so that they see the same machine load. Three measurements:

1. **Random numbers** (one process). Sharded runs draw the noise of all N
   chains on every rank and keep their own rows (:mod:`ebmalgebra.distributed`).
   At N = 100,000 chains, this times one step's draws for all chains against the
   draws for N/2 chains (what a per-chain counter-based stream would cost a rank
   of two), for d = 2 and d = 256, next to one MALA step of 50,000 chains on the
   MLP energy of part 2: the extra cost per step per rank.
2. **Throughput** in chain-steps per second of ``MALA`` (fixed step size, no
   warmup) on an MLP energy (2 → 128 → 128 → 1, SiLU) with 10,000 chains, for 1 and 2
   processes. Wall time from a barrier before ``sample`` to one after it, and
   the CPU time of the busiest rank's thread (``time.thread_time``), which
   estimates the wall time on an idle machine when the machine is shared.
3. **Communication of pooled adaptation**, 2 processes: the per-step
   all-reduce of the dual-averaging statistic (``ChainShard.mean``, 8 bytes),
   the per-window all-gather of the Welford moments (``merge_moments``) for a
   diagonal metric in d = 2 and a dense one in d = 256, and the per-step check
   of ``on_nonfinite="raise"`` (``ChainShard.any``), in microseconds per call;
   and the speed-up of 2 processes over 1 for MALA warmup steps with pooled
   step-size adaptation (one all-reduce per step, which also makes the ranks
   wait for each other every step) and with a fixed step size.
4. **SMC across processes**: the wall time of an adaptive tempering SMC run
   (3 MALA moves per level, resampling at every level) from N(0, 3² I) to the
   MLP energy times N(0, 0.3² I) (the MLP alone is nearly flat, hence improper)
   with as many particles as chains in part 2, 1 and 2 processes; and, with 2
   processes, the communication
   of one level: the all-gather of the log-weight increments (8N bytes), of the
   acceptance probabilities after each move (8N bytes), and a resampling's
   all-gather of positions, energies and scores (8N(2d + 1) bytes in float64) for
   d = 2 and d = 256.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ebmalgebra  # noqa: E402
from ebmalgebra.distributed import ChainShard, active_shard  # noqa: E402
from ebmalgebra.learning import MLPEnergy, as_model  # noqa: E402
from ebmalgebra.samplers import MALA, SMC  # noqa: E402
from ebmalgebra.samplers.base import draw_normal, draw_uniform  # noqa: E402
from ebmalgebra.targets import Gaussian  # noqa: E402

try:
    from _timing import median_times
except ImportError:  # run as a module from the repository root
    from benchmarks._timing import median_times

torch.set_num_threads(1)


def mlp_model() -> ebmalgebra.EnergyModel:
    torch.manual_seed(0)
    return as_model(MLPEnergy(2, hidden=(128, 128)), name="mlp")


# ------------------------------------------------------------ 1. random numbers

def random_number_cost(n_chains: int, repeats: int) -> None:
    print(f"1. Random numbers per step at {n_chains:,} chains (one process, one thread)")
    generator = torch.Generator().manual_seed(0)
    mala = MALA(step_size=1e-3, adapt_step_size=False)
    half = n_chains // 2
    state = mala.init(torch.randn(half, 2, generator=generator), mlp_model())
    step_time = median_times({"step": lambda: mala.step(state, generator)},
                             repeats=repeats, inner=1, warmup=1)["step"]
    print(f"   one MALA step of {half:,} chains on the MLP energy: {step_time * 1e3:.2f} ms")
    for dim in (2, 256):
        full = torch.empty(n_chains, dim)
        local = torch.empty(half, dim)
        times = median_times({
            "all chains": lambda like=full: (draw_normal(like, generator),
                                             draw_uniform(like, generator)),
            "half the chains": lambda like=local: (draw_normal(like, generator),
                                                   draw_uniform(like, generator)),
        }, repeats=repeats, inner=3)
        extra = times["all chains"] - times["half the chains"]
        print(f"   d = {dim:3d}: draws for all chains {times['all chains'] * 1e3:.2f} ms, "
              f"for half {times['half the chains'] * 1e3:.2f} ms; extra per rank of two "
              f"{extra * 1e3:.2f} ms"
              + (f" = {100 * extra / step_time:.1f}% of the MALA step above" if dim == 2
                 else ""))


# ------------------------------------------------------------------ 2. workers

def worker(n_chains: int, n_steps: int, n_calls: int) -> None:
    """Runs under torchrun: throughput, and (with 2 ranks) communication costs."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = mlp_model()
    generator = torch.Generator().manual_seed(1)
    sampler = MALA(step_size=1e-3, adapt_step_size=False)
    result: dict[str, float] = {}

    def timed_sample(**options) -> tuple[float, float]:
        dist.barrier()
        wall, cpu = time.perf_counter(), time.thread_time()
        ebmalgebra.sample(model, options.pop("sampler", sampler), n_chains=n_chains,
                          generator=generator, progress=False, **options)
        cpu = time.thread_time() - cpu
        dist.barrier()
        return time.perf_counter() - wall, cpu

    timed_sample(n_steps=2)  # first-call costs out of the timing
    wall, cpu = timed_sample(n_steps=n_steps)
    cpus = [None] * world_size
    dist.all_gather_object(cpus, cpu)
    result.update(wall=wall, cpu=max(cpus))
    # Warmup with and without step-size adaptation. Compare speed-ups, not times: the
    # adapted and fixed runs visit different regions, where float costs differ (an
    # untrained MLP is nearly flat, so adaptation grows the step and the chains
    # travel far), while 1 and 2 processes run bit-identical chains.
    warm_steps = max(n_steps, 20)
    result["warmup_adapted"] = timed_sample(sampler=MALA(step_size=1e-3), n_steps=0,
                                            warmup=warm_steps)[0] / warm_steps
    result["warmup_fixed"] = timed_sample(n_steps=0, warmup=warm_steps)[0] / warm_steps
    dist.barrier()
    start = time.perf_counter()
    run = SMC(n_steps=3, ess_threshold=1.0).run(
        model & Gaussian(torch.zeros(2), 0.3), base=Gaussian(torch.zeros(2), 3.0),
        n_particles=n_chains, generator=torch.Generator().manual_seed(2), progress=False)
    dist.barrier()
    result.update(smc=time.perf_counter() - start, smc_levels=len(run.levels),
                  smc_resamplings=int(run.resampled.sum()), smc_log_z=run.log_z)
    if world_size > 1:
        shard = ChainShard(n_chains, dist.group.WORLD)
        stat = torch.rand(shard.n_local)
        flags = torch.zeros(shard.n_local, dtype=torch.bool)

        def per_call(function) -> float:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(n_calls):
                function()
            return (time.perf_counter() - start) / n_calls

        result["mean"] = per_call(lambda: shard.mean(stat))
        result["any"] = per_call(lambda: shard.any(flags))
        for name, dim, dense in (("moments_diag_2", 2, False), ("moments_dense_256", 256, True)):
            mean = torch.zeros(dim, dtype=torch.float64)
            m2 = torch.eye(dim, dtype=torch.float64) if dense else torch.ones(dim,
                                                                              dtype=torch.float64)
            result[name] = per_call(lambda m=mean, s=m2, d=dense: shard.merge_moments(
                10, m, s, dense=d))
        increments = torch.rand(shard.n_local, dtype=torch.float64)
        result["smc_increments"] = per_call(lambda: shard.all_gather(increments))
        for dim in (2, 256):
            position = torch.rand(shard.n_local, dim, dtype=torch.float64)
            result[f"smc_resampling_{dim}"] = per_call(
                lambda x=position: [shard.all_gather(t) for t in (x, increments, x)])
    assert active_shard() is None
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def launch(n_processes: int, n_chains: int, n_steps: int, n_calls: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n_processes}", __file__, "--worker", "--chains",
               str(n_chains), "--steps", str(n_steps), "--calls", str(n_calls)]
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                            check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def scaling(n_chains: int, n_steps: int, n_calls: int, repeats: int) -> None:
    print(f"\n2. MALA throughput, MLP energy, {n_chains:,} chains, {n_steps} steps, "
          f"median of {repeats} interleaved launches")
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(repeats):
        for n_processes in (1, 2):
            runs[n_processes].append(launch(n_processes, n_chains, n_steps, n_calls))
    rates = {}
    for n_processes, results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        rates[n_processes] = (n_chains * n_steps / wall, n_chains * n_steps / cpu)
        print(f"   {n_processes} process(es): {rates[n_processes][0]:,.0f} chain-steps/s wall, "
              f"{rates[n_processes][1]:,.0f} by the busiest rank's CPU time")
    print(f"   speed-up with 2 processes: {rates[2][0] / rates[1][0]:.2f}x wall, "
          f"{rates[2][1] / rates[1][1]:.2f}x by CPU time "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    comm = {key: statistics.median(r[key] for r in runs[2]) for key in runs[2][0]}
    print("\n3. Communication, 2 processes (gloo, one node), microseconds per call")
    print(f"   dual-averaging statistic, all-reduce of 8 bytes per warmup step: "
          f"{comm['mean'] * 1e6:.0f}")
    print(f"   on_nonfinite='raise' check, all-reduce of 8 bytes per step: "
          f"{comm['any'] * 1e6:.0f}")
    print(f"   Welford moments per window, diagonal d = 2 (P x 40 bytes): "
          f"{comm['moments_diag_2'] * 1e6:.0f}")
    print(f"   Welford moments per window, dense d = 256 (P x 528,392 bytes): "
          f"{comm['moments_dense_256'] * 1e6:.0f}")
    for kind, label in (("warmup_adapted", "with pooled step-size adaptation"),
                        ("warmup_fixed", "with a fixed step size")):
        one, two = (statistics.median(r[kind] for r in runs[n]) for n in (1, 2))
        print(f"   MALA warmup step {label}: 1 process {one * 1e3:.2f} ms, 2 processes "
              f"{two * 1e3:.2f} ms, speed-up {one / two:.2f}x")
    print(f"\n4. SMC, adaptive tempering to the MLP energy & N(0, 0.3² I), {n_chains:,} "
          "particles, resampling at every level")
    for n_processes in (1, 2):
        results = runs[n_processes]
        print(f"   {n_processes} process(es): "
              f"{statistics.median(r['smc'] for r in results):.2f} s, "
              f"{results[0]['smc_levels']} levels, {results[0]['smc_resamplings']} "
              f"resamplings, log Z {results[0]['smc_log_z']:.9f}")
    n_bytes = 8 * n_chains
    print(f"   per level, all-gather of the increments ({n_bytes:,} bytes): "
          f"{comm['smc_increments'] * 1e6:.0f} us; of the acceptance after each move: the same")
    for dim in (2, 256):
        print(f"   per resampling, d = {dim}: all-gather of positions, energies, scores "
              f"({n_bytes * (2 * dim + 1):,} bytes): {comm[f'smc_resampling_{dim}'] * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every code path")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chains", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if args.worker:
        worker(args.chains, args.steps, args.calls)
        return
    if args.quick:
        random_number_cost(2_000, repeats=3)
        scaling(1_000, n_steps=5, n_calls=20, repeats=1)
    else:
        random_number_cost(100_000, repeats=7)
        scaling(args.chains, args.steps, args.calls, repeats=3)


if __name__ == "__main__":
    main()
