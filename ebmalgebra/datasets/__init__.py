"""Data sets for training and testing energy models, all generated or bundled offline.

* 2-D toys, ``f(n, *, ..., generator=None, dtype, device) -> (n, 2)``:
  :func:`rings`, :data:`eight_gaussians` (with ``.centers()`` and
  ``.nearest_mode(x)``), :func:`moons`, :func:`checkerboard`, :func:`bar`.
* :data:`faces`: procedural 16×16 faces with attributes glasses, hat and smile,
  exact attribute detectors and a realism score.
* :func:`digits`: scikit-learn's bundled 8×8 handwritten digits in [0, 1], with
  a fixed train/test split.

Example:
    >>> import torch
    >>> from ebmalgebra.datasets import faces, moons
    >>> g = torch.Generator().manual_seed(0)
    >>> moons(256, generator=g).shape, faces(4, hat=True, generator=g).shape
    (torch.Size([256, 2]), torch.Size([4, 16, 16]))
"""

from ebmalgebra.datasets.digits import digits
from ebmalgebra.datasets.faces import faces
from ebmalgebra.datasets.toys import bar, checkerboard, eight_gaussians, moons, rings

__all__ = ["rings", "eight_gaussians", "moons", "checkerboard", "bar", "faces", "digits"]
