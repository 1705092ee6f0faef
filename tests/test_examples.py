"""Every example runs at a tiny size and writes its figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FIGURES = ["composition_2d.py", "product_vs_mixture.py", "faces_composition.py"]


@pytest.mark.parametrize("script", FIGURES)
def test_example_runs_at_a_tiny_size(script, tmp_path):
    out = tmp_path / "figure.png"
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
