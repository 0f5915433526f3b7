"""The tar-split of a zstd:chunked layer followed along the layer's tar as it is read, for
``closurepack verify`` (:mod:`closurepack.chunkedcheck`): every segment equal to the tar's
bytes there, every file's size and CRC-64."""

from __future__ import annotations

import base64
import io
from typing import Any, Protocol

import fastcrc

__all__ = ["Following", "Readable", "SplitFollower"]


class Readable(Protocol):
    """What the check reads a decompressed tar from."""

    def read(self, size: int = -1, /) -> bytes: ...


class SplitFollower:
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


class Following(io.RawIOBase):
    """``plain`` read through, each piece given to ``follower`` as it passes."""

    def __init__(self, plain: Readable, follower: SplitFollower) -> None:
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
