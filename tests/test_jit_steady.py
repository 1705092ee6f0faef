"""Steady runs (``ebmalgebra.jit.SteadyRun``): inside a sampling run a kernel's guards are
checked in full on its first call, then skipped except those on the input tensors and on
global state; a call those reject, and a call after the model's parameters changed, runs
with every guard again and gives the eager result.

Each test compiles one or two small kernels (a few seconds each). Results are compared
with the same function run eagerly, in float64, to 1e-12 relative: kernels reorder a
three-term sum at most, a few ulps; a stale kernel is off by orders of magnitude.
"""

from __future__ import annotations

import sys
import threading

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import jit
from ebmalgebra.jit import SteadyRun, call_compiled
from ebmalgebra.precompile import _dropped_guard_types
from ebmalgebra.samplers import NUTS
from ebmalgebra.targets import Gaussian

F64 = torch.float64

pytestmark = pytest.mark.skipif(jit._skip_stance() is None or jit.unavailable_reason() is not None,
                                reason="needs torch.compile with skip_guard_eval_unsafe")

needs_precompile = pytest.mark.skipif(
    _dropped_guard_types() is None or not hasattr(torch.compile(lambda x: x), "aot_compile"),
    reason="needs torch.compile(...).aot_compile")


@pytest.fixture(autouse=True)
def fresh_jit():
    jit.clear_cache()
    yield
    jit.clear_cache()


@pytest.fixture
def skipped(monkeypatch) -> list[str]:
    """Records the calls that ran with dynamo's guards skipped, each as ``"stance"`` (dynamo
    with its skip stance) or ``"direct"`` (dynamo's code called directly); kernels are not
    precompiled unless requested (see the precompiled tests below)."""
    monkeypatch.delenv(jit.PRECOMPILE_ENV, raising=False)
    calls = []
    enter, dynamo_code = jit._SkipStance.enter, jit._dynamo_code

    def counting(self):
        calls.append("stance")
        return enter(self)

    def counted_code(compiled):
        direct = dynamo_code(compiled)
        if direct is None:
            return None

        def run(*args):
            calls.append("direct")
            return direct(*args)
        return run

    monkeypatch.setattr(jit._SkipStance, "enter", counting)
    monkeypatch.setattr(jit, "_dynamo_code", counted_code)
    return calls


def weighted_sum(net: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return (x * net.weight).sum(-1)


def linear_model() -> tuple[torch.nn.Linear, eb.EnergyModel]:
    net = torch.nn.Linear(3, 1).to(F64)
    return net, eb.from_energy(net, 3, name="linear")


def test_a_steady_run_checks_every_guard_once_then_skips_them(skipped):
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        first = call_compiled(weighted_sum, model, net, x)
        assert not skipped  # the first call of a route checks every guard
        second = call_compiled(weighted_sum, model, net, x)
        assert len(skipped) == 1
    call_compiled(weighted_sum, model, net, x)  # outside a run: every guard
    assert len(skipped) == 1
    expected = (x * net.weight).sum(-1).detach()
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=0)


def test_a_verified_route_calls_dynamos_code_directly_with_the_same_results(skipped):
    """After the first call a route runs dynamo's compiled code without dynamo, bit for bit
    as through dynamo, while the call's state (strides, grad and inference mode, …) is
    that of the verified call; another state goes through dynamo's skip stance."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        first = call_compiled(weighted_sum, model, net, x)
        second = call_compiled(weighted_sum, model, net, x)
        assert skipped == ["direct"]
        with torch.inference_mode():
            third = call_compiled(weighted_sum, model, net, x)
        assert skipped == ["direct", "stance"]
    assert torch.equal(first, second) and torch.equal(first, third)
    torch.testing.assert_close(first, (x * net.weight).sum(-1).detach(), rtol=1e-12, atol=0)


def test_nuts_draws_are_the_same_with_dynamos_code_called_directly(skipped, monkeypatch):
    model = Gaussian(torch.zeros(3, dtype=F64), torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    x0 = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))

    def run():
        return eb.sample(model, NUTS(jit=True), x0=x0, n_steps=8, warmup=4,
                         generator=torch.Generator().manual_seed(1), progress=False)

    direct = run()
    assert "direct" in skipped
    monkeypatch.setattr(jit, "_dynamo_code", lambda compiled: None)
    through_dynamo = run()
    assert torch.equal(direct.draws, through_dynamo.draws)
    assert torch.equal(direct.chain_stats["n_leapfrog"], through_dynamo.chain_stats["n_leapfrog"])


def test_a_call_the_skipped_guards_reject_runs_with_every_guard(skipped):
    """Same shape and dtype (so the same route), other strides: dynamo rejects the call
    with guards skipped, and it runs again with all of them (a recompile)."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    strided = torch.randn(3, 4, dtype=F64).t()
    with SteadyRun(model):
        call_compiled(weighted_sum, model, net, x)
        result = call_compiled(weighted_sum, model, net, strided)
        assert len(skipped) == 1  # tried with guards skipped, rejected
        call_compiled(weighted_sum, model, net, strided)  # every guard: verified again
        again = call_compiled(weighted_sum, model, net, strided)
    assert len(skipped) == 2
    expected = (strided * net.weight).sum(-1).detach()
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(again, expected, rtol=1e-12, atol=0)


