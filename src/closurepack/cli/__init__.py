"""The ``closurepack`` command: thin commands over the library; errors become exit codes here.

The group and :func:`main` live here; each command (or family) has its module, the
options they share are in :mod:`.options` (declared) and :mod:`.parsing` (turned into
the library's objects), progress in :mod:`.progress`, failures' lines in :mod:`.errors`.
Only this package imports click and prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from closurepack import __version__
from closurepack.cli.errors import broken_pipe, one_line, show_warnings, single_line
from closurepack.cli.fastexit import exit_process
from closurepack.cli.lazygroup import LazyGroup
from closurepack.errors import ClosurepackError

__all__ = [
    "cli",
    "main",
    "run",
]

#: Modules httpcore imports only for its async side, which the command never uses.
_ASYNC_ONLY = ("anyio", "trio")


#: Each command's module and attribute: imported only when that command runs (or for --help).
_COMMANDS = {
    "plan": "closurepack.cli.plan:plan_command",
    "build": "closurepack.cli.build:build_command",
    "build-layer": "closurepack.cli.layers:build_layer_command",
    "assemble": "closurepack.cli.layers:assemble_command",
    "copy": "closurepack.cli.images:copy_command",
    "verify": "closurepack.cli.images:verify_command",
    "inspect": "closurepack.cli.images:inspect_command",
    "diff": "closurepack.cli.images:diff_command",
    "cache": "closurepack.cli.cache:cache_group",
}


@click.group(
    cls=LazyGroup,
    lazy_commands=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="closurepack")
def cli() -> None:
    """Turn a Nix or Guix store closure into reproducible multi-layer container images."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    # httpx loads its own command line (rich's console, pygments) when they are installed, a
    # fifth of a registry push's start-up; closurepack never runs it, and without the module
    # httpx defines a stub (its documented fallback).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if argv is None:
        # The process is this command (not a caller of main with its own modules): httpcore
        # builds its async locks on anyio (and trio) when installed, a tenth of a re-push's
        # imports; closurepack's client is synchronous, and without them httpcore keeps its
        # documented fallbacks (stubs that say what is missing).
        for name in _ASYNC_ONLY:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    show_warnings()
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="closurepack",
            standalone_mode=False,
        )
    except ClosurepackError as exc:
        if isinstance(exc.__cause__, BrokenPipeError):
            return broken_pipe()
        click.echo(f"closurepack: error: {single_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("closurepack: interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        # plain `closurepack` (or a group without its command): the usage, as --help shows it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"closurepack: error: {one_line(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("closurepack: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return broken_pipe()
    except OSError as exc:
        # A safety net: the library wraps the OSErrors it expects; any other one is still a
        # problem of the machine or the input (a full disk, a vanished file), not a crash.
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"closurepack: error: {where}{exc.strerror or exc}", err=True)
        return 1
    except RecursionError:
        # Only absurdly nested JSON gets here (the parsers of closures, plans and pipelines
        # name their file themselves): still bad input, not a crash.
        click.echo("closurepack: error: an input is nested too deeply to read", err=True)
        return 2
    return status if isinstance(status, int) else 0


def run() -> NoReturn:
    """The ``closurepack`` program: run the command line and end the process with its status.

    The process ends without the interpreter's teardown when that is safe
    (:mod:`.fastexit`): a command that has little to do, such as a re-push with nothing
    to upload, is no longer dominated by freeing what it imported."""
    exit_process(main())
