"""docs/api.md documents every public name (regenerate with scripts/gen_api_docs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs",
                                                  ROOT / "scripts" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_appears_in_the_api_reference():
    generator = load_generator()
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [f"{module.__name__}.{name}"
               for module in generator.public_modules()
               for name in generator.public_names(module)
               if f"### `{module.__name__}.{name}`" not in text]
    assert not missing, (f"docs/api.md lacks {missing[:10]} (and {max(len(missing) - 10, 0)} "
                         "more); run python scripts/gen_api_docs.py")


def test_the_top_level_all_is_a_literal_list():
    import ebmalgebra

    generator = load_generator()
    assert generator.literal_all(ebmalgebra) == list(ebmalgebra.__all__)
