"""Closure sources: closure files, live Nix and Guix queries, and plain directory stores.

The names below are loaded when first asked for (module ``__getattr__``): importing one
submodule, as a build from a graph file imports :mod:`.files`, does not load the store
tools and scanner (:mod:`.query` and the modules it needs, ``subprocess`` among them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from closurepack._lazy import lazy_exports

if TYPE_CHECKING:
    from closurepack.sources.files import load_closure_file
    from closurepack.sources.narsize import nar_size
    from closurepack.sources.query import query_closure
    from closurepack.sources.scan import scan_closure

__all__ = ["load_closure_file", "nar_size", "query_closure", "scan_closure"]

#: Where each exported name lives.
_HOMES = {
    "load_closure_file": "files",
    "nar_size": "narsize",
    "query_closure": "query",
    "scan_closure": "scan",
}


__getattr__ = lazy_exports(__name__, _HOMES)
