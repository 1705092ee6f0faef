"""WeightStore: the folder logic the zoo and the applications' pretrained models share."""

from __future__ import annotations

import hashlib
import json

import pytest

from ebmalgebra.io import SerializationError
from ebmalgebra.zoo.store import WeightStore


class StoreError(SerializationError):
    pass


@pytest.fixture
def store(tmp_path):
    data = b"weights"
    card = {"sha256": hashlib.sha256(data).hexdigest(), "script": "scripts/train_x.py"}
    (tmp_path / "good.json").write_text(json.dumps(card))
    (tmp_path / "good.safetensors").write_bytes(data)
    (tmp_path / "card_only.json").write_text("{}")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "list.safetensors").write_bytes(data)
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "broken.safetensors").write_bytes(data)
    return WeightStore(tmp_path, label="test model", error=StoreError,
                       retrain="scripts/train_default.py")


def test_names_are_those_with_both_files(store):
    assert store.names() == ["broken", "good", "list"]
    assert WeightStore(store.folder / "absent", label="m", error=StoreError,
                       retrain="").names() == []


def test_read_returns_the_card_and_verified_bytes(store):
    card, data = store.read("good")
    assert data == b"weights" and card["sha256"] == hashlib.sha256(data).hexdigest()


def test_errors_are_the_stores_own_and_name_the_model(store):
    with pytest.raises(StoreError, match=r"unknown test model 'card_only' \(available: broken"):
        store.card("card_only")
    with pytest.raises(StoreError, match="test model 'broken': malformed card broken.json"):
        store.card("broken")
    with pytest.raises(StoreError, match="test model 'list': card list.json is not a JSON"):
        store.card("list")
    (store.folder / "good.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="do not match the card's sha256 .* scripts/train_x.py"):
        store.read("good")
    with pytest.raises(StoreError, match="records no sha256"):
        store.check_digest("good", {}, b"")
