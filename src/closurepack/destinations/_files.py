"""Atomic file writes and idempotent content-addressed blob writes for destinations."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from closurepack.digest import Digest, HashingWriter, Writable
from closurepack.errors import DestinationError

__all__ = ["CHUNK", "atomic_file", "copy_verified", "fsync_dir", "put_blob"]

#: Copy buffer size: memory stays bounded whatever the blob size.
CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (or interrupt) the temp file is removed and ``path`` is left as it was.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DestinationError(f"{path}: cannot create a file here: {exc.strerror}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_verified(src: BinaryIO, out: Writable, *, digest: Digest, size: int, what: str) -> None:
    """Copy exactly ``size`` bytes of ``src`` to ``out`` in chunks, checking they hash to
    ``digest`` and that ``src`` holds no more and no less."""
    writer = HashingWriter(out)
    remaining = size
    while remaining > 0:
        chunk = src.read(min(CHUNK, remaining))
        if not chunk:
            break
        writer.write(chunk)
        remaining -= len(chunk)
    if remaining or src.read(1):
        raise DestinationError(f"{what}: blob is not {size} bytes long as its descriptor says")
    if writer.digest != digest:
        raise DestinationError(f"{what}: blob content has digest {writer.digest}, not {digest}")


def put_blob(blobs: Path, digest: Digest, data: bytes | BinaryIO, *, size: int) -> bool:
    """Store a blob as ``blobs/<hex>`` atomically; an existing blob of that size is kept.

    Returns True when the blob was written, False when it was already there.
    """
    target = blobs / digest.hex
    with contextlib.suppress(OSError):
        if target.stat().st_size == size:
            return False
    src: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with atomic_file(target) as out:
            copy_verified(src, out, digest=digest, size=size, what=str(target))
    except OSError as exc:
        raise DestinationError(f"{target}: cannot write blob: {exc.strerror or exc}") from exc
    return True
