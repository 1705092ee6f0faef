"""Gaussian closed forms of energies: quadratic forms and Gaussian-mixture masses.

A Gaussian energy is a quadratic form E(x) = ½ xᵀPx − hᵀx + c (:class:`Quadratic`).
Quadratic forms are closed under the algebra's linear operations (``&`` adds them,
``** β`` scales them, weights and ``normalized`` shift c), and a mixture of
Gaussian terms is a :class:`Components` list with masses m_k = w_k Z_k. Each node
says how its form follows from its children's (``node.gaussian_form(forms)``);
:mod:`ebmalgebra.rewrites` turns the forms back into Gaussian leaves.

When P is positive definite the form is ``Z · N(μ, Σ)`` with Σ = P⁻¹, μ = Σh and
log Z = −c + ½ hᵀΣh + ½ log det(2πΣ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Components", "Quadratic", "as_quadratic", "concatenate", "from_gaussian"]

LOG_2PI = math.log(2.0 * math.pi)


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

    def smallest_eigenvalue(self) -> float:
        """λ_min of P: E is unbounded below (or flat) when it is ≤ 0."""
        return float(torch.linalg.eigvalsh(0.5 * (self.precision + self.precision.mT))[0])

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
                    - torch.diagonal(tril).log().sum() + 0.5 * dim * LOG_2PI)
        return Components(log_mass[None], mean[None], covariance[None])


@dataclass(frozen=True)
class Components:
    """E(x) = −logsumexp_k(log m_k + log N(x; μ_k, Σ_k)), masses m_k = w_k Z_k."""

    log_masses: Tensor
    means: Tensor
    covariances: Tensor

    def shifted(self, offset: float | Tensor) -> Components:
        return Components(self.log_masses - offset, self.means, self.covariances)


Form = Quadratic | Components


def from_gaussian(mean: Tensor, covariance: Tensor) -> Quadratic:
    """The normalised N(μ, Σ) energy as a quadratic form."""
    mean, covariance = mean.double(), covariance.double()
    precision = torch.linalg.inv(covariance)
    tril = torch.linalg.cholesky(covariance)
    constant = (0.5 * mean @ precision @ mean + torch.diagonal(tril).log().sum()
                + 0.5 * mean.shape[0] * LOG_2PI)
    return Quadratic(precision, precision @ mean, constant)


def as_quadratic(form: Form) -> Quadratic | None:
    """``form`` as one quadratic (a one-component mixture is one), else ``None``."""
    if isinstance(form, Quadratic):
        return form
    if form.log_masses.shape[0] != 1:
        return None
    return from_gaussian(form.means[0], form.covariances[0]).shifted(-form.log_masses[0])


def concatenate(forms: list[Form]) -> Components | None:
    """The mixture (sum of densities) of ``forms``; ``None`` if a part is improper."""
    parts = [form.as_components() if isinstance(form, Quadratic) else form for form in forms]
    if any(part is None for part in parts):
        return None
    return Components(torch.cat([p.log_masses for p in parts]),
                      torch.cat([p.means for p in parts]),
                      torch.cat([p.covariances for p in parts]))
