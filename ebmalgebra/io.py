"""Save and load whole expressions: a JSON tree plus safetensors, never pickle.

``save(expr, path)`` writes one `safetensors <https://huggingface.co/docs/safetensors>`_
file. Its tensors are every leaf's parameters and buffers (``leaves.<i>.<key>``);
its header metadata holds, under the key ``"ebmalgebra"``, a JSON document
describing everything else::

    {"format": "ebmalgebra.expression", "version": 1,
     "expression": "glasses & hat ** 2",          # repr, for humans
     "root": {"op": "product", "children": [{"leaf": 0},
              {"op": "power", "exponent": 2.0, "child": {"leaf": 1}}]},
     "leaves": [{"type": "energy_function", "config": {...}}, ...],
     "tensors": {"leaves.0.module.input.weight":
                 {"dtype": "float32", "shape": [512, 256], "sha256": "..."}, ...}}

Nodes are ``{"leaf": i}``, ``{"op": "one"}``, ``{"op": "product" | "mixture",
"children": [...]}``, ``{"op": "weight", "weight": w, "child": ...}``,
``{"op": "power", "exponent": beta, "child": ...}``, ``{"op": "normalized",
"log_z": float | null, "child": ...}`` and ``{"op": "compile", "closed_form":
bool, "backend": "eager" | "inductor", "child": ...}``. A leaf used several
times is stored once and comes back shared, as it was.

**Leaf and module types come from a registry.** A leaf is stored as its
registered type name plus a *config*: the keyword arguments that rebuild it,
``cls(**config)``. Config values are JSON numbers, strings, booleans, null,
lists, tensors (stored as ``{"$tensor": key}``) and registered modules
(``{"$module": name, "config": {...}}``). After rebuilding, the saved
parameters and buffers are loaded into the leaf, so energies are bit-for-bit
those of the saved expression. Built in: the analytic targets, ``one``, and
leaves made by :func:`~ebmalgebra.from_energy` / :func:`~ebmalgebra.from_score`
around an ``nn.Module`` whose type is registered (the networks of
:mod:`ebmalgebra.learning.nets` and ``nn.Sequential`` stacks of ``Linear``,
``Flatten`` and common activations). Register your own::

    @register_leaf("my_leaf")
    class MyLeaf(Leaf):
        def __init__(self, width: float, *, name: str = "mine"): ...
        def config(self) -> dict:          # MyLeaf(**config) rebuilds the leaf
            return {"width": self.width, "name": self.name}

    @register_module("my_net")
    class MyNet(nn.Module):
        def __init__(self, hidden: int): ...
        def config(self) -> dict:          # MyNet(**config) rebuilds the architecture
            return {"hidden": self.hidden}

(``config=`` passed to the decorator replaces the method for classes you
cannot edit.) A leaf around a plain Python callable (a lambda) cannot be
saved: its code is not data.

**Loading never unpickles or executes anything from the file.** Type names
are looked up in the registry (never imported), the JSON is validated node by
node, and every tensor's dtype, shape and SHA-256 must match the record and
the rebuilt leaf. Whatever is wrong raises :class:`SerializationError` (a
``ValueError``) naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import EBMAlgebraError

__all__ = [
    "SerializationError",
    "load",
    "load_bytes",
    "read_header",
    "register_leaf",
    "register_module",
    "registered_leaf_types",
    "registered_module_types",
    "save",
]

FORMAT = "ebmalgebra.expression"
VERSION = 1
METADATA_KEY = "ebmalgebra"

_MAX_HEADER_BYTES = 100_000_000
_MAX_DEPTH = 200

T = TypeVar("T")


class SerializationError(EBMAlgebraError, ValueError):
    """An expression cannot be saved, or a file cannot be loaded as one.

    The message names the part at fault: the leaf that is not serialisable,
    the unknown type, the tensor whose shape, dtype or checksum is off, the
    malformed JSON field.
    """


# ------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Entry:
    name: str
    cls: type
    config: Callable[[Any], dict]
    build: Callable[..., Any]


class _Registry:
    """Type name ⇄ class, with how to describe (``config``) and rebuild (``build``) one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_name: dict[str, _Entry] = {}
        self.by_class: dict[type, _Entry] = {}

    def add(self, name: str, cls: type, config: Callable | None, build: Callable | None
            ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register_{self.kind}: name must be a non-empty string, "
                             f"got {name!r}")
        if not isinstance(cls, type):
            raise TypeError(f"register_{self.kind}({name!r}) decorates a class, got {cls!r}")
        if config is None:
            config = getattr(cls, "config", None)
            if not callable(config):
                raise TypeError(
                    f"register_{self.kind}({name!r}): {cls.__name__} needs a config() method "
                    f"returning its constructor keyword arguments, or pass config=..."
                )
        previous = self.by_name.get(name)
        if previous is not None and previous.cls is not cls:
            raise ValueError(f"register_{self.kind}: {name!r} is already registered for "
                             f"{previous.cls.__qualname__}")
        entry = _Entry(name, cls, config, build or cls)
        self.by_name[name] = entry
        self.by_class[cls] = entry

    def names(self) -> list[str]:
        return sorted(self.by_name)


