"""What the training scripts share: stored weights, model-card provenance, the command line.

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

from ebmalgebra.zoo.state_dict import dequantize_int8, quantize_int8


def save_weights(net: nn.Module, path: Path, name: str, *, int8: bool = False) -> None:
    """Write ``net``'s state dict to ``path`` and load the stored values back into ``net``.

    Storage is float16, or with ``int8`` the int8 codes and row scales of
    :func:`ebmalgebra.zoo.state_dict.quantize_int8` for tensors of two or more
    dimensions. Reloading makes whatever is measured afterwards (metrics,
    samples in the card) describe the shipped weights rather than the float32 ones.
    """
    state = net.state_dict()
    stored = quantize_int8(state) if int8 else {
        key: tensor.detach().to(torch.float16).contiguous() for key, tensor in state.items()}
    save_file(stored, str(path), metadata={"name": name, "format": "state_dict"})
    path.chmod(0o644)  # package data: readable by everyone
    decoded = dequantize_int8(stored, str(path))
    net.load_state_dict({key: tensor.float() for key, tensor in decoded.items()})


def provenance(weights: Path, *, seed: int, seconds: float, script: str,
               cpu_seconds: float | None = None) -> dict:
    """The card's closing fields: how, where and from what ``weights`` were made."""
    record: dict = {"seed": seed, "seconds": round(seconds, 1)}
    if cpu_seconds is not None:
        record["cpu_seconds"] = round(cpu_seconds, 1)
    record.update(torch=torch.__version__, machine=platform.machine(), script=script,
                  sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    return record


def data_scale(data: torch.Tensor) -> float:
    """max |x_j| over the training data, 3 significant digits: the card's ``"data_scale"``,
    which :mod:`ebmalgebra.samplers.escape` measures runaway chains against."""
    return float(f"{float(data.abs().amax()):.3g}")


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
