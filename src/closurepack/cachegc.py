"""What a layer cache directory holds, and removing entries from it safely: entry and blob
listings, the flock helper every cache lock goes through, and LRU removal under use locks
(eviction, ``closurepack cache prune`` and ``clear``), and the sweep of the work directories
killed processes left. See :mod:`closurepack.cache`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Set
from pathlib import Path
from typing import NamedTuple

from closurepack._workdirs import sweep_stale_temp_dirs
from closurepack.errors import CacheError

__all__ = [
    "KEY",
    "WORK_PREFIX",
    "CacheUsage",
    "blob_sizes",
    "list_entries",
    "lock_file",
    "remove_entries",
    "sweep_work_dirs",
]

#: A valid cache key (the file name of an entry without ``.json``).
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HEX = re.compile(r"[0-9a-f]{64}")
#: A blob no entry refers to is removed only when older than this (a concurrent ``put`` moves
#: the blob in before it writes the entry).
_ORPHAN_AGE = 3600.0
#: The prefix of the work directories under tmp/ (see :func:`closurepack._fs.locked_temp_dir`).
WORK_PREFIX = "work-"
#: A build directory of an older closurepack (not flock-held) this old belongs to a process
#: that died.
_STALE_TMP_AGE = 86400.0


class CacheUsage(NamedTuple):
    """What a cache holds: its entries and the total size of its blobs (temp files of builds
    in progress or killed do not count). A named tuple: cheaper to define than a dataclass at
    every build's import (issue 11)."""

    entries: int
    bytes: int


def lock_file(path: Path, mode: int, *, wait: bool = True) -> int | None:
    """An fd holding an flock (``mode``: LOCK_SH or LOCK_EX) on ``path``, created if missing;
    None when ``wait`` is false and another process holds a conflicting lock. The lock dies
    with the fd (and so with its process, however it ends). A lock file that a remover
    unlinked while we waited for it is not the one at ``path`` any more: then try again."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CacheError(f"{path}: cannot lock cache entry: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
            held, current = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except FileNotFoundError:
            pass
        except OSError as exc:
            os.close(fd)
            raise CacheError(f"{path}: cannot lock cache entry: {exc.strerror}") from exc
        os.close(fd)


def blob_sizes(blobs: Path) -> dict[str, int]:
    """hex -> size of every blob in ``blobs`` (anything not named by a digest is not a blob)."""
    sizes: dict[str, int] = {}
    for blob in blobs.iterdir():
        if _HEX.fullmatch(blob.name):
            with contextlib.suppress(OSError):
                sizes[blob.name] = blob.stat().st_size
    return sizes


def list_entries(keys: Path) -> list[tuple[float, str, str]]:
    """(last use, key, blob hex) of every readable entry in ``keys``, least recently used
    first."""
    entries: list[tuple[float, str, str]] = []
    for path in keys.glob("*.json"):
        try:
            mtime = path.stat().st_mtime
            blob = str(json.loads(path.read_bytes())["blob"]).rsplit("/", 1)[-1]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _HEX.fullmatch(blob) and KEY.fullmatch(path.stem):
            entries.append((mtime, path.stem, blob))
    entries.sort()
    return entries


def remove_entries(
    root: Path, *, limit: int | None, in_use: Set[str]
) -> tuple[list[str], int, int]:
    """Remove the entries of the cache at ``root``, least recently used first, until its blobs
    total at most ``limit`` bytes (None: every entry), skipping ``in_use`` keys and those whose
    use lock another process holds (a running build uses them); blobs go with the last entry
    that refers to them, and those no entry refers to when older than an hour. Return the keys
    removed (oldest first), the blobs' total afterwards, and how many entries were skipped
    because they are in use."""
    blobs, keys, locks = root / "blobs" / "sha256", root / "keys", root / "locks"
    entries = list_entries(keys)
    referenced = {blob for _, _, blob in entries}
    sizes = blob_sizes(blobs)
    now = time.time()
    for name in [name for name in sizes if name not in referenced]:
        with contextlib.suppress(OSError):
            if now - (blobs / name).stat().st_mtime > _ORPHAN_AGE:
                (blobs / name).unlink(missing_ok=True)
                del sizes[name]
    total = sum(sizes.values())
    refcount: dict[str, int] = {}
    for _, _, blob in entries:
        refcount[blob] = refcount.get(blob, 0) + 1
    removed: list[str] = []
    busy = 0
    for _, key, blob in entries:
        if limit is not None and total <= limit:
            break
        fd = None if key in in_use else lock_file(locks / f"{key}.use", fcntl.LOCK_EX, wait=False)
        if fd is None:
            busy += 1
            continue
        try:
            (keys / f"{key}.json").unlink(missing_ok=True)
            removed.append(key)
            refcount[blob] -= 1
            if refcount[blob] == 0 and blob in sizes:
                (blobs / blob).unlink(missing_ok=True)
                total -= sizes.pop(blob)
            # last, still holding the lock: whoever opens it by name afterwards makes a new
            # one, and finds no entry
            (locks / f"{key}.lock").unlink(missing_ok=True)
            (locks / f"{key}.use").unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed, total, busy


def sweep_work_dirs(tmp: Path, *, before: float) -> None:
    """Remove the work directories of killed processes from a cache's ``tmp``: flock-held ones
    whose lock is free and that are older than ``before``, and (from older closurepacks) any
    other entry older than a day."""
    sweep_stale_temp_dirs(tmp, WORK_PREFIX, before=before)
    now = time.time()
    for work in tmp.iterdir():
        if work.name.startswith((WORK_PREFIX, f".{WORK_PREFIX}")):
            continue
        with contextlib.suppress(OSError):
            if now - work.stat().st_mtime > _STALE_TMP_AGE:
                shutil.rmtree(work, ignore_errors=True)
