"""Command-line interface: compose pretrained models and sample them, offline.

    python -m ebmalgebra demo                            # glasses & hats: PNG grid + table
    python -m ebmalgebra zoo                             # the pretrained models
    python -m ebmalgebra sample "glasses & hat" --n 64 --out grid.png
    python -m ebmalgebra info "glasses & (face & ~hat) ** 0.35"

EXPR combines zoo names and numbers with ``&`` (product), ``|`` (mixture),
``*`` (weight), ``**`` (temperature), ``~`` (inverse), parentheses and calls of
named operators such as ``without(glasses, hat, face, log_odds=8)``, with
Python's precedence. It is parsed by a small grammar, never evaluated as
Python. A bad expression exits with status 2 and points at the position.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ebmalgebra.base import EnergyModel
from ebmalgebra.distributed import is_leader, launched_group
from ebmalgebra.errors import EBMAlgebraError
from ebmalgebra.expression_parser import ExpressionError
from ebmalgebra.leaves import one
from ebmalgebra.program import format_program
from ebmalgebra.zoo.demo import DEMO_ALPHA, DEMO_LOG_ODDS, run_demo
from ebmalgebra.zoo.faces import TABLE_COLUMNS

__all__ = ["build_parser", "format_program", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # what the shell reports for a process killed by SIGPIPE


class _Failure(Exception):
    """A user-facing error: message and exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------- helpers
def _parse(text: str) -> EnergyModel:
    from ebmalgebra import zoo

    try:
        return zoo.parse(text)
    except ExpressionError as error:
        raise _Failure(f"invalid expression: {error}", EXIT_USAGE) from None


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _check_out(text: str, *, tensors: bool = True) -> Path:
    """The ``--out`` path, checked before any sampling: a picture format matplotlib
    writes, or (with ``tensors``) ``.safetensors``, in a writable folder."""
    from ebmalgebra.plotting import check_picture_path

    out = Path(text)
    if not (tensors and out.suffix == ".safetensors"):
        try:
            check_picture_path(out, "--out")
        except ValueError as error:
            also = ", or .safetensors for the samples tensor" if tensors else ""
            raise _Failure(f"{error}{also}", EXIT_USAGE) from None
    _check_writable(out)
    return out


def _check_writable(out: Path) -> None:
    """Refuse, before any sampling, an ``--out`` that is a folder or lies in no writable
    folder (its missing folders are created when writing)."""
    if out.is_dir():
        raise _Failure(f"--out {str(out)!r} is a folder; give a file name", EXIT_USAGE)
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise _Failure(f"--out {str(out)!r}: cannot write into {str(folder)!r}, which is not "
                       "a writable folder", EXIT_USAGE)


def _write_samples(samples: torch.Tensor, title: str, out: Path) -> None:
    """Save samples: a tensor file (``.safetensors``) or a picture (images grid / 2-D scatter)."""
    from ebmalgebra.plotting import samples_figure, save_figure

    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"samples": samples.contiguous()}, str(out), metadata={"expression": title})
        return
    try:
        figure = samples_figure(samples, title)
    except ValueError as error:
        raise _Failure(f"{error}; use an --out ending in .safetensors") from None
    save_figure(figure, out)


def _describe_samples(model: EnergyModel, samples: torch.Tensor) -> str:
    from ebmalgebra.zoo.faces import attribute_rates, is_face_model

    if is_face_model(model):
        rates = attribute_rates(samples)
        return "  ".join(f"{title} {_percent(rates[key])}" for key, title in TABLE_COLUMNS)
    flat = samples.reshape(len(samples), -1)
    finite = torch.isfinite(flat).all(dim=1)
    kept = flat[finite]

    def leading(values: torch.Tensor) -> str:
        return "(" + ", ".join(f"{v:.2f}" for v in values.tolist()[:4]) + ")"

    # The sample std divides by n − 1, so it needs two finite samples.
    mean = leading(kept.mean(0)) if len(kept) > 0 else "n/a"
    std = leading(kept.std(0)) if len(kept) > 1 else "n/a"
    return f"mean {mean}, std {std}, non-finite {int((~finite).sum())}"


def _draw(model: EnergyModel, n: int, kernel: str, steps: int | None, seed: int,
          progress: bool | None = None) -> torch.Tensor:
    from ebmalgebra.zoo import draw

    if model.event_shape is None:
        # Zoo models all have a shape; only ``one`` (what ``a ** 0`` simplifies to), alone,
        # weighted or mixed with itself, is shape-free: a constant energy, no x to sample.
        raise _Failure(f"the expression simplifies to {model!r}, a constant model: its energy "
                       "does not depend on x (a ** 0 is the identity `one`), so it has no "
                       "event shape and cannot be sampled", EXIT_USAGE)
    try:
        return draw(model, n, kernel=kernel, steps=steps, generator=_generator(seed),
                    progress=progress)
    except ValueError as error:
        raise _Failure(str(error), EXIT_USAGE) from None


