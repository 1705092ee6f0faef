"""Save and load whole expressions: a JSON tree plus safetensors, never pickle.

The format lives in :mod:`ebmalgebra.io.format`, the type registry in
:mod:`ebmalgebra.io.registry`; this module is their public face.

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

Nodes are ``{"leaf": i}`` or ``{"op": name, <spec fields>, "child": ...}``
(``"children": [...]`` for two or more children, neither for none): the
built-in ``{"op": "one"}``, ``{"op": "product" | "mixture", "children": [...]}``,
``{"op": "weight", "weight": w, "child": ...}``, ``{"op": "power", "exponent":
beta, "child": ...}``, ``{"op": "normalized", "log_z": float | null, "stderr":
float | null, "child": ...}`` (files without ``"stderr"`` load with none),
``{"op": "compile", "closed_form": bool, "backend": "eager" |
"inductor", "child": ...}`` and the operators of :mod:`ebmalgebra.pushforward`
and :mod:`ebmalgebra.condition`. Each node class gives its spec
(``node.spec()``) and rebuilds from it (``cls.rebuild(children, spec)``);
register your own operators with :func:`register_operator`. A leaf used
several times is stored once and comes back shared, as it was. So does a
module used by several leaves (one network in two ``from_energy`` leaves): its
later uses are written ``{"$same_module": "leaves.0.config.fn"}``, the place of
its first record (each leaf still stores the module's tensors under its own keys).

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

    @register_operator("smin")
    class SoftMin(Operator): ...       # spec() is its params(), e.g. {"tau": 0.5}

(``config=`` passed to the decorator replaces the method for classes you
cannot edit.) A leaf around a plain Python callable (a lambda) cannot be
saved: its code is not data.

**Loading never unpickles or executes anything from the file.** Type names
are looked up in the registry (never imported), the JSON is validated node by
node, and every tensor's dtype, shape and SHA-256 must match the record and
the rebuilt leaf. Whatever is wrong raises :class:`SerializationError` (a
``ValueError``) naming the problem.
"""

from ebmalgebra.io.format import (
    FORMAT,
    METADATA_KEY,
    VERSION,
    load,
    load_bytes,
    read_header,
    save,
    tensor_record,
)
from ebmalgebra.io.registry import (
    LEAVES,
    MODULES,
    OPERATORS,
    SerializationError,
    ensure_builtins,
    register_leaf,
    register_module,
    register_operator,
    registered_leaf_types,
    registered_module_types,
    registered_operator_types,
)

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "VERSION",
    "SerializationError",
    "load",
    "load_bytes",
    "read_header",
    "register_leaf",
    "register_module",
    "register_operator",
    "registered_leaf_types",
    "registered_module_types",
    "registered_operator_types",
    "save",
]

# Names from before the split into format and registry, kept for existing callers.
_LEAVES, _MODULES, _OPERATORS = LEAVES, MODULES, OPERATORS
_ensure_builtins = ensure_builtins
_tensor_record = tensor_record
