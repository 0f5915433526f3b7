"""Records of blob files this user's builds wrote or hashed, so that an unchanged one is not
hashed (or copied) again: a blob of an ``oci:`` layout, say, that the last build put there.

A record is kept per file, named by its device and inode, and holds the digest the file's
bytes had then, with the file's size, mtime and ctime (in ns) at that moment. A file still
matches its record when all of (device, inode, size, mtime, ctime) are the same: writing to a
file in place (any user, root too) updates its mtime and ctime, a file put in its place (a
copy, a rename, a restore) is another inode or has a new ctime, and no system call sets a
file's ctime back (``utime`` restores mtime but itself moves ctime on). Anything else, or no
record, means: hash it again.

The records live with the verifier (under the layer cache), not beside the files they
vouch for, so whoever can change a layout's files cannot also change what was recorded about
them. A stale record is harmless: it can only match its own unchanged file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from closurepack._fs import atomic_write
from closurepack.digest import Digest

__all__ = ["BlobStamps"]


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


class BlobStamps:
    """The records in ``directory`` (created when the first one is written)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _record(self, st: os.stat_result) -> Path:
        return self.directory / f"{st.st_dev}-{st.st_ino}"

    def matches(self, path: Path, digest: Digest, size: int) -> bool:
        """True when ``path`` is a regular file of ``size`` bytes whose record says it held
        ``digest`` and that has not changed since (see the module doc); False otherwise,
        never an error. (One ``os.read`` of the record: a warm rebuild asks this of every
        layer, and a text file object per record cost ~10x the system calls' time.)"""
        try:
            st = os.stat(path, follow_symlinks=False)
            if not (st.st_size == size and stat.S_ISREG(st.st_mode)):
                return False
            expected = f"{digest} {_stamp(st)}\n".encode()
            fd = os.open(self._record(st), os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(fd, len(expected) + 1)  # (one byte more: a longer record)
            finally:
                os.close(fd)
        except OSError:
            return False
        return text == expected

    def record(self, path: Path, digest: Digest) -> None:
        """Note that ``path`` holds ``digest`` now (the caller just wrote or hashed it).
        Best effort: a record that cannot be written only costs a rehash next time."""
        with contextlib.suppress(OSError):
            st = os.stat(path, follow_symlinks=False)
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_write(self._record(st), fsync=False) as out:
                out.write(f"{digest} {_stamp(st)}\n".encode())
