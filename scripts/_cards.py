"""What the training scripts share: float16 weights, model-card provenance, the command line.

A model card (``<name>.json`` beside ``<name>.safetensors``) ends with the
same provenance in every script: seed, wall-clock (and CPU) seconds, torch
version, machine, the script, and the SHA-256 of the weights that
:mod:`ebmalgebra.zoo.store` checks on load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def save_float16(net: nn.Module, path: Path, name: str) -> None:
    """Write ``net``'s state dict to ``path`` in float16 and load those values back into ``net``.

    Reloading makes whatever is measured afterwards (metrics, samples in the
    card) describe the shipped float16 weights rather than the float32 ones.
    """
    state = {key: tensor.detach().to(torch.float16).contiguous()
             for key, tensor in net.state_dict().items()}
    save_file(state, str(path), metadata={"name": name, "format": "state_dict"})
    path.chmod(0o644)  # package data: readable by everyone
    net.load_state_dict({key: tensor.float() for key, tensor in state.items()})


def provenance(weights: Path, *, seed: int, seconds: float, script: str,
               cpu_seconds: float | None = None) -> dict:
    """The card's closing fields: how, where and from what ``weights`` were made."""
    record: dict = {"seed": seed, "seconds": round(seconds, 1)}
    if cpu_seconds is not None:
        record["cpu_seconds"] = round(cpu_seconds, 1)
    record.update(torch=torch.__version__, machine=platform.machine(), script=script,
                  sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    return record


def write_card(out: Path, card: dict) -> dict:
    """Write ``card`` to ``out/<card["name"]>.json`` (indented, newline-terminated); return it."""
    (out / f"{card['name']}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def training_parser(doc: str, names: Iterable[str], weights: Path) -> argparse.ArgumentParser:
    """The options every training script takes: --only, --seed, --threads, --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(names), help="models to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=weights, help="output folder")
    return parser
