"""Tests for ebmalgebra/validation.py and the one error vocabulary of ebmalgebra/errors.py.

A bad value of any public argument raises ``ArgumentError`` (a ``ValueError`` and an
``EBMAlgebraError``) with ``"<argument> must be <constraint>, got <value>"``; a wrong
type raises ``ArgumentTypeError`` (a ``TypeError``) in the same form.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import validation
from ebmalgebra.apps.inverse import posterior_estimate
from ebmalgebra.apps.likelihood import GaussianLikelihood
from ebmalgebra.diagnostics import ess
from ebmalgebra.errors import (
    ArgumentError,
    ArgumentTypeError,
    EBMAlgebraError,
    ExpressionError,
    NonFiniteError,
    SerializationError,
    ZooError,
)
from ebmalgebra.learning import denoising_score_matching, fit
from ebmalgebra.samplers import (
    HMC,
    MALA,
    NUTS,
    SMC,
    ULA,
    AnnealedLangevin,
    ParallelTempering,
    RandomWalkMH,
)
from ebmalgebra.samplers.metrics import DiagonalMetric
from ebmalgebra.samplers.resampling import resample
from ebmalgebra.schedules import VP
from ebmalgebra.targets import Funnel, Gaussian, Ring

F64 = torch.float64


def _model() -> Gaussian:
    return Gaussian(torch.zeros(2, dtype=F64), 1.0, name="g")


def _caught(build) -> Exception:
    with pytest.raises(EBMAlgebraError) as caught:
        build()
    return caught.value


def _assert_one_form(error: Exception, argument: str, value: str) -> None:
    """``<argument> must be <constraint>, got <value>`` (perhaps followed by more)."""
    assert re.match(rf"{re.escape(argument)} must be .+, got {re.escape(value)}(?![\w.])",
                    str(error)), str(error)


# (build, argument as named in the message, value as shown in the message)
BAD_VALUES = [
    (lambda: HMC(step_size=-1), "HMC: step_size", "-1"),
    (lambda: Gaussian(0, -1), "gaussian: scale", "-1.0"),
    (lambda: MALA(target_accept=1.5), "MALA: target_accept", "1.5"),
    (lambda: RandomWalkMH(step_size=0.0), "RandomWalkMH: step_size", "0.0"),
    (lambda: ULA(step_size=float("inf")), "ULA: step_size", "inf"),
    (lambda: HMC(n_leapfrog=0), "HMC: n_leapfrog", "0"),
    (lambda: HMC(jitter=1.0), "HMC: jitter", "1.0"),
    (lambda: NUTS(max_depth=0), "NUTS: max_depth", "0"),
    (lambda: NUTS(max_energy_error=-1.0), "NUTS: max_energy_error", "-1.0"),
    (lambda: HMC(max_energy_error=-1.0), "HMC: max_energy_error", "-1.0"),
    (lambda: HMC(max_energy_error=math.nan), "HMC: max_energy_error", "nan"),
    (lambda: AnnealedLangevin(noise_levels=[0.1, 1.0]), "AnnealedLangevin: noise_levels",
     "[0.1, 1.0]"),
    (lambda: AnnealedLangevin(models=[_model()], steps_per_level=0),
     "AnnealedLangevin: steps_per_level", "0"),
    (lambda: AnnealedLangevin(models=[_model()], max_step_growth=0.5),
     "AnnealedLangevin: max_step_growth", "0.5"),
    (lambda: SMC(n_steps=-1), "SMC: n_steps", "-1"),
    (lambda: SMC(ess_threshold=2.0), "SMC: ess_threshold", "2.0"),
    (lambda: SMC(target_cess=1.0), "SMC: target_cess", "1.0"),
    (lambda: SMC(resampling="bogus"), "SMC: resampling", "'bogus'"),
    (lambda: ParallelTempering(betas=[1.0, 2.0]), "ParallelTempering: betas", "[1.0, 2.0]"),
    (lambda: eb.sample(_model(), n_chains=0, n_steps=1), "sample: n_chains", "0"),
    (lambda: eb.sample(_model(), n_chains=2, n_steps=-1), "sample: n_steps", "-1"),
    (lambda: eb.sample(_model(), n_chains=2, n_steps=1, warmup=-1), "sample: warmup", "-1"),
    (lambda: eb.sample(_model(), n_chains=2, n_steps=1, thin=0), "sample: thin", "0"),
    (lambda: eb.sample(_model(), n_chains=2, n_steps=1, on_nonfinite="explode"),
     "sample: on_nonfinite", "'explode'"),
    (lambda: eb.estimate_log_z(_model(), n_particles=1), "estimate_log_z: n_particles", "1"),
    (lambda: eb.estimate_log_z(_model(), target_cess=1.5), "estimate_log_z: target_cess",
     "1.5"),
    (lambda: eb.estimate_log_z(_model(), method="bridge"), "estimate_log_z: method",
     "'bridge'"),
    (lambda: resample(torch.full((4,), 0.25), method="cheap"), "resample: method", "'cheap'"),
    (lambda: _model().sample(-1), "sample: n", "-1"),
    (lambda: eb.compile(_model(), backend="xla"), "compile: backend", "'xla'"),
    (lambda: DiagonalMetric(torch.tensor([1.0, -1.0])), "DiagonalMetric: inverse_mass",
     "-1.0"),
    (lambda: Ring(radius=0.0), "ring: radius", "0.0"),
    (lambda: Funnel(1), "funnel: dim", "1"),
    (lambda: VP(beta_min=-1.0), "VP: beta_min", "-1.0"),
    (lambda: -2.0 * _model(), "weight", "-2"),
    (lambda: GaussianLikelihood(torch.zeros(2), 0.0), "likelihood: sigma", "0.0"),
    (lambda: fit(_model(), torch.zeros(8, 2, dtype=F64), denoising_score_matching, epochs=0),
     "fit: epochs", "0"),
    (lambda: denoising_score_matching(_model(), torch.zeros(8, 2, dtype=F64), sigma=-1.0),
     "denoising_score_matching: sigma", "-1.0"),
    (lambda: ess(torch.zeros(10, 2), kind="median"), "kind", "'median'"),
    (lambda: posterior_estimate(_model(), torch.zeros(2, 2, dtype=F64), 1, method="median"),
     "method", "'median'"),
]


@pytest.mark.parametrize("build, argument, value", BAD_VALUES,
                         ids=[row[1] for row in BAD_VALUES])
def test_a_bad_value_names_the_argument_the_constraint_and_the_value(build, argument, value):
    error = _caught(build)
    assert isinstance(error, ArgumentError) and isinstance(error, ValueError)
    _assert_one_form(error, argument, value)


BAD_TYPES = [
    (lambda: HMC(jit=1), "HMC: jit", "1"),
    (lambda: eb.sample(_model(), n_chains=2, n_steps=1, generator=0), "sample: generator",
     "int"),
    (lambda: eb.sample(_model(), "HMC", n_chains=2, n_steps=1), "sample: sampler", "str"),
    (lambda: _model() ** "2", "exponent of g ** beta", "str"),
    (lambda: SMC().run("g", n_particles=8), "SMC: model", "str"),
    (lambda: DiagonalMetric([1.0, 2.0]), "DiagonalMetric: inverse_mass", "list"),
    # Regression: any truthy value, e.g. "no", used to show the bar.
    (lambda: eb.sample(_model(), n_chains=2, n_steps=1, progress="no"), "sample: progress",
     "'no'"),
    (lambda: SMC().run(_model(), n_particles=8, progress=1), "progress", "1"),
]


@pytest.mark.parametrize("build, argument, value", BAD_TYPES,
                         ids=[row[1] for row in BAD_TYPES])
def test_a_wrong_type_names_the_argument_and_the_type(build, argument, value):
    error = _caught(build)
    assert isinstance(error, ArgumentTypeError) and isinstance(error, TypeError)
    _assert_one_form(error, argument, value)


def test_a_sampler_and_a_leaf_report_a_bad_value_alike():
    """The issue's example: the same class and the same message form for both."""
    sampler_error, leaf_error = _caught(lambda: HMC(step_size=-1)), _caught(
        lambda: Gaussian(0, -1))
    assert type(sampler_error) is type(leaf_error) is ArgumentError
    assert str(sampler_error) == "HMC: step_size must be positive, got -1"
    assert str(leaf_error) == "gaussian: scale must be positive, got -1.0"


