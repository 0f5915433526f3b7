"""Query the closure of live store paths: Nix, Guix, or a scan of the files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from closurepack.errors import ClosureError
from closurepack.graph import Closure, split_store_path
from closurepack.sources._tool import have_tool
from closurepack.sources.guix import GUIX_STORE_DIR, query_guix
from closurepack.sources.nix import NIX_STORE_DIR, query_nix
from closurepack.sources.scan import scan_closure

__all__ = ["query_closure", "store_item_path"]

_log = logging.getLogger(__name__)
_TOOLS = {NIX_STORE_DIR: ("nix", "nix-store"), GUIX_STORE_DIR: ("guix",)}


def query_closure(paths: Sequence[str], *, store_root: Path | None = None) -> Closure:
    """The closure of ``paths`` (its roots) from the store that holds them.

    ``/nix/store`` paths are asked of Nix, ``/gnu/store`` paths of Guix. The files are scanned
    instead (see :func:`~closurepack.sources.scan.scan_closure`) when ``store_root`` is given
    (``/nix/store/x`` is then read from ``store_root/nix/store/x``), when the store is neither
    Nix's nor Guix's, or when the tool is not installed but the files exist. A path inside an
    item, or a symlink to one (``./result``), stands for that item.
    """
    if not paths:
        raise ClosureError("query: no store path given")
    items = [store_item_path(p, store_root=store_root) for p in paths]
    store_dirs = sorted({split_store_path(p, where="query")[0] for p in items})
    if len(store_dirs) != 1:
        raise ClosureError(f"query: paths from different stores: {', '.join(store_dirs)}")
    store_dir = store_dirs[0]
    tools = _TOOLS.get(store_dir)
    if store_root is not None or tools is None:
        return scan_closure(store_root or Path("/"), store_dir=store_dir, paths=items)
    if not any(have_tool(t) for t in tools) and all(os.path.lexists(p) for p in items):
        _log.info("%s not installed: scanning %s instead", " or ".join(tools), store_dir)
        return scan_closure(Path("/"), store_dir=store_dir, paths=items)
    if store_dir == GUIX_STORE_DIR:
        return query_guix(items)
    return query_nix(items)


def store_item_path(path: str, *, store_root: Path | None = None) -> str:
    """The store item that ``path`` names.

    In ``/nix/store`` and ``/gnu/store``: the item itself, or the item a path inside it belongs
    to. Without ``store_root``, a symlink to such a path (``./result``) stands for its target,
    and a relative path is resolved. Any other absolute path names an item of its parent
    directory, taken as the store.
    """
    item = _known_store_item(path)
    if item is not None:
        return item
    if store_root is None and os.path.lexists(path):
        resolved = os.path.realpath(path)
        item = _known_store_item(resolved)
        if item is not None:
            return item
        if not path.startswith("/"):
            path = resolved
    if path.startswith("/") and ".." not in path.split("/"):
        return path.rstrip("/")
    raise ClosureError(f"{path}: not a store path (expected /nix/store/<hash>-<name> or similar)")


def _known_store_item(path: str) -> str | None:
    for store_dir in _TOOLS:
        if path.startswith(store_dir + "/") or path == store_dir:
            name = path[len(store_dir) + 1 :].split("/", 1)[0]
            if not name or name in (".", ".."):
                raise ClosureError(f"{path}: not a store path (no item name after {store_dir})")
            return f"{store_dir}/{name}"
    return None
