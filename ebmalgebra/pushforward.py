"""Pushforward through an invertible transform: ``a.pushforward(T)`` / ``transform(a, T)``.

For x with density p̃_a and an invertible ``torch.distributions.transforms.Transform``
T, y = T(x) has the density (change of variables)

    p̃(y) = p̃_a(T⁻¹(y)) · |det J_{T⁻¹}(y)|,   E(y) = E_a(x) + log|det J_T(x)|,  x = T⁻¹(y),

    s(y) = J_{T⁻¹}(y)ᵀ s_a(x) − ∇_y log|det J_T(x(y))|.

The mass is unchanged, so log Z and exact sampling (y = T(x), x ~ a) carry
over from ``a``. The main use is a model over constrained values sampled in
unconstrained space, as NumPyro and Stan handle constraints: a Gamma leaf on
(0, ∞) pushed forward by ``ExpTransform().inv`` (the log) is a density on ℝ
that HMC samples without ever leaving the support; ``exp`` of the draws are
Gamma draws.

Canonical form: the identity transform is dropped, and nested pushforwards
compose, ``a.pushforward(T1).pushforward(T2)`` is ``a.pushforward(T2 ∘ T1)``.
Closed form: Gaussians pushed forward by affine maps are Gaussians
(``compile(..., closed_form=True)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import transforms as tt
from torch.distributions.constraints import Constraint

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, EnergyModel, TimeLike
from ebmalgebra.errors import CompositionError
from ebmalgebra.operator import ATOM, Operator
from ebmalgebra.reverse_pass import inference_mode_blocks_autograd, recordable, vector_jacobian

__all__ = ["Pushforward", "transform"]


def _moved(transform: tt.Transform, fn: Callable[[Tensor], Tensor]) -> tt.Transform:
    """``transform`` with ``fn`` (what ``.to()`` / ``.double()`` apply) applied to the
    tensors it holds (an affine's loc and scale, a power's exponent), through
    compositions, inverses and the transforms it wraps (an ``IndependentTransform``'s
    base, a ``CatTransform``'s blocks); the transform itself when it holds none."""
    if isinstance(transform, tt.ComposeTransform):
        parts = [_moved(part, fn) for part in transform.parts]
        if all(new is old for new, old in zip(parts, transform.parts, strict=True)):
            return transform
        return tt.ComposeTransform(parts, cache_size=transform._cache_size)
    if isinstance(transform, tt._InverseTransform):
        inner = _moved(transform.inv, fn)
        return transform if inner is transform.inv else inner.inv
    changed = {}
    for name, value in vars(transform).items():
        if name not in ("_inv", "_cached_x_y"):  # the inverse and the cache are not state
            new = _moved_value(value, fn)
            if new is not value:
                changed[name] = new
    if not changed:
        return transform
    moved = copy.copy(transform)
    for name, value in changed.items():
        setattr(moved, name, value)
    moved._inv = None  # the copy's inverse is built afresh from the moved tensors
    return moved


def _moved_value(value: object, fn: Callable[[Tensor], Tensor]) -> object:
    """An attribute of a transform with ``fn`` applied to its tensors (the attribute
    itself when it has none): a tensor, a transform, or a list or tuple of them."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tt.Transform):
        return _moved(value, fn)
    if isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        items = [_moved_value(item, fn) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


def _parts(transform: tt.Transform) -> list[tt.Transform]:
    """The transform as a flat list of its stages (an identity has none)."""
    if isinstance(transform, tt.ComposeTransform):
        return [part for stage in transform.parts for part in _parts(stage)]
    return [] if transform == tt.identity_transform else [transform]


def _summed(ladj: Tensor, n: int) -> Tensor:
    """log|det J| per sample ``(n,)`` from an elementwise or per-event result (flattened,
    not reshaped to ``(n, -1)``, which an empty batch leaves undetermined)."""
    return ladj.flatten(1).sum(1) if ladj.dim() > 1 else ladj.expand(n)


class Pushforward(Operator):
    """The density of y = T(x) for x from ``base`` and an invertible transform T.

    Energy E(y) = E_base(T⁻¹(y)) + log|det J_T(T⁻¹(y))|, score by the chain
    rule through T⁻¹ (one reverse pass over the transform; the base's own
    score is used as it is). log Z and exact sampling are the base's.

    Args:
        base: the model of x.
        transform: a bijective ``torch.distributions.transforms.Transform``
            whose domain fits ``base.event_shape``.

    Example:
        >>> from torch.distributions import Gamma
        >>> from torch.distributions.transforms import ExpTransform
        >>> log_gamma = eb.from_distribution(Gamma(2.0, 3.0)).pushforward(ExpTransform().inv)
    """

    symbol = "pushforward"
    passes_impropriety = True

    @classmethod
    def canonical(cls, base: EnergyModel, transform: tt.Transform) -> EnergyModel | None:
        _check_transform(transform, base)
        parts = _parts(transform)
        if not parts:
            return base
        if type(base) is cls:
            return cls(base.base, tt.ComposeTransform([*_parts(base.transform), *parts]))
        if isinstance(transform, tt.ComposeTransform) and len(parts) == 1:
            return cls(base, parts[0])
        return None

    def __init__(self, base: EnergyModel, transform: tt.Transform) -> None:
        super().__init__(base)
        self.transform = transform
        shape = base.event_shape
        self._event_shape = None if shape is None else torch.Size(transform.forward_shape(shape))

    @property
    def base(self) -> EnergyModel:
        return self._children[0]

    @property
    def analytic_score(self) -> bool:
        """Whether compiled programs take this node's own ``_energy_and_score`` (the
        base's score pulled back through T⁻¹): only when the base's score needs no
        autograd. A base scored by autograd (``from_energy``, ``from_log_prob`` and
        ``from_distribution`` leaves, what ``sample`` unconstrains) makes the node an
        autograd leaf of the program instead: E(y) is differentiated whole, one reverse
        pass through the base's energy and T⁻¹ together, where pulling back would take
        the base's pass and a second one through T⁻¹."""
        return self.base.analytic_score

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Pushforward:
        """``.to()``, ``.double()``, … reach the transform's tensors too (a transform is
        not a module, so nn.Module would leave them behind)."""
        super()._apply(fn, recurse)
        object.__setattr__(self, "transform", _moved(self.transform, fn))
        return self

    @property
    def args(self) -> tuple:
        return (self.base, self.transform)

    def params(self) -> dict[str, Any]:
        return {"transform": self.transform}

    def structure(self) -> tuple:
        # Transforms compare by identity; a composition by its stages.
        return ("Pushforward", tuple(id(part) for part in _parts(self.transform)),
                (self.base.structure(),))

    def derive_capabilities(self) -> Capabilities:
        caps = self.base.capabilities
        return Capabilities(has_energy=caps.has_energy, has_score=caps.has_score,
                            normalizer_known=caps.normalizer_known,
                            can_sample=caps.can_sample)

    def _why_not(self, capability: str) -> tuple[EnergyModel, str] | None:
        return self.base._why_not(capability)

    # ------------------------------------------------------------- evaluation
    def _energy(self, y: Tensor, t: TimeLike) -> Tensor:
        x = self.transform.inv(y)
        ladj = _summed(self.transform.log_abs_det_jacobian(x, y), y.shape[0])
        return self.base._energy(x, t) + ladj

    def _score(self, y: Tensor, t: TimeLike, create_graph: bool) -> Tensor:
        return self._pull_back(y, t, create_graph, with_energy=False)[1]

    def _energy_and_score(self, y: Tensor, t: TimeLike, create_graph: bool
                          ) -> tuple[Tensor, Tensor]:
        return self._pull_back(y, t, create_graph, with_energy=True)

    def _pull_back(self, y: Tensor, t: TimeLike, create_graph: bool, with_energy: bool
                   ) -> tuple[Tensor | None, Tensor]:
        """(E(y), s(y)): the base's energy and score at x = T⁻¹(y), pulled back to y.

        Inside ``torch.compile``, which cannot trace ``torch.autograd.grad``, E(y) is
        differentiated whole with ``torch.func.vjp`` instead (one reverse pass through
        the base's energy and the transform), the same score up to rounding. Under
        ``torch.inference_mode()`` the passes run outside it, as for autograd leaves.
        """
        if inference_mode_blocks_autograd():
            with torch.inference_mode(False), torch.no_grad():
                return self._pull_back(recordable(y), t, create_graph, with_energy)
        if with_energy and not create_graph and torch.compiler.is_compiling():
            energy, pullback = torch.func.vjp(lambda inputs: self._energy(inputs, t), y)
            (grad,) = pullback(torch.ones_like(energy))
            return energy, -grad
        with torch.enable_grad():
            inputs = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
            x = self.transform.inv(inputs)
            ladj = _summed(self.transform.log_abs_det_jacobian(x, inputs), y.shape[0])
        point = x if create_graph else x.detach()
        if with_energy:
            energy, score = self.base._energy_and_score(point, t, create_graph)
        else:
            energy, score = None, self.base._score(point, t, create_graph)
        outputs, cotangents = [x], [score]
        if ladj.requires_grad:
            outputs.append(ladj)
            cotangents.append(-torch.ones_like(ladj))
        with torch.enable_grad():
            (pulled,) = vector_jacobian(outputs, cotangents, (inputs,), create_graph)
        pulled = torch.zeros_like(y) if pulled is None else pulled
        if energy is not None:
            energy = energy + (ladj if create_graph else ladj.detach())
        return energy, pulled

    def _log_z(self) -> Tensor:
        return self.base._log_z()

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.transform(self.base._sample(n, generator))

    # ------------------------------------------------------------------ rules
    def gaussian_form(self, forms: list) -> object | None:
        """Gaussians stay Gaussian under affine maps y = loc + scale ⊙ x (each stage an
        ``AffineTransform``): with D = diag(1/scale), (P, h, c) becomes
        (DPD, DPD·loc + Dh, ½ locᵀDPD loc + hᵀD loc + c + Σ log|scale|), and mixture
        components move to (scale ⊙ μ + loc, diag(scale) Σ diag(scale)) with their masses."""
        form = forms[0]
        for part in _parts(self.transform):
            if type(part) is not tt.AffineTransform:
                return None
            form = _affine_form(form, part)
        return form

    # ------------------------------------------------------------------ facts
    @property
    def support(self) -> Constraint:
        return self.transform.codomain

    def sampling_exponent(self) -> float:
        return self.base.sampling_exponent()

    def with_operands(self, operands: list[EnergyModel]) -> EnergyModel:
        (base,) = operands
        return Pushforward(base, self.transform)

    def spec(self) -> dict[str, Any]:
        from ebmalgebra.io.transforms import encode

        return {"transform": encode(self.transform, self)}

    @classmethod
    def rebuild(cls, operands: tuple[EnergyModel, ...], spec: dict[str, Any]) -> EnergyModel:
        from ebmalgebra.io.transforms import decode

        (base,) = operands
        return cls(base, decode(spec["transform"]))

    def __repr__(self) -> str:
        return f"{self.base.parenthesized(ATOM)}.pushforward({_describe(self.transform)})"


def _affine_form(form: object, affine: tt.AffineTransform) -> object:
    from ebmalgebra.quadratic import Components, Quadratic

    reference = form.precision if isinstance(form, Quadratic) else form.means
    dim = reference.shape[-1]
    loc = torch.as_tensor(affine.loc).to(reference).expand(dim)
    scale = torch.as_tensor(affine.scale).to(reference).expand(dim)
    if isinstance(form, Components):
        covariances = scale[:, None] * form.covariances * scale[None, :]
        return Components(form.log_masses, form.means * scale + loc, covariances)
    inverse = 1.0 / scale
    precision = inverse[:, None] * form.precision * inverse[None, :]
    return Quadratic(precision, precision @ loc + inverse * form.shift,
                     0.5 * loc @ precision @ loc + form.shift @ (inverse * loc)
                     + form.constant + scale.abs().log().sum())


def _describe(transform: tt.Transform) -> str:
    parts = _parts(transform)
    return " ∘ ".join(repr(part) for part in reversed(parts))


def _check_transform(transform: object, base: EnergyModel) -> None:
    if not isinstance(transform, tt.Transform):
        raise CompositionError(f"pushforward of {base!r}: transform must be a "
                               "torch.distributions.transforms.Transform, got "
                               f"{type(transform).__name__}")
    if not transform.bijective:
        raise CompositionError(f"pushforward of {base!r}: {transform!r} is not bijective, so "
                               "the density of T(x) has no change-of-variables form")
    for part in _parts(transform):
        affine = part.inv if isinstance(part, tt._InverseTransform) else part
        if isinstance(affine, tt.AffineTransform):
            # A zero scale is bijective to torch, but maps everything to loc.
            validation.nonzero_entries(f"pushforward of {base!r}: AffineTransform scale",
                                       torch.as_tensor(affine.scale))
    shape = base.event_shape
    if shape is not None and len(shape) < transform.domain.event_dim:
        raise CompositionError(f"pushforward of {base!r}: {transform!r} acts on "
                               f"{transform.domain.event_dim}-D events, but the event shape "
                               f"is {tuple(shape)}")


def transform(model: EnergyModel, transform: tt.Transform) -> EnergyModel:
    """``model.pushforward(transform)``: the density of T(x) for x from ``model``."""
    return Pushforward(model, transform)
