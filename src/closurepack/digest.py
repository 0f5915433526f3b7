"""Digest value type and a writer that hashes and counts bytes while they stream through."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from closurepack.errors import ImageError

__all__ = ["Digest", "HashingWriter", "Writable"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A content digest such as ``sha256:<64 hex>`` (the only algorithm images use here)."""

    hex: str
    algorithm: str = "sha256"

    def __post_init__(self) -> None:
        if self.algorithm != "sha256" or not _SHA256_HEX.fullmatch(self.hex):
            raise ImageError(f"invalid digest {self.algorithm}:{self.hex}")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``; raise ImageError on anything else."""
        algorithm, sep, hex_part = text.partition(":")
        if not sep:
            raise ImageError(f"invalid digest {text!r}")
        return cls(hex_part, algorithm)

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())


class Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class HashingWriter:
    """Pass bytes on to ``sink`` (if any) while computing their sha256 and counting them.

    ``same_as``: another writer that sees exactly these bytes (its digest is taken instead of
    hashing them twice; only the count is kept here).
    """

    def __init__(
        self, sink: Writable | BinaryIO | None = None, *, same_as: HashingWriter | None = None
    ) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._same_as = same_as
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._same_as is None:
            self._hash.update(data)
        n = len(data)
        self.size += n
        if self._sink is not None:
            self._sink.write(data)
        return n

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    @property
    def digest(self) -> Digest:
        if self._same_as is not None:
            if self._same_as.size != self.size:  # a bug: the two did not see the same bytes
                raise ValueError(f"{self._same_as.size} bytes hashed, {self.size} written")
            return self._same_as.digest
        return Digest(self._hash.hexdigest())
