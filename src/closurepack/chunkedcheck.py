"""Checks of a zstd:chunked layer against its own tar, for ``closurepack verify``.

Everything a partial pull relies on is recomputed (format: :mod:`closurepack.chunkedtoc`):
the annotations agree with each other and with the footer; the TOC's bytes have the annotated
digest and lengths; the tar-split's bytes have the digest the TOC names; the TOC lists the
tar's entries in order with the same name, type, mode, size, owner, link and mtime, and each
file's content digest; every file's frames (each chunk's ``offset``..``endOffset``) decompress
to exactly its content (chunk sizes, offsets and digests too); and the tar-split rebuilds the
tar byte for byte, each file's CRC-64 included. Each problem is one line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Protocol

import fastcrc
import zstandard

from closurepack.chunkedtoc import (
    CHECKSUM_KEYS,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    POSITION_KEYS,
    SKIPPABLE_MAGIC,
    TAR_ENTRY_TYPES,
    TARSPLIT_KEY,
    TOC_TYPE,
    is_skippable_magic,
    mtime_text,
    parse_position,
)
from closurepack.decompression import open_decompressed

__all__ = ["ChunkedCheck", "Readable", "check_chunked_layer", "chunked_check"]

_CHUNK = 1 << 20
_MAX_TOC = 150 << 20  # what containers/storage accepts


class Readable(Protocol):
    """What the check reads a decompressed tar from."""

    def read(self, size: int = -1, /) -> bytes: ...


class _ChunkedError(Exception):
    """A problem that stops the check (later checks would only repeat it)."""


@dataclass(frozen=True)
class _Member:
    """What the tar says of one entry (content digest for regular files with content)."""

    meta: dict[str, Any]
    digest: str


@contextlib.contextmanager
def _seekable(opener: Callable[[], BinaryIO]) -> Iterator[IO[bytes]]:
    """The blob as a seekable file: itself when it is one, else a temporary copy."""
    with opener() as stream:
        if stream.seekable():
            yield stream
            return
        with tempfile.TemporaryFile() as copy:
            shutil.copyfileobj(stream, copy, _CHUNK)
            yield copy


def _read_at(blob: IO[bytes], offset: int, length: int, what: str) -> bytes:
    blob.seek(offset)
    data = blob.read(length)
    if len(data) != length:
        raise _ChunkedError(f"{what} at {offset}+{length} lies beyond the end of the blob")
    return data


def _decompress(data: bytes, what: str) -> bytes:
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
            return r.read()
    except zstandard.ZstdError as exc:
        raise _ChunkedError(f"{what}: not zstd data: {exc}") from exc


def _annotated(annotations: Mapping[str, str]) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(TOC digest, TOC position, tar-split position) from the annotations, which must agree."""
    checksums = {annotations[k] for k in CHECKSUM_KEYS if k in annotations}
    positions = {annotations[k] for k in POSITION_KEYS if k in annotations}
    if len(checksums) != 1:
        raise _ChunkedError(f"the annotations give {len(checksums)} different TOC digests")
    if len(positions) != 1:
        raise _ChunkedError(f"the annotations give {len(positions)} different TOC positions")
    if TARSPLIT_KEY not in annotations:
        raise _ChunkedError(f"annotation {TARSPLIT_KEY} is missing")
    try:
        toc_pos = parse_position(positions.pop(), 4)
        split_pos = parse_position(annotations[TARSPLIT_KEY], 3)
    except ValueError as exc:
        raise _ChunkedError(f"bad position annotation: {exc}") from exc
    if toc_pos[3] != TOC_TYPE:
        raise _ChunkedError(f"TOC type is {toc_pos[3]}, expected {TOC_TYPE}")
    return checksums.pop(), toc_pos, split_pos


def _check_footer(blob: IO[bytes], toc_pos: tuple[int, ...], split_pos: tuple[int, ...]) -> None:
    blob.seek(0, 2)
    size = blob.tell()
    frame = _read_at(blob, size - FOOTER_SIZE - 8, FOOTER_SIZE + 8, "the footer")
    magic, length = struct.unpack("<II", frame[:8])
    values = struct.unpack("<7Q", frame[8:64])
    if magic != SKIPPABLE_MAGIC or length != FOOTER_SIZE or frame[64:] != FOOTER_MAGIC:
        raise _ChunkedError("the blob does not end with a zstd:chunked footer frame")
    if (*values[:3], values[3]) != toc_pos or values[4:] != split_pos:
        raise _ChunkedError(
            f"the footer gives TOC {values[:4]} and tar-split {values[4:]},"
            f" the annotations {toc_pos} and {split_pos}"
        )


