"""Destination-side wrappers of :mod:`closurepack._fs`: errors become DestinationError, blobs
already present are skipped, and copies into archives are checked against their digests."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from closurepack import _fs
from closurepack.digest import Digest, HashingWriter, Writable
from closurepack.errors import DestinationError
from closurepack.image import ImageLayer

__all__ = ["CHUNK", "atomic_file", "copy_verified", "open_layer", "put_blob"]

#: Copy buffer size: memory stays bounded whatever the blob size.
CHUNK = _fs.COPY_CHUNK


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success it replaces ``path`` (fsync + rename).

    On any exception (or interrupt) the temp file is removed and ``path`` is left as it was.
    """
    try:
        with _fs.atomic_write(path, mode=mode) as out:
            yield out
    except OSError as exc:
        raise DestinationError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def open_layer(layer: ImageLayer) -> BinaryIO:
    """``layer.open()``, a failure being a DestinationError naming the layer."""
    try:
        return layer.open()
    except OSError as exc:
        raise DestinationError(f"layer {layer.digest}: cannot read blob: {exc}") from exc


def copy_verified(src: BinaryIO, out: Writable, *, digest: Digest, size: int, what: str) -> None:
    """Copy exactly ``size`` bytes of ``src`` to ``out`` in chunks, checking they hash to
    ``digest`` and that ``src`` holds no more and no less; a read error is a DestinationError
    naming ``what``."""
    writer = HashingWriter(out)
    remaining = size
    while remaining > 0:
        try:
            chunk = src.read(min(CHUNK, remaining))
        except OSError as exc:  # (errors writing to ``out`` are the caller's to name)
            raise DestinationError(f"{what}: cannot read blob: {exc.strerror or exc}") from exc
        if not chunk:
            break
        writer.write(chunk)
        remaining -= len(chunk)
    if remaining or src.read(1):
        raise DestinationError(f"{what}: blob is not {size} bytes long as its descriptor says")
    if writer.digest != digest:
        raise DestinationError(f"{what}: blob content has digest {writer.digest}, not {digest}")


def put_blob(blobs: Path, digest: Digest, data: bytes | BinaryIO, *, size: int) -> bool:
    """Store a blob as ``blobs/<hex>`` atomically, checking its digest; an existing blob of
    that size is kept as it is (its name is its content). True when the blob was written."""
    target = blobs / digest.hex
    with contextlib.suppress(OSError):
        if target.stat().st_size == size:
            return False
    src: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        _fs.put_blob(blobs, src, expected=digest)
    except ValueError as exc:
        raise DestinationError(f"{target}: {exc}") from exc
    except OSError as exc:
        raise DestinationError(f"{target}: cannot write blob: {exc.strerror or exc}") from exc
    return True
