"""A minimal deterministic, streaming tar writer: fixed owners, mtimes and modes."""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from closurepack.destinations._files import copy_verified
from closurepack.digest import Digest, Writable

__all__ = ["TarWriter"]

_BLOCK = 512
_RECORD = 20 * _BLOCK


class TarWriter:
    """Write tar entries straight to ``out`` in one pass (no seeking, no buffering of blobs).

    Every entry is owned by 0:0 with empty user and group names and the same ``mtime``, so
    the same entries in the same order give the same bytes.
    """

    def __init__(self, out: Writable | BinaryIO, *, mtime: int) -> None:
        self._out = out
        self._mtime = mtime
        self._written = 0

    def _info(self, name: str, *, kind: bytes, size: int, mode: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = self._mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)
        self._written += len(data)

    def _pad(self, size: int) -> None:
        rest = size % _BLOCK
        if rest:
            self._emit(b"\0" * (_BLOCK - rest))

    def add_dir(self, name: str) -> None:
        self._emit(self._info(name.rstrip("/") + "/", kind=tarfile.DIRTYPE, size=0, mode=0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._emit(self._info(name, kind=tarfile.REGTYPE, size=len(data), mode=0o644))
        self._emit(data)
        self._pad(len(data))

    def add_blob(self, name: str, src: BinaryIO, *, size: int, digest: Digest) -> None:
        """Copy a blob in chunks, checking its size and digest on the way."""
        self._emit(self._info(name, kind=tarfile.REGTYPE, size=size, mode=0o644))
        copy_verified(src, self, digest=digest, size=size, what=f"layer {digest}")
        self._pad(size)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._emit(data)
        return len(data)

    def close(self) -> None:
        """End-of-archive marker, padded to a whole tar record like GNU tar does."""
        end = self._written + 2 * _BLOCK
        self._emit(b"\0" * (2 * _BLOCK + (-end) % _RECORD))
