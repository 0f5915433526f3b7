"""gzip, zstd and no compression behind one small streaming protocol, with deterministic output.

Levels (``--level``) are given on each tool's own scale and mapped here:

* ``gzip``: the usual 0-9 scale. ISA-L (``isal``) has only levels 0-3, so 0 -> 0, 1-3 -> 1,
  4-5 -> 2 and 6-9 -> 3; the default is 6 (ISA-L 3), the only ISA-L level whose output stays
  within ~12% of ``gzip -6`` while compressing several times faster. Output is the bytes of
  ISA-L's block-parallel writer (1 MiB blocks, each primed with the previous 32 KiB), made by
  :mod:`closurepack.gzipblocks` without its copies; byte-identical for any thread count >= 1
  and any way the input is split into writes.
  The gzip header has no file name, mtime 0. ISA-L picks SIMD kernels at run time (by CPU:
  AVX-512, AVX2, SSE, or another architecture's), and they do not all give the same bytes: an
  AVX-512 host makes other, equally valid gzip bytes for the same tar than the hosts the pins
  of ``tests/test_tar_reference.py`` were first taken on. So the codec identity carries a
  fingerprint of what this host's ISA-L makes of a fixed probe (:func:`_isal_probe`, at that
  level): two hosts share gzip cache entries and registry cache mappings only when their
  kernels agree on it. diff_ids never depend on it; zstd's bytes do not depend on the CPU.
* ``zstd``: levels -7..22, default 3 (well under ``gzip -6`` in size at a fraction of its
  time). Always compressed in zstd's multi-threaded mode, whose output is identical for any
  worker count >= 1 (single-threaded mode would produce different bytes). Frames carry
  zstd's content checksum, so corruption is caught while decompressing.
* ``zstd:chunked``: the same levels as ``zstd``; each frame is compressed single-threaded
  (:mod:`closurepack.chunked`: every file's content in frames of its own, then the table of
  contents a partial pull reads). Decompressed it is the same tar as ``zstd``.
* ``none``: the level is ignored.

:func:`codec_identity` names the library, its version, the mapped level and the mode: any of
them may change the bytes, so it goes into layer cache keys.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import threading
from typing import TYPE_CHECKING, Protocol

from closurepack.digest import Writable
from closurepack.errors import OptionError

if TYPE_CHECKING:  # (the codecs are imported where used: an uncompressed build loads neither)
    import zstandard

__all__ = [
    "CHUNKED",
    "COMPRESSIONS",
    "Compressor",
    "codec_identity",
    "layer_annotations",
    "open_compressor",
    "resolve_level",
]

#: zstd:chunked, containers/storage's name for it.
CHUNKED = "zstd:chunked"
COMPRESSIONS = ("gzip", "zstd", CHUNKED, "none")

_GZIP_DEFAULT = 6
_ZSTD_DEFAULT = 3
_ZSTD_RANGE = (-7, 22)
#: The words of :func:`_isal_probe`'s probe (about 7 bytes each with their space).
_PROBE_WORDS = 1 << 16


class Compressor(Protocol):
    """A write-only stream: ``write`` compresses into the sink, ``close`` writes the trailer.

    ``close`` flushes everything to the sink but never closes the sink itself.
    """

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def close(self) -> None: ...


def resolve_level(compression: str, level: int | None) -> int:
    """The library level used for ``compression`` at user ``level`` (see the module doc)."""
    if compression == "gzip":
        lvl = _GZIP_DEFAULT if level is None else level
        if not 0 <= lvl <= 9:
            raise OptionError(f"gzip level {lvl} is out of range 0-9")
        if lvl == 0:
            return 0
        if lvl <= 3:
            return 1
        if lvl <= 5:
            return 2
        return 3
    if compression in ("zstd", CHUNKED):
        lvl = _ZSTD_DEFAULT if level is None else level
        low, high = _ZSTD_RANGE
        if not low <= lvl <= high or lvl == 0:
            raise OptionError(f"zstd level {lvl} is out of range {low}..{high} (0 excluded)")
        return lvl
    if compression == "none":
        return 0
    raise _unknown(compression)


def _unknown(compression: str) -> OptionError:
    return OptionError(
        f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}"
    )


def codec_identity(compression: str, level: int | None) -> str:
    """A string naming everything about the codec that can change the compressed bytes."""
    lvl = resolve_level(compression, level)
    if compression == "gzip":
        import isal  # noqa: PLC0415 - ISA-L: only for gzip

        from closurepack.gzipblocks import BLOCK_SIZE  # noqa: PLC0415 - gzip only

        return (
            f"gzip/isal-{isal.__version__}/libisal-{isal.ISAL_VERSION}/level-{lvl}"
            f"/blocks-{BLOCK_SIZE}/{platform.machine() or 'unknown'}/probe-{_isal_probe(lvl)}"
        )
    if compression == "zstd":
        import zstandard  # noqa: PLC0415 - only for zstd

        return (
            f"zstd/python-zstandard-{zstandard.__version__}/libzstd-{zstandard.ZSTD_VERSION}"
            f"/level-{lvl}/mt/checksum"
        )
    if compression == CHUNKED:
        import zstandard  # noqa: PLC0415 - only for zstd

        from closurepack.chunked import chunked_identity  # noqa: PLC0415 - zstd:chunked only

        return (
            f"zstd-chunked/python-zstandard-{zstandard.__version__}"
            f"/libzstd-{zstandard.ZSTD_VERSION}/level-{lvl}/st/checksum/{chunked_identity()}"
        )
    return "none"


@functools.cache
def _isal_probe(isal_level: int) -> str:
    """12 hex digits of the sha256 of what ISA-L, with the kernels it picked on this CPU, makes
    of a fixed 512 KiB probe at ``isal_level`` (raw deflate, as each block of the gzip writer):
    32 runs of text-like words (long and short matches), each followed by 1 KiB of bytes with
    none. A few milliseconds, once per process and level."""
    stream = hashlib.shake_256(b"closurepack isal probe").digest(_PROBE_WORDS + 32 * 1024)
    words = [hashlib.sha256(bytes([i])).hexdigest()[: 2 + i % 11].encode() for i in range(256)]
    text = b" ".join([words[b] for b in stream[:_PROBE_WORDS]])
    run = len(text) // 32
    noise = stream[_PROBE_WORDS:]
    probe = b"".join(
        text[i * run : (i + 1) * run] + noise[i * 1024 : (i + 1) * 1024] for i in range(32)
    )
    import isal.isal_zlib  # noqa: PLC0415 - ISA-L: only for gzip

    deflate = isal.isal_zlib.compressobj(isal_level, isal.isal_zlib.DEFLATED, -15)
    made = deflate.compress(probe) + deflate.flush()
    return hashlib.sha256(made).hexdigest()[:12]


def _thread_count(threads: int) -> int:
    if threads > 0:
        return threads
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class _SinkFile:
    """A bare ``Writable`` as a file object whose ``close`` only flushes it: the whole of
    ``none`` compression."""

    def __init__(self, sink: Writable) -> None:
        self._sink = sink

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        self.flush()


#: Idle zstd contexts of one (level, workers) kind, kept for the next layer: a context holds
#: its multi-threaded buffers (an input ring of about (workers + 3) x 8 MiB at level 3) and
#: worker threads, so a fresh one per layer meant mapping, zero-filling and unmapping tens of
#: MiB per layer, most layers being smaller than that. ``compressobj`` starts a new frame with
#: the same parameters, so the bytes are those of a fresh context. At most as many are kept
#: as layers are built at once by default (one per CPU), and only of the kind last returned,
#: so no more contexts are alive than layers in flight would have anyway.
_idle_zstd: list[tuple[tuple[int, int], zstandard.ZstdCompressor]] = []
_idle_zstd_lock = threading.Lock()


def _zstd_context(level: int, threads: int) -> zstandard.ZstdCompressor:
    """An idle context for ``level`` and ``threads`` workers, else a new one."""
    with _idle_zstd_lock:
        for i, (kind, cctx) in enumerate(_idle_zstd):
            if kind == (level, threads):
                del _idle_zstd[i]
                return cctx
    import zstandard  # noqa: PLC0415 - only for zstd

    return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)


def _zstd_done(level: int, threads: int, cctx: zstandard.ZstdCompressor) -> None:
    """Keep the context of a frame that ended well for the next layer."""
    kind = (level, threads)
    with _idle_zstd_lock:
        _idle_zstd[:] = [entry for entry in _idle_zstd if entry[0] == kind]
        if len(_idle_zstd) < (os.cpu_count() or 1):
            _idle_zstd.append((kind, cctx))


class _Zstd:
    def __init__(self, sink: Writable, level: int, threads: int) -> None:
        self._sink = sink
        self._kind = (level, threads)
        self._cctx = _zstd_context(level, threads)
        self._obj = self._cctx.compressobj()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        out = self._obj.compress(data)
        if out:
            self._sink.write(out)
        return len(data)

    def close(self) -> None:
        out = self._obj.flush()
        _zstd_done(*self._kind, self._cctx)  # (a flush that raised gives no context back)
        if out:
            self._sink.write(out)
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()


def open_compressor(
    compression: str, sink: Writable, *, level: int | None = None, threads: int = 0
) -> Compressor:
    """A compressor writing to ``sink``; ``threads`` 0 means one per available CPU.

    The output does not depend on ``threads``.
    """
    lvl = resolve_level(compression, level)
    if compression == "gzip":
        from closurepack.gzipblocks import BlockGzip  # noqa: PLC0415 - ISA-L: only for gzip

        return BlockGzip(sink, lvl, _thread_count(threads))
    if compression == "zstd":
        return _Zstd(sink, lvl, _thread_count(threads))
    if compression == CHUNKED:
        from closurepack.chunked import ChunkedCompressor  # noqa: PLC0415 - zstd:chunked only

        return ChunkedCompressor(sink, lvl, _thread_count(threads))
    return _SinkFile(sink)


def layer_annotations(compressor: Compressor) -> dict[str, str]:
    """The annotations a closed compressor's layer descriptor carries (zstd:chunked's TOC)."""
    found = getattr(compressor, "annotations", None)  # (only ChunkedCompressor has them)
    return dict(found) if found is not None else {}
