"""Small pretrained models for the applications, shipped with the package and loaded offline.

=========================  ===========  =================================================
name                       kind         what
=========================  ===========  =================================================
digits                     energy       E(x, t) of the digits 0–9 (train split), the
                                        denoising prior
digits_0to4                energy       E(x, t) of the digits 0–4 (train split), the
                                        anomaly detector's model of normal data
digits_0to4_background     energy       the same network trained on digits 0–4 with 20% of
                                        the pixels replaced by uniform noise: the
                                        likelihood-ratio reference (Ren et al. 2019)
glasses_classifier         classifier   p(glasses | x_t, t) on 16×16 faces at noise level t,
                                        for guidance (class 1 = glasses)
=========================  ===========  =================================================

The energies are noise-conditioned denoiser energies
E(x, t) = ‖x − D(x, t)‖² / (2t²) trained by multi-noise denoising score
matching (t log-uniform in [0.01, 3]); the classifier is a
:class:`~ebmalgebra.apps.guidance.MLPClassifier`. Files:
``weights/<name>.safetensors`` (the state dict, float16) and
``weights/<name>.json`` (architecture, training data and settings, seed,
time, measured metrics, annealed-sampling settings, and the SHA-256 of the
weights, which :func:`load` checks). ``scripts/train_apps.py`` retrains them
from their seeds.

Example:
    >>> from ebmalgebra.apps import pretrained
    >>> prior = pretrained.load("digits")              # a leaf named "digits"
    >>> clf = pretrained.load("glasses_classifier")    # an nn.Module
"""

from __future__ import annotations

import weakref
from pathlib import Path

from torch import nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.io import SerializationError
from ebmalgebra.zoo.store import WeightStore

__all__ = ["WEIGHTS", "card", "card_of", "load", "names", "sampling_settings"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The folder holding ``<name>.safetensors`` and ``<name>.json``."""

_CARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def names() -> list[str]:
    """Names of the shipped models (both files present), sorted."""
    return _store().names()


def card(name: str) -> dict:
    """The model card of ``name`` (architecture, training, metrics, sha256)."""
    return _store().card(name)


def load(name: str) -> EnergyModel | nn.Module:
    """A fresh copy of ``name``: an energy leaf named ``name``, or a classifier module.

    The weights are checked against the card's SHA-256 and frozen
    (``requires_grad=False``) for inference; call ``.requires_grad_(True)`` on
    the result to fine-tune it.
    """
    from ebmalgebra.learning.nets import as_model
    from ebmalgebra.zoo.state_dict import load_network

    record, data = _store().read(name)
    where = f"pretrained model {name!r}"
    net = load_network(record.get("architecture"), data, where).requires_grad_(False)
    kind = record.get("kind")
    if kind == "classifier":
        return net
    if kind != "energy":
        raise SerializationError(f"{where}: unknown kind {kind!r} (energy or classifier)")
    model = as_model(net, name=name)
    _CARDS[model] = record
    return model


def card_of(model: object) -> dict | None:
    """The card of a model returned by :func:`load` (``None`` for other models)."""
    try:
        return _CARDS.get(model)
    except TypeError:
        return None


def sampling_settings(model: EnergyModel) -> dict:
    """Annealed-sampling settings from the cards of the pretrained leaves of ``model``.

    Keys are fields of :class:`ebmalgebra.zoo.SamplingPlan`; empty when no
    leaf came from :func:`load`.
    """
    from dataclasses import fields

    from ebmalgebra.zoo import SamplingPlan

    known = {field.name for field in fields(SamplingPlan)}
    for leaf in model.leaves():
        record = card_of(leaf)
        if record and isinstance(record.get("sampling"), dict):
            return {k: v for k, v in record["sampling"].items() if k in known}
    return {}


def _store() -> WeightStore:
    return WeightStore(WEIGHTS, label="pretrained model", error=SerializationError,
                       retrain="scripts/train_apps.py")