# -------------------------------------------------------------------- commands
def _zoo(args: argparse.Namespace) -> int:
    from ebmalgebra import zoo

    names = zoo.list()
    if not names:
        raise _Failure("no zoo models are installed (ebmalgebra/zoo/weights is empty); "
                       "train them with scripts/train_zoo.py and scripts/train_zoo_2d.py")
    print(f"{'name':8}  {'event shape':11}  {'parameters':>10}  {'size':>7}  description")
    for name in names:
        card = zoo.card(name)
        size = (zoo.WEIGHTS / f"{name}.safetensors").stat().st_size / 1e6
        shape = "×".join(str(d) for d in card.get("event_shape", [])) or "?"
        parameters = card.get("parameters")
        count = f"{parameters:,}" if isinstance(parameters, int) else "?"
        description = card.get("description", "")
        print(f"{name:8}  {shape:11}  {count:>10}  {size:5.1f}MB  {description}")
    print("\ncompose them, e.g.: python -m ebmalgebra sample \"glasses & hat\" --out grid.png")
    return EXIT_OK


def _check_smc_count(args: argparse.Namespace) -> None:
    if args.sampler == "smc" and args.n < 2:
        raise _Failure(f"--n must be at least 2 with --sampler smc, which resamples among the "
                       f"samples; got {args.n}", EXIT_USAGE)


