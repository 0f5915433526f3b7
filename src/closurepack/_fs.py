"""Atomic, idempotent file and blob writes: temp file in the target directory, fsync, rename.

(The flock-held work directories and their sweep live in :mod:`closurepack._workdirs`; their
names are imported from here too.)"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from closurepack._workdirs import fs_now, locked_temp_dir, sweep_stale_temp_dirs
from closurepack.digest import Digest, HashingWriter, Writable

__all__ = [
    "COPY_CHUNK",
    "TEMP_SUFFIX",
    "atomic_write",
    "blob_writer",
    "clone_blob",
    "copy_stream",
    "fs_now",
    "fsync_dir",
    "hash_stream",
    "is_special_file",
    "locked_temp_dir",
    "move_file",
    "put_blob",
    "sweep_stale_temp_dirs",
    "sweep_stale_temps",
]

#: Read size for streaming copies: large enough to keep syscalls rare, small enough to bound memory.
COPY_CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Suffix of every temp file the writers here make (``.NAME.XXXXXXXX.tmp``).
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def _locked_temp(directory: Path, *, prefix: str) -> Iterator[tuple[int, Path]]:
    """A new temp file ``directory/PREFIX*.tmp``, as (fd, path), under an exclusive flock that
    lasts until the block ends (past the fd's own close and the rename): the sign for
    :func:`sweep_stale_temps` that its writer is alive. The caller owns ``fd`` and removes the
    file on failure."""
    while True:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=TEMP_SUFFIX)
        lock = os.dup(fd)  # the flock belongs to the open file, held while either fd is open
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.fstat(lock).st_nlink:
            break
        # a sweeper took the file between mkstemp and flock and removed it: take another
        os.close(lock)
        os.close(fd)
    try:
        yield fd, Path(name)
    finally:
        os.close(lock)


def sweep_stale_temps(directory: Path, *, prefix: str = ".", started: float) -> int:
    """Remove the temp files ``PREFIX*.tmp`` in ``directory`` that writers killed before they
    could clean up (``kill -9``, a power cut) left behind: only those last changed before
    ``started`` (the running job's start: a newer one may be a writer's that began since) and
    whose flock nobody holds (every writer here holds one on its temp file, see
    :func:`atomic_write`, :func:`blob_writer`). Best effort: a file that cannot be examined
    is left alone. Returns how many were removed."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= started:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino) and held.st_nlink:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass  # locked by a live writer, or gone already
        finally:
            os.close(fd)
    return removed


def is_special_file(path: Path) -> bool:
    """True if ``path`` exists (after symlinks) and is neither a regular file nor a directory:
    a device, a fifo or a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def _write_in_place(path: Path) -> Iterator[BinaryIO]:
    # No O_CREAT: if the special file vanished meanwhile, fail rather than make a regular one;
    # no fsync or chmod: they mean nothing (or fail) on a pipe or a device.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    with os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()


@contextlib.contextmanager
def atomic_write(
    dest: Path, *, mode: int = 0o644, fsync: bool = True, sync_also: Path | None = None
) -> Iterator[BinaryIO]:
    """Open a temp file beside ``dest``; on success flush, fsync and rename it to ``dest``.

    On any exception the temp file is removed and ``dest`` is left as it was. An existing
    ``dest`` is replaced (callers that write content-addressed names treat that as success),
    unless it is a device, a fifo or a socket (:func:`is_special_file`): that is opened and
    written to directly, never renamed over (``-o /dev/null``, ``-o >(gzip > x)``).

    ``sync_also``: a directory whose entries must be durable before ``dest`` is replaced
    (those of the files ``dest`` names): it is fsynced on a thread of its own while the temp
    file is, and the rename waits for both (one disk wait where one after the other were
    two; the journal commits them together).
    """
    if is_special_file(dest):
        with _write_in_place(dest) as handle:
            yield handle
        return
    with _locked_temp(dest.parent, prefix=f".{dest.name}.") as (fd, tmp):
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                if fsync:
                    _fsync_with(handle.fileno(), sync_also)
                elif sync_also is not None:
                    fsync_dir(sync_also)
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if fsync:
        fsync_dir(dest.parent)


def _fsync_with(fd: int, directory: Path | None) -> None:
    """fsync ``fd``, and ``directory`` at the same time on another thread (when given)."""
    if directory is None:
        os.fsync(fd)
        return
    syncing = threading.Thread(target=fsync_dir, args=(directory,), name="fsync-dir")
    syncing.start()
    try:
        os.fsync(fd)
    finally:
        syncing.join()


@contextlib.contextmanager
def blob_writer(
    directory: Path,
    *,
    fsync: bool = True,
    sync_dir: bool = True,
    buffering: int = -1,
    digest_of: HashingWriter | None = None,
) -> Iterator[HashingWriter]:
    """A :class:`HashingWriter` over a temp file in ``directory`` (created if missing).

    When the block ends without an exception the file is flushed, fsynced, made 0o644 and
    renamed to ``directory/<sha256 hex of what was written>``; a blob of that name already
    there is replaced, which is success (its name is its content). On any exception the temp
    file is removed. The writer's ``digest`` and ``size`` stay readable afterwards.

    ``digest_of``: a writer that already hashes exactly the bytes written here (an
    uncompressed layer's tar hash is its blob's digest); the blob is then not hashed a second
    time, and its digest is that writer's. ``sync_dir=False`` (with ``fsync``) leaves the
    rename's durability to the caller: one :func:`fsync_dir` after several blobs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _locked_temp(directory, prefix=".blob.") as (fd, tmp):
        try:
            with os.fdopen(fd, "wb", buffering=buffering) as handle:
                writer = HashingWriter(handle, same_as=digest_of)
                yield writer
                handle.flush()
                if fsync:
                    os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / writer.digest.hex)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if fsync and sync_dir:
        fsync_dir(directory)


