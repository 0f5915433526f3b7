"""NAR hashes: the sha256 of an item's NAR serialisation, computed from its files, and the
hash strings closure sources give (``sha256:`` + base-16, Nix base-32 or base-64, or SRI
``sha256-...``) read into bytes.

The serialisation is Nix's (``nix-store --dump``): the string ``nix-archive-1``, then per node
``(`` ``type`` and a regular file's ``contents`` (``executable`` first when the owner may run
it), a symlink's ``target``, or a directory's entries sorted by the bytes of their names, each
``entry`` ``(`` ``name`` NAME ``node`` NODE ``)``; every string is its 64-bit little-endian
length, its bytes, and zero padding to a multiple of 8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from closurepack.errors import StoreError
from closurepack.sources.files import store_file
from closurepack.sources.scan import NIX_BASE32

__all__ = [
    "NarDigest",
    "NarDigests",
    "format_nar_hash",
    "nar_digest",
    "parse_nar_hash",
]

_CHUNK = 1 << 20
_SHA256_SIZE = 32
#: The value of each digit of Nix's base-32 alphabet.
_BASE32_VALUES = {c: i for i, c in enumerate(NIX_BASE32)}
_BASE32_LENGTH = (_SHA256_SIZE * 8 + 4) // 5  # 52
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class NarDigest:
    """The sha256 of a NAR and its length in bytes."""

    sha256: bytes
    size: int

    @property
    def nar_hash(self) -> str:
        """As Nix writes it in its database: ``sha256:`` and base-16."""
        return format_nar_hash(self.sha256)


class NarDigests:
    """The NAR digests of one build's store items, each computed from its files once (under
    ``store_root`` when given): the SBOM and the store database of a build share one, so an
    item without a ``narHash`` is walked and hashed once however many ask for it."""

    def __init__(self, store_root: Path | None) -> None:
        self.store_root = store_root
        self._known: dict[str, NarDigest] = {}

    def of(self, path: str) -> NarDigest:
        """The NAR digest of store path ``path``; StoreError as :func:`nar_digest`."""
        known = self._known.get(path)
        if known is None:
            known = self._known[path] = nar_digest(store_file(path, self.store_root))
        return known


def format_nar_hash(digest: bytes) -> str:
    """``sha256:<base-16>``, the form Nix stores in ``ValidPaths.hash``."""
    return "sha256:" + digest.hex()


def parse_nar_hash(text: str, *, where: str) -> bytes:
    """The 32 bytes of a sha256 NAR hash in any form Nix prints: ``sha256:`` (or no prefix)
    and 64 base-16, 52 Nix base-32 or 44 base-64 characters, or SRI ``sha256-<base-64>``.

    Raises StoreError naming ``where`` for another algorithm or a malformed hash.
    """
    if text.startswith("sha256-"):
        return _base64(text[len("sha256-") :], text, where)
    algorithm, colon, body = text.partition(":")
    if not colon:
        algorithm, body = "sha256", text
    if algorithm != "sha256":
        raise StoreError(f"{where}: NAR hash {text!r} is not sha256")
    if len(body) == 2 * _SHA256_SIZE:
        if all(c in _HEX_DIGITS for c in body):  # fromhex would skip whitespace
            return bytes.fromhex(body)
    elif len(body) == _BASE32_LENGTH:
        return _base32(body, text, where)
    elif len(body) == 44:
        return _base64(body, text, where)
    raise StoreError(f"{where}: NAR hash {text!r} is not a sha256 hash in base 16, 32 or 64")


def _base64(body: str, text: str, where: str) -> bytes:
    try:
        digest = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != _SHA256_SIZE:
        raise StoreError(f"{where}: NAR hash {text!r} is not valid base-64 sha256")
    return digest


def _base32(body: str, text: str, where: str) -> bytes:
    """Nix's base-32: the last character holds the lowest 5 bits of the hash read as a
    little-endian number, the first character the highest."""
    value = 0
    for char in body:
        digit = _BASE32_VALUES.get(char)
        if digit is None:
            raise StoreError(f"{where}: NAR hash {text!r}: {char!r} is not a base-32 digit")
        value = value << 5 | digit
    if value >> (_SHA256_SIZE * 8):
        raise StoreError(f"{where}: NAR hash {text!r} is too large for sha256")
    return value.to_bytes(_SHA256_SIZE, "little")


class _NarHasher:
    """Feeds NAR strings to a sha256 and counts the bytes."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def raw(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)

    def string(self, data: bytes) -> None:
        self.raw(len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8))

    def file(self, path: bytes, size: int) -> None:
        """A regular file's contents as a NAR string, read in chunks."""
        self.raw(size.to_bytes(8, "little"))
        seen = 0
        with open(path, "rb", buffering=0) as stream:
            while chunk := stream.read(_CHUNK):
                seen += len(chunk)
                self.raw(chunk)
        if seen != size:
            raise StoreError(f"{os.fsdecode(path)}: changed while it was read")
        self.raw(bytes(-size % 8))


def nar_digest(path: Path | str | bytes) -> NarDigest:
    """The sha256 and size of ``nix-store --dump path``, from one walk of the files.

    Raises StoreError for an unreadable tree or a file that is not a regular file, directory
    or symlink.
    """
    top = os.fsencode(path)
    hasher = _NarHasher()
    hasher.string(b"nix-archive-1")
    try:
        _node(hasher, top, os.lstat(top))
    except OSError as exc:
        raise StoreError(f"{os.fsdecode(exc.filename or top)}: {exc.strerror}") from exc
    return NarDigest(hasher.hash.digest(), hasher.size)


def _node(hasher: _NarHasher, path: bytes, st: os.stat_result) -> None:
    string = hasher.string
    string(b"(")
    string(b"type")
    mode = st.st_mode
    if stat.S_ISREG(mode):
        string(b"regular")
        if mode & stat.S_IXUSR:
            string(b"executable")
            string(b"")
        string(b"contents")
        hasher.file(path, st.st_size)
    elif stat.S_ISLNK(mode):
        string(b"symlink")
        string(b"target")
        string(os.readlink(path))
    elif stat.S_ISDIR(mode):
        string(b"directory")
        for name in sorted(os.listdir(path)):
            child = path + b"/" + name
            string(b"entry")
            string(b"(")
            string(b"name")
            string(name)
            string(b"node")
            _node(hasher, child, os.lstat(child))
            string(b")")
    else:
        raise StoreError(f"{os.fsdecode(path)}: not a regular file, directory or symlink")
    string(b")")
