"""Run an external tool (nix, nix-store, guix) and turn its failure into one-line ToolErrors."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence

from closurepack.errors import ToolError

__all__ = ["command_text", "have_tool", "run_tool"]


def have_tool(name: str) -> bool:
    """Whether ``name`` is an executable on PATH."""
    return shutil.which(name) is not None


def command_text(args: Sequence[str]) -> str:
    """The command for an error message, shortened when it names many paths."""
    shown = shlex.join(args[:6])
    return shown + f" ... ({len(args) - 6} more)" if len(args) > 6 else shown


def run_tool(args: Sequence[str]) -> str:
    """Run ``args`` and return its standard output; ToolError when missing or failing.

    The error names the command and the first error line of its stderr (else its first
    non-empty line).
    """
    executable = shutil.which(args[0])
    if executable is None:
        raise ToolError(f"{args[0]}: not found on PATH (needed for: {command_text(args)})")
    try:
        proc = subprocess.run(
            [executable, *args[1:]], capture_output=True, check=False, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise ToolError(f"{command_text(args)}: cannot run: {exc.strerror}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        # "error: ..." (Nix) or "guix gc: error: ..." (Guix); not "warning: error: ..." lines.
        errors = [
            ln for ln in lines if ln.startswith("error") or ": error:" in ln.split("warning:")[0]
        ]
        first = (errors or lines or ["no error message"])[0]
        raise ToolError(f"{command_text(args)}: failed (exit {proc.returncode}): {first}")
    try:
        return proc.stdout.decode()
    except UnicodeDecodeError as exc:
        raise ToolError(f"{command_text(args)}: printed output that is not UTF-8") from exc
