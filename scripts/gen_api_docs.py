"""Generate docs/api.md: every public name of ebmalgebra, from the ``__all__`` lists and docstrings.

A module is public when its dotted path has no component starting with ``_``;
its public names are its literal ``__all__`` (read with ``ast``, so a computed
``__all__`` is an error) or, without one, the functions and classes it defines
whose names do not start with ``_``. Each object is documented once, under the
shortest public module that exports it; the other modules exporting it link
there. Classes list their public methods and properties with the first line
of each docstring.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is stale
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"
PACKAGE = "ebmalgebra"
SKIP_MODULES = {"ebmalgebra.__main__"}  # importing it runs the CLI


def public_modules() -> list[ModuleType]:
    """The package and its public submodules, imported, in dotted-path order."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACKAGE}."):
        if info.name in SKIP_MODULES or any(p.startswith("_") for p in info.name.split(".")):
            continue
        names.append(info.name)
    return [importlib.import_module(name) for name in sorted(names)]


def literal_all(module: ModuleType) -> list[str] | None:
    """The module's ``__all__`` as written in its source (``None`` if it has none)."""
    source = Path(module.__file__).read_text()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(node.value)
            if not (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{module.__name__}.__all__ must be a literal list of strings")
            return list(value)
    return None


def public_names(module: ModuleType) -> list[str]:
    names = literal_all(module)
    if names is not None:
        return names
    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    )


def anchor(qualified: str) -> str:
    return qualified.replace(".", "").replace("_", "").lower()


def signature(obj: object, name: str) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return f"{name}{text}"


def docstring(obj: object) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "*(no docstring)*"


def first_line(obj: object) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip().splitlines()[0] if doc else ""


def class_members(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            lines.append(f"- `{name}` (property): {first_line(member)}")
        elif inspect.isfunction(member) or isinstance(member, classmethod | staticmethod):
            function = member.__func__ if isinstance(member, classmethod | staticmethod) \
                else member
            lines.append(f"- `{signature(function, name)}`: {first_line(function)}")
    return lines


def document(qualified: str, obj: object) -> list[str]:
    name = qualified.rsplit(".", 1)[-1]
    lines = [f"### `{qualified}`", ""]
    if inspect.ismodule(obj):
        lines += [f"Module. {first_line(obj)} See [{obj.__name__}](#{anchor(obj.__name__)}).",
                  ""]
        return lines
    if inspect.isclass(obj):
        lines += [f"```python\nclass {signature(obj, name) or name}\n```", ""]
    elif callable(obj):
        lines += [f"```python\n{signature(obj, name) or name}\n```", ""]
    else:
        lines += [f"Constant of type `{type(obj).__name__}`.", ""]
    if callable(obj) or inspect.isclass(obj):
        lines += [docstring(obj), ""]
    if inspect.isclass(obj):
        members = class_members(obj)
        if members:
            lines += ["Members:", "", *members, ""]
    return lines


def build() -> str:
    modules = public_modules()
    exported = {module.__name__: public_names(module) for module in modules}
    home: dict[int, str] = {}
    for module in sorted(modules, key=lambda m: (m.__name__.count("."), m.__name__)):
        for name in exported[module.__name__]:
            if not hasattr(module, name):
                raise AttributeError(f"{module.__name__}.__all__ lists {name!r}, which it "
                                     "does not define")
            obj = getattr(module, name)
            if inspect.ismodule(obj) or isinstance(obj, int | float | str | tuple | dict):
                continue
            home.setdefault(id(obj), f"{module.__name__}.{name}")
    out = [
        "# API reference",
        "",
        "Every public name of `ebmalgebra`, from the `__all__` lists and docstrings.",
        "Generated by `python scripts/gen_api_docs.py`; do not edit by hand.",
        "",
        "<!-- illustration: every block -->",
        "<!-- (its code blocks are signatures; tests/test_doc_snippets.py runs no block here) -->",
        "",
        "## Modules",
        "",
    ]
    out += [f"- [`{m.__name__}`](#{anchor(m.__name__)}): {first_line(m)}" for m in modules]
    out.append("")
    for module in modules:
        out += [f"## `{module.__name__}`", "", textwrap.dedent(inspect.getdoc(module) or ""), ""]
        for name in exported[module.__name__]:
            obj = getattr(module, name)
            qualified = f"{module.__name__}.{name}"
            owner = home.get(id(obj))
            if owner is not None and owner != qualified:
                out += [f"### `{qualified}`", "",
                        f"Same object as [`{owner}`](#{anchor(owner)}).", ""]
            else:
                out += document(qualified, obj)
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args()
    text = build()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale; run python scripts/gen_api_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