def test_every_error_is_an_ebmalgebra_error_and_a_builtin_one():
    for error, builtin in [(ArgumentError, ValueError), (ArgumentTypeError, TypeError),
                           (eb.CompositionError, ValueError), (eb.CapabilityError, TypeError),
                           (ExpressionError, ValueError), (SerializationError, ValueError),
                           (ZooError, KeyError), (ZooError, SerializationError),
                           (NonFiniteError, FloatingPointError)]:
        assert issubclass(error, EBMAlgebraError) and issubclass(error, builtin)


# ------------------------------------------------------------------ the checkers

def test_tensor_checks_name_the_first_bad_entry_and_count_them():
    with pytest.raises(ArgumentError, match=re.escape(
            "scale must be positive, got -1.0 at index (1,) (2 of 3 entries)")):
        validation.positive_entries("scale", torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ArgumentError, match=re.escape(
            "loc must be finite, got nan at index (0, 1) (1 of 4 entries)")):
        validation.finite_entries("loc", torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ArgumentError, match=r"^w must be non-negative, got -0.5$"):
        validation.non_negative_entries("w", torch.tensor([-0.5]))
    ok = torch.tensor([0.5, 2.0])
    assert validation.positive_entries("scale", ok) is ok


@pytest.mark.parametrize("kwargs, value, interval", [
    ({}, 1.0, "(0, 1)"),
    ({"closed_low": True}, 1.0, "[0, 1)"),
    ({"closed_low": True, "closed_high": True}, -0.1, "[0, 1]"),
])
def test_intervals_show_which_ends_are_closed(kwargs, value, interval):
    with pytest.raises(ArgumentError, match=re.escape(f"p must be in {interval}, got {value}")):
        validation.in_interval("p", value, **kwargs)


