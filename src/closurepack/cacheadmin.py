"""The ``closurepack cache`` jobs: how much a layer cache holds, pruning it to a size, and
clearing it, each safe to run while builds use the same cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from closurepack.cache import DEFAULT_MAX_SIZE, LayerCache, default_cache_dir
from closurepack.cachegc import blob_sizes, list_entries
from closurepack.errors import CacheError
from closurepack.options import parse_size

__all__ = ["CacheReport", "cache_usage", "clear_cache", "prune_cache"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class CacheReport:
    """A cache after a command: its entries and blob bytes, the limit builds keep it under,
    and what the command removed and had to leave because running builds use it."""

    root: Path
    entries: int
    bytes: int
    limit: int | None
    removed: int | None = None
    in_use: int = 0

    def to_json_obj(self) -> dict[str, object]:
        obj: dict[str, object] = {
            "cache_dir": str(self.root),
            "entries": self.entries,
            "bytes": self.bytes,
            "limit_bytes": self.limit,
        }
        if self.removed is not None:
            obj["removed"] = self.removed
            obj["in_use"] = self.in_use
        return obj

    def summary(self) -> str:
        """One line: ``DIR: [removed N entries, ]E entries, X MiB, limit Y MiB[, ...]``."""
        limit = "none" if self.limit is None else f"{self.limit / _MIB:.1f} MiB"
        removed = "" if self.removed is None else f"removed {self.removed} entries, "
        busy = f", {self.in_use} in use by running builds kept" if self.in_use else ""
        return (
            f"{self.root}: {removed}{self.entries} entries, {self.bytes / _MIB:.1f} MiB,"
            f" limit {limit}{busy}"
        )


def _root(cache_dir: Path | None) -> Path:
    root = cache_dir if cache_dir is not None else default_cache_dir()
    if root.exists() and not (root / "keys").is_dir():
        raise CacheError(f"{root}: not a closurepack layer cache (no keys/ directory)")
    return root


def cache_usage(cache_dir: Path | None) -> CacheReport:
    """What the cache in ``cache_dir`` (default: the default one) holds, and the limit builds
    keep it under by default; reads only (a missing cache holds nothing)."""
    limit = parse_size(DEFAULT_MAX_SIZE)
    root = _root(cache_dir)
    if not root.exists():
        return CacheReport(root, 0, 0, limit)
    entries = len(list_entries(root / "keys"))
    size = sum(blob_sizes(root / "blobs" / "sha256").values()) if (root / "blobs").is_dir() else 0
    return CacheReport(root, entries, size, limit)


def prune_cache(cache_dir: Path | None, *, max_size: str | None = None) -> CacheReport:
    """Evict least recently used entries until the blobs fit ``max_size`` (default: the limit
    builds use by default); entries that running builds use stay."""
    limit = parse_size(max_size or DEFAULT_MAX_SIZE, option="--max-size")
    root = _root(cache_dir)
    if not root.exists():
        return CacheReport(root, 0, 0, limit, removed=0)
    with LayerCache(root, max_bytes=limit) as cache:
        removed, busy = cache.prune(limit) if limit is not None else ([], 0)
        usage = cache.usage()
    return CacheReport(root, usage.entries, usage.bytes, limit, len(removed), busy)


def clear_cache(cache_dir: Path | None) -> CacheReport:
    """Remove every entry, each under its use lock: entries that running builds use stay (and
    are counted), so no build loses a layer it is writing out."""
    limit = parse_size(DEFAULT_MAX_SIZE)
    root = _root(cache_dir)
    if not root.exists():
        return CacheReport(root, 0, 0, limit, removed=0)
    with LayerCache(root) as cache:
        removed, busy = cache.prune(None)
        usage = cache.usage()
    return CacheReport(root, usage.entries, usage.bytes, limit, len(removed), busy)
