"""Content-addressed layer cache: blobs by digest, entries by layer key, verified on every hit.

Layout under the cache root::

    blobs/sha256/<hex>     compressed layer blobs, named by their digest
    keys/<key>.json        a BuiltLayer descriptor whose blob is "../blobs/sha256/<hex>"
    locks/<key>.lock       an flock so that two processes do not build one key twice
    locks/<key>.use        shared flocks of the builds using the entry (until the cache object
                           is closed); eviction and clearing take it exclusively or skip the entry
    stamps/<dev>-<ino>     what blobs outside the cache (in oci: layouts) held when a build
                           wrote or hashed them (closurepack.blobstamp)
    pushes/<key>           the manifest digest a push of these inputs left in a registry
                           (closurepack.pushrecord)
    plans/<key>.json       the plan made for these planning inputs (closurepack.plancache)
    tmp/work-<pid>-*       flock-held work directories (layer builds, entry writes); blobs and
                           entries are renamed out of them. Those of killed processes are swept
                           by later runs; they never count as cache content.

Every hit checks the blob's size (the entries' format and this check are in
:mod:`closurepack.cacheentry`). With ``verify="auto"`` (the default) it rehashes the blob
whenever its size and mtime differ from those recorded when it was last hashed (any rewrite
of the file changes them; a copy that keeps mtimes, like ``cp -a``, does not need a rehash),
so that warm builds stay fast; ``"full"`` rehashes on every hit, ``"size"`` never does. A
missing, short or corrupt blob makes the entry a miss and removes it.

An entry's mtime is its last use (touched on every hit); eviction removes the least recently
used entries until the blobs fit ``max_bytes``, never an entry this cache object has handed
out or another process is using, and deletes a blob once no entry refers to it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Literal

from closurepack._fs import (
    atomic_write,
    fs_now,
    locked_temp_dir,
    move_file,
)
from closurepack.blobstamp import BlobStamps
from closurepack.cachedir import default_cache_dir
from closurepack.cacheentry import (
    blob_unchanged,
    check_blob,
    entry_text,
    hash_file,
    read_entry,
)
from closurepack.cachegc import (
    KEY,
    WORK_PREFIX,
    CacheUsage,
    blob_sizes,
    remove_entries,
    sweep_work_dirs,
)
from closurepack.cachelocks import KeyLocks
from closurepack.digest import Digest
from closurepack.errors import CacheError, StoreError
from closurepack.layer import BuiltLayer

__all__ = ["DEFAULT_MAX_SIZE", "CacheUsage", "LayerCache", "default_cache_dir"]

log = logging.getLogger(__name__)

#: Why a write runs out of room: disk full, quota, file size limit.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: The limit builds keep the cache under unless told otherwise (``--cache-max-size``).
DEFAULT_MAX_SIZE = "20G"


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
        #: The start of the running command: temp directories changed since are never swept.
        self._started = fs_now()
        self._in_use: set[str] = set()
        self._mutex = threading.Lock()
        #: The blobs' total size as last counted, plus the blobs this object has put since
        #: (None: not counted yet). Other processes' puts are seen at the next count.
        self._blob_bytes: int | None = None
        self._blobs = root / "blobs" / "sha256"
        self._keys = root / "keys"
        self._locks = root / "locks"
        self._key_locks = KeyLocks(self._locks)
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

    @classmethod
    def open_default(
        cls,
        *,
        max_bytes: int | None = None,
        verify: Literal["auto", "full", "size"] = "auto",
    ) -> LayerCache:
        """The cache in :func:`default_cache_dir`; a CacheError when it cannot be used, or when
        it would lie under a home directory that does not exist (as in a Nix build, where
        HOME=/homeless-shelter): that directory is never created."""
        root = default_cache_dir()
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        if not (xdg and Path(xdg).is_absolute()):
            home = root.parent.parent
            if not home.is_dir():
                raise CacheError(
                    f"{root}: cannot use the layer cache: the home directory {home} does not exist"
                )
        return cls(root, max_bytes=max_bytes, verify=verify)

    def close(self) -> None:
        """Let other processes evict the entries this object has handed out."""
        self._key_locks.close()

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError):  # __init__ may have failed before _key_locks
            self.close()

    def __enter__(self) -> LayerCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- paths ---------------------------------------------------------------------------

    def _entry_path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise CacheError(f"{self.root}: invalid cache key {key!r}")
        return self._keys / f"{key}.json"

    @property
    def stamps(self) -> BlobStamps:
        """Records of the blobs builds with this cache wrote or hashed elsewhere (the blobs of
        ``oci:`` layouts), in ``stamps/``: see :mod:`closurepack.blobstamp`."""
        return BlobStamps(self.root / "stamps")

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob with ``digest`` lives in the cache (whether or not it is there)."""
        return self._blobs / digest.hex

    # -- reading -------------------------------------------------------------------------

    def _load(self, key: str) -> tuple[BuiltLayer, list[int] | None] | None:
        return read_entry(self._entry_path(key), self.blob_path)

    def _check(self, layer: BuiltLayer, stamp: list[int] | None) -> tuple[str | None, bool]:
        """(what is wrong with ``layer``'s blob or None, whether its stamp should be renewed)."""
        return check_blob(layer, stamp, verify=self.verify)

    def get(self, key: str) -> BuiltLayer | None:
        """The layer cached under ``key``, checked against its blob; None on a miss.

        A bad entry (unreadable descriptor, missing, short or corrupt blob) is removed, logged
        and reported as a miss. A hit marks the entry as used now and in use by this object
        (no process evicts it until :meth:`close`).
        """
        self._entry_path(key)  # a bad key fails before any lock file is made for it
        return self._held_lookup(key, self._lookup)

    def _held_lookup(
        self, key: str, lookup: Callable[[str], BuiltLayer | None]
    ) -> BuiltLayer | None:
        """``lookup(key)`` with ``key`` held against eviction: kept held on a hit, let go
        again on a miss or a failure (unless this object held it already)."""
        held = self._key_locks.hold(key)
        try:
            layer = lookup(key)
        except BaseException:
            if not held:
                self._key_locks.release(key)
            raise
        if layer is None and not held:
            self._key_locks.release(key)
        return layer

    def get_unread(self, key: str) -> BuiltLayer | None:
        """The layer cached under ``key`` when :meth:`get` would hand it out without reading
        its blob (see :func:`~closurepack.cacheentry.blob_unchanged`), else None: a miss, or
        an entry whose blob :meth:`get` would hash first (never with ``verify="full"``).
        No blob is read or removed here (an unreadable entry file is, as by :meth:`get`); a
        hit is held and marked used as by :meth:`get`.
        For a build's quick pass over its layers on one thread: whatever needs reading is
        left to :meth:`get` or :meth:`get_or_build` on the builders' threads."""
        if self.verify == "full":
            return None
        entry = self._entry_path(key)
        if not os.path.lexists(entry):
            # a miss (a cold build's every layer): no use lock is made for it, a new file in
            # locks/ on this thread before any builder starts (issue 11); the build takes it
            return None

        def unread(key: str) -> BuiltLayer | None:
            loaded = read_entry(entry, self.blob_path)
            if loaded is None or not blob_unchanged(*loaded, verify=self.verify):
                return None
            self._mark_used(key, entry)
            return loaded[0]

        return self._held_lookup(key, unread)

    def _lookup(self, key: str) -> BuiltLayer | None:
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

    def _mark_used(self, key: str, entry: Path | None = None) -> None:
        with self._mutex:
            self._in_use.add(key)
        with contextlib.suppress(OSError):
            os.utime(entry or self._entry_path(key))

    # -- writing -------------------------------------------------------------------------

    def _write_entry(self, key: str, layer: BuiltLayer) -> None:
        text = entry_text(layer)
        entry = self._entry_path(key)
        # written in a work directory, not beside the entry, so a kill leaves nothing in keys/.
        # Not fsynced, as the blob is not (build_store_layer's fsync=False): syncing the entry
        # alone never made the pair durable, and cost every layer two journal commits. After a
        # crash an entry is there whole, or missing, or unreadable (removed when read): a miss.
        with locked_temp_dir(self._tmp, WORK_PREFIX) as work:
            staged = work / "entry.json"
            with atomic_write(staged, fsync=False) as handle:
                handle.write(text.encode())
            os.replace(staged, entry)

    def put(self, key: str, layer: BuiltLayer) -> BuiltLayer:
        """Move ``layer``'s blob into the cache and record it under ``key``; return the layer
        as it now lives in the cache. A good blob already there (same digest) is kept."""
        entry = self._entry_path(key)
        dest = self.blob_path(layer.digest)
        try:
            if layer.blob_path != dest:
                if dest.exists() and hash_file(dest) == (layer.digest, layer.size):
                    layer.blob_path.unlink(missing_ok=True)
                else:
                    move_file(layer.blob_path, dest)
                    # read-only: a blob is only ever replaced whole, never changed in place
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

    def get_or_build(self, key: str, build: Callable[[Path], BuiltLayer]) -> BuiltLayer:
        """The cached layer for ``key``, or ``build(tmp_dir)``'s result moved into the cache.

        Concurrent callers (threads or processes) of one key wait for each other: one builds,
        the others find its entry. Afterwards the cache is trimmed to ``max_bytes`` if its
        blobs (as counted once, plus those put since) exceed it.
        """
        self._entry_path(key)
        held = self._key_locks.hold(key)
        try:
            layer = self._lookup(key)
            if layer is None:
                with self._key_locks.building(key):
                    layer = self._lookup(key)
                    if layer is None:
                        layer = self._build_into_cache(key, build)
        except BaseException:
            if not held:
                self._key_locks.release(key)
            raise
        if self.max_bytes is not None and self._counted_bytes() > self.max_bytes:
            self.evict()
        return layer

    def _build_into_cache(self, key: str, build: Callable[[Path], BuiltLayer]) -> BuiltLayer:
        try:
            with locked_temp_dir(self._tmp, WORK_PREFIX) as work:
                return self.put(key, build(work))
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in _NO_ROOM:
                raise CacheError(
                    f"{self.root}: cannot write a layer into the cache: {cause.strerror} (make"
                    " room, e.g. closurepack cache prune, or build with --no-cache)"
                ) from exc
            raise
        except OSError as exc:  # the work directory itself
            raise CacheError(
                f"{self.root}: cannot write a layer into the cache: {exc.strerror}"
            ) from exc

    def trim(self) -> list[str]:
        """What a build does when it is done with the cache, even when every layer was a hit:
        sweep the work directories of killed processes, and evict down to ``max_bytes`` when
        the blobs exceed it. Return the keys evicted."""
        self._sweep_tmp()
        if self.max_bytes is not None and self._counted_bytes() > self.max_bytes:
            return self.evict()
        return []

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
        """Remove the work directories of killed processes: flock-held ones whose lock is free
        and that are older than this object, and (from older closurepacks) any other entry
        of tmp/ older than a day."""
        sweep_work_dirs(self._tmp, before=self._started)

    # -- eviction ------------------------------------------------------------------------

    def total_bytes(self) -> int:
        """The total size of the blobs in the cache."""
        return sum(blob_sizes(self._blobs).values())

    def usage(self) -> CacheUsage:
        """How many entries the cache holds and the total size of its blobs."""
        entries = sum(1 for path in self._keys.glob("*.json") if KEY.fullmatch(path.stem))
        return CacheUsage(entries=entries, bytes=self.total_bytes())

    def evict(self, max_bytes: int | None = None) -> list[str]:
        """Remove least recently used entries until the blobs total at most ``max_bytes``
        (default: the cache's limit); return the keys removed, oldest first. Entries in use
        (by this object, or by a running build in another process) stay."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        if limit is None:
            return []
        return self.prune(limit)[0]

    def prune(self, max_bytes: int | None) -> tuple[list[str], int]:
        """Like :meth:`evict` down to ``max_bytes``, or every entry when None (clearing the
        cache); return the keys removed and how many entries stayed because they are in use."""
        self._sweep_tmp()
        held = self._key_locks.held()
        with self._mutex:
            in_use = self._in_use | held
        removed, total, busy = remove_entries(self.root, limit=max_bytes, in_use=in_use)
        with self._mutex:
            self._blob_bytes = total
        return removed, busy
