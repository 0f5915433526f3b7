"""Query the closure of live store paths: Nix, Guix, or a scan of the files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from closurepack.errors import ClosureError
from closurepack.graph import STORE_DIRS, Closure, split_store_path
from closurepack.sources._tool import have_tool
from closurepack.sources.guix import GUIX_STORE_DIR, query_guix
from closurepack.sources.nix import NIX_STORE_DIR, query_nix
from closurepack.sources.scan import scan_closure, store_directory

__all__ = ["query_closure", "store_item_path"]

_log = logging.getLogger(__name__)
_TOOLS = {NIX_STORE_DIR: ("nix", "nix-store"), GUIX_STORE_DIR: ("guix",)}


def query_closure(paths: Sequence[str], *, store_root: Path | None = None) -> Closure:
    """The closure of ``paths`` (its roots) from the store that holds them.

    ``/nix/store`` paths are asked of Nix, ``/gnu/store`` paths of Guix. The files are scanned
    instead (see :func:`~closurepack.sources.scan.scan_closure`) when ``store_root`` is given
    (``/nix/store/x`` is then read from ``store_root/nix/store/x``), when the store is neither
    Nix's nor Guix's, or when the tool is not installed but the files exist. A path inside an
    item, or a symlink to one (``./result``), stands for that item; a path in no store is a
    ClosureError (see :func:`store_item_path`).
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
    """The store item that ``path`` names, or a ClosureError naming the store directories tried.

    A store path is ``DIR/<item>`` directly in a store directory: ``/nix/store`` or
    ``/gnu/store``. A path deeper inside such an item stands for the item, and a symlink to one
    (``./result``) for its target. With ``store_root``, any other absolute ``DIR/<item>`` whose
    files are there (``store_root/DIR/<item>``, or ``store_root/<item>`` when ``store_root``
    itself is the store, see :func:`~closurepack.sources.scan.store_directory`) is a store path
    too; in such a store only the item itself can be named, not a path inside it. Everything
    else (``/usr/bin/ls``, ``/etc/passwd``) is refused before anything is read.
    """
    if "\0" in path or ".." in path.split("/"):
        raise ClosureError(f"{path}: not a store path (it contains '..' or a NUL byte)")
    item = _known_store_item(path)
    if item is not None:
        return item
    if os.path.lexists(path):
        resolved = os.path.realpath(path)
        item = _known_store_item(resolved)
        if item is None and store_root is not None:
            # a symlink into the store root's copy of a store: the item of that store
            root = os.path.realpath(store_root)
            if resolved.startswith(root.rstrip("/") + "/"):
                item = _known_store_item(resolved[len(root.rstrip("/")) :])
        if item is not None:
            return item
    tried = " or ".join(STORE_DIRS)
    if store_root is None:
        raise ClosureError(
            f"{path}: not a store path (not in a store directory: {tried}; for a store elsewhere"
            " give --store-root)"
        )
    if path.startswith("/") and path.strip("/"):
        store_dir, name = split_store_path(path.rstrip("/"), where=path)
        directory = store_directory(store_root, store_dir)
        if os.path.lexists(directory / name):
            return f"{store_dir}/{name}"
        tried = f"{tried}, nor an item of {directory}"
    raise ClosureError(f"{path}: not a store path (not in a store directory: {tried})")


def _known_store_item(path: str) -> str | None:
    for store_dir in STORE_DIRS:
        if path.startswith(store_dir + "/") or path == store_dir:
            name = path[len(store_dir) + 1 :].split("/", 1)[0]
            if not name or name == ".":
                raise ClosureError(f"{path}: not a store path (no item name after {store_dir})")
            return f"{store_dir}/{name}"
    return None
