"""Destination-side wrappers of :mod:`closurepack._fs`: errors become DestinationError, good
blobs already present are kept (bad ones replaced), copies into archives are checked against
their digests; plus the lock per archive, the write probe and the sweep of stale temp files."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from closurepack import _fs
from closurepack.digest import Digest, HashingWriter, Writable
from closurepack.errors import DestinationError
from closurepack.image import ImageLayer

__all__ = [
    "CHUNK",
    "atomic_file",
    "blob_is_good",
    "copy_verified",
    "destination_lock",
    "open_layer",
    "probe_writable",
    "put_blob",
    "sweep_beside",
]

_log = logging.getLogger(__name__)

#: Copy buffer size: memory stays bounded whatever the blob size.
CHUNK = _fs.COPY_CHUNK


@contextlib.contextmanager
def atomic_file(
    path: Path, *, mode: int = 0o644, sync_also: Path | None = None
) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success it replaces ``path`` (fsync + rename;
    ``sync_also``: a directory made durable first, see :func:`closurepack._fs.atomic_write`).

    On any exception (or interrupt) the temp file is removed and ``path`` is left as it was.
    """
    try:
        with _fs.atomic_write(path, mode=mode, sync_also=sync_also) as out:
            yield out
    except OSError as exc:
        raise DestinationError(f"{path}: cannot write: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def destination_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the archive ``path`` (an flock on ``.NAME.lock`` beside it)
    while a read-modify-write of it runs, so that parallel builds adding tags to one archive
    each see the others' tags. An existing ``path`` that is not a regular file (a device, a
    fifo) is written as it is, with no lock.

    The lock file is removed by its holder before it lets go; a waiter that then gets the lock
    of a removed file sees that the name now means another file (or none) and tries again.
    """
    if _fs.is_special_file(path):
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DestinationError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                continue  # removed by the holder we waited for: lock the new one
            held = os.fstat(fd)
            if (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(lock)
            return
        finally:
            os.close(fd)


def probe_writable(directory: Path, dest: Path, *, as_dir: bool = False) -> None:
    """Create and remove a temp file (or directory) in ``directory``, as the writer will: the
    one sure test that ``dest`` can be written (permissions, read-only or pseudo filesystems
    such as /sys, where even root may not create files)."""
    try:
        if as_dir:
            os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".closurepack-probe."))
        else:
            fd, name = tempfile.mkstemp(
                dir=directory, prefix=f".{dest.name}.", suffix=_fs.TEMP_SUFFIX
            )
            os.close(fd)
            Path(name).unlink(missing_ok=True)  # (a sweeper may have taken it)
    except OSError as exc:
        raise DestinationError(f"{dest}: cannot write: {exc.strerror or exc}") from exc


def sweep_beside(path: Path, *, started: float | None) -> None:
    """Remove the temp files that writers of ``path`` killed before ``started`` (default: now)
    left beside it, ``.NAME.*.tmp`` (see :func:`closurepack._fs.sweep_stale_temps`)."""
    if _fs.is_special_file(path):
        return
    when = time.time() if started is None else started
    removed = _fs.sweep_stale_temps(path.parent, prefix=f".{path.name}.", started=when)
    if removed:
        _log.info("%s: removed %d temp file(s) left by interrupted writes", path, removed)


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


def blob_is_good(path: Path, digest: Digest, size: int) -> bool:
    """True if ``path`` holds exactly ``size`` bytes that hash to ``digest``; False if it is
    missing, unreadable, or holds anything else (a blob of that name is not trusted blindly)."""
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as handle:
            return _fs.hash_stream(handle) == (digest, size)
    except OSError:
        return False


def put_blob(
    blobs: Path, digest: Digest, data: bytes | BinaryIO, *, size: int, sync_dir: bool = True
) -> bool:
    """Store a blob as ``blobs/<hex>`` atomically, checking its digest. A good blob already
    there (right size and digest, see :func:`blob_is_good`) is kept as it is; a bad one is
    replaced. True when the blob was written (``sync_dir=False``: its rename made durable
    by the caller's one ``fsync_dir`` after several)."""
    target = blobs / digest.hex
    if blob_is_good(target, digest, size):
        return False
    src: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        _fs.put_blob(blobs, src, expected=digest, sync_dir=sync_dir)
    except ValueError as exc:
        raise DestinationError(f"{target}: {exc}") from exc
    except OSError as exc:
        raise DestinationError(f"{target}: cannot write blob: {exc.strerror or exc}") from exc
    return True
