"""Applications of the algebra: anomaly detection, inverse problems, guidance.

* :mod:`~ebmalgebra.apps.anomaly`: rank inputs by energy, or by the
  likelihood ratio ``model & ~reference`` (Ren et al. 2019); ROC-AUC and
  ROC curves.
* :mod:`~ebmalgebra.apps.likelihood`: an observation as an energy,
  :class:`~ebmalgebra.apps.likelihood.GaussianLikelihood`, so a posterior is
  ``prior & GaussianLikelihood(y, sigma)``.
* :mod:`~ebmalgebra.apps.inverse`: :func:`~ebmalgebra.apps.inverse.denoise`
  and :func:`~ebmalgebra.apps.inverse.inpaint` build that posterior and sample
  or descend it.
* :mod:`~ebmalgebra.apps.guidance`: a classifier as an energy,
  :class:`~ebmalgebra.ClassifierEnergy`, so guidance is
  ``prior & ClassifierEnergy(clf, y) ** gamma``.
* :mod:`~ebmalgebra.apps.pretrained`: the small models the examples use.

The math and measured results are in docs/applications.md.
"""

from ebmalgebra.apps import anomaly, guidance, inverse, likelihood, pretrained

__all__ = ["anomaly", "guidance", "inverse", "likelihood", "pretrained"]
