"""Closed-form rewrites of Gaussian sub-expressions (opt-in: ``compile(..., closed_form=True)``).

A Gaussian energy is a quadratic form E(x) = ½ xᵀPx − hᵀx + c. Quadratic
forms are closed under the algebra's linear operations:

* ``a & b``: P = P_a + P_b, h = h_a + h_b, c = c_a + c_b;
* ``a ** β``: (βP, βh, βc);  ``w * a``: c − log w;  ``normalized``: c + log Z.

When P is positive definite the form is ``Z · N(μ, Σ)`` with Σ = P⁻¹,
μ = Σh and log Z = −c + ½ hᵀΣh + ½ log det(2πΣ), which gains an exact log Z
and an exact sampler. A mixture of such terms is a Gaussian mixture with
weights ∝ Z_k. Sub-expressions that are not Gaussian are left as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ebmalgebra.base import EnergyModel
from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight, mixture, power, product
from ebmalgebra.targets import Gaussian, GaussianMixture, MultivariateGaussian

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Quadratic:
    """E(x) = ½ xᵀ P x − hᵀ x + c (float64)."""

    precision: Tensor
    shift: Tensor
    constant: Tensor

    def __add__(self, other: Quadratic) -> Quadratic:
        return Quadratic(self.precision + other.precision, self.shift + other.shift,
                         self.constant + other.constant)

    def scaled(self, beta: float) -> Quadratic:
        return Quadratic(beta * self.precision, beta * self.shift, beta * self.constant)

    def shifted(self, offset: float | Tensor) -> Quadratic:
        return Quadratic(self.precision, self.shift, self.constant + offset)

    def as_components(self) -> Components | None:
        """``Z · N(μ, Σ)`` as a one-component mixture, if P is positive definite."""
        precision = 0.5 * (self.precision + self.precision.mT)
        tril, info = torch.linalg.cholesky_ex(precision)
        if info != 0:
            return None
        covariance = torch.cholesky_inverse(tril)
        mean = covariance @ self.shift
        dim = mean.shape[0]
        log_mass = (-self.constant + 0.5 * self.shift @ mean
                    - torch.diagonal(tril).log().sum() + 0.5 * dim * _LOG_2PI)
        return Components(log_mass[None], mean[None], covariance[None])


@dataclass(frozen=True)
class Components:
    """E(x) = −logsumexp_k(log m_k + log N(x; μ_k, Σ_k)), masses m_k = w_k Z_k."""

    log_masses: Tensor
    means: Tensor
    covariances: Tensor

    def shifted(self, offset: float | Tensor) -> Components:
        return Components(self.log_masses - offset, self.means, self.covariances)


def _gaussian_quadratic(leaf: EnergyModel) -> Quadratic | None:
    if isinstance(leaf, Gaussian) and len(leaf.event_shape) != 1:
        return None
    if not isinstance(leaf, Gaussian | MultivariateGaussian):
        return None
    mean, covariance = (p.double() for p in leaf.gaussian_parameters())
    precision = torch.linalg.inv(covariance)
    tril = torch.linalg.cholesky(covariance)
    constant = (0.5 * mean @ precision @ mean + torch.diagonal(tril).log().sum()
                + 0.5 * mean.shape[0] * _LOG_2PI)
    return Quadratic(precision, precision @ mean, constant)


def closed_form(model: EnergyModel) -> Quadratic | Components | None:
    """The Gaussian form of ``model``'s energy, or ``None`` if it is not Gaussian."""
    if isinstance(model, GaussianMixture):
        covariances = model.scale_trils.double() @ model.scale_trils.double().mT
        return Components(model.weights.double().log(), model.locs.double(), covariances)
    if not model.operands():
        return _gaussian_quadratic(model)
    forms = [closed_form(child) for child in model.operands()]
    if any(form is None for form in forms):
        return None
    if isinstance(model, Weight):
        return forms[0].shifted(-model.log_weight)
    if isinstance(model, Normalized):
        return forms[0].shifted(model.log_normalizer.double())
    if isinstance(model, Product | Power):
        quadratics = [_as_quadratic(form) for form in forms]
        if any(q is None for q in quadratics):
            return None
        if isinstance(model, Power):
            return quadratics[0].scaled(model.exponent)
        total = quadratics[0]
        for quadratic in quadratics[1:]:
            total = total + quadratic
        return total
    if isinstance(model, Mixture):
        parts = [form.as_components() if isinstance(form, Quadratic) else form for form in forms]
        if any(part is None for part in parts):
            return None
        return Components(torch.cat([p.log_masses for p in parts]),
                          torch.cat([p.means for p in parts]),
                          torch.cat([p.covariances for p in parts]))
    return None


