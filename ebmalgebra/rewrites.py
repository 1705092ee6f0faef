"""Closed-form rewrites of Gaussian sub-expressions (opt-in: ``compile(..., closed_form=True)``).

Each node says how its Gaussian form follows from its children's
(``node.gaussian_form(forms)``, :mod:`ebmalgebra.quadratic`): Gaussian leaves
are quadratic forms E(x) = ½ xᵀPx − hᵀx + c, ``&`` adds them, ``** β`` scales
them, weights and ``normalized`` shift c, and ``|`` collects Gaussian
components with masses w_k Z_k. A sub-expression whose form exists and is
proper becomes one Gaussian (mixture) leaf with exact log Z and exact
sampling (weighted by its mass, in nested weights where one float cannot hold
it; a mixture whose lighter components' weights round to 0 is left to its
parts); the rest is left as it is, each node rewriting its children
(``node.rewrite(rewrite_closed_forms)``; a product also folds its Gaussian
factors together).
"""

from __future__ import annotations

import math

import torch

from ebmalgebra.base import EnergyModel
from ebmalgebra.quadratic import (  # noqa: F401 - re-exported for callers of the forms
    Components,
    Form,
    Quadratic,
    as_quadratic,
)

__all__ = ["Components", "Quadratic", "closed_form", "rewrite_closed_forms"]


def closed_form(model: EnergyModel) -> Form | None:
    """The Gaussian form of ``model``'s energy, or ``None`` if it is not Gaussian."""
    forms = [closed_form(child) for child in model.operands()]
    if any(form is None for form in forms):
        return None
    return model.gaussian_form(forms)


def _materialise(form: Form, source: EnergyModel) -> EnergyModel | None:
    """A Gaussian (mixture) leaf, weighted by its normaliser, equal in energy to ``form``."""
    from ebmalgebra.targets import GaussianMixture, MultivariateGaussian

    components = form.as_components() if isinstance(form, Quadratic) else form
    if components is None:
        return None
    dtype = next(buffer.dtype for leaf in source.leaves() for buffer in leaf.buffers())
    name = f"[{source!r}]"
    log_mass = torch.logsumexp(components.log_masses, 0)
    if components.log_masses.shape[0] == 1:
        leaf = MultivariateGaussian(components.means[0].to(dtype),
                                    components.covariances[0].to(dtype), name=name)
    else:
        weights = torch.softmax(components.log_masses, 0).to(dtype)
        if not bool((weights > 0).all()):
            # A component e^{−745} (float64) times lighter than another has weight 0, which
            # a GaussianMixture cannot hold, and it can still dominate far out: the parts
            # are rewritten one by one instead.
            return None
        leaf = GaussianMixture(components.means.to(dtype),
                               covariances=components.covariances.to(dtype),
                               weights=weights, name=name)
    return _weighted(float(log_mass), leaf)


_LARGEST_LOG_WEIGHT = 700.0
"""|log w| of the weights :func:`_weighted` nests: e^±700 is a normal float."""


def _weighted(log_mass: float, leaf: EnergyModel) -> EnergyModel:
    """``leaf`` weighted by the mass e^{log m}. A mass beyond the floats (two Gaussians far
    apart, log m ≈ −3600) is split into nested weights, whose log-weights add exactly."""
    from ebmalgebra.ops import Weight

    # A mass within float round-off of 1 is 1: no weight node for it.
    if abs(log_mass) < 1e-12:
        return leaf
    pieces = math.ceil(abs(log_mass) / _LARGEST_LOG_WEIGHT)
    for _ in range(pieces):
        leaf = Weight(math.exp(log_mass / pieces), leaf)
    return leaf


def rewrite_closed_forms(model: EnergyModel) -> EnergyModel:
    """Replace Gaussian sub-expressions by Gaussian / Gaussian-mixture leaves.

    The result has the same energy as ``model`` (up to float error); rewritten
    parts gain exact log Z and exact sampling. Sub-expressions with nothing to
    rewrite are returned as they are (the same objects).
    """
    if not model.operands():
        return model
    form = closed_form(model)
    if form is not None:
        built = _materialise(form, model)
        if built is not None:
            return built
    return model.rewrite(rewrite_closed_forms)


def rewrite_product(model: EnergyModel, rewrite) -> EnergyModel:
    """A product with its Gaussian factors folded into one leaf and the others rewritten."""
    from ebmalgebra.ops import Product

    gaussian, others = [], []
    for factor in model.operands():
        form = closed_form(factor)
        quadratic = None if form is None else as_quadratic(form)
        if quadratic is None:
            others.append(factor)
        else:
            gaussian.append((factor, quadratic))
    factors = [rewrite(f) for f in others]
    changed = any(new is not old for new, old in zip(factors, others, strict=True))
    built = None
    if len(gaussian) >= 2:
        total = gaussian[0][1]
        for _, quadratic in gaussian[1:]:
            total = total + quadratic
        built = _materialise(total, Product(*(f for f, _ in gaussian)))
    if built is not None:
        factors.append(built)
    else:
        rewritten = [rewrite(f) for f, _ in gaussian]
        changed = changed or any(new is not old for new, (old, _) in
                                 zip(rewritten, gaussian, strict=True))
        factors.extend(rewritten)
    return Product(*factors) if changed or built is not None else model