_LEAVES = _Registry("leaf")
_MODULES = _Registry("module")
_builtins_registered = False


def register_leaf(
    name: str,
    *,
    config: Callable[[Any], dict] | None = None,
    build: Callable[..., EnergyModel] | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a leaf type savable and loadable under ``name``.

    Args:
        name: the type name written to files; unique per class.
        config: ``leaf -> dict`` of constructor keyword arguments; defaults
            to the class's ``config()`` method. Values may be JSON scalars,
            lists, tensors and registered modules.
        build: ``**config -> leaf``; defaults to the class itself.

    After ``build(**config)`` the saved parameters and buffers are loaded
    into the new leaf (``load_state_dict``), so ``config`` only needs to fix
    the shapes, dtypes and any plain-float hyper-parameters.

    Example:
        >>> @register_leaf("shifted_ring")
        ... class ShiftedRing(Ring):
        ...     def config(self):
        ...         return {"radius": self.radius, "width": self.width, "name": self.name}
    """

    def decorator(cls: type[T]) -> type[T]:
        _LEAVES.add(name, cls, config, build)
        return cls

    return decorator


def register_module(
    name: str,
    *,
    config: Callable[[Any], dict] | None = None,
    build: Callable[..., nn.Module] | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: make an ``nn.Module`` type usable inside saved leaves.

    Convention: ``config()`` returns the constructor keyword arguments that
    rebuild the *architecture* (``cls(**module.config())``); the weights come
    from the file. See :func:`register_leaf` for ``config`` and ``build``.

    Example:
        >>> @register_module("quadratic")
        ... class Quadratic(nn.Module):
        ...     def __init__(self, dim: int):
        ...         super().__init__()
        ...         self.scale = nn.Parameter(torch.ones(dim))
        ...     def forward(self, x):
        ...         return 0.5 * (self.scale * x**2).sum(-1)
        ...     def config(self):
        ...         return {"dim": self.scale.shape[0]}
    """

    def decorator(cls: type[T]) -> type[T]:
        _MODULES.add(name, cls, config, build)
        return cls

    return decorator


def registered_leaf_types() -> list[str]:
    """Names of the registered leaf types."""
    _ensure_builtins()
    return _LEAVES.names()


def registered_module_types() -> list[str]:
    """Names of the registered module types."""
    _ensure_builtins()
    return _MODULES.names()


def _ensure_builtins() -> None:
    """Register the library's own leaves and modules (on first use, to avoid import cycles)."""
    global _builtins_registered
    if _builtins_registered:
        return
    _builtins_registered = True
    from ebmalgebra import _io_builtins

    _io_builtins.register(register_leaf, register_module)


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
        raise TypeError(f"save expects an EnergyModel, got {type(expr).__name__}")
    _ensure_builtins()
    writer = _Writer()
    root = writer.node(expr)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "expression": repr(expr),
        "root": root,
        "leaves": writer.leaf_records,
        "tensors": {key: _tensor_record(t) for key, t in sorted(writer.tensors.items())},
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

    def node(self, model: EnergyModel) -> dict:
        from ebmalgebra.compile import CompiledEnergy
        from ebmalgebra.leaves import One
        from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight

        if isinstance(model, CompiledEnergy):
            return {"op": "compile", "closed_form": bool(model.closed_form),
                    "backend": str(getattr(model, "backend", "eager")),
                    "child": self.node(model.source)}
        if isinstance(model, Product | Mixture):
            op = "product" if isinstance(model, Product) else "mixture"
            return {"op": op, "children": [self.node(c) for c in model.operands()]}
        if isinstance(model, Weight):
            return {"op": "weight", "weight": model.weight, "child": self.node(model.base)}
        if isinstance(model, Power):
            return {"op": "power", "exponent": model.exponent, "child": self.node(model.base)}
        if isinstance(model, Normalized):
            log_z = model.args[1]
            return {"op": "normalized", "log_z": log_z, "child": self.node(model.base)}
        if isinstance(model, One):
            return {"op": "one"}
        if model.operands():
            raise SerializationError(f"cannot save {model!r}: composite node type "
                                     f"{type(model).__name__} has no file form")
        return {"leaf": self.leaf(model)}

    def leaf(self, leaf: EnergyModel) -> int:
        if id(leaf) in self._leaf_index:
            return self._leaf_index[id(leaf)]
        entry = _LEAVES.by_class.get(type(leaf))
        if entry is None:
            raise SerializationError(
                f"cannot save leaf '{leaf!r}': its type {type(leaf).__qualname__} is not "
                f"registered; decorate the class with @ebmalgebra.io.register_leaf(name) and "
                f"give it a config() method (registered: {', '.join(_LEAVES.names())})"
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
            entry = _MODULES.by_class.get(type(value))
            if entry is None:
                raise SerializationError(
                    f"cannot save leaf '{where}': its module type {type(value).__qualname__} "
                    f"is not registered; decorate the class with "
                    f"@ebmalgebra.io.register_module(name) and give it a config() method "
                    f"(registered: {', '.join(_MODULES.names())})"
                )
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
    flat = tensor.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_record(tensor: Tensor) -> dict:
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
    _ensure_builtins()
    metadata, tensors = _read_safetensors(data, where)
    if METADATA_KEY not in metadata:
        raise SerializationError(f"{where} is a safetensors file but not an ebmalgebra "
                                 f"expression (no {METADATA_KEY!r} metadata)")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise SerializationError(f"{where}: malformed JSON in the expression description: "
                                 f"{error}") from None
    return _Reader(document, tensors, where).model()


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
        from ebmalgebra.compile import compile as compile_expression
        from ebmalgebra.errors import CompositionError
        from ebmalgebra.leaves import one
        from ebmalgebra.ops import Normalized, mixture, power, product, weighted

        if depth > _MAX_DEPTH:
            raise self.error(f"expression nested deeper than {_MAX_DEPTH}")
        node = self._object(node, "an expression node")
        if "leaf" in node:
            return self.leaf(node["leaf"])
        op = node.get("op")
        try:
            if op == "one":
                return one
            if op in ("product", "mixture"):
                children = node.get("children")
                if not isinstance(children, list) or len(children) < 2:
                    raise self.error(f"a {op} node needs a list of at least two children")
                built = [self.node(child, depth + 1) for child in children]
                return product(*built) if op == "product" else mixture(*built)
            if op == "weight":
                return weighted(self.number(node, "weight"), self.node(node.get("child"),
                                                                       depth + 1))
            if op == "power":
                return power(self.node(node.get("child"), depth + 1),
                             self.number(node, "exponent"))
            if op == "normalized":
                child = self.node(node.get("child"), depth + 1)
                log_z = None if node.get("log_z") is None else self.number(node, "log_z")
                return Normalized(child, log_z)
            if op == "compile":
                closed_form = node.get("closed_form")
                backend = node.get("backend", "eager")
                if not isinstance(closed_form, bool) or not isinstance(backend, str):
                    raise self.error("a compile node needs a boolean 'closed_form' and a "
                                     "string 'backend'")
                options = {} if backend == "eager" else {"backend": backend}
                return compile_expression(self.node(node.get("child"), depth + 1),
                                          closed_form=closed_form, **options)
        except SerializationError:
            raise
        except (CompositionError, TypeError, ValueError) as error:
            raise self.error(f"invalid {op} node: {error}") from None
        raise self.error(f"unknown node {json.dumps(node)[:80]}; expected a leaf reference or "
                         "an op among one, product, mixture, weight, power, normalized, compile")

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
        entry = _LEAVES.by_name.get(type_name) if isinstance(type_name, str) else None
        if entry is None:
            raise self.error(f"leaf {index} has unknown type {type_name!r}; registered leaf "
                             f"types: {', '.join(_LEAVES.names())}")
        prefix = f"leaves.{index}."
        config = self._object(record.get("config"), f"the config of leaf {index}")
        kwargs = {key: self.value(value, f"leaf {index} ({type_name}) config {key!r}")
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
            if want.dtype != got.dtype or want.shape != got.shape:
                raise self.error(
                    f"{what}: tensor {prefix + name!r} is {_dtype_name(got.dtype)} "
                    f"{list(got.shape)} but the leaf expects {_dtype_name(want.dtype)} "
                    f"{list(want.shape)}"
                )
        with torch.no_grad():
            for name, tensor in expected.items():
                tensor.copy_(given[name])
        self.used.update(prefix + name for name in given)

    def value(self, value: object, what: str) -> object:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list):
            return [self.value(v, what) for v in value]
        if isinstance(value, dict) and set(value) == {"$tensor"}:
            key = value["$tensor"]
            if not isinstance(key, str) or key not in self.tensors:
                raise self.error(f"{what} refers to tensor {key!r}, which is not in the file")
            self.used.add(key)
            return self.tensors[key].clone()
        if isinstance(value, dict) and set(value) == {"$module", "config"}:
            name = value["$module"]
            entry = _MODULES.by_name.get(name) if isinstance(name, str) else None
            if entry is None:
                raise self.error(f"{what} names unknown module type {name!r}; registered "
                                 f"module types: {', '.join(_MODULES.names())}")
            config = self._object(value["config"], f"{what}: the config of module {name!r}")
            kwargs = {k: self.value(v, f"{what} → {name}.{k}") for k, v in config.items()}
            try:
                module = entry.build(**kwargs)
            except Exception as error:  # any constructor failure is a bad file
                raise self.error(f"{what}: cannot rebuild module {name}: {error}") from None
            return module
        raise self.error(f"{what}: unsupported value {json.dumps(value)[:80]}")
