"""The zstd:chunked writer: a compressor that reads the tar it is given entry by entry.

It is fed the layer's tar like any other compressor (:mod:`closurepack.compression`) and
follows its headers (ustar, with PAX extended headers for long names and big sizes), so the tar
writer knows nothing of it. Frames (the format is described in :mod:`closurepack.chunkedtoc`):

* the raw tar bytes between two files' contents (the previous file's padding, then every
  header up to the next file with content) make one frame;
* a file of up to :data:`CHUNK_FROM` bytes makes one frame; a larger one is cut by FastCDC
  (pyfastcdc, content-defined: an edit moves the boundaries near it only, so an update that
  rewrites a store hash inside a big file changes one or two chunks of it, not the whole file)
  into chunks of :data:`MIN_CHUNK`..:data:`MAX_CHUNK` bytes (about :data:`AVG_CHUNK`), one
  frame each;
* the end-of-archive blocks make the last frame, then the TOC, tar-split and footer.

Every frame is compressed on its own, single-threaded, with the content checksum, so its bytes
depend on its content and the level only; batches of frames are compressed in parallel
(python-zstandard's ``multi_compress_to_buffer``), which changes no byte. The annotations for
the layer descriptor are in :attr:`ChunkedCompressor.annotations` once it is closed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import zstandard

from closurepack.chunkedtoc import (
    TAR_ENTRY_TYPES,
    annotations_for,
    footer_bytes,
    mtime_text,
    skippable_frame,
    tarsplit_file_line,
    tarsplit_segment_line,
    toc_json,
)
from closurepack.digest import Writable
from closurepack.errors import StoreError

__all__ = [
    "AVG_CHUNK",
    "CHUNK_FROM",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "ChunkedCompressor",
    "chunked_identity",
]

#: Files larger than this are cut into content-defined chunks.
CHUNK_FROM = 64 << 10
AVG_CHUNK = 32 << 10
MIN_CHUNK = 8 << 10
MAX_CHUNK = 128 << 10
_WINDOW = 8 << 20  # file bytes held before the chunks found in them are sent on
_BATCH = 8 << 20  # uncompressed bytes compressed in one parallel call
_BATCH_FRAMES = 4096

_BLOCK = 512


def chunked_identity() -> str:
    """Everything of the chunking that can change a layer's bytes (for its cache key)."""
    # importlib.metadata (email's parsers with it) costs a build's start-up more than any
    # other import: loaded only for the zstd:chunked layers that need it
    from importlib.metadata import version  # noqa: PLC0415

    cdc = f"pyfastcdc-{version('pyfastcdc')}"
    return f"frames-v1/{cdc}/from-{CHUNK_FROM}/cdc-{MIN_CHUNK}-{AVG_CHUNK}-{MAX_CHUNK}"


@dataclass(slots=True)
class _Frame:
    """One zstd frame to write: its uncompressed bytes, then where it landed in the blob."""

    data: bytes
    offset: int = -1
    end: int = -1


@dataclass(slots=True)
class _Chunk:
    frame: _Frame
    start: int  # offset in the file
    size: int
    digest: str


@dataclass(slots=True)
class _File:
    """A TOC entry being built: the header's metadata; for a file with content, its chunks."""

    meta: dict[str, Any]
    chunks: list[_Chunk] = field(default_factory=list)

    def toc_entries(self) -> list[dict[str, Any]]:
        meta = dict(self.meta)
        chunks = self.chunks
        if not chunks:
            return [meta]
        meta["offset"] = chunks[0].frame.offset
        meta["endOffset"] = chunks[-1].frame.end
        if len(chunks) == 1:
            return [meta]
        meta["chunkSize"] = chunks[0].size
        meta["chunkDigest"] = chunks[0].digest
        out = [meta]
        for chunk in chunks[1:]:
            out.append(
                {
                    "type": "chunk",
                    "name": meta["name"],
                    "offset": chunk.frame.offset,
                    "endOffset": chunk.frame.end,
                    "chunkSize": chunk.size,
                    "chunkOffset": chunk.start,
                    "chunkDigest": chunk.digest,
                }
            )
        return out


def _octal(field_bytes: bytes, what: str) -> int:
    if field_bytes[:1] and field_bytes[0] & 0x80:  # base-256 (GNU): big-endian, high bit set
        return int.from_bytes(field_bytes, "big") & ~(0x80 << (8 * (len(field_bytes) - 1)))
    text = field_bytes.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise StoreError(f"tar header field {what} is not a number: {text!r}") from None


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


