"""Handwritten digits 0–9 as 8×8 images, from scikit-learn's bundled copy (no download).

The data are the 1,797 images of ``sklearn.datasets.load_digits`` (UCI optical
recognition of handwritten digits: 32×32 bitmaps reduced to 8×8 counts of set
pixels in 4×4 blocks, integers 0 … 16), divided by 16 so that values lie in
[0, 1].

Split. Within each digit class, taken in scikit-learn's order, every fifth
image (the 5th, 10th, 15th, … of that class) is in ``split="test"`` and the
others are in ``split="train"``: 355 test and 1,442 train images, 20% of every
class up to rounding. The rule uses no random numbers, so it is the same on
every machine and library version. (Every fifth image overall would not do:
the file starts with runs of 0, 1, …, 9, which would skew the classes.)
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from ebmalgebra.datasets.toys import _check_dtype
from ebmalgebra.errors import ArgumentError, ArgumentTypeError

__all__ = ["IMAGE_SHAPE", "SPLITS", "digits"]

IMAGE_SHAPE: tuple[int, int] = (8, 8)
SPLITS: tuple[str, ...] = ("train", "test")
_TEST_EVERY = 5


@functools.cache
def _load() -> tuple[Tensor, Tensor]:
    """All images (1797, 8, 8) float64 in [0, 1] and labels (1797,) int64, read once."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "ebmalgebra.datasets.digits needs scikit-learn: pip install scikit-learn"
        ) from err
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float64) / 16.0
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    return images, labels


def _test_mask(labels: Tensor) -> Tensor:
    """True for every fifth occurrence of each label, counting in data order."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes=10)
    rank_in_class = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1
    return rank_in_class % _TEST_EVERY == _TEST_EVERY - 1


def _check_classes(classes: Iterable[int] | int | None) -> list[int] | None:
    if classes is None:
        return None
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        classes = [classes]
    if isinstance(classes, str) or not isinstance(classes, Iterable):
        raise ArgumentTypeError(
            f"classes must be None, an int or an iterable of ints, got {type(classes).__name__}"
        )
    chosen = []
    for label in classes:
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise ArgumentTypeError(f"classes must contain ints, got {label!r}")
        if not 0 <= label <= 9:
            raise ArgumentError(f"classes must be digits 0-9, got {label}")
        chosen.append(int(label))
    if not chosen:
        raise ArgumentError("classes must not be empty")
    return chosen


def digits(
    *,
    classes: Iterable[int] | int | None = None,
    split: str | None = None,
    return_labels: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The scikit-learn digits as (n, 8, 8) images in [0, 1], optionally filtered.

    Pixel values are the original counts 0 … 16 divided by 16. ``classes``
    keeps only the given digits (None keeps all ten); ``split`` is None for all
    1,797 images, or "train" / "test" for the fixed, class-stratified 80/20
    split described in the module docstring. Images keep scikit-learn's order.

    Returns images (n, 8, 8) and, if ``return_labels``, also labels (n,) int64.

    Example:
        >>> x, y = digits(classes=range(5), split="train", return_labels=True)
        >>> x.shape[1:], int(y.max())
        (torch.Size([8, 8]), 4)
    """
    dtype = _check_dtype(dtype)
    chosen = _check_classes(classes)
    if split is not None and split not in SPLITS:
        raise ArgumentError(f"split must be None, 'train' or 'test', got {split!r}")
    if not isinstance(return_labels, bool):
        raise ArgumentTypeError(f"return_labels must be a bool, got {return_labels!r}")
    images, labels = _load()
    keep = torch.ones(len(labels), dtype=torch.bool)
    if split is not None:
        is_test = _test_mask(labels)
        keep &= is_test if split == "test" else ~is_test
    if chosen is not None:
        keep &= torch.isin(labels, torch.tensor(chosen))
    images = images[keep].to(dtype=dtype, device=device)
    if not return_labels:
        return images
    return images, labels[keep].to(device=images.device)
