"""examples/train_2d.py runs at a tiny size and writes its figure."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_2d.py"


def test_train_2d_example_writes_a_figure(tmp_path):
    out = tmp_path / "train_2d.png"
    result = subprocess.run([sys.executable, str(EXAMPLE), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "share of samples per mode" in result.stdout