def test_a_parameter_replaced_between_steps_is_seen(skipped):
    """A callback may cast a parameter (here float64 to float32, and a new object): with
    guards skipped the kernel would read the new tensor as the old dtype. ``check``,
    which the driver calls after its callback, makes the next call check every guard."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model) as run:
        call_compiled(weighted_sum, model, net, x)
        call_compiled(weighted_sum, model, net, x)
        net.weight = torch.nn.Parameter(net.weight.detach().float())
        run.check()
        result = call_compiled(weighted_sum, model, net, x)
    assert len(skipped) == 1
    torch.testing.assert_close(result, (x * net.weight).sum(-1).detach(), rtol=1e-12, atol=0)


def test_the_tensor_layout_sees_every_parameter_and_its_changes():
    """``check`` compares ``_tensor_layout``, which walks the modules' own tables: it
    must list what ``model.parameters()`` and ``model.buffers()`` list (torch's own
    walks, the reference), through nested, shared and absent (None) submodules, and
    change when a nested parameter is replaced, cast or frozen, a submodule is swapped,
    or a buffer replaced."""
    shared = torch.nn.Linear(3, 3).to(F64)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3).to(F64), torch.nn.Tanh(), shared,
                              torch.nn.Sequential(shared, torch.nn.Linear(3, 1).to(F64)))
    net.register_module("absent", None)
    net[1].register_parameter("absent", None)
    model = eb.compile(eb.from_energy(net, 3, name="net") & Gaussian(torch.zeros(3, dtype=F64),
                                                                     1.0))

    net[0].register_buffer("offset", torch.zeros(3, dtype=F64))

    def reference() -> set:
        return {(id(p), p.dtype, p.device, p.shape, p.stride(), p.requires_grad)
                for p in (*model.parameters(), *model.buffers())}

    layouts = [jit._tensor_layout(model)]
    n_buffers = len(list(model.buffers()))  # the offset and the Gaussian's own
    assert set(layouts[-1]) == reference() and len(reference()) == 6 + n_buffers
    for change in (lambda: setattr(net[3][1], "bias", torch.nn.Parameter(net[3][1].bias)),
                   lambda: net[3][1].float(),
                   lambda: net[0].weight.requires_grad_(False),
                   lambda: net[3].__setitem__(1, torch.nn.Linear(3, 1).to(F64)),
                   lambda: setattr(net[0], "offset", torch.ones(3))):
        change()
        layouts.append(jit._tensor_layout(model))
        assert set(layouts[-1]) == reference()
        assert layouts[-1] != layouts[-2]
    assert jit._tensor_layout(model) == layouts[-1]


def test_a_steady_run_covers_its_own_thread_only(skipped):
    """Another thread's calls (whose callback the run does not see) check every guard."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)

    results = []

    def two_calls():
        results.extend(call_compiled(weighted_sum, model, net, x) for _ in range(2))

    with SteadyRun(model):
        thread = threading.Thread(target=two_calls)
        thread.start()
        thread.join()
    assert not skipped
    for result in results:
        torch.testing.assert_close(result, (x * net.weight).sum(-1).detach(), rtol=1e-12, atol=0)
    assert len(results) == 2


def test_another_stance_of_the_user_is_left_alone(skipped):
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        call_compiled(weighted_sum, model, net, x)
        with torch.compiler.set_stance("fail_on_recompile"):
            call_compiled(weighted_sum, model, net, x)
    assert not skipped


def test_sample_runs_its_kernels_with_guards_skipped(skipped):
    """The driver opens a steady run: NUTS(jit=True)'s kernels skip their guards after the
    first steps (the draws are those of the jit tests, which run through it too)."""
    model = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    x0 = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    eb.sample(model, NUTS(step_size=0.3, jit=True), x0=x0, n_steps=6,
              generator=torch.Generator().manual_seed(1), progress=False)
    assert skipped


