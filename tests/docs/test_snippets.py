"""The documentation's Python snippets run as written (each self-contained one, in a fresh interpreter), its
relative links point at files of the repository, and it keeps no internal history."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").rglob("*.md")))  # every page (order does not matter here)
# pages the site's nav lists that other work writes (see tests/docs/test_commands.py)
PAGES_FROM_ELSEWHERE = {"results/capability-screen.md", "gpu-check.md", "timm.md", "benchmarks/ssm-kernels.md"}
SNIPPETS = [
    (f"{page.relative_to(ROOT).as_posix()}#{i}", snippet)
    for page in PAGES
    for i, snippet in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S))
]
# a snippet that loads a downloaded weight file cannot run here; every other one must
RUNNABLE = [(name, s) for name, s in SNIPPETS if "pretrained=True" not in s]


def test_the_documentation_has_runnable_python_snippets() -> None:
    assert len(RUNNABLE) >= 8
    loading_files = sorted(name.split("#")[0] for name, s in SNIPPETS if (name, s) not in RUNNABLE)
    assert loading_files == ["docs/checkpoints.md", "docs/timm.md"]  # one snippet each loads a downloaded file


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [s for _, s in RUNNABLE], ids=[name for name, _ in RUNNABLE])
def test_documented_snippet_runs(snippet: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_readme_links_point_into_the_repository() -> None:
    """The README is read on its own (outside the site): each relative link names a file that exists, or a page
    of the site that other work adds."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative
    missing = [
        link
        for link in relative
        if not (ROOT / link).exists() and link.removeprefix("docs/") not in PAGES_FROM_ELSEWHERE
    ]
    assert not missing, missing


def test_the_readme_is_short_and_answers_the_first_questions() -> None:
    """About 300 lines at most; training on one's own images, which mixer, and how to pass a mixer's options
    come within its first screenfuls."""
    text = README.read_text()
    assert text.count("\n") <= 300
    head = "\n".join(text.splitlines()[:160])
    for needle in ("## Train on your own images", "## Which token mixer?", "{name:attention,head_dim:16}"):
        assert needle in head, needle


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_no_internal_history_or_outside_files(page: Path) -> None:
    """No issue numbers, commit hashes or references to files outside the repository (``shared/...``)."""
    text = page.read_text()
    assert not re.search(r"\bissue[- ]?#?\d+", text, re.I), "an issue number"
    hashes = re.findall(r"(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}(?![\w.-])", text)
    assert not hashes, f"commit hashes: {hashes}"
    assert "shared/specs" not in text and "../shared" not in text, "a file outside the repository"


@pytest.mark.slow
def test_generated_tables_are_current() -> None:
    """The measured tables tools/readme_tables.py writes into the docs pages (exact MACs and parameters) match a
    fresh count."""
    tool = ROOT / "tools" / "readme_tables.py"
    result = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
