"""How failures and the library's warnings are shown: one line each on stderr."""

from __future__ import annotations

import logging
import os
import sys

import click

__all__ = [
    "WarningLine",
    "broken_pipe",
    "one_line",
    "show_warnings",
    "single_line",
]


def one_line(exc: click.ClickException) -> str:
    """Click's usage errors as one line: the command, the message and where help is."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: {message} (see {ctx.command_path} --help)"
    return message


class WarningLine(logging.Handler):
    """The library's warnings as one ``closurepack: warning: ...`` line each on stderr (the
    stream of the moment, so that redirections made after setup are honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"closurepack: warning: {single_line(record.getMessage())}", err=True)


def show_warnings() -> None:
    logger = logging.getLogger("closurepack")
    if not any(isinstance(h, WarningLine) for h in logger.handlers):
        logger.addHandler(WarningLine(logging.WARNING))


def single_line(message: str) -> str:
    """Messages quoting a tool's output may span lines: join them with '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def broken_pipe() -> int:
    """The reader went away (``closurepack build -o - | head``): not our error. Quietly give
    the status a shell reports for SIGPIPE; stdout goes to /dev/null so that Python's final
    flush cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141
