"""Compiled kernels: ``torch.compile`` (inductor) for expressions, sampler steps and losses.

Three entry points use it:

* ``ebmalgebra.compile(expr, backend="inductor")`` returns an
  :class:`InductorEnergy`: the fused energy-and-score of the whole expression
  is traced once per input signature and compiled into one kernel.
* ``MALA(jit=True)`` (likewise ``HMC``, ``ULA``, ``RandomWalkMH``) compiles the
  sampler's whole deterministic update (proposal, energy and score,
  acceptance, row selection) into one kernel per step. The random numbers are
  drawn before the call, outside the compiled region, from the user's
  ``torch.Generator``, in the same order as the eager step, so a seed gives the
  same chain as ``jit=False`` up to float rounding. ``NUTS(jit=True)`` compiles
  blocks of up to four leaves of its trees (leapfrog steps, energy and score,
  multinomial bookkeeping, the U-turn checks inside the block; the first three
  doublings with their merges as one kernel) instead, since the tree's
  doubling and U-turn checks decide, step by step, how many leaves there are.
* ``denoising_score_matching(..., jit=True)`` and ``multi_noise_dsm(..., jit=True)``
  compile score and loss into one training kernel, differentiated once by
  ``loss.backward()``.

**What is traced.** Inside a compiled region every
:class:`~ebmalgebra.CompiledEnergy` evaluates through the one evaluator of
:mod:`ebmalgebra.evaluator`, as the eager path does (each distinct leaf once,
analytic leaf scores used as they are), with the one reverse pass over the
autograd leaves taken by :func:`torch.func.vjp` instead of
``torch.autograd.grad``, which dynamo cannot trace. The pass is functional: it
writes no ``.grad`` into leaf parameters and keeps per-sample energies, since
the cotangent is the per-sample coefficient ∂E/∂E_l (constant β_l for products
of powers, the softmax weights for mixtures).

**Caching and shapes.** Kernels are specialised to static shapes and cached
per expression (the expression object, held weakly) and per input signature:
shapes, dtype and device, the noise level ``t``, the tempering exponent, the
sampler's hyper-parameters and the function being compiled. Within a run
nothing changes between steps, so nothing recompiles, and a new run (a new
sampler object, a new ``compile`` of the same expression) reuses the kernel.
Each kernel has a code object of its own, so kernels of different expressions
never compete for dynamo's per-function limit of eight compiled variants. HMC
compiles one kernel per trajectory length: with the default jitter of 20%
around L₀ = 10 that is up to five kernels, compiled as the lengths first occur.

**Guards.** Dynamo checks a kernel's guards on every call, hundreds for a NUTS
doubling and ~0.1 ms of it. Within a run of :func:`ebmalgebra.sample` (a
:class:`SteadyRun`) a call checks them in full once per kernel and argument
objects, and afterwards only those on its input tensors and on global state,
which are all that can change within a run; the model's parameters are compared
after the run's callback. So a callback must not change, mid-run, a plain Python
value that the model's own functions read (a global number, an attribute of a
module that is not a tensor): a compiled kernel holds the value it was traced
with, and without the full guards the change would go unseen until the next run.

**Precompiled kernels** (opt-in: ``EBMALGEBRA_JIT_PRECOMPILE=1``). Even with guards
skipped, a call still goes through dynamo's frame evaluation and the call layers of
dynamo and AOT autograd, ~70 µs of a ~260 µs NUTS doubling kernel on eight schools. With
the variable set, a CPU kernel without autograd whose first call comes inside a
:class:`SteadyRun` is compiled ahead of time instead (:mod:`ebmalgebra.precompile`:
``torch.compile(...).aot_compile``, the same compiled code), and a later call of a route
whose guards it passed in this run runs it directly, after comparing what the route does
not fix (the input tensors' strides, devices and ``requires_grad``, and global state) with
that call; any other call checks the guards it keeps (all but object identities, classes,
closures and module objects), and if one fails the kernel goes back to dynamo for good.
The cost: its artifacts are not in the on-disk caches, so each process compiles them in
full (tens of seconds for NUTS) where dynamo's path takes seconds from a warm cache; it
pays for long runs only. A limit: the tensors held in the fields of argument objects (a
metric's ``inverse_mass``, a potential's ``beta``), which the route names by the object's
identity, are not compared on a verified route (the library's samplers never replace them
within a run; walking them on every call took the check from ~11 to ~20 µs in a NUTS step), so
with the variable set a callback must not replace them in place.

**Dynamo's code, called directly.** A verified route of a kernel that dynamo has
compiled once (one version in its cache) calls the code dynamo put in place of the
kernel's function directly, as a plain function, while the call's state (as for
precompiled kernels: strides, devices, ``requires_grad``, grad and inference mode,
autocast, default dtype, deterministic algorithms, torch-function modes) is that of
the verified call: the same compiled graph, bit for bit, without dynamo's frame
evaluation and guard lookup (eight schools at 100 chains: 416–431 against 520–629
µs a NUTS step). Any other call goes through dynamo as above.

**Compile cost.** The first call of a kernel traces and compiles it: a few
seconds for a 2-D analytic target on one CPU core, 10–30 s for network leaves
and long HMC trajectories, plus a start-up of about ten seconds for the first
``torch.compile`` in a process. Later calls, and later runs on the same
expression and shapes in the same process, reuse the kernel.
:func:`compile_seconds` lists what each kernel cost; docs/performance.md has
measurements and says when ``jit=True`` pays.

**Fallback.** When compilation is unavailable (no working C++ compiler for
the CPU backend, a Python version torch.compile does not support, or
``EBMALGEBRA_DISABLE_JIT=1`` in the environment), or fails for a particular
expression (an operation dynamo cannot trace without breaking the graph, a
compiler error), the eager path runs instead and one :class:`JitFallbackWarning`
says why. Results are then exactly those of ``backend="eager"`` / ``jit=False``;
they are never silently different. Set ``EBMALGEBRA_DISABLE_JIT=1`` to force the
fallback (the tests do).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ebmalgebra import evaluator
from ebmalgebra.base import EnergyModel, TimeLike
from ebmalgebra.compile import CompiledEnergy
from ebmalgebra.precompile import Precompiled, precompile, torch_compile
from ebmalgebra.program import ANALYTIC

__all__ = [
    "DISABLE_ENV",
    "PRECOMPILE_ENV",
    "InductorEnergy",
    "JitFallbackWarning",
    "SteadyRun",
    "call_compiled",
    "clear_cache",
    "compile_seconds",
    "unavailable_reason",
]

DISABLE_ENV = "EBMALGEBRA_DISABLE_JIT"
"""Environment variable: set it to ``1`` to run every jit path eagerly (with one warning)."""

PRECOMPILE_ENV = "EBMALGEBRA_JIT_PRECOMPILE"
"""Environment variable: set it to ``1`` to compile CPU kernels ahead of time inside sampling
runs (see "Precompiled kernels" above): ~70 µs less per kernel call, the same numbers, but
the artifacts are not cached across processes, so each process pays the full compile
(29 s against 10 s from a warm cache for NUTS on eight schools, 100 + 100 steps)."""


class JitFallbackWarning(RuntimeWarning):
    """Compilation was unavailable or failed, so the eager path ran instead."""


# ---------------------------------------------------------------- availability

def unavailable_reason(device: torch.device | str = "cpu") -> str | None:
    """Why compiled kernels cannot run on ``device`` here, or ``None`` if they can.

    Checks ``EBMALGEBRA_DISABLE_JIT``, torch.compile's support for this Python, and,
    for the CPU, a working C++ compiler (inductor's CPU backend builds C++).
    """
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return f"{DISABLE_ENV} is set"
    problem = _platform_problem()
    if problem is None and torch.device(device).type == "cpu":
        problem = _cpu_compiler_problem()
    return problem


@functools.cache
def _platform_problem() -> str | None:
    try:
        import torch._dynamo

        supported = torch._dynamo.is_dynamo_supported()
    except Exception as error:  # noqa: BLE001 - any failure means "unsupported"
        return f"torch.compile is unavailable ({type(error).__name__}: {error})"
    return None if supported else "torch.compile does not support this Python version"


@functools.cache
def _cpu_compiler_problem() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - InvalidCxxCompiler, missing modules, ...
        return f"no working C++ compiler for torch.compile's CPU backend ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, JitFallbackWarning, stacklevel=4)


# ---------------------------------------------------------------------- kernels

class _Kernel:
    """One function compiled for one input signature, falling back to eager on failure."""

    __slots__ = ("function", "compiled", "label", "seconds", "options", "traced",
                 "precompilable", "precompiled")

    def __init__(self, function: Callable, label: str, owner: EnergyModel,
                 example: Tensor | None, differentiable: bool) -> None:
        self.function = function
        self.label = label
        self.seconds: float | None = None
        self.traced = False  # by dynamo (a precompiled kernel is traced apart)
        self.precompiled: Precompiled | None = None
        device = example.device if example is not None else torch.device("cpu")
        # Ahead of time only on request, and where it was measured: CPU kernels without
        # autograd (see PRECOMPILE_ENV).
        self.precompilable = (not differentiable and device.type == "cpu"
                              and os.environ.get(PRECOMPILE_ENV, "").strip() not in ("", "0"))
        self.options = _inductor_options(owner, example, differentiable)
        reason = unavailable_reason(device)
        if reason is not None:
            _warn_once(f"ebmalgebra jit: {reason}; running eagerly (results are those of "
                       "backend='eager' / jit=False)")
            self.compiled = None
        else:
            # Static shapes: kernels are cached per shape and traced with dynamic shapes
            # off (see _first_call). dynamic=False would pin the same, but it patches
            # dynamo's config around every call: ~7 µs of a ~40 µs 2-D step.
            self.compiled = torch_compile(_own_code(function), options=self.options)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None or _inside_functorch_transform():
            # Dynamo cannot run inside vmap/grad/jacrev: such calls run eagerly, and the
            # kernel compiles (or runs) on plain calls instead of being given up.
            return self.function(*args)
        if self.traced:
            return self.compiled(*args)
        return self._first_call(args)

    def precompile(self, args: tuple) -> Any:
        """``function(*args)`` on a kernel's first call, compiled ahead of time
        (:func:`ebmalgebra.precompile.precompile`) where torch can, else as usual."""
        start = time.perf_counter()
        self.precompilable = False  # one attempt
        self.precompiled = precompile(_own_code(self.function), self.options, args)
        if self.precompiled is None:
            return self(*args)
        result = self.precompiled.run(*args)
        self.seconds = time.perf_counter() - start
        return result

    def _first_call(self, args: tuple) -> Any:
        start = time.perf_counter()
        try:
            # Graph breaks would leave parts of the step eager and slow: refuse them
            # while tracing (fullgraph=True would instead cost ~6 µs on every call).
            with torch._dynamo.error_on_graph_break(True), torch._dynamo.config.patch(
                    automatic_dynamic_shapes=False, assume_static_by_default=True):
                result = self.compiled(*args)
        except Exception as error:  # noqa: BLE001 - dynamo, inductor and compiler errors
            result = self.function(*args)  # a genuine user error re-raises from here
            self.compiled = None
            _warn_once(f"ebmalgebra jit: could not compile {self.label} "
                       f"({_first_line(error)}); running it eagerly")
            return result
        self.traced = True
        self.seconds = (self.seconds or 0.0) + time.perf_counter() - start
        return result


_peek_functorch = getattr(torch._C._functorch, "peek_interpreter_stack", None)


def _inside_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev, …) is running (asked on
    every kernel call, so the private entry point is looked up once, at import)."""
    return _peek_functorch is not None and _peek_functorch() is not None


def _inductor_options(owner: EnergyModel, example: Tensor | None, differentiable: bool,
                      ) -> dict[str, Any] | None:
    """Inductor settings for kernels of ``owner`` over rows like ``example``.

    Kernels without autograd get a C++ wrapper (``cpp_wrapper``): the code around the
    compiled loops, which allocates a kernel's buffers (~190 for NUTS's first three
    doublings on eight schools) and calls the loops, runs as C++ instead of Python,
    ~12% of a NUTS step there (0.84 → 0.73-0.77 ms at 100 chains), the same
    numbers; training kernels keep the Python wrapper their backward pass is built
    around.

    On AVX-512 CPUs inductor vectorises 16 floats at a time; rows narrower than
    that (2-D targets) then take masked loads and gathers, and 8 lanes measured
    1.2-2x faster for a 2-D MALA step. Only for expressions of analytic leaves:
    networks compute on wide hidden layers whatever the input width, and there
    the default was 1.5-2x faster (a 64-D MLP mixture, a 2-D MLP energy).
    """
    if example is None or example.device.type != "cpu" or example.dim() < 1:
        return None
    options: dict[str, Any] = {} if differentiable else {"cpp_wrapper": True}
    analytic = isinstance(owner, CompiledEnergy) and all(
        kind == ANALYTIC for kind in owner.lowered.kinds)
    width = math.prod(example.shape[1:])
    capability = torch.backends.cpu.get_cpu_capability()
    if analytic and capability.startswith("AVX512") and 0 < width < 16:
        options["cpp.simdlen"] = 8
    return options or None


def _own_code(function: Callable) -> Callable:
    """A copy of ``function`` with a code object of its own.

    Dynamo keeps its compiled graphs per code object, with a limit of eight
    before it gives up and runs eagerly; a private code object per kernel keeps
    kernels of different expressions from competing for those slots.
    """
    code = function.__code__
    copy = types.FunctionType(code.replace(co_varnames=code.co_varnames), function.__globals__,
                              function.__name__, function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    return copy


_kernels: weakref.WeakKeyDictionary[EnergyModel, dict[tuple, _Kernel]] = (
    weakref.WeakKeyDictionary())
"""Kernels per expression (held weakly), by the full signature of their arguments."""

_routes: dict[tuple, _Kernel] = {}
"""Kernels by a cheap per-call key (see :func:`_route`), looked up on every step."""

_MAX_ROUTES = 4096

_SCALARS = (bool, int, float, str)


def _route(value: Any) -> Any:
    """A cheap per-call key: tensor shapes and dtypes, Python scalars, identity of other
    objects (a sampler state's potential lives as long as its run). Computed on every
    call, so it stays a few hashes; a recycled ``id`` can at worst route a call to a
    kernel traced for other objects, whose guards then recompile it (never a wrong
    result)."""
    if isinstance(value, Tensor):
        return (value.shape, value.dtype)
    if isinstance(value, tuple):
        return tuple(map(_route, value))
    if value is None or isinstance(value, _SCALARS):
        return value
    return id(value)


def _signature(value: Any) -> Any:
    """The full cache key of an argument: what a trace specialises on (shapes, dtypes,
    devices, Python constants), so that equal settings share a kernel across runs.
    Models are left to the table's owner and to dynamo's guards."""
    if isinstance(value, Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    if value is None or isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, tuple | list):
        return (type(value), tuple(_signature(item) for item in value))
    if isinstance(value, EnergyModel):
        return type(value)
    if isinstance(value, types.FunctionType | type):
        # A class by itself: its namespace is no signature (precompiling reads and so
        # adds to a class's ``__dict__``, e.g. its ``__annotations__``).
        return value
    fields = getattr(value, "__dict__", None)
    if fields is None and hasattr(type(value), "__slots__"):
        fields = {name: getattr(value, name) for name in type(value).__slots__}
    if fields is None:
        return (type(value), id(value))
    return (type(value), tuple((name, _signature(item)) for name, item in fields.items()))


def call_compiled(function: Callable, owner: EnergyModel, *args: Any,
                  differentiable: bool = False) -> Any:
    """``function(*args)`` through a kernel compiled for ``owner`` and these arguments.

    ``function`` is a plain function or a bound method (its instance then counts
    as the first argument). ``owner`` is the expression the call evaluates (a
    ``CompiledEnergy`` counts as its expression); kernels are cached per owner and
    per signature of the arguments (shapes, dtypes, devices, Python constants and
    hyper-parameters), and dropped with the expression.

    By default the call runs without autograd recording, like the detached eager
    evaluations it replaces. ``differentiable=True`` keeps autograd on: the kernel
    is then a training graph whose outputs backpropagate into the parameters once
    (first derivatives only, e.g. a denoising score-matching loss). Inside a
    :class:`SteadyRun` the other calls check most of dynamo's guards only once.
    """
    if isinstance(function, types.MethodType):
        function, args = function.__func__, (function.__self__, *args)
    route = (function, differentiable, id(owner), *map(_route, args))
    kernel = _routes.get(route)
    if kernel is None:
        if len(_routes) >= _MAX_ROUTES:  # mostly routes of finished runs: start afresh
            _routes.clear()
        kernel = _routes[route] = _kernel_for(function, differentiable, owner, args)
    if differentiable:
        return kernel(*args)
    with torch.no_grad():
        steady = getattr(_this_thread, "steady", None)
        if steady is None:
            return kernel(*args)
        return steady.call(route, kernel, owner, args)


def _kernel_for(function: Callable, differentiable: bool, owner: EnergyModel, args: tuple,
                ) -> _Kernel:
    expression = owner.expr if isinstance(owner, CompiledEnergy) else owner
    table = _kernels.get(expression)
    if table is None:
        table = _kernels[expression] = {}
    key = (function, differentiable, *map(_signature, args))
    kernel = table.get(key)
    if kernel is None:
        example = next(_tensors(args), None)
        label = _label(function, expression) + (" (training)" if differentiable else "")
        kernel = table[key] = _Kernel(function, label, owner, example, differentiable)
    return kernel


def _tensors(args: tuple) -> Any:
    for arg in args:
        if isinstance(arg, Tensor):
            yield arg
        elif isinstance(arg, tuple):
            yield from _tensors(arg)


def _label(function: Callable, expression: EnergyModel) -> str:
    return f"{getattr(function, '__qualname__', function)} on {expression!r}"


def clear_cache() -> None:
    """Forget every compiled kernel and availability check (and which warnings were shown)."""
    _kernels.clear()
    _routes.clear()
    steady = getattr(_this_thread, "steady", None)
    if steady is not None:
        steady.verified.clear()
    _warned.clear()
    _platform_problem.cache_clear()
    _cpu_compiler_problem.cache_clear()


def compile_seconds() -> list[tuple[str, float]]:
    """(kernel, seconds its first call took to trace and compile) for every cached kernel
    that compiled; useful to report the one-off cost apart from the run time."""
    return [(kernel.label, kernel.seconds) for table in list(_kernels.values())
            for kernel in table.values() if kernel.seconds is not None]


# ------------------------------------------------------------------ steady runs

_REJECTED = "skip_guard_eval_unsafe"
"""In the message dynamo raises when a call would recompile while guards are skipped."""

_MAX_VERIFIED = 256
"""Verified routes a run keeps (with their objects) before it starts afresh: a sampler
that makes new argument objects every step (a new route each) cannot grow it without
bound."""


class SteadyRun:
    """A sampling run's context: each kernel's guards are checked in full once, then only
    those that can fail within the run.

    Dynamo checks a compiled kernel's guards on every call: hundreds for a NUTS doubling
    (every input tensor's dtype, shape and strides, global state, and the type,
    identity or value of every object and constant the trace read, down to the
    model's attributes and its parameters' metadata), ~0.1 ms a call on eight schools.
    Inside this context a call without autograd (see :func:`call_compiled`) whose
    kernel and argument objects (its route: the objects by identity, held here so that
    their ids stay theirs) passed the full guards earlier in the context runs with
    ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` (torch ≥ 2.6, and only
    under the default stance), which still checks the input tensors (dtype, device,
    shape, strides, ``requires_grad``), global state (grad mode, autocast, default
    dtype, deterministic algorithms) and torch-function modes: a call that fails those
    is rejected and runs again with every guard, recompiling where it must. Where the
    kernel has one compiled version and the call's state (:func:`_call_state`) is the
    verified call's, the code dynamo compiled is called directly instead, without
    dynamo (:func:`_dynamo_code`).

    What it skips cannot change within a run: the route fixes the kernel, the shapes
    and dtypes, the Python constants and the argument objects, expression nodes are
    immutable, and so are a sampler state's potential and metric (a new one is a new
    route). The one thing left, the metadata of the model's parameters and buffers (one
    replaced, moved or cast, a parameter's ``requires_grad`` switched), :meth:`check`
    compares; the driver calls it after each call of its callback, the one place where
    code other than the library's runs between steps. Tensors a model reads otherwise
    (in a closure, a dict) are not compared: a callback may change their values in
    place, not replace them.

    Args:
        model: the model being sampled (its parameters are what :meth:`check` compares).
    """

    __slots__ = ("model", "layout", "verified", "prior")

    def __init__(self, model: EnergyModel) -> None:
        self.model = model
        self.layout: tuple = ()  # taken when the first route is verified
        self.verified: dict[tuple, tuple[_Kernel, list, tuple | None, Callable | None]] = {}
        self.prior: SteadyRun | None = None

    def start(self) -> SteadyRun:
        """Make this the context of this thread's calls that follow (until :meth:`stop`)."""
        self.prior = getattr(_this_thread, "steady", None)
        _this_thread.steady = self
        return self

    def stop(self) -> None:
        """Give the calls back to the previous context, and forget the routes."""
        _this_thread.steady = self.prior
        self.verified.clear()

    def __enter__(self) -> SteadyRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> None:
        """Check every guard again on each kernel's next call if the model's parameters
        changed identity, dtype, device, shape, strides or ``requires_grad``. Nothing to
        compare while no route is verified (eager samplers, or before the first call)."""
        if not self.verified:
            return
        layout = _tensor_layout(self.model)
        if layout != self.layout:
            self.layout = layout
            self.verified.clear()

    def call(self, route: tuple, kernel: _Kernel, owner: EnergyModel, args: tuple) -> Any:
        """``kernel(*args)``, its guards in full unless this route passed them before.

        A precompilable kernel (see ``PRECOMPILE_ENV``) is compiled ahead of time on its
        first call; a route that passed its kept guards in this run then runs it directly
        while the call's state (:func:`_call_state`) is that of the verified call."""
        entry = self.verified.get(route)
        if kernel.precompilable and kernel.seconds is None and kernel.compiled is not None:
            result = kernel.precompile(args)
            if kernel.precompiled is not None:  # its guards hold: it was traced for these
                self._verify(route, kernel, owner, args, _call_state(args))
            elif kernel.traced and kernel.compiled is not None:  # by dynamo, every guard
                self._verify(route, kernel, owner, args, None)
            return result
        precompiled = kernel.precompiled
        if precompiled is not None:
            state = _call_state(args)
            if entry is not None and entry[0] is kernel and entry[2] == state:
                return precompiled.run(*args)
            if precompiled.check(*args):
                self._verify(route, kernel, owner, args, state)
                return precompiled.run(*args)
            kernel.precompiled = None  # a guard failed: dynamo's path from now on
            entry = None
        stance = _skip_stance()
        if entry is None or entry[0] is not kernel or stance is None or not stance.usable():
            result = kernel(*args)
            if kernel.traced and kernel.compiled is not None:
                direct = _dynamo_code(kernel.compiled)
                self._verify(route, kernel, owner, args,
                             None if direct is None else _call_state(args), direct)
            return result
        direct = entry[3]
        if direct is not None and entry[2] == _call_state(args):
            return direct(*args)
        prior = stance.enter()
        try:
            return kernel.compiled(*args)
        except RuntimeError as error:
            if _REJECTED not in str(error):
                raise
        finally:
            stance.leave(prior)
        del self.verified[route]
        return kernel(*args)

    def _verify(self, route: tuple, kernel: _Kernel, owner: EnergyModel, args: tuple,
                state: tuple | None, direct: Callable | None = None) -> None:
        """Record that ``route`` passed ``kernel``'s guards in full, holding its objects (and,
        for a precompiled kernel or one with ``direct`` code, the state of the call: see
        :func:`_call_state`)."""
        if len(self.verified) >= _MAX_VERIFIED:
            self.verified.clear()
        if not self.verified:  # the layout these full guards have just seen
            self.layout = _tensor_layout(self.model)
        self.verified[route] = (kernel, [owner, *_objects(args)], state, direct)


_this_thread = threading.local()
"""``steady``: the thread's current :class:`SteadyRun` (runs in other threads have theirs)."""


def _tensor_layout(model: EnergyModel) -> tuple:
    """Identity, dtype, device, shape, strides and ``requires_grad`` of every parameter and
    buffer of ``model`` and its submodules, in a fixed order for a given module tree (a
    shared tensor may appear more than once). :meth:`SteadyRun.check` takes it after every
    callback, so it walks the modules' own tables instead of ``model.parameters()``, whose
    generators took ~2.5x as long (3.2 against 1.2 µs on eight schools; docs/performance.md).
    """
    layout, stack, seen = [], [model], set()
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        for tensors in (module._parameters, module._buffers):
            for p in tensors.values():
                if p is not None:
                    layout.append((id(p), p.dtype, p.device, p.shape, p.stride(),
                                   p.requires_grad))
        stack.extend(module._modules.values())
    return tuple(layout)


def _dynamo_code(compiled: Callable) -> Callable | None:
    """The code dynamo put in place of a kernel's function, as a plain function, when the
    kernel has compiled exactly one version (so a route that passed its guards ran that
    one); ``None`` otherwise, or where torch does not expose it.

    Called directly it runs the compiled graph without dynamo's frame evaluation and
    guard lookup (~25 µs of a ~210 µs NUTS doubling kernel on eight schools at 100
    chains; docs/performance.md), with the same results bit for bit.
    """
    function = getattr(compiled, "_torchdynamo_orig_callable", None)
    entries_of = getattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list", None)
    if not isinstance(function, types.FunctionType) or entries_of is None:
        return None
    try:
        entries = entries_of(function.__code__)
    except Exception:  # noqa: BLE001 - a debugging hook of dynamo: anything means "not here"
        return None
    if len(entries) != 1 or not isinstance(getattr(entries[0], "code", None), types.CodeType):
        return None
    direct = types.FunctionType(entries[0].code, function.__globals__, function.__name__,
                                function.__defaults__, function.__closure__)
    direct.__kwdefaults__ = function.__kwdefaults__
    return direct


def _call_state(args: tuple) -> tuple:
    """What the guards that :class:`SteadyRun` skips on a verified route called without
    dynamo (a precompiled kernel, or dynamo's code directly) would check and the route
    does not fix: every input tensor's strides, device and ``requires_grad`` (the route
    fixes shapes and dtypes), and the global state that dynamo guards (grad and
    inference mode, autocast, default dtype, deterministic algorithms, the number of
    torch-function modes). ~3.5 µs for NUTS's first doublings."""
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"), torch.get_default_dtype(),
            torch.are_deterministic_algorithms_enabled(), _function_modes(),
            tuple(_tensor_states(args)))


def _function_modes() -> int:
    return len(torch.overrides._get_current_function_mode_stack())


def _tensor_states(args: tuple) -> Any:
    for arg in args:
        if isinstance(arg, Tensor):
            yield arg.stride(), arg.device, arg.requires_grad
        elif isinstance(arg, tuple):
            yield from _tensor_states(arg)


def _objects(value: Any) -> list:
    """The objects a route names by identity (see :func:`_route`)."""
    if isinstance(value, tuple):
        return [found for item in value for found in _objects(item)]
    if value is None or isinstance(value, (Tensor, *_SCALARS)):
        return []
    return [value]


class _SkipStance:
    """Sets dynamo's stance to skip guard evaluation for one call, where the user's
    stance is the default (another, e.g. ``fail_on_recompile``, is left alone)."""

    def __init__(self, eval_frame: types.ModuleType) -> None:
        self.eval_frame = eval_frame
        self.default = eval_frame.DynamoStance()
        self.skipping = eval_frame.DynamoStance(skip_guard_eval_unsafe=True)

    def usable(self) -> bool:
        return self.eval_frame._stance == self.default and not torch.compiler.is_compiling()

    def enter(self) -> Any:
        return self.eval_frame._set_stance(self.skipping)

    def leave(self, prior: Any) -> None:
        self.eval_frame._set_stance(prior)


@functools.cache
def _skip_stance() -> _SkipStance | None:
    """Dynamo's stance setter when it can skip guards (torch ≥ 2.6), else ``None``."""
    try:
        from torch._dynamo import eval_frame
    except ImportError:
        return None
    stance = getattr(eval_frame, "DynamoStance", None)
    fields = getattr(stance, "__dataclass_fields__", {})
    if "skip_guard_eval_unsafe" not in fields or not hasattr(eval_frame, "_set_stance"):
        return None
    return _SkipStance(eval_frame)


# ------------------------------------------------------------ compiled energies

# Kernels call the evaluator: traced, with its functional reverse pass; run eagerly after a
# failed compile, they give exactly the eager results.
def _energy_and_score_kernel(model: CompiledEnergy, x: Tensor, t: TimeLike
                             ) -> tuple[Tensor | None, Tensor]:
    return evaluator.energy_and_score(model.lowered, x, t, False,
                                      functional=torch.compiler.is_compiling())


def _energy_kernel(model: CompiledEnergy, x: Tensor, t: TimeLike) -> Tensor:
    return evaluator.energy(model.lowered, x, t)


def _as_input(t: TimeLike, x: Tensor) -> TimeLike:
    """A float noise level as a 0-d tensor of x's dtype (one kernel for every level); an
    int stays an int, as the eager path gives it (it may index a table of levels)."""
    if isinstance(t, float):
        return torch.tensor(t, dtype=x.dtype, device=x.device)
    return t


class InductorEnergy(CompiledEnergy):
    """A :class:`~ebmalgebra.CompiledEnergy` whose evaluations run as compiled kernels.

    Built by ``ebmalgebra.compile(expr, backend="inductor")``. ``energy`` and
    ``energy_and_score`` (and ``score``) call a kernel compiled for the input's
    shape, dtype and device; the first call per signature pays the compile time.
    A float noise level ``t`` is passed as a 0-d tensor of x's dtype, so that one
    kernel serves every level (as a Python float it would be a constant of the
    trace). Differentiable evaluations (``create_graph=True``, used by training
    losses) run the eager path, whose autograd graph supports the higher
    derivatives those losses take. Falls back to eager with one
    :class:`JitFallbackWarning` when compilation is unavailable.

    Example:
        >>> model = ebmalgebra.compile(ring & bar, backend="inductor")
        >>> energy, score = model.energy_and_score(torch.randn(1000, 2))  # compiles once
    """

    backend = "inductor"

    def _evaluate(self, x: Tensor, t: TimeLike, create_graph: bool
                  ) -> tuple[Tensor | None, Tensor]:
        if create_graph or torch.compiler.is_compiling():
            return super()._evaluate(x, t, create_graph)
        self.current_program()  # the kernel reads self.lowered: refreshed first if stale
        return call_compiled(_energy_and_score_kernel, self, self, x, _as_input(t, x))

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        if torch.compiler.is_compiling() or torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            # Energies differentiable in x or in the parameters (contrastive divergence)
            # stay eager: kernels run without autograd recording. The parameters are
            # asked on each call: their requires_grad may have changed since compile().
            return super()._energy(x, t)
        self.current_program()  # as in _evaluate
        return call_compiled(_energy_kernel, self, self, x, _as_input(t, x))

    def __repr__(self) -> str:
        return f"compile({self.source!r}, backend='inductor')"
