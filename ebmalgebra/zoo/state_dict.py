"""Zoo entries stored as a plain state dict plus an architecture description in the card.

A card with ``"format": "state_dict"`` describes its network under
``"architecture"`` as a registered module type and its constructor keyword
arguments, nested for sub-modules, in either spelling::

    {"$module": "DenoiserEnergy", "config": {"denoiser": {"$module": "ResidualMLPDenoiser",
                                             "config": {"event_shape": [16, 16], "width": 512}}}}
    {"class": "DenoiserEnergy", "denoiser": {"class": "ResidualMLPDenoiser",
                                             "event_shape": [16, 16], "width": 512}}

The network is rebuilt from the module registry of :mod:`ebmalgebra.io` (no
code from the file runs), the safetensors state dict is loaded into it
(float16 and int8 storage is widened to the network's dtype; any other
mismatch is an error), and it is wrapped into a leaf named after the model with
:func:`ebmalgebra.learning.nets.as_model`.

**int8 storage** (:func:`quantize_int8`): a tensor W of two or more dimensions
may be stored as int8 codes q with one float16 scale per output row,
s_r = max_j |W_rj| / 127 and q_rj = round(W_rj / s_r), under ``"<key>"`` and
``"int8_scale.<key>"``; it loads as W ≈ q · s (error ≤ s_r / 2 per entry).
That halves the size of float16 weights; the zoo's face models store their
weight matrices this way and keep biases and norms in float16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.io import SerializationError

__all__ = ["build_from_card", "build_module", "dequantize_int8", "load_network", "quantize_int8"]

_TYPE_KEYS = ("$module", "class", "type", "module")
SCALE_PREFIX = "int8_scale."
"""Key prefix of the per-row scales of int8-stored tensors."""


def quantize_int8(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tensors of ≥ 2 dims as int8 codes plus float16 row scales; the rest in float16.

    W is first rounded to float16 (what float16 storage would keep), then
    s_r = max|W_r·| / 127 (rounded to float16) and q = round(W / s) ∈ [−127, 127].
    Rows of zeros get s_r = 1. :func:`dequantize_int8` inverts it up to rounding.
    """
    stored: dict[str, Tensor] = {}
    for key, tensor in state.items():
        half = tensor.detach().to(torch.float16)
        if tensor.dim() < 2 or not tensor.is_floating_point():
            stored[key] = half.contiguous()
            continue
        values = half.float()
        peak = values.abs().amax(dim=tuple(range(1, values.dim())), keepdim=True)
        scale = (peak / 127).to(torch.float16)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        stored[key] = (values / scale.float()).round().clamp(-127, 127).to(torch.int8)
        stored[SCALE_PREFIX + key] = scale.contiguous()
    return stored


def dequantize_int8(state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The float32 tensors q · s of int8 entries with their scales; others unchanged.

    Raises :class:`SerializationError` (starting with ``where``) for an int8
    tensor without its scale, a scale without its tensor, or a scale whose
    shape is not (rows, 1, …, 1).
    """
    scales = {key[len(SCALE_PREFIX):]: value for key, value in state.items()
              if key.startswith(SCALE_PREFIX)}
    restored: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(SCALE_PREFIX):
            target = state.get(key[len(SCALE_PREFIX):])
            if target is None or target.dtype != torch.int8:
                raise SerializationError(f"{where}: scale {key!r} has no int8 tensor")
            continue
        if tensor.dtype != torch.int8:
            restored[key] = tensor
            continue
        scale = scales.get(key)
        expected = (tensor.shape[0],) + (1,) * (tensor.dim() - 1)
        if scale is None or tuple(scale.shape) != expected or not scale.is_floating_point():
            raise SerializationError(f"{where}: int8 tensor {key!r} needs a float scale "
                                     f"{SCALE_PREFIX + key!r} shaped {list(expected)}")
        restored[key] = tensor.float() * scale.float()
    return restored


def build_module(spec: object, where: str) -> nn.Module:
    """Rebuild a registered module from an architecture description (see module docstring)."""
    from ebmalgebra import io

    io._ensure_builtins()
    if not isinstance(spec, dict):
        raise SerializationError(f"{where}: an architecture must be a JSON object, got "
                                 f"{type(spec).__name__}")
    type_key = next((key for key in _TYPE_KEYS if isinstance(spec.get(key), str)), None)
    if type_key is None:
        raise SerializationError(f"{where}: the architecture names no module type (one of the "
                                 f"keys {', '.join(_TYPE_KEYS)})")
    name = spec[type_key]
    entry = io._MODULES.by_name.get(name)
    if entry is None:
        raise SerializationError(f"{where}: unknown module type {name!r}; registered: "
                                 f"{', '.join(io._MODULES.names())}")
    config = spec.get("config") if isinstance(spec.get("config"), dict) else {
        key: value for key, value in spec.items() if key != type_key}
    kwargs = {key: _value(value, f"{where}.{key}") for key, value in config.items()}
    try:
        return entry.build(**kwargs)
    except (TypeError, ValueError) as error:
        raise SerializationError(f"{where}: cannot build {name}: {error}") from None


def _value(value: object, where: str) -> object:
    if isinstance(value, dict) and any(isinstance(value.get(k), str) for k in _TYPE_KEYS):
        return build_module(value, where)
    if isinstance(value, list):
        return [_value(v, where) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise SerializationError(f"{where}: unsupported architecture value {value!r}")


def build_from_card(name: str, card: dict, path: Path) -> EnergyModel:
    """The leaf ``name`` from its card's architecture and the state dict at ``path``."""
    from ebmalgebra.learning.nets import as_model

    net = load_network(card.get("architecture"), path.read_bytes(), f"zoo model {name!r}")
    return as_model(net, name=name)


def load_network(architecture: object, data: bytes, where: str) -> nn.Module:
    """The network ``architecture`` describes, holding the safetensors state dict ``data``.

    float16 tensors are widened to the network's float32 and int8 tensors with
    their scales decoded (:func:`dequantize_int8`); any other mismatch of names,
    shapes or dtypes is a :class:`SerializationError` that starts with
    ``where``. The network is returned in eval mode.
    """
    from safetensors.torch import load as load_bytes

    net = build_module(architecture, f"{where} architecture")
    try:
        state = load_bytes(data)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise SerializationError(f"{where}: corrupt weights: {error}") from None
    state = dequantize_int8(state, where)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise SerializationError(f"{where}: weights do not fit the architecture (missing "
                                 f"{missing[:3]}, unexpected {extra[:3]})")
    for key, tensor in state.items():
        want = expected[key]
        widened = tensor.dtype == torch.float16 and want.dtype == torch.float32
        if tensor.shape != want.shape or (tensor.dtype != want.dtype and not widened):
            raise SerializationError(f"{where}: tensor {key!r} is {tensor.dtype} "
                                     f"{list(tensor.shape)}, the architecture expects "
                                     f"{want.dtype} {list(want.shape)}")
    net.load_state_dict({key: tensor.to(expected[key].dtype) for key, tensor in state.items()})
    return net.eval()
