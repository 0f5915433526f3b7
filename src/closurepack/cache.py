"""Content-addressed layer cache: blobs by digest, entries by layer key, verified on every hit.

Layout under the cache root::

    blobs/sha256/<hex>     compressed layer blobs, named by their digest
    keys/<key>.json        a BuiltLayer descriptor whose blob is "../blobs/sha256/<hex>"
    locks/<key>.lock       fcntl locks so that two processes do not build one key twice
    tmp/                   build directories; blobs are renamed out of them

Every hit checks the blob's size. With ``verify="auto"`` (the default) it rehashes the blob
whenever its size and mtime differ from those recorded when it was last hashed (any rewrite
of the file changes them; a copy that keeps mtimes, like ``cp -a``, does not need a rehash),
so that warm builds stay fast; ``"full"`` rehashes on every hit, ``"size"`` never does. A
missing, short or corrupt blob makes the entry a miss and removes it.

An entry's mtime is its last use (touched on every hit); eviction removes the least recently
used entries until the blobs fit ``max_bytes``, never an entry this cache object has handed
out, and deletes a blob once no entry refers to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

from closurepack._fs import atomic_write, hash_stream, move_file
from closurepack.digest import Digest
from closurepack.errors import CacheError, ImageError
from closurepack.layer import BuiltLayer

__all__ = ["LayerCache", "default_cache_dir"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HEX = re.compile(r"[0-9a-f]{64}")
#: A blob no entry refers to is removed by eviction only when older than this (a concurrent
#: ``put`` moves the blob in before it writes the entry).
_ORPHAN_AGE = 3600.0
#: A build directory this old belongs to a process that died.
_STALE_TMP_AGE = 86400.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/closurepack``, else ``~/.cache/closurepack`` (read at call time)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "closurepack"


def _stamp(st: os.stat_result) -> list[int]:
    """What says a blob is unchanged since it was last hashed: its size and mtime in ns."""
    return [st.st_size, st.st_mtime_ns]


def _hash_file(path: Path) -> tuple[Digest, int]:
    with path.open("rb", buffering=0) as handle:
        return hash_stream(handle)


class LayerCache:
    """A layer cache rooted at ``root`` (created if missing); see the module doc."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int | None = None,
        verify: Literal["auto", "full", "size"] = "auto",
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise CacheError(f"{root}: negative cache size limit {max_bytes}")
        if verify not in ("auto", "full", "size"):
            raise CacheError(f"{root}: unknown verification mode {verify!r}")
        self.root = root
        self.max_bytes = max_bytes
        self.verify = verify
        self._in_use: set[str] = set()
        self._mutex = threading.Lock()
        #: The blobs' total size as last counted, plus the blobs this object has put since
        #: (None: not counted yet). Other processes' puts are seen at the next count.
        self._blob_bytes: int | None = None
        self._blobs = root / "blobs" / "sha256"
        self._keys = root / "keys"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        for directory in (self._blobs, self._keys, self._locks, self._tmp):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(
                    f"{directory}: cannot use the layer cache: {exc.strerror}"
                ) from exc
        if not os.access(root, os.W_OK):
            raise CacheError(f"{root}: cannot use the layer cache: not writable")

    # -- paths ---------------------------------------------------------------------------

    def _entry_path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise CacheError(f"{self.root}: invalid cache key {key!r}")
        return self._keys / f"{key}.json"

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob with ``digest`` lives in the cache (whether or not it is there)."""
        return self._blobs / digest.hex

    # -- reading -------------------------------------------------------------------------

    def _load(self, key: str) -> tuple[BuiltLayer, list[int] | None] | None:
        entry = self._entry_path(key)
        try:
            text = entry.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"{entry}: cannot read cache entry: {exc.strerror}") from exc
        try:
            layer = BuiltLayer.from_json(text, source=entry)
            stamp = json.loads(text).get("blob_stamp")
        except (ImageError, ValueError, AttributeError) as exc:
            log.warning("%s: bad cache entry (%s); removing it", entry, exc)
            entry.unlink(missing_ok=True)
            return None
        if not (isinstance(stamp, list) and all(isinstance(v, int) for v in stamp)):
            stamp = None
        return replace(layer, blob_path=self.blob_path(layer.digest)), stamp

    def _check(self, layer: BuiltLayer, stamp: list[int] | None) -> tuple[str | None, bool]:
        """(what is wrong with ``layer``'s blob or None, whether its stamp should be renewed)."""
        try:
            st = layer.blob_path.stat()
        except FileNotFoundError:
            return "blob missing", False
        if st.st_size != layer.size:
            return f"blob is {st.st_size} bytes, entry says {layer.size}", False
        if self.verify == "size" or (self.verify == "auto" and stamp == _stamp(st)):
            return None, False
        digest, _ = _hash_file(layer.blob_path)
        if digest != layer.digest:
            return f"blob hashes to {digest}, entry says {layer.digest}", False
        return None, stamp != _stamp(st)

    def get(self, key: str) -> BuiltLayer | None:
        """The layer cached under ``key``, checked against its blob; None on a miss.

        A bad entry (unreadable descriptor, missing, short or corrupt blob) is removed, logged
        and reported as a miss. A hit marks the entry as used now and in use by this object.
        """
        loaded = self._load(key)
        if loaded is None:
            return None
        layer, stamp = loaded
        problem, renew = self._check(layer, stamp)
        if problem is not None:
            log.warning("layer cache entry %s is bad (%s); rebuilding it", key, problem)
            self._entry_path(key).unlink(missing_ok=True)
            # the blob's name is its digest, so a blob of the wrong size or hash is garbage
            layer.blob_path.unlink(missing_ok=True)
            return None
        if renew:
            with contextlib.suppress(OSError):
                self._write_entry(key, layer)
        self._mark_used(key)
        return layer

    def _mark_used(self, key: str) -> None:
        with self._mutex:
            self._in_use.add(key)
        with contextlib.suppress(OSError):
            os.utime(self._entry_path(key))

    # -- writing -------------------------------------------------------------------------

    def _write_entry(self, key: str, layer: BuiltLayer) -> None:
        obj = layer.to_json_obj()
        obj["blob"] = f"../blobs/sha256/{layer.digest.hex}"
        obj["blob_stamp"] = _stamp(layer.blob_path.stat())
        text = json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
        with atomic_write(self._entry_path(key)) as handle:
            handle.write(text.encode())

    def put(self, key: str, layer: BuiltLayer) -> BuiltLayer:
        """Move ``layer``'s blob into the cache and record it under ``key``; return the layer
        as it now lives in the cache. A good blob already there (same digest) is kept."""
        entry = self._entry_path(key)
        dest = self.blob_path(layer.digest)
        try:
            if layer.blob_path != dest:
                if dest.exists() and _hash_file(dest) == (layer.digest, layer.size):
                    layer.blob_path.unlink(missing_ok=True)
                else:
                    move_file(layer.blob_path, dest)
                    # read-only: destinations may hard-link it (see _fs.link_blob)
                    dest.chmod(0o444)
                    with self._mutex:
                        if self._blob_bytes is not None:
                            self._blob_bytes += layer.size
            cached = replace(layer, blob_path=dest)
            self._write_entry(key, cached)
        except OSError as exc:
            raise CacheError(f"{entry}: cannot write cache entry: {exc.strerror}") from exc
        self._mark_used(key)
        return cached

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock_path = self._locks / f"{key}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CacheError(f"{lock_path}: cannot lock cache entry: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def get_or_build(self, key: str, build: Callable[[Path], BuiltLayer]) -> BuiltLayer:
        """The cached layer for ``key``, or ``build(tmp_dir)``'s result moved into the cache.

        Concurrent callers (threads or processes) of one key wait for each other: one builds,
        the others find its entry. Afterwards the cache is trimmed to ``max_bytes`` if its
        blobs (as counted once, plus those put since) exceed it.
        """
        layer = self.get(key)
        if layer is not None:
            return layer
        with self._locked(key):
            layer = self.get(key)
            if layer is None:
                work = Path(tempfile.mkdtemp(dir=self._tmp, prefix=f"{key[:16]}-"))
                try:
                    layer = self.put(key, build(work))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        if self.max_bytes is not None and self._counted_bytes() > self.max_bytes:
            self.evict()
        return layer

    def _counted_bytes(self) -> int:
        """The running total of the blobs' sizes; the first call counts them (and sweeps the
        build directories of crashed processes), so that a build does not rescan every entry
        after every layer it adds."""
        with self._mutex:
            known = self._blob_bytes
        if known is None:
            self._sweep_tmp()
            known = self.total_bytes()
            with self._mutex:
                if self._blob_bytes is None:
                    self._blob_bytes = known
                known = self._blob_bytes
        return known

    def _sweep_tmp(self) -> None:
        """Remove build directories of crashed processes (live ones are renamed away in
        seconds)."""
        now = time.time()
        for work in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - work.stat().st_mtime > _STALE_TMP_AGE:
                    shutil.rmtree(work, ignore_errors=True)

    # -- eviction ------------------------------------------------------------------------

    def total_bytes(self) -> int:
        """The total size of the blobs in the cache."""
        total = 0
        for blob in self._blobs.iterdir():
            with contextlib.suppress(OSError):
                total += blob.stat().st_size
        return total

    def evict(self, max_bytes: int | None = None) -> list[str]:
        """Remove least recently used entries until the blobs total at most ``max_bytes``
        (default: the cache's limit); return the keys removed, oldest first."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        if limit is None:
            return []
        entries: list[tuple[float, str, str]] = []  # (last use, key, blob hex)
        for path in self._keys.glob("*.json"):
            try:
                mtime = path.stat().st_mtime
                blob = str(json.loads(path.read_bytes())["blob"]).rsplit("/", 1)[-1]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not _HEX.fullmatch(blob):
                continue
            entries.append((mtime, path.name[: -len(".json")], blob))
        entries.sort()
        sizes: dict[str, int] = {}
        now = time.time()
        referenced = {blob for _, _, blob in entries}
        for blob_path in self._blobs.iterdir():
            try:
                st = blob_path.stat()
            except OSError:
                continue
            if blob_path.name not in referenced and now - st.st_mtime > _ORPHAN_AGE:
                blob_path.unlink(missing_ok=True)
                continue
            sizes[blob_path.name] = st.st_size
        total = sum(sizes.values())
        refcount: dict[str, int] = {}
        for _, _, blob in entries:
            refcount[blob] = refcount.get(blob, 0) + 1
        with self._mutex:
            in_use = set(self._in_use)
        self._sweep_tmp()
        removed: list[str] = []
        for _, key, blob in entries:
            if total <= limit:
                break
            if key in in_use:
                continue
            (self._keys / f"{key}.json").unlink(missing_ok=True)
            (self._locks / f"{key}.lock").unlink(missing_ok=True)
            removed.append(key)
            refcount[blob] -= 1
            if refcount[blob] == 0 and blob in sizes:
                (self._blobs / blob).unlink(missing_ok=True)
                total -= sizes.pop(blob)
        with self._mutex:
            self._blob_bytes = total
        return removed
