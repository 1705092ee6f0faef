"""The registry of :mod:`ebmalgebra.io`: type names ⇄ leaf, module and operator classes.

Files name types, never import them: loading looks names up here. A leaf or
module type is described by a *config* (the keyword arguments that rebuild
it), an operator type by a *spec* (its numbers; the children are stored
apart). The library's own types are registered on first use
(:mod:`ebmalgebra._io_builtins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentError, ArgumentTypeError, SerializationError

__all__ = [
    "LEAVES",
    "MODULES",
    "OPERATORS",
    "SerializationError",
    "ensure_builtins",
    "register_leaf",
    "register_module",
    "register_operator",
    "registered_leaf_types",
    "registered_module_types",
    "registered_operator_types",
]

T = TypeVar("T")



# ------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Entry:
    name: str
    cls: type
    config: Callable[[Any], dict]
    build: Callable[..., Any]


def _same_definition(old: type, new: type) -> bool:
    """Whether ``new`` is ``old`` defined again: same module and qualified name."""
    return (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)


class _Registry:
    """Type name ⇄ class, with how to describe (``config``) and rebuild (``build``) one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_name: dict[str, _Entry] = {}
        self.by_class: dict[type, _Entry] = {}
        self.numbers: dict[str, tuple[str, ...]] = {}
        self.operands: dict[str, Callable[[Any], tuple]] = {}

    def add(self, name: str, cls: type, config: Callable | None, build: Callable | None,
            method: str = "config") -> None:
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"register_{self.kind}: name must be a non-empty string, "
                                f"got {name!r}")
        if not isinstance(cls, type):
            raise ArgumentTypeError(f"register_{self.kind}({name!r}) decorates a class, "
                                    f"got {cls!r}")
        if config is None:
            config = getattr(cls, method, None)
            if not callable(config):
                raise ArgumentTypeError(
                    f"register_{self.kind}({name!r}): {cls.__name__} needs a {method}() method "
                    f"returning its constructor keyword arguments, or pass {method}=..."
                )
        previous = self.by_name.get(name)
        if previous is not None and previous.cls is not cls:
            if _same_definition(previous.cls, cls):
                # The class was defined again (a notebook cell or script run twice):
                # the new definition replaces the old one.
                del self.by_class[previous.cls]
            else:
                raise ArgumentError(f"register_{self.kind}: {name!r} is already registered for "
                                    f"{previous.cls.__qualname__}")
        entry = _Entry(name, cls, config, build or cls)
        self.by_name[name] = entry
        self.by_class[cls] = entry

    def names(self) -> list[str]:
        return sorted(self.by_name)


LEAVES = _Registry("leaf")
MODULES = _Registry("module")
OPERATORS = _Registry("operator")
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
        LEAVES.add(name, cls, config, build)
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
        MODULES.add(name, cls, config, build)
        return cls

    return decorator


def register_operator(
    name: str,
    *,
    spec: Callable[[Any], dict] | None = None,
    build: Callable[..., EnergyModel] | None = None,
    numbers: tuple[str, ...] = (),
    operands: Callable[[Any], tuple] | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a composite node type savable and loadable under ``name``.

    Args:
        name: the ``"op"`` written to files; unique per class.
        spec: ``node -> dict`` of the node's numbers (JSON values or tensors),
            default the class's ``spec()`` method (:class:`~ebmalgebra.Operator`
            gives one: its ``params()``).
        build: ``(operands, spec) -> node``, default the class's ``rebuild``.
        numbers: spec fields that must be JSON numbers in a file.
        operands: ``node -> children`` to store, default ``node.operands()``.

    Example:
        >>> @register_operator("smin")
        ... class SoftMin(Operator): ...
    """

    def decorator(cls: type[T]) -> type[T]:
        OPERATORS.add(name, cls, spec, build or getattr(cls, "rebuild", None), method="spec")
        OPERATORS.numbers[name] = tuple(numbers)
        if operands is not None:
            OPERATORS.operands[name] = operands
        return cls

    return decorator


def registered_leaf_types() -> list[str]:
    """Names of the registered leaf types."""
    ensure_builtins()
    return LEAVES.names()


def registered_module_types() -> list[str]:
    """Names of the registered module types."""
    ensure_builtins()
    return MODULES.names()


def registered_operator_types() -> list[str]:
    """Names of the registered composite node types."""
    ensure_builtins()
    return OPERATORS.names()


def ensure_builtins() -> None:
    """Register the library's own leaves and modules (on first use, to avoid import cycles)."""
    global _builtins_registered
    if _builtins_registered:
        return
    _builtins_registered = True
    from ebmalgebra import _io_builtins

    _io_builtins.register(register_leaf, register_module, register_operator)
