"""Build one layer blob in a single pass: tar -> diff_id hash -> compress -> digest hash -> file.

The tar is produced on the calling thread (reading store files and hashing the tar) while a
second thread compresses, hashes and writes the blob, so reading and compressing overlap; the
codecs add threads of their own (see :mod:`closurepack.compression`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from closurepack._fs import blob_writer
from closurepack.compression import (
    Compressor,
    codec_identity,
    layer_annotations,
    open_compressor,
    resolve_level,
)
from closurepack.digest import HashingWriter, Writable
from closurepack.errors import OptionError, StoreError
from closurepack.layer import BuiltLayer
from closurepack.mediatypes import layer_media_type
from closurepack.perms import Perms
from closurepack.tarentries import TreeEntry
from closurepack.tarstream import TAR_FORMAT_VERSION, write_store_tar, write_tree_tar

__all__ = ["build_store_layer", "build_tree_layer", "layer_key", "sharing_cpus"]

_CHUNK = 1 << 20  # bytes handed to the compressing thread at a time
_QUEUE_DEPTH = 8  # chunks in flight: bounds memory to about _QUEUE_DEPTH MiB
_BLOB_BUFFER = 128 << 10  # the blob file's buffer (see _build)

_active = 0  # layer builds running in this process (threads=0 shares the CPUs among them)
_builders = 0  # builder threads declared by the sharing_cpus blocks running now
_active_lock = threading.Lock()

#: Chunks a finished layer gave back, for the next layers of the process: a new bytearray is
#: zero-filled, its fresh pages faulted in, and a layer fills up to _QUEUE_DEPTH + 2 of them.
#: At most _SPARE_CHUNKS are kept (a few layers' worth: 32 MiB).
_spare_chunks: list[bytearray] = []
_SPARE_CHUNKS = 4 * _QUEUE_DEPTH
_spare_lock = threading.Lock()


def _take_chunk() -> bytearray:
    """A spare chunk, else a new one."""
    with _spare_lock:
        if _spare_chunks:
            return _spare_chunks.pop()
    return bytearray(_CHUNK)


def _give_back(chunks: Iterable[bytearray]) -> None:
    """Keep ``chunks`` (no longer used by anyone) for later layers, up to the limit."""
    with _spare_lock:
        for chunk in chunks:
            if len(_spare_chunks) >= _SPARE_CHUNKS:
                break
            _spare_chunks.append(chunk)


def layer_key(
    paths: Sequence[str],
    *,
    store_dir: str,
    compression: str,
    level: int | None,
    mtime: int,
    nar_hashes: Mapping[str, str | None] | None = None,
    perms: Mapping[str, object] | None = None,
) -> str:
    """A sha256 hex over canonical JSON of everything that determines a store layer's bytes.

    Store items are immutable, so their paths stand for their content; ``nar_hashes`` (path ->
    NAR hash, when the closure source knows them) are mixed in for stores where that is not
    guaranteed, such as a scanned directory. ``perms`` is what of ``--perms``/``--uid``/``--gid``
    touches the layer (:meth:`~closurepack.perms.Perms.key_part`); empty, the key is as
    without them.
    """
    obj = {
        "kind": "closurepack-store-layer",
        "tar_format": TAR_FORMAT_VERSION,
        "store_dir": store_dir,
        "paths": sorted(set(paths)),
        "codec": codec_identity(compression, level),
        "mtime": mtime,
    }
    if nar_hashes:
        obj["nar_hashes"] = {p: nar_hashes.get(p) for p in sorted(set(paths))}
    if perms:
        obj["perms"] = dict(perms)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


class _Pipe:
    """The tar side of the pipeline: gathers writes into chunks and queues them for the
    compressing thread, which hashes them (diff_id) and compresses them into ``blob`` (a
    :func:`~closurepack._fs.blob_writer`, which hashes the result for the digest).

    File contents are read straight into the chunk being filled (:meth:`write_from`), and
    chunks come back to be filled again once the compressing thread is done with them (the
    codecs copy what they keep), so each byte is copied once on its way to the codec.

    That thread starts with the first full chunk: a tar that fits in one chunk (a small
    layer, such as the one an application change rebuilds, or the customisation layer) is
    hashed and compressed on the calling thread at :meth:`finish`, in the same chunks, so
    with the same bytes, and no thread is started or waited for."""

    def __init__(
        self,
        compress: Callable[[Writable], Compressor],
        blob: Writable,
        *,
        where: str,
        tar_hash: HashingWriter,
    ) -> None:
        self._where = where
        self.tar_hash = tar_hash
        self._compressor = compress(blob)
        self.annotations: dict[str, str] = {}
        self._queue: queue.Queue[tuple[bytearray, int] | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._buf = _take_chunk()
        self._view = memoryview(self._buf)
        self._fill = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._recycled = False

    def _consume(self, buf: bytearray, size: int) -> None:
        """Hash and compress the first ``size`` bytes of ``buf``."""
        with memoryview(buf) as whole, whole[:size] as chunk:
            self.tar_hash.write(chunk)
            self._compressor.write(chunk)

    def _close_codec(self) -> None:
        """End the compressed stream, keeping the first error. Always, even after an error:
        the codecs' own threads must stop."""
        try:
            self._compressor.close()
            self.annotations = layer_annotations(self._compressor)
        except BaseException as exc:
            if self._error is None:
                self._error = exc

    def _run(self) -> None:
        drained = False
        try:
            while (item := self._queue.get()) is not None:
                if self._error is None:
                    self._consume(*item)
                    self._free.put(item[0])
            drained = True
        except BaseException as exc:
            self._error = exc
        if not drained:
            # keep draining so the producer never blocks on a full queue
            while self._queue.get() is not None:
                pass
        self._close_codec()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        n = len(data)
        with memoryview(data) as view:
            pos = 0
            while pos < n:
                take = min(_CHUNK - self._fill, n - pos)
                self._view[self._fill : self._fill + take] = view[pos : pos + take]
                self._fill += take
                pos += take
                if self._fill == _CHUNK:
                    self._flush_buf()
        return n

    def write_from(self, fd: int, size: int) -> int:
        """Read up to ``size`` bytes of the file ``fd`` into the stream; return how many there
        were (fewer at the end of the file)."""
        remaining = size
        while remaining:
            take = min(_CHUNK - self._fill, remaining)
            n = os.readv(fd, [self._view[self._fill : self._fill + take]])
            if not n:
                break
            self._fill += n
            remaining -= n
            if self._fill == _CHUNK:
                self._flush_buf()
        return size - remaining

    def _flush_buf(self) -> None:
        """Queue the chunk being filled and go on with a free one."""
        if self._fill:
            if self._error is not None:
                self._fail()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="closurepack-compress", daemon=True
                )
                self._thread.start()
            self._queue.put((self._buf, self._fill))
            try:
                self._buf = self._free.get_nowait()
            except queue.Empty:
                self._buf = _take_chunk()
            self._view = memoryview(self._buf)
            self._fill = 0

    def finish(self) -> None:
        if self._thread is None:  # all of it in the one chunk: done here, no thread
            try:
                if self._fill:
                    self._consume(self._buf, self._fill)
            except BaseException as exc:
                self._error = exc
            self._close_codec()
        else:
            try:
                self._flush_buf()  # (raises when the compressing thread has failed meanwhile)
            except BaseException:
                self.abort()  # that thread still waits for the end of the queue: send it
                raise
            self._queue.put(None)
            self._thread.join()
        self._recycle()
        if self._error is not None:
            self._fail()

    def abort(self) -> None:
        self._error = self._error or RuntimeError("aborted")
        if self._thread is None:
            self._close_codec()
        else:
            self._queue.put(None)
            self._thread.join()
        self._recycle()

    def _recycle(self) -> None:
        """Give the chunks back for later layers (the compressing thread has ended: every
        chunk it took is in the free queue, and none is still being read). Once only: a chunk
        given back twice would be filled by two pipes at once."""
        if self._recycled:
            return
        self._recycled = True
        chunks = [self._buf]
        while True:
            try:
                chunks.append(self._free.get_nowait())
            except queue.Empty:
                break
        self._view.release()
        _give_back(chunks)

    def _fail(self) -> None:
        error = self._error
        if isinstance(error, OSError):
            raise StoreError(f"{self._where}: cannot write the layer: {error}") from error
        raise StoreError(f"{self._where}: compressing the layer failed: {error!r}") from error


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    """Count this build among those in flight for the duration of the block."""
    global _active  # noqa: PLW0603 - a process-wide count of builds in flight
    with _active_lock:
        _active += 1
    try:
        yield
    finally:
        with _active_lock:
            _active -= 1


