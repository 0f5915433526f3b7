"""A build's progress on stderr: a rich bar on a terminal, else a plain line per layer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = [
    "layer_line",
    "progress_reporter",
]


def layer_line(event: Any) -> str:
    """One layer's progress line: ``layer 2/5: 0123456789ab 1.2 MiB (cached) in 0.0s``."""
    from closurepack.plantable import human_size

    cached = " (cached)" if event.cached else ""
    return (
        f"layer {event.index + 1}/{event.total}: {event.layer.digest.hex[:12]}"
        f" {human_size(event.layer.size)}{cached} in {event.seconds:.1f}s"
    )


@contextlib.contextmanager
def progress_reporter(*, enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar on stderr (per layer, bytes per second) when stderr is a terminal;
    otherwise (a CI log, a Nix build) one plain line per layer, never an escape code."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():

        def plain(event: Any) -> None:
            click.echo(layer_line(event), err=True)

        yield plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("layers {task.fields[done]}/{task.fields[layers]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("build", total=None, done=0, layers="?")
        finished = 0

        def report(event: Any) -> None:
            nonlocal finished
            finished += 1
            bar.update(
                task,
                total=event.total_size or None,
                advance=event.planned_size,
                done=finished,
                layers=event.total,
            )
            bar.console.print(layer_line(event), highlight=False)

        yield report
