"""The README's Python snippets run as written (each self-contained one, in a fresh interpreter)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
# a snippet that loads a downloaded weight file cannot run here; every other one must
RUNNABLE = [s for s in SNIPPETS if "pretrained=True" not in s]


def test_the_readme_has_runnable_python_snippets() -> None:
    assert len(RUNNABLE) >= 5 and len(SNIPPETS) - len(RUNNABLE) <= 1


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[f"snippet{i}" for i in range(len(RUNNABLE))])
def test_readme_snippet_runs(snippet: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_generated_readme_tables_are_current() -> None:
    """The measured tables tools/readme_tables.py writes (exact MACs and parameters) match a fresh count."""
    tool = README.parent / "tools" / "readme_tables.py"
    result = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
