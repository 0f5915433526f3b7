"""What a zstd:chunked blob says about itself, read and checked for ``closurepack verify``:
the annotations agree with each other and with the footer, the TOC's bytes have the annotated
digest and lengths, and the tar-split's bytes have the digest the TOC names (format:
:mod:`closurepack.chunkedtoc`; the rest of the check: :mod:`closurepack.chunkedcheck`)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import IO, Any

import zstandard

from closurepack.chunkedtoc import (
    CHECKSUM_KEYS,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    POSITION_KEYS,
    SKIPPABLE_MAGIC,
    TARSPLIT_KEY,
    TOC_TYPE,
    is_skippable_magic,
    parse_position,
)

__all__ = ["ChunkedLayerError", "decompress", "read_at", "read_metadata", "sha256_text"]

_MAX_TOC = 150 << 20  # what containers/storage accepts


class ChunkedLayerError(Exception):
    """A problem that stops the check of a zstd:chunked layer (later checks would only repeat
    it); it never leaves the check, which makes it one problem line."""


def read_at(blob: IO[bytes], offset: int, length: int, what: str) -> bytes:
    """The ``length`` bytes of ``blob`` at ``offset``, all of them."""
    blob.seek(offset)
    data = blob.read(length)
    if len(data) != length:
        raise ChunkedLayerError(f"{what} at {offset}+{length} lies beyond the end of the blob")
    return data


def decompress(data: bytes, what: str) -> bytes:
    """``data``'s zstd frames decompressed."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
            return r.read()
    except zstandard.ZstdError as exc:
        raise ChunkedLayerError(f"{what}: not zstd data: {exc}") from exc


def sha256_text(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_metadata(
    blob: IO[bytes], annotations: Mapping[str, str]
) -> tuple[dict[str, Any], list[Any]]:
    """(the TOC, the tar-split's lines) of the seekable ``blob``, each checked against the
    annotations and the footer."""
    digest, toc_pos, split_pos = _annotated(annotations)
    _check_footer(blob, toc_pos, split_pos)
    toc = _read_toc(blob, digest, toc_pos)
    return toc, _read_tarsplit(blob, toc.get("tarSplitDigest"), split_pos)


def _annotated(annotations: Mapping[str, str]) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(TOC digest, TOC position, tar-split position) from the annotations, which must agree."""
    checksums = {annotations[k] for k in CHECKSUM_KEYS if k in annotations}
    positions = {annotations[k] for k in POSITION_KEYS if k in annotations}
    if len(checksums) != 1:
        raise ChunkedLayerError(f"the annotations give {len(checksums)} different TOC digests")
    if len(positions) != 1:
        raise ChunkedLayerError(f"the annotations give {len(positions)} different TOC positions")
    if TARSPLIT_KEY not in annotations:
        raise ChunkedLayerError(f"annotation {TARSPLIT_KEY} is missing")
    try:
        toc_pos = parse_position(positions.pop(), 4)
        split_pos = parse_position(annotations[TARSPLIT_KEY], 3)
    except ValueError as exc:
        raise ChunkedLayerError(f"bad position annotation: {exc}") from exc
    if toc_pos[3] != TOC_TYPE:
        raise ChunkedLayerError(f"TOC type is {toc_pos[3]}, expected {TOC_TYPE}")
    return checksums.pop(), toc_pos, split_pos


def _check_footer(blob: IO[bytes], toc_pos: tuple[int, ...], split_pos: tuple[int, ...]) -> None:
    blob.seek(0, 2)
    size = blob.tell()
    frame = read_at(blob, size - FOOTER_SIZE - 8, FOOTER_SIZE + 8, "the footer")
    magic, length = struct.unpack("<II", frame[:8])
    values = struct.unpack("<7Q", frame[8:64])
    if magic != SKIPPABLE_MAGIC or length != FOOTER_SIZE or frame[64:] != FOOTER_MAGIC:
        raise ChunkedLayerError("the blob does not end with a zstd:chunked footer frame")
    if (*values[:3], values[3]) != toc_pos or values[4:] != split_pos:
        raise ChunkedLayerError(
            f"the footer gives TOC {values[:4]} and tar-split {values[4:]},"
            f" the annotations {toc_pos} and {split_pos}"
        )


def _skippable(blob: IO[bytes], pos: tuple[int, ...], what: str) -> bytes:
    """The ``pos[1]`` bytes at ``pos[0]``, checked to be a whole skippable frame's content."""
    offset, length = pos[0], pos[1]
    if offset < 8:
        raise ChunkedLayerError(f"{what} offset {offset} leaves no room for its frame header")
    header = read_at(blob, offset - 8, 8, what)
    magic, size = struct.unpack("<II", header)
    if not is_skippable_magic(magic) or size != length:
        raise ChunkedLayerError(
            f"{what} at {offset} is not the content of a skippable frame of {length}"
        )
    return read_at(blob, offset, length, what)


def _read_toc(blob: IO[bytes], digest: str, pos: tuple[int, ...]) -> dict[str, Any]:
    if pos[1] > _MAX_TOC or pos[2] > _MAX_TOC:
        raise ChunkedLayerError(f"the TOC is too big ({pos[1]}/{pos[2]} bytes)")
    toc_bytes = _skippable(blob, pos, "the TOC")
    if sha256_text(toc_bytes) != digest:
        raise ChunkedLayerError(f"the TOC's digest is {sha256_text(toc_bytes)}, annotated {digest}")
    toc_plain = decompress(toc_bytes, "the TOC")
    if len(toc_plain) != pos[2]:
        raise ChunkedLayerError(f"the TOC is {len(toc_plain)} bytes, annotated {pos[2]}")
    try:
        toc = json.loads(toc_plain)
    except ValueError as exc:
        raise ChunkedLayerError(f"the TOC is not JSON: {exc}") from exc
    if not isinstance(toc, dict) or toc.get("version") != 1:
        raise ChunkedLayerError("the TOC is not a version 1 table of contents")
    return toc


def _read_tarsplit(blob: IO[bytes], digest: object, pos: tuple[int, ...]) -> list[Any]:
    split_bytes = _skippable(blob, pos, "the tar-split")
    if sha256_text(split_bytes) != digest:
        raise ChunkedLayerError("the tar-split's digest differs from the TOC's tarSplitDigest")
    split_plain = decompress(split_bytes, "the tar-split")
    if len(split_plain) != pos[2]:
        raise ChunkedLayerError(f"the tar-split is {len(split_plain)} bytes, annotated {pos[2]}")
    try:
        return [json.loads(x) for x in split_plain.splitlines()]
    except ValueError as exc:
        raise ChunkedLayerError(f"the tar-split is not JSON lines: {exc}") from exc
