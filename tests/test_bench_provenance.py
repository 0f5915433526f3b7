"""Every benchmark figure in README.md and bench/README.md says where it comes from: the tables
name the commit they were measured at, each named commit is in the history, each named script is
in bench/ (figures no script produces are marked "by hand" in the text)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: (file, the heading of its figures section)
SECTIONS = [("README.md", "## Benchmarks"), ("bench/README.md", "## Figures")]
COMMIT = re.compile(r"commits? ([0-9a-f]{7,40})\b")


def _section(name: str, heading: str) -> str:
    text = (ROOT / name).read_text()
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def _blocks(text: str) -> list[str]:
    return [b for b in re.split(r"\n\s*\n", text) if b.strip()]


@pytest.mark.parametrize(("name", "heading"), SECTIONS)
def test_every_table_of_figures_names_its_commit(name: str, heading: str) -> None:
    blocks = _blocks(_section(name, heading))
    tables = [i for i, b in enumerate(blocks) if b.lstrip().startswith("|")]
    assert tables, f"{name}: no table of figures found under {heading}"
    for i in tables:
        before = "\n".join(blocks[max(0, i - 2) : i])
        assert COMMIT.search(before), f"{name}: the table {blocks[i][:60]!r} names no commit"


@pytest.mark.parametrize(("name", "heading"), SECTIONS)
def test_named_scripts_and_commits_exist(name: str, heading: str) -> None:
    text = _section(name, heading)
    scripts = set(re.findall(r"bench/(\w+\.py)", text)) | set(re.findall(r"`(\w+_bench\.py)", text))
    assert scripts
    for script in scripts:
        assert (ROOT / "bench" / script).is_file(), f"{name}: bench/{script} does not exist"
    commits = set(COMMIT.findall(text))
    assert commits
    if subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse"], capture_output=True, check=False
    ).returncode:
        pytest.skip("not a git checkout: the commits cannot be looked up")
    for commit in sorted(commits):
        found = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        assert found.returncode == 0, f"{name}: commit {commit} is not in the history"