def copy_stream(source: BinaryIO, out: Writable) -> None:
    """Copy what remains of ``source`` to ``out`` in :data:`COPY_CHUNK` pieces."""
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    while n := source.readinto(view):  # type: ignore[attr-defined]
        out.write(view[:n])


def hash_stream(source: BinaryIO) -> tuple[Digest, int]:
    """The sha256 and length of what remains of ``source``."""
    writer = HashingWriter()
    copy_stream(source, writer)
    return writer.digest, writer.size


def put_blob(
    directory: Path,
    source: BinaryIO | Iterable[bytes],
    *,
    expected: Digest | None = None,
    fsync: bool = True,
    sync_dir: bool = True,
) -> tuple[Digest, int]:
    """Store the bytes of ``source`` as ``directory/<sha256 hex>``, hashing while copying.

    ``source`` is a readable binary stream or an iterable of byte chunks. When ``expected`` is
    given and the content does not match, nothing is stored and ValueError is raised. A blob that
    is already there is success (its name is its content). ``sync_dir``: as
    :func:`blob_writer`'s.
    """
    with blob_writer(directory, fsync=fsync, sync_dir=sync_dir) as writer:
        if hasattr(source, "readinto"):
            copy_stream(cast(BinaryIO, source), writer)
        else:
            for chunk in source:
                writer.write(chunk)
        if expected is not None and writer.digest != expected:
            raise ValueError(f"blob content is {writer.digest}, expected {expected}")
    return writer.digest, writer.size


def move_file(source: Path, dest: Path) -> None:
    """Put ``source``'s content at ``dest`` atomically: rename if possible, else copy.

    The rename moves ``source`` away; a copy across filesystems leaves it in place.
    """
    try:
        os.replace(source, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # different filesystems: fall back to copying
            raise
    with source.open("rb") as src, atomic_write(dest) as out:
        copy_stream(src, out)


#: Linux's FICLONE ioctl (``_IOW(0x94, 9, int)`` in linux/fs.h): make the target share the
#: source's extents, copy-on-write (btrfs, XFS, bcachefs, ...).
_FICLONE = 0x40049409
# errno values meaning "no clone possible here" (ext4, tmpfs, another device), not real failures
_NO_CLONE = {
    errno.EXDEV,
    errno.EPERM,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EINVAL,
    errno.ENOTTY,
    errno.ENOSYS,
}


def clone_blob(directory: Path, source: Path, digest: Digest, *, sync_dir: bool = True) -> bool:
    """Put a file of its own (a change to either never shows in the other) holding the bytes
    of ``source``, whose content is known to hash to ``digest`` (a verified cache blob), at
    ``directory/<hex>``, without reading it into this process or rehashing it: a
    copy-on-write clone (reflink) sharing the source's blocks where the filesystem has them,
    else a copy made by the kernel (:func:`_kernel_copy`: ``copy_file_range``, or
    ``sendfile``). An existing blob of that name is replaced atomically. False when neither
    is possible here: the caller then copies, e.g. with :func:`put_blob`. ``sync_dir`` False
    leaves the rename's durability to the caller (one :func:`fsync_dir` after many blobs)."""
    with _locked_temp(directory, prefix=".blob.") as (fd, tmp):
        try:
            with os.fdopen(fd, "wb") as handle, source.open("rb") as src:
                try:
                    fcntl.ioctl(handle.fileno(), _FICLONE, src.fileno())
                except OSError as exc:
                    if exc.errno not in _NO_CLONE:
                        raise
                    if not _kernel_copy(src.fileno(), handle.fileno()):
                        tmp.unlink()
                        return False
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / digest.hex)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if sync_dir:
        fsync_dir(directory)
    return True


def _kernel_copy(src: int, dst: int) -> bool:
    """Copy the whole of file ``src`` to the empty file ``dst`` inside the kernel (no user-space
    buffers: a cold build into an OCI layout on ext4 or tmpfs spends no CPU hashing or copying
    its blobs a second time, issue 11); False, nothing written, when this kernel can do
    neither ``copy_file_range`` nor ``sendfile`` between them. A source that ends before its
    size said is an OSError (the blob changed under us)."""
    size = os.fstat(src).st_size
    copied = 0
    ways: tuple[Callable[[int], int], ...] = (
        lambda done: os.copy_file_range(src, dst, size - done, done),
        lambda done: os.sendfile(dst, src, done, size - done),
    )
    for copy in ways:
        try:
            while copied < size:
                n = copy(copied)
                if not n:
                    raise OSError(errno.EIO, f"blob ended after {copied} of {size} bytes")
                copied += n
            return True
        except OSError as exc:
            if copied or exc.errno not in _NO_CLONE:
                raise
    return False
