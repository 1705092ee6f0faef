"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace, as a reader would type
them, in a temporary folder (snippets write files). Markers, an HTML comment
on the line just before a block:

* ``<!-- illustration -->``: not run (a signature, a fragment that needs a
  model of the reader's own);
* ``<!-- slow -->``: run, but the file's test is marked slow.

A file whose text contains ``<!-- illustration: every block -->`` (the
generated API reference, whose blocks are signatures) runs none. Functions a
block defines whose names start with ``test_`` are called, as pytest would.
They run under a hypothesis profile whose deadline (1 ms) every real example
exceeds, so a property-test snippet that would hit ``DeadlineExceeded`` on
some reader's machine (the default deadline is 200 ms, and one example may
compile an expression) fails here every time unless it sets its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
ILLUSTRATION = "<!-- illustration -->"
SLOW = "<!-- slow -->"
ALL_ILLUSTRATIONS = "<!-- illustration: every block -->"
_FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
_PROFILE = "doc-snippets"
settings.register_profile(_PROFILE, deadline=timedelta(milliseconds=1), max_examples=25)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first line of code
    code: str
    marker: str | None


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of ``path`` with the marker comment just before each, if any."""
    text = path.read_text()
    if ALL_ILLUSTRATIONS in text:
        return []
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = before if before in (ILLUSTRATION, SLOW) else None
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append(Block(path, line, match.group(1), marker))
    return blocks


def file_params() -> list:
    params = []
    for path in markdown_files():
        blocks = [b for b in python_blocks(path) if b.marker != ILLUSTRATION]
        if not blocks:
            continue
        marks = [pytest.mark.slow] if any(b.marker == SLOW for b in blocks) else []
        params.append(pytest.param(blocks, id=path.name, marks=marks))
    return params


def run_blocks(blocks: list[Block]) -> None:
    namespace: dict = {"__name__": "__doc_snippet__"}
    previous = settings.get_current_profile_name()
    # Before the blocks run: @given reads the default settings when it decorates.
    settings.load_profile(_PROFILE)
    try:
        for block in blocks:
            # Padding keeps tracebacks pointing at the Markdown file's own line numbers.
            code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
            exec(code, namespace)  # noqa: S102 - running our own documentation
            tests = [name for name, value in namespace.items()
                     if name.startswith("test_") and callable(value)
                     and getattr(getattr(value, "__code__", None), "co_filename", None)
                     == str(block.path)]
            for name in tests:
                namespace.pop(name)()
    finally:
        settings.load_profile(previous)


@pytest.mark.parametrize("blocks", file_params())
def test_python_blocks_run(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_blocks(blocks)


def test_every_markdown_file_is_found_and_markers_are_read(tmp_path):
    names = {path.name for path in markdown_files()}
    assert {"README.md", "samplers.md", "learning.md", "algebra.md"} <= names
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n<!-- illustration -->\n```python\nf(\n```\n"
                    "<!-- slow -->\n\n```python\ny = x + 1\n```\n")
    blocks = python_blocks(page)
    assert [(b.line, b.code, b.marker) for b in blocks] == [
        (3, "x = 1\n", None), (7, "f(\n", ILLUSTRATION), (12, "y = x + 1\n", SLOW)]


def test_a_failing_block_reports_its_file_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# title\n\n```python\nx = 1\nundefined_name\n```\n")
    with pytest.raises(NameError) as caught:
        run_blocks(python_blocks(page))
    frame = caught.traceback[-1]
    assert (Path(str(frame.path)), frame.lineno + 1) == (page, 5)
