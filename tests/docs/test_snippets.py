"""The documentation's Python snippets run as written (each self-contained one, in a fresh process that has
imported only torch and timm), its relative links point at files of the repository, and it keeps no internal
history."""

from __future__ import annotations

import multiprocessing
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


# A snippet runs as a script in a process forked from a server that has imported torch and timm (what every snippet
# imports; in a new interpreter the imports took most of each snippet's time) and nothing else: the zoo is not
# imported there, so a snippet that forgets ``import mixerzoo`` fails as it would for a reader.
SNIPPET_SERVER = multiprocessing.get_context("forkserver")
SNIPPET_SERVER.set_forkserver_preload(["torch", "timm"])
RUN_SNIPPET = """
import os, sys, traceback
os.chdir(folder)
try:
    exec(compile(snippet, "<snippet>", "exec"), {"__name__": "__main__"})
except BaseException:
    with open(os.path.join(folder, "traceback.txt"), "w") as f:
        f.write(traceback.format_exc())
    sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [s for _, s in RUNNABLE], ids=[name for name, _ in RUNNABLE])
def test_documented_snippet_runs(snippet: str, tmp_path: Path) -> None:
    process = SNIPPET_SERVER.Process(target=exec, args=(RUN_SNIPPET, {"snippet": snippet, "folder": str(tmp_path)}))
    process.start()
    process.join()
    trace = tmp_path / "traceback.txt"
    assert process.exitcode == 0, trace.read_text()[-2000:] if trace.exists() else f"exit code {process.exitcode}"


def test_a_snippet_runs_without_the_zoo_imported(tmp_path: Path) -> None:
    """The snippet process starts without ``mixerzoo``: a snippet that uses the zoo's timm names without importing
    it fails there, as in a reader's new interpreter."""
    process = SNIPPET_SERVER.Process(
        target=exec,
        args=(RUN_SNIPPET, {"snippet": "import timm\ntimm.create_model('vim2_t')", "folder": str(tmp_path)}),
    )
    process.start()
    process.join()
    assert process.exitcode == 1 and "Unknown model" in (tmp_path / "traceback.txt").read_text()


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