def _skippable(blob: IO[bytes], pos: tuple[int, ...], what: str) -> bytes:
    """The ``pos[1]`` bytes at ``pos[0]``, checked to be a whole skippable frame's content."""
    offset, length = pos[0], pos[1]
    if offset < 8:
        raise _ChunkedError(f"{what} offset {offset} leaves no room for its frame header")
    header = _read_at(blob, offset - 8, 8, what)
    magic, size = struct.unpack("<II", header)
    if not is_skippable_magic(magic) or size != length:
        raise _ChunkedError(
            f"{what} at {offset} is not the content of a skippable frame of {length}"
        )
    return _read_at(blob, offset, length, what)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_members(plain: IO[bytes]) -> list[_Member]:
    members: list[_Member] = []
    with tarfile.open(fileobj=plain, mode="r|", encoding="utf-8") as tar:
        for info in tar:
            meta: dict[str, Any] = {
                "type": TAR_ENTRY_TYPES.get(info.type, repr(info.type)),
                "name": info.name,
                "linkName": info.linkname,
                "mode": info.mode,
                "size": info.size if info.type != tarfile.LNKTYPE else 0,
                "uid": info.uid,
                "gid": info.gid,
                "modtime": mtime_text(int(info.mtime)),
            }
            digest = ""
            if info.isfile() and info.size:
                sha = hashlib.sha256()
                reader = tar.extractfile(info)
                assert reader is not None
                while data := reader.read(_CHUNK):
                    sha.update(data)
                digest = "sha256:" + sha.hexdigest()
            members.append(_Member(meta, digest))
    return members


def _entry_meta(entry: Mapping[str, Any]) -> dict[str, Any]:
    name = str(entry.get("name", ""))
    return {
        "type": entry.get("type"),
        "name": name.rstrip("/") if entry.get("type") == "dir" else name,
        "linkName": entry.get("linkName", ""),
        "mode": entry.get("mode", 0),
        "size": entry.get("size", 0),
        "uid": entry.get("uid", 0),
        "gid": entry.get("gid", 0),
        "modtime": entry.get("modtime"),
    }


