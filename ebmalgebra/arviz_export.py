"""Export :class:`~ebmalgebra.samplers.Samples` to ArviZ (an optional dependency).

ArviZ orders draws ``(chain, draw, *event_shape)``; ebmalgebra keeps
``(draw, chain, *event_shape)``, so arrays are transposed on the way out. Per-chain
sample statistics take ArviZ's (Stan's) names where one exists, so that
``arviz.summary``, ``plot_trace``, ``plot_energy`` and ``bfmi`` find them:

=================  ==================  ==========================================
ebmalgebra         ArviZ               meaning
=================  ==================  ==========================================
``divergent``      ``diverging``       the transition diverged
``tree_depth``     ``tree_depth``      NUTS tree depth
``n_leapfrog``     ``n_steps``         leapfrog steps (score evaluations)
``energy``         ``energy``          Hamiltonian at the draw (NUTS)
``acceptance_rate``  ``acceptance_rate``  mean Metropolis ratio of the transition
``step_size``      ``step_size``       ε
``lp``             ``lp``              −E(x), the unnormalised log density
=================  ==================  ==========================================

Other per-chain info fields keep their own names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from ebmalgebra.samplers.driver import Samples

__all__ = ["ARVIZ_NAMES", "to_arviz"]

ARVIZ_NAMES = {"divergent": "diverging", "n_leapfrog": "n_steps"}
"""ebmalgebra info names whose ArviZ name differs."""


def _chain_first(values: Tensor) -> np.ndarray:
    """``(n_draws, n_chains, …)`` → a ``(n_chains, n_draws, …)`` NumPy array."""
    return values.detach().transpose(0, 1).cpu().numpy()


def to_arviz(samples: Samples, var_name: str = "x") -> Any:
    """``samples`` as ``arviz.InferenceData``: posterior ``var_name`` shaped
    ``(chain, draw, *event_shape)`` in float64 and the per-chain sample statistics
    (``samples.chain_stats``) shaped ``(chain, draw)``.

    Raises:
        ImportError: when arviz is not installed.

    Example:
        >>> idata = ebmalgebra.sample(model, n_chains=4, n_steps=1000, warmup=1000).to_arviz()
        >>> arviz.summary(idata)
    """
    try:
        import arviz
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Samples.to_arviz needs arviz: pip install arviz") from error
    sample_stats = {ARVIZ_NAMES.get(name, name): _chain_first(value)
                    for name, value in samples.chain_stats.items()}
    # float64: ArviZ computes R-hat in the data's precision (float32 draws gave it 2e-4
    # apart from the built-in value, which is computed in float64).
    draws = samples.draws.to(torch.float64) if samples.draws.is_floating_point() else (
        samples.draws)
    return arviz.from_dict(posterior={var_name: _chain_first(draws)},
                           sample_stats=sample_stats or None)
