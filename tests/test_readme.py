"""README.md stays true: its example runs and CI runs exactly its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

DEMO = "pip install torch==2.13.0 && pip install -e . && python -m ebmalgebra demo"
TESTS = 'pip install torch==2.13.0 && pip install -e ".[dev]" && pytest'


def test_readme_gives_the_two_setup_commands_and_ci_runs_the_test_one():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = [line.strip() for block in bash_blocks for line in block.splitlines()
                if line.strip()]
    assert DEMO in commands and TESTS in commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TESTS in ci_lines
    assert "set -euo pipefail" in ci_lines


def test_readme_example_runs(capsys):
    example = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - running our own README
    assert "ring & ~g" in capsys.readouterr().out
