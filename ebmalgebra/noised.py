"""A Gaussian mixture diffused by a noise schedule: exact energies at every noise level.

If x_0 ~ Σ_k π_k N(μ_k, Σ_k) and x_t = α_t x_0 + σ_t ε with ε ~ N(0, I), then

    p_t(x) = Σ_k π_k N(x; α_t μ_k, α_t² Σ_k + σ_t² I),

again a Gaussian mixture (for VE, α_t = 1: variances Σ_k + σ_t² I). So a noised
mixture is a noise-conditioned leaf E(x, t) = −log p_t(x) with closed-form energy,
score and log Z = 0 at every t: the ground truth for annealed samplers and SMC
over noise levels. Build it with ``GaussianMixture(...).noised(schedule)``.

Each covariance is diagonalised once, Σ_k = U_k diag(λ_k) U_kᵀ; then
α² Σ_k + σ² I = U_k diag(α² λ_k + σ²) U_kᵀ for every t, so a batch with one noise
level per row costs no factorisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, TimeLike
from ebmalgebra.errors import CompositionError
from ebmalgebra.leaves import Leaf
from ebmalgebra.schedules import NoiseSchedule
from ebmalgebra.targets import _as_tensor, _cholesky, _positive

__all__ = ["NoisedGaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _checked_mixture(name: str, locs: Tensor, covariances: Tensor,
                     weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """μ ``(K, d)``, Σ ``(K, d, d)`` symmetric positive definite and π ``(K,)`` > 0
    normalised to sum 1, as detached floating tensors in μ's dtype."""
    locs = _as_tensor(locs, f"{name}: locs")
    if locs.dim() != 2:
        raise CompositionError(f"{name}: locs must be (K, d), got {tuple(locs.shape)}")
    n_components, dim = locs.shape
    covariances = _as_tensor(covariances, f"{name}: covariances", locs.dtype).to(locs.dtype)
    if covariances.shape != (n_components, dim, dim):
        raise CompositionError(f"{name}: covariances must be ({n_components}, {dim}, {dim}), "
                               f"got {tuple(covariances.shape)}")
    _cholesky(covariances, f"{name}: covariances")
    weights = _positive(weights, f"{name}: weights", locs.dtype).to(locs.dtype)
    if weights.shape != (n_components,):
        raise CompositionError(f"{name}: weights must be ({n_components},), got "
                               f"{tuple(weights.shape)}")
    return locs, covariances, weights / weights.sum()


class NoisedGaussianMixture(Leaf):
    """p_t(x) = Σ_k π_k N(x; α_t μ_k, α_t² Σ_k + σ_t² I): a mixture noised by a schedule.

    Event shape ``(d,)``. ``energy(x, t)`` needs the noise level ``t`` (a float, a
    0-d tensor or one level per row ``(batch,)``), which the schedule maps to
    (α_t, σ_t). With z = U_kᵀ(x − α_t μ_k) and v = α_t² λ_k + σ_t²:

        E(x, t) = −logsumexp_k [log π_k − ½ Σ_j z_j²/v_j − ½ Σ_j log v_j − (d/2) log 2π],
        s(x, t) = −Σ_k r_k(x) U_k (z / v),  r = softmax of the bracket.

    Args:
        locs: component means μ ``(K, d)``.
        covariances: Σ ``(K, d, d)``, symmetric positive definite.
        weights: mixture weights π ``(K,)``, positive (normalised here, so log Z = 0).
        schedule: a :class:`~ebmalgebra.schedules.NoiseSchedule` (``VE()`` or ``VP()``).
        name: printed name.

    Example:
        >>> gmm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> noisy = gmm.noised(VE())
        >>> noisy.energy(torch.zeros(3, 2), t=1.0)
    """

    noise_conditioned = True
    analytic_score = True

    def __init__(self, locs: Tensor, covariances: Tensor, weights: Tensor,
                 schedule: NoiseSchedule, *, name: str = "gmm") -> None:
        validation.instance(f"{name}: schedule", schedule, NoiseSchedule,
                            "a NoiseSchedule (VE() or VP())")
        locs, covariances, weights = _checked_mixture(name, locs, covariances, weights)
        super().__init__(torch.Size(locs.shape[1:]), name, Capabilities(
            has_energy=True, has_score=True, normalizer_known=True, can_sample=False))
        eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (covariances + covariances.mT))
        self.register_buffer("locs", locs)
        self.register_buffer("eigenvalues", eigenvalues)  # (K, d)
        self.register_buffer("eigenvectors", eigenvectors)  # (K, d, d), columns U_k
        self.register_buffer("log_weights", weights.log())
        self.schedule = schedule
        self._freeze()

    def _log_z(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def _scales(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """α_t and σ_t as ``(batch, 1, 1)`` (or 0-d) tensors on x's device and dtype."""
        if t is None:
            raise CompositionError(f"{self!r} is noise-conditioned: give a noise level, "
                                   "energy(x, t=...)")
        alpha = self.schedule.alpha(t).to(x)
        sigma = self.schedule.sigma(t).to(x)
        if alpha.dim() > 0:
            alpha, sigma = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
        return alpha, sigma

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        return self._energy_and_score(x, t, False)[0]

    def _energy_and_score(
        self, x: Tensor, t: TimeLike, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        alpha, sigma = self._scales(x, t)
        eigenvectors = self.eigenvectors.to(x)
        diff = x[:, None, :] - alpha * self.locs.to(x)  # (batch, K, d)
        rotated = torch.einsum("kji,bkj->bki", eigenvectors, diff)
        variances = alpha * alpha * self.eigenvalues.to(x) + sigma * sigma  # (batch | 1, K, d)
        whitened = rotated / variances
        log_joint = self.log_weights.to(x) - 0.5 * (
            (rotated * whitened).sum(-1) + variances.log().sum(-1).expand(x.shape[0], -1)
            + x.shape[1] * _LOG_2PI)
        energy = -torch.logsumexp(log_joint, dim=1)
        responsibilities = torch.exp(log_joint + energy[:, None])
        precision_diff = torch.einsum("kij,bkj->bki", eigenvectors, whitened)
        return energy, -(responsibilities[..., None] * precision_diff).sum(1)

    def __repr__(self) -> str:
        return self.name