class Tilt(torch.nn.Module):
    """E(x) = ½‖x‖² + w·x: a unit Gaussian centred at −w."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).sum(-1) + (x * self.w).sum(-1)


def test_sample_sees_a_parameter_its_callback_replaced():
    """A callback casts the model's parameter to float32 (eager NUTS promotes it): the
    compiled run must follow, as a run with every guard checked would (tolerance as in
    test_jit's NUTS runs: rounding compounds over the steps)."""
    x0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))

    def run(flag: bool) -> torch.Tensor:
        tilt = Tilt()

        def cast(step, state, info):
            if step == 2:
                tilt.w = torch.nn.Parameter(tilt.w.detach().float())

        return eb.sample(eb.from_energy(tilt, 2, name="tilt"), NUTS(step_size=0.5, jit=flag),
                         x0=x0, n_steps=6, generator=torch.Generator().manual_seed(1),
                         progress=False, callback=cast).draws

    torch.testing.assert_close(run(True), run(False), rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------- precompiled kernels

@pytest.fixture
def fast(monkeypatch) -> list[int]:
    """Precompiled kernels requested; counts the calls of precompiled kernels that ran
    without checking their guards."""
    monkeypatch.setenv(jit.PRECOMPILE_ENV, "1")
    counts = []
    state = jit._call_state

    def counting(args):
        counts.append(1)
        return state(args)

    monkeypatch.setattr(jit, "_call_state", counting)
    return counts


SCALE = 2.0


def scaled_sum(net: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return SCALE * (x * net.weight).sum(-1)


def kernel_of(model: eb.EnergyModel) -> jit._Kernel:
    (kernel,) = jit._kernels[model].values()
    return kernel


@needs_precompile
def test_a_precompiled_kernel_gives_the_compiled_results_bit_for_bit(fast):
    """Within a run a kernel is compiled ahead of time on its first call; the same kernel
    called outside a run goes through dynamo, and the two compiled paths agree to the bit
    (and with eager evaluation to rounding)."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        first = call_compiled(scaled_sum, model, net, x)
        second = call_compiled(scaled_sum, model, net, x)
    kernel = kernel_of(model)
    assert kernel.precompiled is not None and not kernel.traced
    assert len(fast) == 2  # the first call recorded the call's state, the second ran on it
    through_dynamo = call_compiled(scaled_sum, model, net, x)
    assert kernel.traced
    assert torch.equal(first, through_dynamo) and torch.equal(second, through_dynamo)
    torch.testing.assert_close(first, scaled_sum(net, x).detach(), rtol=1e-12, atol=0)


@needs_precompile
def test_a_precompiled_kernel_rechecks_its_guards_when_the_call_state_changes(fast):
    """Same route, other strides (or global state): the call is not run on the recorded
    state; the kernel's own guards reject it and dynamo's path computes it."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    strided = torch.randn(3, 4, dtype=F64).t()
    with SteadyRun(model):
        call_compiled(scaled_sum, model, net, x)
        result = call_compiled(scaled_sum, model, net, strided)
    assert kernel_of(model).precompiled is None and kernel_of(model).traced
    torch.testing.assert_close(result, scaled_sum(net, strided).detach(), rtol=1e-12, atol=0)


@needs_precompile
def test_a_precompiled_kernel_sees_a_global_changed_between_runs(fast, monkeypatch):
    """A precompiled kernel keeps dynamo's guards on the globals its function reads (torch
    drops them by default): a new run after a change recomputes, never a stale result."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        call_compiled(scaled_sum, model, net, x)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    with SteadyRun(model):
        result = call_compiled(scaled_sum, model, net, x)
    torch.testing.assert_close(result, 3.0 * (x * net.weight).sum(-1).detach(), rtol=1e-12,
                               atol=0)


@needs_precompile
def test_a_precompiled_kernel_sees_a_parameter_replaced_between_steps(fast):
    """As with dynamo's path: ``check`` after the callback forgets the verified routes, and
    the kernel's guards reject the float32 parameter."""
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model) as run:
        call_compiled(scaled_sum, model, net, x)
        net.weight = torch.nn.Parameter(net.weight.detach().float())
        run.check()
        result = call_compiled(scaled_sum, model, net, x)
    torch.testing.assert_close(result, scaled_sum(net, x).detach(), rtol=1e-12, atol=0)


class Centred(torch.nn.Module):
    """E(x) = ‖x − c‖², c a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(3, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return centred_sum(self, x)


def centred_sum(net: Centred, x: torch.Tensor) -> torch.Tensor:
    return ((x - net.center) ** 2).sum(-1)


@needs_precompile
def test_a_precompiled_kernel_sees_a_buffer_replaced_between_steps(fast):
    """Regression: ``check`` compared parameters only, so a precompiled kernel ran on its
    recorded call state with a buffer a callback had replaced by a float32 one, and
    silently read it as the old float64 (chains that ignored the new centre)."""
    net = Centred()
    model = eb.from_energy(net, 3, name="centred")
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model) as run:
        call_compiled(centred_sum, model, net, x)
        net.center = torch.tensor([1.0, -1.0, 2.0])
        run.check()
        result = call_compiled(centred_sum, model, net, x)
    torch.testing.assert_close(result, centred_sum(net, x), rtol=1e-6, atol=0)


def test_kernels_are_precompiled_only_on_request(monkeypatch):
    monkeypatch.delenv(jit.PRECOMPILE_ENV, raising=False)
    net, model = linear_model()
    x = torch.randn(4, 3, dtype=F64)
    with SteadyRun(model):
        call_compiled(scaled_sum, model, net, x)
    assert kernel_of(model).precompiled is None and kernel_of(model).traced