@contextlib.contextmanager
def sharing_cpus(builders: int) -> Iterator[None]:
    """Divide the CPUs among at least ``builders`` builds for the duration of the block: the
    threads of a layer pool, building one layer after another. Counting only the builds in
    flight, a layer that started while the other builder was between two layers (its cache
    lookups and entry) got every CPU: 16-21 of the bench store's 93 layers did, so the zstd
    contexts kept for the next layer alternated between two worker counts and 27-32 were made
    instead of 2 (each a fresh input ring), and gzip copied those layers' blocks for a pool
    on cores the other builder was using."""
    global _builders  # noqa: PLW0603 - a process-wide count, as _active
    with _active_lock:
        _builders += builders
    try:
        yield
    finally:
        with _active_lock:
            _builders -= builders


def _fair_share() -> int:
    """Codec threads for one build: the CPUs divided among the builds running right now, or
    the builders :func:`sharing_cpus` declared when there are more of them (the codecs'
    output does not depend on it)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with _active_lock:
        return max(1, (cpus or 1) // max(1, _active, _builders))


def _build(
    write_tar: Callable[[Writable], None],
    *,
    compression: str,
    level: int | None,
    dest_dir: Path,
    paths: tuple[str, ...],
    comment: str,
    threads: int,
    fsync: bool,
) -> BuiltLayer:
    resolve_level(compression, level)  # validate before doing any work
    media_type = layer_media_type(compression)
    tar_hash = HashingWriter()
    # uncompressed, the blob is the tar: its digest is the diff_id, hashed once
    same = tar_hash if compression == "none" else None
    # A write larger than the file's buffer goes to the file as it is, where one that fits is
    # first copied into it: a buffer one byte short of the codecs' usual outputs (zstd's a
    # job's output or a 128 KiB piece of it, ISA-L's a compressed 1 MiB block each) and of an
    # uncompressed layer's chunks lets those through uncopied and still gathers small ones.
    buffering = _BLOB_BUFFER - 1
    try:
        with (
            _counted(),
            blob_writer(dest_dir, fsync=fsync, buffering=buffering, digest_of=same) as blob,
        ):
            pipe = _Pipe(
                lambda sink: open_compressor(
                    compression, sink, level=level, threads=threads or _fair_share()
                ),
                blob,
                where=str(dest_dir),
                tar_hash=tar_hash,
            )
            try:
                write_tar(pipe)
            except BaseException:
                pipe.abort()
                raise
            pipe.finish()
    except OSError as exc:  # the blob file itself: disk full, permissions, ...
        raise StoreError(f"{dest_dir}: cannot write the layer: {exc.strerror}") from exc
    return BuiltLayer(
        digest=blob.digest,
        diff_id=pipe.tar_hash.digest,
        size=blob.size,
        media_type=media_type,
        blob_path=dest_dir / blob.digest.hex,
        paths=paths,
        comment=comment,
        annotations=pipe.annotations,
    )


def build_store_layer(
    paths: Sequence[str],
    *,
    store_root: Path | None = None,
    store_dir: str,
    compression: str = "gzip",
    level: int | None = None,
    mtime: int = 1,
    dest_dir: Path,
    threads: int = 0,
    comment: str = "store items",
    fsync: bool = False,
    perms: Perms | None = None,
) -> BuiltLayer:
    """Build the layer holding the store items ``paths`` as ``dest_dir/<digest hex>``.

    ``store_dir`` is checked against every path. ``fsync`` makes the blob durable before it is
    renamed into place; it is off by default because cache hits are verified anyway.
    """
    items = tuple(sorted(set(paths)))
    prefix = store_dir.rstrip("/") + "/"
    for path in items:
        if not path.startswith(prefix) or "/" in path[len(prefix) :]:
            raise OptionError(f"{path}: not an item of the store {store_dir}")
    if perms is not None:
        perms = dataclasses.replace(perms, store_dir=store_dir)  # --uid/--gid: this store
    return _build(
        lambda out: write_store_tar(out, items, store_root=store_root, mtime=mtime, perms=perms),
        compression=compression,
        level=level,
        dest_dir=dest_dir,
        paths=items,
        comment=comment,
        threads=threads,
        fsync=fsync,
    )


def build_tree_layer(
    entries: Iterable[TreeEntry],
    *,
    compression: str = "gzip",
    level: int | None = None,
    mtime: int = 1,
    dest_dir: Path,
    threads: int = 0,
    comment: str = "customisation",
    fsync: bool = False,
    perms: Perms | None = None,
) -> BuiltLayer:
    """Build a layer from :class:`TreeEntry` values (e.g. ``/etc/passwd``, ``--extra DIR``),
    modes and owners set by ``perms``."""
    entry_list = list(entries)
    return _build(
        lambda out: write_tree_tar(out, entry_list, mtime=mtime, perms=perms),
        compression=compression,
        level=level,
        dest_dir=dest_dir,
        paths=(),
        comment=comment,
        threads=threads,
        fsync=fsync,
    )
