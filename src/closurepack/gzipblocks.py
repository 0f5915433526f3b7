"""A gzip member of independently compressed ISA-L deflate blocks, written without copies.

The bytes are those of ``isal.igzip_threaded``'s writer (the format the layer digests pin):
a 10-byte header (no name, mtime 0, ``ff`` then XFL as that writer packs them), the input cut
into 1 MiB blocks, each compressed by ISA-L's block compressor (``isal_zlib._ParallelCompress``)
primed with the last 32 KiB of the block before it, an empty final deflate block, and the
trailer (CRC-32 of the input, its length modulo 2**32). Every block depends on its input alone,
so the bytes do not depend on the thread count or on how the input arrives.

That writer copies each block into a ``bytes`` for its queue and hands it to a thread of its
own even when it has one worker. Here one thread compresses the whole blocks it is given
straight from the caller's buffer (only the 32 KiB window is kept, copied, for the next
block); with more threads the blocks are copied (the caller may reuse its buffer as soon as
``write`` returns) and compressed by a pool, their output written in order by the caller.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import queue
from typing import TYPE_CHECKING

from closurepack.digest import Writable

if TYPE_CHECKING:  # (ISA-L is imported where used: a zstd build never loads it)
    from isal import isal_zlib

__all__ = ["BLOCK_SIZE", "BlockGzip"]

#: The block size is part of the output format: keep it fixed.
BLOCK_SIZE = 1 << 20
_WINDOW = 32 * 1024  # deflate's window: what of the block before primes the next
_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\xff"  # magic, deflate, no flags, mtime 0, 0xff


@functools.cache
def _final_block() -> bytes:
    """The empty last deflate block that ends the member (as that writer makes it)."""
    from isal import isal_zlib  # noqa: PLC0415 - ISA-L: only for gzip

    return isal_zlib.compress(b"", wbits=-15)


def _out_size(level: int) -> int:
    """The block compressor's output buffer (level 0 stores: up to twice the block)."""
    return 2 * BLOCK_SIZE + 500 if level == 0 else BLOCK_SIZE + max(BLOCK_SIZE // 10, 500)


class BlockGzip:
    """A write-only gzip stream into ``sink`` at ISA-L ``level`` (0-3) with ``threads``
    compressing; ``close`` writes the trailer and flushes ``sink`` (never closes it)."""

    def __init__(self, sink: Writable, level: int, threads: int) -> None:
        from isal import isal_zlib  # noqa: PLC0415 - ISA-L: only for gzip

        self._sink = sink
        self._crc32_combine = isal_zlib.crc32_combine
        self._crc = 0
        self._size = 0
        self._window: bytes = b""  # the last 32 KiB of the block before
        self._pending = bytearray()  # the start of a block
        size = _out_size(level)
        self._deflate = isal_zlib._ParallelCompress(buffersize=size, level=level)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads = threads
        if threads > 1:
            self._idle: queue.SimpleQueue[isal_zlib._ParallelCompress] = queue.SimpleQueue()
            self._idle.put(self._deflate)
            for _ in range(threads - 1):
                self._idle.put(isal_zlib._ParallelCompress(buffersize=size, level=level))
            self._pool = concurrent.futures.ThreadPoolExecutor(
                threads, thread_name_prefix="closurepack-gzip"
            )
            self._running: collections.deque[concurrent.futures.Future[tuple[bytes, int, int]]]
            self._running = collections.deque()
        sink.write(_HEAD + (b"\x04" if level == 0 else b"\x00"))

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        with memoryview(data) as view:
            n = len(view)
            pos = 0
            pending = self._pending
            if pending:
                pos = min(n, BLOCK_SIZE - len(pending))
                pending += view[:pos]
                if len(pending) < BLOCK_SIZE:
                    return n
                self._block(pending)
                pending.clear()
            while n - pos >= BLOCK_SIZE:
                with view[pos : pos + BLOCK_SIZE] as block:
                    self._block(block)
                pos += BLOCK_SIZE
            if pos < n:
                pending += view[pos:]
        return n

    def _block(self, block: bytearray | memoryview) -> None:
        """Compress one block (which the caller may reuse afterwards)."""
        window = self._window
        if self._pool is None:
            out, crc = self._deflate.compress_and_crc(block, window)
            self._window = bytes(block[-_WINDOW:])
            self._emit(out, crc, len(block))
            return
        owned = bytes(block)
        self._window = owned[-_WINDOW:]
        self._running.append(self._pool.submit(self._compress, owned, window))
        while len(self._running) > self._threads:
            self._emit(*self._running.popleft().result())

    def _compress(self, block: bytes, window: bytes) -> tuple[bytes, int, int]:
        """A pool thread's work: one block on an idle compressor."""
        deflate = self._idle.get()
        try:
            out, crc = deflate.compress_and_crc(block, window)
        finally:
            self._idle.put(deflate)
        return out, crc, len(block)

    def _emit(self, out: bytes, crc: int, size: int) -> None:
        self._crc = self._crc32_combine(self._crc, crc, size)
        self._size += size
        self._sink.write(out)

    def close(self) -> None:
        """Compress what is left, write the end of the member and flush the sink; the pool
        stops even when that fails."""
        try:
            if self._pending:
                self._block(self._pending)
                self._pending.clear()
            if self._pool is not None:
                while self._running:
                    self._emit(*self._running.popleft().result())
            self._sink.write(
                _final_block()
                + self._crc.to_bytes(4, "little")
                + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
            )
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()
