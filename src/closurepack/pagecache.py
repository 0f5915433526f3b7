"""The page cache of a file written once and read back once: its pages written out early
and dropped once read, so that the next files' writes reuse them (issue 11).

A cold ``-o -`` writes every layer into the cache and then sends the cached blob. Left to
the kernel, each blob's pages stay in the page cache, so every layer written takes new
pages; in a VM whose host takes free guest memory back (free page reporting), writing into
a new page costs as much CPU as the rest of the stream. Pages dropped as soon as their
blob is sent go back to the free lists, where the next layers' writes find them. Only
clean pages can be dropped, so the writeback of a blob is started as soon as it is
complete (:func:`start_writeback`, on Linux ``sync_file_range``) and waited for once it is
sent (:func:`drop_pages`). Nothing here makes a file durable (no journal commit, as with
``fdatasync``): the cache does not fsync its blobs either. Everything is best effort: where
the system has none of these calls the pages stay, and a failure changes no byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

__all__ = ["drop_pages", "start_writeback"]

_log = logging.getLogger(__name__)

# linux/fs.h
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4

_SyncFileRange = Callable[[int, int, int, int], int]

#: libc's sync_file_range(fd, offset, nbytes, flags) and ctypes' get_errno, looked up on
#: first use (None: not there).
_found: tuple[_SyncFileRange, Callable[[], int]] | None = None
_looked_up = False
_lookup_lock = threading.Lock()


def _libc_sync_file_range() -> tuple[_SyncFileRange, Callable[[], int]] | None:
    global _found, _looked_up  # noqa: PLW0603 - looked up once per process
    with _lookup_lock:
        if not _looked_up:
            _looked_up = True
            # ctypes only for a stream that writes its blobs: the stdlib has no binding
            import ctypes  # noqa: PLC0415

            with contextlib.suppress(OSError, AttributeError):
                call = ctypes.CDLL(None, use_errno=True).sync_file_range
                call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                call.restype = ctypes.c_int
                _found = (call, ctypes.get_errno)
        return _found


def _sync_range(fd: int, flags: int) -> bool:
    """``sync_file_range(fd, 0, 0, flags)`` (the whole file); False when there is none or
    it failed."""
    found = _libc_sync_file_range()
    if found is None:
        return False
    call, get_errno = found
    if call(fd, 0, 0, flags) == 0:
        return True
    _log.debug("sync_file_range of fd %d failed: %s", fd, os.strerror(get_errno()))
    return False


def start_writeback(fd: int) -> None:
    """Start writing the file ``fd``'s dirty pages out, without waiting for it (nothing where
    the system has no ``sync_file_range``): by the time :func:`drop_pages` is called they
    are mostly clean."""
    _sync_range(fd, _WRITE)


def drop_pages(fd: int) -> None:
    """Wait until the file ``fd``'s pages are written out, then tell the kernel to drop them
    from the page cache (``POSIX_FADV_DONTNEED``). Its bytes stay what they are: read again,
    they come from the disk. Nothing where the system has no ``posix_fadvise``, and the pages
    stay when writing them out failed."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        if not _sync_range(fd, _WAIT_BEFORE | _WRITE | _WAIT_AFTER):
            os.fdatasync(fd)  # clean pages, at the price of a journal commit
    except OSError as exc:
        # not written out (a write error, or no file): the pages stay, the only good copy
        _log.debug("could not write out fd %d, its pages stay: %s", fd, exc)
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        _log.debug("could not drop the cached pages of fd %d: %s", fd, exc)
