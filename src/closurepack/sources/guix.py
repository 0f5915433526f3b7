"""Query a closure from a live Guix store with ``guix gc``; sizes from the items' files.

Guix has no command that prints sizes exactly (``guix size`` rounds to tenths of MiB), so an
item's size is the NAR size of its files, which exist on any machine that holds the store.
``guix gc --references`` prints the references of several items run together, so it is run
once per item (a few at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from closurepack.graph import Closure, StoreItem
from closurepack.sources._tool import run_tool
from closurepack.sources.files import size_from_files

__all__ = ["GUIX_STORE_DIR", "query_guix"]

GUIX_STORE_DIR = "/gnu/store"
_WORKERS = 8


def query_guix(paths: Sequence[str], *, store_root: Path | None = None) -> Closure:
    """The closure of the store paths ``paths`` (its roots), as the Guix daemon registered it.

    ``store_root`` only says where to read the files for the sizes (missing files count 0).
    Raises ToolError naming the ``guix`` command that failed.
    """
    requisites = list(dict.fromkeys(run_tool(["guix", "gc", "--requisites", *paths]).split()))

    def item(path: str) -> StoreItem:
        references = run_tool(["guix", "gc", "--references", path]).split()
        size = size_from_files(path, store_root, f"guix gc: {path}")
        return StoreItem(path, size, tuple(references))

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        items = list(pool.map(item, requisites))
    return Closure.from_items(items, source="guix gc", roots=paths)