def _sample(args: argparse.Namespace) -> int:
    _check_smc_count(args)
    out = _check_out(args.out)
    model = _parse(args.expression)
    start = time.perf_counter()
    samples = _draw(model, args.n, args.sampler, args.steps, args.seed)
    seconds = time.perf_counter() - start
    if not is_leader():  # under torchrun every rank holds all samples; rank 0 writes
        return EXIT_OK
    _write_samples(samples, repr(model), out)
    print(f"{model!r}: {args.n} samples ({args.sampler}, seed {args.seed}) in {seconds:.1f} s")
    print(f"  {_describe_samples(model, samples)}")
    print(f"wrote {out}")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from ebmalgebra import zoo
    from ebmalgebra.zoo.sampling import is_noise_conditioned

    model = _parse(args.expression)
    shape = tuple(model.event_shape) if model.event_shape is not None else "any"
    print(f"expression    {model!r}")
    kind = "noise-conditioned E(x, σ)" if is_noise_conditioned(model) else "energy E(x)"
    print(f"event shape   {shape}, {kind}")
    print(f"compiled      {format_program(model)}")
    print("capabilities")
    for line in model.explain().splitlines():
        print(f"  {line}")
    print("zoo models")
    # ``one`` is the identity left by ``a ** 0``, not a model of the zoo.
    zoo_leaves = [leaf for leaf in model.leaves() if leaf is not one]
    if not zoo_leaves:
        print("  none")
    for leaf in zoo_leaves:
        card = zoo.card_of(leaf) or {}
        training = card.get("training", {})
        facts = [card.get("description", "")]
        if isinstance(card.get("parameters"), int):
            facts.append(f"{card['parameters']:,} parameters")
        if "seconds" in card:
            facts.append(f"trained {card['seconds']:.0f} s")
        if "loss" in training:
            facts.append(str(training["loss"]))
        print(f"  {leaf!r}: {'; '.join(f for f in facts if f)}")
    if is_noise_conditioned(model):
        plan = zoo.plan_for(model)
        print(f"sampling      annealed Langevin over {plan.n_levels} noise levels "
              f"σ = {plan.sigma_max:g} → {plan.sigma_min:g}, {plan.steps_per_level} steps "
              f"each, MALA below σ = {plan.mala_below:g}, step {plan.step_size:.3g} at σ_min")
    if args.n > 0:
        samples = _draw(model, args.n, "annealed" if is_noise_conditioned(model) else "mala",
                        None, args.seed)
        print(f"samples       {args.n} (seed {args.seed}): {_describe_samples(model, samples)}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise _Failure("--n must be positive", EXIT_USAGE)
    _check_smc_count(args)
    out = _check_out(args.out, tensors=False)
    run_demo(n=args.n, alpha=args.alpha, log_odds=args.log_odds, seed=args.seed,
             steps=args.steps, sampler=args.sampler, out=out)
    return EXIT_OK


# ------------------------------------------------------------------------ main
def _seed(text: str) -> int:
    """A seed ``torch.Generator.manual_seed`` takes: an integer in [−2⁶³, 2⁶⁴)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not -2**63 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected a seed in [-2**63, 2**64), got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer ≥ 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``ebmalgebra`` argument parser (subcommands demo, zoo, sample, info)."""
    from ebmalgebra.zoo.sampling import KERNELS

    parser = argparse.ArgumentParser(
        prog="ebmalgebra", description=__doc__.split("\n\n")[0],
        epilog="EXPR: zoo names and numbers with & | ~ ** *, parentheses and operator "
               "calls, e.g. \"glasses & (face & ~hat) ** 0.35\" or \"without(glasses, hat, "
               "face, log_odds=8)\". Run `ebmalgebra zoo` for the names.")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch CPU threads (default 1: these small batched networks gain "
                             "little from more, and torch's threads slow down many-fold when "
                             "another process shares the cores)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the glasses & hats story: PNG grid and a "
                               "table of attribute rates")
    demo.add_argument("--n", type=_positive_int, default=256,
                      help="samples per expression (default 256)")
    demo.add_argument("--log-odds", type=float, default=DEMO_LOG_ODDS,
                      help=f"strength of NOT in without(glasses, hat, face, log_odds=...) "
                           f"(default {DEMO_LOG_ODDS:g})")
    demo.add_argument("--alpha", type=float, default=DEMO_ALPHA,
                      help=f"strength of NOT in the comparison row glasses & (face & ~hat) "
                           f"** alpha (default {DEMO_ALPHA})")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="moves per chain over all noise levels (default 300)")
    demo.add_argument("--sampler", choices=("annealed", "smc"), default=None,
                      help="sample every row by this (default: annealed Langevin; smc also "
                           "prints log Z and ESS per row)")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    demo.add_argument("--out", default="ebmalgebra_demo.png",
                      help="PNG file to write (default ebmalgebra_demo.png)")
    demo.set_defaults(run=_demo)

    zoo_command = commands.add_parser("zoo", help="list the pretrained models")
    zoo_command.set_defaults(run=_zoo)

    sample = commands.add_parser("sample", help="draw samples of EXPR and save a picture")
    sample.add_argument("expression", metavar="EXPR", help='e.g. "glasses & hat ** 2"')
    sample.add_argument("--n", type=_positive_int, default=64, help="samples (default 64)")
    sample.add_argument("--sampler", choices=KERNELS, default="annealed",
                        help="annealed (default): Langevin from high to low noise, MALA at "
                             "low noise; mala / ula: that kernel at every noise level; hmc: "
                             "annealed, then HMC at the lowest noise; smc: sequential Monte "
                             "Carlo over the same noise levels (MALA moves, importance weights, "
                             "resampling)")
    sample.add_argument("--steps", type=_positive_int, default=None,
                        help="total Langevin steps (annealed, mala, ula) or HMC steps")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    sample.add_argument("--out", default="grid.png",
                        help="output: .png (image grid or scatter plot) or .safetensors "
                             "(the samples tensor); default grid.png")
    sample.set_defaults(run=_sample)

    info = commands.add_parser("info", help="compiled form, capabilities and sample "
                               "statistics of EXPR")
    info.add_argument("expression", metavar="EXPR")
    info.add_argument("--n", type=_non_negative_int, default=64,
                      help="samples for the statistics (default 64; 0 skips sampling)")
    info.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    0 ok, 1 failure, 2 bad usage or expression, 141 when the reader of stdout goes
    away early (``ebmalgebra zoo | head -2``).
    """
    try:
        try:
            return _run(argv)
        finally:
            # Flush here, not at interpreter exit, so a closed pipe is caught below.
            sys.stdout.flush()
    except BrokenPipeError:
        # Stop quietly, like a C tool killed by SIGPIPE, and with its status: the output
        # was cut short, which ``set -o pipefail`` should see as it does for ``cat``.
        # Point stdout at devnull so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        # One line in the CLI's own voice, not Python's "file:line: Category:" form.
        print(f"ebmalgebra {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings(), launched_group():  # a group under torchrun
            warnings.showwarning = show
            return args.run(args)
    except _Failure as failure:
        print(f"ebmalgebra {args.command}: error: {failure}", file=sys.stderr)
        return failure.status
    except EBMAlgebraError as error:
        print(f"ebmalgebra {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        raise  # main's quiet stop
    except OSError as error:  # e.g. writing --out: a full disk, a read-only file system
        print(f"ebmalgebra {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
