"""Every command's ``--help`` is what it was when the cli was split into a package
(tests/data/cli_help/): options, defaults and help text stay identical.

After a deliberate change to a command's options, rewrite the snapshot with
``python tests/test_cli_help.py`` and review the diff."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import click
import pytest

from closurepack.cli import cli, main

SNAPSHOT = Path(__file__).parent / "data" / "cli_help"


def _commands() -> dict[str, list[str]]:
    """Every command and sub-command, by file name, with its words after ``closurepack``."""
    found: dict[str, list[str]] = {"closurepack": []}
    for name, command in cli.all_commands().items():
        found[name] = [name]
        if isinstance(command, click.Group):
            found.update({f"{name}-{sub}": [name, sub] for sub in command.commands})
    return found


def _help(words: list[str]) -> str:
    """What ``closurepack WORDS... --help`` prints on a wide terminal (click wraps at 78)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*words, "--help"])
    assert status == 0
    return out.getvalue()


def test_every_command_has_a_snapshot() -> None:
    assert sorted(p.stem for p in SNAPSHOT.glob("*.txt")) == sorted(_commands())


@pytest.mark.parametrize(("name", "words"), sorted(_commands().items()))
def test_help_is_unchanged(name: str, words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert _help(words) == (SNAPSHOT / f"{name}.txt").read_text()


@pytest.mark.parametrize("module", ["closurepack", "closurepack.cli"])
def test_python_m_runs_the_command(module: str) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", module, "build", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (SNAPSHOT / "build.txt").read_text()


if __name__ == "__main__":  # pragma: no cover - rewrites the snapshot
    os.environ["COLUMNS"] = "200"
    for old in SNAPSHOT.glob("*.txt"):
        old.unlink()
    for file_name, argv in _commands().items():
        (SNAPSHOT / f"{file_name}.txt").write_text(_help(argv))
    sys.exit(0)
