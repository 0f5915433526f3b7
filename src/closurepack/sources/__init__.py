"""Closure sources: closure files, live Nix and Guix queries, and plain directory stores."""

from __future__ import annotations

from closurepack.sources.files import load_closure_file
from closurepack.sources.narsize import nar_size
from closurepack.sources.query import query_closure
from closurepack.sources.scan import scan_closure

__all__ = ["load_closure_file", "nar_size", "query_closure", "scan_closure"]