def _as_quadratic(form: Quadratic | Components) -> Quadratic | None:
    if isinstance(form, Quadratic):
        return form
    if form.log_masses.shape[0] != 1:
        return None
    covariance = form.covariances[0]
    precision = torch.linalg.inv(covariance)
    mean = form.means[0]
    tril = torch.linalg.cholesky(covariance)
    constant = (0.5 * mean @ precision @ mean + torch.diagonal(tril).log().sum()
                + 0.5 * mean.shape[0] * _LOG_2PI - form.log_masses[0])
    return Quadratic(precision, precision @ mean, constant)


def _materialise(form: Quadratic | Components, source: EnergyModel) -> EnergyModel | None:
    """A Gaussian (mixture) leaf, weighted by its normaliser, equal in energy to ``form``."""
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
        leaf = GaussianMixture(components.means.to(dtype),
                               covariances=components.covariances.to(dtype),
                               weights=torch.softmax(components.log_masses, 0).to(dtype),
                               name=name)
    # A mass within float round-off of 1 is 1: no weight node for it.
    return leaf if abs(float(log_mass)) < 1e-12 else Weight(math.exp(float(log_mass)), leaf)


def rewrite_closed_forms(model: EnergyModel) -> EnergyModel:
    """Replace Gaussian sub-expressions by Gaussian / Gaussian-mixture leaves.

    The result has the same energy as ``model`` (up to float error); rewritten
    parts gain exact log Z and exact sampling. Sub-expressions with nothing to
    rewrite are returned as they are (the same objects).
    """
    children = model.operands()
    if not children:
        return model
    form = closed_form(model)
    if form is not None:
        built = _materialise(form, model)
        if built is not None:
            return built
    if isinstance(model, Product):
        return _rewrite_product(model)
    rewritten = [rewrite_closed_forms(child) for child in children]
    if all(new is old for new, old in zip(rewritten, children, strict=True)):
        return model
    if isinstance(model, Mixture):
        return mixture(*rewritten)
    if isinstance(model, Weight):
        return model.weight * rewritten[0]
    if isinstance(model, Power):
        return power(rewritten[0], model.exponent)
    if isinstance(model, Normalized):
        return Normalized(rewritten[0], float(model.log_normalizer))
    return model


def _rewrite_product(model: Product) -> EnergyModel:
    """Fold the Gaussian factors of a product into one leaf; rewrite the rest."""
    gaussian, others = [], []
    for factor in model.operands():
        form = closed_form(factor)
        quadratic = None if form is None else _as_quadratic(form)
        if quadratic is None:
            others.append(factor)
        else:
            gaussian.append((factor, quadratic))
    factors = [rewrite_closed_forms(f) for f in others]
    changed = any(new is not old for new, old in zip(factors, others, strict=True))
    built = None
    if len(gaussian) >= 2:
        total = gaussian[0][1]
        for _, quadratic in gaussian[1:]:
            total = total + quadratic
        built = _materialise(total, product(*(f for f, _ in gaussian)))
    if built is not None:
        factors.append(built)
    else:
        rewritten = [rewrite_closed_forms(f) for f, _ in gaussian]
        changed = changed or any(new is not old for new, (old, _) in
                                 zip(rewritten, gaussian, strict=True))
        factors.extend(rewritten)
    return product(*factors) if changed or built is not None else model
