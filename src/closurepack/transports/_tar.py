"""Tar files of the archive transports: a minimal deterministic, streaming writer (fixed
owners, mtimes and modes) and random access to the members of an existing uncompressed tar."""

from __future__ import annotations

import errno
import io
import os
import posixpath
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from closurepack.digest import Digest, Writable
from closurepack.errors import DestinationError
from closurepack.transports._files import copy_verified

__all__ = ["TarReader", "TarWriter"]

_BLOCK = 512
_RECORD = 20 * _BLOCK
_CHUNK = 1 << 20
_SEND = 1 << 30  # bytes per sendfile call (the kernel takes at most ~2 GiB at once)


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

    def add_blob(
        self, name: str, src: BinaryIO, *, size: int, digest: Digest, trusted: bool = False
    ) -> None:
        """Copy a blob in chunks, checking its size and digest on the way. A ``trusted`` blob
        (one this process built or verified) is not rehashed: its size is checked and the
        kernel copies it (``sendfile``) where both ends are files or pipes."""
        self._emit(self._info(name, kind=tarfile.REGTYPE, size=size, mode=0o644))
        if not (trusted and self._send_file(src, size, what=f"layer {digest}")):
            copy_verified(src, self, digest=digest, size=size, what=f"layer {digest}")
        self._pad(size)

    def _send_file(self, src: BinaryIO, size: int, *, what: str) -> bool:
        """Copy all of ``src`` (``size`` bytes) to ``out`` with ``os.sendfile``; False when
        either end has no file descriptor or the kernel cannot (the caller then copies)."""
        try:
            in_fd, out_fd = src.fileno(), self._out.fileno()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return False
        if os.fstat(in_fd).st_size != size:
            raise DestinationError(f"{what}: blob is not {size} bytes long as its descriptor says")
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()
        offset = src.tell()
        sent = 0
        while sent < size:
            try:
                n = os.sendfile(out_fd, in_fd, offset + sent, min(size - sent, _SEND))
            except OSError as exc:
                if sent == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return False
                raise
            if n == 0:
                raise DestinationError(
                    f"{what}: blob is not {size} bytes long as its descriptor says"
                )
            sent += n
        src.seek(offset + size)
        self._written += size
        return True

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._emit(data)
        return len(data)

    def close(self) -> None:
        """End-of-archive marker, padded to a whole tar record like GNU tar does."""
        end = self._written + 2 * _BLOCK
        self._emit(b"\0" * (2 * _BLOCK + (-end) % _RECORD))


class _Slice(io.RawIOBase):
    """A read-only window ``[start, start + size)`` of a file (a member of a plain tar)."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._file = path.open("rb")
        self._file.seek(start)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._left)
        if n <= 0:
            return 0
        got = self._file.readinto(view[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class TarReader:
    """Random access to the members of an uncompressed tar file, links resolved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    self.members[posixpath.normpath(info.name.lstrip("/"))] = info
        except (OSError, tarfile.TarError) as exc:
            raise DestinationError(f"{path}: cannot read as a tar archive: {exc}") from exc

    def _resolve(self, name: str) -> tarfile.TarInfo:
        name = posixpath.normpath(name.lstrip("/"))
        for _ in range(16):
            info = self.members.get(name)
            if info is None:
                raise DestinationError(f"{self.path}: no {name!r} in the archive")
            if info.issym():
                name = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
            elif info.islnk():
                name = posixpath.normpath(info.linkname.lstrip("/"))
            elif info.isfile():
                return info
            else:
                raise DestinationError(f"{self.path}: {name!r} is not a regular file")
        raise DestinationError(f"{self.path}: too many links at {name!r}")

    def has(self, name: str) -> bool:
        return posixpath.normpath(name.lstrip("/")) in self.members

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        info = self._resolve(name)
        path, start, size = self.path, info.offset_data, info.size
        return lambda: io.BufferedReader(_Slice(path, start, size), _CHUNK)

    def read(self, name: str, *, limit: int = 64 << 20) -> bytes:
        info = self._resolve(name)
        if info.size > limit:
            raise DestinationError(f"{self.path}: {name!r} is implausibly large for JSON")
        with self.opener(name)() as f:
            return f.read()
