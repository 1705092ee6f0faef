"""Training energy models: score matching, contrastive divergence, a fit loop, networks.

Losses are functions ``loss(model, batch, *, ..., generator=None) -> 0-d tensor``
of any expression and a data batch ``(batch, *event_shape)``:

* :func:`score_matching` (``method="exact" | "sliced" | "denoising"``) and
  :func:`multi_noise_dsm` need only the model's score, never Z;
* :func:`contrastive_divergence` estimates the maximum-likelihood gradient
  with MCMC negatives from any library sampler, optionally started from a
  :class:`ReplayBuffer`;
* :func:`off_data_margin` is a hinge that raises a noise-conditioned energy
  away from the data at small σ, where score matching never looks.

:func:`fit` runs the optimisation loop; :mod:`ebmalgebra.learning.nets`
holds energy networks and :func:`as_model` turns them into named leaves.
The math and shapes are in docs/learning.md.

Example:
    >>> from functools import partial
    >>> from ebmalgebra.learning import MLPEnergy, as_model, fit, score_matching
    >>> model = as_model(MLPEnergy(2), name="moons")
    >>> history = fit(model, data, partial(score_matching, method="sliced"), epochs=50)
"""

from ebmalgebra.learning.buffer import ReplayBuffer
from ebmalgebra.learning.cd import contrastive_divergence
from ebmalgebra.learning.fit import History, fit
from ebmalgebra.learning.nets import (
    ConvEnergy,
    DenoiserEnergy,
    GaussianEnergy,
    MLPEnergy,
    ResidualMLPDenoiser,
    as_model,
)
from ebmalgebra.learning.off_data import off_data_margin, off_data_points
from ebmalgebra.learning.score_matching import (
    denoising_score_matching,
    exact_score_matching,
    multi_noise_dsm,
    score_matching,
    sliced_score_matching,
)

__all__ = [
    "ConvEnergy",
    "DenoiserEnergy",
    "GaussianEnergy",
    "History",
    "MLPEnergy",
    "ReplayBuffer",
    "ResidualMLPDenoiser",
    "as_model",
    "contrastive_divergence",
    "denoising_score_matching",
    "exact_score_matching",
    "fit",
    "multi_noise_dsm",
    "off_data_margin",
    "off_data_points",
    "score_matching",
    "sliced_score_matching",
]
