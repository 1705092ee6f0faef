"""A folder of shipped weights: ``<name>.safetensors`` beside its model card ``<name>.json``.

The zoo (:mod:`ebmalgebra.zoo`) and the applications' models
(:mod:`ebmalgebra.apps.pretrained`) are each such a folder. A name is
available when both of its files exist; its card must be a JSON object whose
``"sha256"`` is the digest of the weights file, checked before any weights
are read into a model.

Example:
    >>> store = WeightStore(zoo.WEIGHTS, label="zoo model", error=zoo.ZooError,
    ...                     retrain="scripts/train_zoo.py")
    >>> card, data = store.read("ring")     # the card, and the verified safetensors bytes
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ebmalgebra.io import SerializationError

__all__ = ["WeightStore"]


@dataclass(frozen=True)
class WeightStore:
    """The model cards and verified weights in ``folder``.

    ``label`` starts every error message (``"zoo model 'ring': …"``),
    ``error`` is the exception raised (a :class:`SerializationError`), and
    ``retrain`` names the script that rebuilds the weights, for the message
    of a checksum mismatch when the card does not name its own ``"script"``.
    """

    folder: Path
    label: str
    error: type[SerializationError]
    retrain: str

    def names(self) -> list[str]:
        """Names with both a card and weights, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(path.stem for path in self.folder.glob("*.json")
                      if path.with_suffix(".safetensors").is_file())

    def path(self, name: str, suffix: str) -> Path:
        """The file ``<name><suffix>``; unknown names are an error that lists the known ones."""
        available = self.names()
        if not isinstance(name, str) or name not in available:
            raise self.error(f"unknown {self.label} {name!r} (available: "
                             f"{', '.join(available) or 'none installed'})")
        return self.folder / f"{name}{suffix}"

    def card(self, name: str) -> dict:
        """The model card of ``name``, a JSON object."""
        path = self.path(name, ".json")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise self.error(f"{self.label} {name!r}: malformed card {path.name}: "
                             f"{error}") from None
        if not isinstance(record, dict):
            raise self.error(f"{self.label} {name!r}: card {path.name} is not a JSON object")
        return record

    def check_digest(self, name: str, card: dict, data: bytes) -> str:
        """The SHA-256 of ``data``, once it matches the one ``card`` records."""
        expected = card.get("sha256")
        if not isinstance(expected, str):
            raise self.error(f"{self.label} {name!r}: its card records no sha256")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            script = card.get("script")
            raise self.error(f"{self.label} {name!r}: weights do not match the card's sha256 "
                             f"(expected {expected[:12]}…, got {actual[:12]}…); reinstall the "
                             "package or retrain with "
                             f"{script if isinstance(script, str) else self.retrain}")
        return actual

    def read(self, name: str) -> tuple[dict, bytes]:
        """The card of ``name`` and its weights file's bytes, checked against the card."""
        card = self.card(name)
        data = self.path(name, ".safetensors").read_bytes()
        self.check_digest(name, card, data)
        return card, data
