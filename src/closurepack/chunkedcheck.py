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

import contextlib
import hashlib
import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from closurepack.chunkedmeta import (
    ChunkedLayerError,
    decompress,
    read_at,
    read_metadata,
    sha256_text,
)
from closurepack.chunkedsplit import Following, Readable, SplitFollower
from closurepack.chunkedtoc import TAR_ENTRY_TYPES, mtime_text
from closurepack.decompression import open_decompressed

__all__ = ["ChunkedCheck", "check_chunked_layer", "chunked_check"]

_CHUNK = 1 << 20


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
            raise ChunkedLayerError("a TOC entry is not an object")
        if entry.get("type") == "chunk":
            if (
                not out
                or out[-1][0].get("type") != "reg"
                or out[-1][0].get("name") != entry.get("name")
            ):
                raise ChunkedLayerError(
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
        data = decompress(read_at(blob, start, end - start, f"{name}: chunk {index}"), f"{name}")
        whole.update(data)
        if len(chunks) > 1:
            said = (chunk.get("chunkOffset", 0), chunk.get("chunkSize"), chunk.get("chunkDigest"))
            found = (at, len(data), sha256_text(data))
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
            toc, self._lines = read_metadata(blob, annotations)
            self._files = _files(list(toc.get("entries") or []))
        except ChunkedLayerError as exc:
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
        follower = SplitFollower(self._lines)
        following = io.BufferedReader(Following(plain, follower), _CHUNK)
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
        except ChunkedLayerError as exc:
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
