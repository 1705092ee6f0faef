"""The file format of :mod:`ebmalgebra.io`: one safetensors file, a JSON tree in its header.

See :mod:`ebmalgebra.io` for the format; types come from
:mod:`ebmalgebra.io.registry`. Nothing here unpickles or executes file content.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentTypeError
from ebmalgebra.io.registry import (
    LEAVES,
    MODULES,
    OPERATORS,
    SerializationError,
    ensure_builtins,
)

__all__ = ["FORMAT", "METADATA_KEY", "VERSION", "load", "load_bytes", "read_header", "save",
           "tensor_record"]

FORMAT = "ebmalgebra.expression"
VERSION = 1
METADATA_KEY = "ebmalgebra"

_MAX_HEADER_BYTES = 100_000_000
_MAX_DEPTH = 200
_NODE_KEYS = frozenset({"op", "child", "children", "leaf"})


# ----------------------------------------------------------------------- save
def save(expr: EnergyModel, path: str | os.PathLike) -> None:
    """Write ``expr`` (tree, weights, temperatures, normalisers, leaf tensors) to ``path``.

    One safetensors file: tensors plus the JSON tree in the header metadata
    (module docstring). Raises :class:`SerializationError` naming the first
    leaf that cannot be saved (a callable-based leaf, an unregistered type).

    Example:
        >>> save(glasses & hat ** 2, "glasses_hat.safetensors")
        >>> load("glasses_hat.safetensors")
        glasses & hat ** 2
    """
    from safetensors.torch import save as save_bytes

    if not isinstance(expr, EnergyModel):
        raise ArgumentTypeError(f"save expects an EnergyModel, got {type(expr).__name__}")
    ensure_builtins()
    writer = _Writer()
    root = writer.node(expr)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "expression": repr(expr),
        "root": root,
        "leaves": writer.leaf_records,
        "tensors": {key: tensor_record(t) for key, t in sorted(writer.tensors.items())},
    }
    try:
        text = json.dumps(document, allow_nan=False, sort_keys=False)
    except ValueError as error:
        raise SerializationError(f"cannot save {expr!r}: a number is not finite ({error})"
                                 ) from None
    data = save_bytes(writer.tensors, metadata={METADATA_KEY: text})
    Path(path).write_bytes(data)


class _Writer:
    def __init__(self) -> None:
        self.leaf_records: list[dict] = []
        self.tensors: dict[str, Tensor] = {}
        self._leaf_index: dict[int, int] = {}
        # Where each module was first written: later uses refer to it, so that a module
        # shared by several leaves comes back shared.
        self._module_paths: dict[int, str] = {}
        self._n_nodes = 0

    def node(self, model: EnergyModel) -> dict:
        entry = OPERATORS.by_class.get(type(model))
        if entry is None:
            if model.operands():
                raise SerializationError(
                    f"cannot save {model!r}: composite node type {type(model).__qualname__} is "
                    "not registered; decorate the class with "
                    "@ebmalgebra.io.register_operator(name) (registered: "
                    f"{', '.join(OPERATORS.names())})")
            return {"leaf": self.leaf(model)}
        record: dict = {"op": entry.name}
        index = self._n_nodes
        self._n_nodes += 1
        for key, value in entry.config(model).items():
            if key in _NODE_KEYS:
                raise SerializationError(f"cannot save {model!r}: its spec uses the reserved "
                                         f"key {key!r}")
            record[key] = self._value(value, f"nodes.{index}.{key}", {}, "", repr(model))
        operands = OPERATORS.operands.get(entry.name)
        stored = operands(model) if operands is not None else model.operands()
        children = [self.node(child) for child in stored]
        if len(children) == 1:
            record["child"] = children[0]
        elif children:
            record["children"] = children
        return record

    def leaf(self, leaf: EnergyModel) -> int:
        if id(leaf) in self._leaf_index:
            return self._leaf_index[id(leaf)]
        entry = LEAVES.by_class.get(type(leaf))
        if entry is None:
            raise SerializationError(
                f"cannot save leaf '{leaf!r}': its type {type(leaf).__qualname__} is not "
                f"registered; decorate the class with @ebmalgebra.io.register_leaf(name) and "
                f"give it a config() method (registered: {', '.join(LEAVES.names())})"
            )
        index = len(self.leaf_records)
        prefix = f"leaves.{index}."
        state = {name: t for name, t in _named_tensors(leaf)}
        owned = {id(t): name for name, t in state.items()}
        for name, tensor in state.items():
            self.tensors[prefix + name] = _storable(tensor)
        try:
            config = entry.config(leaf)
        except SerializationError as error:
            raise SerializationError(f"cannot save leaf '{leaf!r}': {error}") from None
        if not isinstance(config, Mapping):
            raise SerializationError(f"cannot save leaf '{leaf!r}': config() must return a "
                                     f"dict, got {type(config).__name__}")
        encoded = {
            str(key): self._value(value, f"{prefix}config.{key}", owned, prefix, repr(leaf))
            for key, value in config.items()
        }
        self.leaf_records.append({"type": entry.name, "config": encoded})
        self._leaf_index[id(leaf)] = index
        return index

    def _value(self, value: object, key: str, owned: dict[int, str], prefix: str,
               where: str) -> object:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise SerializationError(f"cannot save leaf '{where}': config value {key} is "
                                         f"{value}")
            return value
        if isinstance(value, torch.Size | tuple | list):
            return [self._value(v, f"{key}.{i}", owned, prefix, where)
                    for i, v in enumerate(value)]
        if isinstance(value, Tensor):
            if id(value) in owned:
                return {"$tensor": prefix + owned[id(value)]}
            self.tensors[key] = _storable(value)
            return {"$tensor": key}
        if isinstance(value, nn.Module):
            if id(value) in self._module_paths:
                return {"$same_module": self._module_paths[id(value)]}
            entry = MODULES.by_class.get(type(value))
            if entry is None:
                raise SerializationError(
                    f"cannot save leaf '{where}': its module type {type(value).__qualname__} "
                    f"is not registered; decorate the class with "
                    f"@ebmalgebra.io.register_module(name) and give it a config() method "
                    f"(registered: {', '.join(MODULES.names())})"
                )
            self._module_paths[id(value)] = key
            sub = entry.config(value)
            return {"$module": entry.name,
                    "config": {str(k): self._value(v, f"{key}.{k}", {}, prefix, where)
                               for k, v in sub.items()}}
        if callable(value):
            label = getattr(value, "__qualname__", type(value).__name__)
            raise SerializationError(
                f"cannot save leaf '{where}': it wraps the Python callable {label}, and code "
                "is not data; wrap the function in an nn.Module registered with "
                "@ebmalgebra.io.register_module"
            )
        raise SerializationError(f"cannot save leaf '{where}': config value {key} has "
                                 f"unsupported type {type(value).__name__}")


def _named_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters and persistent buffers, keyed as in ``state_dict``."""
    keys = set(module.state_dict(keep_vars=True))
    found = list(module.named_parameters(remove_duplicate=False))
    found += list(module.named_buffers(remove_duplicate=False))
    return [(name, tensor) for name, tensor in found if name in keys]


