"""Constrained supports: sample in unconstrained space, return constrained draws.

A model whose support S is not all of ℝⁿ (a Gamma's (0, ∞), a Beta's (0, 1), a
Dirichlet's simplex, a Wishart's positive-definite matrices) is hard on
gradient samplers: a leapfrog step leaves S, the energy is +∞ there and the
proposal is rejected, so the step size collapses near the boundary. As Stan
and NumPyro do, :func:`ebmalgebra.sample` instead samples the pushforward of
the model by the inverse of a bijection T: ℝᵏ → S (``torch.distributions.
biject_to(S)``),

    E_u(u) = E(T(u)) − log|det J_T(u)|,        x = T(u),

which is a density on all of ℝᵏ with the same mass (change of variables; the
log-Jacobian keeps the draws of x distributed as p̃), and maps the draws back by
T. k can differ from n: the simplex of K components has k = K − 1.

The support is a fact each node owns (``EnergyModel.support``): a leaf's is its
distribution's support or the ``support=`` it was built with (ℝ by default);
``&`` intersects its children's supports and ``|`` unites them (:func:`intersect`,
:func:`unite`), ``pushforward`` has its transform's codomain. Supports that are
neither ℝ nor equal to each other in one expression (a Beta & a Gamma) have no
bijection here, and asking for one raises :class:`CapabilityError`.

torch registers no bijection onto positive-definite matrices or Cholesky
factors; :func:`unconstraining_transform` adds them (:class:`LowerCholeskyVector`,
:class:`PositiveDefiniteVector`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions import constraints as tc
from torch.distributions import transforms as tt

from ebmalgebra.errors import CapabilityError

if TYPE_CHECKING:
    from ebmalgebra.base import EnergyModel

__all__ = [
    "BlockwiseElementwise",
    "LowerCholeskyVector",
    "PositiveDefiniteVector",
    "Unconstrained",
    "check_continuous",
    "compatible",
    "elementwise_support",
    "intersect",
    "is_real",
    "same_support",
    "unconstrain",
    "unconstraining_transform",
    "unite",
]


# ----------------------------------------------------------------- support algebra
def is_real(support: tc.Constraint) -> bool:
    """Whether ``support`` is all of ℝ (elementwise, or as an independent event)."""
    while isinstance(support, tc.independent):
        support = support.base_constraint
    return type(support) is type(tc.real)


def same_support(first: tc.Constraint, second: tc.Constraint) -> bool:
    """Structural equality of two constraints (torch's compare by identity); bounds are
    equal when they are everywhere, broadcast together (``interval(0, 1)`` and a
    ``Uniform(zeros(2), ones(2))``'s interval)."""
    if first is second:
        return True
    if type(first) is not type(second):
        return False
    mine, theirs = vars(first), vars(second)
    if mine.keys() != theirs.keys():
        return False
    for key, value in mine.items():
        other = theirs[key]
        if isinstance(value, tc.Constraint):
            if not (isinstance(other, tc.Constraint) and same_support(value, other)):
                return False
        elif isinstance(value, Tensor) or isinstance(other, Tensor):
            if not _equal_everywhere(value, other):
                return False
        elif value != other:
            return False
    return True


def _equal_everywhere(first: object, second: object) -> bool:
    """Whether two bounds (numbers or tensors) are equal entry by entry once broadcast."""
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    try:
        return bool((first == second.to(first.device)).all())
    except RuntimeError:  # shapes that do not broadcast
        return False


def _unwrapped(support: tc.Constraint) -> tc.Constraint:
    """``support`` without its ``independent`` wrappers."""
    while isinstance(support, tc.independent):
        support = support.base_constraint
    return support


def compatible(first: tc.Constraint, second: tc.Constraint) -> bool:
    """Whether two supports of events of one shape are equal up to their boundary: the
    same constraint, or ones that ``biject_to`` maps from ℝ by the same bijection
    (``positive`` and ``nonnegative``, a HalfNormal's and a Gamma's). ``independent``
    only says how many dims an event has, not which set it lies in, so
    ``independent(positive, 1)`` and ``positive`` are one support of vectors."""
    first, second = _unwrapped(first), _unwrapped(second)
    if same_support(first, second):
        return True
    try:
        return bool(biject_to(first) == biject_to(second))
    except NotImplementedError:
        return False


def intersect(node: EnergyModel, supports: Sequence[tc.Constraint]) -> tc.Constraint:
    """The support of a product (∩): ℝ is neutral, other supports must agree
    (:func:`compatible`: equal up to their boundary, which has no mass).

    Raises:
        CapabilityError: for two different constrained supports, naming ``node``.
    """
    constrained = [support for support in supports if not is_real(support)]
    if not constrained:
        return supports[0] if supports else tc.real
    first = constrained[0]
    for other in constrained[1:]:
        if not compatible(first, other):
            raise CapabilityError(
                f"{node!r} mixes the supports {first} and {other}; sampling in unconstrained "
                "space needs one support per expression (pass unconstrain=False to sample, "
                "or build the model on one support)")
    return first


def unite(node: EnergyModel, supports: Sequence[tc.Constraint]) -> tc.Constraint:
    """The support of a mixture (∪): ℝ if any component has ℝ, else the common one.

    Raises:
        CapabilityError: for two different constrained supports, naming ``node``.
    """
    for support in supports:
        if is_real(support):
            return support
    return intersect(node, supports)


# -------------------------------------------- bijections torch does not register
class LowerCholeskyVector(tt.Transform):
    """ℝ^{n(n+1)/2} → lower-triangular n×n matrices with a positive diagonal.

    The vector fills the lower triangle row by row (``torch.tril_indices``); the
    diagonal entries are exponentiated, L_ii = exp(v_ii), so
    log|det J| = Σᵢ v_ii. Shapes: ``(..., n(n+1)/2) ↔ (..., n, n)``.
    """

    domain = tc.real_vector
    codomain = tc.lower_cholesky
    bijective = True

    def __init__(self, n: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LowerCholeskyVector) and other.n == self.n

    def _indices(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = torch.tril_indices(self.n, self.n, device=like.device)
        return rows, cols, rows == cols

    def _call(self, v: Tensor) -> Tensor:
        rows, cols, diagonal = self._indices(v)
        entries = torch.where(diagonal, v.exp(), v)
        matrix = v.new_zeros(*v.shape[:-1], self.n, self.n)
        matrix[..., rows, cols] = entries
        return matrix

    def _inverse(self, matrix: Tensor) -> Tensor:
        rows, cols, diagonal = self._indices(matrix)
        entries = matrix[..., rows, cols]
        return torch.where(diagonal, entries.log(), entries)

    def log_abs_det_jacobian(self, v: Tensor, matrix: Tensor) -> Tensor:
        return v[..., self._indices(v)[2]].sum(-1)

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        return torch.Size([*shape[:-1], self.n, self.n])

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        return torch.Size([*shape[:-2], self.n * (self.n + 1) // 2])


class PositiveDefiniteVector(tt.Transform):
    """ℝ^{n(n+1)/2} → positive-definite n×n matrices, Σ = L Lᵀ with L from
    :class:`LowerCholeskyVector`.

    log|det J| (as a map onto the n(n+1)/2 free entries of Σ) adds Σᵢ v_ii for
    L_ii = exp(v_ii) to that of L ↦ L Lᵀ, n log 2 + Σᵢ (n − i + 1) log L_ii for
    i = 1…n (Muirhead 1982, Aspects of Multivariate Statistical Theory,
    Thm 2.1.9): n log 2 + Σᵢ (n − i + 2) v_ii. It is computed from v alone, so
    the sampler never factorises a matrix (only the start u = T⁻¹(x) does).
    Shapes: ``(..., n(n+1)/2) ↔ (..., n, n)``.
    """

    domain = tc.real_vector
    codomain = tc.positive_definite
    bijective = True

    def __init__(self, n: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.n = n
        self._factor = LowerCholeskyVector(n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositiveDefiniteVector) and other.n == self.n

    def _call(self, v: Tensor) -> Tensor:
        factor = self._factor(v)
        return factor @ factor.mT

    def _inverse(self, matrix: Tensor) -> Tensor:
        return self._factor.inv(torch.linalg.cholesky(matrix))

    def log_abs_det_jacobian(self, v: Tensor, matrix: Tensor) -> Tensor:
        rows, _, diagonal = self._factor._indices(v)
        powers = (self.n - rows[diagonal] + 1).to(v.dtype)  # n − i + 2 for 1-based i
        return self.n * math.log(2.0) + (powers * v[..., diagonal]).sum(-1)

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        return self._factor.forward_shape(shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        return self._factor.inverse_shape(shape)


class BlockwiseElementwise(tt.Transform):
    """ℝᵏ → a ``constraints.cat`` of elementwise supports along a vector's coordinates:
    block i (``lengths[i]`` coordinates in a row) goes through its own elementwise
    bijection Tᵢ, none for ℝ, so x = (T₁(u₁), …, T_m(u_m)) and

        log|det J_T(u)| = Σᵢ Σⱼ log|Tᵢ′(u_ij)|,   summed over the constrained blocks only.

    torch's ``CatTransform`` (what ``biject_to`` returns) computes the same for any
    dimension and part, but slices every block twice per call, makes zeros for the
    log-Jacobians of the ℝ blocks and concatenates them: on eight schools (ℝ, (0, ∞),
    ℝ⁸) at 100 chains its forward and backward took 268 µs against 120 µs for the map
    written out (docs/performance.md).
    Shapes ``(..., k) ↔ (..., k)``; the log-Jacobian is per vector, ``(...,)``.
    """

    domain = tc.real_vector
    bijective = True

    def __init__(self, support: tc.Constraint, parts: Sequence[tt.Transform | None],
                 lengths: Sequence[int], cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.support = support
        self.parts = list(parts)
        self.lengths = list(lengths)
        ends = list(itertools.accumulate(self.lengths))
        self.blocks = [(end - length, end) for end, length in zip(ends, self.lengths,
                                                                  strict=True)]

    @property
    def codomain(self) -> tc.Constraint:
        return tc.independent(self.support, 1)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BlockwiseElementwise) and other.lengths == self.lengths
                and len(other.parts) == len(self.parts)
                and all((mine is None and theirs is None) or
                        (mine is not None and theirs is not None and bool(mine == theirs))
                        for mine, theirs in zip(self.parts, other.parts, strict=True)))

    def _map(self, values: Tensor, inverse: bool) -> Tensor:
        pieces = []
        for part, (start, end) in zip(self.parts, self.blocks, strict=True):
            block = values[..., start:end]
            pieces.append(block if part is None else (part.inv if inverse else part)(block))
        return torch.cat(pieces, -1)

    def _call(self, u: Tensor) -> Tensor:
        return self._map(u, inverse=False)

    def _inverse(self, x: Tensor) -> Tensor:
        return self._map(x, inverse=True)

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        total = None
        for part, (start, end) in zip(self.parts, self.blocks, strict=True):
            if part is not None:
                term = part.log_abs_det_jacobian(u[..., start:end], x[..., start:end]).sum(-1)
                total = term if total is None else total + term
        return u.new_zeros(u.shape[:-1]) if total is None else total

    def __repr__(self) -> str:
        return f"BlockwiseElementwise({self.parts}, lengths={self.lengths})"


def _blockwise(support: tc.Constraint, event_shape: Sequence[int]
               ) -> BlockwiseElementwise | None:
    """:class:`BlockwiseElementwise` onto ``support`` when it is a ``constraints.cat`` of
    elementwise supports along the coordinates of vector events; ``None`` otherwise."""
    while isinstance(support, tc.independent):
        support = support.base_constraint
    if not isinstance(support, tc._Cat) or len(event_shape) != 1 or support.dim != -1:
        return None
    lengths = list(support.lengths)
    if len(lengths) != len(support.cseq) or sum(lengths) != event_shape[0]:
        return None
    parts = []
    for constraint in support.cseq:
        bijection = biject_to(constraint)
        if bijection.domain.event_dim or bijection.codomain.event_dim:
            return None  # a block whose coordinates are tied (a simplex): torch's CatTransform
        part = _without_identities(bijection)
        parts.append(None if part == tt.identity_transform else part)
    return BlockwiseElementwise(support, parts, lengths)


def _without_identities(transform: tt.Transform) -> tt.Transform:
    """``transform`` without its identity stages, through compositions and
    ``IndependentTransform``; the same map with fewer ops a call."""
    if isinstance(transform, tt.IndependentTransform):
        inner = _without_identities(transform.base_transform)
        return transform if inner is transform.base_transform else tt.IndependentTransform(
            inner, transform.reinterpreted_batch_ndims)
    if isinstance(transform, tt.ComposeTransform):
        stages = [_without_identities(part) for part in transform.parts]
        stages = [stage for stage in stages if stage != tt.identity_transform]
        if len(stages) == len(transform.parts) and all(
                new is old for new, old in zip(stages, transform.parts, strict=True)):
            return transform
        return stages[0] if len(stages) == 1 else tt.ComposeTransform(stages)
    return tt.identity_transform if _is_identity(transform) else transform


def _is_identity(transform: tt.Transform) -> bool:
    """An identity stage (``biject_to(positive)`` is exp followed by x ↦ 0 + 1·x)."""
    return (type(transform) is tt.AffineTransform
            and isinstance(transform.loc, int | float) and transform.loc == 0
            and isinstance(transform.scale, int | float) and transform.scale == 1)


def _is_discrete(support: tc.Constraint) -> bool:
    """Whether ``support`` is a set of integers (False where torch cannot tell, as for
    ``constraints.dependent``)."""
    try:
        return bool(support.is_discrete)
    except NotImplementedError:
        return False


def check_continuous(support: tc.Constraint) -> None:
    """Raise :class:`~ebmalgebra.CapabilityError` when ``support`` is discrete."""
    if _is_discrete(support):
        raise CapabilityError(f"the support {support} is discrete: no bijection from ℝᵏ "
                              "maps onto it, and the samplers move x continuously, so they "
                              "cannot sample it (with unconstrain=False every proposal off "
                              "the support is rejected and the chains never move)")


def _matrix_transform(support: tc.Constraint, event_shape: Sequence[int]
                      ) -> tt.Transform | None:
    """:class:`PositiveDefiniteVector` or :class:`LowerCholeskyVector` onto ``support``,
    in ``IndependentTransform`` for each ``independent`` around it; ``None`` for other
    supports."""
    if isinstance(support, tc.independent):
        inner = _matrix_transform(support.base_constraint, event_shape)
        return None if inner is None else tt.IndependentTransform(
            inner, support.reinterpreted_batch_ndims)
    if not isinstance(support, (type(tc.positive_definite), type(tc.lower_cholesky))):
        return None
    shape = tuple(event_shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise CapabilityError(f"support {support} needs square (n, n) events, got "
                              f"event shape {shape}")
    if isinstance(support, type(tc.lower_cholesky)):
        return LowerCholeskyVector(shape[-1])
    return PositiveDefiniteVector(shape[-1])


def unconstraining_transform(support: tc.Constraint, event_shape: Sequence[int]
                             ) -> tt.Transform:
    """A bijection T from unconstrained ℝᵏ onto ``support`` for events of ``event_shape``.

    ``torch.distributions.biject_to`` where torch registers one; positive-definite
    matrices and lower Cholesky factors of ``event_shape`` (..., n, n) use
    :class:`PositiveDefiniteVector` and :class:`LowerCholeskyVector` (k = n(n+1)/2 per
    matrix), through ``constraints.independent`` (an ``Independent`` Wishart).

    Raises:
        CapabilityError: when no bijection onto ``support`` is known, or the support
            is discrete (no bijection from ℝᵏ reaches it).
    """
    check_continuous(support)
    matrices = _matrix_transform(support, event_shape)
    if matrices is not None:
        return matrices
    blockwise = _blockwise(support, event_shape)
    if blockwise is not None:
        return blockwise
    try:
        return _without_identities(biject_to(support))
    except NotImplementedError as error:
        raise CapabilityError(f"no bijection from ℝᵏ onto the support {support} is known: "
                              "pass unconstrain=False to sample, or sample a pushforward "
                              "of the model yourself") from error


# ----------------------------------------------------------------- the sampler hook
class Unconstrained:
    """A model with a constrained support, seen in unconstrained coordinates.

    Attributes:
        model: the pushforward of the original model by T⁻¹, a density on ℝᵏ.
        transform: T, from unconstrained u ``(..., *model.event_shape)`` to the
            constrained x ``(..., *original.event_shape)``.
    """

    def __init__(self, model: EnergyModel, transform: tt.Transform) -> None:
        self.model = model
        self.transform = transform

    def to_unconstrained(self, x: Tensor) -> Tensor:
        """u = T⁻¹(x), shapes ``(..., *event_shape) → (..., *unconstrained shape)``."""
        return self.transform.inv(x)

    def to_constrained(self, u: Tensor) -> Tensor:
        """x = T(u), the inverse of :meth:`to_unconstrained`."""
        return self.transform(u)


def unconstrain(model: EnergyModel) -> Unconstrained | None:
    """``model`` in unconstrained coordinates, or ``None`` when its support is ℝ (or
    ``constraints.dependent``, one torch cannot state).

    Built once per model (nodes are immutable) and kept on it: every ``sample()`` of
    the model then runs the same pushforward expression, so compiled kernels
    (``jit=True``), which are cached per expression, are traced once, not per call.
    Built again when the model's dtype or device has changed (``.float()``, ``.to()``),
    so that T's tensors (a Uniform's bounds) follow it.

    Raises:
        CapabilityError: for mixed supports or a support without a known bijection.
    """
    from ebmalgebra.base import input_options

    options = input_options(model)
    key = (options["dtype"], options["device"])
    cached = model.__dict__.get("_unconstrained")
    if cached is not None and cached[0] == key:
        return cached[1]
    support = model.support
    if is_real(support) or isinstance(support, tc._Dependent):
        result = None  # ℝ, or a support torch cannot state: sample the model as it is
    else:
        event_shape = model.event_shape
        if event_shape is None:
            raise CapabilityError(f"{model!r} has support {support} but no event shape")
        bijection = unconstraining_transform(support, event_shape)
        result = Unconstrained(model.pushforward(bijection.inv), bijection)
    # A tuple, so that "no bijection needed" is cached too; not a submodule.
    object.__setattr__(model, "_unconstrained", (key, result))
    return result


def elementwise_support(node: EnergyModel, support: tc.Constraint,
                        kept: Tensor | None = None) -> tc.Constraint:
    """``support`` on the vector of the coordinates where ``kept`` (bool, of the event
    shape; all coordinates when ``None``) is True, in row-major order (for ``condition``).
    Tensor bounds (a ``Uniform``'s per-coordinate interval) and the blocks of a
    ``constraints.cat`` keep the entries of those coordinates only.

    Raises:
        CapabilityError: when ``support`` ties coordinates together (a simplex), or its
            bounds or blocks do not fit the event shape.
    """
    base = _unwrapped(support)
    if is_real(base):
        return tc.real_vector
    if base.event_dim != 0:
        raise CapabilityError(f"{node!r}: the support {support} ties the coordinates "
                              "together, so the free ones have no support of their own")
    if kept is not None:
        base = _restricted(node, base, kept)
    return tc.independent(base, 1)


def _restricted(node: EnergyModel, support: tc.Constraint, kept: Tensor) -> tc.Constraint:
    """An elementwise ``support`` on the coordinates where ``kept`` is True: a copy whose
    tensor attributes (bounds) are broadcast to ``kept.shape`` and masked, and a ``cat``
    along a vector event cut to the kept coordinates of each block."""
    if isinstance(support, tc._Cat):
        return _restricted_cat(node, support, kept)
    tensors = {name: value for name, value in vars(support).items()
               if isinstance(value, Tensor) and value.dim() > 0}
    if not tensors:
        return support
    restricted = copy.copy(support)
    for name, value in tensors.items():
        try:
            full = torch.broadcast_to(value, kept.shape)
        except RuntimeError:
            raise CapabilityError(f"{node!r}: the {name} of the support {support} has shape "
                                  f"{tuple(value.shape)}, which does not broadcast to the "
                                  f"event shape {tuple(kept.shape)}") from None
        setattr(restricted, name, full[kept.to(value.device)])
    return restricted


def _restricted_cat(node: EnergyModel, support: tc.Constraint, kept: Tensor
                    ) -> tc.Constraint:
    lengths = [int(length) for length in support.lengths]
    if kept.dim() != 1 or support.dim != -1 or sum(lengths) != kept.numel():
        raise CapabilityError(f"{node!r}: the support {support} (lengths {lengths} along "
                              f"dim {support.dim}) is not split along a vector event of "
                              f"{tuple(kept.shape)}, so its free coordinates have no support")
    parts, kept_lengths, start = [], [], 0
    for part, length in zip(support.cseq, lengths, strict=True):
        block = kept[start:start + length]
        start += length
        if block.any():
            parts.append(_restricted(node, part, block))
            kept_lengths.append(int(block.sum()))
    return tc.cat(parts, -1, kept_lengths)