def _files(entries: list[Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The TOC's entries without chunk entries, each with its chunks (itself first)."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _ChunkedError("a TOC entry is not an object")
        if entry.get("type") == "chunk":
            if (
                not out
                or out[-1][0].get("type") != "reg"
                or out[-1][0].get("name") != entry.get("name")
            ):
                raise _ChunkedError(
                    f"TOC chunk entry for {entry.get('name')!r} follows no such file"
                )
            out[-1][1].append(entry)
        else:
            out.append((entry, [entry]))
    return out


def _check_frames(
    blob: IO[bytes], entry: Mapping[str, Any], chunks: list[dict[str, Any]]
) -> list[str]:
    name = entry.get("name")
    size = int(entry.get("size", 0))
    problems: list[str] = []
    whole = hashlib.sha256()
    at = 0
    for index, chunk in enumerate(chunks):
        start, end = int(chunk.get("offset", 0)), int(chunk.get("endOffset", 0))
        if index == 0 and len(chunks) > 1:  # the file's entry: its endOffset is the file's end
            end = int(chunks[1].get("offset", 0))
        if not 0 < start < end:
            return [f"{name}: chunk {index} has no frame (offset {start}, endOffset {end})"]
        data = _decompress(_read_at(blob, start, end - start, f"{name}: chunk {index}"), f"{name}")
        whole.update(data)
        if len(chunks) > 1:
            said = (chunk.get("chunkOffset", 0), chunk.get("chunkSize"), chunk.get("chunkDigest"))
            found = (at, len(data), _sha(data))
            for what, told, real in zip(("offset", "size", "digest"), said, found, strict=True):
                if told != real:
                    problems.append(f"{name}: chunk {index}: {what} is {real}, TOC says {told}")
        at += len(data)
    if at != size:
        problems.append(f"{name}: its frames hold {at} bytes, the TOC says {size}")
    elif entry.get("digest") != "sha256:" + whole.hexdigest():
        problems.append(f"{name}: its frames' content digest differs from the TOC's")
    if len(chunks) > 1 and int(entry.get("endOffset", 0)) != int(chunks[-1].get("endOffset", 0)):
        problems.append(f"{name}: endOffset is not its last chunk's")
    return problems


class _SplitFollower:
    """The tar-split checked against the tar as its bytes pass (:meth:`feed`, in order):
    every segment equal to the tar's bytes there, every file's size and CRC-64; the first
    problem is kept in :attr:`problem`."""

    def __init__(self, lines: list[Any]) -> None:
        self._lines = lines
        self._at = -1  # the line the coming bytes belong to
        self._segment = b""  # a segment line's bytes, and how many of them have passed
        self._done = 0
        self._left = 0  # a file line's content bytes still to come, and their CRC so far
        self._crc: int | None = None
        self.files: list[str] = []
        self.problem: str | None = None
        self._next()

    def _next(self) -> None:
        """On to the next line that expects bytes (lines that expect none are done now)."""
        while self.problem is None:
            self._at += 1
            if self._at == len(self._lines):
                return
            number, line = self._at, self._lines[self._at]
            if not isinstance(line, dict) or line.get("position") != number:
                self.problem = f"tar-split line {number} is not an entry at position {number}"
            elif line.get("type") == 2:
                self._segment, self._done = base64.b64decode(line.get("payload") or ""), 0
                if self._segment:
                    return
            elif line.get("type") != 1:
                self.problem = f"tar-split line {number} has unknown type {line.get('type')!r}"
            else:
                self.files.append(str(line.get("name")))
                self._left, self._crc = int(line.get("size", 0)), None
                if self._left:
                    return
                self._file_done()

    def _file_done(self) -> None:
        line = self._lines[self._at]
        crc = self._crc
        want_crc = None if crc is None else base64.b64encode(crc.to_bytes(8, "big")).decode()
        if line.get("payload") != want_crc:
            self.problem = f"tar-split: {line.get('name')}: CRC-64 differs from its content's"

    def feed(self, data: bytes) -> None:
        """The tar's next bytes."""
        view = memoryview(data)  # slices of it copy nothing
        while view and self.problem is None:
            if self._at == len(self._lines):
                self.problem = "tar-split ends before the tar does"
                return
            if self._lines[self._at].get("type") == 2:
                n = min(len(self._segment) - self._done, len(view))
                if view[:n] != self._segment[self._done : self._done + n]:
                    self.problem = (
                        f"tar-split segment {self._at} differs from the tar's bytes there"
                    )
                    return
                self._done += n
                view = view[n:]
                if self._done == len(self._segment):
                    self._next()
            else:
                n = min(self._left, len(view))
                self._crc = fastcrc.crc64.go_iso(bytes(view[:n]), self._crc)
                self._left -= n
                view = view[n:]
                if not self._left:
                    self._file_done()
                    if self.problem is None:
                        self._next()

    def finish(self, names: list[str]) -> list[str]:
        """Every problem, once the tar has ended; ``names`` are the TOC's entries."""
        if self.problem is None and self._at < len(self._lines):
            line = self._lines[self._at]
            if line.get("type") == 2:
                self.problem = f"tar-split segment {self._at} differs from the tar's bytes there"
            else:
                self.problem = f"tar-split: {line.get('name')}: the tar ends inside it"
        if self.problem is not None:
            return [self.problem]
        if self.files != names:
            return ["the tar-split's file entries differ from the TOC's entries"]
        return []


class _Following(io.RawIOBase):
    """``plain`` read through, each piece given to ``follower`` as it passes."""

    def __init__(self, plain: Readable, follower: _SplitFollower) -> None:
        self._plain = plain
        self._follower = follower

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._plain.read(len(view))
        view[: len(data)] = data
        self._follower.feed(data)
        return len(data)


class _Borrowed(io.RawIOBase):
    """The check's copy of the blob read from where it is; closing this leaves it open."""

    def __init__(self, blob: IO[bytes]) -> None:
        self._blob = blob

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._blob.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_toc(blob: IO[bytes], digest: str, pos: tuple[int, ...]) -> dict[str, Any]:
    if pos[1] > _MAX_TOC or pos[2] > _MAX_TOC:
        raise _ChunkedError(f"the TOC is too big ({pos[1]}/{pos[2]} bytes)")
    toc_bytes = _skippable(blob, pos, "the TOC")
    if _sha(toc_bytes) != digest:
        raise _ChunkedError(f"the TOC's digest is {_sha(toc_bytes)}, annotated {digest}")
    toc_plain = _decompress(toc_bytes, "the TOC")
    if len(toc_plain) != pos[2]:
        raise _ChunkedError(f"the TOC is {len(toc_plain)} bytes, annotated {pos[2]}")
    try:
        toc = json.loads(toc_plain)
    except ValueError as exc:
        raise _ChunkedError(f"the TOC is not JSON: {exc}") from exc
    if not isinstance(toc, dict) or toc.get("version") != 1:
        raise _ChunkedError("the TOC is not a version 1 table of contents")
    return toc


def _read_tarsplit(blob: IO[bytes], digest: object, pos: tuple[int, ...]) -> list[Any]:
    split_bytes = _skippable(blob, pos, "the tar-split")
    if _sha(split_bytes) != digest:
        raise _ChunkedError("the tar-split's digest differs from the TOC's tarSplitDigest")
    split_plain = _decompress(split_bytes, "the tar-split")
    if len(split_plain) != pos[2]:
        raise _ChunkedError(f"the tar-split is {len(split_plain)} bytes, annotated {pos[2]}")
    try:
        return [json.loads(x) for x in split_plain.splitlines()]
    except ValueError as exc:
        raise _ChunkedError(f"the tar-split is not JSON lines: {exc}") from exc


def _compare_entries(
    files: list[tuple[dict[str, Any], list[dict[str, Any]]]], members: list[_Member]
) -> list[str]:
    problems = []
    if len(members) != len(files):
        problems.append(f"the TOC has {len(files)} entries, the tar {len(members)}")
    for (entry, _), member in zip(files, members, strict=False):
        name = entry.get("name")
        if _entry_meta(entry) != member.meta:
            problems.append(f"{name}: TOC says {_entry_meta(entry)}, the tar {member.meta}")
        elif member.digest and entry.get("digest") != member.digest:
            problems.append(f"{name}: TOC digest {entry.get('digest')}, content {member.digest}")
    return problems


class ChunkedCheck:
    """The check of one zstd:chunked layer (see module doc), in parts, so that the one
    decompression of the blob that ``verify`` makes for the diff_id serves it too: the
    annotations, footer, TOC and tar-split are read now from ``blob`` (seekable); the tar
    is given to :meth:`read_tar` as it is decompressed; :meth:`problems` checks the frames
    against the TOC and lists every problem, each line starting with ``where``."""

    def __init__(self, blob: IO[bytes], annotations: Mapping[str, str], *, where: str) -> None:
        self._blob = blob
        self._where = where
        self._stop: str | None = None
        self._files: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._lines: list[Any] = []
        self._members: list[_Member] = []
        self._split_problems: list[str] = []
        try:
            digest, toc_pos, split_pos = _annotated(annotations)
            _check_footer(blob, toc_pos, split_pos)
            toc = _read_toc(blob, digest, toc_pos)
            self._lines = _read_tarsplit(blob, toc.get("tarSplitDigest"), split_pos)
            self._files = _files(list(toc.get("entries") or []))
        except _ChunkedError as exc:
            self._stop = str(exc)

    @property
    def wants_tar(self) -> bool:
        """Whether :meth:`read_tar` has anything to check (not when the check stopped early:
        the annotations, footer, TOC or tar-split are wrong)."""
        return self._stop is None

    def open_blob(self) -> BinaryIO:
        """The blob from its start, from the check's copy (a registry blob is not read
        again); closing it leaves the copy open."""
        self._blob.seek(0)
        return io.BufferedReader(_Borrowed(self._blob), _CHUNK)

    def read_tar(self, plain: Readable) -> None:
        """Read the layer's tar (the blob decompressed) to its end: its entries, and the
        tar-split followed along. Decompression errors are the caller's."""
        if self._stop is not None:
            return
        follower = _SplitFollower(self._lines)
        following = io.BufferedReader(_Following(plain, follower), _CHUNK)
        try:
            self._members = _tar_members(following)
        except tarfile.TarError as exc:
            self._stop = f"the tar cannot be read: {exc}"
        while following.read(_CHUNK):  # the end-of-archive blocks, and anything after them
            pass
        self._split_problems = follower.finish([str(e.get("name")) for e, _ in self._files])

    def problems(self) -> list[str]:
        """Every problem found (after :meth:`read_tar`)."""
        if self._stop is not None:
            return [f"{self._where}: zstd:chunked: {self._stop}"]
        try:
            problems = _compare_entries(self._files, self._members)
            for entry, chunks in self._files:
                if entry.get("type") == "reg" and int(entry.get("size", 0)):
                    problems.extend(_check_frames(self._blob, entry, chunks))
        except _ChunkedError as exc:
            return [f"{self._where}: zstd:chunked: {exc}"]
        return [f"{self._where}: zstd:chunked: {p}" for p in [*problems, *self._split_problems]]


@contextlib.contextmanager
def chunked_check(
    opener: Callable[[], BinaryIO], annotations: Mapping[str, str], *, where: str
) -> Iterator[ChunkedCheck]:
    """The :class:`ChunkedCheck` of the blob ``opener`` opens (read once: a blob that is not
    seekable is copied to a temporary file for the check's random reads)."""
    with _seekable(opener) as blob:
        yield ChunkedCheck(blob, annotations, where=where)


def check_chunked_layer(
    opener: Callable[[], BinaryIO], annotations: Mapping[str, str], *, where: str
) -> list[str]:
    """Every problem of the zstd:chunked layer whose blob ``opener`` opens (see module doc);
    each line starts with ``where``. The blob is decompressed once."""
    with chunked_check(opener, annotations, where=where) as check:
        if check.wants_tar:
            with check.open_blob() as src, open_decompressed("zstd", src) as plain:
                check.read_tar(plain)
        return check.problems()
