"""The applications' examples run at a tiny size, print their tables and write their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ebmalgebra import zoo
from ebmalgebra.apps import pretrained

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEEDS = {
    "anomaly_digits.py": ({"digits_0to4", "digits_0to4_background"}, set()),
    "denoise_digits.py": ({"digits"}, set()),
    "inpaint_faces.py": (set(), {"face", "glasses"}),
    "guidance.py": ({"glasses_classifier"}, {"face"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_runs_at_a_tiny_size(script, tmp_path):
    apps, faces = NEEDS[script]
    assert apps <= set(pretrained.names()) and faces <= set(zoo.list()), "weights are shipped"
    out = tmp_path / "figure.png"
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
