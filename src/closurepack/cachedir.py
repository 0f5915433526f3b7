"""Where the layer cache lives when no ``--cache-dir`` is given.

A module of its own so that a re-push, which only needs the push records' directory under the
cache (:mod:`closurepack.pushrecord`), does not import the cache itself.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/closurepack``, else ``~/.cache/closurepack`` (read at call time)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "closurepack"