def test_interval_ends_are_included_only_when_closed():
    assert validation.in_interval("p", 0.0, closed_low=True) == 0.0
    assert validation.in_interval("p", 1.0, closed_high=True) == 1.0


@pytest.mark.parametrize("value", [True, 2.0, 0, -3])
def test_a_count_is_a_positive_int_and_not_a_bool_or_a_float(value):
    with pytest.raises(ArgumentError, match=f"n must be a positive int, got {value!r}$"):
        validation.count("n", value)


def test_counts_with_another_minimum_say_so():
    assert validation.count("n", 0, 0) == 0
    with pytest.raises(ArgumentError, match="n must be an int ≥ 2, got 1"):
        validation.count("n", 1, 2)


def test_real_numbers_accept_one_element_tensors_and_refuse_bools():
    assert validation.real("x", torch.tensor([2.5])) == 2.5
    with pytest.raises(ArgumentTypeError, match="x must be a real number, got bool"):
        validation.real("x", True)
    with pytest.raises(ArgumentError, match=r"x must be a scalar, got a tensor of shape \(2,\)"):
        validation.real("x", torch.ones(2))


def test_decreasing_levels():
    assert validation.decreasing("t", torch.tensor([2.0, 1.0, 0.5])) == (2.0, 1.0, 0.5)
    assert validation.decreasing("t", [1.0, 0.0], allow_zero=True) == (1.0, 0.0)
    with pytest.raises(ArgumentError, match=r"t must be non-empty, finite and positive, "
                                            r"got \[1.0, 0.0\]"):
        validation.decreasing("t", [1.0, 0.0])
    with pytest.raises(ArgumentError, match=r"t must be strictly decreasing, got \[1.0, 1.0\]"):
        validation.decreasing("t", [1.0, 1.0])
    with pytest.raises(ArgumentTypeError, match=r"t\[1\] must be a real number, got str"):
        validation.decreasing("t", [1.0, "a"])


def test_one_of_lists_the_choices():
    with pytest.raises(ArgumentError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        validation.one_of("mode", "c", ("a", "b"))


# ----------------------------------------------- no plain ValueError/TypeError left
PACKAGE = Path(eb.__file__).parent
CONVERTED = [
    "base.py", "compile.py", "diagnostics.py", "diffusion.py", "distributed.py",
    "expression_parser.py", "leaves.py", "noised.py", "normalize.py", "ops.py",
    "plotting.py", "schedules.py", "targets.py", "validation.py",
    "apps/anomaly.py", "apps/guidance.py", "apps/inverse.py", "apps/likelihood.py",
    "datasets/digits.py", "datasets/faces.py", "datasets/toys.py",
    "io/format.py", "io/registry.py",
    "learning/_checks.py", "learning/buffer.py", "learning/cd.py", "learning/fit.py",
    "learning/nets.py", "learning/score_matching.py",
    "samplers/adaptation.py", "samplers/annealed.py", "samplers/base.py",
    "samplers/driver.py", "samplers/hmc.py", "samplers/integrators.py",
    "samplers/langevin.py", "samplers/mala.py", "samplers/metrics.py", "samplers/mh.py",
    "samplers/nuts.py", "samplers/resampling.py", "samplers/smc.py",
    "samplers/tempering.py",
    "testing/strategies.py", "zoo/__init__.py", "zoo/sampling.py",
]


@pytest.mark.parametrize("module", CONVERTED)
def test_converted_modules_raise_only_the_vocabulary(module):
    source = (PACKAGE / module).read_text()
    plain = re.findall(r"raise (?:ValueError|TypeError)\b.*", source)
    assert not plain, f"{module} raises plain built-in errors: {plain}"
