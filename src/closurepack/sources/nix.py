"""Query a closure from a live Nix store: ``nix path-info``, else ``nix-store --query``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from closurepack.errors import ClosureError, ToolError
from closurepack.graph import Closure, StoreItem
from closurepack.sources._tool import run_tool
from closurepack.sources.files import parse_closure

__all__ = ["NIX_STORE_DIR", "query_nix"]

NIX_STORE_DIR = "/nix/store"
_BATCH = 1000  # paths per command line, well below ARG_MAX
_log = logging.getLogger(__name__)


def query_nix(paths: Sequence[str]) -> Closure:
    """The closure of the store paths ``paths`` (its roots), as Nix registered it.

    Uses ``nix path-info --json --recursive`` (any Nix since 2.4: list or object output), and
    falls back to ``nix-store --query --requisites`` + ``nix-store --dump-db`` when the new CLI
    is missing or refuses, then to per-item ``--references`` and ``--size`` for a Nix without
    ``--dump-db PATHS``; a derivation (``.drv``) among ``paths`` goes to ``nix-store`` at
    once, as ``nix path-info`` would list its outputs instead. Raises ToolError naming the
    last command that failed.
    """
    # No substituters: the items must be in the local store, and asking a binary cache about a
    # missing path would only wait on the network before failing.
    if any(path.endswith(".drv") for path in paths):
        # the new CLI takes a derivation for its outputs (an installable); nix-store does not
        return _query_nix_store(paths)
    args = ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json"]
    args += ["--option", "substituters", ""]
    try:
        output = run_tool([*args, "--recursive", *paths])
    except ToolError as exc:
        _log.info("%s; falling back to nix-store", exc)
        return _query_nix_store(paths)
    return parse_closure(output.encode(), source="nix path-info --json", roots=paths)


def _query_nix_store(paths: Sequence[str]) -> Closure:
    requisites = list(
        dict.fromkeys(run_tool(["nix-store", "--query", "--requisites", *paths]).split())
    )
    source = "nix-store --dump-db"
    try:
        items = [
            item
            for batch in _batches(requisites)
            for item in _parse_dump_db(run_tool(["nix-store", "--dump-db", *batch]), source)
        ]
    except ToolError as exc:
        _log.info("%s; falling back to nix-store --query --references", exc)
        source = "nix-store --query"
        items = _query_each(requisites)
    return Closure.from_items(items, source=source, roots=paths)


def _batches(paths: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(paths), _BATCH):
        yield paths[start : start + _BATCH]


def _parse_dump_db(text: str, source: str) -> Iterator[StoreItem]:
    """Parse Nix's registration format: path, NAR hash, NAR size, deriver (may be empty), count,
    references."""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        path = lines[index]
        if not path:
            index += 1
            continue
        try:
            nar_hash, size, count = lines[index + 1], int(lines[index + 2]), int(lines[index + 4])
        except (IndexError, ValueError) as exc:
            raise ToolError(f"{source}: unexpected output at line {index + 1} ({path})") from exc
        first = index + 5
        references = tuple(lines[first : first + count])
        if len(references) != count:
            raise ToolError(f"{source}: output ends inside the references of {path}")
        if ":" not in nar_hash:
            nar_hash = f"sha256:{nar_hash}"
        yield StoreItem(path, size, references, nar_hash, lines[index + 3] or None)
        index = first + count


def _query_each(requisites: Sequence[str]) -> list[StoreItem]:
    sizes: list[str] = []
    for batch in _batches(requisites):
        sizes.extend(run_tool(["nix-store", "--query", "--size", *batch]).split())
    if len(sizes) != len(requisites):
        raise ToolError(
            f"nix-store --query --size: printed {len(sizes)} sizes for {len(requisites)} paths"
        )
    items = []
    for path, size in zip(requisites, sizes, strict=True):
        references = run_tool(["nix-store", "--query", "--references", path]).split()
        if not size.isdigit():
            raise ClosureError(f"nix-store --query --size: {path}: size {size!r} is not a number")
        items.append(StoreItem(path, int(size), tuple(references)))
    return items
