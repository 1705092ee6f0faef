"""Concept negation by Bayes' rule: ``without(a, b, reference)``, ``a`` with ``b`` explained away.

``a & ~b`` (E_a − E_b) cannot be normalised: −E_b falls without bound away
from b's data, and samplers run off there. The stable form
``a & (reference & ~b) ** α`` (E_a + α (E_ref − E_b); Du, Li & Mordatch 2020,
"Compositional visual generation with energy based models") is bounded only
where the reference outgrows b, and pushes everywhere, also where b is absent.

``without`` instead keeps the samples of ``a`` that an implicit classifier
calls "not b". Two models b and ``reference`` with prior odds π_b : π_ref
define, by Bayes' rule, the posterior probability of the class b,

    P(b | x) = σ(ℓ(x)),   ℓ(x) = log p_b(x) − log p_ref(x) + log(π_b / π_ref)
                               = E_ref(x) − E_b(x) + λ,

with the unnormalised energies and λ = log(π_b / π_ref) + log Z_ref − log Z_b
(``log_odds``). The node is p_a(x) · P(not b | x) = p_a(x) σ(−ℓ(x)):

    E(x) = E_a(x) + softplus(E_ref(x) − E_b(x) + λ)   ≥ E_a(x),

so it is normalisable whenever ``a`` is (Z ≤ Z_a), however improper ``~b``
is. Where the classifier is sure there is no b (ℓ ≪ 0) the node is ``a``;
where it sees b (ℓ ≫ 0) it is ``a & reference & ~b`` shifted by λ. Its score is
s_a + σ(ℓ)(s_ref − s_b). For noise-conditioned children every term is taken at
the same noise level t (λ a constant over t; the exact λ(t) has the
normalisers at t).

``log_odds`` is λ: with normalised b and reference it is the log prior odds;
raising it removes b more firmly (the penalty on b's samples grows like λ
while the samples without b keep ℓ ≪ 0 and are untouched).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import EnergyModel
from ebmalgebra.operator import Operator

__all__ = ["Without", "without"]


class Without(Operator):
    """p_a(x) · P(not b | x): E = E_a + softplus(E_ref − E_b + λ) (module docstring).

    Args:
        a: the model to keep.
        b: the concept to remove.
        reference: the model the classifier weighs b against (e.g. all faces
            for b = faces with a hat).
        log_odds: λ = log(π_b / π_ref) + log Z_ref − log Z_b, the classifier's
            offset (0 for normalised models with even prior odds).

    Shapes: x ``(batch, *event_shape)`` → energy ``(batch,)``.

    Example:
        >>> without(glasses, hat, face, log_odds=4.0)
        without(glasses, hat, face, log_odds=4)
    """

    symbol = "without"

    def __init__(self, a: EnergyModel, b: EnergyModel, reference: EnergyModel,
                 log_odds: float = 0.0) -> None:
        super().__init__(a, b, reference)
        self.log_odds = validation.real("without: log_odds", log_odds)

    def params(self) -> dict[str, Any]:
        return {"log_odds": self.log_odds}

    def combine(self, energies: list[Tensor]) -> Tensor:
        energy_a, energy_b, energy_reference = energies
        return energy_a + torch.nn.functional.softplus(energy_reference - energy_b
                                                       + self.log_odds)

    def sampling_exponent(self) -> float:
        # Where the classifier sees b the score is s_a + σ(ℓ)(s_ref − s_b): one more
        # energy's curvature on top of a's (a difference of two, weighted by σ ≤ 1).
        a, b, reference = self.operands()
        return a.sampling_exponent() + max(b.sampling_exponent(),
                                           reference.sampling_exponent())


def without(a: EnergyModel, b: EnergyModel, reference: EnergyModel,
            log_odds: float = 0.0) -> Without:
    """``a`` with the concept ``b`` explained away against ``reference``: :class:`Without`.

    E = E_a + softplus(E_ref − E_b + log_odds) ≥ E_a, normalisable whenever ``a`` is.

    Example:
        >>> glasses_no_hat = without(zoo.load("glasses"), zoo.load("hat"),
        ...                          zoo.load("face"), log_odds=4.0)
    """
    return Without(a, b, reference, log_odds=log_odds)
