"""``closurepack cache du / prune / clear``: the layer cache, shown and trimmed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = [
    "cache_clear_command",
    "cache_du_command",
    "cache_group",
    "cache_prune_command",
]


@click.group("cache")
def cache_group() -> None:
    """Show, prune or clear the layer cache (safe while builds use it)."""


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Layer cache (default: $XDG_CACHE_HOME/closurepack).",
)


def _echo_report(report: Any, *, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json_obj(), sort_keys=True, separators=(",", ":")))
    else:
        click.echo(report.summary())


@cache_group.command("du")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_du_command(cache_dir: Path | None, as_json: bool) -> None:
    """Entries, total size and the size limit of the cache."""
    from closurepack.cacheadmin import cache_usage

    _echo_report(cache_usage(cache_dir), as_json=as_json)


@cache_group.command("prune")
@_cache_dir_option
@click.option(
    "--max-size",
    help="Evict least recently used entries down to SIZE (e.g. 500M; default: 20G, the"
    " builds' default --cache-max-size).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_prune_command(cache_dir: Path | None, max_size: str | None, as_json: bool) -> None:
    """Evict least recently used entries until the cache fits a size."""
    from closurepack.cacheadmin import prune_cache

    _echo_report(prune_cache(cache_dir, max_size=max_size), as_json=as_json)


@cache_group.command("clear")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_clear_command(cache_dir: Path | None, as_json: bool) -> None:
    """Remove every entry (those running builds use stay)."""
    from closurepack.cacheadmin import clear_cache

    _echo_report(clear_cache(cache_dir), as_json=as_json)
