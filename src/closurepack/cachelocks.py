"""The locks one layer cache object takes (see :mod:`closurepack.cache`): a shared flock on
``locks/<key>.use`` for each entry it hands out, held until the object is closed (eviction and
clearing take it exclusively, or skip the entry), and the exclusive ``locks/<key>.lock`` while
a key is built, so that two processes do not build one key twice."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from closurepack.cachegc import lock_file

__all__ = ["KeyLocks"]


class KeyLocks:
    """The locks under ``locks`` one cache object holds; safe to share between threads."""

    def __init__(self, locks: Path) -> None:
        self._locks = locks
        #: key -> fd holding a shared flock on locks/<key>.use, released by :meth:`close`.
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    def hold(self, key: str) -> bool:
        """Hold a shared lock on ``key``'s use lock (once per object); True if already held."""
        with self._mutex:
            if key in self._held:
                return True
        fd = lock_file(self._locks / f"{key}.use", fcntl.LOCK_SH)
        assert fd is not None  # a waiting lock always returns an fd
        with self._mutex:
            if key in self._held:  # another thread of ours got there first
                os.close(fd)
                return True
            self._held[key] = fd
        return False

    def release(self, key: str) -> None:
        """Let go of ``key``'s use lock, if held."""
        with self._mutex:
            fd = self._held.pop(key, None)
        if fd is not None:
            os.close(fd)

    def held(self) -> set[str]:
        """The keys whose use lock is held."""
        with self._mutex:
            return set(self._held)

    def close(self) -> None:
        """Let go of every use lock."""
        with self._mutex:
            held, self._held = list(self._held.values()), {}
        for fd in held:
            os.close(fd)

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[None]:
        """Hold ``key``'s exclusive build lock (waiting for it) for the ``with`` block."""
        fd = lock_file(self._locks / f"{key}.lock", fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing releases the lock