def _storable(tensor: Tensor) -> Tensor:
    # A private contiguous CPU copy: safetensors refuses tensors sharing memory.
    return tensor.detach().to("cpu", copy=True).contiguous()


def _digest(tensor: Tensor) -> str:
    # A fresh row-major copy: a size-1 tensor may be "contiguous" with stride 0 (expanded),
    # which a byte view refuses.
    flat = tensor.detach().reshape(-1)
    flat = torch.empty_like(flat, memory_format=torch.contiguous_format).copy_(flat)
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_record(tensor: Tensor) -> dict:
    """dtype, shape and SHA-256 of a stored tensor, as recorded in the header."""
    return {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape),
            "sha256": _digest(tensor)}


# ----------------------------------------------------------------------- load
def load(path: str | os.PathLike) -> EnergyModel:
    """Read an expression written by :func:`save`; never unpickles or runs file content.

    Raises :class:`SerializationError` (a ``ValueError``) for anything that is
    not a valid file: not safetensors, no or malformed JSON, an unknown leaf or
    module type, a tensor missing, extra, or with another dtype, shape or
    checksum than recorded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SerializationError(f"cannot read {path}: {error.strerror or error}") from None
    return load_bytes(data, str(path))


def load_bytes(data: bytes, where: str = "<bytes>") -> EnergyModel:
    """:func:`load` from the file's contents; ``where`` names the source in errors."""
    ensure_builtins()
    metadata, tensors = _read_safetensors(data, where)
    if METADATA_KEY not in metadata:
        raise SerializationError(f"{where} is a safetensors file but not an ebmalgebra "
                                 f"expression (no {METADATA_KEY!r} metadata)")
    # Lists or transforms nested a thousand deep exhaust Python's stack before any check
    # of ours can see them: that is a bad file too.
    try:
        document = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise SerializationError(f"{where}: malformed JSON in the expression description: "
                                 f"{error}") from None
    except RecursionError:
        raise _too_deep(where) from None
    try:
        return _Reader(document, tensors, where).model()
    except RecursionError:
        raise _too_deep(where) from None


def _too_deep(where: str) -> SerializationError:
    return SerializationError(f"{where}: the expression description is nested too deeply "
                              "to read")


