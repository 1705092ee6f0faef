"""Pretrained models shipped with the package, loaded offline: ``zoo.load("glasses")``.

=========  ===========  ==========================================================
name       event shape  what it models
=========  ===========  ==========================================================
face       (16, 16)     procedural faces (:data:`ebmalgebra.datasets.faces`), all
glasses    (16, 16)     faces with glasses (hat and smile at random)
hat        (16, 16)     faces with a hat
smile      (16, 16)     smiling faces
ring       (2,)         a noisy circle of radius 2
bar        (2,)         a thin horizontal bar, |x₁| ≤ 3
left       (2,)         a broad blob left of the origin, centred at (−2, 0)
right      (2,)         its mirror image, centred at (2, 0)
=========  ===========  ==========================================================

Every model is a noise-conditioned energy E(x, σ): an energy of the data
smoothed by N(0, σ² I), trained by multi-noise denoising score matching,
and sampled by annealed Langevin dynamics from high to low σ
(:func:`draw`). Compose them without retraining::

    from ebmalgebra import zoo
    glasses, hat = zoo.load("glasses"), zoo.load("hat")
    both = glasses & hat                      # repr: glasses & hat
    images = zoo.draw(both, 64)               # (64, 16, 16)
    zoo.parse("glasses & (face & ~hat) ** 0.75")

:func:`draw` warns (``ImproperTargetWarning``) when samples land beyond ten
times the card's ``"data_scale"``, the mark of an improper expression such as
``glasses & ~hat``. The story of ``python -m ebmalgebra demo`` is
:func:`ebmalgebra.zoo.demo.run_demo`.

Files: ``weights/<name>.safetensors`` (the model, as written by
:func:`ebmalgebra.save`, or a plain state dict whose architecture the card
gives) and ``weights/<name>.json``, the model card: architecture, training
data and settings, seed, training time, and the SHA-256 of the safetensors
file, which :func:`load` checks. ``scripts/train_zoo.py`` (faces) and
``scripts/train_zoo_2d.py`` (2-D) retrain them from their seeds.
"""

from __future__ import annotations

import builtins
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ZooError
from ebmalgebra.zoo.sampling import SamplingPlan, draw, plan_for, run_smc
from ebmalgebra.zoo.store import WeightStore

__all__ = [
    "WEIGHTS",
    "SamplingPlan",
    "ZooError",
    "card",
    "card_of",
    "draw",
    "list",
    "load",
    "models",
    "parse",
    "plan_for",
    "run_smc",
    "verify",
]

WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The folder holding the shipped ``<name>.safetensors`` and ``<name>.json`` files."""

_CARDS: weakref.WeakKeyDictionary[EnergyModel, dict] = weakref.WeakKeyDictionary()



def list() -> builtins.list[str]:  # noqa: A001 - the zoo's own vocabulary: zoo.list()
    """Names of the shipped models (those with both a card and weights), sorted.

    Example:
        >>> zoo.list()
        ['bar', 'face', 'glasses', 'hat', 'left', 'right', 'ring', 'smile']
    """
    return _store().names()


def card(name: str) -> dict:
    """The model card of ``name``: architecture, training settings, seed, time, sha256.

    Raises :class:`ZooError` for unknown names.
    """
    return _store().card(name)


def verify(name: str) -> str:
    """Check ``name``'s weights against the SHA-256 in its card; return the digest.

    Raises :class:`ZooError` when the card has no checksum or it does not match.
    """
    record, _ = _store().read(name)
    return record["sha256"]


def load(name: str) -> EnergyModel:
    """A fresh copy of zoo model ``name``: a leaf named ``name``, weights checked.

    Each call builds new parameters; load once and reuse the model inside
    expressions (``g = zoo.load("glasses"); g & g ** 2`` shares one leaf).

    Example:
        >>> glasses, hat = zoo.load("glasses"), zoo.load("hat")
        >>> glasses & hat
        glasses & hat
    """
    from ebmalgebra.io import METADATA_KEY, load_bytes, read_header

    store = _store()
    record, data = store.read(name)
    path = store.path(name, ".safetensors")
    if METADATA_KEY in read_header(data, str(path)).get("__metadata__", {}):
        model = load_bytes(data, str(path))
    else:
        from ebmalgebra.zoo.state_dict import build_from_card

        model = build_from_card(name, record, path)
    if repr(model) != name:
        raise ZooError(f"zoo model {name!r}: the file holds {model!r}, not a leaf named "
                       f"{name!r}")
    _CARDS[model] = record
    return model


def card_of(model: EnergyModel) -> dict | None:
    """The card of a model returned by :func:`load` (``None`` for other models)."""
    return _CARDS.get(model)


class _Models(Mapping[str, EnergyModel]):
    """Zoo names → models, loaded on first access and then shared."""

    def __init__(self) -> None:
        self._loaded: dict[str, EnergyModel] = {}

    def __getitem__(self, name: str) -> EnergyModel:
        if name not in self._loaded:
            if name not in list():
                raise KeyError(name)
            self._loaded[name] = load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list())

    def __len__(self) -> int:
        return len(list())


def models() -> Mapping[str, EnergyModel]:
    """A lazy mapping of every zoo name to its model; each name loads once per mapping."""
    return _Models()


def parse(text: str, namespace: Mapping[str, EnergyModel] | None = None) -> EnergyModel:
    """The expression ``text`` over zoo names (or ``namespace``), e.g. ``"glasses & ~hat"``.

    See :mod:`ebmalgebra.expression_parser` for the grammar; errors are
    :class:`~ebmalgebra.expression_parser.ExpressionError` with the position.
    """
    from ebmalgebra.expression_parser import parse_expression

    return parse_expression(text, models() if namespace is None else namespace)


def _store() -> WeightStore:
    # Built per call, so that WEIGHTS can be pointed elsewhere (tests do).
    return WeightStore(WEIGHTS, label="zoo model", error=ZooError,
                       retrain="scripts/train_zoo.py")
