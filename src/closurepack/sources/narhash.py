"""NAR hashes: the sha256 of an item's NAR serialisation (``nix-store --dump``), computed from
its files, and the spellings of a ``narHash`` that closure sources give, read as hex.

The NAR format (Eelco Dolstra's thesis, section 5.2.1; Nix's ``archive.cc``): every string is a
64-bit little-endian length, the bytes, and zero padding to a multiple of 8; a node is
``( type regular [executable ""] contents <data> )``, ``( type symlink target <target> )`` or
``( type directory entry ( name <name> node <node> ) ... )`` with entries sorted by name bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from pathlib import Path

from closurepack.errors import ClosureError, StoreError

__all__ = ["hex_nar_hash", "nar_hash", "nix32_decode"]

#: Nix's base-32 alphabet (no e, o, u, t).
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_VALUE = {c: i for i, c in enumerate(_NIX32)}
_SHA256_BYTES = 32
_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def nix32_decode(text: str, size: int = _SHA256_BYTES) -> bytes:
    """Nix's base-32 text of a ``size``-byte hash as bytes (the last character holds the
    lowest bits, as ``nix-hash --to-base32`` writes them); ValueError when it is not one."""
    if len(text) != (size * 8 + 4) // 5:
        raise ValueError(f"{len(text)} characters, not {(size * 8 + 4) // 5}")
    out = bytearray(size)
    for position, char in enumerate(text):
        digit = _NIX32_VALUE.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a Nix base-32 character")
        bit = (len(text) - position - 1) * 5
        index, shift = divmod(bit, 8)
        out[index] |= (digit << shift) & 0xFF
        carry = digit >> (8 - shift)
        if index + 1 < size:
            out[index + 1] |= carry
        elif carry:
            raise ValueError("the value does not fit the hash")
    return bytes(out)


def hex_nar_hash(value: str, *, where: str) -> str:
    """A ``narHash`` as closure sources spell it, as 64 hex digits: ``sha256:<Nix base-32>``
    (``nix path-info`` before 2.4), ``sha256-<base64>`` (SRI, later ``nix path-info``) or
    ``sha256:<hex>`` (the store database, ``nix-store --dump-db``). A ClosureError naming
    ``where`` otherwise."""
    try:
        if value.startswith("sha256-"):
            raw = base64.b64decode(value[7:], validate=True)
            if len(raw) != _SHA256_BYTES:
                raise ValueError(f"{len(raw)} bytes, not {_SHA256_BYTES}")
            return raw.hex()
        algorithm, sep, text = value.partition(":")
        if sep and algorithm == "sha256":
            if _HEX.fullmatch(text):
                return text
            return nix32_decode(text).hex()
        raise ValueError("not a sha256 hash")
    except ValueError as exc:
        raise ClosureError(f"{where}: narHash {value[:80]!r} cannot be read: {exc}") from None


class _NarHasher:
    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def string(self, data: bytes) -> None:
        self._sha.update(len(data).to_bytes(8, "little"))
        self._sha.update(data)
        self._pad(len(data))

    def _pad(self, length: int) -> None:
        if length % 8:
            self._sha.update(b"\0" * (8 - length % 8))

    def strings(self, *parts: bytes) -> None:
        for part in parts:
            self.string(part)

    def contents(self, path: bytes, size: int) -> None:
        self._sha.update(size.to_bytes(8, "little"))
        seen = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                self._sha.update(chunk)
                seen += len(chunk)
        if seen != size:
            raise StoreError(f"{os.fsdecode(path)}: changed while it was read")
        self._pad(size)

    def node(self, path: bytes, st: os.stat_result) -> None:
        mode = st.st_mode
        self.strings(b"(", b"type")
        if stat.S_ISREG(mode):
            self.string(b"regular")
            if mode & stat.S_IXUSR:
                self.strings(b"executable", b"")
            self.string(b"contents")
            self.contents(path, st.st_size)
        elif stat.S_ISLNK(mode):
            self.strings(b"symlink", b"target", os.readlink(path))
        elif stat.S_ISDIR(mode):
            self.string(b"directory")
            with os.scandir(path) as entries:
                names = sorted(entry.name for entry in entries)
            for name in names:
                child = os.path.join(path, name)
                self.strings(b"entry", b"(", b"name", name, b"node")
                self.node(child, os.lstat(child))
                self.string(b")")
        else:
            raise StoreError(f"{os.fsdecode(path)}: cannot be stored in a NAR (not a regular"
                             " file, directory or symlink)")  # fmt: skip
        self.string(b")")

    @property
    def hex(self) -> str:
        return self._sha.hexdigest()


def nar_hash(path: Path | str | bytes) -> str:
    """The sha256 of ``nix-store --dump path``, as hex, computed from the files (read once,
    nothing serialised to memory or disk); a StoreError names what cannot be read."""
    top = os.fsencode(path)
    hasher = _NarHasher()
    try:
        hasher.string(b"nix-archive-1")
        hasher.node(top, os.lstat(top))
    except OSError as exc:
        raise StoreError(f"{os.fsdecode(exc.filename or top)}: {exc.strerror}") from exc
    return hasher.hex
