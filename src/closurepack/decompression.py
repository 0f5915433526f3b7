r"""Reading layer blobs back: gzip, zstd (zstd:chunked is zstd to a reader) or plain tar, as a
readable stream whose decoder errors are one-line :class:`~closurepack.errors.ImageError`\ s and
whose end is checked to be the end of the data (a truncated blob is an error, not a short tar).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, BinaryIO, ClassVar, Protocol, cast

import isal
import isal.igzip
import isal.isal_zlib
import zstandard

from closurepack.chunkedtoc import is_skippable_magic
from closurepack.errors import ImageError, OptionError

__all__ = ["open_decompressed"]

_ZSTD = ("zstd", "zstd:chunked")


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...

    def close(self) -> None: ...


# What decoding bad data may raise: gzip's own checks (BadGzipFile is an OSError), EOFError
# when cut short, ISA-L's inflate errors (IsalError is no OSError) and zstd's.
# (isal's stubs declare its error class as an instance, hence the cast)
_ISAL_ERROR = cast(type[Exception], isal.isal_zlib.error)
_DECODE_ERRORS = (OSError, EOFError, ValueError, _ISAL_ERROR, zstandard.ZstdError)


class _CheckedReader:
    """A readable stream turning decoder errors into one-line ImageErrors; ``at_end`` is called
    when the decoder reports the end (it raises when the data ended too early)."""

    def __init__(
        self,
        inner: _Reader,
        what: str,
        compression: str,
        *,
        at_end: Callable[[], None] = lambda: None,
    ) -> None:
        self._inner = inner
        self._what = what
        self._compression = compression
        self._at_end = at_end

    def _fail(self, exc: Exception) -> ImageError:
        return ImageError(f"{self._what}: corrupt {self._compression} stream: {exc}")

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._inner.read(size)
            if size < 0 or (not data and size != 0):  # read to the end, or at the end
                self._at_end()
            return data
        except _DECODE_ERRORS as exc:
            raise self._fail(exc) from exc

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        try:
            count = self._inner.readinto(buffer)
            if not count and len(buffer):
                self._at_end()
            return count
        except _DECODE_ERRORS as exc:
            raise self._fail(exc) from exc

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _CheckedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decompressed(compression: str, source: BinaryIO) -> _CheckedReader:
    """A readable stream of the decompressed bytes of ``source`` (which it does not close).

    Reading raises ImageError naming ``source`` when the data is not valid ``compression``.
    """
    what = str(getattr(source, "name", "<stream>"))
    inner: _Reader
    if compression == "gzip":
        counted = _Counted(source)
        inner = cast(_Reader, isal.igzip.IGzipFile(fileobj=counted, mode="rb"))  # type: ignore[no-untyped-call]
        return _CheckedReader(inner, what, compression, at_end=counted.check_not_empty)
    if compression in _ZSTD:
        frames = _ZstdFrames(source)
        inner = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], frames), read_across_frames=True, closefd=False
        )
        return _CheckedReader(inner, what, compression, at_end=frames.check_complete)
    if compression == "none":
        return _CheckedReader(_Unclosing(source), what, compression)
    raise OptionError(f"unknown compression {compression!r}")


class _Counted:
    """The compressed source, counting what is read: empty data is no gzip stream (the gzip
    reader takes it for an empty file)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        count = cast(int, self._source.readinto(buffer))  # type: ignore[attr-defined]
        self._count += count
        return count

    def check_not_empty(self) -> None:
        if not self._count:
            raise ValueError("no data")


class _ZstdFrames:
    """The compressed source, passed through while its frame structure is followed, so that the
    end of the data can be checked to be the end of a frame: python-zstandard's stream reader
    silently returns what it decoded when the data stops inside a frame (a truncated blob, or a
    damaged block size). Frame format: RFC 8878, section 3.1."""

    _FCS_SIZES = (0, 2, 4, 8)
    _DICT_ID_SIZES = (0, 1, 2, 4)
    _WANT: ClassVar = {"magic": 4, "skippable": 4, "descriptor": 1, "block": 3}

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._state = "magic"
        self._head = bytearray()  # the part of the next header field seen so far
        self._skip = 0  # bytes still to pass over (header fields, block contents, checksum)
        self._checksum = False
        self._frames = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            step = min(self._WANT[self._state] - len(self._head), len(view))
            self._head += view[:step]
            view = view[step:]
            if len(self._head) == self._WANT[self._state]:
                self._parse(int.from_bytes(self._head, "little"))
                self._head.clear()
        return data

    def _parse(self, value: int) -> None:
        if self._state == "magic":
            if is_skippable_magic(value):
                self._state = "skippable"  # then its size, and that many bytes
            elif value == 0xFD2FB528:
                self._state = "descriptor"
            else:
                raise ValueError(f"not a zstd frame (magic {value:#010x})")
        elif self._state == "skippable":
            self._state, self._skip = "magic", value
            self._frames += 1
        elif self._state == "descriptor":
            single = value >> 5 & 1
            self._checksum = bool(value >> 2 & 1)
            fcs = self._FCS_SIZES[value >> 6] or single
            self._skip = (1 - single) + self._DICT_ID_SIZES[value & 3] + fcs
            self._state = "block"
        else:  # a block header: last-block flag, type (1: RLE, one byte of content), size
            self._skip = 1 if value >> 1 & 3 == 1 else value >> 3
            if value & 1:
                self._skip += 4 if self._checksum else 0
                self._state = "magic"
                self._frames += 1

    def check_complete(self) -> None:
        """Raise ValueError unless the data read so far ends exactly after a frame."""
        if self._state != "magic" or self._skip or self._head or not self._frames:
            raise ValueError("truncated zstd data (it ends inside a frame)")


class _Unclosing:
    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def read(self, size: int = -1, /) -> bytes:
        return self._inner.read(size)

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        return cast(int, self._inner.readinto(buffer))  # type: ignore[attr-defined]

    def close(self) -> None:
        pass
