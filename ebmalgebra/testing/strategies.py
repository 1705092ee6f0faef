"""Hypothesis strategies for random leaves, expressions and points.

Leaves are by default analytic targets with closed forms (Gaussians,
Gaussian mixtures, and 2-D toys), parameters drawn in ranges where energies
stay moderate, so that algebraic laws can be checked to tight float64
tolerances. On request they are also networks (score by autograd, the
compiler's autograd path), score-only leaves and noise-conditioned leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError
from ebmalgebra.leaves import from_energy, from_score
from ebmalgebra.targets import (
    Banana,
    Bar,
    Funnel,
    Gaussian,
    GaussianMixture,
    MultivariateGaussian,
    Ring,
)

_names = iter(f"leaf{i}" for i in range(10**9))


def _floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def _vectors(dim: int, low: float, high: float) -> st.SearchStrategy[torch.Tensor]:
    return arrays(np.float64, (dim,), elements=_floats(low, high)).map(torch.from_numpy)


@st.composite
def _diagonal_gaussian(draw: st.DrawFn, dim: int) -> EnergyModel:
    return Gaussian(draw(_vectors(dim, -2, 2)), draw(_vectors(dim, 0.5, 2)), name=next(_names))


@st.composite
def _full_gaussian(draw: st.DrawFn, dim: int) -> EnergyModel:
    factor = draw(arrays(np.float64, (dim, dim), elements=_floats(-0.5, 0.5)))
    covariance = torch.from_numpy(factor @ factor.T) + torch.eye(dim, dtype=torch.float64)
    return MultivariateGaussian(draw(_vectors(dim, -2, 2)), covariance, name=next(_names))


@st.composite
def _mixture(draw: st.DrawFn, dim: int) -> EnergyModel:
    k = draw(st.integers(2, 3))
    locs = torch.stack([draw(_vectors(dim, -2, 2)) for _ in range(k)])
    scales = draw(_vectors(k, 0.5, 1.5))
    weights = draw(_vectors(k, 0.2, 1.0))
    return GaussianMixture(locs, scales, weights=weights, name=next(_names))


@st.composite
def _toy(draw: st.DrawFn) -> EnergyModel:
    kind = draw(st.sampled_from(["banana", "ring", "bar", "funnel"]))
    if kind == "banana":
        return Banana(scale=draw(_floats(1, 2)), curvature=draw(_floats(-0.5, 0.5)),
                      name=next(_names))
    if kind == "ring":
        return Ring(radius=draw(_floats(1, 3)), width=draw(_floats(0.3, 1)), name=next(_names))
    if kind == "funnel":
        return Funnel(2, scale=draw(_floats(1, 2)), name=next(_names))
    return Bar(length=draw(_floats(1, 3)), width=draw(_floats(0.3, 1)),
               angle=draw(_floats(0, 3.14)), name=next(_names))


def _analytic(dim: int) -> st.SearchStrategy[EnergyModel]:
    options = [_diagonal_gaussian(dim), _full_gaussian(dim), _mixture(dim)]
    if dim == 2:
        options.append(_toy())
    return st.one_of(options)


class _ConfinedNetwork(nn.Module):
    """E(x) = ½‖x − c‖²/s² + vᵀ tanh(W x + b): a random float64 MLP energy, bounded below.

    The quadratic keeps it normalisable; |vᵀ tanh| ≤ ‖v‖₁ keeps it moderate.
    """

    def __init__(self, dim: int, seed: int, hidden: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=torch.float64))

        self.center, self.weight, self.bias, self.readout = (
            normal(dim), normal(hidden, dim), normal(hidden), normal(hidden))
        self.log_scale = nn.Parameter(torch.rand(1, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadratic = 0.5 * ((x - self.center) * torch.exp(-self.log_scale)).square().sum(-1)
        return quadratic + torch.tanh(x @ self.weight.T + self.bias) @ self.readout


class _SmoothedGaussian(nn.Module):
    """E(x, t) = ‖x − μ‖²/(2(σ² + t²)) + (d/2) log 2π(σ² + t²): N(μ, σ²I) ∗ N(0, t²I).

    ``t`` is a number or a ``(batch,)`` tensor.
    """

    def __init__(self, loc: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("loc", loc)
        self.scale = scale

    def forward(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        variance = self.scale**2 + torch.as_tensor(t, dtype=x.dtype, device=x.device) ** 2
        squares = (x - self.loc.to(x)).square().sum(-1)
        return 0.5 * squares / variance + 0.5 * x.shape[-1] * torch.log(2 * torch.pi * variance)


@st.composite
def _network(draw: st.DrawFn, dim: int) -> EnergyModel:
    net = _ConfinedNetwork(dim, draw(st.integers(0, 2**31 - 1)))
    return from_energy(net, dim, name=next(_names))


@st.composite
def _score_only(draw: st.DrawFn, dim: int) -> EnergyModel:
    return from_score(draw(_analytic(dim)).score, dim, name=next(_names))


@st.composite
def _noise_conditioned(draw: st.DrawFn, dim: int) -> EnergyModel:
    net = _SmoothedGaussian(draw(_vectors(dim, -2, 2)), draw(_floats(0.5, 2)))
    return from_energy(net, dim, name=next(_names), noise_conditioned=True)


LEAF_KINDS = ("analytic", "network", "score_only", "noise_conditioned")
"""What :func:`leaves` can draw; see its docstring."""

_KIND_STRATEGIES = {"analytic": _analytic, "network": _network, "score_only": _score_only,
                    "noise_conditioned": _noise_conditioned}


def leaves(event_shape: Sequence[int] = (2,), *, kinds: Sequence[str] = ("analytic",)
           ) -> st.SearchStrategy[EnergyModel]:
    """Random leaves over vectors of shape ``event_shape`` (one dimension).

    Kinds (any subset of :data:`LEAF_KINDS`):

    * ``"analytic"``: Gaussians (diagonal and full covariance) and Gaussian
      mixtures for any dimension; for ``(2,)`` also the banana, ring, bar and
      funnel toys. Closed-form energy, score and log Z.
    * ``"network"``: a random float64 MLP energy ½‖x − c‖²/s² + vᵀ tanh(Wx + b)
      (an ``nn.Module`` with parameters); its score comes from autograd.
    * ``"score_only"``: the score of an analytic leaf, without its energy
      (``from_score``); it cannot enter ``|``, so :func:`expressions` puts
      ``&`` there instead.
    * ``"noise_conditioned"``: the Gaussian N(μ, σ²I) smoothed by noise t,
      E(x, t) with score by autograd; evaluate expressions with a ``t``.

    Each leaf is new (own parameters) and named ``leafN``.
    """
    if len(event_shape) != 1:
        raise ArgumentError(f"leaves: event_shape must have one dimension, got {event_shape!r}")
    unknown = [kind for kind in kinds if kind not in LEAF_KINDS]
    if unknown or not kinds:
        raise ArgumentError(f"leaves: kinds must be a non-empty subset of {LEAF_KINDS}, "
                            f"got {tuple(kinds)!r}")
    dim = int(event_shape[0])
    return st.one_of([_KIND_STRATEGIES[kind](dim) for kind in dict.fromkeys(kinds)])


_OPERATORS = ("&", "|", "**", "leaf", "&", "|", "*", "~")


@st.composite
def _expression(draw: st.DrawFn, base: st.SearchStrategy[EnergyModel], max_depth: int
                ) -> EnergyModel:
    """A leaf or one operator applied to expressions of depth ≤ ``max_depth`` − 1."""
    operator = "leaf" if max_depth == 0 else draw(st.sampled_from(_OPERATORS))
    if operator == "leaf":
        return draw(base)
    first = draw(_expression(base, max_depth - 1))
    if operator == "&":
        return first & draw(_expression(base, max_depth - 1))
    if operator == "|":
        second = draw(_expression(base, max_depth - 1))
        # A mixture needs energies (DESIGN §2): score-only operands are multiplied instead.
        return first | second if first.has_energy and second.has_energy else first & second
    if operator == "*":
        return draw(_floats(0.1, 10)) * first
    if operator == "**":
        return first ** draw(_floats(-2, 2).filter(lambda b: abs(b) > 0.1))
    return ~first


def expressions(
    base: st.SearchStrategy[EnergyModel] | None = None,
    *,
    max_depth: int = 3,
    event_shape: Sequence[int] = (2,),
) -> st.SearchStrategy[EnergyModel]:
    """Random expressions of depth ≤ ``max_depth`` over leaves from ``base``.

    Operators: ``&``, ``|``, ``w *`` (w in [0.1, 10]), ``** beta`` (|β| in
    [0.1, 2]) and ``~``, binary ones drawn twice as often; each node is a leaf
    with probability 1/8 before the depth bound forces one. The depth bound
    holds by construction (``st.recursive`` bounds the number of leaves, not
    the depth, and drifted towards chains of unary operators here). Pass
    ``base=st.sampled_from([a, b, c])`` to reuse a pool of leaves, so that
    expressions mention the same leaf several times, or
    ``base=leaves(kinds=LEAF_KINDS)`` for networks, score-only and
    noise-conditioned leaves too (``|`` becomes ``&`` over score-only parts).
    """
    base = leaves(event_shape) if base is None else base
    return _expression(base, max_depth)


def depth(model: EnergyModel) -> int:
    """Height of the expression tree (a leaf has depth 0)."""
    children = model.operands()
    return 0 if not children else 1 + max(depth(c) for c in children)


def points(
    event_shape: Sequence[int] = (2,),
    *,
    batch: int = 8,
    bound: float = 4.0,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[torch.Tensor]:
    """Batches of points ``(batch, *event_shape)`` with entries in [−bound, bound]."""
    shape = (batch, *event_shape)
    return arrays(np.float64, shape, elements=_floats(-bound, bound)).map(
        lambda a: torch.from_numpy(a).to(dtype))


def points_at_all_scales(
    event_shape: Sequence[int] = (2,),
    *,
    batch: int = 8,
    smallest: float = 1e-300,
    largest: float = 1e3,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[torch.Tensor]:
    """Batches ``(batch, *event_shape)`` whose entries span every magnitude, and zeros.

    Each entry is 0 or ±10ᵘ·m with u uniform between log₁₀ ``smallest`` and
    log₁₀ ``largest`` and m in [1, 10): points at and arbitrarily near the
    origin (where a ring has its cone point and a norm underflows) and far
    out in the tails, which uniform :func:`points` almost never produces.
    """
    if not 0 < smallest < largest:
        raise ArgumentError(f"points_at_all_scales: need 0 < smallest < largest, got "
                            f"{smallest!r}, {largest!r}")
    low, high = np.log10(smallest), np.log10(largest) - 1.0
    magnitude = st.builds(lambda u, m: m * 10.0**u, _floats(low, high), _floats(1.0, 9.999))
    entry = st.one_of(st.just(0.0), magnitude, magnitude.map(lambda v: -v))
    shape = (batch, *event_shape)
    return st.lists(entry, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
        lambda values: torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype))