class ChunkedCompressor:
    """A write-only stream turning a tar into a zstd:chunked blob in ``sink``."""

    def __init__(self, sink: Writable, level: int, threads: int) -> None:
        self._sink = sink
        self._threads = max(1, threads)
        # (the chunker and the CRC library load only for a zstd:chunked layer: a fifth of
        # every other build's imports)
        import fastcrc  # noqa: PLC0415
        import pyfastcdc  # noqa: PLC0415

        self._crc64 = fastcrc.crc64.go_iso
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._cdc = pyfastcdc.FastCDC(avg_size=AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        self._pos = 0  # bytes written to the sink
        self._pending: list[_Frame] = []
        self._pending_bytes = 0
        self._files: list[_File] = []
        self._tarsplit: list[bytes] = []
        # tar parsing
        self._state = "header"
        self._need = _BLOCK
        self._part = bytearray()  # the part of a header block or PAX data seen so far
        self._pax: dict[bytes, bytes] = {}
        self._global = False
        self._segment = bytearray()  # raw tar bytes since the last file content (one frame)
        self._split = bytearray()  # raw tar bytes since the last tar-split file entry
        self._remaining = 0  # content bytes of the current file still to come
        self._padding = 0
        self._file: _File | None = None
        self._content = bytearray()  # content not yet cut into chunks
        self._content_at = 0  # offset in the file of self._content[0]
        self._sha = hashlib.sha256()
        self._crc: int | None = None
        self.annotations: dict[str, str] = {}

    # --- the tar side -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        with memoryview(data) as whole:
            view = whole.cast("B") if whole.format != "B" else whole
            while view:
                if self._state == "content":
                    n = min(self._remaining, len(view))
                    self._take_content(view[:n])
                    view = view[n:]
                    self._remaining -= n
                    if not self._remaining:
                        self._end_content()
                elif self._state == "trailer":
                    self._segment += view
                    self._split += view
                    break
                else:
                    n = min(self._need - len(self._part), len(view))
                    self._part += view[:n]
                    view = view[n:]
                    if len(self._part) == self._need:
                        record, self._part = bytes(self._part), bytearray()
                        self._record(record)
        return len(data)

    def _record(self, record: bytes) -> None:
        self._segment += record
        self._split += record
        if self._state == "padding":
            self._state, self._need = "header", _BLOCK
        elif self._state == "pax":
            if not self._global:
                self._pax.update(_pax_records(record))
            self._state, self._need = "header", _BLOCK
        elif not any(record):
            self._state = "trailer"
        else:
            self._header(record)

    def _header(self, block: bytes) -> None:
        typeflag = block[156:157]
        size = _octal(block[124:136], "size")
        if typeflag in (b"x", b"g"):  # PAX records for the next entry, or global ones (unused)
            self._global = typeflag == b"g"
            if size:
                self._state, self._need = "pax", size + (-size % _BLOCK)
            return
        pax, self._pax = self._pax, {}
        kind = TAR_ENTRY_TYPES.get(typeflag)
        if kind is None:
            raise StoreError(f"tar entry type {typeflag!r} cannot go in a zstd:chunked layer")
        name_b = pax.get(b"path")
        if name_b is None:
            name_b = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name_b = prefix + b"/" + name_b
        link_b = pax.get(b"linkpath", block[157:257].split(b"\0", 1)[0])
        if b"size" in pax:
            size = int(pax[b"size"])
        try:
            name, link = name_b.decode(), link_b.decode()
        except UnicodeDecodeError:
            raise StoreError(
                f"{os.fsdecode(name_b)!r}: a name that is not UTF-8 cannot go in a"
                " zstd:chunked table of contents (use --compression zstd)"
            ) from None
        meta: dict[str, Any] = {"type": kind, "name": name}
        if link:
            meta["linkName"] = link
        mode = _octal(block[100:108], "mode")
        uid = int(pax.get(b"uid", b"0")) if b"uid" in pax else _octal(block[108:116], "uid")
        gid = int(pax.get(b"gid", b"0")) if b"gid" in pax else _octal(block[116:124], "gid")
        mtime = int(float(pax[b"mtime"])) if b"mtime" in pax else _octal(block[136:148], "mtime")
        for key, value in (("mode", mode), ("size", size), ("uid", uid), ("gid", gid)):
            if value:
                meta[key] = value
        meta["modtime"] = mtime_text(mtime)
        entry = _File(meta)
        self._files.append(entry)
        self._add_split(tarsplit_segment_line(self._split, len(self._tarsplit)))
        self._split = bytearray()
        if not size:
            self._add_split(tarsplit_file_line(name, 0, None, len(self._tarsplit)))
            return
        if kind != "reg":
            raise StoreError(
                f"{name}: a {kind} entry with content cannot go in a zstd:chunked layer"
            )
        self._queue(bytes(self._segment))
        self._segment = bytearray()
        self._file = entry
        self._remaining, self._padding = size, -size % _BLOCK
        self._state = "content"
        self._sha = hashlib.sha256()
        self._crc = None
        self._content_at = 0

    def _add_split(self, line: bytes) -> None:
        self._tarsplit.append(line)

    def _take_content(self, piece: memoryview) -> None:
        self._sha.update(piece)
        self._crc = self._crc64(piece, self._crc)
        self._content += piece
        if len(self._content) >= _WINDOW + MAX_CHUNK and self._remaining > len(piece):
            self._cut(final=False)

    def _cut(self, *, final: bool) -> None:
        """Send on the chunks found in the content held; all of them at the end of the file,
        else only those that start at least MAX_CHUNK before the end of what is held (a chunk
        closer to it might be cut differently once more content arrives)."""
        assert self._file is not None
        content = self._content
        if final and self._content_at == 0 and len(content) <= CHUNK_FROM:
            # one frame; a single chunk's digest is the file's and is not written
            data = bytes(content)
            self._file.chunks.append(_Chunk(self._queue(data), 0, len(data), ""))
            self._content = bytearray()
            return
        kept = 0
        for offset, length in self._cuts(content):
            if not final and offset + MAX_CHUNK > len(content):
                break
            data = bytes(content[offset : offset + length])
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start = self._content_at + offset
            self._file.chunks.append(_Chunk(self._queue(data), start, length, digest))
            kept = offset + length
        del content[:kept]
        self._content_at += kept

    def _cuts(self, content: bytearray) -> list[tuple[int, int]]:
        """(offset, length) of the FastCDC chunks of ``content`` (the chunker's views of it
        are released before returning, so that it can be resized)."""
        with memoryview(content) as view:
            found = self._cdc.cut_buf(view)
            cuts = [(chunk.offset, chunk.length) for chunk in found]
            del found
        return cuts

    def _end_content(self) -> None:
        assert self._file is not None
        self._cut(final=True)
        name = self._file.meta["name"]
        size = self._file.meta["size"]
        self._file.meta["digest"] = "sha256:" + self._sha.hexdigest()
        self._add_split(tarsplit_file_line(name, size, self._crc, len(self._tarsplit)))
        self._file = None
        if self._padding:
            self._state, self._need = "padding", self._padding
        else:
            self._state, self._need = "header", _BLOCK

    # --- the blob side ------------------------------------------------------------------

    def _queue(self, data: bytes) -> _Frame:
        frame = _Frame(data)
        self._pending.append(frame)
        self._pending_bytes += len(data)
        if self._pending_bytes >= _BATCH or len(self._pending) >= _BATCH_FRAMES:
            self._flush()
        return frame

    def _flush(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        if len(pending) == 1 or self._threads == 1:
            outputs: Any = [self._cctx.compress(f.data) for f in pending]
        else:
            outputs = self._cctx.multi_compress_to_buffer(
                [f.data for f in pending], threads=self._threads
            )
        for index, frame in enumerate(pending):
            out = outputs[index]
            frame.offset = self._pos
            self._sink.write(out)
            self._pos += len(out)
            frame.end = self._pos
            frame.data = b""

    def close(self) -> None:
        """Write the last frames, the TOC, the tar-split and the footer."""
        if self._state not in ("trailer", "header") or self._part or self._file is not None:
            raise StoreError("the layer's tar ended inside an entry")
        if self._split:
            self._add_split(tarsplit_segment_line(self._split, len(self._tarsplit)))
        if self._segment:
            self._queue(bytes(self._segment))
        self._flush()
        entries = [e for f in self._files for e in f.toc_entries()]
        tarsplit_plain = b"".join(self._tarsplit)
        tarsplit = self._cctx.compress(tarsplit_plain)
        toc_plain = toc_json(entries, "sha256:" + hashlib.sha256(tarsplit).hexdigest())
        toc = self._cctx.compress(toc_plain)
        toc_at = self._pos + 8
        split_at = toc_at + len(toc) + 8
        toc_pos = (toc_at, len(toc), len(toc_plain))
        split_pos = (split_at, len(tarsplit), len(tarsplit_plain))
        for data in (toc, tarsplit, footer_bytes(toc_pos, split_pos)):
            frame = skippable_frame(data)
            self._sink.write(frame)
            self._pos += len(frame)
        toc_digest = "sha256:" + hashlib.sha256(toc).hexdigest()
        self.annotations = annotations_for(toc_digest, toc_pos, split_pos)
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()