def read_header(data: bytes, where: str) -> dict:
    """The JSON header of safetensors bytes (tensor table and ``__metadata__``), validated."""
    if len(data) < 8:
        raise SerializationError(f"{where} is not a safetensors file (only {len(data)} bytes)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise SerializationError(f"{where} is not a safetensors file (header size "
                                 f"{header_size} does not fit the file; is it a pickle?)")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SerializationError(f"{where} is not a safetensors file (header is not JSON: "
                                 f"{error})") from None
    if not isinstance(header, dict):
        raise SerializationError(f"{where} is not a safetensors file (header is not an "
                                 "object)")
    return header


def _read_safetensors(data: bytes, where: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Header metadata and tensors of a safetensors file, as plain data (no pickle)."""
    from safetensors.torch import load as load_bytes

    metadata = read_header(data, where).get("__metadata__")
    if not isinstance(metadata, dict):
        raise SerializationError(f"{where} is not an ebmalgebra expression file (no metadata)")
    try:
        tensors = load_bytes(data)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise SerializationError(f"{where}: corrupt safetensors data: {error}") from None
    return metadata, tensors


class _Reader:
    def __init__(self, document: object, tensors: dict[str, Tensor], where: str) -> None:
        self.where = where
        self.doc = self._object(document, "the document")
        if self.doc.get("format") != FORMAT:
            raise self.error(f"'format' must be {FORMAT!r}, got {self.doc.get('format')!r}")
        version = self.doc.get("version")
        if version != VERSION:
            raise self.error(f"unsupported version {version!r} (this library reads "
                             f"version {VERSION})")
        self.tensors = tensors
        self._check_tensors()
        records = self.doc.get("leaves")
        if not isinstance(records, list):
            raise self.error("'leaves' must be a list")
        self.records = records
        self.built: dict[int, EnergyModel] = {}
        self.used: set[str] = set()
        self.modules: dict[str, nn.Module] = {}  # by the path the writer gave them
        self.loaded: dict[int, str] = {}  # tensor id -> the file key loaded into it
        self.n_nodes = 0  # operator nodes so far, numbered as the writer numbers them

    def error(self, message: str) -> SerializationError:
        return SerializationError(f"{self.where}: {message}")

    def _object(self, value: object, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(f"{what} must be a JSON object, got {type(value).__name__}")
        return value

    def _check_tensors(self) -> None:
        records = self._object(self.doc.get("tensors"), "'tensors'")
        missing = sorted(set(records) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(records))
        if missing:
            raise self.error(f"tensor {missing[0]!r} is recorded but missing from the file")
        if extra:
            raise self.error(f"tensor {extra[0]!r} is in the file but not recorded")
        for key, record in records.items():
            record = self._object(record, f"the record of tensor {key!r}")
            tensor = self.tensors[key]
            if record.get("dtype") != _dtype_name(tensor.dtype):
                raise self.error(f"tensor {key!r} has dtype {_dtype_name(tensor.dtype)} but "
                                 f"{record.get('dtype')!r} was recorded")
            if record.get("shape") != list(tensor.shape):
                raise self.error(f"tensor {key!r} has shape {list(tensor.shape)} but "
                                 f"{record.get('shape')!r} was recorded")
            if record.get("sha256") != _digest(tensor):
                raise self.error(f"tensor {key!r} does not match its recorded sha256: the "
                                 "file was modified or is corrupt")

    def model(self) -> EnergyModel:
        model = self.node(self.doc.get("root"), 0)
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise self.error(f"tensor {unused[0]!r} belongs to no leaf of the expression")
        return model

    def node(self, node: object, depth: int) -> EnergyModel:
        from ebmalgebra.errors import CompositionError

        if depth > _MAX_DEPTH:
            raise self.error(f"expression nested deeper than {_MAX_DEPTH}")
        node = self._object(node, "an expression node")
        if "leaf" in node:
            return self.leaf(node["leaf"])
        op = node.get("op")
        entry = OPERATORS.by_name.get(op) if isinstance(op, str) else None
        if entry is None:
            raise self.error(f"unknown node {json.dumps(node)[:80]}; expected a leaf reference or "
                             f"an op among {', '.join(OPERATORS.names())}")
        if "children" in node:
            children = node["children"]
            if not isinstance(children, list) or len(children) < 2:
                raise self.error(f"a {op} node needs a list of at least two children")
        else:
            children = [node["child"]] if "child" in node else []
        for field in OPERATORS.numbers.get(op, ()):
            self.number(node, field)
        index = self.n_nodes
        self.n_nodes += 1
        spec = {key: self.value(value, f"{op} node field {key!r}", f"nodes.{index}.{key}")
                for key, value in node.items() if key not in _NODE_KEYS}
        built = tuple(self.node(child, depth + 1) for child in children)
        try:
            return entry.build(built, spec)
        except SerializationError:
            raise
        except (CompositionError, TypeError, ValueError) as error:
            raise self.error(f"invalid {op} node: {error}") from None

    def number(self, node: dict, field: str) -> float:
        value = node.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{node.get('op')} node: {field!r} must be a number, got "
                             f"{value!r}")
        return float(value)

    def leaf(self, index: object) -> EnergyModel:
        if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index < len(self.records)):
            raise self.error(f"leaf reference {index!r} is not an index into 'leaves'")
        if index in self.built:
            return self.built[index]
        record = self._object(self.records[index], f"leaf {index}")
        type_name = record.get("type")
        entry = LEAVES.by_name.get(type_name) if isinstance(type_name, str) else None
        if entry is None:
            raise self.error(f"leaf {index} has unknown type {type_name!r}; registered leaf "
                             f"types: {', '.join(LEAVES.names())}")
        prefix = f"leaves.{index}."
        config = self._object(record.get("config"), f"the config of leaf {index}")
        kwargs = {key: self.value(value, f"leaf {index} ({type_name}) config {key!r}",
                                  f"{prefix}config.{key}")
                  for key, value in config.items()}
        try:
            leaf = entry.build(**kwargs)
        except SerializationError:
            raise
        except Exception as error:  # any constructor failure is a bad file, reported as such
            raise self.error(f"cannot rebuild leaf {index} ({type_name}): {error}") from None
        if not isinstance(leaf, EnergyModel):
            raise self.error(f"leaf {index}: {type_name} built a {type(leaf).__name__}, not "
                             "an EnergyModel")
        self._load_state(leaf, prefix, f"leaf {index} ({type_name} {leaf!r})")
        self.built[index] = leaf
        return leaf

    def _load_state(self, leaf: EnergyModel, prefix: str, what: str) -> None:
        expected = dict(_named_tensors(leaf))
        given = {key[len(prefix):]: t for key, t in self.tensors.items()
                 if key.startswith(prefix) and not key.startswith(prefix + "config.")}
        for name in sorted(set(expected) | set(given)):
            if name not in given:
                raise self.error(f"{what}: tensor {prefix + name!r} is missing")
            if name not in expected:
                raise self.error(f"{what}: tensor {prefix + name!r} is not a parameter or "
                                 "buffer of the rebuilt leaf")
            want, got = expected[name], given[name]
            if want.dtype != got.dtype and want.is_floating_point() and \
                    got.is_floating_point() and want.shape == got.shape:
                # Architectures are rebuilt in torch's default dtype; a float64 network
                # comes back in the dtype it was saved in.
                want.data = want.data.to(got.dtype)
            if want.dtype != got.dtype or want.shape != got.shape:
                raise self.error(
                    f"{what}: tensor {prefix + name!r} is {_dtype_name(got.dtype)} "
                    f"{list(got.shape)} but the leaf expects {_dtype_name(want.dtype)} "
                    f"{list(want.shape)}"
                )
        with torch.no_grad():
            for name, tensor in expected.items():
                earlier = self.loaded.get(id(tensor))
                if earlier is not None and not torch.equal(tensor, given[name]):
                    raise self.error(f"{what}: tensor {prefix + name!r} belongs to a module "
                                     f"shared with {earlier!r} but has other values")
                tensor.copy_(given[name])
                self.loaded[id(tensor)] = prefix + name
        self.used.update(prefix + name for name in given)

    def value(self, value: object, what: str, path: str) -> object:
        """A config or spec value; ``path`` is where the writer put it (``leaves.0.config.fn``),
        which later uses of the same module refer to."""
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list):
            return [self.value(v, what, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict) and set(value) == {"$tensor"}:
            key = value["$tensor"]
            if not isinstance(key, str) or key not in self.tensors:
                raise self.error(f"{what} refers to tensor {key!r}, which is not in the file")
            self.used.add(key)
            return self.tensors[key].clone()
        if isinstance(value, dict) and set(value) == {"$module", "config"}:
            name = value["$module"]
            entry = MODULES.by_name.get(name) if isinstance(name, str) else None
            if entry is None:
                raise self.error(f"{what} names unknown module type {name!r}; registered "
                                 f"module types: {', '.join(MODULES.names())}")
            config = self._object(value["config"], f"{what}: the config of module {name!r}")
            kwargs = {k: self.value(v, f"{what} → {name}.{k}", f"{path}.{k}")
                      for k, v in config.items()}
            try:
                module = entry.build(**kwargs)
            except Exception as error:  # any constructor failure is a bad file
                raise self.error(f"{what}: cannot rebuild module {name}: {error}") from None
            self.modules[path] = module
            return module
        if isinstance(value, dict) and set(value) == {"$same_module"}:
            module = self.modules.get(value["$same_module"]) if isinstance(
                value["$same_module"], str) else None
            if module is None:
                raise self.error(f"{what} refers to module {value['$same_module']!r}, which is "
                                 "not written before it")
            return module
        raise self.error(f"{what}: unsupported value {json.dumps(value)[:80]}")
